//! Pruning a group's processed events, so that its database does not grow forever.
//!
//! A processed-events row answers "was this event handled?" for as long as the event can arrive
//! again. A stream delivers (and redelivers) a message until it is `max_age` old, and the relay's
//! publish of an event id is deduplicated for `duplicate_window` after the first; a message is
//! stored before it is processed. So a row processed longer ago than the largest
//! `max_age + duplicate_window` of the streams the group reads (its topics' and its replayed dead
//! letters') can no longer be asked about, and is deleted. The horizon is read from the broker at
//! each pass: never pruned without it, never pruned at all when a stream keeps messages forever.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::ConsumerError;
use super::config::GroupConfig;
use super::{dlq, idempotency};
use crate::bus::stream_name;

/// How often a running group prunes (once at start, then at this interval).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Rows deleted per transaction, so that the group's workers never wait long for the file.
const PRUNE_BATCH: i64 = 1000;

/// How long `config`'s processed events must be kept: the largest `max_age + duplicate_window`
/// of the streams it reads, as the broker has them now; `None` when one keeps messages forever.
pub async fn horizon(
    js: &jetstream::Context,
    config: &GroupConfig,
) -> Result<Option<Duration>, ConsumerError> {
    let streams = config
        .topics
        .iter()
        .map(|topic| stream_name(topic.as_str()))
        .chain([dlq::REPLAY_STREAM.to_string()]);
    let mut longest = Duration::ZERO;
    for name in streams {
        let mut stream = js.get_stream(&name).await.map_err(ConsumerError::nats)?;
        let stream = &stream.info().await.map_err(ConsumerError::nats)?.config;
        if stream.max_age.is_zero() {
            return Ok(None);
        }
        longest = longest.max(stream.max_age + stream.duplicate_window);
    }
    Ok(Some(longest))
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
