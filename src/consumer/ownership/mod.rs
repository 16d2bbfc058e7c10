//! One active process per group and partition: the lease (`owner`), and the fence (`fence`)
//! that keeps a process that lost it from committing. The lease's timing is here, where both
//! read it.

use std::time::Duration;

pub(in crate::consumer) mod fence;
pub(in crate::consumer) mod owner;

/// How long a lease lasts without renewal: a standby takes over within about this long after the
/// active process dies. One for every group, because it is the bucket's `max_age`.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often the lease is renewed.
pub(in crate::consumer) const RENEW_EVERY: Duration =
    Duration::from_millis(LEASE.as_millis() as u64 / 4);
/// How long after a renewal was sent the lease is surely still held: a lease's last quarter is
/// left to a pause between the check and the COMMIT. One renewal may fail without a round
/// noticing.
pub(in crate::consumer) const SURELY_HELD: Duration =
    Duration::from_millis(LEASE.as_millis() as u64 * 3 / 4);
