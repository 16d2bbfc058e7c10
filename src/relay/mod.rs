//! The outbox relay: reads pending outbox rows in commit order, publishes them to JetStream and
//! marks them published with the stream and sequence the broker acknowledged.
//!
//! - [`Relay::run`] loops over passes (`pass`): due rows are read in commit order into one lane
//!   per stream (`lanes`); each lane sends its rows as atomic batches, one batch in flight per
//!   stream and all streams at once (`sending`); acknowledged rows are marked in batch
//!   transactions. It is woken right after each commit that wrote outbox rows, polling only as a
//!   fallback. [`Relay::run_once`] is one pass, for tests.
//! - [`cleanup`] keeps the table bounded; [`status`] is what readiness reports; [`streams`] keeps
//!   the table's streams on the broker.
//! - [`repair`] finds streams that lost events they acknowledged and publishes those again.
//! - [`leaderless`] moves a silent replica of a stream that had no leader for long.
//!
//! Per key and stream, the stored order is the commit order, across relay restarts, retries,
//! fall-backs and broker restarts: a stream's rows go out in commit order, a batch is stored whole
//! and in order, and a lane that failed sends the same rows again before any later one. A row
//! that waits for a retry or is dead holds back the later rows of its key in every stream from
//! the moment it is known (rows already in flight are not recalled); other keys go on.

pub mod cleanup;
mod lanes;
pub mod leaderless;
mod pass;
pub mod repair;
mod sending;
pub mod status;
pub mod streams;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};

pub use crate::backoff::{Backoff, BackoffKind};
use crate::bus::{PublishError, Published};
use crate::metrics::Metrics;
use crate::store::acknowledged;
use crate::store::outbox::{self, Due};
use crate::store::{Store, StoreError};
use lanes::Lanes;
use pass::PassEnd;
use status::RunningGuard;
pub use status::{RelaySnapshot, RelayStatus, StreamsSummary};

/// How long a lane waits after a transient failure: from 100 ms, doubling, up to 2 s.
const LANE_BACKOFF: Backoff =
    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2));

/// The default and largest `EVENT_OUTBOX_PUBLISH_BATCH`: the server takes at most 1,000 messages
/// in an atomic batch, and the largest batch stores the most messages per fsync.
pub const DEFAULT_PUBLISH_BATCH: usize = crate::bus::MAX_BATCH;

/// How the relay works.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows read at least per read (`EVENT_OUTBOX_BATCH_SIZE`); reads take a publish batch's
    /// worth when that is more.
    pub batch_size: u32,
    /// Rows per atomic batch, 1 to 1,000 (`EVENT_OUTBOX_PUBLISH_BATCH`).
    pub publish_batch: usize,
    /// The fallback poll when no commit wakes the relay (`EVENT_OUTBOX_POLLING_INTERVAL`).
    pub polling_interval: Duration,
    /// Retries of a permanent failure before the row is dead (`EVENT_OUTBOX_MAX_RETRIES`).
    pub max_retries: u32,
    /// The wait between those retries (`EVENT_OUTBOX_RETRY_BACKOFF`).
    pub retry: Backoff,
    /// How long to wait for a PubAck.
    pub ack_timeout: Duration,
    /// The streams' duplicate window (`NATS_DUPLICATE_WINDOW`): a row sent again later than
    /// about this after its first try is looked up in its stream first, as the stream no longer
    /// drops it as a duplicate.
    pub duplicate_window: Duration,
    /// Publishes in flight at most when a batch is sent row by row (`EVENT_OUTBOX_PUBLISH_WINDOW`);
    /// a key never has more than one.
    pub window: usize,
    /// The topics of the table: a missing stream of one of those is healed (reconciled), not a
    /// failure of the row.
    pub table_topics: Arc<HashSet<String>>,
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
    /// Rows not tried because an earlier row of their key failed in this pass.
    pub held_back: usize,
    /// Rows that could not be read back and were parked as dead.
    pub unreadable: usize,
    /// Batches sent.
    pub batches: usize,
    /// Of those, batches refused whole and sent row by row.
    pub fallbacks: usize,
}

