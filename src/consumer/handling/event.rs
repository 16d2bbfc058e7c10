//! The typed event a consumer group's handler sees, and how a message body becomes one.
//!
//! A message becomes an [`Event`] in three steps: the body must be JSON, its `version` must be
//! `1.x` (another major is refused), and the envelope and the topic's payload must parse into the
//! types of [`crate::domain::events`]. Within major 1, fields these types do not know are dropped:
//! the spec's minor versions add optional fields, and a consumer built for 1.0 must keep reading.
//! A message failing any step is a [`SchemaError`]: it goes to the dead letters at once.
//!
//! A topic this crate does not know (another team's stream, see
//! [`ForeignTopic`](crate::consumer::ForeignTopic)) is not decoded into a type: its messages are
//! [`Event::Other`], a [`RawEvent`] the handler reads as it likes.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use super::raw::RawEvent;
pub use super::schema::SchemaError;
use crate::domain::Topic;
use crate::domain::events::{
    ChatOrderCreated, Envelope, InventoryShortage, OrderAuditEvent, OrderCancelled, OrderConfirmed,
    OrderCreated, OrderLinkedToChat, OrderStatisticsUpdated, OrderStatusChanged,
    OrderStockOverrideApplied, OrderUpdated, SystemMetadata,
};

/// The only major version this consumer understands.
pub const SUPPORTED_MAJOR: u32 = 1;

/// One event of the contract (or of a topic the example subscribers emit), typed by its topic,
/// or of a topic this crate does not know ([`Event::Other`]).
///
/// Non-exhaustive: a handler's `match` ends in `_ => Ok(())` (or names `Other`), so that a topic
/// added to the contract later breaks no handler.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// `order.created`
    Created(Envelope<OrderCreated>),
    /// `order.updated`
    Updated(Envelope<OrderUpdated>),
    /// `order.status_changed`
    StatusChanged(Envelope<OrderStatusChanged>),
    /// `order.confirmed`
    Confirmed(Envelope<OrderConfirmed>),
    /// `order.cancelled`
    Cancelled(Envelope<OrderCancelled>),
    /// `order.stock_override_applied`
    StockOverrideApplied(Envelope<OrderStockOverrideApplied>),
    /// `order.chat_created`
    ChatCreated(Envelope<ChatOrderCreated>),
    /// `order.chat_linked`
    ChatLinked(Envelope<OrderLinkedToChat>),
    /// `order.audit`
    Audit(Envelope<OrderAuditEvent>),
    /// `order.statistics_updated`
    StatisticsUpdated(Envelope<OrderStatisticsUpdated, SystemMetadata>),
    /// `inventory.shortage`, emitted by the inventory example.
    InventoryShortage(Envelope<InventoryShortage>),
    /// A message of a foreign topic (a [`ForeignTopic`](crate::consumer::ForeignTopic) of the
    /// group): not decoded, its id and key found where the group's settings say.
    Other(RawEvent),
}

/// `$body` for each typed event's envelope `$e`, `$other` for a foreign event `$raw`.
macro_rules! each_event {
    ($event:expr, $e:ident => $body:expr, $raw:ident => $other:expr) => {
        match $event {
            Event::Created($e) => $body,
            Event::Updated($e) => $body,
            Event::StatusChanged($e) => $body,
            Event::Confirmed($e) => $body,
            Event::Cancelled($e) => $body,
            Event::StockOverrideApplied($e) => $body,
            Event::ChatCreated($e) => $body,
            Event::ChatLinked($e) => $body,
            Event::Audit($e) => $body,
            Event::StatisticsUpdated($e) => $body,
            Event::InventoryShortage($e) => $body,
            Event::Other($raw) => $other,
        }
    };
}

impl Event {
    /// The event's id (`Nats-Msg-Id`), the key of idempotency.
    pub fn event_id(&self) -> Uuid {
        each_event!(self, e => e.event_id, raw => raw.event_id())
    }

    /// When the event happened.
    pub fn timestamp(&self) -> DateTime<Utc> {
        each_event!(self, e => e.timestamp, raw => raw.timestamp())
    }

