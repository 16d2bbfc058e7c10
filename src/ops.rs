//! What the operations page (`/ops`) reads beyond the API's other resources: a 15-minute history
//! of the outbox (pending, dead, publish rate, commit→PubAck latency p50/p99) sampled every few
//! seconds, and a broker connection of its own for the stream and dead-letter views.
//!
//! The history lives in memory: it is a view of the last minutes, not a record; a restart starts
//! it afresh, as a Prometheus scrape would.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::bus::Topics;
use crate::metrics::Metrics;
use crate::shutdown::step_then_wait;
use crate::store::{Store, outbox};

/// How often the history takes a sample.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// How far back the history reaches.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// One point of the history.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Sample {
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// Outbox rows waiting.
    pub pending: u64,
    /// Outbox rows dead.
    pub dead: u64,
    /// Events acknowledged per second since the previous sample.
    pub published_per_second: f64,
    /// Median commit→PubAck latency of the events acknowledged since the previous sample, in
    /// milliseconds; `None` when none were.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub latency_p99_ms: Option<f64>,
}

/// The operations page's state: the history, the broker connection and the topic table.
#[derive(Debug)]
pub struct Ops {
    samples: RwLock<VecDeque<Sample>>,
    jetstream: RwLock<Option<jetstream::Context>>,
    topics: Topics,
}

impl Ops {
    /// An empty history for the streams of `topics`.
    pub fn new(topics: Topics) -> Ops {
        Ops {
            samples: RwLock::default(),
            jetstream: RwLock::default(),
            topics,
        }
    }

    /// The samples of the window, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.samples
            .read()
            .expect("history lock")
            .iter()
            .cloned()
            .collect()
    }

    /// The latest sample.
    pub fn latest(&self) -> Option<Sample> {
        self.samples.read().expect("history lock").back().cloned()
    }

    /// The topic table.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The broker, when the page's connection to it is up.
    pub fn jetstream(&self) -> Option<jetstream::Context> {
        let js = self.jetstream.read().expect("connection lock").clone()?;
        (js.client().connection_state() == async_nats::connection::State::Connected).then_some(js)
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.samples.write().expect("history lock");
        samples.push_back(sample);
        let window = chrono::Duration::from_std(WINDOW).unwrap_or(chrono::Duration::MAX);
        while let (Some(first), Some(last)) = (samples.front(), samples.back())
            && last.at - first.at > window
        {
            samples.pop_front();
        }
    }
}

/// Takes a sample every `interval` until `shutdown`; connects to `nats` (when given) and
/// keeps that connection for the page.
pub async fn run(
    ops: Arc<Ops>,
    store: Store,
    metrics: Arc<Metrics>,
    nats: Option<crate::bus::NatsSettings>,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut previous = (Instant::now(), metrics.publish_totals().0);
    loop {
        let step = async {
            if let Some(nats) = &nats
                && ops.jetstream.read().expect("connection lock").is_none()
                && let Ok(client) = crate::bus::connect(nats).await
            {
                *ops.jetstream.write().expect("connection lock") = Some(jetstream::new(client));
            }
            let stats = store
                .read(outbox::stats)
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "ops history: outbox counts"))
                .unwrap_or_default();
            let now = Instant::now();
            let published = metrics.publish_totals().0;
            let elapsed = now.duration_since(previous.0).as_secs_f64();
            let rate = if elapsed > 0.0 {
                published.saturating_sub(previous.1) as f64 / elapsed
            } else {
                0.0
            };
            previous = (now, published);
            let mut latencies = metrics.take_latencies();
            latencies.sort_by(f64::total_cmp);
            ops.push(Sample {
                at: Utc::now(),
                pending: stats.pending,
                dead: stats.dead,
                published_per_second: rate,
                latency_p50_ms: quantile(&latencies, 0.5).map(|s| s * 1000.0),
                latency_p99_ms: quantile(&latencies, 0.99).map(|s| s * 1000.0),
            });
        };
        if !step_then_wait(&mut shutdown, step, interval).await {
            return;
        }
    }
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), Some(50.0));
        assert_eq!(quantile(&values, 0.99), Some(99.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn the_history_keeps_fifteen_minutes() {
        let ops = Ops::new(Topics::embedded());
        let t0 = Utc::now();
        for i in 0..1000 {
            ops.push(Sample {
                at: t0 + chrono::Duration::seconds(i * 2),
                pending: 0,
                dead: 0,
                published_per_second: 0.0,
                latency_p50_ms: None,
                latency_p99_ms: None,
            });
        }
        let history = ops.history();
        assert_eq!(
            history.len(),
            451,
            "15 minutes of 2-second samples, both ends"
        );
        assert_eq!(
            history.last().unwrap().at - history[0].at,
            chrono::Duration::minutes(15)
        );
    }
}
