//! The campaign's consumer groups, each process a real subscriber (the example
//! `standby_subscriber`) reading the cluster's streams while the service writes them, and the
//! faults that hit them: a process killed or paused past its lease, a group's database locked by
//! another process or full, the node that leads a group's consumer killed.
//!
//! Three groups, as the consumer issue asks for them:
//! - `chaos-ledger`: two processes on one file (one active, one standby) over three topics;
//! - `chaos-parts`: one process per partition of two three-partition topics, a file each;
//! - `chaos-emitter`: one process that emits an event of its own for each event it applies.
//!
//! Every handler records each event it applies in its file (`standby_effects`), which
//! [`super::subscriber_check`] compares with the streams.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tempfile::TempDir;

use crate::cluster::harness::{Cluster, NODES};
use crate::consumer::process::Child;
use crate::identities::groups::{GroupUser, with_emitting_groups};
use order_service::bus::Topics;

/// The group with a standby.
pub const LEDGER: &str = "chaos-ledger";
/// Its topics.
pub const LEDGER_TOPICS: [&str; 3] = ["order.created", "order.updated", "order.status_changed"];
/// The group with one process and one file per partition.
pub const PARTS: &str = "chaos-parts";
/// Its topics: both have three partitions (`nats/topics.json`).
pub const PARTS_TOPICS: [&str; 2] = ["order.created", "order.status_changed"];
/// Its partitions.
pub const PARTITIONS: u32 = 3;
/// The group that emits.
pub const EMITTER: &str = "chaos-emitter";
/// Its topic.
pub const EMITTER_TOPICS: [&str; 1] = ["order.created"];
/// What it emits to, and that topic's stream.
pub const EMITTED: &str = "chaos.emitted";
/// See [`EMITTED`].
pub const EMITTED_STREAM: &str = "CHAOS_EMITTED";
/// How long a paused process stays stopped at least: past the lease (10 s), so another process
/// may take over while it is stopped.
const PAUSE_PAST_LEASE: Duration = Duration::from_secs(13);

