//! A message of a topic this crate does not know ([`ForeignTopic`]), as its handler sees it:
//! [`RawEvent`], inside [`Event::Other`](crate::consumer::Event::Other).
//!
//! The crate knows nothing of its payload beyond that it is JSON; it knows where the event id
//! and the ordering key are because the group's settings say so. The id is the key of
//! idempotency: a UUID is taken as it is, any other text becomes a UUID derived from the topic
//! and the text ([`RawEvent::event_id`]), so that two topics counting `1, 2, 3` do not collide.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::delivery::Delivery;
use super::schema::SchemaError;
use crate::bus::MSG_ID_HEADER;
use crate::consumer::foreign::{EventIdFrom, ForeignTopic};

/// One message of a foreign topic: where it came from, its id, its body as bytes and as JSON.
#[derive(Debug, Clone)]
pub struct RawEvent {
    topic: String,
    id: String,
    event_id: Uuid,
    subject: String,
    headers: Vec<(String, String)>,
    payload: Bytes,
    body: Value,
    timestamp: DateTime<Utc>,
}

impl RawEvent {
    /// Reads a delivery of `topic`: its id where the topic says (a schema error when it has
    /// none), its body as JSON (a schema error when it is not).
    pub(crate) fn read(topic: &ForeignTopic, delivery: &Delivery) -> Result<RawEvent, SchemaError> {
        let body: Value = serde_json::from_slice(&delivery.payload)
            .map_err(|e| SchemaError(format!("the body is not JSON: {e}")))?;
        let id = match &topic.event_id {
            EventIdFrom::Header(name) => {
                // A dead letter moved the id; its replay carries its own Nats-Msg-Id.
                let name = if delivery.is_replay() && name.eq_ignore_ascii_case(MSG_ID_HEADER) {
                    "Dlq-Original-Msg-Id"
                } else {
                    name.as_str()
                };
                delivery.header(name).map(str::to_owned)
            }
            EventIdFrom::Field(pointer) => match body.pointer(pointer) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            },
        };
        let id = id
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                SchemaError(format!(
                    "no event id ({}) on a message of foreign topic {}",
                    match &topic.event_id {
                        EventIdFrom::Header(name) => format!("header {name}"),
                        EventIdFrom::Field(pointer) => format!("body member {pointer}"),
                    },
                    topic.name
                ))
            })?;
        let timestamp = body
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(delivery.published, |t| t.with_timezone(&Utc));
        let subject = match delivery.is_replay() {
            true => delivery
                .header("Dlq-Source-Subject")
                .unwrap_or(&delivery.subject)
                .to_owned(),
            false => delivery.subject.clone(),
        };
        Ok(RawEvent {
            event_id: idempotency_id(&topic.name, &id),
            topic: topic.name.clone(),
            id,
            subject,
            headers: delivery.headers.clone(),
            payload: delivery.payload.clone(),
            body,
            timestamp,
        })
    }

    /// The topic's name, as the group's [`ForeignTopic::name`] says.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The event's id as the message carries it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key of idempotency: [`RawEvent::id`] when it is a UUID, else a UUID derived from the
    /// topic's name and the id (the processed-events table holds this one).
    pub fn event_id(&self) -> Uuid {
        self.event_id
    }

    /// The subject it was stored on (a replay's original one).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body, byte for byte.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The body as JSON.
    pub fn json(&self) -> &Value {
        &self.body
    }

    /// The body as the handler's own type; a body that does not fit is the handler's to judge
    /// (usually [`Failure::permanent_because`](super::delivery::Failure::permanent_because)).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.body)
    }

    /// The body's `timestamp` when it is RFC 3339, else when the broker stored the message.
    pub fn timestamp(&self) -> DateTime<Utc> {
        self.timestamp
    }

    /// The body's `version` when it has a string one, else empty.
    pub fn version(&self) -> &str {
        self.body
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// The UUID an id is processed under: itself when it is one, else one derived from the topic and
/// the text (a custom, version 8 UUID).
fn idempotency_id(topic: &str, id: &str) -> Uuid {
    if let Ok(uuid) = Uuid::parse_str(id) {
        return uuid;
    }
    let mut hash = Sha256::new();
    hash.update(b"order-service foreign event\0");
    hash.update(topic.as_bytes());
    hash.update([0]);
    hash.update(id.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::foreign::OrderingKey;

    fn delivery(headers: &[(&str, &str)], body: &str) -> Delivery {
        Delivery {
            subject: "payments.settled.eu.p1".into(),
            stream: "PAYMENTS".into(),
            stream_sequence: 1,
            delivered: 1,
            published: Utc::now(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            payload: Bytes::from(body.to_owned()),
        }
    }

    fn topic() -> ForeignTopic {
        ForeignTopic::new("payments.settled", "PAYMENTS", "payments.settled.>")
    }

    #[test]
    fn the_id_comes_from_the_header_or_the_body_and_text_ids_differ_per_topic() {
        let raw =
            RawEvent::read(&topic(), &delivery(&[("Nats-Msg-Id", "p-1")], r#"{"a":1}"#)).unwrap();
        assert_eq!((raw.id(), raw.topic()), ("p-1", "payments.settled"));
        assert_eq!(raw.json()["a"], 1);
        assert_eq!(raw.version(), "");
        let other = ForeignTopic::new("refunds", "REFUNDS", "refunds.>");
        let refund = RawEvent::read(&other, &delivery(&[("Nats-Msg-Id", "p-1")], "{}")).unwrap();
        assert_ne!(raw.event_id(), refund.event_id(), "one text, two topics");
        let uuid = Uuid::now_v7().to_string();
        let by_field = topic().with_event_id(EventIdFrom::Field("/event_id".into()));
        let raw = RawEvent::read(
            &by_field,
            &delivery(&[], &format!(r#"{{"event_id":"{uuid}"}}"#)),
        )
        .unwrap();
        assert_eq!(raw.event_id().to_string(), uuid, "a UUID is taken as it is");
    }

    #[test]
    fn no_id_or_no_json_is_a_schema_error() {
        let error = RawEvent::read(&topic(), &delivery(&[], "{}")).unwrap_err();
        assert!(error.0.contains("no event id"), "{error}");
        let error =
            RawEvent::read(&topic(), &delivery(&[("Nats-Msg-Id", "  ")], "{}")).unwrap_err();
        assert!(error.0.contains("no event id"), "{error}");
        let error =
            RawEvent::read(&topic(), &delivery(&[("Nats-Msg-Id", "x")], "not json")).unwrap_err();
        assert!(error.0.contains("not JSON"), "{error}");
    }

    #[test]
    fn a_replay_keeps_the_original_id_and_subject() {
        let mut d = delivery(
            &[
                ("Nats-Msg-Id", "replay.ORDER_DLQ.7"),
                ("Dlq-Original-Msg-Id", "p-1"),
                ("Dlq-Source-Subject", "payments.settled.eu.p1"),
            ],
            "{}",
        );
        d.stream = crate::consumer::dlq::REPLAY_STREAM.into();
        d.subject = "replay.g.payments.settled.eu.p1".into();
        let raw = RawEvent::read(&topic(), &d).unwrap();
        assert_eq!(raw.id(), "p-1");
        assert_eq!(raw.subject(), "payments.settled.eu.p1");
    }

    #[test]
    fn keys_come_from_a_token_or_a_header() {
        let headers = vec![("Partition-Key".to_owned(), "k9".to_owned())];
        let subject = "payments.settled.eu.p1";
        assert_eq!(OrderingKey::LastToken.of(subject, &headers), "p1");
        assert_eq!(OrderingKey::Token(2).of(subject, &headers), "eu");
        assert_eq!(OrderingKey::Token(9).of(subject, &headers), "");
        assert_eq!(
            OrderingKey::Header("partition-key".into()).of(subject, &headers),
            "k9"
        );
        assert_eq!(OrderingKey::Single.of(subject, &headers), "");
    }
}
