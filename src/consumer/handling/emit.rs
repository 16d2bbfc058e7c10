//! Handlers that publish: a consumer group's own outbox, relayed by the service's relay.
//!
//! A group made with [`Group::emitting`](crate::consumer::Group::emitting) gets the service's
//! outbox table in its own SQLite file ([`Store::open_outbox`]). A handler records an outgoing
//! event with [`HandlerTx::emit`](crate::consumer::HandlerTx::emit): the row is written in the
//! handler's savepoint, so it commits with the handler's effects and the processed-event row, and a
//! failing handler's rollback takes it with it. After the batch commits, the group's [`Relay`] is
//! woken and publishes the rows exactly as the service publishes its own: batches per stream,
//! commit order per key, transient and permanent failures, dead rows, cleanup.
//!
//! Each emitted event's id, also its `Nats-Msg-Id`, is derived from the group, the incoming
//! event's id and the emit's position in the handler's run ([`derived_id`]): a handler run again
//! after a crash before its commit writes the same ids, and a row published before a crash and
//! published again after it is a duplicate to JetStream. The envelope's `source` is the group,
//! `causation_id` the incoming event's id, `correlation_id` (and `user_id`) carried over.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use rusqlite::Connection;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::delivery::{Delivery, Failure};
use super::event::Event;
use crate::backoff::{Backoff, BackoffKind};
use crate::bus::{self, Topics, topics::is_valid_key};
use crate::consumer::ConsumerError;
use crate::consumer::config::GroupConfig;
use crate::domain::events::{EVENT_VERSION, Envelope, Metadata};
use crate::metrics::Metrics;
use crate::relay::{self, DEFAULT_PUBLISH_BATCH, Relay, RelayConfig, RelayStatus};
use crate::shutdown::Shutdown;
use crate::store::outbox::{self, NewRow};
use crate::store::{Store, StoreConfig, Synchronous};

/// What a group emits and how its outbox is relayed.
pub struct Emits {
    topics: Topics,
    /// The relay's settings; [`Emits::new`] takes the service's defaults.
    pub relay: RelayConfig,
    /// The duplicate window of the emitted topics' streams.
    pub duplicate_window: Duration,
    /// How long published rows are kept (the service's `EVENT_OUTBOX_RETENTION`).
    pub retention: Duration,
    /// How often published rows past the retention are deleted.
    pub cleanup_interval: Duration,
    /// How often the streams are checked for events they acknowledged and no longer hold (the
    /// service's `EVENT_OUTBOX_VERIFY_INTERVAL`); what is missing is published again.
    pub verify_interval: Duration,
    status: Arc<RelayStatus>,
    metrics: Arc<Metrics>,
}

