//! The transactional outbox, `order_events_outbox`.
//!
//! Events are written here in the same transaction as the order change that caused them, so an
//! event exists exactly when its change was committed. `id` is the commit order the relay
//! publishes in.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::{StoreError, Tx, parse_timestamp, timestamp};
use crate::domain::OutboxEvent;

/// Writes a command's events as pending rows, in order.
pub fn enqueue(tx: &Tx<'_>, events: &[OutboxEvent]) -> Result<(), StoreError> {
    insert_pending(tx, events)?;
    if !events.is_empty() {
        tx.wrote_outbox.set(true);
    }
    Ok(())
}

/// Writes events as pending rows, in order, on any connection and without waking the relay: for
/// tools that prepare or measure a database outside the service's writer (the bench). Commands
/// use [`enqueue`].
pub fn insert_pending(conn: &Connection, events: &[OutboxEvent]) -> Result<(), StoreError> {
    for event in events {
        insert_row(
            conn,
            &NewRow {
                event_id: event.event_id,
                topic: event.topic.as_str(),
                key: &event.key.to_string(),
                payload: &event.payload,
                headers: &event.headers,
                created_at: event.created_at,
            },
        )?;
    }
    Ok(())
}

/// A pending row to write, by topic name and key text: an [`OutboxEvent`] of the service, or an
/// event a consumer group's handler emits to a topic of its own table.
#[derive(Debug, Clone, Copy)]
pub struct NewRow<'a> {
    /// The event id, also `Nats-Msg-Id`.
    pub event_id: uuid::Uuid,
    /// The topic.
    pub topic: &'a str,
    /// The subject key.
    pub key: &'a str,
    /// The JSON message.
    pub payload: &'a str,
    /// The NATS headers, in order.
    pub headers: &'a [(String, String)],
    /// When the event happened.
    pub created_at: DateTime<Utc>,
}

/// Writes one pending row on `conn`, inside whatever transaction or savepoint is open there;
/// waking the relay after the commit is the caller's job.
pub fn insert_row(conn: &Connection, row: &NewRow<'_>) -> Result<(), StoreError> {
    let headers: BTreeMap<&str, &str> = row
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    conn.prepare_cached(
        "INSERT INTO order_events_outbox (event_id, topic, subject_key, payload, headers,
            created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        row.event_id.to_string(),
        row.topic,
        row.key,
        row.payload,
        serde_json::to_string(&headers).expect("headers serialize"),
        timestamp(row.created_at),
    ])?;
    Ok(())
}

/// An outbox row as stored.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct OutboxRow {
    /// Commit order.
    pub id: i64,
    /// The event id, also `Nats-Msg-Id`.
    pub event_id: String,
    /// The topic.
    pub topic: String,
    /// The subject key.
    pub subject_key: String,
    /// The JSON message.
    pub payload: serde_json::Value,
    /// The NATS headers.
    pub headers: BTreeMap<String, String>,
    /// pending, published or dead.
    pub status: String,
    /// Publish attempts that failed permanently so far.
    pub attempts: i64,
    /// Not before this time is the next attempt made.
    pub next_attempt_at: Option<String>,
    /// The last publish error.
    pub last_error: Option<String>,
    /// The stream that stored the event.
    pub stream: Option<String>,
    /// Its sequence in that stream.
    pub stream_seq: Option<i64>,
    /// When the event was written.
    pub created_at: String,
    /// When the broker acknowledged it.
    pub published_at: Option<String>,
}

