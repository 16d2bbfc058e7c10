//! One consumer's task: pull what is ready, process it as one batch in one transaction, then
//! acknowledge, retry or dead-letter each message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tracing::Instrument;

use super::ConsumerError;
use super::breaker::{Outage, keep_alive_interval, progress};
use super::config::GroupConfig;
use super::dlq::{self, Reason};
use super::guard::Guarded;
use super::handler::{self, Delivery, Failure, Handler};
use super::idempotency::{Batch, Processed, Step};
use super::message::{headers_of, nats_time};
use super::stats::GroupStats;
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
pub(super) enum Source {
    /// A topic stream.
    Topic(Topic),
    /// The group's replayed dead letters.
    Replay,
}

/// One consumer's task.
pub(super) struct Worker<H> {
    pub(super) config: Arc<GroupConfig>,
    pub(super) handler: Guarded<H>,
    pub(super) js: jetstream::Context,
    pub(super) stats: Arc<GroupStats>,
    pub(super) source: Source,
}

/// What becomes of a message once its batch is committed.
enum Verdict {
    Ack {
        duplicate: bool,
    },
    Nak(Duration),
    /// Not started because the group stops: back to the broker at once.
    Release,
    Dead(Reason, String),
}

/// A message of a batch, read.
struct Received {
    message: jetstream::Message,
    delivery: Delivery,
    topic: Option<Topic>,
}

