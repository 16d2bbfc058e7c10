//! The single owner of the SQLite write connection, with group commit.
//!
//! SQLite has one writer at a time, so one thread owns the write connection and request handlers
//! send it closures over a channel. The thread takes every closure already waiting (up to a bound)
//! into one `BEGIN IMMEDIATE` transaction, runs each inside its own SAVEPOINT so that a failing
//! command rolls back alone, commits once, and only then answers each caller. One fsync thereby
//! serves many requests, and a caller hears "done" only for what is durable.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use rusqlite::Connection;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{StoreError, Tx};

/// What the writer thread runs for one command: the command itself (or nothing, when no
/// transaction could be begun), returning how to answer its caller once the commit's outcome is
/// known.
type Job = Box<dyn FnOnce(Option<&Tx<'_>>) -> Answer + Send>;
type Answer = Box<dyn FnOnce(Result<(), &BatchFailure>) + Send>;

/// Why a batch stored nothing, whatever each of its commands returned.
#[derive(Debug)]
enum BatchFailure {
    /// BEGIN or COMMIT failed.
    Commit(rusqlite::Error),
    /// The transaction ended under a command: SQLite rolled it back by itself, or a savepoint
    /// could not be ended and the writer rolled everything back rather than commit it.
    Lost(String),
}

impl BatchFailure {
    fn to_store_error(&self) -> StoreError {
        match self {
            BatchFailure::Commit(e) => StoreError::Commit(e.to_string()),
            BatchFailure::Lost(why) => StoreError::TransactionLost(why.clone()),
        }
    }
}

/// A handle to the writer thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    /// Cleared when the thread ends, however it ends (a panic included).
    running: Arc<AtomicBool>,
}