/// Rows in commit order, optionally only those in `status`, after `after_id`, at most `limit`.
pub fn list(
    conn: &Connection,
    status: Option<&str>,
    after_id: i64,
    limit: u32,
) -> Result<Vec<OutboxRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, event_id, topic, subject_key, payload, headers, status, attempts,
            next_attempt_at, last_error, stream, stream_seq, created_at, published_at
         FROM order_events_outbox
         WHERE (?1 IS NULL OR status = ?1) AND id > ?2
         ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![status, after_id, limit], |r| {
        Ok((
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            OutboxRow {
                id: r.get(0)?,
                event_id: r.get(1)?,
                topic: r.get(2)?,
                subject_key: r.get(3)?,
                payload: serde_json::Value::Null,
                headers: BTreeMap::new(),
                status: r.get(6)?,
                attempts: r.get(7)?,
                next_attempt_at: r.get(8)?,
                last_error: r.get(9)?,
                stream: r.get(10)?,
                stream_seq: r.get(11)?,
                created_at: r.get(12)?,
                published_at: r.get(13)?,
            },
        ))
    })?;
    rows.map(|row| {
        let (payload, headers, mut row) = row?;
        let corrupt = |column| StoreError::Corrupt {
            column,
            value: row.event_id.clone(),
        };
        row.payload = serde_json::from_str(&payload).map_err(|_| corrupt("payload"))?;
        row.headers = serde_json::from_str(&headers).map_err(|_| corrupt("headers"))?;
        Ok(row)
    })
    .collect()
}

/// A pending row the relay may publish now.
#[derive(Debug, Clone)]
pub struct Due {
    /// Commit order.
    pub id: i64,
    /// The event id.
    pub event_id: String,
    /// The topic.
    pub topic: String,
    /// The subject key.
    pub key: String,
    /// The JSON message.
    pub payload: String,
    /// The NATS headers.
    pub headers: Vec<(String, String)>,
    /// Permanent failures so far.
    pub attempts: u32,
    /// When the event was committed.
    pub created_at: DateTime<Utc>,
}

/// A due row that cannot be read back (a column that does not parse): the relay parks it as dead
/// with `error` instead of stopping on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Commit order.
    pub id: i64,
    /// The subject key, when it could be read: the later rows of that key wait behind the row.
    pub key: Option<String>,
    /// What could not be read.
    pub error: String,
}

/// What [`due`] found.
#[derive(Debug, Default)]
pub struct DueRows {
    /// Rows to publish, in commit order.
    pub rows: Vec<Due>,
    /// Rows that cannot be read back.
    pub unreadable: Vec<Unreadable>,
    /// The highest id looked at: where the next read goes on from.
    pub last_id: i64,
    /// How many rows were looked at (readable or not).
    pub count: usize,
}

/// The number of the last requeue: a relay pass reads it when it starts and passes it to [`due`].
pub fn requeue_epoch(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT last FROM outbox_requeues WHERE id = 1", [], |r| {
            r.get(0)
        })?,
    )
}

/// [`due`]'s query. Whether an earlier row of a key holds it back is asked of the small index of
/// rows that can (`outbox_blockers`), so a key with a long backlog costs a look-up per row, not a
/// walk over its earlier rows.
const DUE: &str =
    "SELECT o.id, o.event_id, o.topic, o.subject_key, o.payload, o.headers, o.attempts,
                o.created_at
         FROM order_events_outbox o
         WHERE o.status = 'pending' AND o.id > ?3 AND o.requeued_in <= ?4
           AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= ?1)
           AND NOT EXISTS (
               SELECT 1 FROM order_events_outbox b INDEXED BY outbox_blockers
               WHERE b.status <> 'published'
                 AND (b.status = 'dead' OR b.next_attempt_at IS NOT NULL OR b.requeued_in > 0)
                 AND b.subject_key = o.subject_key AND b.id < o.id
                 AND (b.status = 'dead' OR b.next_attempt_at > ?1 OR b.requeued_in > ?4))
         ORDER BY o.id
         LIMIT ?2";

/// Up to `limit` pending rows after `after_id` that may be published at `now`, in commit order:
/// rows whose retry time has come, and only while no earlier row of the same key waits for a
/// retry, is dead or was requeued after the pass began (after `epoch`, see [`requeue_epoch`]), so
/// that per key the commit order is the publish order. `after_id` lets the relay read on past the
/// rows it already has; 0 reads from the start.
pub fn due(
    conn: &Connection,
    now: DateTime<Utc>,
    epoch: i64,
    after_id: i64,
    limit: u32,
) -> Result<DueRows, StoreError> {
    let mut stmt = conn.prepare_cached(DUE)?;
    let mut found = DueRows::default();
    let mut rows = stmt.query(params![timestamp(now), limit, after_id, epoch])?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        found.last_id = found.last_id.max(id);
        found.count += 1;
        match read_due(row, id) {
            Ok(due) => found.rows.push(due),
            Err(error) => found.unreadable.push(Unreadable {
                id,
                key: row.get::<_, String>(3).ok(),
                error,
            }),
        }
    }
    Ok(found)
}

