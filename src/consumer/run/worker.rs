//! One consumer's task: pull what is ready, handle it in rounds (see `rounds`), then
//! acknowledge, retry, dead-letter or park each message (see `parking`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;

use super::gaps::Deliveries;
use super::guard::Guarded;
use super::parking::{self, Parking};
use crate::consumer::ConsumerError;
use crate::consumer::breaker::{Outage, keep_alive_interval, progress};
use crate::consumer::config::GroupConfig;
use crate::consumer::dlq::{self, Reason};
use crate::consumer::handling::handler::{self, Delivery, Event, Handler, RawEvent, SchemaError};
use crate::consumer::message::{headers_of, nats_time};
use crate::consumer::observe::stats::GroupStats;
use crate::consumer::ownership::fence::{Fence, Fenced};
use crate::domain::Topic;
use crate::shutdown::Shutdown;

/// How long a pull request for the next message waits on the server; short, so a pull lost with
/// a broker restart is replaced soon.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How long a request for the messages ready now may stay on the server.
const FETCH_EXPIRES: Duration = Duration::from_secs(1);
/// The wait before pulling again after a pull request could not be made.
const PULL_RETRY: Duration = Duration::from_secs(2);

/// Where a consumer task reads from.
#[derive(Debug, Clone, Copy)]
pub(in crate::consumer) enum Source {
    /// A topic stream.
    Topic(Topic),
    /// A foreign topic's stream: the index of the topic in the group's `foreign`.
    Foreign(usize),
    /// The group's replayed dead letters.
    Replay,
}

/// The topic a message is of: the contract's, or the group's foreign topic at this index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::consumer) enum TopicOf {
    Contract(Topic),
    Foreign(usize),
}

/// One consumer's task.
pub(in crate::consumer) struct Worker<H> {
    pub(in crate::consumer) config: Arc<GroupConfig>,
    pub(in crate::consumer) handler: Guarded<H>,
    pub(in crate::consumer) js: jetstream::Context,
    pub(in crate::consumer) stats: Arc<GroupStats>,
    pub(in crate::consumer) source: Source,
    /// This process's hold on the consumer's lease, checked before each round commits.
    pub(in crate::consumer) fence: Arc<Fence>,
}

/// What becomes of a message once its round is committed.
pub(in crate::consumer) enum Verdict {
    Ack {
        duplicate: bool,
    },
    /// Failed transiently: back to the broker, due again after the delay; its key's later
    /// messages are parked until it is done.
    Nak(Duration),
    /// Not started because the group stops: back to the broker at once.
    Release,
    /// An earlier message of its key waits for a retry: held here until that one is done.
    Park,
    Dead(Reason, String),
}

/// Why rounds stopped before every message had its verdict; the round in progress rolled back.
#[derive(Debug)]
pub(in crate::consumer) enum RoundError {
    /// A fault of the group's own infrastructure: tried again after a backoff.
    Fault(String),
    /// Another process holds the consumer's lease and committed (see `fence`): final.
    Superseded(String),
}

impl From<String> for RoundError {
    fn from(fault: String) -> RoundError {
        RoundError::Fault(fault)
    }
}

/// A message, read.
pub(in crate::consumer) struct Received {
    pub(in crate::consumer) message: jetstream::Message,
    pub(in crate::consumer) delivery: Delivery,
    pub(in crate::consumer) topic: Option<TopicOf>,
    /// The ordering key: the order's id, the subject's last token (a replay's original one); a
    /// foreign topic's where its settings say.
    pub(in crate::consumer) key: String,
    /// The broker's number for this delivery of the consumer (see `gaps`).
    pub(in crate::consumer) consumer_sequence: u64,
}

