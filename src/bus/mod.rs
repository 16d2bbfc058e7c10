//! NATS JetStream: the connection, the topic table and its streams, and publishing events.
//!
//! - [`topics`]: the spec's Kafka topic table (`nats/topics.json`), stream names and subjects.
//! - [`streams`]: one stream per topic; reconcile the server with the table, list and diff them.
//! - [`publish`]: publish one outbox message and classify failures as transient or permanent.
//!
//! An event for topic `order.created` and key `<order_id>` is published on
//! `order.created.<order_id>` and stored by stream `ORDER_CREATED` as
//! `order.created.<partition>.<order_id>`.

pub mod streams;
pub mod topics;

pub use streams::{
    DEFAULT_DUPLICATE_WINDOW, Drift, Fix, ReconcileReport, StreamRow, StreamsError, diff, list,
    reconcile,
};
pub use topics::{Topic, Topics, TopicsError, stream_name, subject};
