//! NATS JetStream: the connection, the topic table and its streams, and publishing events.
//!
//! - [`connect`](mod@connect): the server list and the connection.
//! - [`topics`]: the spec's Kafka topic table (`nats/topics.json`), stream names and subjects.
//! - [`streams`]: one stream per topic; reconcile the server with the table, list and diff them.
//! - [`publish`](mod@publish): publish one outbox message; classify failures as transient or
//!   permanent.
//!
//! An event for topic `order.created` and key `<order_id>` is published on
//! `order.created.<order_id>` and stored by stream `ORDER_CREATED` as
//! `order.created.<partition>.<order_id>`.

pub mod batch;
pub mod connect;
pub mod publish;
pub mod streams;
pub mod topics;

pub use batch::{BatchAck, BatchError, MAX_BATCH, publish_batch};
pub use connect::{NatsSettings, connect, connect_watched, inbox_prefix};
pub use publish::{
    DEFAULT_ACK_TIMEOUT, MSG_ID_HEADER, OutboxMessage, PermanentCause, PublishError, Published,
    TransientCause, publish,
};
pub use streams::{
    DEFAULT_DUPLICATE_WINDOW, Drift, Fix, ReconcileReport, StreamRow, StreamsError, diff, list,
    reconcile,
};
pub use topics::{TopicSpec, Topics, TopicsError, stream_name, subject};
