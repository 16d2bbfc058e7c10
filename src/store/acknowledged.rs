//! What the outbox recorded about the events the broker acknowledged: the stream and sequence
//! each was stored at, and when. Published rows are kept for `EVENT_OUTBOX_RETENTION`, so this
//! is what a stream can be checked against, and repaired from, after the broker lost its store
//! (the relay's `repair`).

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::{StoreError, Tx, parse_timestamp, timestamp};

/// One stream's acknowledged rows, summed up: enough for the cheap check of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// The stream the rows were stored in.
    pub stream: String,
    /// How many rows.
    pub rows: u64,
    /// When the first of them was acknowledged.
    pub first_published_at: DateTime<Utc>,
    /// The highest sequence recorded.
    pub newest_sequence: u64,
    /// The event id of the row recorded at that sequence.
    pub newest_event_id: String,
}

/// Every stream's summary of the rows acknowledged at or after `since` (all kept rows when
/// `None`), by stream name.
pub fn summaries(
    conn: &Connection,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<StreamSummary>, StoreError> {
    // SQLite gives the bare column `event_id` from the row that has the max(stream_seq).
    let mut stmt = conn.prepare_cached(
        "SELECT stream, count(*), min(published_at), max(stream_seq), event_id
         FROM order_events_outbox
         WHERE status = 'published' AND stream IS NOT NULL AND stream_seq IS NOT NULL
           AND published_at >= ?1
         GROUP BY stream ORDER BY stream",
    )?;
    let rows = stmt.query_map([since.map(timestamp).unwrap_or_default()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    rows.map(|row| {
        let (stream, rows, first, newest, event_id) = row?;
        Ok(StreamSummary {
            stream,
            rows: rows.unsigned_abs(),
            first_published_at: parse_timestamp("order_events_outbox.published_at", &first)?,
            newest_sequence: newest.unsigned_abs(),
            newest_event_id: event_id,
        })
    })
    .collect()
}

/// Where one acknowledged row was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    /// Commit order.
    pub id: i64,
    /// The event id, also `Nats-Msg-Id`.
    pub event_id: String,
    /// Its sequence in the stream.
    pub sequence: u64,
    /// When the broker acknowledged it.
    pub published_at: DateTime<Utc>,
}

/// The rows acknowledged by `stream` at or after `since` (all kept rows when `None`), in commit
/// order.
pub fn of_stream(
    conn: &Connection,
    stream: &str,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<Acknowledged>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, event_id, stream_seq, published_at FROM order_events_outbox
         WHERE status = 'published' AND stream = ?1 AND stream_seq IS NOT NULL
           AND published_at >= ?2
         ORDER BY id",
    )?;
    let rows = stmt.query_map(
        params![stream, since.map(timestamp).unwrap_or_default()],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        },
    )?;
    rows.map(|row| {
        let (id, event_id, sequence, at) = row?;
        Ok(Acknowledged {
            id,
            event_id,
            sequence: sequence.unsigned_abs(),
            published_at: parse_timestamp("order_events_outbox.published_at", &at)?,
        })
    })
    .collect()
}

/// Records where a published row is stored now that it was published again. The time moves
/// too: the row is kept for another retention from now, and is not older than the stream
/// that holds it.
pub fn record_republished(
    tx: &Tx<'_>,
    id: i64,
    stream: &str,
    sequence: u64,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE order_events_outbox SET stream = ?2, stream_seq = ?3, published_at = ?4
         WHERE id = ?1 AND status = 'published'",
    )?
    .execute(params![id, stream, sequence as i64, timestamp(at)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreConfig, Synchronous};

    /// Inserts a published row of `stream` at `sequence`, acknowledged `minutes_ago`; returns its
    /// event id.
    async fn published(
        store: &Store,
        stream: &'static str,
        sequence: i64,
        minutes_ago: i64,
    ) -> String {
        let event_id = uuid::Uuid::now_v7().to_string();
        let id = event_id.clone();
        let at = timestamp(Utc::now() - chrono::Duration::minutes(minutes_ago));
        store
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO order_events_outbox (event_id, topic, subject_key, payload,
                        headers, status, stream, stream_seq, created_at, published_at)
                     VALUES (?1, 'order.created', 'k', '{}', '{}', 'published', ?2, ?3, ?4, ?4)",
                    params![id, stream, sequence, at],
                )?;
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        event_id
    }

    #[tokio::test]
    async fn a_summary_names_the_newest_sequence_and_its_event_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig {
            path: dir.path().join("acknowledged.db"),
            synchronous: Synchronous::Normal,
            readers: 2,
        })
        .unwrap();
        published(&store, "A", 1, 120).await;
        published(&store, "A", 2, 30).await;
        let newest = published(&store, "A", 7, 20).await;
        published(&store, "A", 3, 10).await;
        published(&store, "B", 1, 5).await;

        let all = store.read(|conn| summaries(conn, None)).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].stream.as_str(), all[0].rows), ("A", 4));
        assert_eq!(all[0].newest_sequence, 7);
        assert_eq!(all[0].newest_event_id, newest);

        let since = Utc::now() - chrono::Duration::minutes(60);
        let recent = store
            .read(move |conn| summaries(conn, Some(since)))
            .await
            .unwrap();
        assert_eq!(
            recent[0].rows, 3,
            "the row acknowledged 2 h ago is outside the window"
        );
        assert!(recent[0].first_published_at > since);

        let rows = store
            .read(move |conn| of_stream(conn, "A", Some(since)))
            .await
            .unwrap();
        assert_eq!(
            rows.iter().map(|r| r.sequence).collect::<Vec<_>>(),
            vec![2, 7, 3],
            "commit order"
        );
        let (id, at) = (rows[0].id, Utc::now());
        store
            .write(move |tx| record_republished(tx, id, "A", 9, at))
            .await
            .unwrap();
        let again = store
            .read(move |conn| of_stream(conn, "A", Some(since)))
            .await
            .unwrap();
        assert_eq!(
            (
                again[0].sequence,
                again[0].published_at >= rows[0].published_at
            ),
            (9, true)
        );
    }
}
