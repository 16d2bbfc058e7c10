//! One JetStream stream per topic: the config the topic table implies, and bringing a server in
//! line with it.
//!
//! A topic's stream captures `<topic>.*` (one token: the key) and its subject transform stores each
//! message as `<topic>.<partition>.<key>`, the partition being a hash of the key over the topic's
//! Kafka partition count. Consumers then take a whole topic with `<topic>.>`, one partition with
//! `<topic>.<p>.>` and one key with `<topic>.*.<key>`; a filter `<topic>.*` matches nothing stored.
//!
//! [`reconcile`](fn@reconcile) creates missing streams and updates the settings JetStream lets a
//! live stream change. It never deletes a stream or a message on its own account and never changes
//! what the server refuses to change in place (storage type, retention policy, ...): that drift is
//! reported for an operator. Lowering a topic's retention does shorten `max_age`, and the server
//! then expires the older messages: that is the table asking for it. Where the table asks for more
//! than the server can give (replicas beyond the cluster, a duplicate window longer than the
//! retention) the value is clamped, and every clamp is returned and logged, never silent.
//!
//! Its parts, re-exported here:
//! - `plan`: the stream config a topic row implies, and the clamps that shaped it.
//! - `drift`: how a live stream differs from its plan, and what may be updated in place.
//! - `reconcile`: bringing a server in line with the table, or only diffing it.
//! - `list`: the table's streams as the server has them, and the CLI's text tables.

mod drift;
mod list;
mod plan;
mod reconcile;

pub use drift::{Drift, Fix, compare, updated_config};
pub use list::{LiveStream, StreamRow, format_drift_table, format_stream_table, list};
pub use plan::{
    Clamp, ClusterSize, DEFAULT_DUPLICATE_WINDOW, MAX_REPLICAS, StreamPlan, stream_config,
    stream_configs,
};
pub use reconcile::{ReconcileReport, StreamsError, diff, reconcile};

/// Rows and cluster sizes shared by the unit tests of the stream modules.
#[cfg(test)]
mod fixtures {
    use std::time::Duration;

    use super::ClusterSize;
    use crate::bus::TopicSpec;

    pub(super) fn topic(
        name: &str,
        partitions: u32,
        replication: u32,
        retention: Duration,
    ) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions,
            replication,
            retention,
        }
    }

    pub(super) fn days(n: u64) -> Duration {
        Duration::from_secs(n * 86_400)
    }

    pub(super) fn cluster(servers: usize) -> ClusterSize {
        ClusterSize {
            servers,
            source: format!("test cluster of {servers}"),
        }
    }
}
