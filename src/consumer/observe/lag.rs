//! Consumer lag per group and topic, and the spec's alerting thresholds.
//!
//! Lag in messages is what the group has not finished: pending (not yet delivered) plus
//! ack-pending (delivered, not yet acknowledged). Lag in seconds is the age of the oldest event
//! the group has not acknowledged: the first message after the consumer's ack floor that its
//! filter takes. Both are measured per consumer ([`LagRow`]: one per topic, or per topic and
//! partition) and summed per group ([`GroupLag`]), which is what the spec's "lag > 1000" warns
//! on. The [`Watch`] samples them for every group on the topic streams, the dead letters and the
//! relay's publish failures, and turns the spec's thresholds into warnings for `/ready` and
//! gauges for `/metrics`.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;

use crate::bus::Topics;
use crate::consumer::message::nats_time;
use crate::consumer::{ConsumerError, dlq};
use crate::metrics::{ConsumerSample, GroupLabels, GroupSample, Metrics};
use crate::shutdown::step_then_wait;
use crate::table::{Column, Table};

/// A group's lag above this many messages, over all its consumers, is a warning (the spec's
/// "high consumer lag").
pub const LAG_WARN_MESSAGES: u64 = 1000;
/// Publish failures above this share of attempts are a warning.
pub const PUBLISH_FAILURE_WARN_RATIO: f64 = 0.05;
/// The window the publish failure ratio is computed over.
const FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// One consumer of a group on one stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LagRow {
    /// The group (the consumer's metadata, or its name).
    pub group: String,
    /// The topic, or `replay` for the group's replayed dead letters.
    pub topic: String,
    /// The durable consumer's name.
    pub consumer: String,
    /// The stream.
    pub stream: String,
    /// The subject filter.
    pub filter: String,
    /// Messages not yet delivered.
    pub pending: u64,
    /// Messages delivered and not yet acknowledged.
    pub ack_pending: u64,
    /// Messages delivered more than once.
    pub redelivered: u64,
    /// Age of the oldest unacknowledged event, 0 when there is none.
    pub lag_seconds: f64,
    /// The group's dead letters of this topic.
    pub dead_letters: u64,
}

impl LagRow {
    /// Pending plus ack-pending.
    pub fn lag_messages(&self) -> u64 {
        self.pending + self.ack_pending
    }

    /// The row as the consumer gauges of `/metrics` take it.
    fn sample(&self) -> ConsumerSample {
        ConsumerSample {
            labels: GroupLabels {
                group: self.group.clone(),
                topic: self.topic.clone(),
                consumer: self.consumer.clone(),
            },
            lag_messages: self.lag_messages(),
            lag_seconds: self.lag_seconds,
            redelivered: self.redelivered,
            dead_letters: self.dead_letters,
        }
    }
}

/// A group's lag over all its consumers: every topic it reads, every partition, and its replayed
/// dead letters.
///
/// The spec's "high consumer lag (> 1000 messages)" is a consumer group's lag as Kafka tools
/// report it: the messages the group has not finished, summed over its partitions. It is summed
/// over the group's topics (and replays) too, because the alert is about one subscriber falling
/// behind: a group 600 messages behind on each of two partitions or topics is as far behind as
/// one 1,200 behind on one, and how its work is split across consumers is not the operator's
/// concern. The per-consumer rows stay in `consumers list` and `/metrics` to show where it is.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupLag {
    /// The group.
    pub group: String,
    /// How many consumers (topics, partitions, replay) it has.
    pub consumers: usize,
    /// Pending plus ack-pending, summed over its consumers.
    pub lag_messages: u64,
    /// The age of its oldest unacknowledged event, over all its consumers.
    pub lag_seconds: f64,
}

/// The rows summed per group, in group order.
pub fn group_totals(rows: &[LagRow]) -> Vec<GroupLag> {
    let mut totals: BTreeMap<&str, GroupLag> = BTreeMap::new();
    for row in rows {
        let total = totals.entry(&row.group).or_insert_with(|| GroupLag {
            group: row.group.clone(),
            consumers: 0,
            lag_messages: 0,
            lag_seconds: 0.0,
        });
        total.consumers += 1;
        total.lag_messages += row.lag_messages();
        total.lag_seconds = total.lag_seconds.max(row.lag_seconds);
    }
    totals.into_values().collect()
}

