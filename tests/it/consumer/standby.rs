//! One active process per group and partition, with two real OS processes: the test starts the
//! example `standby_subscriber` (`examples/standby_subscriber.rs`, built with the tests) twice,
//! each a real group of the same name serving its `/health`, and kills the active one with
//! SIGKILL while events flow. (The
//! lease is keyed by the durable consumer's name, `<group>` or `<group>-p<P>`: a whole-topic group
//! and a partition's group take the same path.)

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use order_service::domain::Topic;
use reqwest::StatusCode;

use crate::app::PATIENCE;
use crate::consumer::process::Child;
use crate::consumer::{create_orders, expected_events, read_only, setup};

/// How long a standby may take to become active after the active process is killed: the lease
/// is 10 s without renewal, and a standby tries every 2.5 s.
const TAKEOVER_BOUND: Duration = Duration::from_secs(40);
/// The example's settings for the takeover tests: one status change of each order per batch
/// round, 200 ms per handler call, and `ack_wait` 20 s, longer than the lease as by default,
/// so what a lost process held comes back only after the standby took over.
const SLOW_STATUS_CHANGES: [(&str, &str); 3] = [
    ("STANDBY_TOPIC", "order.status_changed"),
    ("STANDBY_HANDLER_MS", "200"),
    ("STANDBY_ACK_WAIT_MS", "20000"),
];
/// The whole test's bound.
const TEST_BOUND: Duration = Duration::from_secs(300);

