//! What a consumer group has done since it started: counters its workers bump, snapshots of them
//! for tests, the demo and logs, and the group's role (starting, standby, active, stopped) and
//! health for a subscriber process's `/health`.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::consumer::breaker::{Breaker, BreakerState};

/// What a group is doing in its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRole {
    /// Setting up its streams, consumers and database (waiting for the broker as long as it
    /// takes), then trying the lease for the first time.
    Starting,
    /// Waiting for the lease another process holds (see the group's `owner` lease), since the
    /// first try to take it was refused or since it was lost: a healthy standby, ready to take
    /// over.
    Standby,
    /// Holding the lease: its workers consume.
    Active,
    /// `run` returned: shut down, or ended by an error.
    Stopped,
}

impl GroupRole {
    /// `starting`, `standby`, `active` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupRole::Starting => "starting",
            GroupRole::Standby => "standby",
            GroupRole::Active => "active",
            GroupRole::Stopped => "stopped",
        }
    }

    fn from_u8(n: u8) -> GroupRole {
        match n {
            0 => GroupRole::Starting,
            1 => GroupRole::Standby,
            2 => GroupRole::Active,
            _ => GroupRole::Stopped,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            GroupRole::Starting => 0,
            GroupRole::Standby => 1,
            GroupRole::Active => 2,
            GroupRole::Stopped => 3,
        }
    }
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
    /// Times a stream went back under one of the group's consumers (it lost its last messages
    /// and stored others at their sequences) and the consumer was reset (see `run::rewind`).
    pub rewinds: AtomicU64,
    /// The circuit breaker those faults open.
    pub breaker: Breaker,
    /// The [`GroupRole`], set by the group's `run`.
    role: AtomicU8,
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

    /// What the group is doing now.
    pub fn role(&self) -> GroupRole {
        GroupRole::from_u8(self.role.load(Ordering::Relaxed))
    }

    pub(in crate::consumer) fn set_role(&self, role: GroupRole) {
        self.role.store(role.to_u8(), Ordering::Relaxed);
    }

    /// Whether the group does its job: it is active or a standby, and its breaker is closed.
    ///
    /// A standby is healthy: it is what a second process of the group should be, and a probe
    /// that failed it would have an orchestrator restart the very process that takes over when
    /// the active one dies. Not healthy: a group still setting up (the broker or its streams are
    /// not there yet), a stopped one (shut down or ended by an error), and an active one whose
    /// breaker is open or half-open (its database or the dead-letter stream fails, so it holds
    /// its messages and fetches nothing).
    pub fn is_healthy(&self) -> bool {
        matches!(self.role(), GroupRole::Active | GroupRole::Standby)
            && self.breaker.state() == BreakerState::Closed
    }

    /// The group's health as JSON, for a subscriber process's `/health` (which the `health`
    /// module serves): `status` is `ok` when [`is_healthy`](GroupStats::is_healthy),
    /// `degraded` when the breaker is not closed, `down` while starting or once stopped; with
    /// the role, the breaker's state and the counts.
    pub fn health(&self) -> serde_json::Value {
        let s = self.snapshot();
        let state = self.breaker.state();
        let role = self.role();
        let status = if self.is_healthy() {
            "ok"
        } else if state != BreakerState::Closed {
            "degraded"
        } else {
            "down"
        };
        serde_json::json!({
            "status": status,
            "role": role.as_str(),
            "breaker": state.as_str(),
            "breaker_trips": self.breaker.trips(),
            "infrastructure_faults": self.infrastructure_faults.load(Ordering::Relaxed),
            "deliveries": s.deliveries,
            "redeliveries": s.redeliveries,
            "processed": s.processed,
            "duplicates": s.duplicates,
            "retried": s.retried,
            "parked": self.parked.load(Ordering::Relaxed),
            "dead_lettered": s.dead_lettered,
            "panics": self.panics.load(Ordering::Relaxed),
            "timeouts": self.timeouts.load(Ordering::Relaxed),
            "rewinds": self.rewinds.load(Ordering::Relaxed),
        })
    }

    pub(in crate::consumer) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
