//! Consumer groups: what every subscriber of the contract must do, as a library.
//!
//! A group (e.g. `inventory-service`) over some topics is one durable pull consumer per topic
//! stream, named after the group (`<group>`, or `<group>-p<P>` when it takes one partition):
//! explicit ack, every stored event on first start (the spec's `auto_offset_reset: earliest`),
//! `max_deliver`, `ack_wait`, and a filter `<topic>.>` or `<topic>.<P>.>`. Each consumer is
//! drained by its own task with its own SQLite connection to the group's database:
//!
//! 1. take the messages ready now (up to `batch_size`) and open one transaction;
//! 2. per message: decode it ([`handler::decode`]: a schema error is a dead letter), record
//!    `(group, event_id)` in the processed-events table and run the [`Handler`] in a savepoint
//!    ([`idempotency`]): an event recorded before is acknowledged without running the handler;
//! 3. commit, then acknowledge what was processed, send transient failures back with a delay
//!    from the backoff schedule (`-NAK {delay}`), and publish permanent failures, schema errors
//!    and transient failures of the last allowed delivery to the dead letters ([`dlq`]) before
//!    terminating them. Messages the broker gives up on because no delivery was answered within
//!    `ack_wait` are dead-lettered from its `MAX_DELIVERIES` advisory.
//!
//! Order per order: messages arrive in stream order and are processed one after another, and a
//! batch holds back the later messages of a key whose message failed. Across redeliveries only
//! `max_ack_pending = 1` keeps a strict order (the broker then delivers nothing else of the
//! consumer while a message waits for its retry), at the price of one round trip per message;
//! [`GroupConfig::ordered`] sets it, and a partition filter lets N such workers share a topic.
//!
//! - [`handler`] — the typed [`Event`], the [`Handler`] trait and its [`HandlerTx`], decoding and
//!   versions.
//! - [`idempotency`] — the consumer's SQLite file, processed events, the batch transaction.
//! - [`dlq`] — the dead-letter stream: publish, list, replay, purge.
//! - [`lag`] — pending, ack-pending and lag in seconds per group and topic; `/ready` thresholds.
//! - [`tail`] — print a topic's events as they arrive.
//! - [`commands`] — the `tail`, `consumers` and `dlq` subcommands.

pub mod commands;
pub mod dlq;
pub mod handler;
pub mod idempotency;
pub mod lag;
pub mod tail;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bus::stream_name;
use crate::domain::Topic;
pub use dlq::Reason;
pub use handler::{Delivery, Event, Failure, Handler, HandlerTx, SchemaError};
use idempotency::{Batch, Processed, Step};

/// How long a pull request waits on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The idle heartbeat of a pull request; missing ones mean the connection is gone.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// The longest wait between two tries to set the group up while the broker is away.
const SETUP_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why a consumer operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The group's settings are wrong.
    #[error("{0}")]
    Config(String),
    /// The broker said no or could not be reached.
    #[error("NATS: {0}")]
    Nats(String),
    /// The consumer's database failed.
    #[error("consumer database: {0}")]
    Database(#[from] rusqlite::Error),
    /// Writing the output failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl ConsumerError {
    fn nats(error: impl std::fmt::Display) -> ConsumerError {
        ConsumerError::Nats(error.to_string())
    }
}

/// A consumer group's settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// The group's name, also its consumers' durable name: letters, digits, `-` and `_`.
    pub group: String,
    /// The topics it takes.
    pub topics: Vec<Topic>,
    /// Only this partition of each topic (`<topic>.<P>.>`); `None` for every partition.
    pub partition: Option<u32>,
    /// The group's SQLite file: processed events and the handler's own state.
    pub database: PathBuf,
    /// `synchronous=FULL` for the database (an acknowledged event's effects survive power loss);
    /// `NORMAL` survives a crash of the process only.
    pub synchronous_full: bool,
    /// Deliveries of a message before it is a dead letter.
    pub max_deliver: i64,
    /// Waits before redelivering a transiently failed message: the n-th failure waits the n-th
    /// entry, the last entry repeating.
    pub backoff: Vec<Duration>,
    /// How long the broker waits for an ack before it delivers a message again.
    pub ack_wait: Duration,
    /// Messages delivered and not yet acknowledged, at most; 1 keeps a strict order per key
    /// across retries (see the module docs).
    pub max_ack_pending: i64,
    /// Messages processed per transaction, at most.
    pub batch_size: usize,
}

