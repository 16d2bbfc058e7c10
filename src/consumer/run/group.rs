//! A consumer group at run time: set up its streams and consumers (waiting for the broker as
//! long as it takes), take the group's lease, open and migrate its database (the breaker open
//! while the file fails), then run one worker and one dead-letter watch per consumer (each topic's
//! and the replays') until shutdown or the lease is lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use tokio::task::JoinSet;

use super::exhausted::exhausted;
use super::guard::Guarded;
use super::prune;
use super::worker::{Source, Worker};
use crate::backoff::Backoff;
use crate::bus::stream_name;
use crate::consumer::breaker::{Outage, is_store_fault};
use crate::consumer::config::GroupConfig;
use crate::consumer::handling::emit::{self, Emits, Outbox};
use crate::consumer::handling::handler::Handler;
use crate::consumer::handling::idempotency;
use crate::consumer::observe::health::Health;
use crate::consumer::observe::metrics::ConsumerMetrics;
use crate::consumer::observe::stats::{GroupRole, GroupStats};
use crate::consumer::ownership::owner;
use crate::consumer::{ConsumerError, dlq};
use crate::domain::Topic;
use crate::shutdown::Shutdown;

/// The first wait between two tries to set the group up while the broker is away.
const SETUP_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest wait between two tries to set the group up while the broker is away.
const SETUP_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A consumer group with its handler.
pub struct Group<H> {
    config: Arc<GroupConfig>,
    handler: Arc<H>,
    js: jetstream::Context,
    stats: Arc<GroupStats>,
    emits: Option<Arc<Emits>>,
    metrics: Arc<ConsumerMetrics>,
}

impl<H: Handler> Group<H> {
    /// A group reading through `js`; checks the settings.
    pub fn new(
        js: jetstream::Context,
        config: GroupConfig,
        handler: H,
    ) -> Result<Group<H>, ConsumerError> {
        config.validate()?;
        Ok(Group {
            config: Arc::new(config),
            handler: Arc::new(handler),
            js,
            stats: Arc::new(GroupStats::default()),
            emits: None,
            metrics: Arc::default(),
        })
    }

    /// Lets the handler emit events to `emits`' topics, which this group owns: see
    /// [`crate::consumer::emit`].
    pub fn emitting(mut self, emits: Emits) -> Group<H> {
        self.emits = Some(Arc::new(emits));
        self
    }

    /// Records into `metrics`, shared with the process's other groups (each group has its own
    /// otherwise).
    pub fn with_metrics(mut self, metrics: Arc<ConsumerMetrics>) -> Group<H> {
        self.metrics = metrics;
        self
    }

    /// The metrics the group records into.
    pub fn metrics(&self) -> Arc<ConsumerMetrics> {
        self.metrics.clone()
    }

    /// The group's counters, shared with its running tasks.
    pub fn stats(&self) -> Arc<GroupStats> {
        self.stats.clone()
    }

    /// The group's `/health` and `/metrics` endpoints, to serve beside [`Group::run`]:
    /// `tokio::spawn(group.health().serve(listener, shutdown.signal()))`. See [`Health`].
    pub fn health(&self) -> Health {
        Health::new(self.metrics.clone()).group(self.config.group.clone(), self.stats.clone())
    }

    /// The settings.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Creates the dead-letter streams and the leases' bucket when missing and the group's
    /// consumers; returns the consumers. The database waits for the lease ([`Group::open_files`]).
    async fn setup(&self) -> Result<Vec<(Source, PullConsumer)>, ConsumerError> {
        dlq::ensure_streams(&self.js).await?;
        owner::ensure_bucket(&self.js).await?;
        let mut consumers = Vec::new();
        for &topic in &self.config.topics {
            let stream = self
                .js
                .get_stream(stream_name(topic.as_str()))
                .await
                .map_err(ConsumerError::nats)?;
            check_partition(&self.config, topic, &stream.cached_info().config)?;
            let consumer = stream
                .create_consumer(self.config.consumer_config(topic))
                .await
                .map_err(ConsumerError::nats)?;
            consumers.push((Source::Topic(topic), consumer));
        }
        // Another team's streams: the group reads them, it never creates or changes them.
        for (index, topic) in self.config.foreign.iter().enumerate() {
            let consumer = self
                .js
                .get_stream(&topic.stream)
                .await
                .map_err(|e| {
                    ConsumerError::Nats(format!(
                        "stream {} of foreign topic {}: {e}",
                        topic.stream, topic.name
                    ))
                })?
                .create_consumer(self.config.foreign_consumer_config(topic))
                .await
                .map_err(ConsumerError::nats)?;
            consumers.push((Source::Foreign(index), consumer));
        }
        let replay = self
            .js
            .get_stream(dlq::REPLAY_STREAM)
            .await
            .map_err(ConsumerError::nats)?
            .create_consumer(self.config.replay_consumer_config())
            .await
            .map_err(|e| match self.config.partition {
                // The work-queue stream refuses consumers whose filters overlap: an earlier
                // version's replay consumer shared by every partition is in the way.
                Some(_) => ConsumerError::Nats(format!(
                    "{e} (a partition's replay consumer; an earlier version's consumer `{0}` on {1} \
                     shared by every partition must be removed first: nats consumer rm {1} {0})",
                    self.config.group,
                    dlq::REPLAY_STREAM
                )),
                None => ConsumerError::nats(e),
            })?;
        consumers.push((Source::Replay, replay));
        Ok(consumers)
    }

