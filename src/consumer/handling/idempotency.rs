//! The consumer's own SQLite file: the processed-events table, and the batch transaction whose
//! savepoints a handler's [`HandlerTx`] writes in.
//!
//! A batch of messages runs in one `BEGIN IMMEDIATE` transaction (one fsync for many events), each
//! message inside its own SAVEPOINT: the row `(group, event_id)` is inserted first, and when it
//! already exists the event was processed before and the handler is not called. A handler that
//! fails rolls back only its own savepoint, row included, so the event can be tried again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::emit::{self, Emitter, Outbox};
use super::handler::{Delivery, Event, Failure, Handler, HandlerTx};

/// How long a connection waits for another writer of the same file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub(in crate::consumer) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS processed_events (
    consumer_group TEXT    NOT NULL,
    event_id       TEXT    NOT NULL,
    topic          TEXT    NOT NULL,
    stream         TEXT    NOT NULL,
    stream_seq     INTEGER NOT NULL,
    delivered      INTEGER NOT NULL,
    processed_at   TEXT    NOT NULL,
    PRIMARY KEY (consumer_group, event_id)
) WITHOUT ROWID;
-- Pruning finds a group's rows processed before its horizon here: through the primary key it
-- read every row of the group at each pass, however few were old enough.
CREATE INDEX IF NOT EXISTS processed_events_by_time
    ON processed_events (consumer_group, processed_at);
-- Orders whose event waits for a retry, per consumer: their later events are held back until it
-- is done, across restarts too (see `parking`).
CREATE TABLE IF NOT EXISTS waiting_orders (
    consumer   TEXT    NOT NULL,
    order_key  TEXT    NOT NULL,
    head_seq   INTEGER NOT NULL,
    due_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (consumer, order_key)
) WITHOUT ROWID;
-- Runs of the handler that ended in a retry, per consumer and message (see `run::attempts`):
-- `max_deliver` counts these, not the broker's deliveries.
CREATE TABLE IF NOT EXISTS handler_runs (
    consumer   TEXT    NOT NULL,
    stream_seq INTEGER NOT NULL,
    runs       INTEGER NOT NULL,
    PRIMARY KEY (consumer, stream_seq)
) WITHOUT ROWID;
";

/// Opens (creating when missing) a consumer's database: WAL (an error when it does not take),
/// the processed-events table.
/// `synchronous_full` makes a committed (and then acknowledged) event survive power loss.
pub fn open(path: &Path, synchronous_full: bool) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The switch does not take while another connection reads the file in rollback-journal
    // mode (or on a file system without shared memory); the answer says which mode holds.
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!(
                "{}: journal_mode stays {mode}, WAL did not take (another process reading it in rollback-journal mode?)",
                path.display()
            )),
        ));
    }
    conn.pragma_update(
        None,
        "synchronous",
        if synchronous_full { "FULL" } else { "NORMAL" },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(crate::consumer::ownership::fence::SCHEMA)?;
    Ok(conn)
}

/// Where an event came from, as the processed-events row records it.
#[derive(Debug, Clone)]
pub struct Processed<'a> {
    /// The group.
    pub group: &'a str,
    /// The event.
    pub event_id: Uuid,
    /// Its topic.
    pub topic: &'a str,
    /// The stream it was delivered from.
    pub stream: &'a str,
    /// Its sequence there.
    pub stream_seq: u64,
    /// The delivery that processed it.
    pub delivered: u64,
}

/// One batch's transaction.
pub(crate) struct Batch<'c> {
    conn: &'c mut Connection,
    /// The group's outbox, when it emits events.
    outbox: Option<Arc<Outbox>>,
    /// Whether a kept savepoint emitted events: the relay is woken after the commit.
    emitted: bool,
}

/// What running a message inside the batch came to.
pub(crate) enum Step<E> {
    /// The handler ran and its savepoint was kept.
    Done,
    /// The event was processed before; nothing ran.
    AlreadyProcessed,
    /// The handler failed; its savepoint was rolled back.
    Failed(E),
}

impl<'c> Batch<'c> {
    /// Begins the batch's transaction.
    pub(crate) fn begin(conn: &'c mut Connection) -> rusqlite::Result<Batch<'c>> {
        // A task cancelled mid-batch leaves its transaction open on a connection it owned, and
        // that connection is dropped with it; this is for a connection handed in from outside.
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK")?;
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Batch {
            conn,
            outbox: emit::current(),
            emitted: false,
        })
    }

