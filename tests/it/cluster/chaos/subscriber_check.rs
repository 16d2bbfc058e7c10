//! The consumer groups' check, once the service has published and repaired everything: every
//! event the streams hold for a group's topics was applied exactly once, in the file of its
//! partition, per order in the order the stream delivered it; every emitted event is in the
//! emitted stream once; and no group has a dead letter (their handlers never fail by themselves,
//! so any dead letter is an infrastructure fault the group did not absorb).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use order_service::bus::Topics;
use order_service::consumer::dlq;
use rusqlite::{Connection, OpenFlags};

use super::observe::{self, Message, Streams};
use super::subscribers::{
    EMITTED_STREAM, EMITTER, EMITTER_TOPICS, LEDGER, LEDGER_TOPICS, PARTS, PARTS_TOPICS,
    Subscribers,
};

/// How long the groups may take to apply what the streams hold, once the service is settled.
const CATCH_UP: Duration = Duration::from_secs(180);
/// How many examples of each finding are kept for the log.
const EXAMPLES: usize = 5;

/// What the check found for one group.
#[derive(Debug, Default)]
pub struct GroupFindings {
    /// The group.
    pub group: &'static str,
    /// Events of its topics the streams hold (each once, by `Nats-Msg-Id`).
    pub expected: usize,
    /// Effects its files hold.
    pub applied: usize,
    /// Events without an effect.
    pub lost: usize,
    /// Effects beyond the first of an event.
    pub twice: usize,
    /// Effects applied after one of a later stream sequence of the same order and stream.
    pub out_of_order: usize,
    /// Effects in the file of another partition.
    pub misplaced: usize,
    /// Effects of events the streams do not hold.
    pub unexpected: usize,
    /// Its dead letters.
    pub dead_letters: usize,
    /// For the group that emits: effects whose emitted event is not in the emitted stream, and
    /// emitted events stored more than once.
    pub emitted_lost: usize,
    /// See `emitted_lost`.
    pub emitted_twice: usize,
    /// How long after the service settled it had applied everything (`None`: not within the
    /// wait).
    pub caught_up: Option<Duration>,
    /// A few examples per finding.
    pub examples: BTreeMap<&'static str, Vec<String>>,
}

impl GroupFindings {
    fn example(&mut self, kind: &'static str, text: String) {
        let list = self.examples.entry(kind).or_default();
        if list.len() < EXAMPLES {
            list.push(text);
        }
    }