impl GroupConfig {
    /// Defaults: every partition, `max_deliver` 5, backoff 1 s, 5 s, 30 s, 2 min, `ack_wait`
    /// 30 s, up to 1,000 unacknowledged, batches of 100, `synchronous=FULL`.
    pub fn new(group: impl Into<String>, topics: &[Topic], database: impl Into<PathBuf>) -> Self {
        GroupConfig {
            group: group.into(),
            topics: topics.to_vec(),
            partition: None,
            database: database.into(),
            synchronous_full: true,
            max_deliver: 5,
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(120),
            ],
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            batch_size: 100,
        }
    }

    /// Strict order per key across retries: `max_ack_pending = 1`.
    pub fn ordered(mut self) -> Self {
        self.max_ack_pending = 1;
        self
    }

    /// The durable name of the group's consumer on a topic stream.
    pub fn consumer_name(&self) -> String {
        match self.partition {
            Some(p) => format!("{}-p{p}", self.group),
            None => self.group.clone(),
        }
    }

    /// The subject filter of the group's consumer on `topic`.
    pub fn filter(&self, topic: Topic) -> String {
        match self.partition {
            Some(p) => format!("{}.{p}.>", topic.as_str()),
            None => format!("{}.>", topic.as_str()),
        }
    }

    fn validate(&self) -> Result<(), ConsumerError> {
        let bad = |why: String| {
            Err(ConsumerError::Config(format!(
                "group {:?}: {why}",
                self.group
            )))
        };
        if !is_valid_group(&self.group) {
            return bad("a group name is letters, digits, `-` and `_`".into());
        }
        if self.topics.is_empty() {
            return bad("no topics".into());
        }
        if self.max_deliver < 1 {
            return bad("max_deliver must be at least 1".into());
        }
        if self.backoff.is_empty() {
            return bad("the backoff schedule is empty".into());
        }
        if self.batch_size == 0 || self.max_ack_pending < 1 {
            return bad("batch_size and max_ack_pending must be at least 1".into());
        }
        Ok(())
    }

    /// The wait before delivery `delivered + 1` of a message that failed on delivery `delivered`.
    pub fn delay_after(&self, delivered: u64) -> Duration {
        let index = (delivered.max(1) - 1) as usize;
        self.backoff[index.min(self.backoff.len() - 1)]
    }

    fn consumer_config(&self, topic: Topic) -> consumer::pull::Config {
        let mut metadata = HashMap::from([
            ("group".to_owned(), self.group.clone()),
            ("topic".to_owned(), topic.as_str().to_owned()),
        ]);
        if let Some(p) = self.partition {
            metadata.insert("partition".to_owned(), p.to_string());
        }
        consumer::pull::Config {
            durable_name: Some(self.consumer_name()),
            description: Some(format!(
                "consumer group {} on {}",
                self.group,
                topic.as_str()
            )),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            filter_subject: self.filter(topic),
            max_ack_pending: self.max_ack_pending,
            metadata,
            ..Default::default()
        }
    }

    fn replay_consumer_config(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.group.clone()),
            description: Some(format!("dead letters replayed to {}", self.group)),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            filter_subject: format!("replay.{}.>", self.group),
            max_ack_pending: self.max_ack_pending,
            metadata: HashMap::from([
                ("group".to_owned(), self.group.clone()),
                ("topic".to_owned(), "replay".to_owned()),
            ]),
            ..Default::default()
        }
    }
}

