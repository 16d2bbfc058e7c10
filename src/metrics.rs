//! Prometheus metrics of the outbox, the relay and the consumer groups, served at `/metrics`.
//!
//! Counters and the latency histogram are updated by the relay as it works; the pending, dead and
//! oldest-age gauges are read from the database when scraped, so they are never stale. The
//! consumer gauges hold the lag watch's latest [`ConsumerSample`]s and [`GroupSample`]s.

use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::domain::Topic;
use crate::store::outbox::OutboxCounts;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of a per-topic series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    /// The topic.
    pub topic: String,
}

/// Labels of a per-stream series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    /// The stream.
    pub stream: String,
}

/// Labels of a publish failure.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The topic.
    pub topic: String,
    /// `transient` or `permanent`.
    pub kind: String,
}

/// Labels of a consumer group's series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// The consumer group.
    pub group: String,
    /// The topic (`replay` for replayed dead letters).
    pub topic: String,
    /// The durable consumer.
    pub consumer: String,
}

/// One consumer's values for the consumer gauges. The lag watch fills it in; this module does
/// not know how lag is measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSample {
    /// Which consumer.
    pub labels: GroupLabels,
    /// Messages not finished: pending plus ack-pending.
    pub lag_messages: u64,
    /// Age of the oldest unacknowledged event, 0 when there is none.
    pub lag_seconds: f64,
    /// Messages delivered more than once.
    pub redelivered: u64,
    /// The group's dead letters of this topic.
    pub dead_letters: u64,
}

/// A consumer group's values summed over its consumers, set by the lag watch.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSample {
    /// The consumer group.
    pub group: String,
    /// Messages not finished over all its consumers: what the lag warning is about.
    pub lag_messages: u64,
}

/// The label of a consumer group's totals.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

/// The service's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    published: Family<TopicLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    duplicates: Counter,
    commit_to_ack: Histogram,
    pending: Gauge,
    dead: Gauge,
    oldest_pending_age: Gauge<f64, AtomicU64>,
    consumers: ConsumerGauges,
    /// Commit-to-ack latencies (seconds) since the operations page's last sample: the histogram
    /// is cumulative, the page charts quantiles per sample.
    recent_latencies: std::sync::Mutex<Vec<f64>>,
    /// Events published again because their stream no longer held them (broker-loss repair).
    repaired: Family<TopicLabel, Counter>,
    /// Replicas moved off a stream that had no leader for long (`relay::leaderless`).
    replicas_moved: Family<StreamLabel, Counter>,
}

/// Latencies kept between two samples at most; beyond that the page's quantiles use a prefix.
const RECENT_LATENCIES_MAX: usize = 100_000;