    /// Runs the group until `shutdown`: sets it up (waiting for the broker as long as it takes),
    /// then drains each consumer. When `shutdown` completes, a batch in flight finishes the
    /// handler call running (within `handler_timeout`), commits and is settled, its messages not
    /// started sent back at once, before this returns; a batch held by an open breaker is left
    /// to the broker's `ack_wait`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ConsumerError> {
        // However this ends (an error, or the future dropped), `/health` says stopped.
        let _stopped = StoppedOnExit(self.stats.clone());
        self.stats.set_role(GroupRole::Starting);
        tokio::pin!(shutdown);
        let mut waits = Backoff::exponential(SETUP_BACKOFF_BASE, SETUP_BACKOFF_MAX).waits();
        let consumers = loop {
            let error = match self.setup().await {
                Ok(consumers) => break consumers,
                Err(ConsumerError::Nats(error)) => error,
                Err(other) => return Err(other),
            };
            let wait = waits.next_wait();
            tracing::warn!(group = %self.config.group, %error, retry_in = ?wait, "setting up the consumer group failed");
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        };
        let key = self.config.consumer_name();
        loop {
            let Some(lease) = owner::acquire(&self.js, &key, &self.stats, &mut shutdown).await?
            else {
                return Ok(());
            };
            self.stats.set_role(GroupRole::Active);
            tracing::info!(group = %self.config.group, consumers = consumers.len(), "consumer group running");
            match self.run_active(&consumers, lease, &mut shutdown).await? {
                Ended::Stopped => break,
                Ended::LeaseLost => self.stats.set_role(GroupRole::Standby),
            }
        }
        tracing::info!(group = %self.config.group, "consumer group stopped");
        Ok(())
    }

    /// Runs the workers while this process holds the group's lease: until `shutdown`, an error a
    /// worker cannot get past, or the lease is lost.
    async fn run_active<S: Future<Output = ()>>(
        &self,
        consumers: &[(Source, PullConsumer)],
        lease: owner::Lease,
        shutdown: &mut Pin<&mut S>,
    ) -> Result<Ended, ConsumerError> {
        let stop = Shutdown::new();
        let fence = lease.fence();
        // Polled here rather than spawned: whatever ends this run (an abort too) ends the lease.
        let keep = lease.keep(stop.clone());
        tokio::pin!(keep);
        let mut lease_done = false;
        // Only the lease's holder opens and migrates the group's files: a standby (a newer
        // version, say) does not migrate them under the process running.
        let files = tokio::select! {
            () = shutdown.as_mut() => None,
            () = &mut keep => return Ok(Ended::LeaseLost),
            files = self.open_files(consumers.len(), &stop) => files?,
        };
        let Some(Files { outbox, mut conns }) = files else {
            stop.trigger();
            keep.await;
            return Ok(Ended::Stopped);
        };
        let mut tasks = JoinSet::new();
        tasks.spawn(prune::run(
            self.js.clone(),
            self.config.clone(),
            stop.signal(),
        ));
        if let Some(outbox) = &outbox {
            tasks.spawn(outbox.clone().run(self.js.clone(), stop.clone()));
        }
        for (source, consumer) in consumers {
            // Replays too: a replayed event that takes its process down every time must come
            // back to the dead letters, not sit undeliverable in the replay stream.
            {
                let (stream, topic) = match *source {
                    Source::Topic(topic) => {
                        (stream_name(topic.as_str()), Some(topic.as_str().to_owned()))
                    }
                    Source::Foreign(index) => {
                        let topic = &self.config.foreign[index];
                        (topic.stream.clone(), Some(topic.name.clone()))
                    }
                    Source::Replay => (dlq::REPLAY_STREAM.to_owned(), None),
                };
                let subscriber = self
                    .js
                    .client()
                    .subscribe(format!(
                        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{}",
                        self.config.consumer_name()
                    ))
                    .await
                    .map_err(ConsumerError::nats)?;
                tasks.spawn(exhausted(
                    self.js.clone(),
                    self.config.clone(),
                    self.stats.clone(),
                    (stream, topic),
                    subscriber,
                    stop.signal(),
                ));
            }
            let worker = Worker {
                fence: fence.clone(),
                config: self.config.clone(),
                handler: Guarded::new(
                    self.handler.clone(),
                    &self.config.group,
                    self.config.handler_timeout,
                    self.stats.clone(),
                    self.metrics.clone(),
                ),
                js: self.js.clone(),
                stats: self.stats.clone(),
                source: *source,
            };
            let conn = conns.pop().expect("a connection per consumer");
            tasks.spawn(emit::scope(
                outbox.clone(),
                worker.drain(consumer.clone(), conn, stop.clone()),
            ));
        }
        let mut result = Ok(Ended::Stopped);
        tokio::select! {
            () = shutdown.as_mut() => {}
            () = &mut keep => {
                lease_done = true;
                result = Ok(Ended::LeaseLost);
            }
            Some(ended) = tasks.join_next() => {
                // A worker only ends early on an error it cannot get past.
                result = match ended {
                    Ok(Ok(())) => Ok(Ended::Stopped),
                    Ok(Err(ConsumerError::Superseded(_))) => Ok(Ended::LeaseLost),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(ConsumerError::Config(format!("a consumer task failed: {e}"))),
                };
            }
        }
        stop.trigger();
        while let Some(ended) = tasks.join_next().await {
            if let Ok(Err(e)) = ended
                && result.is_ok()
                && !matches!(e, ConsumerError::Superseded(_))
            {
                result = Err(e);
            }
        }
        // Released once the workers are done, so a standby never overlaps them.
        if !lease_done {
            keep.await;
        }
        result
    }
}