/// Whether `name` can be a group (and durable consumer) name.
pub fn is_valid_group(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// What a group has done since it started, for tests, the demo and logs.
#[derive(Debug, Default)]
pub struct GroupStats {
    /// Messages received, redeliveries included.
    pub deliveries: AtomicU64,
    /// Of those, deliveries after the first (the broker's count says so).
    pub redeliveries: AtomicU64,
    /// Events the handler processed (committed and acknowledged).
    pub processed: AtomicU64,
    /// Deliveries of events already processed: acknowledged without running the handler.
    pub duplicates: AtomicU64,
    /// Transient failures sent back for a retry.
    pub retried: AtomicU64,
    /// Messages sent to the dead letters.
    pub dead_lettered: AtomicU64,
}

/// A snapshot of [`GroupStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStatsSnapshot {
    /// See [`GroupStats::deliveries`].
    pub deliveries: u64,
    /// See [`GroupStats::redeliveries`].
    pub redeliveries: u64,
    /// See [`GroupStats::processed`].
    pub processed: u64,
    /// See [`GroupStats::duplicates`].
    pub duplicates: u64,
    /// See [`GroupStats::retried`].
    pub retried: u64,
    /// See [`GroupStats::dead_lettered`].
    pub dead_lettered: u64,
}

impl GroupStats {
    /// The counts now.
    pub fn snapshot(&self) -> GroupStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GroupStatsSnapshot {
            deliveries: get(&self.deliveries),
            redeliveries: get(&self.redeliveries),
            processed: get(&self.processed),
            duplicates: get(&self.duplicates),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
        }
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A consumer group with its handler.
pub struct Group<H> {
    config: Arc<GroupConfig>,
    handler: Arc<H>,
    js: jetstream::Context,
    stats: Arc<GroupStats>,
}

/// Where a consumer task reads from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A topic stream.
    Topic(Topic),
    /// The group's replayed dead letters.
    Replay,
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
        })
    }

    /// The group's counters, shared with its running tasks.
    pub fn stats(&self) -> Arc<GroupStats> {
        self.stats.clone()
    }

    /// The settings.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Creates (or updates) the dead-letter streams and the group's consumers, and the group's
    /// database; returns the consumers.
    async fn setup(&self) -> Result<Vec<(Source, PullConsumer)>, ConsumerError> {
        let conn = idempotency::open(&self.config.database, self.config.synchronous_full)?;
        self.handler.migrate(&conn)?;
        drop(conn);
        dlq::ensure_streams(&self.js).await?;
        let mut consumers = Vec::new();
        for &topic in &self.config.topics {
            let stream = self
                .js
                .get_stream(stream_name(topic.as_str()))
                .await
                .map_err(ConsumerError::nats)?;
            let consumer = stream
                .create_consumer(self.config.consumer_config(topic))
                .await
                .map_err(ConsumerError::nats)?;
            consumers.push((Source::Topic(topic), consumer));
        }
        let replay = self
            .js
            .get_stream(dlq::REPLAY_STREAM)
            .await
            .map_err(ConsumerError::nats)?
            .create_consumer(self.config.replay_consumer_config())
            .await
            .map_err(ConsumerError::nats)?;
        consumers.push((Source::Replay, replay));
        Ok(consumers)
    }

    /// Runs the group until `shutdown`: sets it up (waiting for the broker as long as it takes),
    /// then drains each consumer. A batch in flight when `shutdown` completes is finished,
    /// committed and acknowledged before this returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ConsumerError> {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        let consumers = loop {
            match self.setup().await {
                Ok(consumers) => break consumers,
                Err(ConsumerError::Nats(e)) => {
                    tracing::warn!(group = %self.config.group, error = %e, retry_in = ?backoff, "setting up the consumer group failed");
                }
                Err(other) => return Err(other),
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(SETUP_BACKOFF_MAX);
        };
        tracing::info!(group = %self.config.group, consumers = consumers.len(), "consumer group running");
        let (stop, stopping) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (source, consumer) in consumers {
            if let Source::Topic(topic) = source {
                let stream = stream_name(topic.as_str());
                let subscriber = self
                    .js
                    .client()
                    .subscribe(format!(
                        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{}",
                        self.config.consumer_name()
                    ))
                    .await
                    .map_err(ConsumerError::nats)?;
                let mut stopping = stopping.clone();
                tasks.spawn(exhausted(
                    self.js.clone(),
                    self.config.clone(),
                    self.stats.clone(),
                    topic,
                    subscriber,
                    async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    },
                ));
            }
            let worker = Worker {
                config: self.config.clone(),
                handler: self.handler.clone(),
                js: self.js.clone(),
                stats: self.stats.clone(),
                source,
            };
            let conn = idempotency::open(&self.config.database, self.config.synchronous_full)?;
            let mut stopping = stopping.clone();
            tasks.spawn(async move {
                worker
                    .drain(consumer, conn, async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    })
                    .await
            });
        }
        let mut result = Ok(());
        tokio::select! {
            () = &mut shutdown => {}
            Some(ended) = tasks.join_next() => {
                // A worker only ends early on an error it cannot get past.
                result = match ended {
                    Ok(r) => r,
                    Err(e) => Err(ConsumerError::Config(format!("a consumer task failed: {e}"))),
                };
            }
        }
        let _ = stop.send(true);
        while let Some(ended) = tasks.join_next().await {
            if let Ok(Err(e)) = ended
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        tracing::info!(group = %self.config.group, "consumer group stopped");
        result
    }
}