/// Gauges of the consumer groups, set by the lag watch.
#[derive(Debug, Default)]
struct ConsumerGauges {
    lag_messages: Family<GroupLabels, Gauge>,
    group_lag_messages: Family<GroupLabel, Gauge>,
    lag_seconds: Family<GroupLabels, Gauge<f64, AtomicU64>>,
    redelivered: Family<GroupLabels, Gauge>,
    dead_letters: Family<GroupLabels, Gauge>,
    publish_failure_ratio: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let published = Family::<TopicLabel, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duplicates = Counter::default();
        // 0.25 ms to about 16 s.
        let commit_to_ack = Histogram::new(exponential_buckets(0.000_25, 2.0, 17));
        let pending = Gauge::default();
        let dead = Gauge::default();
        let oldest_pending_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "outbox_events_published",
            "Events the broker acknowledged, by topic",
            published.clone(),
        );
        registry.register(
            "outbox_publish_failures",
            "Failed publish attempts, by topic and kind (transient or permanent)",
            failures.clone(),
        );
        registry.register(
            "outbox_duplicate_acks",
            "PubAcks that reported a duplicate: the broker already had the event",
            duplicates.clone(),
        );
        registry.register(
            "outbox_commit_to_ack_seconds",
            "Time from an event's commit to its PubAck",
            commit_to_ack.clone(),
        );
        registry.register(
            "outbox_pending",
            "Outbox rows waiting to be published",
            pending.clone(),
        );
        registry.register(
            "outbox_dead",
            "Outbox rows that used up their retries",
            dead.clone(),
        );
        registry.register(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest pending outbox row, 0 when none",
            oldest_pending_age.clone(),
        );
        let consumers = ConsumerGauges::default();
        registry.register(
            "consumer_lag_messages",
            "Messages a consumer group has not finished (pending plus ack-pending)",
            consumers.lag_messages.clone(),
        );
        registry.register(
            "consumer_group_lag_messages",
            "Messages a consumer group has not finished over all its consumers (topics, partitions, replay)",
            consumers.group_lag_messages.clone(),
        );
        registry.register(
            "consumer_lag_seconds",
            "Age of the oldest event a consumer group has not acknowledged",
            consumers.lag_seconds.clone(),
        );
        registry.register(
            "consumer_redelivered",
            "Messages delivered to a consumer group more than once",
            consumers.redelivered.clone(),
        );
        registry.register(
            "consumer_dead_letters",
            "Dead letters a consumer group has in ORDER_DLQ",
            consumers.dead_letters.clone(),
        );
        registry.register(
            "outbox_publish_failure_ratio",
            "Failed publish attempts over all attempts in the last five minutes",
            consumers.publish_failure_ratio.clone(),
        );
        let repaired = Family::<TopicLabel, Counter>::default();
        registry.register(
            "outbox_repaired_events",
            "Acknowledged events published again because their stream no longer held them, by topic",
            repaired.clone(),
        );
        let replicas_moved = Family::<StreamLabel, Counter>::default();
        registry.register(
            "nats_stream_replicas_moved",
            "Replicas the service had moved to another node because their stream had no leader for NATS_STREAM_REPLACE_REPLICA_AFTER, by stream",
            replicas_moved.clone(),
        );
        // Every topic's series exist from the start, at 0, so rates and alerts see them before the
        // first event or failure.
        for topic in Topic::ALL {
            let topic = topic.as_str().to_owned();
            let _ = published.get_or_create(&TopicLabel {
                topic: topic.clone(),
            });
            let _ = repaired.get_or_create(&TopicLabel {
                topic: topic.clone(),
            });
            for kind in ["transient", "permanent"] {
                let _ = failures.get_or_create(&FailureLabels {
                    topic: topic.clone(),
                    kind: kind.to_owned(),
                });
            }
        }
        Metrics {
            registry,
            published,
            failures,
            duplicates,
            commit_to_ack,
            pending,
            dead,
            oldest_pending_age,
            consumers,
            recent_latencies: std::sync::Mutex::default(),
            repaired,
            replicas_moved,
        }
    }

    /// The commit-to-ack latencies (seconds) observed since the last call.
    pub fn take_latencies(&self) -> Vec<f64> {
        std::mem::take(&mut *self.recent_latencies.lock().expect("latencies lock"))
    }

    /// Publishes acknowledged and publish attempts failed, over every topic, since start.
    pub fn publish_totals(&self) -> (u64, u64) {
        let mut published = 0;
        let mut failed = 0;
        for topic in Topic::ALL {
            let topic = topic.as_str().to_owned();
            published += self
                .published
                .get_or_create(&TopicLabel {
                    topic: topic.clone(),
                })
                .get();
            for kind in ["transient", "permanent"] {
                failed += self
                    .failures
                    .get_or_create(&FailureLabels {
                        topic: topic.clone(),
                        kind: kind.to_owned(),
                    })
                    .get();
            }
        }
        (published, failed)
    }

    /// Sets the consumer gauges from the lag watch's latest sample: one entry per consumer, one
    /// per group, and the publish failure ratio. Consumers and groups missing lose their series.
    pub fn set_consumers(
        &self,
        consumers: impl IntoIterator<Item = ConsumerSample>,
        groups: impl IntoIterator<Item = GroupSample>,
        failure_ratio: f64,
    ) {
        let gauges = &self.consumers;
        gauges.group_lag_messages.clear();
        for sample in groups {
            gauges
                .group_lag_messages
                .get_or_create(&GroupLabel {
                    group: sample.group,
                })
                .set(i64::try_from(sample.lag_messages).unwrap_or(i64::MAX));
        }
        gauges.lag_messages.clear();
        gauges.lag_seconds.clear();
        gauges.redelivered.clear();
        gauges.dead_letters.clear();
        for sample in consumers {
            let labels = &sample.labels;
            let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            gauges
                .lag_messages
                .get_or_create(labels)
                .set(count(sample.lag_messages));
            gauges
                .lag_seconds
                .get_or_create(labels)
                .set(sample.lag_seconds);
            gauges
                .redelivered
                .get_or_create(labels)
                .set(count(sample.redelivered));
            gauges
                .dead_letters
                .get_or_create(labels)
                .set(count(sample.dead_letters));
        }
        gauges.publish_failure_ratio.set(failure_ratio);
    }

    /// Counts an acknowledged event and its commit-to-ack latency.
    pub fn published(&self, topic: &str, committed_at: DateTime<Utc>, duplicate: bool) {
        self.published
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .inc();
        if duplicate {
            self.duplicates.inc();
        }
        let latency = (Utc::now() - committed_at).to_std().unwrap_or_default();
        self.commit_to_ack.observe(latency.as_secs_f64());
        let mut recent = self.recent_latencies.lock().expect("latencies lock");
        if recent.len() < RECENT_LATENCIES_MAX {
            recent.push(latency.as_secs_f64());
        }
    }

    /// Counts a failed publish attempt.
    pub fn failed(&self, topic: &str, transient: bool) {
        self.failures
            .get_or_create(&FailureLabels {
                topic: topic.to_owned(),
                kind: if transient { "transient" } else { "permanent" }.to_owned(),
            })
            .inc();
    }

    /// Counts an event published again by the broker-loss repair.
    pub fn repaired(&self, topic: &str) {
        self.repaired
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .inc();
    }

    /// Counts a replica of `stream` moved to another node.
    pub fn replica_moved(&self, stream: &str) {
        self.replicas_moved
            .get_or_create(&StreamLabel {
                stream: stream.to_owned(),
            })
            .inc();
    }

    /// The exposition text, with the outbox gauges set from `stats`.
    pub fn render(&self, stats: &OutboxCounts, now: DateTime<Utc>) -> String {
        self.pending
            .set(i64::try_from(stats.pending).unwrap_or(i64::MAX));
        self.dead.set(i64::try_from(stats.dead).unwrap_or(i64::MAX));
        let age = stats.oldest_pending_at.map_or(0.0, |t| {
            (now - t).to_std().unwrap_or_default().as_secs_f64()
        });
        self.oldest_pending_age.set(age);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}