/// The effect rows in the order they were committed: `(event_id, label)`.
fn effect_rows(db: &Path) -> Vec<(String, String)> {
    if !db.exists() {
        return Vec::new();
    }
    let conn = read_only(db);
    let Ok(mut stmt) = conn.prepare("SELECT event_id, label FROM standby_effects ORDER BY seq")
    else {
        return Vec::new();
    };
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Two processes of one group and partition, one database file: one is active, the other
/// stands by and takes over within [`TAKEOVER_BOUND`] of a SIGKILL of the active one, with every
/// event's effect applied exactly once and none missed.
///
/// Both processes share ONE SQLite file, the deployment under which the group promises exactly
/// once across a takeover: the events the killed process committed but had not acknowledged are
/// delivered again to the standby, and its processed-events table acknowledges them without
/// running the handler. That same table would hide two processes consuming at once (each event
/// would still be applied once, by one or the other), so the effects carry the process's label and
/// the test also asserts that they never interleave: in commit order, all of the first process's,
/// then all of the second's, one switch, at the kill. (With a file per process, the events
/// committed but not acknowledged at the kill would be applied again by the standby: at least
/// once, which is all separate stores can give, and what the README says.)
///
/// Publishes 300 `order.created` events of 300 orders in rounds of 10, through the service and
/// its relay, kills the active process once it applied 100 while the rest flow, and checks:
/// before the kill the standby answered `/health` 200 as `standby` with no delivery; it becomes
/// `active` within the bound; each event's effect exists exactly once; the effects' labels switch
/// once; both processes applied some. It fails when the lease is disabled (every process granted
/// it): the second process reports `active` instead of standing by.
#[tokio::test]
async fn two_processes_of_one_group_have_one_active_and_the_standby_takes_over_a_sigkill() {
    tokio::time::timeout(TEST_BOUND, standby_takes_over())
        .await
        .expect("the standby test did not finish in time");
}

async fn standby_takes_over() {
    let (started, nats, app, _js, dir, db) = setup(|_| {}).await;
    let group = "standby";
    let topics = [Topic::Created];
    let mut a = Child::start("a", &nats.url(), &db, group, dir.path());
    a.until_role(group, "active", "stopped", PATIENCE).await;
    let mut b = Child::start("b", &nats.url(), &db, group, dir.path());
    b.until_role(group, "standby", "active", PATIENCE).await;

    // 300 orders in rounds of 10 while the active process is killed once it applied a third of
    // them and holds a batch it has not settled (the handler takes 20 ms per event).
    let publish = async {
        let mut orders = HashSet::new();
        for _ in 0..30 {
            orders.extend(create_orders(&app, 10, 2).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        orders
    };
    let kill = async {
        let start = Instant::now();
        while effect_rows(&db).len() < 100 {
            assert!(
                start.elapsed() < PATIENCE,
                "the active process applied too little"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (status, standby) = b.health(group).await;
        assert_eq!(status, StatusCode::OK, "{standby}");
        assert_eq!(standby["role"], "standby", "{standby}");
        assert_eq!(
            standby["deliveries"], 0,
            "the standby consumed while the active one ran"
        );
        // Killed with a batch in flight: delivered to it, not yet settled.
        a.holding_a_batch(group).await;
        a.process.kill().unwrap();
        let killed = Instant::now();
        let before_kill = effect_rows(&db);
        b.until_role(group, "active", "stopped", TAKEOVER_BOUND)
            .await;
        (before_kill, killed.elapsed())
    };
    let (orders, (before_kill, took)) = tokio::join!(publish, kill);
    let expected = expected_events(&app, &orders, &topics);
    assert_eq!(expected.len(), 300);

    let start = Instant::now();
    loop {
        let done: HashSet<String> = effect_rows(&db).into_iter().map(|(id, _)| id).collect();
        if expected.is_subset(&done) {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{} of {} events never applied",
            expected.difference(&done).count(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, standby) = b.health(group).await;
    b.stop().await;

    let rows = effect_rows(&db);
    let mut per_event: HashMap<&str, usize> = HashMap::new();
    for (id, _) in &rows {
        *per_event.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = per_event.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "effects applied twice: {twice:?}");
    let applied: HashSet<String> = per_event.keys().map(|id| id.to_string()).collect();
    assert_eq!(
        applied, expected,
        "the events applied are not the events published"
    );
    let labels: Vec<&str> = rows.iter().map(|(_, label)| label.as_str()).collect();
    let switches = labels.windows(2).filter(|w| w[0] != w[1]).count();
    let a_rows = labels.iter().filter(|l| **l == "a").count();
    assert_eq!(
        labels.first(),
        Some(&"a"),
        "the first effect is not the active process's"
    );
    assert_eq!(
        switches, 1,
        "the two processes' effects interleave: {labels:?}"
    );
    assert!(
        before_kill.iter().all(|(_, label)| label == "a"),
        "the standby applied effects before the kill"
    );
    eprintln!(
        "standby: {} events, {a_rows} applied by the killed process, {} by the standby after it \
         took over {:.1}s after the SIGKILL ({} redeliveries, {} of them acknowledged without the \
         handler), {:.1}s in all",
        expected.len(),
        rows.len() - a_rows,
        took.as_secs_f64(),
        standby["redeliveries"],
        standby["duplicates"],
        started.elapsed().as_secs_f64()
    );
}

/// Two processes of one group on one file, the active one killed with SIGKILL while it holds a
/// batch of the first status change of 40 orders unsettled (handlers of 200 ms, `ack_wait` 20 s:
/// longer than the lease, as by default). The standby takes over before the broker delivers
/// that batch again, and every order changes status once more meanwhile: the standby must not
/// apply an order's second change before its first. Each event is applied once, and per order
/// in the order the stream holds them. Before the fix the standby applied the second change of
/// each of the 40 orders first.
#[tokio::test]
async fn after_a_takeover_each_orders_events_are_still_applied_in_stream_order() {
    tokio::time::timeout(TEST_BOUND, takeover_keeps_order())
        .await
        .expect("the takeover order test did not finish in time");
}

async fn takeover_keeps_order() {
    let (_, nats, app, _js, dir, db) = setup(|_| {}).await;
    let group = "in-order";
    // Every order's first change is stored before the group starts: one batch of 40.
    let ids = crate::repair::orders(&app, 40).await;
    crate::relay::drained(&app).await;
    let (mut a, mut b) = active_holding_a_batch(&nats.url(), group, (&db, &db), dir.path()).await;
    a.process.kill().unwrap();
    let killed = Instant::now();
    b.until_role(group, "active", "stopped", TAKEOVER_BOUND)
        .await;
    let took = killed.elapsed();
    // The second change of every order, while the first ones wait for the broker's ack_wait.
    crate::repair::cancel_all(&app, &ids).await;
    crate::relay::drained(&app).await;

    let orders: HashSet<String> = ids.iter().cloned().collect();
    let expected = expected_events(&app, &orders, &[Topic::StatusChanged]);
    assert_eq!(expected.len(), 80);
    let start = Instant::now();
    let rows = loop {
        let rows = effect_rows(&db);
        let done: HashSet<&String> = rows.iter().map(|(id, _)| id).collect();
        if expected.iter().all(|id| done.contains(id)) {
            break rows;
        }
        assert!(
            start.elapsed() < PATIENCE * 2,
            "{} of {} events applied",
            done.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    b.stop().await;

    // Commit order in the outbox is the stream's order per order.
    let outbox: HashMap<String, (String, i64)> = app
        .outbox()
        .into_iter()
        .map(|r| (r.event_id, (r.key, r.id)))
        .collect();
    let mut applied: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut once = HashSet::new();
    for (event, _) in &rows {
        assert!(once.insert(event), "{event} applied twice");
        let (key, id) = &outbox[event];
        applied.entry(key).or_default().push(*id);
    }
    let reordered: Vec<_> = applied
        .iter()
        .filter(|(_, ids)| ids.windows(2).any(|w| w[0] > w[1]))
        .map(|(key, _)| *key)
        .collect();
    assert!(
        reordered.is_empty(),
        "{} of {} orders had their events applied out of stream order: {reordered:?}",
        reordered.len(),
        applied.len()
    );
    eprintln!(
        "takeover in order: the standby took over {:.1}s after the SIGKILL; 80 events applied in \
         stream order per order in {:.1}s from the kill",
        took.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
}

/// A process paused for longer than the lease must not commit what it held once it resumes. Two
/// processes of one group, each with its own file (the deployment where the processed-events
/// table cannot stop a second application): the active one is stopped with SIGSTOP while it
/// holds the first status change of 40 orders in a round, the standby takes over and applies
/// them once the broker delivers them again, and then the paused process is resumed (SIGCONT).
/// It finds its lease too old to trust and then taken, rolls its round back and stands by: every
/// event is applied once over both files. Before the fence the resumed process committed its
/// round: the events in it were applied twice (2 in the run that showed it).
#[tokio::test]
async fn a_process_paused_past_its_lease_commits_nothing_when_it_resumes() {
    tokio::time::timeout(TEST_BOUND, paused_past_the_lease())
        .await
        .expect("the paused-process test did not finish in time");
}

async fn paused_past_the_lease() {
    let (_, nats, app, _js, dir, _) = setup(|_| {}).await;
    let group = "fenced";
    let ids = crate::repair::orders(&app, 40).await;
    crate::relay::drained(&app).await;
    let (db_a, db_b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let (mut a, mut b) =
        active_holding_a_batch(&nats.url(), group, (&db_a, &db_b), dir.path()).await;
    signal(&a, "-STOP");
    b.until_role(group, "active", "stopped", TAKEOVER_BOUND)
        .await;

    let orders: HashSet<String> = ids.iter().cloned().collect();
    let expected = expected_events(&app, &orders, &[Topic::StatusChanged]);
    assert_eq!(expected.len(), 40);
    let start = Instant::now();
    loop {
        let done: HashSet<String> = effect_rows(&db_b).into_iter().map(|(id, _)| id).collect();
        if expected.is_subset(&done) {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE * 2,
            "the new owner applied {} of {}",
            done.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&a, "-CONT");
    // It notices that the lease is another's, without committing, and stands by again.
    a.until_role(group, "standby", "stopped", PATIENCE).await;
    // Whatever it still had in its round is past by now (40 calls of 200 ms at most).
    tokio::time::sleep(Duration::from_secs(9)).await;
    let (_, paused) = a.health(group).await;
    a.stop().await;
    b.stop().await;

    let mut applied: HashMap<String, usize> = HashMap::new();
    for (id, _) in effect_rows(&db_a).into_iter().chain(effect_rows(&db_b)) {
        *applied.entry(id).or_default() += 1;
    }
    let twice = applied.values().filter(|n| **n > 1).count();
    assert_eq!(
        twice, 0,
        "{twice} events applied twice over the two files (the paused process: {paused})"
    );
    assert_eq!(applied.keys().cloned().collect::<HashSet<_>>(), expected);
}

/// Two processes of `group` with [`SLOW_STATUS_CHANGES`] on the files `dbs`: `a` once it is
/// active and holds a batch it has not settled, `b` standing by.
async fn active_holding_a_batch(
    nats_url: &str,
    group: &str,
    dbs: (&Path, &Path),
    dir: &Path,
) -> (Child, Child) {
    let mut a = Child::start_with("a", nats_url, dbs.0, group, dir, &SLOW_STATUS_CHANGES);
    a.until_role(group, "active", "stopped", PATIENCE).await;
    let mut b = Child::start_with("b", nats_url, dbs.1, group, dir, &SLOW_STATUS_CHANGES);
    b.until_role(group, "standby", "active", PATIENCE).await;
    a.holding_a_batch(group).await;
    (a, b)
}

/// Sends `signal` (`-STOP`, `-CONT`) to the child process.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.process.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {}", child.label);
}
