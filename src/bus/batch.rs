//! Publishing outbox messages to one stream as an atomic batch (ADR-50).
//!
//! With `sync_interval: always` the broker fsyncs once per stored message, or once per atomic
//! batch: a batch is what lets the relay keep pace with the write side. The protocol is plain
//! NATS: each message goes to its own subject with `Nats-Batch-Id` (one id per attempt) and
//! `Nats-Batch-Sequence` (1, 2, …); the last also carries `Nats-Batch-Commit: 1` and is sent as a
//! request, whose answer is the batch's PubAck `{"stream", "seq": <last>, "batch", "count"}` or
//! an error. The others are sent without a reply subject: the stream keeps them aside until the
//! commit and stores all of them or none, so nothing is learnt by waiting on each.
//!
//! `Nats-Msg-Id` stays on every message. A batch holding an id the stream has already stored
//! (within its duplicate window) or holding one id twice is refused whole with
//! [`BatchError::Duplicate`] (err_code 10201) and nothing is stored: the caller then publishes
//! those messages one by one, and the stored ones answer as duplicates. A stream without
//! `allow_atomic` refuses every batch with [`BatchError::NotAtomic`] (err_code 10174). A message
//! that cannot be sent as it is (above the server's `max_payload` with its headers, an invalid
//! key or header) is found before anything is sent and named by [`BatchError::Message`]: it fails
//! alone, and the others can go as a batch without it.

use std::time::Duration;

use async_nats::client::{
    PublishError as ClientPublishError, PublishErrorKind, Request, RequestErrorKind,
};
use async_nats::connection::State;
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, HeaderMap};
use serde::Deserialize;
use uuid::Uuid;

use super::publish::{
    OutboxMessage, PermanentCause, PublishError, TransientCause, classify_api_error, header_map,
    no_responders,
};
use super::topics::is_valid_key;

/// The most messages the server takes in one atomic batch.
pub const MAX_BATCH: usize = 1000;

/// The server's "atomic publish batch contains duplicate message id".
const DUPLICATE_IN_BATCH: ErrorCode = ErrorCode(10201);
/// The server's "atomic publish is disabled" (the stream lacks `allow_atomic`).
const ATOMIC_DISABLED: ErrorCode = ErrorCode(10174);
/// The server's "atomic publish batch is incomplete": a message of the batch never reached the
/// stream's leader (it changed while the batch was sent, or the message was dropped).
const INCOMPLETE_BATCH: ErrorCode = ErrorCode(10176);
/// The server's "atomic publish too many inflight" (status 429): the leader holds too many open
/// batches.
const TOO_MANY_BATCHES: ErrorCode = ErrorCode(10210);

/// A stored batch: its messages have the contiguous sequences `first..first + count`, in the
/// order they were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAck {
    /// The stream that stored them.
    pub stream: String,
    /// The first message's sequence.
    pub first_sequence: u64,
    /// How many were stored.
    pub count: u64,
}

impl BatchAck {
    /// The sequence of the `index`-th message (0-based) of the batch.
    pub fn sequence(&self, index: usize) -> u64 {
        self.first_sequence + index as u64
    }
}

/// Why a batch was not stored. In every case nothing of it was stored, except after a
/// [`TransientCause::TimedOut`], whose outcome is unknown.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A message's `Nats-Msg-Id` is already stored or repeats in the batch: publish them one by one.
    #[error("the batch holds a message id the stream already has (or holds one twice)")]
    Duplicate,
    /// The stream does not take atomic batches: publish them one by one.
    #[error("stream {0} does not allow atomic batches")]
    NotAtomic(String),
    /// The batch as a whole failed the way a single publish fails.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The `index`-th message (0-based) cannot be sent as it is (above the server's
    /// `max_payload` with its headers, an invalid key or header): nothing was committed, and
    /// the other messages may be sent without it.
    #[error("message {index} of the batch: {error}")]
    Message {
        /// Which message.
        index: usize,
        /// Why, always permanent.
        error: PublishError,
    },
}

