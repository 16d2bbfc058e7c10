//! The table's streams as the server has them ([`list`]), and the aligned text tables the
//! `streams list` and `streams diff` commands print.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::drift::Drift;
use super::reconcile::{StreamsError, live_info};
use crate::bus::topics::{Topics, format_retention};
use crate::table::{Column, Table};

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
    /// Replicas caught up with the stream: the leader and the peers the leader reports current
    /// (a standalone server's stream counts as 1).
    pub current: usize,
    /// The server leading the stream's replicas, on a cluster with a leader.
    pub leader: Option<String>,
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
            current: current_replicas(info.cluster.as_ref()),
            leader: info.cluster.as_ref().and_then(|c| c.leader.clone()),
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

/// How many replicas hold the stream's current state: a cluster's leader and its current peers;
/// without cluster info (a standalone server) the one copy there is.
fn current_replicas(cluster: Option<&stream::ClusterInfo>) -> usize {
    match cluster {
        Some(cluster) if cluster.name.is_some() || cluster.leader.is_some() => {
            usize::from(cluster.leader.is_some())
                + cluster.replicas.iter().filter(|peer| peer.current).count()
        }
        _ => 1,
    }
}

/// Renders [`list`]'s rows as an aligned text table. REPLICAS is wanted/actual: the table's
/// replication and the replicas the stream is configured with (less where a clamp applied);
/// CURRENT is how many of those are caught up, LEADER the server leading them.
pub fn format_stream_table(rows: &[StreamRow]) -> String {
    let mut table = Table::new(
        "  ",
        [
            "STREAM",
            "SUBJECTS",
            "REPLICAS",
            "CURRENT",
            "LEADER",
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
                "-".into(),
                "-".into(),
                format_retention(row.retention),
                "-".into(),
                "-".into(),
            ],
            Some(live) => vec![
                row.stream.clone(),
                live.subjects.join(","),
                format!("{}/{}", row.replicas_wanted, live.replicas),
                live.current.to_string(),
                live.leader.clone().unwrap_or_else(|| "-".into()),
                format_retention(live.max_age),
                live.messages.to_string(),
                live.bytes.to_string(),
            ],
        });
    }
    table.render()
}

/// Renders `diff`'s drifts as an aligned text table.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::streams::Fix;
    use crate::bus::streams::fixtures::days;

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
                    current: 1,
                    leader: None,
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
        assert!(lines[1].contains("order.created.*  2/1       1        -"));
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