/// The group's files, open: its outbox when it emits, and a connection per worker.
struct Files {
    outbox: Option<Arc<Outbox>>,
    conns: Vec<rusqlite::Connection>,
}

impl<H: Handler> Group<H> {
    /// Opens the group's database, migrates it (the handler's tables, the outbox when the group
    /// emits) and opens a connection for each of `workers`. A fault of the file itself (locked,
    /// full, cannot be opened or switched to WAL) is the group's, as in a round: the breaker
    /// opens and the files are tried again after a growing wait, until `stop` (`None` then).
    /// Another error (a handler's migration that is wrong) ends the group.
    async fn open_files(
        &self,
        workers: usize,
        stop: &Shutdown,
    ) -> Result<Option<Files>, ConsumerError> {
        let mut outage = None;
        loop {
            let (config, handler, emits) = (
                self.config.clone(),
                self.handler.clone(),
                self.emits.clone(),
            );
            // A file locked by another process waits `busy_timeout`: off the runtime, so the
            // lease is kept meanwhile.
            let opened = tokio::task::spawn_blocking(move || {
                let conn = idempotency::open(&config.database, config.synchronous_full)?;
                handler.migrate(&conn)?;
                drop(conn);
                let outbox = Outbox::open(emits.as_ref(), &config)?;
                let mut conns = Vec::with_capacity(workers);
                for _ in 0..workers {
                    let conn = idempotency::open(&config.database, config.synchronous_full)?;
                    conn.busy_timeout(config.busy_timeout)?;
                    conns.push(conn);
                }
                Ok::<_, ConsumerError>(Files { outbox, conns })
            })
            .await
            .map_err(|e| ConsumerError::Config(format!("opening the group's files failed: {e}")))?;
            match opened {
                Ok(files) => return Ok(Some(files)),
                Err(error) if is_file_fault(&error) => {
                    GroupStats::add(&self.stats.infrastructure_faults);
                    tracing::warn!(group = %self.config.group, %error, "the group's database cannot be opened; the breaker opens until it can");
                    let outage = outage.get_or_insert_with(|| {
                        Outage::begin(&self.stats.breaker, self.config.ack_wait)
                    });
                    if !outage.wait(&[], stop, || true).await {
                        return Ok(None);
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// Whether opening the group's files failed for the file's sake (locked, full, read-only, cannot
/// be opened or created) rather than a mistake in a migration.
fn is_file_fault(error: &ConsumerError) -> bool {
    use crate::store::StoreError;
    match error {
        ConsumerError::Database(e) | ConsumerError::Outbox(StoreError::Sqlite(e)) => {
            is_store_fault(e)
        }
        ConsumerError::Outbox(StoreError::Migration(
            rusqlite_migration::Error::RusqliteError { err, .. },
        )) => is_store_fault(err),
        ConsumerError::Outbox(StoreError::Io(_) | StoreError::Pool(_)) | ConsumerError::Io(_) => {
            true
        }
        _ => false,
    }
}

/// Sets the group's role to stopped when dropped.
struct StoppedOnExit(Arc<GroupStats>);

impl Drop for StoppedOnExit {
    fn drop(&mut self) {
        self.0.set_role(GroupRole::Stopped);
    }
}

/// Why a group's active run ended.
enum Ended {
    /// Shutdown, or a worker ended.
    Stopped,
    /// Another process may hold the lease now: stand by.
    LeaseLost,
}

/// Refuses a partition the topic does not have, by the partition count the stream carries in its
/// metadata (the topic table it was made from); a filter on it would match nothing, silently.
fn check_partition(
    config: &GroupConfig,
    topic: Topic,
    stream: &jetstream::stream::Config,
) -> Result<(), ConsumerError> {
    let Some(p) = config.partition else {
        return Ok(());
    };
    let partitions = stream
        .metadata
        .get("partitions")
        .and_then(|n| n.parse::<u32>().ok());
    match partitions {
        Some(n) if p >= n => Err(ConsumerError::Config(format!(
            "group {:?}: partition {p} of {}: the topic has {n} (0 to {})",
            config.group,
            topic.as_str(),
            n - 1
        ))),
        _ => Ok(()),
    }
}
