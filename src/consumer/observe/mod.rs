//! What a group shows: its counts and role, Prometheus metrics, `/health` for a subscriber
//! process, and lag for the service's `/ready`.

pub mod health;
#[cfg(feature = "service")]
pub mod lag;
pub mod metrics;
pub(in crate::consumer) mod stats;