    /// The envelope's `version` (a foreign event's body's, or empty).
    pub fn version(&self) -> &str {
        each_event!(self, e => &e.version, raw => raw.version())
    }

    /// The topic's name: the contract's, or the foreign topic's as the group names it.
    pub fn topic_name(&self) -> &str {
        match self {
            Event::Other(raw) => raw.topic(),
            typed => typed.topic().map_or("", Topic::as_str),
        }
    }

    /// The topic of the contract; `None` for a foreign event ([`Event::Other`]).
    pub fn topic(&self) -> Option<Topic> {
        Some(match self {
            Event::Created(_) => Topic::Created,
            Event::Updated(_) => Topic::Updated,
            Event::StatusChanged(_) => Topic::StatusChanged,
            Event::Confirmed(_) => Topic::Confirmed,
            Event::Cancelled(_) => Topic::Cancelled,
            Event::StockOverrideApplied(_) => Topic::StockOverrideApplied,
            Event::ChatCreated(_) => Topic::ChatCreated,
            Event::ChatLinked(_) => Topic::ChatLinked,
            Event::Audit(_) => Topic::Audit,
            Event::StatisticsUpdated(_) => Topic::StatisticsUpdated,
            Event::InventoryShortage(_) => Topic::InventoryShortage,
            Event::Other(_) => return None,
        })
    }

    /// The order the event is about; `None` for `order.statistics_updated`.
    pub fn order_id(&self) -> Option<Uuid> {
        Some(match self {
            Event::Created(e) => e.data.order_id,
            Event::Updated(e) => e.data.order_id,
            Event::StatusChanged(e) => e.data.order_id,
            Event::Confirmed(e) => e.data.order_id,
            Event::Cancelled(e) => e.data.order_id,
            Event::StockOverrideApplied(e) => e.data.order_id,
            Event::ChatCreated(e) => e.data.order_id,
            Event::ChatLinked(e) => e.data.order_id,
            Event::Audit(e) => e.data.order_id,
            Event::InventoryShortage(e) => e.data.order_id,
            Event::StatisticsUpdated(_) | Event::Other(_) => return None,
        })
    }

    /// The order number, when the event carries one.
    pub fn order_number(&self) -> Option<&str> {
        Some(match self {
            Event::Created(e) => &e.data.order_number,
            Event::Updated(e) => &e.data.order_number,
            Event::StatusChanged(e) => &e.data.order_number,
            Event::Confirmed(e) => &e.data.order_number,
            Event::Cancelled(e) => &e.data.order_number,
            Event::StockOverrideApplied(e) => &e.data.order_number,
            Event::ChatCreated(e) => &e.data.order_number,
            Event::ChatLinked(e) => &e.data.order_number,
            Event::Audit(e) => &e.data.order_number,
            Event::InventoryShortage(e) => &e.data.order_number,
            Event::StatisticsUpdated(_) | Event::Other(_) => return None,
        })
    }

    /// The envelope's metadata as JSON (its shape differs for statistics); a foreign event's
    /// body's `metadata` member, or null.
    pub fn metadata(&self) -> Value {
        each_event!(
            self,
            e => serde_json::to_value(&e.metadata).unwrap_or_default(),
            raw => raw.json().get("metadata").cloned().unwrap_or_default()
        )
    }

    /// The payload as JSON; a foreign event's whole body (the crate does not know its shape).
    pub fn data(&self) -> Value {
        each_event!(
            self,
            e => serde_json::to_value(&e.data).unwrap_or_default(),
            raw => raw.json().clone()
        )
    }
}

