//! One JetStream stream per topic: the config the topic table implies, and bringing a server in
//! line with it.
//!
//! A topic's stream captures `<topic>.*` (one token: the key) and its subject transform stores each
//! message as `<topic>.<partition>.<key>`, the partition being a hash of the key over the topic's
//! Kafka partition count. Consumers then take a whole topic with `<topic>.>`, one partition with
//! `<topic>.<p>.>` and one key with `<topic>.*.<key>`; a filter `<topic>.*` matches nothing stored.
//!
//! [`reconcile`] creates missing streams and updates the settings JetStream lets a live stream
//! change. It never deletes a stream or a message on its own account and never changes what the
//! server refuses to change in place (storage type, retention policy, ...): that drift is reported
//! for an operator. Lowering a topic's retention does shorten `max_age`, and the server then
//! expires the older messages: that is the table asking for it. Where the table asks for more than
//! the server can give (replicas beyond the cluster, a duplicate window longer than the retention)
//! the value is clamped, and every clamp is returned and logged, never silent.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_nats::ServerInfo;
use async_nats::jetstream::context::{CreateStreamError, GetStreamError, GetStreamErrorKind};
use async_nats::jetstream::stream::{
    self, DiscardPolicy, PersistenceMode, RetentionPolicy, StorageType, SubjectTransform,
};
use async_nats::jetstream::{self, ErrorCode};

use super::topics::{TopicSpec, Topics, format_retention};
use crate::table::{Column, Table};

/// The deduplication window used when configuration does not choose one (the server's default).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60);

/// JetStream keeps at most this many replicas of a stream, whatever the cluster size.
pub const MAX_REPLICAS: usize = 5;

/// Metadata keys carrying the topic table's row on each stream.
const METADATA_TOPIC: &str = "topic";
const METADATA_PARTITIONS: &str = "partitions";
const METADATA_REPLICATION: &str = "replication";
const METADATA_RETENTION: &str = "retention";

/// How many servers can hold a replica, as far as the connected server tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSize {
    /// Number of servers; 1 for a standalone server.
    pub servers: usize,
    /// Where the number comes from, quoted in clamp reports.
    pub source: String,
}

impl ClusterSize {
    /// Reads the cluster size from the server's INFO. A standalone server (no cluster name) holds
    /// exactly one replica: it refuses more with error 10074. A clustered server is taken to have
    /// as many servers as it advertises client URLs for; a cluster that advertises none
    /// (`no_advertise`) counts as one, which under-replicates rather than failing.
    pub fn from_server_info(info: &ServerInfo) -> ClusterSize {
        match &info.cluster {
            None => ClusterSize {
                servers: 1,
                source: "standalone server".into(),
            },
            Some(name) => {
                let mut urls = info.connect_urls.clone();
                urls.sort();
                urls.dedup();
                let servers = urls.len().max(1);
                ClusterSize {
                    servers,
                    source: format!("cluster {name:?} advertises {servers} server(s)"),
                }
            }
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

/// How a drift can be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    /// The stream is missing; reconcile creates it.
    Create,
    /// JetStream allows changing this on a live stream; reconcile updates it.
    Update,
    /// The server cannot change this in place (or must not, to keep data): an operator decides.
    Manual,
}

impl fmt::Display for Fix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fix::Create => "create",
            Fix::Update => "update",
            Fix::Manual => "manual",
        })
    }
}

/// A difference between a stream on the server and the stream the table asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// Stream name.
    pub stream: String,
    /// Stream config field, or `stream` when the whole stream is missing.
    pub field: &'static str,
    /// What the table asks for.
    pub expected: String,
    /// What the server has.
    pub actual: String,
    /// Whether reconcile can resolve it.
    pub fix: Fix,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: expected {}, found {} ({})",
            self.stream, self.field, self.expected, self.actual, self.fix
        )
    }
}