/// One row of [`due`]'s query; any column that cannot be read makes it [`Unreadable`].
fn read_due(row: &rusqlite::Row<'_>, id: i64) -> Result<Due, String> {
    let text = |index: usize, column: &str| {
        row.get::<_, String>(index)
            .map_err(|e| format!("unreadable outbox row: column {column}: {e}"))
    };
    let event_id = text(1, "event_id")?;
    let headers: BTreeMap<String, String> =
        serde_json::from_str(&text(5, "headers")?).map_err(|e| {
            format!("unreadable outbox row: column headers is not a JSON object of strings: {e}")
        })?;
    let created_at = text(7, "created_at")?;
    Ok(Due {
        id,
        event_id,
        topic: text(2, "topic")?,
        key: text(3, "subject_key")?,
        payload: text(4, "payload")?,
        headers: headers.into_iter().collect(),
        attempts: row
            .get::<_, u32>(6)
            .map_err(|e| format!("unreadable outbox row: column attempts: {e}"))?,
        created_at: parse_timestamp("order_events_outbox.created_at", &created_at)
            .map_err(|e| format!("unreadable outbox row: {e}"))?,
    })
}

/// The rows `ids` (published or not) as the relay sends them, in commit order: what a repair
/// publishes again. A row that cannot be read back is an error here; it was read when it was
/// first published.
pub fn by_ids(conn: &Connection, ids: &[i64]) -> Result<Vec<Due>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, event_id, topic, subject_key, payload, headers, attempts, created_at
         FROM order_events_outbox WHERE id = ?1",
    )?;
    let mut rows = Vec::with_capacity(ids.len());
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    for id in sorted {
        let mut found = stmt.query([id])?;
        if let Some(row) = found.next()? {
            rows.push(read_due(row, id).map_err(|value| StoreError::Corrupt {
                column: "order_events_outbox",
                value,
            })?);
        }
    }
    Ok(rows)
}

/// Marks a row published with the stream and sequence the broker acknowledged it with.
pub fn mark_published(
    tx: &Tx<'_>,
    id: i64,
    stream: &str,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE order_events_outbox
         SET status = 'published', stream = ?2, stream_seq = ?3, published_at = ?4,
             next_attempt_at = NULL, last_error = NULL
         WHERE id = ?1 AND status = 'pending'",
    )?
    .execute(params![id, stream, sequence as i64, timestamp(at)])?;
    Ok(())
}

/// Records a failure that says nothing about the row (the broker was away): no attempt is used.
pub fn record_transient(tx: &Tx<'_>, id: i64, error: &str) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE order_events_outbox SET last_error = ?2 WHERE id = ?1")?
        .execute(params![id, error])?;
    Ok(())
}

/// Records a permanent failure: one attempt used; retried at `retry_at`, or dead when `None`.
pub fn record_permanent(
    tx: &Tx<'_>,
    id: i64,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE order_events_outbox
         SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3,
             status = CASE WHEN ?3 IS NULL THEN 'dead' ELSE 'pending' END
         WHERE id = ?1 AND status = 'pending'",
    )?
    .execute(params![id, error, retry_at.map(timestamp)])?;
    Ok(())
}

/// What a requeue found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    /// The row is pending again, with its attempts reset.
    Requeued,
    /// No such row.
    Missing,
    /// The row is already published; publishing it again is the broker's duplicate check's job.
    Published,
}

