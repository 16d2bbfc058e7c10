//! Bringing a server's streams in line with the topic table ([`reconcile`]), or only telling how
//! they differ ([`diff`]).

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind,
};
use async_nats::jetstream::stream;
use async_nats::jetstream::{self, ErrorCode};

use super::drift::{Drift, Fix, compare, updated_config};
use super::plan::{Clamp, ClusterSize, stream_configs};
use crate::bus::topics::Topics;

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
                placed(
                    plan.config.clone(),
                    &cluster,
                    &mut report.clamps,
                    |config| js.create_stream(config),
                )
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
                    let replicas =
                        placed(config, &cluster, &mut report.clamps, |config| async move {
                            js.update_stream(&config).await
                        })
                        .await
                        .map_err(|source| StreamsError::Update {
                            stream: name.clone(),
                            source,
                        })?;
                    // Placement may have kept the replicas the stream had: that is a clamp,
                    // not an update.
                    let mut updates = updates;
                    updates.retain(|drift| {
                        drift.field != "num_replicas" || replicas != actual.num_replicas
                    });
                    for drift in &updates {
                        tracing::info!(%drift, "updated stream");
                    }
                    if updates.is_empty() {
                        report.unchanged.push(name);
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

/// Creates or updates a stream with `config` through `apply`. Where the cluster cannot place that
/// many replicas (JetStream error 10005, "no suitable peers for placement": it has fewer
/// JetStream servers) it tries again with one replica fewer, down to one; the replicas it settled
/// on are a clamp, logged and added to `clamps`. Returns the replicas the stream got.
async fn placed<F, T>(
    mut config: stream::Config,
    cluster: &ClusterSize,
    clamps: &mut Vec<Clamp>,
    apply: impl Fn(stream::Config) -> F,
) -> Result<usize, CreateStreamError>
where
    F: Future<Output = Result<T, CreateStreamError>>,
{
    let wanted = config.num_replicas;
    loop {
        match apply(config.clone()).await {
            Ok(_) => break,
            Err(error) if config.num_replicas > 1 && no_suitable_peers(&error) => {
                config.num_replicas -= 1;
            }
            Err(error) => return Err(error),
        }
    }
    if config.num_replicas != wanted {
        let clamp = Clamp {
            stream: config.name.clone(),
            setting: "num_replicas",
            wanted: wanted.to_string(),
            applied: config.num_replicas.to_string(),
            reason: format!(
                "{}: no suitable peers for {} replicas (JetStream error 10005)",
                cluster.source,
                config.num_replicas + 1
            ),
        };
        warn_clamps(std::slice::from_ref(&clamp));
        clamps.push(clamp);
    }
    Ok(config.num_replicas)
}

/// The cluster has fewer JetStream servers than the stream's replicas.
fn no_suitable_peers(error: &CreateStreamError) -> bool {
    matches!(error.kind(), CreateStreamErrorKind::JetStream(api)
        if api.error_code() == ErrorCode::CLUSTER_NO_PEERS)
}

fn warn_clamps(clamps: &[Clamp]) {
    for clamp in clamps {
        tracing::warn!(%clamp, "stream setting clamped");
    }
}

/// A stream's info, `None` when the server has no such stream.
pub(super) async fn live_info(
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