    /// Records the event as processed and runs `handle` in a savepoint (with what `prepare` made
    /// of the event); rolls both back when `handle` fails or the record was already there.
    pub(crate) async fn run<H: Handler>(
        &mut self,
        processed: &Processed<'_>,
        handler: &H,
        event: &Event,
        delivery: &Delivery,
        prepared: &H::Prepared,
    ) -> rusqlite::Result<Step<Failure>> {
        self.conn.execute_batch("SAVEPOINT event")?;
        let inserted = self.conn.execute(
            "INSERT INTO processed_events
                 (consumer_group, event_id, topic, stream, stream_seq, delivered, processed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (consumer_group, event_id) DO NOTHING",
            params![
                processed.group,
                processed.event_id.to_string(),
                processed.topic,
                processed.stream,
                processed.stream_seq as i64,
                processed.delivered as i64,
                timestamp(Utc::now()),
            ],
        )?;
        if inserted == 0 {
            self.conn.execute_batch("RELEASE event")?;
            return Ok(Step::AlreadyProcessed);
        }
        let (outcome, emitted) = {
            let emitter = self
                .outbox
                .clone()
                .map(|outbox| Emitter::new(outbox, event, delivery));
            let mut tx = HandlerTx::new(&mut *self.conn, emitter, prepared);
            let outcome = handler.handle(event, delivery, &mut tx).await;
            (outcome, tx.emitted())
        };
        match outcome {
            Ok(()) => {
                self.conn.execute_batch("RELEASE event")?;
                self.emitted |= emitted > 0;
                Ok(Step::Done)
            }
            Err(error) => {
                self.conn
                    .execute_batch("ROLLBACK TO event; RELEASE event")?;
                Ok(Step::Failed(error))
            }
        }
    }

    /// The connection, inside the transaction.
    pub(crate) fn conn(&self) -> &Connection {
        self.conn
    }

    /// Commits the batch; wakes the group's relay when it emitted events.
    pub(crate) fn commit(self) -> rusqlite::Result<()> {
        if let Err(error) = self.conn.execute_batch("COMMIT") {
            // SQLite keeps the transaction open after some failed COMMITs (SQLITE_BUSY) and rolls
            // it back after others. Either way the round is over: left open, the retry would read
            // its rows, take its events for processed ones and acknowledge them without effects.
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            return Err(error);
        }
        if let Some(outbox) = self.outbox.as_ref().filter(|_| self.emitted) {
            outbox.committed();
        }
        Ok(())
    }

    /// Rolls the batch back.
    pub(crate) fn rollback(self) -> rusqlite::Result<()> {
        self.conn.execute_batch("ROLLBACK")
    }
}

/// A time as `processed_at` holds it: RFC 3339 UTC with microseconds, so that text order is time
/// order.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Whether `group` has processed `event_id`.
pub fn is_processed(conn: &Connection, group: &str, event_id: Uuid) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM processed_events WHERE consumer_group = ?1 AND event_id = ?2",
        params![group, event_id.to_string()],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

/// How many events `group` has processed.
pub fn processed_count(conn: &Connection, group: &str) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT count(*) FROM processed_events WHERE consumer_group = ?1",
        [group],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Topic;

    struct Effects;

    impl Handler for Effects {
        type Prepared = ();

        async fn handle(
            &self,
            event: &Event,
            delivery: &Delivery,
            tx: &mut HandlerTx<'_>,
        ) -> Result<(), Failure> {
            tx.execute(
                "INSERT INTO effects VALUES (?1)",
                [event.event_id().to_string()],
            )?;
            if delivery.header("fail").is_some() {
                return Err(Failure::transient("asked to fail"));
            }
            Ok(())
        }
    }

    /// A handler that tries to end the round or the event's savepoint behind the library's back,
    /// then writes its effect inside a savepoint of its own.
    struct Meddles;

    impl Handler for Meddles {
        type Prepared = ();

        async fn handle(
            &self,
            event: &Event,
            _: &Delivery,
            tx: &mut HandlerTx<'_>,
        ) -> Result<(), Failure> {
            for sql in [
                "COMMIT",
                "ROLLBACK",
                "BEGIN",
                "RELEASE event",
                "ROLLBACK TO event",
                "release EVENT",
            ] {
                let refused = tx.conn().execute_batch(sql).unwrap_err();
                assert!(
                    refused.to_string().contains("not authorized"),
                    "{sql}: {refused}"
                );
            }
            tx.conn().execute_batch("SAVEPOINT mine").unwrap();
            tx.execute(
                "INSERT INTO effects VALUES (?1)",
                [event.event_id().to_string()],
            )?;
            tx.conn().execute_batch("RELEASE mine").unwrap();
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_handler_cannot_commit_or_roll_back_the_round() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("c.db"), false).unwrap();
        conn.execute_batch("CREATE TABLE effects (event_id TEXT)")
            .unwrap();
        let (event, delivery) = event();
        let mut batch = Batch::begin(&mut conn).unwrap();
        let step = batch.run_unprepared(&Meddles, &event, &delivery).await;
        assert!(matches!(step, Step::Done));
        // Still in the round's transaction, which the library commits.
        assert!(!batch.conn().is_autocommit());
        batch.commit().unwrap();
        assert!(is_processed(&conn, "g", event.event_id()).unwrap());
        let effects: i64 = conn
            .query_row("SELECT count(*) FROM effects", [], |r| r.get(0))
            .unwrap();
        assert_eq!(effects, 1);
        // And the library's own statements are allowed again.
        conn.execute_batch("BEGIN; COMMIT").unwrap();
    }

