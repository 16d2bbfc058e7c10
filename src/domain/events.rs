//! The ten order events of the contract, field for field, and the envelope around them.
//!
//! Each payload type names its topic and the key its subject carries (the order id, or the
//! customer id for `order.statistics_updated`). [`Events`] stamps a request's events with ids,
//! the envelope, the causation chain and the NATS headers, ready for the outbox.
//!
//! Its parts, re-exported here (each depends only on those above it):
//! - `topic`: the ten topics.
//! - `envelope`: the envelope, its metadata, and the [`Payload`] trait.
//! - `payloads`: the ten payloads and the types inside them, and `inventory.shortage`'s.
//! - `schema`: the JSON Schema of each topic's message.
//! - `request`: a request's events, stamped for the outbox.

mod envelope;
mod payloads;
mod request;
mod schema;
mod topic;

pub use envelope::{
    EVENT_SOURCE, EVENT_VERSION, Envelope, Metadata, MetadataParts, Payload, SystemMetadata,
};
pub use payloads::{
    Actor, AuditChange, ChatOrderCreated, CustomerPreferences, DateRange, InventoryShortage,
    ItemChanges, ItemLine, ModifiedItem, OldNew, OrderAuditEvent, OrderCancelled, OrderChanges,
    OrderConfirmed, OrderCreated, OrderLinkedToChat, OrderStatisticsUpdated, OrderStatusChanged,
    OrderStockOverrideApplied, OrderUpdated, OverriddenItem, OverrideDetails, RestockItem,
    StatusChange,
};
pub use request::{EventContext, Events, OutboxEvent};
pub use topic::Topic;
