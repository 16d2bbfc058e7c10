//! Publishing one outbox message to JetStream and classifying what went wrong.
//!
//! The relay's retry policy depends on the class of a failure: a [`PublishError::Transient`]
//! failure says nothing about the message (the broker is away, slow or not answering) and must
//! never use up the message's retries; a [`PublishError::Permanent`] one is about the message or
//! its topic (no stream takes the subject, too large, refused by the stream) and retrying the same
//! message is not expected to help. Since every message carries `Nats-Msg-Id`, publishing again
//! after a failure whose outcome is unknown (a timeout) is safe within the stream's duplicate
//! window: the server answers the second publish with `duplicate: true`.

use std::str::FromStr;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::{
    GetStreamByNameErrorKind, PublishAckFuture, PublishError as AckError, PublishErrorKind,
};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use super::topics::{is_valid_key, subject};

/// The header JetStream deduplicates on; every outbox message must carry it.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// How long [`publish`] waits for the stream's answer when the caller has no opinion.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the "is there a stream for this subject?" check after a no-responders answer may take.
const STREAM_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// One event to publish, as the outbox row holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Topic, e.g. `order.created`.
    pub topic: String,
    /// Partition key: the order id (customer id for `order.statistics_updated`). One subject token.
    pub key: String,
    /// The JSON envelope.
    pub payload: Bytes,
    /// Headers in order; must include `Nats-Msg-Id`. A name may repeat.
    pub headers: Vec<(String, String)>,
}

impl OutboxMessage {
    /// The subject this message is published on: `<topic>.<key>`.
    pub fn subject(&self) -> String {
        subject(&self.topic, &self.key)
    }
}

/// The stream's acknowledgement: the message is stored (or was already, within the window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in that stream (the original's sequence for a duplicate).
    pub sequence: u64,
    /// The stream had already stored a message with this `Nats-Msg-Id`; counts as success.
    pub duplicate: bool,
}

/// Why a publish did not end in a PubAck, split by what the relay should do about it.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Nothing is known to be wrong with the message: wait for the broker, do not count a retry.
    #[error("transient publish failure: {0}")]
    Transient(TransientCause),
    /// The message or its topic cannot be stored as it is: counts as a retry.
    #[error("permanent publish failure: {0}")]
    Permanent(PermanentCause),
}

impl PublishError {
    /// True for [`PublishError::Transient`].
    pub fn is_transient(&self) -> bool {
        matches!(self, PublishError::Transient(_))
    }
}

/// The failures that say nothing about the message.
#[derive(Debug, thiserror::Error)]
pub enum TransientCause {
    /// The client is not connected (it keeps reconnecting in the background).
    #[error("not connected to NATS")]
    NotConnected,
    /// No PubAck within the timeout; the message may or may not be stored.
    #[error("no PubAck within {0:?}")]
    TimedOut(Duration),
    /// A stream takes the subject but nobody answered (e.g. it has no leader right now).
    #[error("no responders for {subject}, though stream {stream} takes it")]
    NoResponders {
        /// The subject published on.
        subject: String,
        /// The stream that should have answered.
        stream: String,
    },
    /// No stream takes the subject although the topic is in the table: the stream was deleted or
    /// the broker lost its store, and reconciling brings it back.
    #[error("no stream takes {0}; reconciling the streams")]
    StreamMissing(String),
    /// JetStream itself is unavailable, out of resources or failed to store; the text says which.
    #[error("JetStream unavailable: {0}")]
    BrokerUnavailable(String),
    /// Nothing was sent: the outbox could not note beforehand that the rows go out.
    #[error("not sent: the outbox could not note the send: {0}")]
    OutboxUnwritable(String),
}

/// The failures that are about the message or its topic.
#[derive(Debug, thiserror::Error)]
pub enum PermanentCause {
    /// No stream captures the subject (the topic has no stream, or the key is not one token).
    #[error("no stream takes subject {0}")]
    NoStream(String),
    /// The message is larger than the server or the stream accepts.
    #[error("message too large: {0}")]
    TooLarge(String),
    /// The key cannot be the last token of a subject.
    #[error("invalid key {0:?}: must be one subject token")]
    InvalidKey(String),
    /// A header name or value cannot be sent, or `Nats-Msg-Id` is missing.
    #[error("invalid headers: {0}")]
    InvalidHeaders(String),
    /// The stream refused the message for another reason.
    #[error("rejected by the stream: {0}")]
    Rejected(String),
}

