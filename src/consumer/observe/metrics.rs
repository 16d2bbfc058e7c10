//! Prometheus metrics of a subscriber process's consumer groups, in the service's registry style
//! (`prometheus-client`, OpenMetrics text), with no HTTP in it: the process serves
//! [`ConsumerMetrics::render`] where it likes.
//!
//! Per group and handler: events processed, failures by kind (`transient`, `permanent`, `panic`,
//! `timeout`, `schema`, `infrastructure`), and the durations of `handle` and `prepare`; per
//! group, the breaker's state (0 closed, 1 open, 2 half-open).

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::consumer::breaker::BreakerState;

/// Labels of a handler's series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    /// The consumer group.
    pub group: String,
    /// The handler's type name.
    pub handler: String,
}

/// Labels of a handler's failures.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The consumer group.
    pub group: String,
    /// The handler's type name.
    pub handler: String,
    /// `transient`, `permanent`, `panic`, `timeout`, `schema` or `infrastructure`.
    pub kind: String,
}

/// Labels of a group's series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    /// The consumer group.
    pub group: String,
}

/// The consumer groups' metrics of one process; share one between its groups
/// ([`Group::with_metrics`](crate::consumer::Group::with_metrics)).
#[derive(Debug)]
pub struct ConsumerMetrics {
    registry: Registry,
    processed: Family<HandlerLabels, Counter>,
    failed: Family<FailureLabels, Counter>,
    duration: Family<HandlerLabels, Histogram>,
    prepare_duration: Family<HandlerLabels, Histogram>,
    breaker: Family<GroupLabel, Gauge<i64, AtomicI64>>,
}

impl Default for ConsumerMetrics {
    fn default() -> ConsumerMetrics {
        ConsumerMetrics::new()
    }
}

impl ConsumerMetrics {
    /// Empty metrics, registered.
    pub fn new() -> ConsumerMetrics {
        let processed = Family::<HandlerLabels, Counter>::default();
        let failed = Family::<FailureLabels, Counter>::default();
        let histogram = || Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        let duration = Family::<HandlerLabels, Histogram>::new_with_constructor(histogram);
        let prepare_duration = Family::<HandlerLabels, Histogram>::new_with_constructor(histogram);
        let breaker = Family::<GroupLabel, Gauge<i64, AtomicI64>>::default();
        let mut registry = Registry::default();
        registry.register(
            "consumer_events_processed",
            "Events a group's handler processed (committed)",
            processed.clone(),
        );
        registry.register(
            "consumer_events_failed",
            "Events a group could not process, by kind of failure",
            failed.clone(),
        );
        registry.register(
            "consumer_handler_duration_seconds",
            "How long one call of the handler's handle took",
            duration.clone(),
        );
        registry.register(
            "consumer_prepare_duration_seconds",
            "How long one call of the handler's prepare took",
            prepare_duration.clone(),
        );
        registry.register(
            "consumer_breaker_state",
            "The group's circuit breaker: 0 closed, 1 open, 2 half-open",
            breaker.clone(),
        );
        ConsumerMetrics {
            registry,
            processed,
            failed,
            duration,
            prepare_duration,
            breaker,
        }
    }

    /// The metrics as OpenMetrics text (content type `application/openmetrics-text`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Observes one call of `handle` (`prepare` false) or `prepare`.
    pub(in crate::consumer) fn duration(
        &self,
        labels: &HandlerLabels,
        prepare: bool,
        seconds: f64,
    ) {
        let family = if prepare {
            &self.prepare_duration
        } else {
            &self.duration
        };
        family.get_or_create(labels).observe(seconds);
    }

    pub(in crate::consumer) fn processed(&self, labels: &HandlerLabels) {
        self.processed.get_or_create(labels).inc();
    }

    pub(in crate::consumer) fn failed(&self, labels: &HandlerLabels, kind: &str) {
        self.failed
            .get_or_create(&FailureLabels {
                group: labels.group.clone(),
                handler: labels.handler.clone(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub(in crate::consumer) fn breaker(&self, group: &str, state: BreakerState) {
        let value = match state {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        self.breaker
            .get_or_create(&GroupLabel {
                group: group.to_owned(),
            })
            .set(value);
    }
}

/// The short type name of a handler, its label.
pub(in crate::consumer) fn handler_name<H>() -> String {
    let full = std::any::type_name::<H>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_owned()
}