/// Puts a dead (or waiting) row back to pending with fresh attempts, to be published at once.
/// The requeue is numbered (see [`requeue_epoch`]): a relay pass that began before it has read past
/// the row, so it leaves the row and the later rows of its key to the next pass, which reads
/// them in commit order.
pub fn requeue(tx: &Tx<'_>, id: i64) -> Result<Requeue, StoreError> {
    let status: Option<String> = tx
        .query_row(
            "SELECT status FROM order_events_outbox WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?;
    match status.as_deref() {
        None => Ok(Requeue::Missing),
        Some("published") => Ok(Requeue::Published),
        Some(_) => {
            let epoch: i64 = tx.query_row(
                "UPDATE outbox_requeues SET last = last + 1 WHERE id = 1 RETURNING last",
                [],
                |r| r.get(0),
            )?;
            tx.execute(
                "UPDATE order_events_outbox
                 SET status = 'pending', attempts = 0, next_attempt_at = NULL, requeued_in = ?2
                 WHERE id = ?1",
                params![id, epoch],
            )?;
            tx.wrote_outbox.set(true);
            Ok(Requeue::Requeued)
        }
    }
}

/// Counts for readiness and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OutboxCounts {
    /// Rows waiting to be published.
    pub pending: u64,
    /// Rows that used up their retries.
    pub dead: u64,
    /// When the oldest pending row was committed.
    pub oldest_pending_at: Option<DateTime<Utc>>,
}