/// The relay.
#[derive(Clone)]
pub struct Relay {
    store: Store,
    js: jetstream::Context,
    config: RelayConfig,
    metrics: Arc<Metrics>,
    status: Arc<RelayStatus>,
    /// How far rows were handed to a publish, per stream (see [`sending`]).
    sent_marks: Arc<sending::SentMarks>,
    /// Who is told how a check or a repair goes: a command line's progress, none in the service.
    observer: Option<Arc<dyn repair::Observer>>,
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
            sent_marks: Arc::default(),
            observer: None,
        }
    }

    /// One pass: publishes what is due now, records the outcome, and returns once nothing more
    /// is due (or after the longest a pass lasts).
    pub async fn run_once(&self) -> Result<Outcome, StoreError> {
        let mut lanes = Lanes::new(self.config.publish_batch, LANE_BACKOFF);
        let never = std::future::pending::<()>();
        tokio::pin!(never);
        match self
            .pass(&mut lanes, &mut never, &tokio::sync::Notify::new())
            .await
        {
            PassEnd::Failed(e) => Err(e),
            PassEnd::Idle(outcome) | PassEnd::Again(outcome) => Ok(outcome),
            PassEnd::Shutdown => Ok(Outcome::default()),
        }
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

    /// Writes the outcomes of publishes in one transaction. A stream that acknowledged rows at
    /// sequences already recorded for others, or below ones recorded, lost its tail and stored
    /// on: the rows it overwrote are released for repair ([`acknowledged::release`]) and a
    /// check is asked for.
    async fn write_records(
        &self,
        records: Vec<(i64, Record)>,
        acked_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let ranges = stored_ranges(&records);
        let released = self
            .store
            .write(move |tx| {
                let mut released = Vec::new();
                for (stream, (from, to)) in &ranges {
                    let found = acknowledged::release(tx, stream, *from, *to)?;
                    if found != acknowledged::Released::default() {
                        released.push((stream.clone(), found));
                    }
                }
                for (id, record) in &records {
                    match record {
                        Record::Published(ack) => {
                            outbox::mark_published(tx, *id, &ack.stream, ack.sequence, acked_at)?
                        }
                        Record::Transient(error) => outbox::record_transient(tx, *id, error)?,
                        Record::Permanent(error, retry_at) => {
                            outbox::record_permanent(tx, *id, error, *retry_at)?
                        }
                        Record::Unreadable(error) => {
                            outbox::record_permanent(tx, *id, error, None)?
                        }
                    }
                }
                Ok::<_, StoreError>(released)
            })
            .await?;
        for (stream, found) in released {
            tracing::warn!(
                %stream, overwritten = found.overwritten, recorded_beyond = found.beyond,
                "the stream acknowledged sequences at or below ones recorded: it lost its tail; checking it"
            );
            self.status.request_heal();
        }
        Ok(())
    }

    /// Runs until `shutdown`: publishes whenever rows are due (see `pass`) and sleeps
    /// otherwise. Batches in flight when `shutdown` completes are finished and recorded before
    /// this returns; rows not yet sent stay pending.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        self.status.running.store(true, Ordering::Relaxed);
        let _running = RunningGuard(&self.status);
        let committed = self.store.outbox_committed();
        let mut lanes = Lanes::new(self.config.publish_batch, LANE_BACKOFF);
        let mut failures = LANE_BACKOFF.waits();
        tracing::info!(
            batch_size = self.config.batch_size,
            publish_batch = self.config.publish_batch,
            "outbox relay started"
        );
        loop {
            let end = self.pass(&mut lanes, &mut shutdown, &committed).await;
            self.status.beat();
            let wait = match end {
                PassEnd::Shutdown => break,
                PassEnd::Failed(e) => {
                    let wait = failures.next_wait();
                    tracing::error!(error = %e, retry_in = ?wait, "outbox relay pass failed");
                    wait
                }
                PassEnd::Again(_) => {
                    failures.reset();
                    continue;
                }
                PassEnd::Idle(_) => {
                    failures.reset();
                    self.idle_wait().await
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = committed.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// How long to sleep when a pass found nothing more to do: not at all when a row is due now
    /// (a requeue, or a retry that came due during the pass, behind the pass's cursor), else
    /// until the next retry comes due, at most the polling interval.
    async fn idle_wait(&self) -> Duration {
        let now = Utc::now();
        let next = self
            .store
            .read(move |conn| {
                let epoch = outbox::requeue_epoch(conn)?;
                if outbox::due(conn, now, epoch, 0, 1)?.count > 0 {
                    return Ok(Some(now));
                }
                outbox::next_retry_at(conn, now)
            })
            .await;
        match next {
            Ok(Some(at)) => (at - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(self.config.polling_interval),
            Ok(None) => self.config.polling_interval,
            Err(e) => {
                tracing::warn!(error = %e, "reading the next retry time failed");
                self.config.polling_interval
            }
        }
    }
}

/// Per stream, the lowest and highest sequence newly stored among `records` (duplicates are
/// where the stream had them already, so they say nothing about its tail).
fn stored_ranges(records: &[(i64, Record)]) -> BTreeMap<String, (u64, u64)> {
    let mut ranges: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (_, record) in records {
        if let Record::Published(ack) = record
            && !ack.duplicate
        {
            let range = ranges
                .entry(ack.stream.clone())
                .or_insert((ack.sequence, ack.sequence));
            range.0 = range.0.min(ack.sequence);
            range.1 = range.1.max(ack.sequence);
        }
    }
    ranges
}

enum Record {
    Published(Published),
    Transient(String),
    Permanent(String, Option<DateTime<Utc>>),
    /// The row cannot be read back: dead at once, with the reason.
    Unreadable(String),
}
