//! What readiness reports about the bus and the relay, and the relay's signals to the rest of
//! the service: "reconcile the streams", "hold publishing while the streams change", and "hold
//! publishing to this stream while it is checked or repaired".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Notify;

use crate::bus::ReconcileReport;

/// What readiness reports about the bus and the relay.
#[derive(Debug, Default)]
pub struct RelayStatus {
    client: RwLock<Option<async_nats::Client>>,
    streams: RwLock<Option<Result<StreamsSummary, String>>>,
    one_by_one: RwLock<Vec<String>>,
    pub(super) running: AtomicBool,
    last_run_ms: AtomicI64,
    heal: Notify,
    gate: tokio::sync::RwLock<()>,
    /// Per stream: written while the stream is checked or repaired, read while the relay
    /// publishes to it.
    stream_gates: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

/// Holds the relay's publishing to one stream until dropped ([`RelayStatus::pause_stream`]).
pub type StreamPause = tokio::sync::OwnedRwLockWriteGuard<()>;

/// The outcome of the last stream reconciliation.
#[derive(Debug, Clone, Serialize)]
pub struct StreamsSummary {
    /// Streams created.
    pub created: Vec<String>,
    /// Fields updated, as text.
    pub updated: Vec<String>,
    /// Drift left for an operator, as text.
    pub drift: Vec<String>,
    /// Values clamped to what the server holds, as text.
    pub clamps: Vec<String>,
}

impl From<&ReconcileReport> for StreamsSummary {
    fn from(r: &ReconcileReport) -> StreamsSummary {
        StreamsSummary {
            created: r.created.clone(),
            updated: r.updated.iter().map(ToString::to_string).collect(),
            drift: r.manual.iter().map(ToString::to_string).collect(),
            clamps: r.clamps.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A snapshot of [`RelayStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct RelaySnapshot {
    /// Whether the NATS connection is up.
    pub broker_connected: bool,
    /// The last reconciliation: `None` before the first, `Err` when it failed.
    pub streams: Option<Result<StreamsSummary, String>>,
    /// Streams that refused atomic batches and are published one message at a time.
    pub streams_one_by_one: Vec<String>,
    /// Whether the relay loop is running.
    pub relay_running: bool,
    /// When the relay last finished a step.
    pub relay_last_run: Option<DateTime<Utc>>,
}

impl RelayStatus {
    /// Records the NATS client, whose connection state readiness reports.
    pub fn set_client(&self, client: async_nats::Client) {
        *self.client.write().expect("status lock") = Some(client);
    }

    /// Records a reconciliation's outcome.
    pub fn set_streams(&self, outcome: Result<StreamsSummary, String>) {
        *self.streams.write().expect("status lock") = Some(outcome);
    }

    /// Records which streams the relay publishes one message at a time.
    pub(super) fn set_one_by_one(&self, streams: Vec<String>) {
        *self.one_by_one.write().expect("status lock") = streams;
    }

    /// The current state.
    pub fn snapshot(&self) -> RelaySnapshot {
        let broker_connected = self
            .client
            .read()
            .expect("status lock")
            .as_ref()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected);
        let last = self.last_run_ms.load(Ordering::Relaxed);
        RelaySnapshot {
            broker_connected,
            streams: self.streams.read().expect("status lock").clone(),
            streams_one_by_one: self.one_by_one.read().expect("status lock").clone(),
            relay_running: self.running.load(Ordering::Relaxed),
            relay_last_run: (last > 0)
                .then(|| DateTime::from_timestamp_millis(last))
                .flatten(),
        }
    }

    /// Asks for the streams to be reconciled: the relay found a stream of the table missing.
    pub fn request_heal(&self) {
        self.heal.notify_one();
    }

    /// Completes when the relay asks for the streams to be reconciled.
    pub async fn heal_requested(&self) {
        self.heal.notified().await;
    }

    /// Holds the relay's publishing until the guard is dropped (publishes in flight finish
    /// first): a stream whose subjects and subject transform change while messages arrive can
    /// store some of them without the partition token.
    pub async fn pause_publishing(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    /// Held by the relay while it publishes.
    pub(super) async fn publishing(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Holds the relay's publishing to `stream` alone until the guard is dropped (a batch in
    /// flight to it finishes first): a check of the stream reads past its recorded rows, and a
    /// repair puts events back before newer ones, while every other stream goes on publishing.
    pub async fn pause_stream(&self, stream: &str) -> StreamPause {
        self.stream_gate(stream).write_owned().await
    }

    /// Held by the relay while it publishes to `stream`; `None` while the stream is paused, and
    /// the relay sends to the other streams meanwhile.
    pub(super) fn publishing_to(
        &self,
        stream: &str,
    ) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
        self.stream_gate(stream).try_read_owned().ok()
    }

    fn stream_gate(&self, stream: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.stream_gates
            .lock()
            .expect("status lock")
            .entry(stream.to_owned())
            .or_default()
            .clone()
    }

    pub(super) fn beat(&self) {
        self.last_run_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }
}

/// Clears `running` when the relay loop ends, however it ends.
pub(super) struct RunningGuard<'a>(pub(super) &'a RelayStatus);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}
