//! Pruning a group's processed events, so that its database does not grow forever.
//!
//! A processed-events row answers "was this event handled?" for as long as the event can arrive
//! again. A stream delivers (and redelivers) a message until it is `max_age` old, and the relay's
//! publish of an event id is deduplicated for `duplicate_window` after the first; a message is
//! stored before it is processed. An event processed and also dead-lettered (by a redelivery
//! that then failed for good) arrives again when its letter is replayed, which `ORDER_DLQ`
//! allows for its 30 days, and the replay stream delivers it for its own `max_age`. So a row is
//! deleted once processed longer ago than the largest `max_age + duplicate_window` of the group's
//! topics plus those of the two dead-letter streams ([`horizon`]). The horizon is read from the
//! broker at each pass: never pruned without it, never pruned at all when a stream keeps
//! messages forever.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use crate::bus::stream_name;
use crate::consumer::ConsumerError;
use crate::consumer::config::GroupConfig;
use crate::consumer::dlq;
use crate::consumer::handling::idempotency;

/// How often a running group prunes (once at start, then at this interval).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Rows deleted per transaction, so that the group's workers never wait long for the file.
const PRUNE_BATCH: i64 = 1000;

/// How long `config`'s processed events must be kept, as the broker has the streams now; `None`
/// when one of them keeps messages forever. An event can be delivered again as long as its
/// stream keeps it (the largest `max_age + duplicate_window` of the group's topics). One that
/// also became a dead letter (a redelivery, meanwhile, failed for good) can be replayed as long
/// as `ORDER_DLQ` keeps the letter, and the replayed copy delivered as long as the replay stream
/// keeps it: those streams' keeping adds to the topics'.
pub async fn horizon(
    js: &jetstream::Context,
    config: &GroupConfig,
) -> Result<Option<Duration>, ConsumerError> {
    let mut topics = Duration::ZERO;
    for topic in &config.topics {
        let Some(keeping) = keeping(js, &stream_name(topic.as_str())).await? else {
            return Ok(None);
        };
        topics = topics.max(keeping);
    }
    for topic in &config.foreign {
        let Some(keeping) = keeping(js, &topic.stream).await? else {
            return Ok(None);
        };
        topics = topics.max(keeping);
    }
    let mut horizon = topics;
    for name in [dlq::DLQ_STREAM, dlq::REPLAY_STREAM] {
        let Some(keeping) = keeping(js, name).await? else {
            return Ok(None);
        };
        horizon += keeping;
    }
    Ok(Some(horizon))
}

/// How long the stream `name` can deliver a message after it was stored: `max_age +
/// duplicate_window` (a publish again within the window is not stored again); `None` when it
/// keeps messages forever.
async fn keeping(js: &jetstream::Context, name: &str) -> Result<Option<Duration>, ConsumerError> {
    let mut stream = js.get_stream(name).await.map_err(ConsumerError::nats)?;
    let config = &stream.info().await.map_err(ConsumerError::nats)?.config;
    Ok((!config.max_age.is_zero()).then(|| config.max_age + config.duplicate_window))
}

/// Deletes `group`'s processed events recorded before `before`, in small transactions; returns
/// how many.
pub fn prune(conn: &Connection, group: &str, before: DateTime<Utc>) -> rusqlite::Result<u64> {
    let before = idempotency::timestamp(before);
    let mut deleted = 0;
    loop {
        let n = conn.execute(
            "DELETE FROM processed_events
             WHERE (consumer_group, event_id) IN (
                 SELECT consumer_group, event_id FROM processed_events
                 INDEXED BY processed_events_by_time
                 WHERE consumer_group = ?1 AND processed_at < ?2
                 LIMIT ?3)",
            params![group, before, PRUNE_BATCH],
        )?;
        deleted += n as u64;
        if n < PRUNE_BATCH as usize {
            return Ok(deleted);
        }
    }
}

/// One pass: the horizon from the broker, then the rows older than that.
async fn pass(js: &jetstream::Context, config: &GroupConfig) -> Result<u64, ConsumerError> {
    let Some(horizon) = horizon(js, config).await? else {
        return Ok(0);
    };
    let horizon = chrono::Duration::from_std(horizon)
        .map_err(|e| ConsumerError::Config(format!("stream max_age: {e}")))?;
    let conn = idempotency::open(&config.database, config.synchronous_full)?;
    let group = config.group.clone();
    let before = Utc::now() - horizon;
    let deleted = tokio::task::spawn_blocking(move || prune(&conn, &group, before))
        .await
        .map_err(|e| ConsumerError::Config(format!("the prune task failed: {e}")))??;
    Ok(deleted)
}

/// A running group's pruning: a pass at start and every [`PRUNE_INTERVAL`] until `stop`. A
/// failed pass (the broker away, the file busy) is logged and tried again at the next one.
pub(crate) async fn run(
    js: jetstream::Context,
    config: Arc<GroupConfig>,
    stop: impl Future<Output = ()>,
) -> Result<(), ConsumerError> {
    tokio::pin!(stop);
    loop {
        match pass(&js, &config).await {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(group = %config.group, deleted, "pruned processed events")
            }
            Err(error) => {
                tracing::warn!(group = %config.group, %error, "pruning processed events failed")
            }
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(PRUNE_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql_steps;

    /// A group's database with `rows` processed events, all processed just now.
    fn database(dir: &tempfile::TempDir, rows: usize) -> std::path::PathBuf {
        let path = dir.path().join(format!("group-{rows}.db"));
        let mut conn = idempotency::open(&path, false).unwrap();
        let tx = conn.transaction().unwrap();
        let now = idempotency::timestamp(Utc::now());
        for n in 0..rows {
            tx.execute(
                "INSERT INTO processed_events (consumer_group, event_id, topic, stream,
                     stream_seq, delivered, processed_at)
                 VALUES ('g', ?1, 'order.created', 'ORDER_CREATED', ?2, 1, ?3)",
                params![uuid::Uuid::now_v7().to_string(), n as i64, now],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        path
    }

    /// The steps of one pruning pass with nothing old enough to delete.
    fn pass_steps(path: &std::path::Path) -> std::collections::BTreeMap<String, i64> {
        let conn = Connection::open(path).unwrap();
        sql_steps::count(&conn);
        let deleted = prune(&conn, "g", Utc::now() - chrono::Duration::days(1)).unwrap();
        assert_eq!(deleted, 0);
        sql_steps::taken()
    }

    #[test]
    fn a_pass_with_nothing_to_delete_costs_the_same_with_ten_times_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let small = pass_steps(&database(&dir, 2_000));
        let large = pass_steps(&database(&dir, 20_000));
        let grew = sql_steps::grown(&small, &large);
        assert!(
            grew.is_empty(),
            "cost grows with the rows:\n{}",
            grew.join("\n")
        );
    }
}
