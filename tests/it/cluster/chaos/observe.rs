//! What the checker looks at once every fault is healed: it waits (bounded) until the service
//! has published everything and its own `outbox verify` is clean, then reads the SQLite file
//! (outbox rows, orders, stock) and every message of every stream of the topic table.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::stream::RawMessageErrorKind;
use futures::StreamExt;
use order_service::bus::{NatsSettings, Topics};
use rusqlite::{Connection, OpenFlags};

use crate::cluster::harness::{Cluster, NODES};
use crate::service_process as service;

/// How long the outbox may take to drain, and `outbox verify` to come out clean, after the last
/// fault.
const SETTLE: Duration = Duration::from_secs(180);
/// Stream messages read at once.
const READS_IN_FLIGHT: usize = 32;

/// How the wait for a quiet system ended.
#[derive(Debug, Clone)]
pub struct Settled {
    /// Rows still pending when the wait ended (0 unless it timed out).
    pub pending: i64,
    /// Whether the last `outbox verify` exited 0.
    pub verify_clean: bool,
    /// What it printed.
    pub verify_output: String,
    /// How long the wait took.
    pub took: Duration,
}

/// Waits until no outbox row is pending and `outbox verify` (run against the nodes directly)
/// exits 0, asking again every few seconds while the service publishes and repairs; gives up
/// after [`SETTLE`] with what it saw last.
pub async fn settle(db: &Path, nodes: &NatsSettings) -> Settled {
    let start = Instant::now();
    loop {
        let pending = pending(db);
        let (verify_clean, verify_output) = if pending == 0 {
            service::verify(db, nodes).await
        } else {
            (false, format!("{pending} rows pending"))
        };
        // Verify again after a clean one if a repair made rows pending meanwhile.
        if verify_clean && self::pending(db) == 0 || start.elapsed() >= SETTLE {
            return Settled {
                pending: self::pending(db),
                verify_clean,
                verify_output,
                took: start.elapsed(),
            };
        }
        tokio::time::sleep(Duration::from_secs(if pending == 0 { 5 } else { 1 })).await;
    }
}

/// An outbox row as the checker needs it.
#[derive(Debug, Clone)]
pub struct Row {
    /// Commit order.
    pub id: i64,
    /// `Nats-Msg-Id`.
    pub event_id: String,
    /// The topic.
    pub topic: String,
    /// The subject's last token.
    pub key: String,
    /// The message body as committed.
    pub payload: String,
    /// pending, published or dead.
    pub status: String,
    /// `metadata.correlation_id`: the command that committed it.
    pub correlation: String,
}

/// What the SQLite file holds at the end.
pub struct Database {
    /// Every outbox row, in commit order.
    pub rows: Vec<Row>,
    /// Every order id.
    pub orders: HashSet<String>,
    /// Every product with a stock row.
    pub stocked: HashSet<String>,
}

