//! The stream config a topic row implies: subjects, transform, storage, limits, metadata, and
//! the replicas and duplicate window clamped to what the server can hold.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_nats::ServerInfo;
use async_nats::jetstream::stream::{
    self, DiscardPolicy, RetentionPolicy, StorageType, SubjectTransform,
};

use crate::bus::topics::{TopicSpec, Topics, format_retention};

/// The deduplication window used when configuration does not choose one (the server's default).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60);

/// JetStream keeps at most this many replicas of a stream, whatever the cluster size.
pub const MAX_REPLICAS: usize = 5;

/// Metadata keys carrying the topic table's row on each stream.
const METADATA_TOPIC: &str = "topic";
const METADATA_PARTITIONS: &str = "partitions";
const METADATA_REPLICATION: &str = "replication";
const METADATA_RETENTION: &str = "retention";

/// How many servers can hold a replica, as far as the connected server tells before any stream
/// is placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSize {
    /// Upper bound on the replicas a stream can have: 1 for a standalone server,
    /// [`MAX_REPLICAS`] for a cluster, whose placement then decides (see
    /// [`from_server_info`](Self::from_server_info)).
    pub servers: usize,
    /// Where the number comes from, quoted in clamp reports.
    pub source: String,
}

impl ClusterSize {
    /// Reads the cluster size from the server's INFO. A standalone server (no cluster name) holds
    /// exactly one replica: it refuses more with error 10074.
    ///
    /// For a clustered server nothing a client may ask counts the JetStream servers: INFO's
    /// advertised client URLs are empty under `no_advertise`, count servers without JetStream,
    /// and are incomplete while routes form; `$JS.API.INFO` names no peers; the meta group's
    /// peers are only in the system account (`/jsz`, `$SYS`). The meta leader's placement does
    /// know them, offline ones included: it refuses a stream with more replicas than the cluster
    /// has JetStream servers with error 10005 ("no suitable peers for placement", checked on
    /// 2.15.1). So a cluster is planned at the table's replicas (up to [`MAX_REPLICAS`]) and
    /// reconcile steps down one replica per refusal, reporting each clamp.
    pub fn from_server_info(info: &ServerInfo) -> ClusterSize {
        match &info.cluster {
            None => ClusterSize::standalone(),
            Some(name) => ClusterSize {
                servers: MAX_REPLICAS,
                source: format!("cluster {name:?}"),
            },
        }
    }

    /// A standalone server, for callers that know there is no cluster.
    pub fn standalone() -> ClusterSize {
        ClusterSize {
            servers: 1,
            source: "standalone server".into(),
        }
    }
}

/// A setting that could not take the table's value, and the value it got instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clamp {
    /// Stream name.
    pub stream: String,
    /// Stream config field, e.g. `num_replicas`.
    pub setting: &'static str,
    /// What the table or the caller asked for.
    pub wanted: String,
    /// What the stream is configured with.
    pub applied: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Clamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: wanted {}, using {} ({})",
            self.stream, self.setting, self.wanted, self.applied, self.reason
        )
    }
}

/// The stream config for one topic, with the clamps that shaped it.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// The topic the stream holds.
    pub topic: TopicSpec,
    /// The config to create the stream with.
    pub config: stream::Config,
    /// Values that differ from what was asked for.
    pub clamps: Vec<Clamp>,
}