impl<H: Handler> Worker<H> {
    /// Pulls and processes the consumer's messages until `stop`. The batch in flight then
    /// finishes the message its handler is running (bounded by `handler_timeout`) and sends the
    /// ones not started, and the parked ones, back to the broker at once.
    ///
    /// Each batch is pulled when the previous one is settled (one pull request waiting for the
    /// first message, one taking what else is ready), so no message is delivered to the worker
    /// while it cannot process: nothing times out unseen while the breaker is open. Parked
    /// messages that became ready go first, before anything is pulled.
    pub(in crate::consumer) async fn drain(
        self,
        mut consumer: PullConsumer,
        mut conn: rusqlite::Connection,
        stop: Shutdown,
    ) -> Result<(), ConsumerError> {
        let batch_size = self.config.batch_size;
        let id = self.parking_id();
        let mut parking = Parking::default();
        match parking::load(&conn, &id) {
            Ok(waiting) => {
                for (key, head, left) in waiting {
                    parking.wait(&key, head, left);
                }
            }
            // Only the order of an order's events after a restart depends on it.
            Err(e) => {
                tracing::error!(group = %self.config.group, error = %e, "cannot read the orders waiting for a retry")
            }
        }
        // Recorded at once, so a process that held the lease before and resumes from a pause
        // commits no more rounds in a file this one uses (see `fence`).
        if let Err(fenced @ Fenced::Superseded { .. }) = self.fence.check(&conn) {
            return Err(ConsumerError::Superseded(fenced.to_string()));
        }
        if !self
            .wait_for_unsettled(&mut consumer, &mut conn, &mut parking, &stop)
            .await
        {
            return Ok(());
        }
        // A head not back twice ack_wait after it was due went elsewhere (see `parking`).
        let grace = self.config.ack_wait * 2;
        let mut witness = self.first_witness(&conn);
        let mut deliveries = Deliveries::default();
        loop {
            // While another worker's fault holds the breaker open, the parked messages are kept
            // alive too: unanswered for ack_wait they would come back and use up deliveries.
            let closed = tokio::select! {
                closed = self.stats.breaker.closed(&stop) => closed,
                () = self.keep_parked_alive(&parking) => unreachable!("keep_parked_alive never ends"),
            };
            if !closed {
                break;
            }
            for key in parking.release_overdue(grace) {
                tracing::warn!(group = %self.config.group, key, "a failed event did not come back in time; its order's later events go on");
                if let Err(e) = parking::remove(&conn, &id, &key) {
                    tracing::error!(group = %self.config.group, error = %e, "cannot note that an order waits no more");
                }
            }
            let mut batch = parking.take_ready(batch_size);
            if batch.is_empty() {
                let first = tokio::select! {
                    () = stop.signal() => break,
                    first = self.next_message(&consumer) => first,
                    () = self.keep_parked_alive(&parking) => unreachable!("keep_parked_alive never ends"),
                };
                batch.extend(first.and_then(|m| self.read(m)));
                if batch.is_empty() {
                    continue;
                }
            }
            // With one unacknowledged message at most, nothing more can be ready.
            if batch.len() < batch_size && self.config.max_ack_pending > 1 {
                self.ready_messages(&consumer, batch_size - batch.len(), &mut batch)
                    .await;
            }
            if self
                .stream_went_back(&mut consumer, &mut conn, &mut witness)
                .await
            {
                // Delivered again from where the stream's new content begins; the reset forgot
                // what was pending, parked messages too.
                drop(batch);
                parking = Parking::default();
                deliveries.forget();
                continue;
            }
            if deliveries.missed(batch.iter().map(|r| r.consumer_sequence)) {
                self.wait_for_missed(&mut consumer, &mut conn, &mut parking, &batch)
                    .await;
            }
            let settled = self.witness_of(&batch);
            self.process(&mut conn, batch, &mut parking, &stop).await?;
            witness = settled.or(witness);
        }
        // Parked messages were not started: back to the broker at once.
        for r in parking.take_all() {
            let _ = r.message.ack_with(AckKind::Nak(None)).await;
        }
        Ok(())
    }