/// Decodes a message body of `topic` into its typed event.
pub fn decode(topic: Topic, body: &[u8]) -> Result<Event, SchemaError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| SchemaError(format!("the body is not JSON: {e}")))?;
    let version = value
        .get("version")
        .and_then(Value::as_str)
        .ok_or_else(|| SchemaError("the envelope has no string `version`".into()))?;
    let (major, _) = parse_version(version)
        .ok_or_else(|| SchemaError(format!("version {version:?} is not major.minor")))?;
    if major != SUPPORTED_MAJOR {
        return Err(SchemaError(format!(
            "unsupported major version {version} (this consumer reads {SUPPORTED_MAJOR}.x)"
        )));
    }
    let event_type = value.get("event_type").and_then(Value::as_str);
    if event_type != Some(topic.as_str()) {
        return Err(SchemaError(format!(
            "event_type {event_type:?} on topic {}",
            topic.as_str()
        )));
    }
    Ok(match topic {
        Topic::Created => Event::Created(typed(value)?),
        Topic::Updated => Event::Updated(typed(value)?),
        Topic::StatusChanged => Event::StatusChanged(typed(value)?),
        Topic::Confirmed => Event::Confirmed(typed(value)?),
        Topic::Cancelled => Event::Cancelled(typed(value)?),
        Topic::StockOverrideApplied => Event::StockOverrideApplied(typed(value)?),
        Topic::ChatCreated => Event::ChatCreated(typed(value)?),
        Topic::ChatLinked => Event::ChatLinked(typed(value)?),
        Topic::Audit => Event::Audit(typed(value)?),
        Topic::StatisticsUpdated => Event::StatisticsUpdated(typed(value)?),
        Topic::InventoryShortage => Event::InventoryShortage(typed(value)?),
    })
}

fn parse_version(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The most unknown fields a decode drops before it gives up.
const MAX_DROPPED_FIELDS: usize = 64;

/// Parses `value`, dropping each field the types do not know and trying again: any 1.x may carry
/// fields this build does not know (a later minor, or a producer ahead of the version it writes).
/// The payload types deny unknown fields, which is right for the producer and its schemas; a
/// missing or mistyped known field is still an error.
fn typed<T: DeserializeOwned>(mut value: Value) -> Result<T, SchemaError> {
    for _ in 0..=MAX_DROPPED_FIELDS {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(parsed) => return Ok(parsed),
            Err(error) => error,
        };
        let message = error.inner().to_string();
        let path = error.path().to_string();
        if !(message.starts_with("unknown field `") && drop_field(&mut value, error.path())) {
            return Err(SchemaError(format!("{path}: {message}")));
        }
    }
    Err(SchemaError("too many unknown fields".into()))
}

