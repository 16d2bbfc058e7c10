//! The outbox relay: reads pending outbox rows in commit order, publishes them to JetStream and
//! marks them published with the stream and sequence the broker acknowledged.
//!
//! - [`Relay::run_once`] is one step: read a batch, publish it, record the outcome.
//! - [`Relay::run`] loops over pipelined passes ([`pipeline`]): a window of publishes in flight
//!   across batches, the next batch read while acks arrive, marks in batch transactions; woken
//!   right after each commit that wrote outbox rows, polling only as a fallback, and backing off
//!   while the broker is away.
//! - [`crate::backoff`] is the retry schedule of permanent failures; [`cleanup`] keeps the table
//!   bounded.
//!
//! Per subject key (the order, or the customer for statistics) the commit order is the publish
//! order: each key's rows are published one after another (one in flight per key), stopping at
//! the key's first failure, while different keys are published concurrently. A row that waits for a retry, or is
//! dead, holds back only the later rows of its own key.

pub mod cleanup;
mod pipeline;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

pub use crate::backoff::{Backoff, BackoffKind};
use crate::bus::{OutboxMessage, PublishError, Published, ReconcileReport, publish};
use crate::metrics::Metrics;
use crate::store::outbox::{self, Due};
use crate::store::{Store, StoreError};
use pipeline::PassEnd;

/// The shortest and longest wait while the broker is unreachable.
const BROKER_BACKOFF_MIN: Duration = Duration::from_millis(100);
const BROKER_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How the relay works.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows read per batch (`EVENT_OUTBOX_BATCH_SIZE`).
    pub batch_size: u32,
    /// The fallback poll when no commit wakes the relay (`EVENT_OUTBOX_POLLING_INTERVAL`).
    pub polling_interval: Duration,
    /// Retries of a permanent failure before the row is dead (`EVENT_OUTBOX_MAX_RETRIES`).
    pub max_retries: u32,
    /// The wait between those retries (`EVENT_OUTBOX_RETRY_BACKOFF`).
    pub retry: Backoff,
    /// How long to wait for a PubAck.
    pub ack_timeout: Duration,
    /// Publishes in flight at most, across keys and batches (`EVENT_OUTBOX_PUBLISH_WINDOW`);
    /// a key never has more than one.
    pub window: usize,
}

/// What one [`Relay::run_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Rows read.
    pub read: usize,
    /// Rows acknowledged (duplicates included).
    pub published: usize,
    /// Of those, acknowledged as duplicates.
    pub duplicates: usize,
    /// Rows whose publish failed because the broker was away; no attempt was used.
    pub transient: usize,
    /// Rows whose publish failed permanently; one attempt used.
    pub permanent: usize,
    /// Of those, rows that used up their retries and are now dead.
    pub dead: usize,
    /// Rows not tried because an earlier row of their key failed in this batch.
    pub held_back: usize,
}

/// What readiness reports about the bus and the relay.
#[derive(Debug, Default)]
pub struct RelayStatus {
    client: RwLock<Option<async_nats::Client>>,
    streams: RwLock<Option<Result<StreamsSummary, String>>>,
    running: AtomicBool,
    last_run_ms: AtomicI64,
}

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
            relay_running: self.running.load(Ordering::Relaxed),
            relay_last_run: (last > 0)
                .then(|| DateTime::from_timestamp_millis(last))
                .flatten(),
        }
    }

    fn beat(&self) {
        self.last_run_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }
}

/// Clears `running` when the relay loop ends, however it ends.
struct RunningGuard<'a>(&'a RelayStatus);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}

/// The relay.
#[derive(Clone)]
pub struct Relay {
    store: Store,
    js: jetstream::Context,
    config: RelayConfig,
    metrics: Arc<Metrics>,
    status: Arc<RelayStatus>,
}

impl Relay {
    /// A relay publishing `store`'s outbox through `js`.
    pub fn new(
        store: Store,
        js: jetstream::Context,
        config: RelayConfig,
        metrics: Arc<Metrics>,
        status: Arc<RelayStatus>,
    ) -> Relay {
        Relay {
            store,
            js,
            config,
            metrics,
            status,
        }
    }

    /// One step: publishes up to a batch of due rows and records the outcome in one transaction.
    pub async fn run_once(&self) -> Result<Outcome, StoreError> {
        let now = Utc::now();
        let batch = self.config.batch_size;
        let rows = self
            .store
            .read(move |conn| outbox::due(conn, now, 0, batch))
            .await?;
        let mut outcome = Outcome {
            read: rows.len(),
            ..Outcome::default()
        };
        if rows.is_empty() {
            return Ok(outcome);
        }

        // One chain per key, in commit order; chains run concurrently, a chain stops at its
        // first failure so that nothing of that key overtakes the failed row.
        let mut chains: Vec<Vec<Due>> = Vec::new();
        let mut chain_of: HashMap<String, usize> = HashMap::new();
        for row in rows {
            let at = *chain_of.entry(row.key.clone()).or_insert_with(|| {
                chains.push(Vec::new());
                chains.len() - 1
            });
            chains[at].push(row);
        }
        let window = chains.len().max(1);
        let results: Vec<(Due, Result<Published, PublishError>)> = futures::stream::iter(chains)
            .map(|chain| self.publish_chain(chain))
            .buffer_unordered(window)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        outcome.held_back = outcome.read - results.len();

        let acked_at = Utc::now();
        let records = results
            .into_iter()
            .map(|(row, result)| (row.id, self.record(&row, result, &mut outcome, acked_at)))
            .collect();
        self.write_records(records, acked_at).await?;
        Ok(outcome)
    }