/// Publishes `message` on `<topic>.<key>` with its headers and waits up to `ack_timeout` for the
/// PubAck.
///
/// A client that is not connected fails at once as [`TransientCause::NotConnected`] instead of
/// queueing the message in the client until it reconnects.
pub async fn publish(
    js: &jetstream::Context,
    message: &OutboxMessage,
    ack_timeout: Duration,
) -> Result<Published, PublishError> {
    if !is_valid_key(&message.key) {
        return Err(PublishError::Permanent(PermanentCause::InvalidKey(
            message.key.clone(),
        )));
    }
    let headers = header_map(&message.headers).map_err(PublishError::Permanent)?;
    if js.client().connection_state() != State::Connected {
        return Err(PublishError::Transient(TransientCause::NotConnected));
    }
    let subject = message.subject();

    let attempt = async {
        let ack: PublishAckFuture = js
            .publish_with_headers(subject.clone(), headers, message.payload.clone())
            .await?;
        ack.await
    };
    let outcome = match tokio::time::timeout(ack_timeout, attempt).await {
        Err(_elapsed) => {
            return Err(PublishError::Transient(TransientCause::TimedOut(
                ack_timeout,
            )));
        }
        Ok(outcome) => outcome,
    };
    match outcome {
        Ok(ack) => Ok(Published {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        }),
        Err(error) => Err(classify(js, &subject, error, ack_timeout).await),
    }
}

/// Sorts a client error into transient and permanent.
async fn classify(
    js: &jetstream::Context,
    subject: &str,
    error: AckError,
    ack_timeout: Duration,
) -> PublishError {
    match error.kind() {
        PublishErrorKind::TimedOut => {
            PublishError::Transient(TransientCause::TimedOut(ack_timeout))
        }
        // The reply channel went away: the connection dropped while waiting.
        PublishErrorKind::BrokenPipe => PublishError::Transient(TransientCause::NotConnected),
        PublishErrorKind::MaxAckPending => PublishError::Transient(
            TransientCause::BrokerUnavailable("too many PubAcks outstanding".into()),
        ),
        PublishErrorKind::MaxPayloadExceeded => {
            PublishError::Permanent(PermanentCause::TooLarge(error.to_string()))
        }
        // The client reports "no responders" as StreamNotFound, but a stream without a leader and
        // a JetStream that is down answer the same way: ask the server which it is.
        PublishErrorKind::StreamNotFound => no_responders(js, subject).await,
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            PublishError::Permanent(PermanentCause::Rejected(error.to_string()))
        }
        PublishErrorKind::Other => classify_other(&error),
    }
}

pub(super) async fn no_responders(js: &jetstream::Context, subject: &str) -> PublishError {
    match tokio::time::timeout(STREAM_LOOKUP_TIMEOUT, js.stream_by_subject(subject)).await {
        Err(_elapsed) => PublishError::Transient(TransientCause::BrokerUnavailable(format!(
            "no responders for {subject}, and no answer to a stream lookup"
        ))),
        Ok(Ok(stream)) => PublishError::Transient(TransientCause::NoResponders {
            subject: subject.to_string(),
            stream,
        }),
        Ok(Err(lookup)) => match lookup.kind() {
            GetStreamByNameErrorKind::NotFound => {
                PublishError::Permanent(PermanentCause::NoStream(subject.to_string()))
            }
            GetStreamByNameErrorKind::InvalidSubject => {
                PublishError::Permanent(PermanentCause::NoStream(subject.to_string()))
            }
            _ => PublishError::Transient(TransientCause::BrokerUnavailable(format!(
                "no responders for {subject}, and the stream lookup failed: {lookup}"
            ))),
        },
    }
}

/// `Other` covers both the server's JSON error answer and local failures; the server's error
/// code tells which server errors are about the broker rather than the message.
fn classify_other(error: &AckError) -> PublishError {
    let api_error = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>());
    let Some(api_error) = api_error else {
        // A local failure: the client's command channel is closed (client shut down), or the
        // PubAck could not be parsed. Either way the message's fate is unknown, and publishing it
        // again is safe thanks to Nats-Msg-Id; the client being closed is not the message's fault.
        return PublishError::Transient(TransientCause::BrokerUnavailable(error.to_string()));
    };
    classify_api_error(api_error.code(), api_error.error_code(), error.to_string())
}

/// The server's "duplicate message id is in process" (status 409): a clustered stream's leader
/// has staged this `Nats-Msg-Id` for a proposal still in flight (the first attempt, e.g. while a
/// follower is paused). That first attempt may yet be stored, so the outcome is unknown.
const DUPLICATE_IN_PROCESS: ErrorCode = ErrorCode(10158);

/// Sorts a JetStream API error answer by its status code and JetStream error code.
pub(super) fn classify_api_error(status: usize, code: ErrorCode, text: String) -> PublishError {
    const BROKER_SIDE: [ErrorCode; 9] = [
        ErrorCode::CLUSTER_NOT_AVAILABLE,
        ErrorCode::CLUSTER_NOT_LEADER,
        ErrorCode::CLUSTER_NO_PEERS,
        ErrorCode::CLUSTER_NOT_ACTIVE,
        ErrorCode::JETSTREAM_NOT_ENABLED,
        ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
        ErrorCode::INSUFFICIENT_RESOURCES,
        ErrorCode::STORAGE_RESOURCES_EXCEEDED,
        ErrorCode::STREAM_STORE_FAILED,
    ];
    if code == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM {
        PublishError::Permanent(PermanentCause::TooLarge(text))
    } else if status == 503 || BROKER_SIDE.contains(&code) || code == DUPLICATE_IN_PROCESS {
        PublishError::Transient(TransientCause::BrokerUnavailable(text))
    } else {
        PublishError::Permanent(PermanentCause::Rejected(text))
    }
}