/// One consumer's task.
struct Worker<H> {
    config: Arc<GroupConfig>,
    handler: Arc<H>,
    js: jetstream::Context,
    stats: Arc<GroupStats>,
    source: Source,
}

/// What becomes of a message once its batch is committed.
enum Verdict {
    Ack { duplicate: bool },
    Nak(Duration),
    Dead(Reason, String),
}

/// A message of a batch, read.
struct Received {
    message: jetstream::Message,
    delivery: Delivery,
    topic: Option<Topic>,
}

impl<H: Handler> Worker<H> {
    async fn drain(
        self,
        consumer: PullConsumer,
        mut conn: rusqlite::Connection,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumerError> {
        tokio::pin!(shutdown);
        let batch_size = self.config.batch_size;
        'connect: loop {
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(batch_size.max(1))
                .expires(PULL_EXPIRES)
                .heartbeat(PULL_HEARTBEAT)
                .messages()
                .await
            {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(group = %self.config.group, error = %e, "pulling failed; trying again");
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(SETUP_BACKOFF_MAX) => continue 'connect,
                    }
                }
            };
            loop {
                let first = tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    next = messages.next() => next,
                };
                let mut batch = Vec::with_capacity(batch_size);
                match first {
                    None => continue 'connect,
                    Some(Err(e)) => {
                        tracing::debug!(group = %self.config.group, error = %e, "pull stream");
                        continue;
                    }
                    Some(Ok(message)) => batch.push(message),
                }
                while batch.len() < batch_size {
                    match messages.next().now_or_never() {
                        Some(Some(Ok(message))) => batch.push(message),
                        _ => break,
                    }
                }
                self.process(&mut conn, batch).await?;
            }
        }
    }

    fn read(&self, message: jetstream::Message) -> Option<Received> {
        let (stream, stream_sequence, delivered, published) = match message.info() {
            Ok(info) => (
                info.stream.to_owned(),
                info.stream_sequence,
                info.delivered.max(1) as u64,
                nats_time(info.published.unix_timestamp_nanos()),
            ),
            Err(e) => {
                tracing::error!(error = %e, subject = %message.subject, "not a JetStream message");
                return None;
            }
        };
        let subject = message.subject.to_string();
        let topic = match self.source {
            Source::Topic(topic) => Some(topic),
            // replay.<group>.<topic>
            Source::Replay => subject.splitn(3, '.').nth(2).and_then(Topic::parse),
        };
        let delivery = Delivery {
            subject,
            stream,
            stream_sequence,
            delivered,
            published,
            headers: headers_of(message.headers.as_ref()),
            payload: message.payload.clone(),
        };
        Some(Received {
            message,
            delivery,
            topic,
        })
    }

    async fn process(
        &self,
        conn: &mut rusqlite::Connection,
        batch: Vec<jetstream::Message>,
    ) -> Result<(), ConsumerError> {
        let group = self.config.group.as_str();
        let received: Vec<Received> = batch.into_iter().filter_map(|m| self.read(m)).collect();
        let mut verdicts = Vec::with_capacity(received.len());
        // Keys whose earlier message failed in this batch: their later ones wait as long.
        let mut held: HashMap<String, Duration> = HashMap::new();
        let mut tx = match Batch::begin(conn) {
            Ok(tx) => tx,
            Err(e) => {
                // The database is busy or failing: the messages come back after the backoff, and
                // the worker carries on.
                tracing::error!(group, error = %e, "cannot begin the batch's transaction");
                let delay = self.config.delay_after(1);
                for r in &received {
                    let _ = r.message.ack_with(AckKind::Nak(Some(delay))).await;
                }
                return Ok(());
            }
        };
        let mut failed_sql = None;
        for r in &received {
            let d = &r.delivery;
            GroupStats::add(&self.stats.deliveries);
            if d.delivered > 1 {
                GroupStats::add(&self.stats.redeliveries);
            }
            let key = d.subject.rsplit('.').next().unwrap_or_default().to_owned();
            if let Some(&delay) = held.get(&key) {
                verdicts.push(Verdict::Nak(delay));
                continue;
            }
            let Some(topic) = r.topic else {
                verdicts.push(Verdict::Dead(
                    Reason::Schema,
                    format!("no topic of the contract for subject {}", d.subject),
                ));
                continue;
            };
            let event = match handler::decode(topic, &d.payload) {
                Ok(event) => event,
                Err(e) => {
                    verdicts.push(Verdict::Dead(Reason::Schema, e.0));
                    continue;
                }
            };
            let processed = Processed {
                group,
                event_id: event.event_id(),
                topic: topic.as_str(),
                stream: &d.stream,
                stream_seq: d.stream_sequence,
                delivered: d.delivered,
            };
            let step = tx.run(&processed, &*self.handler, &event, d).await;
            verdicts.push(match step {
                Ok(Step::Done) => Verdict::Ack { duplicate: false },
                Ok(Step::AlreadyProcessed) => Verdict::Ack { duplicate: true },
                Ok(Step::Failed(Failure::Permanent(why))) => Verdict::Dead(Reason::Permanent, why),
                Ok(Step::Failed(Failure::Transient(why))) => {
                    if d.delivered >= self.config.max_deliver as u64 {
                        Verdict::Dead(
                            Reason::MaxDeliver,
                            format!("failed on all {} deliveries; last: {why}", d.delivered),
                        )
                    } else {
                        let delay = self.config.delay_after(d.delivered);
                        tracing::debug!(group, event_id = %event.event_id(), delivered = d.delivered, ?delay, %why, "transient failure; retrying");
                        held.insert(key, delay);
                        Verdict::Nak(delay)
                    }
                }
                Err(e) => {
                    failed_sql = Some(e);
                    break;
                }
            });
        }
        let committed = match failed_sql {
            None => tx.commit().map_err(|e| e.to_string()),
            Some(e) => {
                let _ = tx.rollback();
                Err(e.to_string())
            }
        };
        if let Err(e) = committed {
            tracing::error!(group, error = %e, "the batch's transaction failed; its messages come again");
            let delay = self.config.delay_after(1);
            for r in &received {
                let _ = r.message.ack_with(AckKind::Nak(Some(delay))).await;
            }
            return Ok(());
        }
        for (r, verdict) in received.iter().zip(verdicts) {
            self.settle(r, verdict).await;
        }
        Ok(())
    }

    async fn settle(&self, r: &Received, verdict: Verdict) {
        let d = &r.delivery;
        let acked = match verdict {
            Verdict::Ack { duplicate } => {
                GroupStats::add(if duplicate {
                    &self.stats.duplicates
                } else {
                    &self.stats.processed
                });
                r.message.ack().await
            }
            Verdict::Nak(delay) => {
                GroupStats::add(&self.stats.retried);
                r.message.ack_with(AckKind::Nak(Some(delay))).await
            }
            Verdict::Dead(reason, error) => {
                let topic = r.topic.map(Topic::as_str).unwrap_or("unknown");
                let letter = dlq::DeadLetter {
                    group: &self.config.group,
                    topic,
                    reason,
                    error: &error,
                    stream: &d.stream,
                    stream_sequence: d.stream_sequence,
                    subject: &d.subject,
                    delivered: d.delivered,
                    headers: &d.headers,
                    payload: &d.payload,
                };
                match dlq::publish(&self.js, &letter).await {
                    Ok(()) => {
                        GroupStats::add(&self.stats.dead_lettered);
                        tracing::warn!(group = %self.config.group, topic, reason = reason.as_str(), %error, stream = %d.stream, seq = d.stream_sequence, "dead letter");
                        r.message.ack_with(AckKind::Term).await
                    }
                    Err(e) => {
                        tracing::warn!(group = %self.config.group, error = %e, "publishing a dead letter failed; the message comes again");
                        r.message
                            .ack_with(AckKind::Nak(Some(self.config.delay_after(1))))
                            .await
                    }
                }
            }
        };
        if let Err(e) = acked {
            // The broker redelivers it after ack_wait; the processed-events table makes that
            // harmless.
            tracing::debug!(group = %self.config.group, error = %e, "acknowledging failed");
        }
    }
}