/// One process of a group.
struct Slot {
    label: &'static str,
    group: &'static str,
    database: PathBuf,
    settings: Vec<(&'static str, String)>,
    child: Option<Child>,
}

/// Every subscriber process of the campaign, and where their files are.
pub struct Subscribers {
    dir: PathBuf,
    url: String,
    slots: Vec<Slot>,
}

/// A group's database file, and the file whose presence makes its writes find the disk full.
pub fn full_flag(database: &Path) -> PathBuf {
    database.with_extension("full")
}

/// The shipped identities with a user for each of the campaign's groups (`identities
/// add-group`), for the cluster's nodes; each group's user and password.
pub fn identities() -> (TempDir, HashMap<String, GroupUser>) {
    with_emitting_groups(&[
        (LEDGER, &LEDGER_TOPICS, &[]),
        (PARTS, &PARTS_TOPICS, &[]),
        (EMITTER, &EMITTER_TOPICS, &[EMITTED]),
    ])
}

impl Subscribers {
    /// Starts every process against the cluster at `url` as its group's user of `users`, with
    /// their files in `dir`.
    pub fn start(url: &str, dir: &Path, users: &HashMap<String, GroupUser>) -> Subscribers {
        let mut slots = Vec::new();
        let ledger = dir.join("ledger.db");
        let slot = |label: &'static str,
                    group: &'static str,
                    database: &Path,
                    topics: &[&str],
                    extra: &[(&'static str, String)]| {
            slot(label, group, database, topics, &users[group], extra)
        };
        for label in ["ledger-a", "ledger-b"] {
            slots.push(slot(label, LEDGER, &ledger, &LEDGER_TOPICS, &[]));
        }
        for (p, label) in ["parts-0", "parts-1", "parts-2"].into_iter().enumerate() {
            let database = dir.join(format!("{label}.db"));
            let partition = [("STANDBY_PARTITION", p.to_string())];
            slots.push(slot(label, PARTS, &database, &PARTS_TOPICS, &partition));
        }
        let emits = [
            ("STANDBY_EMIT", EMITTED.to_owned()),
            ("STANDBY_EMIT_REPLICATION", "3".to_owned()),
        ];
        let emitter = dir.join("emitter.db");
        slots.push(slot("emitter", EMITTER, &emitter, &EMITTER_TOPICS, &emits));
        let mut subscribers = Subscribers {
            dir: dir.to_owned(),
            url: url.to_owned(),
            slots,
        };
        for n in 0..subscribers.slots.len() {
            subscribers.spawn(n);
        }
        subscribers
    }

    /// No process: a campaign without the consumer groups.
    pub fn none() -> Subscribers {
        Subscribers {
            dir: PathBuf::new(),
            url: String::new(),
            slots: Vec::new(),
        }
    }

    /// Waits (bounded) until every process serves `/health` and every consumer of the groups
    /// exists, so that the first fault finds them running.
    pub async fn wait_started(&mut self, js: &jetstream::Context) {
        for slot in &mut self.slots {
            slot.child.as_mut().unwrap().addr().await;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let leaders = consumer_leaders(js).await;
            let missing: Vec<String> = consumers()
                .into_iter()
                .filter(|c| !leaders.iter().any(|(s, n, _)| (s, n) == (&c.0, &c.1)))
                .map(|(stream, consumer)| format!("{consumer} of {stream}"))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "consumers never created: {missing:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts slot `n`'s process (again).
    fn spawn(&mut self, n: usize) {
        let slot = &mut self.slots[n];
        let settings: Vec<(&str, &str)> = slot.settings.iter().map(|(k, v)| (*k, &**v)).collect();
        slot.child = Some(Child::start_logged(
            slot.label,
            &self.url,
            &slot.database,
            slot.group,
            &self.dir,
            &settings,
            &self.dir.join(format!("{}.log", slot.label)),
        ));
    }

    /// The last `lines` lines each process of `group` logged, across its restarts.
    pub fn log_tails(&self, group: &str, lines: usize) -> String {
        let mut tails = String::new();
        for slot in self.slots.iter().filter(|s| s.group == group) {
            let log = std::fs::read_to_string(self.dir.join(format!("{}.log", slot.label)))
                .unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            tails.push_str(&format!(
                "--- {} ({} lines) ---\n{}\n",
                slot.label,
                all.len(),
                all[all.len().saturating_sub(lines)..].join("\n")
            ));
        }
        tails
    }

    /// The databases of `group` with the partition each is for (`None`: every partition).
    pub fn databases(&self, group: &str) -> Vec<(Option<u32>, PathBuf)> {
        let mut files: Vec<(Option<u32>, PathBuf)> = Vec::new();
        for slot in self.slots.iter().filter(|s| s.group == group) {
            let partition = slot
                .settings
                .iter()
                .find(|(k, _)| *k == "STANDBY_PARTITION")
                .map(|(_, p)| p.parse().unwrap());
            if !files.iter().any(|(_, f)| *f == slot.database) {
                files.push((partition, slot.database.clone()));
            }
        }
        files
    }

    /// A seeded pick of a process.
    fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        rng.usize(..self.slots.len())
    }

    /// SIGKILL of a seeded pick, started again on its file after `hold`.
    pub async fn kill(&mut self, rng: &mut fastrand::Rng, hold: Duration) -> String {
        let n = self.pick(rng);
        self.assert_running();
        drop(self.slots[n].child.take()); // a drop kills (SIGKILL) and reaps
        tokio::time::sleep(hold).await;
        self.spawn(n);
        format!(
            "subscriber {} SIGKILLed, started again",
            self.slots[n].label
        )
    }

    /// SIGSTOP of a seeded pick for longer than its lease, then SIGCONT.
    pub async fn pause(&mut self, rng: &mut fastrand::Rng, hold: Duration) -> String {
        let n = self.pick(rng);
        self.assert_running();
        let pid = self.slots[n].child.as_ref().unwrap().process.id();
        signal(pid, "STOP");
        let held = hold.max(PAUSE_PAST_LEASE);
        tokio::time::sleep(held).await;
        signal(pid, "CONT");
        format!(
            "subscriber {} stopped (SIGSTOP) for {:.1}s, past its lease",
            self.slots[n].label,
            held.as_secs_f64()
        )
    }

    /// A seeded pick of the files (a group's, or a partition's).
    fn pick_database(&self, rng: &mut fastrand::Rng) -> PathBuf {
        let mut files: Vec<&PathBuf> = self.slots.iter().map(|s| &s.database).collect();
        files.dedup();
        files[rng.usize(..files.len())].clone()
    }

    /// Another process holds a seeded pick of the files' write lock for `hold`.
    pub async fn lock(&mut self, rng: &mut fastrand::Rng, hold: Duration) -> String {
        let database = self.pick_database(rng);
        let database_for_lock = database.clone();
        // The lock is taken on a thread of its own: SQLite's calls block.
        let locker = tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(&database_for_lock).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            std::thread::sleep(hold);
            conn.execute_batch("ROLLBACK").unwrap();
        });
        locker.await.unwrap();
        format!("{} locked (BEGIN EXCLUSIVE)", file_name(&database))
    }

