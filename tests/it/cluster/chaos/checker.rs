//! The history checker: what the streams hold against what the outbox committed, and what the
//! SQLite file holds against what the clients were told.
//!
//! - Every event of every committed outbox row is in its topic's stream exactly once, by
//!   `Nats-Msg-Id`, with the committed payload byte for byte (else `altered`); a dead row is
//!   counted as dead, not lost, and a row still pending as `undelivered` (the outbox still holds
//!   it). A message no row explains is `foreign`.
//! - Per stream and key (the subject's last token), the stored order is the commit order (outbox
//!   id order): a message stored after one committed later is `reordered`. A message carrying
//!   `Repaired-From-Sequence` (put back by repair) is counted as `repaired` and left out of the
//!   order; only the first copy of a duplicated event is.
//! - Every definite success is in SQLite: a create's order exists, and the command's correlation
//!   id has committed its event (`order.created`, `order.confirmed`, ...); a stock change its row.
//!   A definite failure committed nothing. An unknown command may or may not have committed; if
//!   it did, its events were checked as every row's are. An outbox row whose correlation id no
//!   command sent is a phantom.

use std::collections::{BTreeMap, HashMap};

use super::history::{Command, Op, Outcome};
use super::observe::{Database, Streams};

/// How many examples of each finding are kept for the log.
const EXAMPLES: usize = 5;

/// What the checker found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Commands answered 2xx, 4xx, and neither.
    pub ok: usize,
    /// See `ok`.
    pub failed: usize,
    /// See `ok`.
    pub unknown: usize,
    /// Unknown commands that did commit.
    pub unknown_committed: usize,
    /// Committed outbox rows (events).
    pub events: usize,
    /// Messages in the streams.
    pub stored: usize,
    /// Events of rows recorded published in no stream.
    pub lost: usize,
    /// Events of rows still pending at the end in no stream: not lost (the outbox holds them),
    /// not delivered either.
    pub undelivered: usize,
    /// Copies beyond the first.
    pub duplicated: usize,
    /// Events stored with another payload.
    pub altered: usize,
    /// Messages no outbox row explains.
    pub foreign: usize,
    /// Messages stored after one of their key committed later.
    pub reordered: usize,
    /// Messages repair put back (`Repaired-From-Sequence`).
    pub repaired: usize,
    /// Dead outbox rows.
    pub dead: usize,
    /// Definite successes SQLite does not show.
    pub missing_successes: usize,
    /// Definite failures that committed events.
    pub failed_but_committed: usize,
    /// Outbox rows of no command.
    pub phantoms: usize,
    /// A few examples per finding, for the log.
    pub examples: BTreeMap<&'static str, Vec<String>>,
}

impl Findings {
    /// What fails the campaign, in words; empty when it passes.
    pub fn failures(&self) -> Vec<String> {
        [
            ("lost", self.lost),
            ("undelivered", self.undelivered),
            ("duplicated", self.duplicated),
            ("altered", self.altered),
            ("foreign", self.foreign),
            ("reordered", self.reordered),
            ("dead", self.dead),
            ("missing successes", self.missing_successes),
            ("failed but committed", self.failed_but_committed),
            ("phantom rows", self.phantoms),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what}: {n}"))
        .collect()
    }

    fn example(&mut self, kind: &'static str, text: String) {
        let list = self.examples.entry(kind).or_default();
        if list.len() < EXAMPLES {
            list.push(text);
        }
    }
}

/// Checks the history `ops` against the database `db` and the streams `streams`.
pub fn check(ops: &[Op], db: &Database, streams: &Streams) -> Findings {
    let mut f = Findings {
        events: db.rows.len(),
        stored: streams.messages.len(),
        ..Findings::default()
    };
    check_streams(&mut f, db, streams);
    check_history(&mut f, ops, db);
    f
}

fn check_streams(f: &mut Findings, db: &Database, streams: &Streams) {
    let by_event: HashMap<&str, usize> = db
        .rows
        .iter()
        .enumerate()
        .map(|(i, row)| (row.event_id.as_str(), i))
        .collect();
    let mut copies = vec![0usize; db.rows.len()];
    // (stream, key) -> the largest outbox id stored so far, in sequence order.
    let mut newest: HashMap<(&str, &str), i64> = HashMap::new();
    for m in &streams.messages {
        let Some(&i) = by_event.get(m.msg_id.as_str()) else {
            f.foreign += 1;
            f.example(
                "foreign",
                format!("{} #{} id {:?}", m.stream, m.sequence, m.msg_id),
            );
            continue;
        };
        let row = &db.rows[i];
        copies[i] += 1;
        if copies[i] > 1 {
            f.duplicated += 1;
            f.example(
                "duplicated",
                format!("{} #{}: {}", m.stream, m.sequence, row.event_id),
            );
            continue;
        }
        if m.payload != row.payload.as_bytes() || m.key != row.key {
            f.altered += 1;
            f.example(
                "altered",
                format!("{} #{}: row {}", m.stream, m.sequence, row.id),
            );
        }
        if m.repaired_from.is_some() {
            f.repaired += 1;
            continue;
        }
        let last = newest
            .entry((m.stream.as_str(), m.key.as_str()))
            .or_insert(0);
        if row.id < *last {
            f.reordered += 1;
            f.example(
                "reordered",
                format!(
                    "{} key {}: row {} ({}) stored at #{} after row {}",
                    m.stream, m.key, row.id, row.topic, m.sequence, last
                ),
            );
        }
        *last = (*last).max(row.id);
    }
    for (row, &n) in db.rows.iter().zip(&copies) {
        match row.status.as_str() {
            "dead" => {
                f.dead += 1;
                f.example(
                    "dead",
                    format!("row {} ({}) {}", row.id, row.topic, row.event_id),
                );
            }
            "pending" if n == 0 => {
                f.undelivered += 1;
                f.example(
                    "undelivered",
                    format!("row {} ({}, pending) {}", row.id, row.topic, row.event_id),
                );
            }
            status if n == 0 => {
                f.lost += 1;
                f.example(
                    "lost",
                    format!("row {} ({}, {status}) {}", row.id, row.topic, row.event_id),
                );
            }
            _ => {}
        }
    }
}