/// Pending and dead counts, and the oldest pending row's commit time.
pub fn stats(conn: &Connection) -> Result<OutboxCounts, StoreError> {
    let (pending, dead): (i64, i64) = conn.query_row(
        "SELECT (SELECT count(*) FROM order_events_outbox WHERE status = 'pending'),
                (SELECT count(*) FROM order_events_outbox WHERE status = 'dead')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let oldest: Option<String> = conn.query_row(
        "SELECT created_at FROM order_events_outbox WHERE status = 'pending' ORDER BY id LIMIT 1",
        [],
        |r| r.get(0),
    ).optional()?;
    Ok(OutboxCounts {
        pending: pending.unsigned_abs(),
        dead: dead.unsigned_abs(),
        oldest_pending_at: oldest
            .map(|t| parse_timestamp("order_events_outbox.created_at", &t))
            .transpose()?,
    })
}

/// The earliest retry time still in the future, so the relay can sleep until then.
pub fn next_retry_at(
    conn: &Connection,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let next: Option<String> = conn.query_row(
        "SELECT min(next_attempt_at) FROM order_events_outbox
         WHERE status = 'pending' AND next_attempt_at > ?1",
        [timestamp(now)],
        |r| r.get(0),
    )?;
    next.map(|t| parse_timestamp("order_events_outbox.next_attempt_at", &t))
        .transpose()
}

/// Deletes up to `limit` rows published before `cutoff`, oldest first; returns how many.
pub fn delete_published_before(
    tx: &Tx<'_>,
    cutoff: DateTime<Utc>,
    limit: u32,
) -> Result<usize, StoreError> {
    // Named: left to itself, SQLite picks `outbox_by_status` (status, id), reads every published
    // row and sorts them by time, so each pass cost the whole history even with nothing to delete.
    Ok(tx
        .prepare_cached(
            "DELETE FROM order_events_outbox WHERE id IN (
             SELECT id FROM order_events_outbox INDEXED BY outbox_published
             WHERE status = 'published' AND published_at < ?1
             ORDER BY published_at LIMIT ?2)",
        )?
        .execute(params![timestamp(cutoff), limit])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreConfig, Synchronous};

    async fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&StoreConfig {
            path: dir.path().join("outbox.db"),
            synchronous: Synchronous::Normal,
            readers: 2,
        })
        .unwrap()
    }

    /// Inserts a row of `key` in `status`; returns its id.
    async fn insert(store: &Store, key: &'static str, status: &'static str) -> i64 {
        store
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO order_events_outbox
                        (event_id, topic, subject_key, payload, headers, status, created_at)
                     VALUES (?1, 'order.created', ?2, '{}', '{}', ?3, ?4)",
                    params![
                        uuid::Uuid::now_v7().to_string(),
                        key,
                        status,
                        timestamp(Utc::now())
                    ],
                )?;
                Ok::<_, StoreError>(tx.last_insert_rowid())
            })
            .await
            .unwrap()
    }

    async fn due_ids(store: &Store, now: DateTime<Utc>, epoch: i64, after: i64) -> Vec<i64> {
        store
            .read(move |conn| due(conn, now, epoch, after, 100))
            .await
            .unwrap()
            .rows
            .iter()
            .map(|r| r.id)
            .collect()
    }

    #[tokio::test]
    async fn due_costs_a_look_up_per_row_however_long_a_keys_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let steps = |rows: usize| {
            let store = store.clone();
            async move {
                store
                    .write(move |tx| {
                        for _ in 0..rows {
                            tx.execute(
                                "INSERT INTO order_events_outbox (event_id, topic, subject_key,
                                    payload, headers, status, created_at)
                                 VALUES (?1, 'order.created', 'one-key', '{}', '{}', 'pending', ?2)",
                                params![uuid::Uuid::now_v7().to_string(), timestamp(Utc::now())],
                            )?;
                        }
                        Ok::<_, StoreError>(())
                    })
                    .await
                    .unwrap();
                store
                    .read(|conn| {
                        let found = due(conn, Utc::now(), 0, 0, 100_000)?;
                        let stmt = conn.prepare_cached(DUE)?;
                        let steps = stmt.reset_status(rusqlite::StatementStatus::VmStep);
                        Ok::<_, StoreError>((found.rows.len(), steps))
                    })
                    .await
                    .unwrap()
            }
        };
        let (small, small_steps) = steps(500).await;
        let (large, large_steps) = steps(3_500).await;
        assert_eq!((small, large), (500, 4_000));
        // Eight times the rows: linear costs about eight times the steps, quadratic 64 times.
        let ratio = f64::from(large_steps) / f64::from(small_steps);
        assert!(
            ratio < 16.0,
            "{small_steps} VM steps for 500 rows of one key, {large_steps} for 4,000 ({ratio:.1}x)"
        );
    }

    #[tokio::test]
    async fn a_requeue_committed_during_a_pass_is_left_with_its_key_to_the_next_pass() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let dead = insert(&store, "k", "dead").await;
        let other = insert(&store, "j", "pending").await;

        // A pass begins. Its clock may read later than the requeue's does: the requeue reads its
        // clock before its commit lands.
        let epoch = store.read(requeue_epoch).await.unwrap();
        let pass_now = Utc::now() + chrono::Duration::seconds(1);
        assert_eq!(due_ids(&store, pass_now, epoch, 0).await, vec![other]);

        // The dead row is requeued, then a newer row of its key is committed.
        let requeued = store.write(move |tx| requeue(tx, dead)).await.unwrap();
        assert_eq!(requeued, Requeue::Requeued);
        let newer = insert(&store, "k", "pending").await;

        // The running pass reads on past its cursor: the newer row must not overtake the
        // requeued one, which this pass has already read past.
        assert_eq!(
            due_ids(&store, pass_now, epoch, other).await,
            Vec::<i64>::new()
        );
        // The next pass reads both, in commit order.
        let epoch = store.read(requeue_epoch).await.unwrap();
        assert_eq!(
            due_ids(&store, Utc::now(), epoch, 0).await,
            vec![dead, other, newer]
        );
    }

    #[tokio::test]
    async fn an_unreadable_row_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let bad = insert(&store, "k", "pending").await;
        store
            .write(move |tx| {
                tx.execute(
                    "UPDATE order_events_outbox SET headers = '[1,2' WHERE id = ?1",
                    [bad],
                )?;
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let good = insert(&store, "j", "pending").await;
        let found = store
            .read(|conn| due(conn, Utc::now(), 0, 0, 10))
            .await
            .unwrap();
        assert_eq!(
            found.rows.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![good]
        );
        assert_eq!(found.unreadable.len(), 1);
        assert_eq!(found.unreadable[0].id, bad);
        assert_eq!(found.unreadable[0].key.as_deref(), Some("k"));
        assert_eq!((found.count, found.last_id), (2, good));
    }
}