    fn event() -> (Event, Delivery) {
        let body = serde_json::json!({
            "event_id": uuid::Uuid::now_v7(),
            "event_type": "order.chat_linked",
            "timestamp": "2025-06-29T10:35:00Z",
            "version": "1.0",
            "source": "order-service",
            "data": {
                "order_id": uuid::Uuid::now_v7(),
                "order_number": "ORD-2025-001234",
                "chat_id": uuid::Uuid::now_v7(),
                "link_type": "support",
                "linked_by": uuid::Uuid::now_v7(),
                "context": "where is it"
            },
            "metadata": {
                "correlation_id": uuid::Uuid::now_v7(),
                "causation_id": uuid::Uuid::now_v7(),
                "user_id": uuid::Uuid::now_v7()
            }
        });
        let payload = serde_json::to_vec(&body).unwrap();
        let event = super::super::handler::decode(Topic::ChatLinked, &payload).unwrap();
        let delivery = Delivery {
            subject: "order.chat_linked.0.k".into(),
            stream: "ORDER_CHAT_LINKED".into(),
            stream_sequence: 1,
            delivered: 1,
            published: Utc::now(),
            headers: vec![],
            payload: payload.into(),
        };
        (event, delivery)
    }

    impl Batch<'_> {
        /// [`Batch::run`] with the test's processed row and nothing prepared.
        async fn run_unprepared<H: Handler>(
            &mut self,
            handler: &H,
            event: &Event,
            delivery: &Delivery,
        ) -> Step<Failure> {
            let processed = processed(event.event_id());
            self.run(
                &processed,
                handler,
                event,
                delivery,
                &H::Prepared::default(),
            )
            .await
            .unwrap()
        }
    }

    fn processed(id: Uuid) -> Processed<'static> {
        Processed {
            group: "g",
            event_id: id,
            topic: "order.chat_linked",
            stream: "ORDER_CHAT_LINKED",
            stream_seq: 1,
            delivered: 1,
        }
    }

    #[tokio::test]
    async fn an_event_runs_once_and_a_failure_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("c.db"), false).unwrap();
        conn.execute_batch("CREATE TABLE effects (event_id TEXT)")
            .unwrap();
        let (ok, ok_delivery) = event();
        let (failing, mut failing_delivery) = event();
        failing_delivery.headers.push(("fail".into(), "1".into()));
        for round in 0..2 {
            let mut batch = Batch::begin(&mut conn).unwrap();
            let step = batch.run_unprepared(&Effects, &ok, &ok_delivery).await;
            assert!(matches!(
                (round, step),
                (0, Step::Done) | (1, Step::AlreadyProcessed)
            ));
            let step = batch
                .run_unprepared(&Effects, &failing, &failing_delivery)
                .await;
            assert!(matches!(step, Step::Failed(Failure::Transient { .. })));
            batch.commit().unwrap();
        }
        let effects: i64 = conn
            .query_row("SELECT count(*) FROM effects", [], |r| r.get(0))
            .unwrap();
        assert_eq!(effects, 1);
        assert!(is_processed(&conn, "g", ok.event_id()).unwrap());
        assert!(!is_processed(&conn, "g", failing.event_id()).unwrap());
        assert_eq!(processed_count(&conn, "g").unwrap(), 1);
    }

    #[tokio::test]
    async fn a_commit_that_fails_leaves_no_round_open_and_nothing_processed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        // A file in rollback-journal mode, where a reader holding the file makes COMMIT fail
        // with SQLITE_BUSY and SQLite keeps the transaction open.
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch("CREATE TABLE effects (event_id TEXT)")
            .unwrap();
        conn.busy_timeout(Duration::from_millis(50)).unwrap();
        let reader = Connection::open(&path).unwrap();
        let (ok, delivery) = event();
        let mut batch = Batch::begin(&mut conn).unwrap();
        let step = batch.run_unprepared(&Effects, &ok, &delivery).await;
        assert!(matches!(step, Step::Done));
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM processed_events", [], |r| r.get(0))
            .unwrap();
        assert!(batch.commit().is_err(), "COMMIT must fail under the reader");
        reader.execute_batch("COMMIT").unwrap();
        // The retry reads what was processed: the failed round's rows must not be there, or its
        // events would be taken for duplicates and acknowledged without their effects.
        assert!(conn.is_autocommit(), "the failed round is still open");
        assert!(!is_processed(&conn, "g", ok.event_id()).unwrap());
        let effects: i64 = conn
            .query_row("SELECT count(*) FROM effects", [], |r| r.get(0))
            .unwrap();
        assert_eq!(effects, 0);
    }

    #[test]
    fn a_database_that_does_not_take_wal_is_refused() {
        // An in-memory database answers `memory` to the switch: the group would run without the
        // concurrency WAL gives it, and forget what it processed at every restart.
        let error = open(Path::new(":memory:"), false).expect_err("open must fail");
        assert!(error.to_string().contains("WAL did not take"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        assert!(open(&dir.path().join("c.db"), false).is_ok());
    }
}