/// Compares a stream's live config with the planned one.
///
/// Fields that JetStream refuses to change on a live stream are [`Fix::Manual`]: storage type,
/// retention policy, async persistence (a PubAck before the write is stored breaks the outbox's
/// reliance on PubAcks), a sealed stream, and replicas on a server that cannot replicate.
pub fn compare(plan: &StreamPlan, actual: &stream::Config, cluster: &ClusterSize) -> Vec<Drift> {
    let expected = &plan.config;
    let stream = expected.name.clone();
    let mut drifts = Vec::new();
    let mut drift = |field: &'static str, expected: String, actual: String, fix: Fix| {
        drifts.push(Drift {
            stream: stream.clone(),
            field,
            expected,
            actual,
            fix,
        })
    };

    if actual.storage != expected.storage {
        drift(
            "storage",
            format!("{:?}", expected.storage),
            format!("{:?}", actual.storage),
            Fix::Manual,
        );
    }
    if actual.retention != expected.retention {
        drift(
            "retention",
            format!("{:?}", expected.retention),
            format!("{:?}", actual.retention),
            Fix::Manual,
        );
    }
    if actual.persist_mode == Some(PersistenceMode::Async) {
        drift(
            "persist_mode",
            "default".into(),
            "async".into(),
            Fix::Manual,
        );
    }
    if actual.sealed {
        drift("sealed", "false".into(), "true".into(), Fix::Manual);
    }
    if actual.num_replicas != expected.num_replicas {
        // Only a clustered server can move a stream between replica counts.
        let fix = if cluster.servers > 1 {
            Fix::Update
        } else {
            Fix::Manual
        };
        drift(
            "num_replicas",
            expected.num_replicas.to_string(),
            actual.num_replicas.to_string(),
            fix,
        );
    }
    let mut actual_subjects = actual.subjects.clone();
    actual_subjects.sort();
    if actual_subjects != expected.subjects {
        drift(
            "subjects",
            expected.subjects.join(","),
            actual.subjects.join(","),
            Fix::Update,
        );
    }
    if actual.subject_transform != expected.subject_transform {
        drift(
            "subject_transform",
            format_transform(expected.subject_transform.as_ref()),
            format_transform(actual.subject_transform.as_ref()),
            Fix::Update,
        );
    }
    if actual.discard != expected.discard {
        drift(
            "discard",
            format!("{:?}", expected.discard),
            format!("{:?}", actual.discard),
            Fix::Update,
        );
    }
    if actual.max_age != expected.max_age {
        drift(
            "max_age",
            format_duration(expected.max_age),
            format_duration(actual.max_age),
            Fix::Update,
        );
    }
    if actual.duplicate_window != expected.duplicate_window {
        drift(
            "duplicate_window",
            format_duration(expected.duplicate_window),
            format_duration(actual.duplicate_window),
            Fix::Update,
        );
    }
    if actual.description != expected.description {
        drift(
            "description",
            expected.description.clone().unwrap_or_default(),
            actual.description.clone().unwrap_or_default(),
            Fix::Update,
        );
    }
    // The server adds its own `_nats.*` keys; only ours are compared.
    let mut keys: Vec<&String> = expected.metadata.keys().collect();
    keys.sort();
    for key in keys {
        let want = &expected.metadata[key];
        let have = actual.metadata.get(key);
        if have != Some(want) {
            drift(
                "metadata",
                format!("{key}={want}"),
                have.map_or_else(|| format!("no {key}"), |have| format!("{key}={have}")),
                Fix::Update,
            );
        }
    }
    drifts
}

/// The live config with every [`Fix::Update`] drift set to the planned value. Everything else,
/// including settings an operator added that the table does not manage, is kept as it is.
pub fn updated_config(
    plan: &StreamPlan,
    actual: &stream::Config,
    drifts: &[Drift],
) -> stream::Config {
    let expected = &plan.config;
    let mut config = actual.clone();
    for drift in drifts.iter().filter(|drift| drift.fix == Fix::Update) {
        match drift.field {
            "num_replicas" => config.num_replicas = expected.num_replicas,
            "subjects" => config.subjects = expected.subjects.clone(),
            "subject_transform" => config.subject_transform = expected.subject_transform.clone(),
            "discard" => config.discard = expected.discard,
            "max_age" => config.max_age = expected.max_age,
            "duplicate_window" => config.duplicate_window = expected.duplicate_window,
            "description" => config.description = expected.description.clone(),
            "metadata" => config.metadata.extend(expected.metadata.clone()),
            _ => {}
        }
    }
    config
}

/// What [`reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Streams created.
    pub created: Vec<String>,
    /// Changes applied to existing streams, one entry per field.
    pub updated: Vec<Drift>,
    /// Streams that already matched the table.
    pub unchanged: Vec<String>,
    /// Drift left in place for an operator.
    pub manual: Vec<Drift>,
    /// Values clamped to what the server can hold.
    pub clamps: Vec<Clamp>,
}

impl ReconcileReport {
    /// True when no stream was created or updated.
    pub fn changed_nothing(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty()
    }
}

impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "created {}, updated {}, unchanged {}, manual drift {}, clamped {}",
            self.created.len(),
            self.updated
                .iter()
                .map(|drift| drift.stream.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            self.unchanged.len(),
            self.manual.len(),
            self.clamps.len()
        )?;
        for stream in &self.created {
            writeln!(f, "  created {stream}")?;
        }
        for drift in &self.updated {
            writeln!(f, "  updated {drift}")?;
        }
        for drift in &self.manual {
            writeln!(f, "  left    {drift}")?;
        }
        for clamp in &self.clamps {
            writeln!(f, "  clamped {clamp}")?;
        }
        Ok(())
    }
}

/// Why talking to JetStream about streams failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    /// Asking for a stream's info failed (not counting "no such stream").
    #[error("cannot read stream {stream}: {source}")]
    Read {
        /// Stream name.
        stream: String,
        /// The client's error.
        source: GetStreamError,
    },
    /// The server refused to create a stream.
    #[error("cannot create stream {stream}: {source}")]
    Create {
        /// Stream name.
        stream: String,
        /// The client's error.
        source: CreateStreamError,
    },
    /// The server refused to update a stream.
    #[error("cannot update stream {stream}: {source}")]
    Update {
        /// Stream name.
        stream: String,
        /// The client's error.
        source: CreateStreamError,
    },
}

/// Brings the server's streams in line with the table: creates the missing ones, updates what
/// JetStream allows to update, reports the rest. Never deletes a stream.
pub async fn reconcile(
    js: &jetstream::Context,
    topics: &Topics,
    duplicate_window: Duration,
) -> Result<ReconcileReport, StreamsError> {
    let cluster = ClusterSize::from_server_info(&js.client().server_info());
    let mut report = ReconcileReport::default();
    for plan in stream_configs(topics, duplicate_window, &cluster) {
        warn_clamps(&plan.clamps);
        report.clamps.extend(plan.clamps.iter().cloned());
        let name = plan.config.name.clone();
        match live_config(js, &name).await? {
            None => {
                js.create_stream(plan.config.clone())
                    .await
                    .map_err(|source| StreamsError::Create {
                        stream: name.clone(),
                        source,
                    })?;
                tracing::info!(stream = %name, topic = %plan.topic.name, "created stream");
                report.created.push(name);
            }
            Some(actual) => {
                let drifts = compare(&plan, &actual, &cluster);
                let (updates, manual): (Vec<Drift>, Vec<Drift>) = drifts
                    .into_iter()
                    .partition(|drift| drift.fix == Fix::Update);
                for drift in &manual {
                    tracing::warn!(%drift, "stream drift left in place: the server cannot change it");
                }
                if updates.is_empty() {
                    report.unchanged.push(name);
                } else {
                    let config = updated_config(&plan, &actual, &updates);
                    js.update_stream(&config)
                        .await
                        .map_err(|source| StreamsError::Update {
                            stream: name.clone(),
                            source,
                        })?;
                    for drift in &updates {
                        tracing::info!(%drift, "updated stream");
                    }
                    report.updated.extend(updates);
                }
                report.manual.extend(manual);
            }
        }
    }
    Ok(report)
}

/// Every difference between the server and the table, changing nothing. Clamps are logged, and
/// a missing stream is one [`Fix::Create`] drift.
pub async fn diff(
    js: &jetstream::Context,
    topics: &Topics,
    duplicate_window: Duration,
) -> Result<Vec<Drift>, StreamsError> {
    let cluster = ClusterSize::from_server_info(&js.client().server_info());
    let mut drifts = Vec::new();
    for plan in stream_configs(topics, duplicate_window, &cluster) {
        warn_clamps(&plan.clamps);
        match live_config(js, &plan.config.name).await? {
            None => drifts.push(Drift {
                stream: plan.config.name.clone(),
                field: "stream",
                expected: "present".into(),
                actual: "missing".into(),
                fix: Fix::Create,
            }),
            Some(actual) => drifts.extend(compare(&plan, &actual, &cluster)),
        }
    }
    Ok(drifts)
}

/// One topic's stream as the server has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRow {
    /// Stream name.
    pub stream: String,
    /// Topic name.
    pub topic: String,
    /// Replication the table asks for (before clamping).
    pub replicas_wanted: u32,
    /// Retention the table asks for.
    pub retention: Duration,
    /// The stream on the server, or `None` when it does not exist.
    pub live: Option<LiveStream>,
}