    /// The next message, waiting up to [`PULL_EXPIRES`] for it.
    async fn next_message(&self, consumer: &PullConsumer) -> Option<jetstream::Message> {
        let error = match consumer
            .batch()
            .max_messages(1)
            .expires(PULL_EXPIRES)
            .messages()
            .await
        {
            Ok(mut one) => match one.next().await {
                Some(Ok(message)) => return Some(message),
                None => return None,
                Some(Err(e)) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        tracing::warn!(group = %self.config.group, %error, "pulling failed; trying again");
        tokio::time::sleep(PULL_RETRY).await;
        None
    }

    /// Up to `n` more messages that are ready now, without waiting.
    async fn ready_messages(&self, consumer: &PullConsumer, n: usize, batch: &mut Vec<Received>) {
        // The expiry matters when the consumer is at max_ack_pending: the server then answers
        // a no-wait request only when it expires.
        match consumer
            .fetch()
            .max_messages(n)
            .expires(FETCH_EXPIRES)
            .messages()
            .await
        {
            Ok(mut ready) => {
                while let Some(next) = ready.next().await {
                    match next {
                        Ok(message) => batch.extend(self.read(message)),
                        Err(e) => {
                            tracing::debug!(group = %self.config.group, error = %e, "fetch");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(group = %self.config.group, error = %e, "fetch"),
        }
    }

    /// Reads a message just delivered, and counts the delivery.
    fn read(&self, message: jetstream::Message) -> Option<Received> {
        let (stream, stream_sequence, consumer_sequence, delivered, published) = match message
            .info()
        {
            Ok(info) => (
                info.stream.to_owned(),
                info.stream_sequence,
                info.consumer_sequence,
                info.delivered.max(1) as u64,
                nats_time(info.published.unix_timestamp_nanos()),
            ),
            Err(e) => {
                tracing::error!(error = %e, subject = %message.subject, "not a JetStream message");
                return None;
            }
        };
        GroupStats::add(&self.stats.deliveries);
        if delivered > 1 {
            GroupStats::add(&self.stats.redeliveries);
        }
        let subject = message.subject.to_string();
        let headers = headers_of(message.headers.as_ref());
        let topic = self.topic_of(&subject);
        let delivery = Delivery {
            subject,
            stream,
            stream_sequence,
            delivered,
            published,
            headers,
            payload: message.payload.clone(),
        };
        let key = self.key(&delivery, topic);
        Some(Received {
            message,
            delivery,
            topic,
            key,
            consumer_sequence,
        })
    }

    /// Processes a batch and settles each message. A fault of the group's own infrastructure
    /// opens the breaker: the messages are held (kept alive with in-progress acks) and the
    /// rounds not yet committed are tried again after a backoff, until they commit or the group
    /// stops.
    async fn process(
        &self,
        conn: &mut rusqlite::Connection,
        batch: Vec<Received>,
        parking: &mut Parking<Received>,
        stop: &Shutdown,
    ) -> Result<(), ConsumerError> {
        // Messages of an order that waits for a retry are parked without being started.
        let mut verdicts: Vec<Option<Verdict>> = batch
            .iter()
            .map(|r| {
                parking
                    .holds(&r.key, r.delivery.stream_sequence)
                    .then_some(Verdict::Park)
            })
            .collect();
        let batch_held: Vec<&jetstream::Message> = batch.iter().map(|r| &r.message).collect();
        let mut outage = None;
        loop {
            let attempt = tokio::select! {
                done = self.run_rounds(conn, &batch, &mut verdicts, parking, stop) => done,
                () = keep_alive(&batch_held, self.config.ack_wait, &self.fence) => unreachable!("keep_alive never ends"),
                () = self.keep_parked_alive(parking) => unreachable!("keep_parked_alive never ends"),
            };
            let fault = match attempt {
                Ok(()) => break,
                Err(RoundError::Fault(fault)) => fault,
                // The batch stays unsettled: the new owner gets it after ack_wait.
                Err(RoundError::Superseded(why)) => {
                    tracing::error!(group = %self.config.group, %why, "another process holds the consumer lease; stopping");
                    return Err(ConsumerError::Superseded(why));
                }
            };
            GroupStats::add(&self.stats.infrastructure_faults);
            let (metrics, labels) = self.handler.metrics();
            metrics.failed(labels, "infrastructure");
            tracing::error!(group = %self.config.group, error = %fault, messages = batch_held.len(), "the group's database failed; holding the batch and backing off");
            let outage = outage
                .get_or_insert_with(|| Outage::begin(&self.stats.breaker, self.config.ack_wait));
            self.breaker_changed();
            let held: Vec<&jetstream::Message> = batch_held
                .iter()
                .copied()
                .chain(parking.held().map(|r| &r.message))
                .collect();
            if !outage.wait(&held, stop, || self.fence.is_sure()).await {
                // Unsettled: the broker delivers them again after ack_wait.
                return Ok(());
            }
        }
        if outage.take().is_some() {
            self.breaker_changed();
            tracing::info!(group = %self.config.group, "the group's database works again");
        }
        drop(batch_held);
        for (r, verdict) in batch.into_iter().zip(verdicts) {
            // Every message has a verdict once the rounds are done.
            let verdict = verdict.unwrap_or(Verdict::Release);
            self.settle(r, verdict, parking, stop).await;
        }
        Ok(())
    }

    /// The topic of a message on `subject`: the worker's, or a replay's original one (the
    /// longest topic name, of the contract or foreign, the replay subject goes on with).
    pub(in crate::consumer) fn topic_of(&self, subject: &str) -> Option<TopicOf> {
        match self.source {
            Source::Topic(topic) => Some(TopicOf::Contract(topic)),
            Source::Foreign(index) => Some(TopicOf::Foreign(index)),
            Source::Replay => {
                let contract = crate::consumer::dlq::replay_topic(subject).and_then(Topic::parse);
                // replay.<group>.<topic>[.<rest of the source subject>]
                let rest = subject
                    .strip_prefix("replay.")
                    .and_then(|s| s.split_once('.'))
                    .map_or("", |(_, rest)| rest);
                let foreign = self
                    .config
                    .foreign
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| {
                        rest.strip_prefix(t.name.as_str())
                            .is_some_and(|after| after.is_empty() || after.starts_with('.'))
                    })
                    .max_by_key(|(_, t)| t.name.len());
                match (contract, foreign) {
                    (Some(c), Some((i, t))) if t.name.len() > c.as_str().len() => {
                        Some(TopicOf::Foreign(i))
                    }
                    (Some(c), _) => Some(TopicOf::Contract(c)),
                    (None, Some((i, _))) => Some(TopicOf::Foreign(i)),
                    (None, None) => None,
                }
            }
        }
    }

    /// The topic's name: the contract's, or the foreign topic's as the group names it.
    pub(in crate::consumer) fn topic_name(&self, topic: TopicOf) -> &str {
        match topic {
            TopicOf::Contract(topic) => topic.as_str(),
            TopicOf::Foreign(index) => &self.config.foreign[index].name,
        }
    }

    /// A message of `topic` as the handler sees it: typed for the contract, raw for a foreign
    /// topic; a schema error when it cannot be read.
    pub(in crate::consumer) fn decode(
        &self,
        topic: TopicOf,
        delivery: &Delivery,
    ) -> Result<Event, SchemaError> {
        match topic {
            TopicOf::Contract(topic) => handler::decode(topic, &delivery.payload),
            TopicOf::Foreign(index) => {
                RawEvent::read(&self.config.foreign[index], delivery).map(Event::Other)
            }
        }
    }

    /// The ordering key of a delivery of `topic`: the contract's (see [`key_of`]), or where a
    /// foreign topic's settings say, on the subject it was first delivered on.
    pub(in crate::consumer) fn key(&self, delivery: &Delivery, topic: Option<TopicOf>) -> String {
        match topic {
            Some(TopicOf::Foreign(index)) => self.config.foreign[index]
                .key
                .of(first_subject(delivery), &delivery.headers),
            _ => key_of(delivery).to_owned(),
        }
    }

    /// The stream the worker's consumer reads.
    pub(in crate::consumer) fn stream(&self) -> String {
        match self.source {
            Source::Topic(topic) => crate::bus::stream_name(topic.as_str()),
            Source::Foreign(index) => self.config.foreign[index].stream.clone(),
            Source::Replay => crate::consumer::dlq::REPLAY_STREAM.to_owned(),
        }
    }

    /// Who the worker is in `waiting_orders`: its consumer and stream.
    pub(in crate::consumer) fn parking_id(&self) -> String {
        format!("{}/{}", self.config.consumer_name(), self.stream())
    }

    /// Sends the parked messages an in-progress ack every third of `ack_wait`; never ends.
    async fn keep_parked_alive(&self, parking: &Parking<Received>) {
        let interval = keep_alive_interval(self.config.ack_wait);
        loop {
            tokio::time::sleep_until(parking.progress_due(interval)).await;
            let held: Vec<&jetstream::Message> = parking.held().map(|r| &r.message).collect();
            // Not while the lease is unsure: a new owner waits for them (see `Fence::is_sure`).
            if self.fence.is_sure() {
                progress(&held).await;
            }
            parking.progressed();
        }
    }

    /// Shows the breaker's state in the metrics.
    fn breaker_changed(&self) {
        let (metrics, _) = self.handler.metrics();
        metrics.breaker(&self.config.group, self.stats.breaker.state());
    }

    /// Tells the broker what became of `r` and keeps the order's place: a failed message's key
    /// waits for it, a done one releases what was parked behind it.
    async fn settle(
        &self,
        r: Received,
        verdict: Verdict,
        parking: &mut Parking<Received>,
        stop: &Shutdown,
    ) {
        let d = &r.delivery;
        let sequence = d.stream_sequence;
        let done = matches!(verdict, Verdict::Ack { .. } | Verdict::Dead(..));
        let acked = match verdict {
            Verdict::Park => {
                GroupStats::add(&self.stats.parked);
                parking.park(&r.key.clone(), sequence, r);
                return;
            }
            Verdict::Ack { duplicate } => {
                if duplicate {
                    GroupStats::add(&self.stats.duplicates);
                } else {
                    GroupStats::add(&self.stats.processed);
                    let (metrics, labels) = self.handler.metrics();
                    metrics.processed(labels);
                }
                r.message.ack().await
            }
            Verdict::Nak(delay) => {
                GroupStats::add(&self.stats.retried);
                parking.wait(&r.key, sequence, delay);
                r.message.ack_with(AckKind::Nak(Some(delay))).await
            }
            Verdict::Release => r.message.ack_with(AckKind::Nak(None)).await,
            Verdict::Dead(reason, error) => {
                let topic = r.topic.map_or("unknown", |t| self.topic_name(t));
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
                // Terminated only once its dead letter is stored; until then it is held.
                let mut outage = None;
                loop {
                    match dlq::publish(&self.js, &letter).await {
                        Ok(()) => break,
                        Err(e) => {
                            GroupStats::add(&self.stats.infrastructure_faults);
                            tracing::error!(group = %self.config.group, error = %e, stream = %d.stream, seq = d.stream_sequence, "publishing a dead letter failed; holding the message and backing off");
                            let outage = outage.get_or_insert_with(|| {
                                Outage::begin(&self.stats.breaker, self.config.ack_wait)
                            });
                            self.breaker_changed();
                            let held: Vec<&jetstream::Message> = std::iter::once(&r.message)
                                .chain(parking.held().map(|p| &p.message))
                                .collect();
                            if !outage.wait(&held, stop, || self.fence.is_sure()).await {
                                return;
                            }
                        }
                    }
                }
                if outage.take().is_some() {
                    self.breaker_changed();
                }
                GroupStats::add(&self.stats.dead_lettered);
                if reason == Reason::Schema {
                    let (metrics, labels) = self.handler.metrics();
                    metrics.failed(labels, "schema");
                }
                tracing::warn!(group = %self.config.group, topic, reason = reason.as_str(), %error, stream = %d.stream, seq = d.stream_sequence, "dead letter");
                r.message.ack_with(AckKind::Term).await
            }
        };
        if done {
            parking.settled(&r.key, sequence);
        }
        if let Err(e) = acked {
            // The broker redelivers it after ack_wait; the processed-events table makes that
            // harmless.
            tracing::debug!(group = %self.config.group, error = %e, "acknowledging failed");
        }
    }
}

/// Sends in-progress acks for `held` every third of `ack_wait` while a batch runs, so a batch of
/// slow handlers is not delivered again under them, while the lease is surely held (see
/// [`Fence::is_sure`]); never ends.
async fn keep_alive(held: &[&jetstream::Message], ack_wait: Duration, fence: &Fence) {
    loop {
        tokio::time::sleep(keep_alive_interval(ack_wait)).await;
        if fence.is_sure() {
            progress(held).await;
        }
    }
}

/// The ordering key of a delivery: the subject's last token (`<topic>.<partition>.<key>`), for a
/// replay the one of the subject it was first delivered on.
pub(in crate::consumer) fn key_of(delivery: &Delivery) -> &str {
    first_subject(delivery)
        .rsplit('.')
        .next()
        .unwrap_or_default()
}

/// The subject a delivery was first delivered on: its own, or a replay's original.
fn first_subject(delivery: &Delivery) -> &str {
    if delivery.is_replay() {
        delivery
            .header("Dlq-Source-Subject")
            .unwrap_or(&delivery.subject)
    } else {
        &delivery.subject
    }
}