impl GroupLag {
    /// The total as the group gauges of `/metrics` take it.
    fn sample(&self) -> GroupSample {
        GroupSample {
            group: self.group.clone(),
            lag_messages: self.lag_messages,
        }
    }
}

/// Every consumer on the topic streams and the replay stream, optionally of one group only.
pub async fn rows(
    js: &jetstream::Context,
    topics: &Topics,
    group: Option<&str>,
) -> Result<Vec<LagRow>, ConsumerError> {
    Ok(rows_and_dead_letters(js, topics, group).await?.0)
}

/// [`rows`], and the dead letters held by every group, from one count.
async fn rows_and_dead_letters(
    js: &jetstream::Context,
    topics: &Topics,
    group: Option<&str>,
) -> Result<(Vec<LagRow>, u64), ConsumerError> {
    let dead = dlq::counts(js).await?;
    let total = dead.values().sum();
    let now = Utc::now();
    let mut rows = Vec::new();
    let streams = topics
        .iter()
        .map(|t| t.stream_name())
        .chain([dlq::REPLAY_STREAM.to_owned()]);
    for name in streams {
        let Ok(stream) = js.get_stream(&name).await else {
            continue;
        };
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.try_next().await.map_err(ConsumerError::nats)? {
            // Ephemeral consumers (`tail`'s) are nobody's group.
            if info.config.durable_name.is_none() && !info.config.metadata.contains_key("group") {
                continue;
            }
            let row_group = info
                .config
                .metadata
                .get("group")
                .cloned()
                .unwrap_or_else(|| info.name.clone());
            if group.is_some_and(|g| g != row_group) {
                continue;
            }
            let topic = info
                .config
                .metadata
                .get("topic")
                .cloned()
                .unwrap_or_else(|| info.config.filter_subject.trim_end_matches(".>").to_owned());
            let lag_seconds = oldest_unacked(&stream, &info)
                .await
                .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
            rows.push(LagRow {
                dead_letters: dead
                    .get(&(row_group.clone(), topic.clone()))
                    .copied()
                    .unwrap_or(0),
                group: row_group,
                topic,
                consumer: info.name.clone(),
                stream: name.clone(),
                filter: info.config.filter_subject.clone(),
                pending: info.num_pending,
                ack_pending: info.num_ack_pending as u64,
                redelivered: info.num_redelivered as u64,
                lag_seconds,
            });
        }
    }
    rows.sort_by(|a, b| (&a.group, &a.topic, &a.consumer).cmp(&(&b.group, &b.topic, &b.consumer)));
    Ok((rows, total))
}

/// When the oldest message the consumer has not acknowledged was stored.
async fn oldest_unacked(stream: &stream::Stream, info: &consumer::Info) -> Option<DateTime<Utc>> {
    if info.num_pending == 0 && info.num_ack_pending == 0 {
        return None;
    }
    let filter = if info.config.filter_subject.is_empty() {
        ">".to_owned()
    } else {
        info.config.filter_subject.clone()
    };
    let message = stream
        .raw_message_builder()
        .sequence(info.ack_floor.stream_sequence + 1)
        .next_by_subject(filter)
        .send()
        .await
        .ok()?;
    Some(nats_time(message.time.unix_timestamp_nanos()))
}

/// The rows as a table for the terminal, then each group's totals.
pub fn format_table(rows: &[LagRow]) -> String {
    let mut table = Table::new(
        " ",
        [
            Column::left("group").width(24),
            Column::left("topic").width(30),
            Column::left("consumer").width(28),
            Column::right("pending").width(8),
            Column::right("ack_pending").width(11),
            Column::right("lag_seconds").width(12),
            Column::right("redelivered").width(11),
            Column::right("dead_letters").width(12),
        ],
    );
    for r in rows {
        table.row(vec![
            r.group.clone(),
            r.topic.clone(),
            r.consumer.clone(),
            r.pending.to_string(),
            r.ack_pending.to_string(),
            format!("{:.1}", r.lag_seconds),
            r.redelivered.to_string(),
            r.dead_letters.to_string(),
        ]);
    }
    let mut out = table.render();
    if rows.is_empty() {
        out.push_str("no consumer groups\n");
        return out;
    }
    // The sums the lag warning is about, under the consumers they add up.
    let mut totals = Table::new(
        " ",
        [
            Column::left("group").width(24),
            Column::right("consumers").width(9),
            Column::right("lag_messages").width(12),
            Column::right("lag_seconds").width(12),
        ],
    );
    for total in group_totals(rows) {
        totals.row(vec![
            total.group,
            total.consumers.to_string(),
            total.lag_messages.to_string(),
            format!("{:.1}", total.lag_seconds),
        ]);
    }
    out.push('\n');
    out.push_str(&totals.render());
    out
}