/// The server's side of a [`StreamRow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStream {
    /// Subjects the stream captures.
    pub subjects: Vec<String>,
    /// Replicas configured.
    pub replicas: usize,
    /// Configured `max_age`.
    pub max_age: Duration,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
}

/// The table's streams as they are on the server, in table order.
pub async fn list(
    js: &jetstream::Context,
    topics: &Topics,
) -> Result<Vec<StreamRow>, StreamsError> {
    let mut rows = Vec::with_capacity(topics.len());
    for topic in topics {
        let name = topic.stream_name();
        let live = live_info(js, &name).await?.map(|info| LiveStream {
            subjects: info.config.subjects,
            replicas: info.config.num_replicas,
            max_age: info.config.max_age,
            messages: info.state.messages,
            bytes: info.state.bytes,
        });
        rows.push(StreamRow {
            stream: name,
            topic: topic.name.clone(),
            replicas_wanted: topic.replication,
            retention: topic.retention,
            live,
        });
    }
    Ok(rows)
}

/// Renders [`list`]'s rows as an aligned text table.
pub fn format_stream_table(rows: &[StreamRow]) -> String {
    let mut table = Table::new(
        "  ",
        [
            "STREAM",
            "SUBJECTS",
            "REPLICAS",
            "RETENTION",
            "MESSAGES",
            "BYTES",
        ]
        .map(Column::left),
    );
    for row in rows {
        table.row(match &row.live {
            None => vec![
                row.stream.clone(),
                "(missing)".into(),
                format!("{}/-", row.replicas_wanted),
                format_retention(row.retention),
                "-".into(),
                "-".into(),
            ],
            Some(live) => vec![
                row.stream.clone(),
                live.subjects.join(","),
                format!("{}/{}", row.replicas_wanted, live.replicas),
                format_retention(live.max_age),
                live.messages.to_string(),
                live.bytes.to_string(),
            ],
        });
    }
    table.render()
}

/// Renders [`diff`]'s drifts as an aligned text table.
pub fn format_drift_table(drifts: &[Drift]) -> String {
    let mut table = Table::new(
        "  ",
        ["STREAM", "FIELD", "EXPECTED", "ACTUAL", "FIX"].map(Column::left),
    );
    for drift in drifts {
        table.row(vec![
            drift.stream.clone(),
            drift.field.to_string(),
            drift.expected.clone(),
            drift.actual.clone(),
            drift.fix.to_string(),
        ]);
    }
    table.render()
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

fn warn_clamps(clamps: &[Clamp]) {
    for clamp in clamps {
        tracing::warn!(%clamp, "stream setting clamped");
    }
}

async fn live_info(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Info>, StreamsError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().clone())),
        Err(error) => match error.kind() {
            GetStreamErrorKind::JetStream(api)
                if api.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(StreamsError::Read {
                stream: name.to_string(),
                source: error,
            }),
        },
    }
}