    /// A seeded pick of the files is full for `hold`: every write of its handler fails with
    /// SQLite's `SQLITE_FULL`.
    pub async fn fill(&mut self, rng: &mut fastrand::Rng, hold: Duration) -> String {
        let database = self.pick_database(rng);
        let flag = full_flag(&database);
        std::fs::write(&flag, b"").unwrap();
        tokio::time::sleep(hold).await;
        std::fs::remove_file(&flag).unwrap();
        format!("{} full", file_name(&database))
    }

    /// The node leading a seeded pick of the groups' consumers killed (SIGKILL), started again
    /// after `hold`.
    pub async fn kill_consumer_leader(
        &mut self,
        cluster: &Cluster,
        js: &jetstream::Context,
        rng: &mut fastrand::Rng,
        hold: Duration,
    ) -> String {
        let mut leaders = consumer_leaders(js).await;
        // Sorted first: the pick depends on the seed, not on the order the broker listed them.
        leaders.sort();
        rng.shuffle(&mut leaders);
        for (stream, consumer, leader) in leaders {
            let Some(node) = NODES.into_iter().find(|n| Some(*n) == leader.as_deref()) else {
                continue;
            };
            cluster.kill(node).await;
            tokio::time::sleep(hold).await;
            cluster.start_node(node).await;
            return format!("{node} SIGKILLed, the leader of consumer {consumer} of {stream}");
        }
        "no consumer had a leader: nothing killed".into()
    }

    /// Fails the campaign when a process died by itself.
    pub fn assert_running(&mut self) {
        for slot in &mut self.slots {
            if let Some(child) = slot.child.as_mut()
                && let Some(status) = child.process.try_wait().unwrap()
            {
                panic!("subscriber {} exited by itself: {status}", slot.label);
            }
        }
    }

    /// Stops every process gracefully; fails when one does not exit successfully.
    pub async fn stop(&mut self) {
        for slot in &mut self.slots {
            if let Some(child) = slot.child.take() {
                child.stop().await;
            }
        }
    }
}

/// A slot of `group` over `topics`, its file `database`, connecting as `user`, with the
/// campaign's settings and `extra`.
fn slot(
    label: &'static str,
    group: &'static str,
    database: &Path,
    topics: &[&str],
    user: &GroupUser,
    extra: &[(&'static str, String)],
) -> Slot {
    let mut settings = vec![
        ("STANDBY_TOPICS", topics.join(",")),
        ("STANDBY_HANDLER_MS", "1".to_owned()),
        ("STANDBY_ACK_WAIT_MS", "10000".to_owned()),
        (
            "STANDBY_FULL_FLAG",
            full_flag(database).display().to_string(),
        ),
        ("NATS_USER", user.user.clone()),
        ("NATS_PASSWORD", user.password.clone()),
    ];
    settings.extend(extra.iter().cloned());
    Slot {
        label,
        group,
        database: database.to_owned(),
        settings,
        child: None,
    }
}

/// Every (stream, durable consumer) of the campaign's groups.
fn consumers() -> Vec<(String, String)> {
    let table = Topics::embedded();
    let stream = |topic: &str| {
        table
            .iter()
            .find(|t| t.name == topic)
            .map(|t| t.stream_name())
            .unwrap()
    };
    let mut all = Vec::new();
    for topic in LEDGER_TOPICS {
        all.push((stream(topic), LEDGER.to_owned()));
    }
    for topic in PARTS_TOPICS {
        for p in 0..PARTITIONS {
            all.push((stream(topic), format!("{PARTS}-p{p}")));
        }
    }
    for topic in EMITTER_TOPICS {
        all.push((stream(topic), EMITTER.to_owned()));
    }
    all
}

/// Every consumer of the campaign's groups the streams list now: (stream, consumer, its
/// leader). A stream that does not answer lists none.
async fn consumer_leaders(js: &jetstream::Context) -> Vec<(String, String, Option<String>)> {
    let wanted = consumers();
    let mut streams: Vec<&String> = wanted.iter().map(|(s, _)| s).collect();
    streams.sort();
    streams.dedup();
    let mut found = Vec::new();
    for name in streams {
        let Ok(stream) = js.get_stream(name).await else {
            continue;
        };
        let mut listed = stream.consumers();
        while let Some(Ok(info)) = listed.next().await {
            if wanted.iter().any(|(s, c)| (s, c) == (name, &info.name)) {
                let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
                found.push((name.clone(), info.name.clone(), leader));
            }
        }
    }
    found
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// The last component of `path`, for the log.
fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}