impl<H: Handler> Worker<H> {
    /// Pulls and processes the consumer's messages until `stop`. The batch in flight then
    /// finishes the message its handler is running (bounded by `handler_timeout`) and sends the
    /// ones not started back to the broker at once.
    ///
    /// Each batch is pulled when the previous one is settled (one pull request waiting for the
    /// first message, one taking what else is ready), so no message is delivered to the worker
    /// while it cannot process: nothing times out unseen while the breaker is open.
    pub(super) async fn drain(
        self,
        consumer: PullConsumer,
        mut conn: rusqlite::Connection,
        stop: Shutdown,
    ) -> Result<(), ConsumerError> {
        let batch_size = self.config.batch_size;
        loop {
            if !self.stats.breaker.closed(&stop).await {
                return Ok(());
            }
            let first = tokio::select! {
                () = stop.signal() => return Ok(()),
                first = self.next_message(&consumer) => first,
            };
            let Some(first) = first else { continue };
            let mut batch = Vec::with_capacity(batch_size);
            batch.push(first);
            // With one unacknowledged message at most, nothing more can be ready.
            if batch_size > 1 && self.config.max_ack_pending > 1 {
                self.ready_messages(&consumer, batch_size - 1, &mut batch)
                    .await;
            }
            self.process(&mut conn, batch, &stop).await?;
        }
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
    async fn ready_messages(
        &self,
        consumer: &PullConsumer,
        n: usize,
        batch: &mut Vec<jetstream::Message>,
    ) {
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
                        Ok(message) => batch.push(message),
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

    /// Processes a batch and settles each message. A fault of the group's own infrastructure
    /// opens the breaker: the messages are held (kept alive with in-progress acks) and the whole
    /// batch is tried again after a backoff, until it commits or the group stops.
    async fn process(
        &self,
        conn: &mut rusqlite::Connection,
        batch: Vec<jetstream::Message>,
        stop: &Shutdown,
    ) -> Result<(), ConsumerError> {
        let received: Vec<Received> = batch.into_iter().filter_map(|m| self.read(m)).collect();
        for r in &received {
            GroupStats::add(&self.stats.deliveries);
            if r.delivery.delivered > 1 {
                GroupStats::add(&self.stats.redeliveries);
            }
        }
        let held: Vec<&jetstream::Message> = received.iter().map(|r| &r.message).collect();
        let mut outage = None;
        let verdicts = loop {
            let attempt = tokio::select! {
                verdicts = self.run_batch(conn, &received, stop) => verdicts,
                () = keep_alive(&held, self.config.ack_wait) => unreachable!("keep_alive never ends"),
            };
            match attempt {
                Ok(verdicts) => break verdicts,
                Err(fault) => {
                    GroupStats::add(&self.stats.infrastructure_faults);
                    let (metrics, labels) = self.handler.metrics();
                    metrics.failed(labels, "infrastructure");
                    tracing::error!(group = %self.config.group, error = %fault, messages = held.len(), "the group's database failed; holding the batch and backing off");
                    let outage = outage.get_or_insert_with(|| {
                        Outage::begin(&self.stats.breaker, self.config.ack_wait)
                    });
                    self.breaker_changed();
                    if !outage.wait(&held, stop).await {
                        // Unsettled: the broker delivers them again after ack_wait.
                        return Ok(());
                    }
                }
            }
        };
        if outage.take().is_some() {
            self.breaker_changed();
            tracing::info!(group = %self.config.group, "the group's database works again");
        }
        for (r, verdict) in received.iter().zip(verdicts) {
            self.settle(r, verdict, stop).await;
        }
        Ok(())
    }

    /// Runs the batch in one transaction and commits it; the verdicts, or the infrastructure
    /// fault that rolled it back.
    async fn run_batch(
        &self,
        conn: &mut rusqlite::Connection,
        received: &[Received],
        stop: &Shutdown,
    ) -> Result<Vec<Verdict>, String> {
        let group = self.config.group.as_str();
        let mut verdicts = Vec::with_capacity(received.len());
        // Keys whose earlier message failed in this batch: their later ones wait as long.
        let mut held: HashMap<String, Duration> = HashMap::new();
        let mut tx =
            Batch::begin(conn).map_err(|e| format!("cannot begin the batch's transaction: {e}"))?;
        for r in received {
            let d = &r.delivery;
            if stop.is_triggered() {
                verdicts.push(Verdict::Release);
                continue;
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
            let span = super::trace::message_span(group, topic.as_str(), &event, d);
            let step = tx
                .run(&processed, &self.handler, &event, d)
                .instrument(span)
                .await;
            let store_fault = self.handler.take_store_fault();
            verdicts.push(match step {
                Ok(Step::Done) => Verdict::Ack { duplicate: false },
                Ok(Step::AlreadyProcessed) => Verdict::Ack { duplicate: true },
                Ok(Step::Failed(Failure::Permanent(why))) => Verdict::Dead(Reason::Permanent, why),
                Ok(Step::Failed(Failure::Transient(why))) => {
                    if let Some(fault) = store_fault {
                        let _ = tx.rollback();
                        return Err(format!("the handler's writes failed: {fault}"));
                    }
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
                    let _ = tx.rollback();
                    return Err(format!("the batch's transaction failed: {e}"));
                }
            });
        }
        tx.commit()
            .map_err(|e| format!("cannot commit the batch: {e}"))?;
        Ok(verdicts)
    }

    /// Shows the breaker's state in the metrics.
    fn breaker_changed(&self) {
        let (metrics, _) = self.handler.metrics();
        metrics.breaker(&self.config.group, self.stats.breaker.state());
    }

    async fn settle(&self, r: &Received, verdict: Verdict, stop: &Shutdown) {
        let d = &r.delivery;
        let acked = match verdict {
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
                r.message.ack_with(AckKind::Nak(Some(delay))).await
            }
            Verdict::Release => r.message.ack_with(AckKind::Nak(None)).await,
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
                            if !outage.wait(&[&r.message], stop).await {
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
        if let Err(e) = acked {
            // The broker redelivers it after ack_wait; the processed-events table makes that
            // harmless.
            tracing::debug!(group = %self.config.group, error = %e, "acknowledging failed");
        }
    }
}

/// Sends in-progress acks for `held` every third of `ack_wait` while a batch runs, so a batch of
/// slow handlers is not delivered again under them; never ends.
async fn keep_alive(held: &[&jetstream::Message], ack_wait: Duration) {
    loop {
        tokio::time::sleep(keep_alive_interval(ack_wait)).await;
        progress(held).await;
    }
}
