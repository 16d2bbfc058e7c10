//! Dead letters the broker tells of: messages that used up `max_deliver` without any delivery
//! being answered, reported by its `MAX_DELIVERIES` advisory.

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream;
use futures::StreamExt;

use super::ConsumerError;
use super::config::GroupConfig;
use super::dlq::{self, Reason};
use super::message::headers_of;
use super::stats::GroupStats;
use crate::bus::stream_name;
use crate::domain::Topic;

/// The broker's advisory that a message used up `max_deliver` without an answer.
#[derive(serde::Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// Dead-letters the messages the broker gave up on because no delivery was answered within
/// `ack_wait` (a handler that hangs, a worker that crashes on them): the worker never saw their
/// last failure, so the broker's advisory is the only news of them. Advisories are not stored:
/// those sent while no worker of the group runs are missed.
pub(super) async fn exhausted(
    js: jetstream::Context,
    config: Arc<GroupConfig>,
    stats: Arc<GroupStats>,
    topic: Topic,
    mut advisories: async_nats::Subscriber,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConsumerError> {
    tokio::pin!(shutdown);
    let stream = stream_name(topic.as_str());
    loop {
        let advisory = tokio::select! {
            () = &mut shutdown => return Ok(()),
            next = advisories.next() => match next {
                Some(message) => message,
                None => return Ok(()),
            },
        };
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&advisory.payload) else {
            continue;
        };
        let message = match js.get_stream(&stream).await {
            Ok(s) => s.get_raw_message(advisory.stream_seq).await,
            Err(e) => {
                tracing::warn!(group = %config.group, error = %e, "cannot read an exhausted message");
                continue;
            }
        };
        let Ok(message) = message else {
            continue;
        };
        let headers = headers_of(Some(&message.headers));
        let error = format!(
            "not acknowledged within ack_wait ({:?}) on any of {} deliveries",
            config.ack_wait, advisory.deliveries
        );
        let letter = dlq::DeadLetter {
            group: &config.group,
            topic: topic.as_str(),
            reason: Reason::MaxDeliver,
            error: &error,
            stream: &stream,
            stream_sequence: advisory.stream_seq,
            subject: message.subject.as_str(),
            delivered: advisory.deliveries,
            headers: &headers,
            payload: &message.payload,
        };
        match dlq::publish(&js, &letter).await {
            Ok(()) => {
                GroupStats::add(&stats.dead_lettered);
                tracing::warn!(group = %config.group, stream = %stream, seq = advisory.stream_seq, "dead letter: max_deliver without an answer");
            }
            Err(e) => {
                tracing::error!(group = %config.group, error = %e, seq = advisory.stream_seq, "publishing a dead letter failed; the message stays only in its stream")
            }
        }
    }
}
