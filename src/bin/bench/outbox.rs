//! The service's outbox as the bench reads and fills it: template messages copied from a real
//! order, pending rows written with the store's own insert, and the pending count.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use order_service::domain::{OutboxEvent, Topic};
use order_service::progress::Progress;
use order_service::store::{self, Store, StoreConfig, Synchronous};
use rusqlite::Connection;
use uuid::Uuid;

use crate::Res;

/// One created order's messages, taken from the service's own outbox: every row keyed by the
/// order (so `order.statistics_updated`, keyed by the customer, is not among them).
pub fn template_rows(db: &Path) -> Res<Vec<OutboxEvent>> {
    let conn = Connection::open(db)?;
    let key: String = conn.query_row(
        "SELECT subject_key FROM order_events_outbox WHERE topic = 'order.created' ORDER BY id LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare(
        "SELECT event_id, topic, subject_key, payload, headers FROM order_events_outbox
         WHERE subject_key = ?1 ORDER BY id",
    )?;
    let rows = stmt
        .query_map([key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() {
        return Err("no outbox rows to copy".into());
    }
    rows.into_iter()
        .map(|(event_id, topic, key, payload, headers)| {
            let headers: std::collections::BTreeMap<String, String> =
                serde_json::from_str(&headers)?;
            Ok(OutboxEvent {
                event_id: event_id.parse()?,
                topic: Topic::parse(&topic).ok_or_else(|| format!("unknown topic {topic}"))?,
                key: key.parse()?,
                payload,
                headers: headers.into_iter().collect(),
                created_at: Utc::now(),
            })
        })
        .collect()
}

/// The same message for another order and event id, written at `at`.
pub fn renamed(
    template: &OutboxEvent,
    key: Uuid,
    event_id: Uuid,
    at: DateTime<Utc>,
) -> OutboxEvent {
    let (old_id, old_key) = (template.event_id.to_string(), template.key.to_string());
    let (new_id, new_key) = (event_id.to_string(), key.to_string());
    let swap = |s: &str| s.replace(&old_id, &new_id).replace(&old_key, &new_key);
    OutboxEvent {
        event_id,
        topic: template.topic,
        key,
        payload: swap(&template.payload),
        headers: template
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), swap(v)))
            .collect(),
        created_at: at,
    }
}

/// Opens a database the way the service does (migrations included), and a plain connection to it
/// with the service's write pragmas.
pub fn fresh_database(db: &Path) -> Res<Connection> {
    drop(Store::open(&StoreConfig {
        path: db.to_owned(),
        synchronous: Synchronous::Full,
        readers: 1,
    })?);
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// Writes `rows` pending outbox rows (copies of a real order's events, each order with its own
/// key and every event with its own id) into a fresh database, with no relay running; counts them
/// in `written_rows`.
pub fn write_pending(
    db: &Path,
    template: &[OutboxEvent],
    rows: usize,
    written_rows: &Progress,
) -> Res<()> {
    let conn = fresh_database(db)?;
    let now = Utc::now();
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut written = 0;
    while written < rows {
        let key = Uuid::now_v7();
        for row in template.iter().take(rows - written) {
            let event = renamed(row, key, Uuid::now_v7(), now);
            store::outbox::insert_pending(&conn, std::slice::from_ref(&event))?;
            written += 1;
            written_rows.inc(1);
        }
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// Pending rows in the database at `db`.
pub fn pending(db: &Path) -> Res<u64> {
    count_pending(&Connection::open(db)?)
}

/// Rows ever written to the outbox (the highest id): events committed so far.
pub fn committed(db: &Path) -> Res<u64> {
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn.query_row(
        "SELECT coalesce(max(id), 0) FROM order_events_outbox",
        [],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// Pending rows, on an open connection.
pub fn count_pending(conn: &Connection) -> Res<u64> {
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn.query_row(
        "SELECT count(*) FROM order_events_outbox WHERE status = 'pending'",
        [],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// Waits until no row is pending, at most `limit`.
pub async fn wait_drained(db: &Path, limit: Duration) -> Res<()> {
    let deadline = Instant::now() + limit;
    let conn = Connection::open(db)?;
    while count_pending(&conn)? > 0 {
        if Instant::now() > deadline {
            return Err(format!("the backlog did not drain within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