/// What `/ready` shows about consumers and publishing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// When it was taken; `None` before the first sample.
    pub sampled_at: Option<DateTime<Utc>>,
    /// Why the last sample failed, if it did.
    pub error: Option<String>,
    /// Every group's consumers.
    pub groups: Vec<LagRow>,
    /// Every group's consumers summed, what the lag warning is about.
    pub group_totals: Vec<GroupLag>,
    /// Dead letters held, all groups.
    pub dead_letters: u64,
    /// Failed publish attempts over all attempts in the last five minutes, when there were any.
    pub publish_failure_ratio: Option<f64>,
    /// The thresholds crossed, as sentences.
    pub warnings: Vec<String>,
}

impl Snapshot {
    fn judge(&mut self) {
        let mut warnings = Vec::new();
        self.group_totals = group_totals(&self.groups);
        for total in &self.group_totals {
            if total.lag_messages > LAG_WARN_MESSAGES {
                warnings.push(format!(
                    "consumer lag: group {} is {} messages behind over its {} consumer(s) (over {LAG_WARN_MESSAGES}), oldest {:.0} s",
                    total.group, total.lag_messages, total.consumers, total.lag_seconds
                ));
            }
        }
        if let Some(ratio) = self.publish_failure_ratio
            && ratio > PUBLISH_FAILURE_WARN_RATIO
        {
            warnings.push(format!(
                "publish failures: {:.1}% of attempts in the last {} min (over {:.0}%)",
                ratio * 100.0,
                FAILURE_WINDOW.as_secs() / 60,
                PUBLISH_FAILURE_WARN_RATIO * 100.0
            ));
        }
        if self.dead_letters > 0 {
            warnings.push(format!(
                "dead letters: {} in {} (`order-service dlq list --group <group>`)",
                self.dead_letters,
                dlq::DLQ_STREAM
            ));
        }
        self.warnings = warnings;
    }
}

/// The latest [`Snapshot`], shared by the sampling task, `/ready` and `/metrics`.
#[derive(Debug, Default)]
pub struct Watch {
    snapshot: RwLock<Snapshot>,
    /// (when, published, failed) samples of the relay's counters.
    samples: RwLock<VecDeque<(DateTime<Utc>, u64, u64)>>,
}

impl Watch {
    /// The latest snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().expect("watch lock").clone()
    }

    /// Takes one sample: the consumers through `js` (when connected) and the publish counters.
    pub async fn sample(
        &self,
        js: Option<&jetstream::Context>,
        topics: &Topics,
        metrics: &Metrics,
    ) {
        let now = Utc::now();
        let ratio = self.failure_ratio(now, metrics.publish_totals());
        let mut snapshot = Snapshot {
            sampled_at: Some(now),
            publish_failure_ratio: ratio,
            ..Snapshot::default()
        };
        if let Some(js) = js {
            match rows_and_dead_letters(js, topics, None).await {
                Ok((groups, dead_letters)) => {
                    snapshot.dead_letters = dead_letters;
                    snapshot.groups = groups;
                }
                Err(e) => snapshot.error = Some(e.to_string()),
            }
        }
        snapshot.judge();
        metrics.set_consumers(
            snapshot.groups.iter().map(LagRow::sample),
            snapshot.group_totals.iter().map(GroupLag::sample),
            snapshot.publish_failure_ratio.unwrap_or(0.0),
        );
        *self.snapshot.write().expect("watch lock") = snapshot;
    }

    fn failure_ratio(&self, now: DateTime<Utc>, (published, failed): (u64, u64)) -> Option<f64> {
        let mut samples = self.samples.write().expect("watch lock");
        samples.push_back((now, published, failed));
        while samples.len() > 2
            && samples
                .get(1)
                .is_some_and(|(t, _, _)| (now - *t).to_std().unwrap_or_default() >= FAILURE_WINDOW)
        {
            samples.pop_front();
        }
        let (_, p0, f0) = *samples.front()?;
        let (dp, df) = (published.saturating_sub(p0), failed.saturating_sub(f0));
        (dp + df > 0).then(|| df as f64 / (dp + df) as f64)
    }
}