    async fn publish_chain(&self, chain: Vec<Due>) -> Vec<(Due, Result<Published, PublishError>)> {
        let mut results = Vec::with_capacity(chain.len());
        for row in chain {
            let (row, result) = self.publish_row(row).await;
            let failed = result.is_err();
            results.push((row, result));
            if failed {
                break;
            }
        }
        results
    }

    /// Publishes one row and waits for its PubAck (or the failure).
    async fn publish_row(&self, row: Due) -> (Due, Result<Published, PublishError>) {
        let message = OutboxMessage {
            topic: row.topic.clone(),
            key: row.key.clone(),
            payload: row.payload.clone().into(),
            headers: row.headers.clone(),
        };
        let result = publish(&self.js, &message, self.config.ack_timeout).await;
        (row, result)
    }

    /// What to write for a publish's outcome; counts it in `outcome` and the metrics.
    fn record(
        &self,
        row: &Due,
        result: Result<Published, PublishError>,
        outcome: &mut Outcome,
        acked_at: DateTime<Utc>,
    ) -> Record {
        match result {
            Ok(ack) => {
                outcome.published += 1;
                outcome.duplicates += usize::from(ack.duplicate);
                self.metrics
                    .published(&row.topic, row.created_at, ack.duplicate);
                Record::Published(ack)
            }
            Err(error) if error.is_transient() => {
                outcome.transient += 1;
                self.metrics.failed(&row.topic, true);
                Record::Transient(error.to_string())
            }
            Err(error) => {
                outcome.permanent += 1;
                self.metrics.failed(&row.topic, false);
                let failures = row.attempts + 1;
                let retry_at = (failures <= self.config.max_retries).then(|| {
                    acked_at
                        + chrono::Duration::from_std(self.config.retry.delay(failures))
                            .unwrap_or(chrono::Duration::MAX)
                });
                if retry_at.is_none() {
                    outcome.dead += 1;
                    tracing::error!(
                        id = row.id, event_id = %row.event_id, topic = %row.topic, %error,
                        "outbox row is dead after {failures} failed attempts; later rows of its key wait"
                    );
                } else {
                    tracing::warn!(id = row.id, topic = %row.topic, %error, failures, "publish failed; will retry");
                }
                Record::Permanent(error.to_string(), retry_at)
            }
        }
    }

    /// Writes the outcomes of publishes in one transaction.
    async fn write_records(
        &self,
        records: Vec<(i64, Record)>,
        acked_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.store
            .write(move |tx| {
                for (id, record) in &records {
                    match record {
                        Record::Published(ack) => {
                            outbox::mark_published(tx, *id, &ack.stream, ack.sequence, acked_at)?
                        }
                        Record::Transient(error) => outbox::record_transient(tx, *id, error)?,
                        Record::Permanent(error, retry_at) => {
                            outbox::record_permanent(tx, *id, error, *retry_at)?
                        }
                    }
                }
                Ok::<_, StoreError>(())
            })
            .await
    }

    /// Runs until `shutdown`: publishes whenever rows are due, with a window of publishes in
    /// flight (see [`pipeline`]), and sleeps otherwise. What is in flight when `shutdown`
    /// completes is finished and recorded before this returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        self.status.running.store(true, Ordering::Relaxed);
        let _running = RunningGuard(&self.status);
        let committed = self.store.outbox_committed();
        let mut broker_backoff = BROKER_BACKOFF_MIN;
        tracing::info!(
            batch_size = self.config.batch_size,
            window = self.config.window,
            "outbox relay started"
        );
        loop {
            let end = self.pass(&mut shutdown, &committed).await;
            self.status.beat();
            let wait = match end {
                PassEnd::Shutdown => break,
                PassEnd::Failed(e) => {
                    tracing::error!(error = %e, "outbox relay step failed");
                    Some(self.config.polling_interval.min(Duration::from_secs(1)))
                }
                PassEnd::Again(o) if o.transient > 0 => {
                    tracing::warn!(failed = o.transient, wait = ?broker_backoff, "broker unavailable; backing off");
                    let wait = broker_backoff;
                    broker_backoff = (broker_backoff * 2).min(BROKER_BACKOFF_MAX);
                    // Commits do not bring the broker back: only time or shutdown end this wait.
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
                PassEnd::Again(_) => None,
                PassEnd::Idle => Some(self.idle_wait().await),
            };
            broker_backoff = BROKER_BACKOFF_MIN;
            if let Some(wait) = wait {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = committed.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// How long to sleep when nothing is due: the polling interval, or less when a retry comes
    /// due sooner.
    async fn idle_wait(&self) -> Duration {
        let now = Utc::now();
        // A pass reads with a "now" a millisecond early (see `pipeline`), so a row that came
        // due within the last millisecond (a requeue, say) may not have been read: wake at once.
        let since = now - chrono::Duration::milliseconds(1);
        let next = self
            .store
            .read(move |conn| outbox::next_retry_at(conn, since))
            .await
            .ok()
            .flatten();
        let until_retry = next.map(|t| (t - now).to_std().unwrap_or(Duration::ZERO));
        match until_retry {
            Some(d) => d.min(self.config.polling_interval),
            None => self.config.polling_interval,
        }
    }
}

enum Record {
    Published(Published),
    Transient(String),
    Permanent(String, Option<DateTime<Utc>>),
}
