//! Dead letters the broker tells of: messages that used up the broker's `max_deliver` without any
//! delivery being answered, reported by its `MAX_DELIVERIES` advisory, on a topic's consumer or
//! on the group's replay consumer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;

use crate::backoff::Backoff;
use crate::consumer::ConsumerError;
use crate::consumer::config::GroupConfig;
use crate::consumer::dlq::{self, Reason};
use crate::consumer::message::{body_text, headers_of};
use crate::consumer::observe::stats::GroupStats;

/// Tries to read back and dead-letter one exhausted message before it is logged as lost.
const TRIES: u32 = 8;
/// The first wait between two tries.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// The longest wait between two tries.
const RETRY_MAX: Duration = Duration::from_secs(10);

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
pub(in crate::consumer) async fn exhausted(
    js: jetstream::Context,
    config: Arc<GroupConfig>,
    stats: Arc<GroupStats>,
    (stream, topic): (String, Option<String>),
    mut advisories: async_nats::Subscriber,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConsumerError> {
    tokio::pin!(shutdown);
    loop {
        let advisory = tokio::select! {
            () = &mut shutdown => return Ok(()),
            next = advisories.next() => match next {
                Some(message) => message,
                None => return Ok(()),
            },
        };
        let advisory = match serde_json::from_slice::<MaxDeliveries>(&advisory.payload) {
            Ok(advisory) => advisory,
            Err(e) => {
                tracing::error!(group = %config.group, stream = %stream, error = %e, advisory = %body_text(&advisory.payload), "a max-deliveries advisory that cannot be read; its message stays only in its stream");
                continue;
            }
        };
        // Read back and dead-lettered with a backoff: a broker or dead-letter stream that is
        // away for a moment must not lose the only news of this message.
        let mut waits = Backoff::exponential(RETRY_BASE, RETRY_MAX).waits();
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            match dead_letter(&js, &config, topic.as_deref(), &stream, &advisory).await {
                Ok(()) => break Ok(()),
                Err(e) if tries >= TRIES => break Err(e),
                Err(e) => {
                    tracing::warn!(group = %config.group, stream = %stream, seq = advisory.stream_seq, error = %e, "dead-lettering an exhausted message failed; trying again");
                    tokio::select! {
                        () = &mut shutdown => break Err(format!("stopped before it was stored: {e}")),
                        () = tokio::time::sleep(waits.next_wait()) => {}
                    }
                }
            }
        };
        match outcome {
            Ok(()) => {
                GroupStats::add(&stats.dead_lettered);
                tracing::warn!(group = %config.group, stream = %stream, seq = advisory.stream_seq, "dead letter: max_deliver without an answer");
            }
            Err(e) => {
                tracing::error!(group = %config.group, stream = %stream, seq = advisory.stream_seq, deliveries = advisory.deliveries, error = %e, "an exhausted message could not be dead-lettered; it stays only in its stream")
            }
        }
    }
}

/// Reads the message an advisory tells of back from its stream (a topic's, or the replays'
/// when `topic` is `None`) and publishes its dead letter.
async fn dead_letter(
    js: &jetstream::Context,
    config: &GroupConfig,
    topic: Option<&str>,
    stream: &str,
    advisory: &MaxDeliveries,
) -> Result<(), String> {
    let message = js
        .get_stream(stream)
        .await
        .map_err(|e| format!("cannot read the stream: {e}"))?
        .get_raw_message(advisory.stream_seq)
        .await
        .map_err(|e| format!("cannot read the message back: {e}"))?;
    let headers = headers_of(Some(&message.headers));
    // A replay carries its letter's `Dlq-Topic`: a foreign topic's name may have any number of
    // tokens, which its replay subject does not tell.
    let topic_name = match topic {
        Some(topic) => topic.to_owned(),
        None => headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Dlq-Topic"))
            .map(|(_, v)| v.as_str())
            .or_else(|| dlq::replay_topic(message.subject.as_str()))
            .unwrap_or("unknown")
            .to_owned(),
    };
    let error = format!(
        "not acknowledged within ack_wait ({:?}) on any of {} deliveries",
        config.ack_wait, advisory.deliveries
    );
    let letter = dlq::DeadLetter {
        group: &config.group,
        topic: &topic_name,
        reason: Reason::MaxDeliver,
        error: &error,
        stream,
        stream_sequence: advisory.stream_seq,
        subject: message.subject.as_str(),
        delivered: advisory.deliveries,
        headers: &headers,
        payload: &message.payload,
    };
    dlq::publish(js, &letter)
        .await
        .map_err(|e| format!("cannot publish the dead letter: {e}"))
}
