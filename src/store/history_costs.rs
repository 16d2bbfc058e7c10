//! The periodic queries' cost does not grow with a shop's history: each query the service runs
//! on a timer or on every relay pass (what is due, the counts of `/ready` and `/metrics`, the next
//! retry, the sent marks, the streams a check reads, the cleanups) is run on a database with a
//! history of published outbox rows and stored idempotency keys, then on one with ten times that
//! history, and SQLite's own count of virtual-machine steps per statement must stay about the
//! same ([`crate::sql_steps`]). A full scan, or an index search whose prefix matches every row of
//! the history, costs steps in proportion to the history and fails it.

use std::collections::BTreeMap;

use chrono::{Duration as Age, Utc};
use rusqlite::{Connection, params};

use super::{Store, StoreConfig, StoreError, Synchronous, Tx, acknowledged, idempotency};
use super::{outbox, sent_marks, timestamp};
use crate::sql_steps;

/// Rows of history in the smaller database; the larger one has ten times as many.
const HISTORY: usize = 2_000;
/// Rows waiting to be published, the same in both: what the relay's queries are about.
const PENDING: usize = 50;
/// The streams the history is spread over.
const STREAMS: [&str; 3] = ["ORDER_CREATED", "ORDER_UPDATED", "ORDER_AUDIT"];

/// A migrated database with `history` published rows (inside the retention: nothing for the
/// cleanup to delete), `history` idempotency keys, and [`PENDING`] rows to publish.
fn database(dir: &tempfile::TempDir, history: usize) -> std::path::PathBuf {
    let path = dir.path().join(format!("history-{history}.db"));
    drop(
        Store::open(&StoreConfig {
            path: path.clone(),
            synchronous: Synchronous::Off,
            readers: 1,
        })
        .unwrap(),
    );
    let mut conn = Connection::open(&path).unwrap();
    let tx = conn.transaction().unwrap();
    let now = Utc::now();
    for n in 0..history {
        let published = timestamp(now - Age::seconds((history - n) as i64));
        tx.execute(
            "INSERT INTO order_events_outbox (event_id, topic, subject_key, payload, headers,
                 status, stream, stream_seq, created_at, published_at)
             VALUES (?1, 'order.created', ?2, '{}', '{}', 'published', ?3, ?4, ?5, ?5)",
            params![
                uuid::Uuid::now_v7().to_string(),
                format!("key-{}", n % 500),
                STREAMS[n % STREAMS.len()],
                (n / STREAMS.len() + 1) as i64,
                published,
            ],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at)
             VALUES ('customer', ?1, 'f', 201, x'', ?2)",
            params![format!("k-{n}"), published],
        )
        .unwrap();
    }
    for n in 0..PENDING {
        tx.execute(
            "INSERT INTO order_events_outbox (event_id, topic, subject_key, payload, headers,
                 status, created_at)
             VALUES (?1, 'order.created', ?2, '{}', '{}', 'pending', ?3)",
            params![
                uuid::Uuid::now_v7().to_string(),
                format!("key-{n}"),
                timestamp(now)
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    path
}

/// Runs every periodic query once on `path`; the steps of each statement, by its SQL.
fn periodic_steps(path: &std::path::Path) -> BTreeMap<String, i64> {
    let conn = Connection::open(path).unwrap();
    sql_steps::count(&conn);
    let now = Utc::now();
    let run = || -> Result<(), StoreError> {
        let epoch = outbox::requeue_epoch(&conn)?;
        outbox::due(&conn, now, epoch, 0, 100)?;
        outbox::stats(&conn)?;
        outbox::next_retry_at(&conn, now)?;
        sent_marks::read(&conn)?;
        acknowledged::streams(&conn)?;
        acknowledged::any_pending(&conn)?;
        // The cleanups, in the write transaction they run in; the history is inside the
        // retention, so each finds nothing to delete.
        let write = conn.unchecked_transaction()?;
        let tx = Tx::new(&write);
        outbox::delete_published_before(&tx, now - Age::days(1), 500)?;
        idempotency::delete_before(&tx, now - Age::days(1), 500)?;
        write.rollback()?;
        Ok(())
    };
    run().unwrap();
    sql_steps::taken()
}

#[test]
fn the_periodic_queries_cost_the_same_with_ten_times_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let small = periodic_steps(&database(&dir, HISTORY));
    let large = periodic_steps(&database(&dir, HISTORY * 10));
    assert!(
        small.len() >= 10,
        "every periodic statement traced: {small:#?}"
    );
    let grew = sql_steps::grown(&small, &large);
    assert!(
        grew.is_empty(),
        "cost grows with the history:\n{}",
        grew.join("\n")
    );
}

#[test]
fn a_query_that_reads_the_whole_history_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let count = |path: std::path::PathBuf| {
        let conn = Connection::open(path).unwrap();
        sql_steps::count(&conn);
        // Published rows of one key: no index leads with the key for published rows.
        conn.query_row(
            "SELECT count(*) FROM order_events_outbox WHERE subject_key = 'key-1'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
        sql_steps::taken()
    };
    let (small, large) = (
        count(database(&dir, HISTORY)),
        count(database(&dir, HISTORY * 10)),
    );
    assert_eq!(
        sql_steps::grown(&small, &large).len(),
        1,
        "{small:?} -> {large:?}"
    );
}