/// Clears the running flag when the writer thread ends, by return or by unwinding.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Writer {
    /// Starts the writer thread on `conn`. At most `max_batch` commands share a transaction.
    /// `outbox_committed` is notified after every commit that wrote outbox rows.
    pub fn spawn(
        conn: Connection,
        max_batch: usize,
        outbox_committed: Arc<Notify>,
    ) -> std::io::Result<Writer> {
        let (jobs, rx) = mpsc::channel(max_batch.max(1) * 4);
        let running = Arc::new(AtomicBool::new(true));
        let guard = Running(running.clone());
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let _guard = guard;
                run(conn, rx, max_batch.max(1), &outbox_committed);
            })?;
        Ok(Writer { jobs, running })
    }

    /// False once the writer thread has ended: no write can succeed any more.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Runs `command` in a write transaction and answers once it is committed. An `Err` from the
    /// command rolls back everything it wrote and nothing else.
    pub async fn write<T, E, F>(&self, command: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, E>>();
        // The caller's span (a `command` span, see Store::write) on the writer thread, and below it
        // the wait from the command's end to its transaction's commit, which it shares with the
        // other commands of the batch.
        let caller = tracing::Span::current();
        let job: Job = Box::new(move |tx: Option<&Tx<'_>>| {
            let outcome = tx.map(|tx| caller.in_scope(|| in_savepoint(tx, command)));
            let commit = if caller.is_none() {
                tracing::Span::none()
            } else {
                tracing::info_span!(parent: &caller, "commit")
            };
            Box::new(move |commit_result: Result<(), &BatchFailure>| {
                drop(commit);
                let commit = commit_result;
                let result = match (outcome, commit) {
                    (Some(Err(e)), _) => Err(e),
                    (Some(Ok(value)), Ok(())) => Ok(value),
                    (_, Err(e)) => Err(E::from(e.to_store_error())),
                    (None, Ok(())) => Err(E::from(StoreError::WriterGone)),
                };
                // The caller may have gone away (client disconnected); the write stands.
                let _ = reply.send(result);
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| E::from(StoreError::WriterGone))?;
        answer.await.map_err(|_| E::from(StoreError::WriterGone))?
    }
}

#[cfg(all(test, feature = "service"))]
impl Writer {
    /// Ends the writer thread the way a bug would: a panic outside any command's catch_unwind.
    pub(crate) async fn kill_for_test(&self) {
        let job: Job = Box::new(|_| panic!("the writer thread is killed by a test"));
        let _ = self.jobs.send(job).await;
    }
}

/// Runs one command inside a SAVEPOINT: released on success, rolled back on error or panic.
///
/// When the savepoint cannot be ended that way (RELEASE failed, or the savepoint is gone), its
/// writes are rolled back to it; when even that fails they cannot be undone alone, so the whole
/// transaction is rolled back and the writer fails the rest of the batch.
fn in_savepoint<T, E, F>(tx: &Tx<'_>, command: F) -> Result<T, E>
where
    F: FnOnce(&Tx<'_>) -> Result<T, E>,
    E: From<StoreError>,
{
    // Prepared once: this and RELEASE run for every command.
    tx.prepare_cached("SAVEPOINT command")
        .and_then(|mut s| s.execute([]))
        .map_err(|e| E::from(e.into()))?;
    let wrote_outbox_before = tx.wrote_outbox.get();
    let outcome = match catch_unwind(AssertUnwindSafe(|| command(tx))) {
        Ok(outcome) => outcome,
        Err(_) => Err(E::from(StoreError::CommandPanicked)),
    };
    let released = match &outcome {
        Ok(_) => tx
            .prepare_cached("RELEASE command")
            .and_then(|mut s| s.execute([]))
            .map(|_| ()),
        Err(_) => Ok(()),
    };
    if outcome.is_ok() && released.is_ok() {
        return outcome;
    }
    tx.wrote_outbox.set(wrote_outbox_before);
    if tx.is_autocommit() {
        // SQLite already rolled back the whole transaction; the writer sees that too.
        return match released {
            Err(e) => Err(E::from(e.into())),
            Ok(()) => outcome,
        };
    }
    if let Err(e) = tx.execute_batch("ROLLBACK TO command; RELEASE command") {
        tracing::error!(error = %e, "a command's savepoint cannot be rolled back; rolling back its whole batch");
        // Committing now would store what the command wrote although its caller hears it failed.
        let _ = tx.execute_batch("ROLLBACK");
        return Err(E::from(e.into()));
    }
    match released {
        Err(e) => Err(E::from(e.into())),
        Ok(()) => outcome,
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Job>, max_batch: usize, notify: &Notify) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let tx = Tx::new(&conn);
        let began = conn.execute_batch("BEGIN IMMEDIATE");
        let mut lost = None;
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            let open = began.is_ok() && lost.is_none();
            answers.push(job(open.then_some(&tx)));
            // On SQLITE_FULL, IOERR or NOMEM SQLite may roll back the whole transaction; the
            // next command would then run, and be stored, in autocommit.
            if open && conn.is_autocommit() {
                lost = Some(format!(
                    "SQLite rolled back the transaction under command {} of its batch",
                    answers.len()
                ));
            }
        }
        let committed = match (began, lost) {
            (Err(e), _) => Err(BatchFailure::Commit(e)),
            (Ok(()), Some(why)) => Err(BatchFailure::Lost(why)),
            (Ok(()), None) => conn.execute_batch("COMMIT").map_err(BatchFailure::Commit),
        };
        if let Err(e) = &committed {
            tracing::error!(error = ?e, commands = answers.len(), "write transaction failed");
            // Leave no transaction open for the next batch; there may be none to roll back.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        let result = committed.as_ref().map(|_| ());
        for answer in answers {
            answer(result);
        }
        if committed.is_ok() && tx.wrote_outbox.get() {
            notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A writer on a fresh database file with one table, `t(name)`.
    /// A writer on a fresh file (kept while the returned folder lives).
    fn writer_on_file() -> (tempfile::TempDir, Writer, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (name TEXT NOT NULL)")
            .unwrap();
        let writer = Writer::spawn(conn, 64, Arc::new(Notify::new())).unwrap();
        (dir, writer, path)
    }

    fn stored(path: &std::path::Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn.prepare("SELECT name FROM t ORDER BY rowid").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn insert(tx: &Tx<'_>, name: &str) -> Result<(), StoreError> {
        tx.execute("INSERT INTO t (name) VALUES (?1)", [name])?;
        Ok(())
    }

    type Command = Box<dyn FnOnce(&Tx<'_>) -> Result<(), StoreError> + Send>;

    /// Runs `commands` in one transaction: a first command holds the writer thread until all of
    /// them are queued behind it, so the writer takes them as one batch. Returns each one's answer.
    async fn in_one_batch(writer: &Writer, commands: Vec<Command>) -> Vec<Result<(), StoreError>> {
        let (started, holding) = oneshot::channel();
        let hold = {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .write(move |_tx: &Tx<'_>| {
                        let _ = started.send(());
                        thread::sleep(Duration::from_millis(300));
                        Ok::<_, StoreError>(())
                    })
                    .await
            })
        };
        holding.await.unwrap();
        // On the current-thread runtime spawned tasks first run in spawn order, so the commands
        // are queued in this order.
        let tasks: Vec<_> = commands
            .into_iter()
            .map(|command| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.write(command).await })
            })
            .collect();
        hold.await.unwrap().unwrap();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    }

    #[tokio::test]
    async fn a_transaction_rolled_back_under_a_command_fails_the_rest_of_the_batch() {
        let (_dir, writer, path) = writer_on_file();
        let answers = in_one_batch(
            &writer,
            vec![
                Box::new(|tx| insert(tx, "before")),
                // What SQLite does on SQLITE_FULL, IOERR or NOMEM: the whole transaction is
                // rolled back and the connection is back in autocommit.
                Box::new(|tx| {
                    insert(tx, "culprit")?;
                    tx.execute_batch("ROLLBACK")?;
                    Err(StoreError::Commit("disk full (simulated)".into()))
                }),
                Box::new(|tx| insert(tx, "after 1")),
                Box::new(|tx| insert(tx, "after 2")),
            ],
        )
        .await;
        assert_eq!(stored(&path), Vec::<String>::new(), "nothing of the batch");
        for (n, answer) in answers.iter().enumerate() {
            assert!(answer.is_err(), "command {n} was told {answer:?}");
        }
        assert!(
            matches!(answers[2], Err(StoreError::TransactionLost(_))),
            "{:?}",
            answers[2]
        );
        // The writer goes on with the next batch.
        writer
            .write(|tx: &Tx<'_>| insert(tx, "next"))
            .await
            .unwrap();
        assert_eq!(stored(&path), vec!["next"]);
    }

    #[tokio::test]
    async fn a_full_database_stores_nothing_its_callers_were_told_failed() {
        let (_dir, writer, path) = writer_on_file();
        writer
            .write(|tx: &Tx<'_>| {
                let pages: i64 = tx.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                tx.execute_batch(&format!("PRAGMA max_page_count = {}", pages + 4))?;
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let answers = in_one_batch(
            &writer,
            vec![
                Box::new(|tx| insert(tx, "small 1")),
                Box::new(|tx| {
                    tx.execute("INSERT INTO t (name) VALUES (hex(zeroblob(1000000)))", [])?;
                    Ok(())
                }),
                Box::new(|tx| insert(tx, "small 2")),
            ],
        )
        .await;
        assert!(answers[1].is_err(), "{:?}", answers[1]);
        told_as_stored(&path, &[(&answers[0], "small 1"), (&answers[2], "small 2")]);
    }

    #[tokio::test]
    async fn a_savepoint_that_cannot_be_released_is_not_committed() {
        let (_dir, writer, path) = writer_on_file();
        let answers = in_one_batch(
            &writer,
            vec![
                Box::new(|tx| insert(tx, "first")),
                // Releases its own savepoint, so the writer's RELEASE fails and its writes can
                // no longer be rolled back alone.
                Box::new(|tx| {
                    insert(tx, "released early")?;
                    tx.execute_batch("RELEASE command")?;
                    insert(tx, "unguarded")
                }),
                Box::new(|tx| insert(tx, "after")),
            ],
        )
        .await;
        assert!(answers[1].is_err(), "{:?}", answers[1]);
        told_as_stored(
            &path,
            &[
                (&answers[0], "first"),
                (&answers[1], "released early"),
                (&answers[1], "unguarded"),
                (&answers[2], "after"),
            ],
        );
    }

    /// Each caller was told success exactly when its row is stored.
    fn told_as_stored(path: &std::path::Path, answers: &[(&Result<(), StoreError>, &str)]) {
        let stored = stored(path);
        for (answer, name) in answers {
            assert_eq!(
                answer.is_ok(),
                stored.iter().any(|s| s == name),
                "{name}: told {answer:?}, stored {stored:?}"
            );
        }
    }
}
