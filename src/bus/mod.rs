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

pub mod batch;
pub mod publish;
pub mod streams;
pub mod topics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use async_nats::{Client, ConnectError, ConnectOptions, Event};

pub use batch::{BatchAck, BatchError, MAX_BATCH, publish_batch};
pub use publish::{
    DEFAULT_ACK_TIMEOUT, MSG_ID_HEADER, OutboxMessage, PermanentCause, PublishError, Published,
    TransientCause, publish,
};
pub use streams::{
    DEFAULT_DUPLICATE_WINDOW, Drift, Fix, ReconcileReport, StreamRow, StreamsError, diff, list,
    reconcile,
};
pub use topics::{TopicSpec, Topics, TopicsError, stream_name, subject};

/// The client name the server shows in its connection list.
const CLIENT_NAME: &str = "order-service";

/// Connects to NATS at `url` (e.g. `nats://127.0.0.1:4222`).
///
/// The first connection is not retried: a wrong URL or a broker that is down at startup is an
/// error the caller sees at once. Once connected, the client reconnects by itself without limit,
/// and disconnects and reconnects are logged.
pub async fn connect(url: &str) -> Result<Client, ConnectError> {
    connect_watched(url, Arc::new(Notify::new())).await
}

/// [`connect`], and `reconnected` is notified each time the connection is established again
/// after a loss: the server on the other end may have come back without its streams.
pub async fn connect_watched(url: &str, reconnected: Arc<Notify>) -> Result<Client, ConnectError> {
    let first = Arc::new(AtomicBool::new(true));
    ConnectOptions::new()
        .name(CLIENT_NAME)
        .connection_timeout(Duration::from_secs(5))
        // The default 60 s means a silently dead connection is noticed only after minutes; in the
        // meantime every publish waits out its timeout.
        .ping_interval(Duration::from_secs(10))
        .event_callback(move |event| {
            let (first, reconnected) = (first.clone(), reconnected.clone());
            async move {
                match event {
                    Event::Connected => {
                        tracing::info!("NATS connection (re)established");
                        if !first.swap(false, Ordering::Relaxed) {
                            reconnected.notify_one();
                        }
                    }
                    Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
                    Event::Closed => tracing::info!("NATS connection closed"),
                    other => tracing::warn!(event = %other, "NATS client event"),
                }
            }
        })
        .connect(url)
        .await
}
