//! What the outbox recorded about the events the broker acknowledged: the stream and sequence
//! each was stored at, and when. Published rows are kept for `EVENT_OUTBOX_RETENTION`, so this
//! is what a stream can be checked against, and repaired from, after the broker lost events
//! (the relay's `repair`).
//!
//! Every read here goes through the index `outbox_by_stream_seq` (stream, sequence) and none
//! reads a payload: a clean check costs a few index look-ups per stream, one that finds loss
//! reads the rows lost.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::{StoreError, Tx, parse_timestamp, timestamp};

/// One stream's recorded rows in the window, summed up: enough for a clean check of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The stream the rows were stored in.
    pub stream: String,
    /// How many rows are recorded at a sequence at or above `low`.
    pub rows: u64,
    /// The lowest sequence in the window.
    pub low: Acknowledged,
    /// The highest sequence recorded.
    pub high: Acknowledged,
}

/// The streams that hold recorded rows, or rows whose sequence another event took, by name.
/// One index look-up per stream, however many rows each has.
pub fn streams(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut next = conn.prepare_cached(
        "SELECT stream FROM order_events_outbox INDEXED BY outbox_by_stream_seq
         WHERE status = 'published' AND stream > ?1 ORDER BY stream LIMIT 1",
    )?;
    let mut names = Vec::new();
    let mut after = String::new();
    while let Some(name) = next
        .query_row([&after], |r| r.get::<_, String>(0))
        .optional()?
    {
        after.clone_from(&name);
        names.push(name);
    }
    let mut lost = conn.prepare_cached(
        "SELECT DISTINCT stream FROM order_events_outbox INDEXED BY outbox_lost
         WHERE lost_seq IS NOT NULL",
    )?;
    for name in lost.query_map([], |r| r.get::<_, String>(0))? {
        let name = name?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// `stream`'s rows in the window: those recorded at or after the lowest sequence acknowledged at
/// or after `since` (every kept row when `None`). `None` when it has none.
pub fn span(
    conn: &Connection,
    stream: &str,
    since: Option<DateTime<Utc>>,
) -> Result<Option<Span>, StoreError> {
    // One read transaction: cleanup may delete the lowest row between two statements otherwise.
    let read = conn.unchecked_transaction()?;
    let conn: &Connection = &read;
    let low_sequence = match since {
        None => conn
            .prepare_cached(
                "SELECT min(stream_seq) FROM order_events_outbox INDEXED BY outbox_by_stream_seq
                 WHERE status = 'published' AND stream = ?1 AND stream_seq IS NOT NULL",
            )?
            .query_row([stream], |r| r.get::<_, Option<i64>>(0))?,
        // A window is asked for by hand (`outbox verify --since`): the rows acknowledged since
        // then are found by time, which reads the window's rows once.
        Some(since) => conn
            .prepare_cached(
                "SELECT min(stream_seq) FROM order_events_outbox INDEXED BY outbox_published
                 WHERE status = 'published' AND published_at >= ?2 AND stream = ?1
                   AND stream_seq IS NOT NULL",
            )?
            .query_row(params![stream, timestamp(since)], |r| {
                r.get::<_, Option<i64>>(0)
            })?,
    };
    let Some(low_sequence) = low_sequence else {
        return Ok(None);
    };
    let (rows, high_sequence) = conn
        .prepare_cached(
            "SELECT count(*), max(stream_seq) FROM order_events_outbox
             INDEXED BY outbox_by_stream_seq
             WHERE status = 'published' AND stream = ?1 AND stream_seq >= ?2",
        )?
        .query_row(params![stream, low_sequence], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?;
    let at = |sequence: i64| -> Result<Acknowledged, StoreError> {
        let found = in_range(
            conn,
            stream,
            sequence.unsigned_abs(),
            sequence.unsigned_abs(),
        )?;
        found.into_iter().next().ok_or_else(|| StoreError::Corrupt {
            column: "order_events_outbox.stream_seq",
            value: format!("no row at {stream} {sequence} within one read"),
        })
    };
    Ok(Some(Span {
        stream: stream.to_owned(),
        rows: rows.unsigned_abs(),
        low: at(low_sequence)?,
        high: at(high_sequence)?,
    }))
}

/// The rows recorded in `stream` at sequences `from..=to`, by sequence.
pub fn in_range(
    conn: &Connection,
    stream: &str,
    from: u64,
    to: u64,
) -> Result<Vec<Acknowledged>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, event_id, stream_seq, published_at FROM order_events_outbox
         INDEXED BY outbox_by_stream_seq
         WHERE status = 'published' AND stream = ?1 AND stream_seq BETWEEN ?2 AND ?3
         ORDER BY stream_seq, id",
    )?;
    let rows = stmt.query_map(params![stream, clamp(from), clamp(to)], acknowledged)?;
    rows.map(|row| row?).collect()
}

/// The sequences recorded in `stream` in `from..=to`, ascending (duplicates kept): the index
/// alone, no row is read.
pub fn sequences(
    conn: &Connection,
    stream: &str,
    from: u64,
    to: u64,
) -> Result<Vec<u64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT stream_seq FROM order_events_outbox INDEXED BY outbox_by_stream_seq
         WHERE status = 'published' AND stream = ?1 AND stream_seq BETWEEN ?2 AND ?3
         ORDER BY stream_seq",
    )?;
    let rows = stmt.query_map(params![stream, clamp(from), clamp(to)], |r| {
        r.get::<_, i64>(0)
    })?;
    rows.map(|row| Ok(row?.unsigned_abs())).collect()
}