/// The broker's advisory that a message used up `max_deliver` without an answer.
#[derive(serde::Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// Dead-letters the messages the broker gave up on because no delivery was answered within
/// `ack_wait` (a handler that hangs, a worker that crashes on them): the worker never saw their
/// last failure, so the broker's advisory is the only news of them. Advisories are not stored:
/// those sent while no worker of the group runs are missed.
async fn exhausted(
    js: jetstream::Context,
    config: Arc<GroupConfig>,
    stats: Arc<GroupStats>,
    topic: Topic,
    mut advisories: async_nats::Subscriber,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConsumerError> {
    tokio::pin!(shutdown);
    let stream = stream_name(topic.as_str());
    loop {
        let advisory = tokio::select! {
            () = &mut shutdown => return Ok(()),
            next = advisories.next() => match next {
                Some(message) => message,
                None => return Ok(()),
            },
        };
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&advisory.payload) else {
            continue;
        };
        let message = match js.get_stream(&stream).await {
            Ok(s) => s.get_raw_message(advisory.stream_seq).await,
            Err(e) => {
                tracing::warn!(group = %config.group, error = %e, "cannot read an exhausted message");
                continue;
            }
        };
        let Ok(message) = message else {
            continue;
        };
        let headers = headers_of(Some(&message.headers));
        let error = format!(
            "not acknowledged within ack_wait ({:?}) on any of {} deliveries",
            config.ack_wait, advisory.deliveries
        );
        let letter = dlq::DeadLetter {
            group: &config.group,
            topic: topic.as_str(),
            reason: Reason::MaxDeliver,
            error: &error,
            stream: &stream,
            stream_sequence: advisory.stream_seq,
            subject: message.subject.as_str(),
            delivered: advisory.deliveries,
            headers: &headers,
            payload: &message.payload,
        };
        match dlq::publish(&js, &letter).await {
            Ok(()) => {
                GroupStats::add(&stats.dead_lettered);
                tracing::warn!(group = %config.group, stream = %stream, seq = advisory.stream_seq, "dead letter: max_deliver without an answer");
            }
            Err(e) => {
                tracing::error!(group = %config.group, error = %e, seq = advisory.stream_seq, "publishing a dead letter failed; the message stays only in its stream")
            }
        }
    }
}

/// Headers as name-value pairs, in the order the map keeps them.
pub(crate) fn headers_of(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    headers
        .map(|map| {
            map.iter()
                .flat_map(|(name, values)| {
                    values
                        .iter()
                        .map(move |value| (name.to_string(), value.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A header map of pairs; pairs the protocol cannot carry are left out.
pub(crate) fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(name), HeaderValue::from_str(value)) {
            map.append(name, value);
        }
    }
    map
}

/// A broker timestamp (nanoseconds since the epoch) as UTC.
pub(crate) fn nats_time(nanos: i128) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// The body of a message as text, for logs and the terminal.
pub(crate) fn body_text(payload: &Bytes) -> String {
    String::from_utf8_lossy(payload).into_owned()
}