/// Samples every `interval` until `shutdown`, connecting to `nats` when it can.
pub async fn run(
    watch: Arc<Watch>,
    nats: crate::bus::NatsSettings,
    topics: Topics,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut js = None;
    loop {
        let step = async {
            if js.is_none() {
                js = crate::bus::connect(&nats).await.ok().map(jetstream::new);
            }
            watch.sample(js.as_ref(), &topics, &metrics).await;
        };
        if !step_then_wait(&mut shutdown, step, interval).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_become_warnings() {
        let row = |pending| LagRow {
            group: "g".into(),
            topic: "order.created".into(),
            consumer: "g".into(),
            stream: "ORDER_CREATED".into(),
            filter: "order.created.>".into(),
            pending,
            ack_pending: 1,
            redelivered: 0,
            lag_seconds: 3.0,
            dead_letters: 0,
        };
        let mut quiet = Snapshot {
            groups: vec![row(999)],
            publish_failure_ratio: Some(0.05),
            ..Snapshot::default()
        };
        quiet.judge();
        assert!(quiet.warnings.is_empty(), "{:?}", quiet.warnings);
        let mut loud = Snapshot {
            groups: vec![row(1000)],
            publish_failure_ratio: Some(0.051),
            dead_letters: 2,
            ..Snapshot::default()
        };
        loud.judge();
        assert_eq!(loud.warnings.len(), 3, "{:?}", loud.warnings);
    }

    #[test]
    fn lag_warns_on_a_group_summed_over_its_consumers() {
        let row = |group: &str, consumer: &str, pending, lag_seconds| LagRow {
            group: group.into(),
            topic: "order.created".into(),
            consumer: consumer.into(),
            stream: "ORDER_CREATED".into(),
            filter: "order.created.>".into(),
            pending,
            ack_pending: 0,
            redelivered: 0,
            lag_seconds,
            dead_letters: 0,
        };
        // 600 + 600 in one group over two partitions: behind. 600 in each of two groups: not.
        let mut split = Snapshot {
            groups: vec![
                row("g", "g-p0", 600, 2.0),
                row("g", "g-p1", 600, 7.0),
                row("h", "h", 600, 1.0),
            ],
            ..Snapshot::default()
        };
        split.judge();
        assert_eq!(split.warnings.len(), 1, "{:?}", split.warnings);
        assert!(
            split.warnings[0].starts_with(
                "consumer lag: group g is 1200 messages behind over its 2 consumer(s)"
            ),
            "{:?}",
            split.warnings
        );
        assert_eq!(
            split.group_totals[0],
            GroupLag {
                group: "g".into(),
                consumers: 2,
                lag_messages: 1200,
                lag_seconds: 7.0
            }
        );
        let table = format_table(&split.groups);
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().eq(["g", "2", "1200", "7.0"])),
            "{table}"
        );
    }

    #[test]
    fn failure_ratio_is_over_the_window() {
        let watch = Watch::default();
        let t0 = Utc::now();
        assert_eq!(watch.failure_ratio(t0, (0, 0)), None);
        let ratio = watch
            .failure_ratio(t0 + chrono::Duration::seconds(5), (90, 10))
            .unwrap();
        assert!((ratio - 0.1).abs() < 1e-9);
        // Ten minutes later only the last window counts.
        let later = t0 + chrono::Duration::seconds(600);
        watch.failure_ratio(later, (190, 10));
        let ratio = watch
            .failure_ratio(later + chrono::Duration::seconds(5), (290, 10))
            .unwrap();
        assert_eq!(ratio, 0.0);
    }
}