/// The rows of `stream` acknowledged before `at` (in the window), by sequence: a stream created
/// after that cannot hold them.
pub fn published_before(
    conn: &Connection,
    stream: &str,
    from: u64,
    at: DateTime<Utc>,
) -> Result<Vec<Acknowledged>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, event_id, stream_seq, published_at FROM order_events_outbox
         INDEXED BY outbox_by_stream_seq
         WHERE status = 'published' AND stream = ?1 AND stream_seq >= ?2 AND published_at < ?3
         ORDER BY stream_seq, id",
    )?;
    let rows = stmt.query_map(params![stream, clamp(from), timestamp(at)], acknowledged)?;
    rows.map(|row| row?).collect()
}

/// The rows of `stream` whose sequence another event took (see [`release`]), in commit order.
pub fn lost(conn: &Connection, stream: &str) -> Result<Vec<Acknowledged>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, event_id, lost_seq, published_at FROM order_events_outbox
         INDEXED BY outbox_lost
         WHERE lost_seq IS NOT NULL AND stream = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([stream], acknowledged)?;
    rows.map(|row| row?).collect()
}

/// What [`release`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Rows recorded at the new sequences, now no longer recorded anywhere.
    pub overwritten: usize,
    /// Whether rows are recorded past the new sequences: the stream lost its tail.
    pub beyond: bool,
}

/// Called before rows are recorded at `from..=to` of `stream`: a row already recorded there is
/// no longer in the stream (the stream lost its tail and gave its sequences to newer events), so
/// its sequence is cleared and kept as `lost_seq` for repair. Also tells whether rows are
/// recorded past `to`, which a stream that appends only never has. Two index look-ups.
pub fn release(tx: &Tx<'_>, stream: &str, from: u64, to: u64) -> Result<Released, StoreError> {
    let overwritten = tx
        .prepare_cached(
            "UPDATE order_events_outbox INDEXED BY outbox_by_stream_seq
             SET lost_seq = stream_seq, stream_seq = NULL
             WHERE status = 'published' AND stream = ?1 AND stream_seq BETWEEN ?2 AND ?3",
        )?
        .execute(params![stream, clamp(from), clamp(to)])?;
    let beyond = tx
        .prepare_cached(
            "SELECT 1 FROM order_events_outbox INDEXED BY outbox_by_stream_seq
             WHERE status = 'published' AND stream = ?1 AND stream_seq > ?2 LIMIT 1",
        )?
        .query_row(params![stream, clamp(to)], |_| Ok(()))
        .optional()?
        .is_some();
    Ok(Released {
        overwritten,
        beyond,
    })
}

/// Records that the row `id` is stored at `sequence` of its stream: a copy the stream already
/// held, found by its `Nats-Msg-Id`.
pub fn record_at(tx: &Tx<'_>, id: i64, sequence: u64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE order_events_outbox SET stream_seq = ?2, lost_seq = NULL
         WHERE id = ?1 AND status = 'published'",
    )?
    .execute(params![id, clamp(sequence)])?;
    Ok(())
}

