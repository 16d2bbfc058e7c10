//! How a live stream differs from its plan: which settings drifted, and which of them
//! JetStream lets reconcile update in place.

use std::fmt;

use async_nats::jetstream::stream::{self, PersistenceMode, SubjectTransform};

use super::plan::{ClusterSize, StreamPlan, format_duration};

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
    let drift = |field: &'static str, (want, have): (String, String), fix: Fix| Drift {
        stream: expected.name.clone(),
        field,
        expected: want,
        actual: have,
        fix,
    };
    let mut drifts: Vec<Drift> = SETTINGS
        .iter()
        .filter_map(|setting| {
            let sides = (setting.differs)(expected, actual)?;
            Some(drift(setting.field, sides, setting.fix(cluster)))
        })
        .collect();
    // The server adds its own `_nats.*` keys; only ours are compared.
    let mut keys: Vec<&String> = expected.metadata.keys().collect();
    keys.sort();
    for key in keys {
        let want = &expected.metadata[key];
        let have = actual.metadata.get(key);
        if have != Some(want) {
            let have = have.map_or_else(|| format!("no {key}"), |have| format!("{key}={have}"));
            drifts.push(drift(
                "metadata",
                (format!("{key}={want}"), have),
                Fix::Update,
            ));
        }
    }
    drifts
}

/// One compared setting of a stream config.
struct Setting {
    /// The config field, as [`Drift::field`] names it.
    field: &'static str,
    /// How a difference is resolved.
    fix: Fix,
    /// Whether only a cluster can apply an update (a standalone server makes it manual).
    needs_cluster: bool,
    /// The expected and the actual value as text, when they differ.
    differs: fn(&stream::Config, &stream::Config) -> Option<(String, String)>,
}

impl Setting {
    fn fix(&self, cluster: &ClusterSize) -> Fix {
        if self.needs_cluster && cluster.servers <= 1 {
            Fix::Manual
        } else {
            self.fix
        }
    }
}

/// Every single-valued setting [`compare`] checks, in the order drifts are reported.
const SETTINGS: [Setting; 12] = [
    manual("storage", |e, a| unequal(&e.storage, &a.storage, debug)),
    manual("retention", |e, a| {
        unequal(&e.retention, &a.retention, debug)
    }),
    manual("persist_mode", |_, a| {
        (a.persist_mode == Some(PersistenceMode::Async)).then(|| ("default".into(), "async".into()))
    }),
    manual("sealed", |_, a| {
        a.sealed.then(|| ("false".into(), "true".into()))
    }),
    // Only a clustered server can move a stream between replica counts.
    Setting {
        field: "num_replicas",
        fix: Fix::Update,
        needs_cluster: true,
        differs: |e, a| unequal(&e.num_replicas, &a.num_replicas, ToString::to_string),
    },
    update("subjects", |e, a| {
        let mut sorted = a.subjects.clone();
        sorted.sort();
        (sorted != e.subjects).then(|| (e.subjects.join(","), a.subjects.join(",")))
    }),
    update("subject_transform", |e, a| {
        unequal(&e.subject_transform, &a.subject_transform, |t| {
            format_transform(t.as_ref())
        })
    }),
    update("discard", |e, a| unequal(&e.discard, &a.discard, debug)),
    // Without it the relay publishes the stream's events one by one: one fsync each.
    update("allow_atomic", |e, a| {
        unequal(
            &e.allow_atomic_publish,
            &a.allow_atomic_publish,
            ToString::to_string,
        )
    }),
    update("max_age", |e, a| {
        unequal(&e.max_age, &a.max_age, |d| format_duration(*d))
    }),
    update("duplicate_window", |e, a| {
        unequal(&e.duplicate_window, &a.duplicate_window, |d| {
            format_duration(*d)
        })
    }),
    update("description", |e, a| {
        unequal(&e.description, &a.description, |d| {
            d.clone().unwrap_or_default()
        })
    }),
];

const fn manual(
    field: &'static str,
    differs: fn(&stream::Config, &stream::Config) -> Option<(String, String)>,
) -> Setting {
    Setting {
        field,
        fix: Fix::Manual,
        needs_cluster: false,
        differs,
    }
}

const fn update(
    field: &'static str,
    differs: fn(&stream::Config, &stream::Config) -> Option<(String, String)>,
) -> Setting {
    Setting {
        field,
        fix: Fix::Update,
        needs_cluster: false,
        differs,
    }
}

/// Both values written by `show`, when they differ.
fn unequal<T: PartialEq>(
    expected: &T,
    actual: &T,
    show: impl Fn(&T) -> String,
) -> Option<(String, String)> {
    (expected != actual).then(|| (show(expected), show(actual)))
}

fn debug<T: fmt::Debug>(value: &T) -> String {
    format!("{value:?}")
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
            "allow_atomic" => config.allow_atomic_publish = expected.allow_atomic_publish,
            "max_age" => config.max_age = expected.max_age,
            "duplicate_window" => config.duplicate_window = expected.duplicate_window,
            "description" => config.description = expected.description.clone(),
            "metadata" => config.metadata.extend(expected.metadata.clone()),
            _ => {}
        }
    }
    config
}

fn format_transform(transform: Option<&SubjectTransform>) -> String {
    transform.map_or_else(
        || "none".into(),
        |transform| format!("{} -> {}", transform.source, transform.destination),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_nats::jetstream::stream::{RetentionPolicy, StorageType};

    use super::*;
    use crate::bus::streams::fixtures::{cluster, days, topic};
    use crate::bus::streams::plan::{DEFAULT_DUPLICATE_WINDOW, stream_config};

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
}
