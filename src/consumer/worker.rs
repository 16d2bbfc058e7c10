//! One consumer's task: pull what is ready, process it as one batch in one transaction, then
//! acknowledge, retry or dead-letter each message.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};

use super::ConsumerError;
use super::config::GroupConfig;
use super::dlq::{self, Reason};
use super::handler::{self, Delivery, Failure, Handler};
use super::idempotency::{Batch, Processed, Step};
use super::message::{headers_of, nats_time};
use super::stats::GroupStats;
use crate::domain::Topic;

/// How long a pull request waits on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The idle heartbeat of a pull request; missing ones mean the connection is gone.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
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
    pub(super) handler: Arc<H>,
    pub(super) js: jetstream::Context,
    pub(super) stats: Arc<GroupStats>,
    pub(super) source: Source,
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
    /// Pulls and processes the consumer's messages until `shutdown`; a batch in flight is finished
    /// first.
    pub(super) async fn drain(
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
                        () = tokio::time::sleep(PULL_RETRY) => continue 'connect,
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