/// The commit's answer: a PubAck or a JetStream error.
#[derive(Debug, Deserialize)]
struct CommitAnswer {
    #[serde(default)]
    stream: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    count: Option<u64>,
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    code: usize,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Publishes `messages` (1 to [`MAX_BATCH`], all for one stream) as one atomic batch: takes up to
/// `ack_timeout` to hand the messages before the commit to the client, then up to `ack_timeout`
/// for the commit's answer; either timing out is [`TransientCause::TimedOut`].
pub async fn publish_batch(
    client: &Client,
    messages: &[OutboxMessage],
    ack_timeout: Duration,
) -> Result<BatchAck, BatchError> {
    assert!(
        !messages.is_empty() && messages.len() <= MAX_BATCH,
        "a batch holds 1 to {MAX_BATCH} messages"
    );
    let batch_id = Uuid::now_v7().simple().to_string();
    let mut prepared = prepare(messages, &batch_id, client.max_payload())?;
    if client.connection_state() != State::Connected {
        return Err(PublishError::Transient(TransientCause::NotConnected).into());
    }

    let (subject, headers) = prepared.pop().expect("a batch has a last message");
    let payload = messages[prepared.len()].payload.clone();
    // A broker that takes nothing more (frozen, or a connection not yet known dead) fills the
    // client's queue, and each publish then waits for room: bounded, like the commit's answer,
    // so that a lane (and a shutdown waiting for it) never waits for the broker.
    let sending = async {
        for (index, (subject, headers)) in prepared.into_iter().enumerate() {
            client
                .publish_with_headers(subject, headers, messages[index].payload.clone())
                .await
                .map_err(|e| sending_failed(index, e))?;
        }
        Ok::<_, BatchError>(())
    };
    match tokio::time::timeout(ack_timeout, sending).await {
        Err(_elapsed) => {
            return Err(PublishError::Transient(TransientCause::TimedOut(ack_timeout)).into());
        }
        Ok(sent) => sent?,
    }
    let request = Request::new()
        .headers(headers)
        .payload(payload)
        .timeout(Some(ack_timeout));
    let answer = match tokio::time::timeout(
        ack_timeout,
        client.send_request(subject.clone(), request),
    )
    .await
    {
        Err(_elapsed) => {
            return Err(PublishError::Transient(TransientCause::TimedOut(ack_timeout)).into());
        }
        Ok(Err(e)) => return Err(request_failed(client, &subject, e, ack_timeout).await),
        Ok(Ok(answer)) => answer,
    };
    parse_commit(&answer.payload, messages.len())
}

/// Each message's subject and headers, batch headers included; the first message that cannot be
/// sent as it is fails alone ([`BatchError::Message`]) before anything is sent. A message above
/// `max_payload` (headers and payload, as the server counts it; 0 when unknown) would be refused
/// by the client anyway, but only once the messages before it are out, and the batch would fail
/// the same way on every attempt.
fn prepare(
    messages: &[OutboxMessage],
    batch_id: &str,
    max_payload: usize,
) -> Result<Vec<(String, HeaderMap)>, BatchError> {
    let last = messages.len();
    let mut prepared = Vec::with_capacity(last);
    for (index, message) in messages.iter().enumerate() {
        let failed = |cause| BatchError::Message {
            index,
            error: PublishError::Permanent(cause),
        };
        if !is_valid_key(&message.key) {
            return Err(failed(PermanentCause::InvalidKey(message.key.clone())));
        }
        let mut headers = header_map(&message.headers).map_err(failed)?;
        let sequence = index + 1;
        headers.insert("Nats-Batch-Id", batch_id);
        headers.insert("Nats-Batch-Sequence", sequence.to_string().as_str());
        if sequence == last {
            headers.insert("Nats-Batch-Commit", "1");
        }
        let size = wire_len(&headers) + message.payload.len();
        if max_payload > 0 && size > max_payload {
            return Err(failed(PermanentCause::TooLarge(format!(
                "{size} bytes with headers, above the server's max_payload of {max_payload}"
            ))));
        }
        prepared.push((message.subject(), headers));
    }
    Ok(prepared)
}

/// The size of `headers` on the wire: `NATS/1.0\r\n`, a `name: value\r\n` line each, `\r\n`.
fn wire_len(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| name.to_string().len() + 2 + value.as_str().len() + 2)
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
}

/// A message of the batch that the client would not send: too large is that message's fault,
/// anything else (the client shut down) is not.
fn sending_failed(index: usize, error: ClientPublishError) -> BatchError {
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => BatchError::Message {
            index,
            error: PublishError::Permanent(PermanentCause::TooLarge(error.to_string())),
        },
        _ => transient(format!("sending a batch message: {error}")),
    }
}

/// Sorts a failed commit request like a failed single publish.
async fn request_failed(
    client: &Client,
    subject: &str,
    error: async_nats::RequestError,
    ack_timeout: Duration,
) -> BatchError {
    let publish_error = match error.kind() {
        RequestErrorKind::TimedOut => {
            PublishError::Transient(TransientCause::TimedOut(ack_timeout))
        }
        RequestErrorKind::NoResponders => {
            no_responders(&jetstream::new(client.clone()), subject).await
        }
        RequestErrorKind::MaxPayloadExceeded => {
            PublishError::Permanent(PermanentCause::TooLarge(error.to_string()))
        }
        RequestErrorKind::InvalidSubject => {
            PublishError::Permanent(PermanentCause::NoStream(subject.to_string()))
        }
        RequestErrorKind::Other => {
            PublishError::Transient(TransientCause::BrokerUnavailable(error.to_string()))
        }
    };
    publish_error.into()
}