    /// What fails the campaign, in words.
    pub fn failures(&self) -> Vec<String> {
        [
            ("lost", self.lost),
            ("applied twice", self.twice),
            ("out of order", self.out_of_order),
            ("in another partition's file", self.misplaced),
            ("applied but not in the streams", self.unexpected),
            ("dead letters", self.dead_letters),
            ("emitted events lost", self.emitted_lost),
            ("emitted events duplicated", self.emitted_twice),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{}: {what}: {n}", self.group))
        .collect()
    }
}

/// One effect row.
struct Effect {
    event_id: String,
    stream: String,
    stream_seq: u64,
    subject: String,
}

/// Every group's [`GroupFindings`], after waiting (bounded) until each applied what the streams
/// hold for it; also how long that wait took.
pub async fn check(
    subscribers: &Subscribers,
    streams: &Streams,
    js: &jetstream::Context,
) -> (Vec<GroupFindings>, Duration) {
    let groups = [
        (LEDGER, &LEDGER_TOPICS[..]),
        (PARTS, &PARTS_TOPICS[..]),
        (EMITTER, &EMITTER_TOPICS[..]),
    ];
    let started = Instant::now();
    // When each group had applied everything, from the start of the wait.
    let mut done: Vec<Option<Duration>> = vec![None; groups.len()];
    loop {
        for (n, (group, topics)) in groups.iter().enumerate() {
            if done[n].is_some() {
                continue;
            }
            let expected = expected(streams, topics);
            let applied: HashSet<String> = subscribers
                .databases(group)
                .iter()
                .flat_map(|(_, file)| effects(file))
                .map(|e| e.event_id)
                .collect();
            if expected.keys().all(|id| applied.contains(*id)) {
                done[n] = Some(started.elapsed());
            }
        }
        if done.iter().all(Option::is_some) || started.elapsed() >= CATCH_UP {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let caught_up = started.elapsed();
    let emitted = emitted_sources(js, subscribers, caught_up).await;
    let mut all = Vec::new();
    for ((group, topics), caught_up) in groups.into_iter().zip(done) {
        let files = subscribers.databases(group);
        let mut f = check_group(group, &files, &expected(streams, topics));
        f.caught_up = caught_up;
        f.dead_letters = dlq::list(js, group, None)
            .await
            .map(|letters| letters.len())
            .unwrap_or_else(|error| panic!("{group}'s dead letters: {error}"));
        if group == EMITTER {
            check_emitted(&mut f, subscribers, &emitted);
        }
        all.push(f);
    }
    (all, caught_up)
}

/// The events the streams hold for `topics`, each once: id → its message.
fn expected<'a>(streams: &'a Streams, topics: &[&str]) -> HashMap<&'a str, &'a Message> {
    let table = Topics::embedded();
    let names: HashSet<String> = table
        .iter()
        .filter(|t| topics.contains(&t.name.as_str()))
        .map(|t| t.stream_name())
        .collect();
    let mut events = HashMap::new();
    for message in streams
        .messages
        .iter()
        .filter(|m| names.contains(&m.stream))
    {
        events.entry(message.msg_id.as_str()).or_insert(message);
    }
    events
}

/// The partition token of `<topic>.<partition>.<key>`.
fn partition(subject: &str) -> Option<u32> {
    subject.rsplit('.').nth(1)?.parse().ok()
}

/// One group's findings against what the streams hold for it.
fn check_group(
    group: &'static str,
    files: &[(Option<u32>, PathBuf)],
    expected: &HashMap<&str, &Message>,
) -> GroupFindings {
    let mut f = GroupFindings {
        group,
        expected: expected.len(),
        ..GroupFindings::default()
    };
    let mut times: HashMap<String, usize> = HashMap::new();
    for (file_partition, file) in files {
        let file_partition = *file_partition;
        // Per (stream, order key), the last stream sequence applied, in commit order.
        let mut last: HashMap<(String, String), u64> = HashMap::new();
        for effect in effects(file) {
            f.applied += 1;
            *times.entry(effect.event_id.clone()).or_default() += 1;
            let key = effect
                .subject
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned();
            let previous = last.insert((effect.stream.clone(), key.clone()), effect.stream_seq);
            if previous.is_some_and(|p| p >= effect.stream_seq) {
                f.out_of_order += 1;
                f.example(
                    "out of order",
                    format!(
                        "{} of order {key}: sequence {} of {} after {}",
                        effect.event_id,
                        effect.stream_seq,
                        effect.stream,
                        previous.unwrap()
                    ),
                );
            }
            if file_partition.is_some() && partition(&effect.subject) != file_partition {
                f.misplaced += 1;
                f.example(
                    "misplaced",
                    format!(
                        "{} ({}) in {}",
                        effect.event_id,
                        effect.subject,
                        file.display()
                    ),
                );
            }
            if !expected.contains_key(effect.event_id.as_str()) {
                f.unexpected += 1;
                f.example("unexpected", effect.event_id.clone());
            }
        }
    }
    for (id, n) in &times {
        if *n > 1 {
            f.twice += n - 1;
            f.example("applied twice", format!("{id} {n} times"));
        }
    }
    for (id, message) in expected {
        if !times.contains_key(*id) {
            f.lost += 1;
            f.example(
                "lost",
                format!("{id} ({} sequence {})", message.stream, message.sequence),
            );
        }
    }
    f
}

/// The emitter's effects against the emitted stream's messages' `source`s.
fn check_emitted(f: &mut GroupFindings, subscribers: &Subscribers, sources: &[String]) {
    let mut stored: HashMap<&str, usize> = HashMap::new();
    for source in sources {
        *stored.entry(source).or_default() += 1;
    }
    for (source, n) in &stored {
        if *n > 1 {
            f.emitted_twice += n - 1;
            f.example("emitted twice", format!("for {source}: {n} messages"));
        }
    }
    for (_, file) in subscribers.databases(EMITTER) {
        for effect in effects(&file) {
            if !stored.contains_key(effect.event_id.as_str()) {
                f.emitted_lost += 1;
                f.example("emitted lost", format!("for {}", effect.event_id));
            }
        }
    }
}

/// The `data.source` of every message of the emitted stream (the envelope's own `source` is
/// the group), once it holds as many as the emitter applied (waiting at most what is left of
/// [`CATCH_UP`] after `spent`).
async fn emitted_sources(
    js: &jetstream::Context,
    subscribers: &Subscribers,
    spent: Duration,
) -> Vec<String> {
    let applied: usize = subscribers
        .databases(EMITTER)
        .iter()
        .map(|(_, file)| effects(file).len())
        .sum();
    let deadline = Instant::now() + CATCH_UP.saturating_sub(spent) + Duration::from_secs(10);
    loop {
        let sources = read_emitted(js).await;
        if sources.len() >= applied || Instant::now() >= deadline {
            return sources;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every message of the emitted stream, as its `data.source`.
async fn read_emitted(js: &jetstream::Context) -> Vec<String> {
    let Ok(mut stream) = js.get_stream(EMITTED_STREAM).await else {
        return Vec::new();
    };
    let Ok(info) = stream.info().await else {
        return Vec::new();
    };
    let (first, last) = (info.state.first_sequence.max(1), info.state.last_sequence);
    let mut sources = Vec::new();
    if last == 0 {
        return sources;
    }
    for seq in first..=last {
        if let Ok(Some(message)) = observe::read(&stream, EMITTED_STREAM, seq).await {
            let body: serde_json::Value =
                serde_json::from_slice(&message.payload).unwrap_or_default();
            sources.push(
                body["data"]["source"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    sources
}

/// Every effect of `file`, in commit order.
fn effects(file: &Path) -> Vec<Effect> {
    let Ok(conn) = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return Vec::new();
    };
    let _ = conn.busy_timeout(Duration::from_secs(10));
    let Ok(mut stmt) = conn
        .prepare("SELECT event_id, stream, stream_seq, subject FROM standby_effects ORDER BY seq")
    else {
        return Vec::new();
    };
    stmt.query_map([], |r| {
        Ok(Effect {
            event_id: r.get(0)?,
            stream: r.get(1)?,
            stream_seq: r.get::<_, i64>(2)? as u64,
            subject: r.get(3)?,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The groups' lines of the campaign's table, as (name, value).
pub fn render(groups: &[GroupFindings], caught_up: Duration) -> Vec<(String, String)> {
    let mut lines = vec![(
        "subscribers".to_owned(),
        format!(
            "caught up {:.1} s after the service settled",
            caught_up.as_secs_f64()
        ),
    )];
    for g in groups {
        let emitted = if g.group == EMITTER {
            format!(
                ", emitted lost {} / twice {}",
                g.emitted_lost, g.emitted_twice
            )
        } else {
            String::new()
        };
        lines.push((
            format!("  {}", g.group),
            format!(
                "{} events, {} applied{}: lost {}, twice {}, out of order {}, misplaced {}, \
                 not in the streams {}, dead letters {}{emitted}",
                g.expected,
                g.applied,
                g.caught_up
                    .map_or(" (not all within the wait)".to_owned(), |t| format!(
                        " ({:.1} s after the service settled)",
                        t.as_secs_f64()
                    )),
                g.lost,
                g.twice,
                g.out_of_order,
                g.misplaced,
                g.unexpected,
                g.dead_letters
            ),
        ));
    }
    lines
}

#[test]
fn the_check_finds_each_kind_of_wrong_effect() {
    let dir = tempfile::tempdir().unwrap();
    let message = |sequence: u64, id: &str| Message {
        stream: "ORDER_CREATED".into(),
        sequence,
        key: "k".into(),
        msg_id: id.into(),
        repaired_from: None,
        payload: Vec::new(),
    };
    let held = [
        message(1, "e1"),
        message(2, "e2"),
        message(3, "e3"),
        message(4, "e4"),
    ];
    let expected: HashMap<&str, &Message> = held.iter().map(|m| (m.msg_id.as_str(), m)).collect();
    // Partition 0's file: e2 before e1 (out of order), e3 twice, e4 from partition 1, e9 which
    // no stream holds; e1 is in no other file, e4's own file has nothing.
    let file = dir.path().join("parts-0.db");
    let conn = Connection::open(&file).unwrap();
    conn.execute_batch(
        "CREATE TABLE standby_effects (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT,
             label TEXT, stream TEXT, stream_seq INTEGER, subject TEXT, delivered INTEGER);",
    )
    .unwrap();
    for (id, seq, partition) in [("e2", 2, 0), ("e1", 1, 0), ("e3", 3, 0), ("e3", 3, 0)]
        .into_iter()
        .chain([("e4", 4, 1), ("e9", 9, 0)])
    {
        conn.execute(
            "INSERT INTO standby_effects (event_id, label, stream, stream_seq, subject, delivered)
             VALUES (?1, 'p0', 'ORDER_CREATED', ?2, ?3, 1)",
            (id, seq, format!("order.created.{partition}.k")),
        )
        .unwrap();
    }
    drop(conn);
    let f = check_group(PARTS, &[(Some(0), file)], &expected);
    assert_eq!(f.applied, 6);
    assert_eq!(f.lost, 0);
    assert_eq!(f.twice, 1, "{f:?}");
    // e1 after e2, the second e3, e4 after e3 is in order, e9 after e4 is too.
    assert_eq!(f.out_of_order, 2, "{f:?}");
    assert_eq!(f.misplaced, 1);
    assert_eq!(f.unexpected, 1);
    assert_eq!(f.failures().len(), 4);

    let none = check_group(PARTS, &[], &expected);
    assert_eq!(none.lost, 4);
}