/// A row by its event id: its id, status and, when published, its stream and sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByEventId {
    /// Commit order.
    pub id: i64,
    /// `pending`, `published` or `dead`.
    pub status: String,
    /// The stream it is recorded in.
    pub stream: Option<String>,
    /// Its sequence there.
    pub sequence: Option<u64>,
}

/// The row whose event id is `event_id`, if the outbox keeps one.
pub fn by_event_id(conn: &Connection, event_id: &str) -> Result<Option<ByEventId>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, status, stream, stream_seq FROM order_events_outbox WHERE event_id = ?1",
        )?
        .query_row([event_id], |r| {
            Ok(ByEventId {
                id: r.get(0)?,
                status: r.get(1)?,
                stream: r.get(2)?,
                sequence: r.get::<_, Option<i64>>(3)?.map(i64::unsigned_abs),
            })
        })
        .optional()?)
}

/// Whether any row waits to be published: only then can a stream hold an event the outbox has
/// not recorded yet. One index look-up.
pub fn any_pending(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM order_events_outbox INDEXED BY outbox_pending
             WHERE status = 'pending' LIMIT 1",
        )?
        .query_row([], |_| Ok(()))
        .optional()?
        .is_some())
}

fn clamp(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

fn acknowledged(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Acknowledged, StoreError>> {
    let (id, event_id, sequence, at) = (
        r.get::<_, i64>(0)?,
        r.get::<_, String>(1)?,
        r.get::<_, i64>(2)?,
        r.get::<_, String>(3)?,
    );
    Ok(
        parse_timestamp("order_events_outbox.published_at", &at).map(|published_at| Acknowledged {
            id,
            event_id,
            sequence: sequence.unsigned_abs(),
            published_at,
        }),
    )
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
        "UPDATE order_events_outbox
         SET stream = ?2, stream_seq = ?3, published_at = ?4, lost_seq = NULL
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
    async fn a_span_names_the_window_by_sequence_and_counts_its_rows() {
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

        let names = store.read(streams).await.unwrap();
        assert_eq!(names, vec!["A".to_owned(), "B".to_owned()]);
        let all = store
            .read(|conn| span(conn, "A", None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((all.rows, all.low.sequence, all.high.sequence), (4, 1, 7));
        assert_eq!(all.high.event_id, newest);

        let since = Utc::now() - chrono::Duration::minutes(60);
        let recent = store
            .read(move |conn| span(conn, "A", Some(since)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (recent.rows, recent.low.sequence),
            (3, 2),
            "the row acknowledged 2 h ago is outside the window"
        );
        let seqs = store
            .read(|conn| sequences(conn, "A", 2, 100))
            .await
            .unwrap();
        assert_eq!(seqs, vec![2, 3, 7]);

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

    #[tokio::test]
    async fn rows_at_sequences_given_to_newer_events_are_released_and_listed_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig {
            path: dir.path().join("released.db"),
            synchronous: Synchronous::Normal,
            readers: 2,
        })
        .unwrap();
        for sequence in 1..=5 {
            published(&store, "A", sequence, 5).await;
        }
        let clean = store.write(|tx| release(tx, "A", 6, 8)).await.unwrap();
        assert_eq!(
            clean,
            Released::default(),
            "sequences past the recorded ones"
        );
        let reused = store.write(|tx| release(tx, "A", 3, 4)).await.unwrap();
        assert_eq!(
            reused,
            Released {
                overwritten: 2,
                beyond: true
            }
        );
        let released = store.read(|conn| lost(conn, "A")).await.unwrap();
        assert_eq!(
            released.iter().map(|r| r.sequence).collect::<Vec<_>>(),
            vec![3, 4],
            "the sequences they had"
        );
        assert_eq!(store.read(streams).await.unwrap(), vec!["A".to_owned()]);
        let span = store
            .read(|conn| span(conn, "A", None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((span.rows, span.high.sequence), (3, 5));
        let id = released[0].id;
        store
            .write(move |tx| record_republished(tx, id, "A", 6, Utc::now()))
            .await
            .unwrap();
        let left = store.read(|conn| lost(conn, "A")).await.unwrap();
        assert_eq!(left.len(), 1, "a row put back is recorded again");
    }
}