/// Removes the field a path ends in; false when the path does not lead to one.
fn drop_field(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    let segments: Vec<&serde_path_to_error::Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = value;
    for segment in parents {
        at = match segment {
            serde_path_to_error::Segment::Map { key } => match at.get_mut(key.as_str()) {
                Some(next) => next,
                None => return false,
            },
            serde_path_to_error::Segment::Seq { index } => match at.get_mut(*index) {
                Some(next) => next,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, at.as_object_mut()) {
        (serde_path_to_error::Segment::Map { key }, Some(object)) => object.remove(key).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn linked(version: &str) -> Value {
        json!({
            "event_id": "0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f70",
            "event_type": "order.chat_linked",
            "timestamp": "2025-06-29T10:35:00Z",
            "version": version,
            "source": "order-service",
            "data": {
                "order_id": "0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f71",
                "order_number": "ORD-2025-001234",
                "chat_id": "0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f72",
                "link_type": "support",
                "linked_by": "0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f73",
                "context": "where is it"
            },
            "metadata": {
                "correlation_id": "0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f74",
                "causation_id": "0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f75",
                "user_id": "0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f76"
            }
        })
    }

    fn bytes(value: &Value) -> Vec<u8> {
        serde_json::to_vec(value).unwrap()
    }

    #[test]
    fn reads_1_0_and_drops_unknown_fields() {
        let event = decode(Topic::ChatLinked, &bytes(&linked("1.0"))).unwrap();
        assert_eq!(event.topic(), Some(Topic::ChatLinked));
        assert_eq!(event.topic_name(), "order.chat_linked");
        assert_eq!(event.order_number(), Some("ORD-2025-001234"));
        let mut extra = linked("1.0");
        extra["data"]["colour"] = json!("red");
        extra["tenant"] = json!("t1");
        let event = decode(Topic::ChatLinked, &bytes(&extra)).unwrap();
        assert!(event.data().get("colour").is_none(), "{:?}", event.data());
        // A known field of the wrong type is still an error.
        let mut wrong = linked("1.0");
        wrong["data"]["chat_id"] = json!(7);
        let error = decode(Topic::ChatLinked, &bytes(&wrong)).unwrap_err();
        assert!(error.0.contains("chat_id"), "{error}");
    }

    #[test]
    fn a_newer_minor_may_add_fields_anywhere() {
        let mut newer = linked("1.3");
        newer["data"]["colour"] = json!("red");
        newer["metadata"]["tenant"] = json!("t1");
        newer["trace"] = json!({"a": 1});
        let event = decode(Topic::ChatLinked, &bytes(&newer)).unwrap();
        assert_eq!(event.version(), "1.3");
        // Missing fields are still an error.
        let mut missing = linked("1.3");
        missing["data"].as_object_mut().unwrap().remove("chat_id");
        assert!(decode(Topic::ChatLinked, &bytes(&missing)).is_err());
    }

    #[test]
    fn other_majors_and_garbage_are_schema_errors() {
        for version in ["2.0", "0.9", "1", "x.y"] {
            let error = decode(Topic::ChatLinked, &bytes(&linked(version))).unwrap_err();
            assert!(error.0.contains("version"), "{version}: {error}");
        }
        assert!(decode(Topic::ChatLinked, b"not json").is_err());
        assert!(decode(Topic::Created, &bytes(&linked("1.0"))).is_err());
    }

    /// The spec's examples write `"uuid"` for every id: a real one instead.
    fn real_ids(value: &mut Value) {
        match value {
            Value::String(s) if s == "uuid" => *s = "0190b6e2-6f1c-7a55-9a1e-2f3c4d5e6f70".into(),
            Value::Array(items) => items.iter_mut().for_each(real_ids),
            Value::Object(map) => map.values_mut().for_each(real_ids),
            _ => {}
        }
    }

    /// Any bytes, any JSON, and each contract example with a member replaced by any JSON value:
    /// a typed event or a [`SchemaError`] that says why, never a panic.
    #[test]
    fn any_body_decodes_or_says_why() {
        use proptest::prelude::*;
        let examples: Vec<(Topic, Value)> = Topic::ALL
            .iter()
            .filter(|t| **t != Topic::InventoryShortage)
            .map(|t| {
                let path = format!(
                    "{}/tests/contract/{}.json",
                    env!("CARGO_MANIFEST_DIR"),
                    t.as_str()
                );
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                let mut example: Value = serde_json::from_str(&text).unwrap();
                real_ids(&mut example);
                (*t, example)
            })
            .collect();
        // (Not every example decodes: the spec writes some objects as `{...}`, copied as `{}`.)
        let decoding = examples
            .iter()
            .filter(|(topic, example)| decode(*topic, example.to_string().as_bytes()).is_ok())
            .count();
        assert!(decoding >= 5, "{decoding} of the examples decode");
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            Just(json!("1.999999999999")),
            Just(json!("2.0")),
        ];
        let any_json = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,10}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        let strategy = (
            0..examples.len(),
            prop::collection::vec(any::<u8>(), 0..64),
            any::<usize>(),
            any_json,
        );
        let said_why = |result: Result<Event, SchemaError>| match result {
            Ok(_) => true,
            Err(SchemaError(why)) => !why.is_empty(),
        };
        crate::seeded::runner("event decode")
            .run(&strategy, |(which, bytes, member, value)| {
                let (topic, example) = &examples[which];
                prop_assert!(said_why(decode(*topic, &bytes)));
                prop_assert!(said_why(decode(*topic, value.to_string().as_bytes())));
                // One member of the envelope or of its payload replaced.
                let mut changed = example.clone();
                let data_keys: Vec<String> = changed["data"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                let top_keys: Vec<String> = changed.as_object().unwrap().keys().cloned().collect();
                if member % 2 == 0 && !data_keys.is_empty() {
                    changed["data"][&data_keys[member / 2 % data_keys.len()]] = value;
                } else {
                    changed[&top_keys[member / 2 % top_keys.len()]] = value;
                }
                prop_assert!(said_why(decode(*topic, changed.to_string().as_bytes())));
                Ok(())
            })
            .unwrap();
    }
}
