//! The single owner of the SQLite write connection, with group commit.
//!
//! SQLite has one writer at a time, so one thread owns the write connection and request handlers
//! send it closures over a channel. The thread takes every closure already waiting (up to a bound)
//! into one `BEGIN IMMEDIATE` transaction, runs each inside its own SAVEPOINT so that a failing
//! command rolls back alone, commits once, and only then answers each caller. One fsync thereby
//! serves many requests, and a caller hears "done" only for what is durable.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread;

use rusqlite::Connection;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{StoreError, Tx};

/// What the writer thread runs for one command: the command itself (or nothing, when no
/// transaction could be begun), returning how to answer its caller once the commit's outcome is
/// known.
type Job = Box<dyn FnOnce(Option<&Tx<'_>>) -> Answer + Send>;
type Answer = Box<dyn FnOnce(Result<(), &rusqlite::Error>) + Send>;

/// A handle to the writer thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
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
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx, max_batch.max(1), &outbox_committed))?;
        Ok(Writer { jobs })
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
        let job: Job = Box::new(move |tx: Option<&Tx<'_>>| {
            let outcome = tx.map(|tx| in_savepoint(tx, command));
            Box::new(move |commit: Result<(), &rusqlite::Error>| {
                let result = match (outcome, commit) {
                    (Some(Err(e)), _) => Err(e),
                    (Some(Ok(value)), Ok(())) => Ok(value),
                    (_, Err(e)) => Err(E::from(StoreError::Commit(e.to_string()))),
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

/// Runs one command inside a SAVEPOINT: released on success, rolled back on error or panic.
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
    let end = if outcome.is_ok() {
        tx.prepare_cached("RELEASE command")
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
    } else {
        tx.wrote_outbox.set(wrote_outbox_before);
        tx.execute_batch("ROLLBACK TO command; RELEASE command")
    };
    match end {
        Ok(()) => outcome,
        Err(e) => Err(E::from(e.into())),
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
        let in_tx = began.as_ref().ok().map(|()| &tx);
        let answers: Vec<Answer> = batch.drain(..).map(|job| job(in_tx)).collect();
        let committed = began.and_then(|()| conn.execute_batch("COMMIT"));
        if let Err(e) = &committed {
            tracing::error!(error = %e, commands = answers.len(), "write transaction failed");
            // Leave no transaction open for the next batch; there may be none to roll back.
            let _ = conn.execute_batch("ROLLBACK");
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
