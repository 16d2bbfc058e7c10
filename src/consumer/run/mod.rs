//! Running a group: its setup and lease loop, each consumer's worker, the rounds a batch is
//! handled in, the orders held back for a retry or a takeover, the guards around the handler,
//! and the group's background tasks (pruning, dead-lettering what the broker gave up on).

pub(in crate::consumer) mod attempts;
pub(in crate::consumer) mod exhausted;
pub(in crate::consumer) mod gaps;
pub(in crate::consumer) mod group;
pub(in crate::consumer) mod guard;
pub(in crate::consumer) mod held;
pub(in crate::consumer) mod parking;
pub(in crate::consumer) mod prune;
pub(in crate::consumer) mod rewind;
pub(in crate::consumer) mod rounds;
pub(in crate::consumer) mod trace;
pub(in crate::consumer) mod worker;