/// Reads the outbox, the orders and the stock rows.
pub fn database(db: &Path) -> Database {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT id, event_id, topic, subject_key, payload, status FROM order_events_outbox
             ORDER BY id",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            let payload: String = r.get(4)?;
            let correlation = serde_json::from_str::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| v["metadata"]["correlation_id"].as_str().map(str::to_string))
                .unwrap_or_default();
            Ok(Row {
                id: r.get(0)?,
                event_id: r.get(1)?,
                topic: r.get(2)?,
                key: r.get(3)?,
                payload,
                status: r.get(5)?,
                correlation,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let ids = |sql: &str| -> HashSet<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    Database {
        rows,
        orders: ids("SELECT order_id FROM orders"),
        stocked: ids("SELECT product_id FROM product_stock"),
    }
}

fn pending(db: &Path) -> i64 {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row(
        "SELECT count(*) FROM order_events_outbox WHERE status = 'pending'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// A message as a stream holds it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The stream.
    pub stream: String,
    /// Its sequence there.
    pub sequence: u64,
    /// The subject's last token (the key).
    pub key: String,
    /// `Nats-Msg-Id`.
    pub msg_id: String,
    /// `Repaired-From-Sequence`, when repair put it back.
    pub repaired_from: Option<String>,
    /// The body.
    pub payload: Vec<u8>,
}

/// What the streams hold.
pub struct Streams {
    /// Every message, per stream in sequence order.
    pub messages: Vec<Message>,
    /// Streams of the table that do not exist.
    pub missing_streams: Vec<String>,
    /// Sequences between a stream's first and last that could not be read (not "no message").
    pub unreadable: u64,
    /// Sequences between a stream's first and last it does not hold (deleted, or lost).
    pub holes: u64,
}

/// Reads every message of every stream of the topic table, by sequence from first to last
/// (sequences the stream no longer holds are skipped), [`READS_IN_FLIGHT`] at a time.
pub async fn streams(js: &jetstream::Context) -> Streams {
    let mut all = Streams {
        messages: Vec::new(),
        missing_streams: Vec::new(),
        unreadable: 0,
        holes: 0,
    };
    for topic in &Topics::embedded() {
        let name = topic.stream_name();
        let Ok(mut stream) = js.get_stream(&name).await else {
            all.missing_streams.push(name);
            continue;
        };
        let state = match stream.info().await {
            Ok(info) => info.state.clone(),
            Err(error) => {
                all.missing_streams
                    .push(format!("{name} (no info: {error})"));
                continue;
            }
        };
        if state.last_sequence == 0 {
            continue;
        }
        let stream = &stream;
        let reads: Vec<Result<Option<Message>, String>> =
            futures::stream::iter(state.first_sequence.max(1)..=state.last_sequence)
                .map(|seq| read(stream, &name, seq))
                .buffer_unordered(READS_IN_FLIGHT)
                .collect()
                .await;
        let mut messages: BTreeMap<u64, Message> = BTreeMap::new();
        for read in reads {
            match read {
                Ok(Some(m)) => {
                    messages.insert(m.sequence, m);
                }
                Ok(None) => all.holes += 1,
                Err(error) => {
                    all.unreadable += 1;
                    eprintln!("chaos: {name}: {error}");
                }
            }
        }
        all.messages.extend(messages.into_values());
    }
    all
}

/// One message; `None` when the stream does not hold that sequence; a few tries on other errors.
pub async fn read(
    stream: &jetstream::stream::Stream,
    name: &str,
    seq: u64,
) -> Result<Option<Message>, String> {
    let mut tries = 0;
    loop {
        match stream.get_raw_message(seq).await {
            Ok(m) => {
                let header = |name: &str| m.headers.get(name).map(|v| v.to_string());
                return Ok(Some(Message {
                    stream: name.to_string(),
                    sequence: m.sequence,
                    key: m.subject.rsplit('.').next().unwrap_or_default().to_string(),
                    msg_id: header("Nats-Msg-Id").unwrap_or_default(),
                    repaired_from: header("Repaired-From-Sequence"),
                    payload: m.payload.to_vec(),
                }));
            }
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(error) if tries >= 5 => return Err(format!("sequence {seq}: {error}")),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Streams whose replicas disagree once every replica says it is current: per stream, each
/// node's `messages/first..last` as its own `/jsz` reports its store. A replica holding less than
/// its leader has lost what it acknowledged; reading through the leader does not show it until
/// that replica leads. Also how many replica states the nodes reported.
pub async fn diverging_replicas(cluster: &Cluster) -> (Vec<String>, usize) {
    let mut states: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for node in NODES {
        let Some(jsz) = cluster
            .monitor(node, "jsz?accounts=true&streams=true")
            .await
        else {
            continue;
        };
        let accounts = jsz["account_details"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for stream in accounts
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
        {
            let state = &stream["state"];
            states
                .entry(stream["name"].as_str().unwrap_or("?").into())
                .or_default()
                .push((
                    node.to_string(),
                    format!(
                        "{}/{}..{}",
                        state["messages"], state["first_seq"], state["last_seq"]
                    ),
                ));
        }
    }
    let seen = states.values().map(Vec::len).sum();
    let diverging = states
        .into_iter()
        .filter(|(_, replicas)| replicas.iter().any(|(_, s)| *s != replicas[0].1))
        .map(|(name, replicas)| {
            let each: Vec<String> = replicas.iter().map(|(n, s)| format!("{n} {s}")).collect();
            format!("{name}: {}", each.join(", "))
        })
        .collect();
    (diverging, seen)
}
