//! The envelope every event travels in, its two kinds of metadata, and the [`Payload`] trait that
//! ties a payload type to its topic and subject key.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::topic::Topic;

/// The envelope's `version`.
pub const EVENT_VERSION: &str = "1.0";
/// The envelope's `source`.
pub const EVENT_SOURCE: &str = "order-service";

/// The envelope every event travels in.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Envelope<T, M = Metadata> {
    /// Unique id of this event (UUIDv7; UUIDv8, derived from its cause, for an event a subscriber
    /// emits); also the `Nats-Msg-Id`.
    pub event_id: Uuid,
    /// The topic.
    pub event_type: String,
    /// When the event happened (RFC 3339, UTC).
    pub timestamp: DateTime<Utc>,
    /// The schema version, `1.0`.
    pub version: String,
    /// `order-service`; for an event a subscriber emits, its group (`inventory-service`).
    pub source: String,
    /// The topic's payload.
    pub data: T,
    /// Correlation and causation.
    pub metadata: M,
}

/// Metadata of events caused by a user.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Links related events across services: the request's `X-Correlation-ID`.
    pub correlation_id: Uuid,
    /// The request id for a request's first event, that event's id for the others.
    pub causation_id: Uuid,
    /// The user who acted: the token's subject.
    pub user_id: Uuid,
}

/// Metadata of derived events that the contract gives no user (`order.statistics_updated`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemMetadata {
    /// Links related events across services.
    pub correlation_id: Uuid,
    /// The event that made the statistics stale.
    pub causation_id: Uuid,
}

/// What the envelope's metadata is built from.
#[derive(Debug, Clone, Copy)]
pub struct MetadataParts {
    /// See [`Metadata::correlation_id`].
    pub correlation_id: Uuid,
    /// See [`Metadata::causation_id`].
    pub causation_id: Uuid,
    /// See [`Metadata::user_id`].
    pub user_id: Uuid,
}

impl From<MetadataParts> for Metadata {
    fn from(p: MetadataParts) -> Metadata {
        Metadata {
            correlation_id: p.correlation_id,
            causation_id: p.causation_id,
            user_id: p.user_id,
        }
    }
}

impl From<MetadataParts> for SystemMetadata {
    fn from(p: MetadataParts) -> SystemMetadata {
        SystemMetadata {
            correlation_id: p.correlation_id,
            causation_id: p.causation_id,
        }
    }
}

/// An event payload: which topic it belongs to and which key its subject carries.
pub trait Payload: Serialize + JsonSchema {
    /// The topic.
    const TOPIC: Topic;
    /// The envelope's metadata type.
    type Metadata: From<MetadataParts> + Serialize + JsonSchema;
    /// The subject key: the order id, or the customer id for statistics.
    fn key(&self) -> Uuid;
}
