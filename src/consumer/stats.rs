//! What a consumer group has done since it started: counters its workers bump, and snapshots of
//! them for tests, the demo and logs.

use std::sync::atomic::{AtomicU64, Ordering};

use super::breaker::Breaker;

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
    /// Messages held back because an earlier event of their order waited for a retry (each
    /// time one was parked; none of them costs a delivery).
    pub parked: AtomicU64,
    /// Messages sent to the dead letters.
    pub dead_lettered: AtomicU64,
    /// Handlers that panicked (each a permanent failure of its message).
    pub panics: AtomicU64,
    /// Handlers that ran past the group's `handler_timeout` (each a transient failure).
    pub timeouts: AtomicU64,
    /// Failures of the group's own infrastructure: its database could not begin, write or commit
    /// the batch, or a dead letter could not be published. None of them costs a delivery.
    pub infrastructure_faults: AtomicU64,
    /// The circuit breaker those faults open.
    pub breaker: Breaker,
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

    /// The group's health as JSON, for a subscriber process's `/health`: `ok` while the breaker
    /// is closed, with the breaker's state and the counts.
    pub fn health(&self) -> serde_json::Value {
        let s = self.snapshot();
        let state = self.breaker.state();
        serde_json::json!({
            "status": if state == super::BreakerState::Closed { "ok" } else { "degraded" },
            "breaker": state.as_str(),
            "breaker_trips": self.breaker.trips(),
            "infrastructure_faults": self.infrastructure_faults.load(Ordering::Relaxed),
            "deliveries": s.deliveries,
            "processed": s.processed,
            "duplicates": s.duplicates,
            "retried": s.retried,
            "dead_lettered": s.dead_lettered,
            "panics": self.panics.load(Ordering::Relaxed),
            "timeouts": self.timeouts.load(Ordering::Relaxed),
        })
    }

    pub(super) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