/// Builds the stream config for a topic, as DESIGN.md "Streams" prescribes: subjects
/// `<topic>.*`, transform to `<topic>.{{partition(N,1)}}.{{wildcard(1)}}`, file storage, limits
/// retention, discard old, `max_age` = retention, the duplicate window (at most `max_age`), the
/// table row as metadata and the replication clamped to the cluster.
pub fn stream_config(
    topic: &TopicSpec,
    duplicate_window: Duration,
    cluster: &ClusterSize,
) -> StreamPlan {
    let name = topic.stream_name();
    let mut clamps = Vec::new();

    let wanted_replicas = topic.replication as usize;
    let replicas = wanted_replicas.clamp(1, cluster.servers.clamp(1, MAX_REPLICAS));
    if replicas != wanted_replicas {
        let reason = if wanted_replicas > MAX_REPLICAS && cluster.servers >= MAX_REPLICAS {
            format!("JetStream keeps at most {MAX_REPLICAS} replicas")
        } else {
            format!("{}: at most {} replica(s)", cluster.source, cluster.servers)
        };
        clamps.push(Clamp {
            stream: name.clone(),
            setting: "num_replicas",
            wanted: wanted_replicas.to_string(),
            applied: replicas.to_string(),
            reason,
        });
    }

    let mut window = duplicate_window;
    if window.is_zero() {
        // Zero is not sent at all, and the server would pick its own default.
        window = DEFAULT_DUPLICATE_WINDOW;
        clamps.push(Clamp {
            stream: name.clone(),
            setting: "duplicate_window",
            wanted: "0s".into(),
            applied: format_duration(window),
            reason: "a zero window is the server default; using it explicitly".into(),
        });
    }
    if window > topic.retention {
        clamps.push(Clamp {
            stream: name.clone(),
            setting: "duplicate_window",
            wanted: format_duration(window),
            applied: format_duration(topic.retention),
            reason: "the server refuses a duplicate window longer than max_age".into(),
        });
        window = topic.retention;
    }

    let config = stream::Config {
        name,
        description: Some(format!("order-service topic {}", topic.name)),
        subjects: vec![format!("{}.*", topic.name)],
        subject_transform: Some(SubjectTransform {
            source: format!("{}.*", topic.name),
            destination: format!(
                "{}.{{{{partition({},1)}}}}.{{{{wildcard(1)}}}}",
                topic.name, topic.partitions
            ),
        }),
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: topic.retention,
        duplicate_window: window,
        num_replicas: replicas,
        // The relay publishes each stream's events as atomic batches: one fsync per batch.
        allow_atomic_publish: true,
        metadata: table_metadata(topic),
        ..Default::default()
    };
    StreamPlan {
        topic: topic.clone(),
        config,
        clamps,
    }
}

/// Stream configs for a whole table, in table order.
pub fn stream_configs(
    topics: &Topics,
    duplicate_window: Duration,
    cluster: &ClusterSize,
) -> Vec<StreamPlan> {
    topics
        .iter()
        .map(|topic| stream_config(topic, duplicate_window, cluster))
        .collect()
}

fn table_metadata(topic: &TopicSpec) -> HashMap<String, String> {
    HashMap::from([
        (METADATA_TOPIC.to_string(), topic.name.clone()),
        (
            METADATA_PARTITIONS.to_string(),
            topic.partitions.to_string(),
        ),
        (
            METADATA_REPLICATION.to_string(),
            topic.replication.to_string(),
        ),
        (
            METADATA_RETENTION.to_string(),
            format_retention(topic.retention),
        ),
    ])
}