impl Emits {
    /// Emits to the topics of `topics` (a table like `nats/topics.json`: the group owns these
    /// streams and reconciles them when it starts), relayed with the service's default settings.
    pub fn new(topics: Topics) -> Emits {
        let relay = RelayConfig {
            batch_size: 10,
            publish_batch: DEFAULT_PUBLISH_BATCH,
            polling_interval: Duration::from_secs(5),
            max_retries: 3,
            retry: Backoff {
                kind: BackoffKind::Exponential,
                base: Duration::from_secs(1),
                max: Duration::from_secs(300),
            },
            ack_timeout: bus::DEFAULT_ACK_TIMEOUT,
            duplicate_window: bus::DEFAULT_DUPLICATE_WINDOW,
            window: 256,
            table_topics: Arc::new(topics.iter().map(|t| t.name.clone()).collect()),
        };
        Emits {
            topics,
            relay,
            duplicate_window: bus::DEFAULT_DUPLICATE_WINDOW,
            retention: Duration::from_secs(24 * 60 * 60),
            cleanup_interval: Duration::from_secs(60),
            verify_interval: Duration::from_secs(5 * 60),
            status: Arc::new(RelayStatus::default()),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The topics the group emits.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The relay's state: broker, streams, whether it runs. Holding
    /// [`RelayStatus::pause_publishing`] holds the relay's publishing.
    pub fn status(&self) -> Arc<RelayStatus> {
        self.status.clone()
    }

    /// The relay's metrics (the service's metric names, for this group's outbox).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }
}

/// A running group's outbox: the table in the group's file, and its relay.
pub(crate) struct Outbox {
    emits: Arc<Emits>,
    group: String,
    store: Store,
}

tokio::task_local! {
    /// The outbox of the group whose worker runs in this task; see [`scope`].
    static OUTBOX: Option<Arc<Outbox>>;
}

/// Runs a worker with its group's outbox in reach of its batches ([`current`]), so that the
/// worker itself need not know whether its group emits.
pub(in crate::consumer) async fn scope<F: Future>(
    outbox: Option<Arc<Outbox>>,
    worker: F,
) -> F::Output {
    OUTBOX.scope(outbox, worker).await
}

/// The outbox of the running worker's group, if it emits.
pub(in crate::consumer) fn current() -> Option<Arc<Outbox>> {
    OUTBOX.try_with(Clone::clone).ok().flatten()
}

impl Outbox {
    /// Opens the outbox table in the group's database (before any worker runs, so that handlers
    /// find it); `None` when the group emits nothing.
    pub(in crate::consumer) fn open(
        emits: Option<&Arc<Emits>>,
        config: &GroupConfig,
    ) -> Result<Option<Arc<Outbox>>, ConsumerError> {
        let Some(emits) = emits else {
            return Ok(None);
        };
        let store = Store::open_outbox(&StoreConfig {
            path: config.database.clone(),
            synchronous: if config.synchronous_full {
                Synchronous::Full
            } else {
                Synchronous::Normal
            },
            readers: 2,
        })?;
        Ok(Some(Arc::new(Outbox {
            emits: emits.clone(),
            group: config.group.clone(),
            store,
        })))
    }

    /// Reconciles the emitted topics' streams (waiting for the broker as long as it takes) and
    /// repairs them, then relays the outbox and cleans it up until `stop`; as the service does,
    /// a stream that goes missing is reconciled again when the relay asks for it, and a stream
    /// found missing events it acknowledged gets them again.
    pub(in crate::consumer) async fn run(
        self: Arc<Self>,
        js: jetstream::Context,
        stop: Shutdown,
    ) -> Result<(), ConsumerError> {
        let e = &self.emits;
        e.status.set_client(js.client());
        let js = jetstream::ContextBuilder::new()
            .timeout(e.relay.ack_timeout)
            .build(js.client());
        let kept = relay::streams::Kept {
            js: &js,
            topics: &e.topics,
            duplicate_window: e.duplicate_window,
            status: &e.status,
            also: None,
        };
        tokio::select! {
            () = stop.signal() => return Ok(()),
            () = relay::streams::reconcile(kept) => {}
        }
        let relay = Relay::new(
            self.store.clone(),
            js.clone(),
            RelayConfig {
                duplicate_window: e.duplicate_window,
                ..e.relay.clone()
            },
            e.metrics.clone(),
            e.status.clone(),
        );
        let held = tokio::select! {
            () = stop.signal() => return Ok(()),
            held = relay::streams::hold_for_repair(&relay) => held,
        };
        // The group's client is its caller's, whose reconnects are not watched here: a stream
        // lost with the broker's store is found by the relay (which asks for a reconcile) or by
        // the periodic check.
        let reconnected = tokio::sync::Notify::new();
        let healed = async {
            relay::streams::repair_at_start(&relay, held).await;
            relay::streams::reconcile_on_reconnect(kept, &reconnected, &relay, e.verify_interval)
                .await
        };
        let cleaned = relay::cleanup::run(
            self.store.clone(),
            e.retention,
            e.cleanup_interval,
            stop.signal(),
        );
        tracing::info!(group = %self.group, topics = e.topics.len(), "relaying the group's emitted events");
        tokio::select! {
            () = relay.clone().run(stop.signal()) => {}
            () = healed => {}
        }
        cleaned.await;
        Ok(())
    }

    /// Wakes the relay: a batch that emitted events has committed.
    pub(in crate::consumer) fn committed(&self) {
        self.store.outbox_committed().notify_one();
    }
}

/// The id of the `position`-th event (from 0) that `group`'s handler emits for the incoming event
/// `cause`: a UUIDv8 made of a SHA-256 of the three, so a run again emits the same ids and two
/// groups never share one.
pub fn derived_id(group: &str, cause: Uuid, position: u32) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(b"order-service emitted event\0");
    hash.update(group.as_bytes());
    hash.update([0]);
    hash.update(cause.as_bytes());
    hash.update(position.to_be_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Headers a handler may not set: the relay and the envelope own them.
fn is_reserved(name: &str) -> bool {
    [
        "Event-Type",
        "Event-Version",
        "Content-Type",
        "Correlation-Id",
    ]
    .iter()
    .any(|r| r.eq_ignore_ascii_case(name))
        || name.len() >= 5 && name[..5].eq_ignore_ascii_case("Nats-")
}

/// What one handler run emits with: the incoming event it answers and the next position.
pub(crate) struct Emitter {
    outbox: Arc<Outbox>,
    cause: Uuid,
    correlation_id: Uuid,
    user_id: Uuid,
    traceparent: Option<String>,
    emitted: u32,
}

impl Emitter {
    /// For a handler's run on `event`.
    pub(crate) fn new(outbox: Arc<Outbox>, event: &Event, delivery: &Delivery) -> Emitter {
        let metadata = event.metadata();
        let id = |field: &str| {
            metadata
                .get(field)
                .and_then(|v| v.as_str())
                .and_then(|s| Uuid::parse_str(s).ok())
        };
        Emitter {
            outbox,
            cause: event.event_id(),
            // Every event of the contract has one; the incoming id starts a chain otherwise.
            correlation_id: id("correlation_id").unwrap_or(event.event_id()),
            // `order.statistics_updated` has no user: the nil UUID says "the system".
            user_id: id("user_id").unwrap_or(Uuid::nil()),
            // The run's `event` span when spans are exported, so that what this event causes
            // is a child of this handler's work; else the incoming context, passed on.
            traceparent: crate::trace_context::for_written_event(delivery.header("traceparent")),
            emitted: 0,
        }
    }

    /// How many events this run has emitted.
    pub(crate) fn emitted(&self) -> u32 {
        self.emitted
    }

    /// Writes one event as a pending outbox row on `conn`, inside the handler's savepoint.
    pub(crate) fn emit(
        &mut self,
        conn: &Connection,
        topic: &str,
        key: &str,
        data: &impl Serialize,
        headers: &[(&str, &str)],
    ) -> Result<Uuid, Failure> {
        let outbox = &self.outbox;
        if outbox.emits.topics.get(topic).is_none() {
            return Err(Failure::permanent(format!(
                "{} emits to {topic}, which its table of emitted topics does not have",
                outbox.group
            )));
        }
        if !is_valid_key(key) {
            return Err(Failure::permanent(format!(
                "{key:?} cannot be a subject key: one token, no '.', '*', '>' or spaces"
            )));
        }
        if let Some((name, _)) = headers.iter().find(|(name, _)| is_reserved(name)) {
            return Err(Failure::permanent(format!(
                "header {name} is set by the outbox, not by a handler"
            )));
        }
        let event_id = derived_id(&outbox.group, self.cause, self.emitted);
        let now = Utc::now();
        let envelope = Envelope {
            event_id,
            event_type: topic.to_owned(),
            timestamp: now,
            version: EVENT_VERSION.to_owned(),
            source: outbox.group.clone(),
            data,
            metadata: Metadata {
                correlation_id: self.correlation_id,
                causation_id: self.cause,
                user_id: self.user_id,
            },
        };
        let payload = serde_json::to_string(&envelope)
            .map_err(|e| Failure::permanent(format!("the payload does not serialize: {e}")))?;
        let mut all = vec![
            ("Nats-Msg-Id".to_owned(), event_id.to_string()),
            ("Event-Type".to_owned(), topic.to_owned()),
            ("Event-Version".to_owned(), EVENT_VERSION.to_owned()),
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("Correlation-Id".to_owned(), self.correlation_id.to_string()),
        ];
        if let Some(traceparent) = &self.traceparent {
            all.push(("traceparent".to_owned(), traceparent.clone()));
        }
        all.extend(
            headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        outbox::insert_row(
            conn,
            &NewRow {
                event_id,
                topic,
                key,
                payload: &payload,
                headers: &all,
                created_at: now,
            },
        )
        .map_err(|e| {
            // A full disk or a lock is the group's fault, not the event's: noted, it opens the
            // breaker and holds the message instead of using up its deliveries.
            if let crate::store::StoreError::Sqlite(error) = &e {
                crate::consumer::breaker::note_store_error(error);
            }
            Failure::transient(format!("writing the emitted event: {e}"))
        })?;
        self.emitted += 1;
        Ok(event_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let cause = Uuid::now_v7();
        let id = derived_id("inventory-service", cause, 0);
        assert_eq!(id, derived_id("inventory-service", cause, 0));
        assert_eq!(id.get_version_num(), 8);
        for other in [
            derived_id("inventory-service", cause, 1),
            derived_id("billing-service", cause, 0),
            derived_id("inventory-service", Uuid::now_v7(), 0),
        ] {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn handlers_may_not_set_the_outbox_headers() {
        for name in ["Nats-Msg-Id", "nats-batch-id", "Event-Type", "content-type"] {
            assert!(is_reserved(name), "{name}");
        }
        for name in ["traceparent", "X-Reason", "Nat"] {
            assert!(!is_reserved(name), "{name}");
        }
    }
}