/// Reads the commit's answer; `sent` is how many messages the batch had.
fn parse_commit(payload: &[u8], sent: usize) -> Result<BatchAck, BatchError> {
    let answer: CommitAnswer = serde_json::from_slice(payload).map_err(|e| {
        // The commit may or may not have landed: sending the same messages again is safe.
        transient(format!(
            "unreadable batch PubAck ({e}): {}",
            String::from_utf8_lossy(payload)
        ))
    })?;
    if let Some(error) = answer.error {
        let code = ErrorCode(error.err_code);
        return Err(if code == DUPLICATE_IN_BATCH {
            BatchError::Duplicate
        } else if code == ATOMIC_DISABLED {
            BatchError::NotAtomic(answer.stream)
        } else {
            let text = format!(
                "{} (status {}, err_code {})",
                error.description, error.code, error.err_code
            );
            if code == INCOMPLETE_BATCH || code == TOO_MANY_BATCHES {
                // Nothing of the batch is stored, and it is not about the messages: a leader
                // election or a busy leader. Sending the batch again is safe.
                transient(text)
            } else {
                classify_api_error(error.code, code, text).into()
            }
        });
    }
    let count = answer.count.unwrap_or(0);
    if count != sent as u64 || answer.seq < count || answer.stream.is_empty() {
        return Err(PublishError::Permanent(PermanentCause::Rejected(format!(
            "batch PubAck for {sent} messages says stream {:?}, last sequence {}, count {count}",
            answer.stream, answer.seq
        )))
        .into());
    }
    Ok(BatchAck {
        stream: answer.stream,
        first_sequence: answer.seq - count + 1,
        count,
    })
}

fn transient(text: String) -> BatchError {
    PublishError::Transient(TransientCause::BrokerUnavailable(text)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_ack_gives_every_message_its_sequence() {
        let ack = parse_commit(
            br#"{"stream":"ORDER_CREATED","seq":107,"batch":"b","count":5}"#,
            5,
        )
        .unwrap();
        assert_eq!(ack.stream, "ORDER_CREATED");
        assert_eq!((ack.sequence(0), ack.sequence(4)), (103, 107));
    }

    #[test]
    fn duplicates_and_disabled_batches_are_told_apart() {
        let dup = br#"{"error":{"code":400,"err_code":10201,"description":"atomic publish batch contains duplicate message id"},"stream":"T","seq":0}"#;
        assert!(matches!(parse_commit(dup, 3), Err(BatchError::Duplicate)));
        let off = br#"{"error":{"code":400,"err_code":10174,"description":"atomic publish is disabled"},"stream":"U","seq":0}"#;
        assert!(matches!(parse_commit(off, 3), Err(BatchError::NotAtomic(s)) if s == "U"));
        let unavailable =
            br#"{"error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}"#;
        assert!(matches!(
            parse_commit(unavailable, 3),
            Err(BatchError::Publish(e)) if e.is_transient()
        ));
        for (status, code) in [(400, 10176), (429, 10210)] {
            let lost =
                format!(r#"{{"error":{{"code":{status},"err_code":{code},"description":"d"}}}}"#);
            assert!(matches!(
                parse_commit(lost.as_bytes(), 3),
                Err(BatchError::Publish(e)) if e.is_transient()
            ));
        }
    }

    #[test]
    fn a_commit_answered_duplicate_in_process_is_transient() {
        let in_process = br#"{"error":{"code":409,"err_code":10158,"description":"duplicate message id is in process"}}"#;
        assert!(matches!(
            parse_commit(in_process, 3),
            Err(BatchError::Publish(e)) if e.is_transient()
        ));
    }

    #[test]
    fn a_message_above_max_payload_with_its_headers_is_named_before_anything_is_sent() {
        let message = |key: &str, payload: &str| OutboxMessage {
            topic: "order.created".into(),
            key: key.into(),
            payload: payload.to_owned().into(),
            headers: vec![("Nats-Msg-Id".into(), format!("id-{key}"))],
        };
        let messages = [
            message("a", "{}"),
            message("b", &"x".repeat(200)),
            message("c", "{}"),
        ];
        let prepared = prepare(&messages, "batch", 0).unwrap();
        let size = |index: usize| wire_len(&prepared[index].1) + messages[index].payload.len();
        let largest = size(1);
        assert!(prepare(&messages, "batch", largest).is_ok());
        assert!(matches!(
            prepare(&messages, "batch", largest - 1),
            Err(BatchError::Message {
                index: 1,
                error: PublishError::Permanent(PermanentCause::TooLarge(_))
            })
        ));
        let mut map = HeaderMap::new();
        map.insert("A", "bc");
        assert_eq!(wire_len(&map), "NATS/1.0\r\nA: bc\r\n\r\n".len());
    }

    #[test]
    fn an_ack_that_does_not_add_up_is_refused() {
        let short = br#"{"stream":"S","seq":10,"batch":"b","count":4}"#;
        assert!(matches!(
            parse_commit(short, 5),
            Err(BatchError::Publish(PublishError::Permanent(_)))
        ));
        assert!(matches!(
            parse_commit(b"not json", 5),
            Err(BatchError::Publish(e)) if e.is_transient()
        ));
    }
}