/// A duration as the tables and reports write it, e.g. `2m` or `7days`.
pub(super) fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::streams::fixtures::{cluster, days, topic};

    #[test]
    fn config_follows_the_design() {
        let created = topic("order.created", 3, 2, days(7));
        let plan = stream_config(&created, DEFAULT_DUPLICATE_WINDOW, &cluster(3));
        let config = &plan.config;
        assert_eq!(config.name, "ORDER_CREATED");
        assert_eq!(config.subjects, vec!["order.created.*"]);
        assert_eq!(
            config.subject_transform,
            Some(SubjectTransform {
                source: "order.created.*".into(),
                destination: "order.created.{{partition(3,1)}}.{{wildcard(1)}}".into(),
            })
        );
        assert_eq!(config.storage, StorageType::File);
        assert_eq!(config.retention, RetentionPolicy::Limits);
        assert_eq!(config.discard, DiscardPolicy::Old);
        assert_eq!(config.max_age, days(7));
        assert_eq!(config.duplicate_window, Duration::from_secs(120));
        assert_eq!(config.num_replicas, 2);
        assert_eq!(config.metadata["topic"], "order.created");
        assert_eq!(config.metadata["partitions"], "3");
        assert_eq!(config.metadata["replication"], "2");
        assert_eq!(config.metadata["retention"], "7d");
        assert!(plan.clamps.is_empty(), "{:?}", plan.clamps);
    }

    #[test]
    fn replicas_are_clamped_to_a_standalone_server_and_reported() {
        let audit = topic("order.audit", 1, 3, days(90));
        let plan = stream_config(&audit, DEFAULT_DUPLICATE_WINDOW, &ClusterSize::standalone());
        assert_eq!(plan.config.num_replicas, 1);
        assert_eq!(
            plan.clamps,
            vec![Clamp {
                stream: "ORDER_AUDIT".into(),
                setting: "num_replicas",
                wanted: "3".into(),
                applied: "1".into(),
                reason: "standalone server: at most 1 replica(s)".into(),
            }]
        );
        // The row keeps the table's replication even though the stream cannot have it.
        assert_eq!(plan.config.metadata["replication"], "3");
    }

    #[test]
    fn replicas_are_clamped_to_the_jetstream_maximum() {
        let wide = topic("order.wide", 1, 7, days(1));
        let plan = stream_config(&wide, DEFAULT_DUPLICATE_WINDOW, &cluster(9));
        assert_eq!(plan.config.num_replicas, 5);
        assert_eq!(plan.clamps.len(), 1);
        assert!(plan.clamps[0].reason.contains("at most 5"));
    }

    #[test]
    fn duplicate_window_never_exceeds_max_age() {
        let short = topic("order.short", 1, 1, Duration::from_secs(3_600));
        let plan = stream_config(&short, Duration::from_secs(2 * 3_600), &cluster(1));
        assert_eq!(plan.config.duplicate_window, Duration::from_secs(3_600));
        assert_eq!(plan.clamps.len(), 1);
        assert_eq!(plan.clamps[0].setting, "duplicate_window");
        assert_eq!(plan.clamps[0].wanted, "2h");
        assert_eq!(plan.clamps[0].applied, "1h");

        let zero = stream_config(&short, Duration::ZERO, &cluster(1));
        assert_eq!(zero.config.duplicate_window, DEFAULT_DUPLICATE_WINDOW);
        assert_eq!(zero.clamps.len(), 1);
    }

    #[test]
    fn partition_count_goes_into_the_transform() {
        let linked = topic("order.chat_linked", 1, 2, days(7));
        let plan = stream_config(&linked, DEFAULT_DUPLICATE_WINDOW, &cluster(1));
        assert_eq!(
            plan.config.subject_transform.unwrap().destination,
            "order.chat_linked.{{partition(1,1)}}.{{wildcard(1)}}"
        );
    }

    #[test]
    fn cluster_size_comes_from_server_info() {
        let standalone = ServerInfo::default();
        assert_eq!(ClusterSize::from_server_info(&standalone).servers, 1);

        // Advertised or not, a cluster is sized by placement, not by what INFO lists.
        for connect_urls in [vec![], vec!["10.0.0.1:4222".to_string()]] {
            let clustered = ServerInfo {
                cluster: Some("east".into()),
                connect_urls,
                ..Default::default()
            };
            let size = ClusterSize::from_server_info(&clustered);
            assert_eq!(size.servers, MAX_REPLICAS);
            assert!(size.source.contains("east"));
            let audit = topic("order.audit", 1, 3, days(90));
            let plan = stream_config(&audit, DEFAULT_DUPLICATE_WINDOW, &size);
            assert_eq!(plan.config.num_replicas, 3);
            assert!(plan.clamps.is_empty(), "{:?}", plan.clamps);
        }
    }
}
