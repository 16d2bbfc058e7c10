//! NATS JetStream: the connection, the topic table and its streams, and publishing events.
//!
//! - [`topics`]: the spec's Kafka topic table (`nats/topics.json`), stream names and subjects.
//! - [`streams`]: one stream per topic; reconcile the server with the table, list and diff them.
//! - [`publish`](mod@publish): publish one outbox message; classify failures as transient or
//!   permanent.
//!
//! An event for topic `order.created` and key `<order_id>` is published on
//! `order.created.<order_id>` and stored by stream `ORDER_CREATED` as
//! `order.created.<partition>.<order_id>`.

pub mod publish;
pub mod streams;
pub mod topics;

use std::time::Duration;

use async_nats::{Client, ConnectError, ConnectOptions, Event};

pub use publish::{
    DEFAULT_ACK_TIMEOUT, MSG_ID_HEADER, OutboxMessage, PermanentCause, PublishError, Published,
    TransientCause, publish,
};
pub use streams::{
    DEFAULT_DUPLICATE_WINDOW, Drift, Fix, ReconcileReport, StreamRow, StreamsError, diff, list,
    reconcile,
};
pub use topics::{Topic, Topics, TopicsError, stream_name, subject};

/// The client name the server shows in its connection list.
const CLIENT_NAME: &str = "order-service";

/// Connects to NATS at `url` (e.g. `nats://127.0.0.1:4222`).
///
/// The first connection is not retried: a wrong URL or a broker that is down at startup is an
/// error the caller sees at once. Once connected, the client reconnects by itself without limit,
/// and disconnects and reconnects are logged.
pub async fn connect(url: &str) -> Result<Client, ConnectError> {
    ConnectOptions::new()
        .name(CLIENT_NAME)
        .connection_timeout(Duration::from_secs(5))
        // The default 60 s means a silently dead connection is noticed only after minutes; in the
        // meantime every publish waits out its timeout.
        .ping_interval(Duration::from_secs(10))
        .event_callback(|event| async move {
            match event {
                Event::Connected => tracing::info!("NATS connection (re)established"),
                Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
                Event::Closed => tracing::info!("NATS connection closed"),
                other => tracing::warn!(event = %other, "NATS client event"),
            }
        })
        .connect(url)
        .await
}
