//! The group's circuit breaker for its own infrastructure: its SQLite file and the dead-letter
//! stream.
//!
//! When the group's transaction cannot begin or commit (disk full, database locked), or a dead
//! letter cannot be published, the fault is not the message's: retrying it with a NAK would burn
//! its deliveries and end in the dead letters. Instead the worker keeps the messages it holds,
//! stops fetching (so the broker delivers nothing more that could time out), and waits with a
//! growing backoff, sending an in-progress ack (`+WPI`) for each held message well within
//! `ack_wait`: an in-progress ack restarts the broker's timer without counting a delivery. After
//! each wait it tries again (half-open); the first success closes the breaker. The other workers
//! of the group do not fetch while it is open. A process that dies meanwhile loses nothing either:
//! its held messages come again after `ack_wait`, one delivery more.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tokio::sync::watch;

use crate::backoff::{Backoff, Waits};
use crate::shutdown::Shutdown;

/// The first wait after the group's infrastructure failed.
const OUTAGE_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// The longest wait between two tries while it keeps failing.
const OUTAGE_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// The group's infrastructure works: workers fetch and process.
    Closed,
    /// It failed: no worker fetches; those holding messages keep them alive and wait.
    Open,
    /// A worker is trying its held messages again.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A group's breaker, shared by its workers.
#[derive(Debug)]
pub struct Breaker {
    /// Workers in an outage now.
    outages: watch::Sender<u32>,
    /// Of those, workers trying again now.
    probing: AtomicU32,
    /// Times the breaker opened.
    trips: AtomicU64,
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker {
            outages: watch::Sender::new(0),
            probing: AtomicU32::new(0),
            trips: AtomicU64::new(0),
        }
    }
}

impl Breaker {
    /// The state now.
    pub fn state(&self) -> BreakerState {
        if *self.outages.borrow() == 0 {
            BreakerState::Closed
        } else if self.probing.load(Ordering::Relaxed) > 0 {
            BreakerState::HalfOpen
        } else {
            BreakerState::Open
        }
    }

    /// How often it opened since the group started.
    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Waits until no worker is in an outage; false when `stop` comes first.
    pub(super) async fn closed(&self, stop: &Shutdown) -> bool {
        let mut outages = self.outages.subscribe();
        tokio::select! {
            _ = outages.wait_for(|n| *n == 0) => true,
            () = stop.signal() => false,
        }
    }
}

/// One worker's outage: from the first fault to the first success after it.
pub(super) struct Outage<'b> {
    breaker: &'b Breaker,
    waits: Waits,
    ack_wait: Duration,
    /// Whether this worker is trying again now (counted in the breaker's `probing`).
    probing: bool,
}

impl<'b> Outage<'b> {
    /// Opens the breaker for this worker.
    pub(super) fn begin(breaker: &'b Breaker, ack_wait: Duration) -> Outage<'b> {
        breaker.outages.send_modify(|n| *n += 1);
        breaker.trips.fetch_add(1, Ordering::Relaxed);
        Outage {
            breaker,
            waits: Backoff::exponential(OUTAGE_BACKOFF_BASE, OUTAGE_BACKOFF_MAX).waits(),
            ack_wait,
            probing: false,
        }
    }

    fn set_probing(&mut self, probing: bool) {
        if self.probing != probing {
            self.probing = probing;
            if probing {
                self.breaker.probing.fetch_add(1, Ordering::Relaxed);
            } else {
                self.breaker.probing.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits out the next backoff while keeping `held` alive with in-progress acks, each time
    /// `sure` says the consumer's lease is surely held; false when `stop` comes first (the held
    /// messages are then left to the broker's `ack_wait`).
    pub(super) async fn wait(
        &mut self,
        held: &[&jetstream::Message],
        stop: &Shutdown,
        sure: impl Fn() -> bool,
    ) -> bool {
        self.set_probing(false);
        let until = tokio::time::Instant::now() + self.waits.next_wait();
        loop {
            if sure() {
                progress(held).await;
            }
            let slice = tokio::time::Instant::now() + keep_alive_interval(self.ack_wait);
            tokio::select! {
                () = stop.signal() => return false,
                () = tokio::time::sleep_until(slice.min(until)) => {}
            }
            if tokio::time::Instant::now() >= until {
                self.set_probing(true);
                return true;
            }
        }
    }
}

impl Drop for Outage<'_> {
    /// Closes the breaker for this worker: it succeeded, or it stops.
    fn drop(&mut self) {
        self.set_probing(false);
        self.breaker
            .outages
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// How often held messages get an in-progress ack: a third of `ack_wait`, so two may be late.
pub(super) fn keep_alive_interval(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(Duration::from_millis(50))
}

/// Sends an in-progress ack for each message: the broker restarts its `ack_wait` without
/// counting a delivery.
pub(super) async fn progress(held: &[&jetstream::Message]) {
    for message in held {
        if let Err(e) = message.ack_with(AckKind::Progress).await {
            tracing::debug!(error = %e, "an in-progress ack failed");
        }
    }
}

/// Whether a database error is the group's infrastructure failing (the file, the disk, a lock)
/// rather than something about one event.
pub(super) fn is_store_fault(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        error.sqlite_error_code(),
        Some(
            DatabaseBusy
                | DatabaseLocked
                | DiskFull
                | ReadOnly
                | SystemIoFailure
                | CannotOpen
                | OutOfMemory
                | FileLockingProtocolFailed
        )
    )
}

tokio::task_local! {
    /// Where the running handler's store faults are noted.
    pub(super) static STORE_FAULT: Arc<Mutex<Option<String>>>;
}

/// Notes `error` as the group's infrastructure failing when it is one and a guarded handler is
/// running; called where a handler's database errors become `Failure`s. Busy and locked are not
/// noted: the round holds the group's file's write lock (`BEGIN IMMEDIATE`) while its handlers
/// run, so such an error comes from another connection of the handler's own (another file, or
/// the same file opened beside the group's), and is that event's failure, retried and counted
/// like any other; taken as the group's, it halted every topic of the group for good.
pub(crate) fn note_store_error(error: &rusqlite::Error) {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    let own_connection = matches!(
        error.sqlite_error_code(),
        Some(DatabaseBusy | DatabaseLocked)
    );
    if is_store_fault(error) && !own_connection {
        let _ = STORE_FAULT.try_with(|fault| {
            if let Ok(mut fault) = fault.lock() {
                fault.get_or_insert_with(|| error.to_string());
            }
        });
    }
}