/// Builds the NATS header map, refusing names and values the protocol cannot carry (the client
/// would panic on them) and a message without `Nats-Msg-Id`.
pub(super) fn header_map(headers: &[(String, String)]) -> Result<HeaderMap, PermanentCause> {
    let mut map = HeaderMap::new();
    let mut has_msg_id = false;
    for (name, value) in headers {
        let header_name = HeaderName::from_str(name)
            .map_err(|_| PermanentCause::InvalidHeaders(format!("header name {name:?}")))?;
        let header_value = HeaderValue::from_str(value).map_err(|_| {
            PermanentCause::InvalidHeaders(format!("value of header {name}: {value:?}"))
        })?;
        if name.eq_ignore_ascii_case(MSG_ID_HEADER) {
            if value.is_empty() {
                return Err(PermanentCause::InvalidHeaders(format!(
                    "{MSG_ID_HEADER} is empty"
                )));
            }
            has_msg_id = true;
        }
        map.append(header_name, header_value);
    }
    if !has_msg_id {
        return Err(PermanentCause::InvalidHeaders(format!(
            "{MSG_ID_HEADER} is missing: without it a retried publish is stored twice"
        )));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn headers_need_a_message_id() {
        let error = header_map(&headers(&[("Event-Type", "order.created")])).unwrap_err();
        assert!(error.to_string().contains("Nats-Msg-Id is missing"));
        let error = header_map(&headers(&[("Nats-Msg-Id", "")])).unwrap_err();
        assert!(error.to_string().contains("empty"));
    }

    #[test]
    fn headers_are_copied_in_order() {
        let map = header_map(&headers(&[
            ("Nats-Msg-Id", "0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f70"),
            ("Content-Type", "application/json"),
            ("X-Repeat", "1"),
            ("X-Repeat", "2"),
        ]))
        .unwrap();
        assert_eq!(
            map.get("Nats-Msg-Id").unwrap().as_str(),
            "0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f70"
        );
        assert_eq!(
            map.get("Content-Type").unwrap().as_str(),
            "application/json"
        );
        let repeated: Vec<&str> = map
            .get_all("X-Repeat")
            .map(|value| value.as_str())
            .collect();
        assert_eq!(repeated, vec!["1", "2"]);
    }

    #[test]
    fn unsendable_headers_are_permanent_not_a_panic() {
        for pairs in [
            [("Nats-Msg-Id", "a"), ("Bad:Name", "v")],
            [("Nats-Msg-Id", "a"), ("X-Ok", "line\r\nbreak")],
            [("Nats-Msg-Id", "a"), ("Näme", "v")],
        ] {
            let error = header_map(&headers(&pairs)).unwrap_err();
            assert!(
                matches!(error, PermanentCause::InvalidHeaders(_)),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn api_errors_are_classified_by_code() {
        let classify = |status, code| classify_api_error(status, code, String::new());
        assert!(matches!(
            classify(400, ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM),
            PublishError::Permanent(PermanentCause::TooLarge(_))
        ));
        assert!(classify(503, ErrorCode::CLUSTER_NOT_AVAILABLE).is_transient());
        assert!(classify(503, ErrorCode(0)).is_transient());
        assert!(classify(500, ErrorCode::STREAM_STORE_FAILED).is_transient());
        assert!(classify(503, ErrorCode::JETSTREAM_NOT_ENABLED).is_transient());
        assert!(classify(400, ErrorCode::STORAGE_RESOURCES_EXCEEDED).is_transient());
        assert!(matches!(
            classify(400, ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID),
            PublishError::Permanent(PermanentCause::Rejected(_))
        ));
        assert!(!classify(400, ErrorCode::BAD_REQUEST).is_transient());
    }

    #[test]
    fn a_duplicate_in_process_is_transient() {
        // A leader answers 10158 while the first proposal of the same Nats-Msg-Id is in flight:
        // the message may yet be stored, so the outcome is unknown, not refused.
        let error = classify_api_error(
            409,
            ErrorCode(10158),
            "duplicate message id is in process".into(),
        );
        assert!(error.is_transient(), "{error}");
    }

    #[test]
    fn subject_is_topic_dot_key() {
        let message = OutboxMessage {
            topic: "order.created".into(),
            key: "42".into(),
            payload: Bytes::from_static(b"{}"),
            headers: vec![],
        };
        assert_eq!(message.subject(), "order.created.42");
    }
}