async fn live_config(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Config>, StreamsError> {
    Ok(live_info(js, name).await?.map(|info| info.config))
}

fn format_transform(transform: Option<&SubjectTransform>) -> String {
    transform.map_or_else(
        || "none".into(),
        |transform| format!("{} -> {}", transform.source, transform.destination),
    )
}

fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, partitions: u32, replication: u32, retention: Duration) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions,
            replication,
            retention,
        }
    }

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * 86_400)
    }

    fn cluster(servers: usize) -> ClusterSize {
        ClusterSize {
            servers,
            source: format!("test cluster of {servers}"),
        }
    }

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

        let clustered = ServerInfo {
            cluster: Some("east".into()),
            connect_urls: vec![
                "10.0.0.1:4222".into(),
                "10.0.0.2:4222".into(),
                "10.0.0.3:4222".into(),
                "10.0.0.3:4222".into(),
            ],
            ..Default::default()
        };
        let size = ClusterSize::from_server_info(&clustered);
        assert_eq!(size.servers, 3);
        assert!(size.source.contains("east"));

        let unadvertised = ServerInfo {
            cluster: Some("east".into()),
            ..Default::default()
        };
        assert_eq!(ClusterSize::from_server_info(&unadvertised).servers, 1);
    }

    #[test]
    fn matching_config_has_no_drift_even_with_server_metadata() {
        let plan = stream_config(
            &topic("order.created", 3, 2, days(7)),
            DEFAULT_DUPLICATE_WINDOW,
            &cluster(1),
        );
        let mut live = plan.config.clone();
        live.metadata.insert("_nats.req.level".into(), "0".into());
        assert_eq!(compare(&plan, &live, &cluster(1)), vec![]);
    }

    #[test]
    fn updatable_and_manual_drift_are_told_apart() {
        let plan = stream_config(
            &topic("order.created", 3, 1, days(7)),
            DEFAULT_DUPLICATE_WINDOW,
            &cluster(1),
        );
        let mut live = plan.config.clone();
        live.storage = StorageType::Memory;
        live.retention = RetentionPolicy::Interest;
        live.max_age = days(1);
        live.duplicate_window = Duration::from_secs(60);
        live.subject_transform = None;
        live.metadata.insert("partitions".into(), "2".into());
        live.metadata.insert("operator".into(), "kept".into());
        live.max_bytes = 1 << 30;

        let drifts = compare(&plan, &live, &cluster(1));
        let fields = |fix: Fix| -> Vec<&str> {
            drifts
                .iter()
                .filter(|drift| drift.fix == fix)
                .map(|drift| drift.field)
                .collect()
        };
        assert_eq!(fields(Fix::Manual), vec!["storage", "retention"]);
        assert_eq!(
            fields(Fix::Update),
            vec![
                "subject_transform",
                "max_age",
                "duplicate_window",
                "metadata"
            ]
        );

        let updated = updated_config(&plan, &live, &drifts);
        assert_eq!(updated.max_age, days(7));
        assert_eq!(updated.duplicate_window, DEFAULT_DUPLICATE_WINDOW);
        assert_eq!(updated.subject_transform, plan.config.subject_transform);
        assert_eq!(updated.metadata["partitions"], "3");
        // Manual drift and settings the table does not manage are left alone.
        assert_eq!(updated.storage, StorageType::Memory);
        assert_eq!(updated.retention, RetentionPolicy::Interest);
        assert_eq!(updated.metadata["operator"], "kept");
        assert_eq!(updated.max_bytes, 1 << 30);
    }

    #[test]
    fn replicas_drift_is_manual_on_a_single_server_and_updatable_in_a_cluster() {
        let plan = stream_config(
            &topic("order.created", 3, 3, days(7)),
            DEFAULT_DUPLICATE_WINDOW,
            &cluster(3),
        );
        let mut live = plan.config.clone();
        live.num_replicas = 1;
        let in_cluster = compare(&plan, &live, &cluster(3));
        assert_eq!(in_cluster.len(), 1);
        assert_eq!(
            (in_cluster[0].field, in_cluster[0].fix),
            ("num_replicas", Fix::Update)
        );

        let alone = compare(&plan, &live, &cluster(1));
        assert_eq!(
            (alone[0].field, alone[0].fix),
            ("num_replicas", Fix::Manual)
        );
    }

    #[test]
    fn async_persistence_is_reported_for_an_operator() {
        let plan = stream_config(
            &topic("order.created", 3, 1, days(7)),
            DEFAULT_DUPLICATE_WINDOW,
            &cluster(1),
        );
        let mut live = plan.config.clone();
        live.persist_mode = Some(PersistenceMode::Async);
        let drifts = compare(&plan, &live, &cluster(1));
        assert_eq!(drifts.len(), 1);
        assert_eq!(
            (drifts[0].field, drifts[0].fix),
            ("persist_mode", Fix::Manual)
        );
    }

    #[test]
    fn tables_are_aligned() {
        let rows = vec![
            StreamRow {
                stream: "ORDER_CREATED".into(),
                topic: "order.created".into(),
                replicas_wanted: 2,
                retention: days(7),
                live: Some(LiveStream {
                    subjects: vec!["order.created.*".into()],
                    replicas: 1,
                    max_age: days(7),
                    messages: 12,
                    bytes: 3456,
                }),
            },
            StreamRow {
                stream: "ORDER_AUDIT".into(),
                topic: "order.audit".into(),
                replicas_wanted: 3,
                retention: days(90),
                live: None,
            },
        ];
        let table = format_stream_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("STREAM         SUBJECTS"));
        assert!(lines[1].contains("order.created.*  2/1"));
        assert!(lines[1].ends_with("12        3456"));
        assert!(lines[2].contains("(missing)"));

        let drifts = vec![Drift {
            stream: "ORDER_AUDIT".into(),
            field: "stream",
            expected: "present".into(),
            actual: "missing".into(),
            fix: Fix::Create,
        }];
        assert!(
            format_drift_table(&drifts)
                .lines()
                .nth(1)
                .unwrap()
                .ends_with("create")
        );
    }
}
