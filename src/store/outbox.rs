//! The transactional outbox, `order_events_outbox`.
//!
//! Events are written here in the same transaction as the order change that caused them, so an
//! event exists exactly when its change was committed. `id` is the commit order the relay
//! publishes in.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use super::{StoreError, Tx, timestamp};
use crate::domain::OutboxEvent;

/// Writes a command's events as pending rows, in order.
pub fn enqueue(tx: &Tx<'_>, events: &[OutboxEvent]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO order_events_outbox (event_id, topic, subject_key, payload, headers,
            created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for event in events {
        let headers: BTreeMap<&str, &str> = event
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        stmt.execute(params![
            event.event_id.to_string(),
            event.topic.as_str(),
            event.key.to_string(),
            event.payload,
            serde_json::to_string(&headers).expect("headers serialize"),
            timestamp(event.created_at),
        ])?;
    }
    if !events.is_empty() {
        tx.wrote_outbox.set(true);
    }
    Ok(())
}

/// An outbox row as stored.
#[derive(Debug, Clone, serde::Serialize)]
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