fn check_history(f: &mut Findings, ops: &[Op], db: &Database) {
    let mut committed: HashMap<&str, Vec<&str>> = HashMap::new();
    for row in &db.rows {
        committed
            .entry(row.correlation.as_str())
            .or_default()
            .push(row.topic.as_str());
    }
    let mut sent: HashMap<&str, usize> = HashMap::new();
    for op in ops {
        sent.insert(op.correlation.as_str(), 0);
        let topics = committed.get(op.correlation.as_str());
        match &op.outcome {
            Outcome::Ok(_) => {
                f.ok += 1;
                if let Some(why) = missing(op, topics, db) {
                    f.missing_successes += 1;
                    f.example("missing success", format!("{}: {why}", op.describe()));
                }
            }
            Outcome::Failed(_) => {
                f.failed += 1;
                if let Some(topics) = topics {
                    f.failed_but_committed += 1;
                    f.example(
                        "failed but committed",
                        format!("{}: committed {topics:?}", op.describe()),
                    );
                }
            }
            Outcome::Unknown(_) => {
                f.unknown += 1;
                f.unknown_committed += usize::from(topics.is_some());
            }
        }
    }
    for row in &db.rows {
        if !sent.contains_key(row.correlation.as_str()) {
            f.phantoms += 1;
            f.example(
                "phantom",
                format!(
                    "row {} ({}) correlation {:?}",
                    row.id, row.topic, row.correlation
                ),
            );
        }
    }
}

/// Why SQLite does not show the success `op`, if it does not.
fn missing(op: &Op, topics: Option<&Vec<&str>>, db: &Database) -> Option<String> {
    let target = op.target.as_deref().unwrap_or_default();
    if op.command.creates() && !db.orders.contains(target) {
        return Some(format!("no order {target}"));
    }
    if op.command == Command::SetStock && !db.stocked.contains(target) {
        return Some(format!("no stock row for {target}"));
    }
    match op.command.evidence() {
        Some(topic) if !topics.is_some_and(|t| t.contains(&topic)) => {
            Some(format!("no {topic} event committed: {topics:?}"))
        }
        _ => None,
    }
}

#[test]
fn the_checker_finds_each_kind_of_anomaly() {
    use super::observe::{Message, Row};
    use std::time::Duration;
    let row = |id: i64, topic: &str, key: &str, status: &str, correlation: &str| Row {
        id,
        event_id: format!("e{id}"),
        topic: topic.into(),
        key: key.into(),
        payload: format!("p{id}"),
        status: status.into(),
        correlation: correlation.into(),
    };
    let rows = vec![
        row(1, "order.created", "a", "published", "create"),
        row(2, "order.created", "a", "published", "cancel"),
        row(3, "order.created", "b", "published", "unknown"),
        row(4, "order.audit", "a", "dead", "create"),
        row(5, "order.created", "a", "published", "create"),
        row(6, "order.created", "a", "published", "nobody"),
        row(7, "order.created", "c", "pending", "create"),
    ];
    let message = |sequence: u64, id: &str, payload: &str, repaired: bool| Message {
        stream: "ORDER_CREATED".into(),
        sequence,
        key: "a".into(),
        msg_id: id.into(),
        repaired_from: repaired.then(|| "9".into()),
        payload: payload.as_bytes().to_vec(),
    };
    let streams = Streams {
        messages: vec![
            message(1, "e2", "changed", false), // altered
            message(2, "e1", "p1", false),      // reordered: row 1 after row 2
            message(3, "e1", "p1", false),      // duplicated
            message(4, "e5", "p5", true),       // repaired, not an order
            message(5, "e6", "p6", false),
            message(6, "x", "p", false), // foreign
        ],
        missing_streams: vec![],
        unreadable: 0,
        holes: 0,
    };
    let db = Database {
        rows,
        orders: ["o1".to_string()].into(),
        stocked: Default::default(),
    };
    let op = |command, correlation: &str, outcome| Op {
        client: 0,
        command,
        target: Some("o1".into()),
        correlation: correlation.into(),
        sent: Duration::ZERO,
        answered: Duration::ZERO,
        outcome,
    };
    let ops = vec![
        op(Command::Create, "create", Outcome::Ok(201)),
        op(Command::Confirm, "confirm", Outcome::Ok(200)),
        op(Command::Cancel, "cancel", Outcome::Failed(409)),
        op(
            Command::Update,
            "unknown",
            Outcome::Unknown("timeout".into()),
        ),
    ];
    let f = check(&ops, &db, &streams);
    let counts = [
        f.lost,
        f.undelivered,
        f.duplicated,
        f.altered,
        f.foreign,
        f.reordered,
        f.repaired,
        f.dead,
    ];
    assert_eq!(counts, [1, 1, 1, 1, 1, 1, 1, 1], "{f:#?}");
    assert_eq!(
        (f.ok, f.failed, f.unknown, f.unknown_committed),
        (2, 1, 1, 1)
    );
    assert_eq!(
        (f.missing_successes, f.failed_but_committed, f.phantoms),
        (1, 1, 1)
    );
    assert_eq!(f.failures().len(), 10);
}
