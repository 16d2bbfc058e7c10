//! The delivery guarantees end to end: HTTP → outbox → relay → JetStream → consumer group, against
//! a real broker and real SQLite files, after the universal pub/sub tests Watermill makes every
//! backend pass. Every test checks that the events of the orders that got a 201 are exactly the
//! events processed, that each side effect happened once, and prints the duplicate deliveries.

mod blame;
mod dead_letters;
pub(crate) mod emit;
mod faults;
mod foreign;
mod forged_letters;
mod group_lag;
mod health;
mod in_transit;
mod order;
mod over_time;
pub(crate) mod process;
mod rewound;
mod setup;
mod standby;
mod trace;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use order_service::auth::Role;
use order_service::bus::{self, OutboxMessage, Topics};
use order_service::config::Config;
use order_service::consumer::{
    ConsumerError, Delivery, Event, Failure, Group, GroupConfig, GroupStats, GroupStatsSnapshot,
    Handler, HandlerTx, lag,
};
use order_service::domain::Topic;
use order_service::shutdown::Shutdown;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::app::{OutboxRow, PATIENCE, TestApp, User, into_json, simple_order};
use crate::nats::NatsServer;

/// The service with its relay on, publishing in large batches and sampling lag often.
pub(crate) async fn relaying_app(nats: &NatsServer, adjust: impl FnOnce(&mut Config)) -> TestApp {
    crate::app::relaying_app(nats, |c| {
        c.event_outbox_batch_size = 500;
        c.consumer_lag_interval = Duration::from_millis(200);
        adjust(c);
    })
    .await
}

/// What every test here starts with: the time it started, a broker, the relaying service (its
/// settings changed by `adjust`), JetStream, and a folder (deleted on drop) with the path of the
/// consumers' database in it.
pub(crate) async fn setup(
    adjust: impl FnOnce(&mut Config),
) -> (
    Instant,
    NatsServer,
    TestApp,
    jetstream::Context,
    tempfile::TempDir,
    PathBuf,
) {
    let started = Instant::now();
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, adjust).await;
    let js = nats.jetstream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("consumer.db");
    (started, nats, app, js, dir, db)
}

/// A group's settings for tests: quick retries, a file in `dir`.
pub(crate) fn group_config(name: &str, topics: &[Topic], db: &Path) -> GroupConfig {
    let mut c = GroupConfig::new(name, topics, db);
    c.backoff = vec![Duration::from_millis(20), Duration::from_millis(50)];
    c.max_deliver = 50;
    c.batch_size = 200;
    c.synchronous_full = false;
    c
}

/// What the recording handler should do with a delivery.
pub(crate) type Decide = dyn Fn(&Event, &Delivery) -> Option<Failure> + Send + Sync;

/// A handler whose side effect is a row per processed event in `effects` (no unique key, so a
/// second run would show), failing when `decide` says so.
pub(crate) struct Recorder {
    group: String,
    decide: Arc<Decide>,
}

impl Recorder {
    pub(crate) fn new(group: &str) -> Recorder {
        Recorder::failing(group, |_, _| None)
    }

    pub(crate) fn failing(
        group: &str,
        decide: impl Fn(&Event, &Delivery) -> Option<Failure> + Send + Sync + 'static,
    ) -> Recorder {
        Recorder {
            group: group.into(),
            decide: Arc::new(decide),
        }
    }
}

impl Handler for Recorder {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS effects (
                 seq        INTEGER PRIMARY KEY AUTOINCREMENT,
                 grp        TEXT NOT NULL,
                 event_id   TEXT NOT NULL,
                 topic      TEXT NOT NULL,
                 order_id   TEXT,
                 delivered  INTEGER NOT NULL,
                 payload    TEXT NOT NULL,
                 headers    TEXT NOT NULL,
                 at_ms      INTEGER NOT NULL
             )",
        )
    }

    async fn handle(
        &self,
        event: &Event,
        delivery: &Delivery,
        tx: &mut HandlerTx<'_>,
    ) -> Result<(), Failure> {
        if let Some(failure) = (self.decide)(event, delivery) {
            return Err(failure);
        }
        let headers: BTreeMap<&str, &str> = delivery
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        tx.execute(
            "INSERT INTO effects (grp, event_id, topic, order_id, delivered, payload, headers, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![
                self.group,
                event.event_id().to_string(),
                event.topic_name(),
                event.order_id().map(|id| id.to_string()),
                delivery.delivered as i64,
                String::from_utf8(delivery.payload.to_vec()).unwrap(),
                serde_json::to_string(&headers).unwrap(),
                chrono::Utc::now().timestamp_millis(),
            ],
        )?;
        Ok(())
    }
}

/// A group running in the background.
pub(crate) struct Running {
    shutdown: Shutdown,
    handle: JoinHandle<Result<(), ConsumerError>>,
    pub(crate) stats: Arc<GroupStats>,
}

impl Running {
    pub(crate) fn start<H: Handler>(
        js: &jetstream::Context,
        config: GroupConfig,
        handler: H,
    ) -> Running {
        Running::of(Group::new(js.clone(), config, handler).unwrap())
    }

    /// Runs `group` in the background.
    pub(crate) fn of<H: Handler>(group: Group<H>) -> Running {
        let stats = group.stats();
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(group.run(shutdown.signal()));
        Running {
            shutdown,
            handle,
            stats,
        }
    }

    /// A [`Recorder`] group named `name` with the test settings, started.
    pub(crate) fn recording(
        js: &jetstream::Context,
        name: &str,
        topics: &[Topic],
        db: &Path,
    ) -> Running {
        Running::start(js, group_config(name, topics, db), Recorder::new(name))
    }

    /// Whether the group's `run` has returned (by itself: it was not stopped).
    pub(crate) fn ended(&self) -> bool {
        self.handle.is_finished()
    }

    /// Stops gracefully: the batch in flight is committed and acknowledged.
    pub(crate) async fn stop(self) -> GroupStatsSnapshot {
        self.shutdown.trigger();
        self.handle.await.unwrap().unwrap();
        self.stats.snapshot()
    }

    /// Stops abruptly, as a crash would: nothing in flight is committed or acknowledged.
    pub(crate) async fn kill(self) -> GroupStatsSnapshot {
        self.handle.abort();
        let _ = self.handle.await;
        self.stats.snapshot()
    }
}

pub(crate) fn read_only(db: &Path) -> rusqlite::Connection {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

/// event_id → how many effect rows it has, for one group.
pub(crate) fn effects(db: &Path, group: &str) -> HashMap<String, u64> {
    if !db.exists() {
        return HashMap::new();
    }
    let conn = read_only(db);
    let Ok(mut stmt) =
        conn.prepare("SELECT event_id, count(*) FROM effects WHERE grp = ?1 GROUP BY event_id")
    else {
        return HashMap::new();
    };
    stmt.query_map([group], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Waits until the group has an effect for every expected event.
pub(crate) async fn processed_all(db: &Path, group: &str, expected: &HashSet<String>) {
    let start = Instant::now();
    loop {
        let done = effects(db, group);
        if expected.iter().all(|id| done.contains_key(id)) {
            return;
        }
        let missing = expected.iter().filter(|id| !done.contains_key(*id)).count();
        assert!(
            start.elapsed() < PATIENCE,
            "{group}: {missing} of {} events never processed",
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The guarantee every test ends with: the group processed exactly the expected events, each
/// once, and nothing else.
pub(crate) fn exactly_once(db: &Path, group: &str, expected: &HashSet<String>) {
    let done = effects(db, group);
    let twice: Vec<_> = done.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "{group}: side effects repeated: {twice:?}"
    );
    let got: HashSet<String> = done.into_keys().collect();
    assert_eq!(got.len(), expected.len(), "{group}: processed count");
    assert!(
        got == *expected,
        "{group}: processed events differ from the 201s' events"
    );
}

/// The events of `topics` that the orders answered with 201 caused, from the outbox.
pub(crate) fn expected_events(
    app: &TestApp,
    orders: &HashSet<String>,
    topics: &[Topic],
) -> HashSet<String> {
    let names: HashSet<&str> = topics.iter().map(|t| t.as_str()).collect();
    app.outbox()
        .into_iter()
        .filter(|r| names.contains(r.topic.as_str()))
        .filter(|r| {
            r.payload["data"]["order_id"]
                .as_str()
                .is_some_and(|id| orders.contains(id))
        })
        .map(|r| r.event_id)
        .collect()
}

/// Creates `n` orders from `clients` concurrent HTTP clients; every one must get a 201.
pub(crate) async fn create_orders(app: &TestApp, n: usize, clients: usize) -> HashSet<String> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = reqwest::Client::new();
        let url = app.url("/api/v1/orders");
        let token = app.token(User::new(Role::Customer));
        let count = n / clients + usize::from(c < n % clients);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&simple_order())
                    .send()
                    .await
                    .unwrap();
                let (status, body) = into_json(response).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                ids.push(body["order_id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    assert_eq!(ids.len(), n);
    ids
}

pub(crate) fn report(test: &str, s: GroupStatsSnapshot, started: Instant) {
    eprintln!(
        "{test}: {} deliveries, {} processed, {} duplicate deliveries, {} redeliveries, {} retried, {} dead letters, {:.1}s",
        s.deliveries,
        s.processed,
        s.duplicates,
        s.redeliveries,
        s.retried,
        s.dead_lettered,
        started.elapsed().as_secs_f64()
    );
}

pub(crate) fn add(a: GroupStatsSnapshot, b: GroupStatsSnapshot) -> GroupStatsSnapshot {
    GroupStatsSnapshot {
        deliveries: a.deliveries + b.deliveries,
        redeliveries: a.redeliveries + b.redeliveries,
        processed: a.processed + b.processed,
        duplicates: a.duplicates + b.duplicates,
        retried: a.retried + b.retried,
        dead_lettered: a.dead_lettered + b.dead_lettered,
    }
}

#[tokio::test]
async fn a_hundred_events_arrive_with_body_and_headers_intact() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created, Topic::Audit];
    let running = Running::recording(&js, "intact", &topics, &db);

    let orders = create_orders(&app, 50, 5).await;
    let expected = expected_events(&app, &orders, &topics);
    assert_eq!(expected.len(), 100);
    processed_all(&db, "intact", &expected).await;
    let stats = running.stop().await;
    exactly_once(&db, "intact", &expected);

    let rows: HashMap<String, OutboxRow> = app
        .outbox()
        .into_iter()
        .map(|r| (r.event_id.clone(), r))
        .collect();
    let conn = read_only(&db);
    let mut stmt = conn
        .prepare("SELECT event_id, topic, payload, headers FROM effects")
        .unwrap();
    let seen: Vec<(String, String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (event_id, topic, payload, headers) in seen {
        let row = &rows[&event_id];
        assert_eq!(topic, row.topic);
        assert_eq!(payload, row.raw, "the body arrives byte for byte");
        let headers: Value = serde_json::from_str(&headers).unwrap();
        assert_eq!(
            headers, row.headers,
            "the headers arrive as the outbox wrote them"
        );
        assert_eq!(headers["Nats-Msg-Id"], event_id.as_str());
    }
    report("intact", stats, started);
}

#[tokio::test]
async fn five_thousand_orders_from_fifty_clients_are_all_processed_and_lag_shows() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let config = group_config("bulk", &topics, &db);

    // The group exists (its consumer is created) but is not running while the orders come in.
    let first = Running::start(&js, config.clone(), Recorder::new("bulk"));
    let start = Instant::now();
    while lag::rows(&js, &Topics::embedded(), Some("bulk"))
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            start.elapsed() < PATIENCE,
            "the group never set up its consumers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = first.stop().await;

    let orders = create_orders(&app, 5000, 50).await;
    let expected = expected_events(&app, &orders, &topics);
    assert_eq!(expected.len(), 5000);
    eprintln!(
        "bulk: 5000 orders answered 201 after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Over 1,000 messages behind: a warning in /ready and a gauge in /metrics.
    let start = Instant::now();
    loop {
        let ready = app.readiness().await;
        let warned = ready["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("consumer lag: group bulk "));
        if warned {
            assert_eq!(
                ready["status"], "ready",
                "warnings do not take the service out: {ready}"
            );
            assert_eq!(ready["checks"]["consumers"]["status"], "warning");
            break;
        }
        assert!(start.elapsed() < PATIENCE, "no lag warning: {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "consumer_lag_messages{group=\"bulk\",topic=\"order.created\",consumer=\"bulk\"}"
        ) && !l.ends_with(" 0")),
        "{metrics}"
    );

    let running = Running::start(&js, config, Recorder::new("bulk"));
    processed_all(&db, "bulk", &expected).await;
    let stats = add(first, running.stop().await);
    exactly_once(&db, "bulk", &expected);
    let row = lag::rows(&js, &Topics::embedded(), Some("bulk"))
        .await
        .unwrap();
    let created = row.iter().find(|r| r.topic == "order.created").unwrap();
    assert_eq!((created.pending, created.ack_pending), (0, 0));
    report("bulk", stats, started);
}

#[tokio::test]
async fn a_handler_failing_transiently_twice_processes_the_event_once_on_the_third_delivery() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let running = Running::start(
        &js,
        group_config("twice", &topics, &db),
        Recorder::failing("twice", |_, delivery| {
            (delivery.delivered < 3).then(|| Failure::transient("not yet"))
        }),
    );
    let orders = create_orders(&app, 1, 1).await;
    let expected = expected_events(&app, &orders, &topics);
    processed_all(&db, "twice", &expected).await;
    let stats = running.stop().await;
    exactly_once(&db, "twice", &expected);
    let delivered: i64 = read_only(&db)
        .query_row("SELECT delivered FROM effects", [], |r| r.get(0))
        .unwrap();
    assert_eq!(delivered, 3, "processed on the third delivery");
    assert_eq!(
        (stats.retried, stats.processed, stats.deliveries),
        (2, 1, 3)
    );
    report("twice", stats, started);
}

/// A handler that never finishes the first delivery, and tells when it has it.
pub(crate) struct Stall {
    pub(crate) got: tokio::sync::mpsc::UnboundedSender<i64>,
}

impl Handler for Stall {
    type Prepared = ();

    async fn handle(&self, _: &Event, _: &Delivery, _: &mut HandlerTx<'_>) -> Result<(), Failure> {
        let _ = self.got.send(chrono::Utc::now().timestamp_millis());
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test]
async fn an_unacknowledged_message_is_not_redelivered_before_ack_wait() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let ack_wait = Duration::from_secs(2);
    let mut config = group_config("ackwait", &topics, &db);
    config.ack_wait = ack_wait;

    let (got, mut first) = tokio::sync::mpsc::unbounded_channel();
    let stalled = Running::start(&js, config.clone(), Stall { got });
    let orders = create_orders(&app, 1, 1).await;
    let expected = expected_events(&app, &orders, &topics);
    let delivered_at = tokio::time::timeout(PATIENCE, first.recv())
        .await
        .unwrap()
        .unwrap();
    // The worker dies holding the message: no ack, no nak.
    let stalled = stalled.kill().await;

    let running = Running::start(&js, config, Recorder::new("ackwait"));
    processed_all(&db, "ackwait", &expected).await;
    let stats = running.stop().await;
    exactly_once(&db, "ackwait", &expected);
    let (delivered, at_ms): (i64, i64) = read_only(&db)
        .query_row("SELECT delivered, at_ms FROM effects", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(delivered, 2, "the second delivery processed it");
    let waited = Duration::from_millis((at_ms - delivered_at).max(0) as u64);
    // The broker may not redeliver before ack_wait; the margin covers the first delivery's
    // way from the broker to the handler.
    assert!(
        waited + Duration::from_millis(200) >= ack_wait,
        "redelivered {waited:?} after the first delivery, before ack_wait {ack_wait:?}"
    );
    eprintln!(
        "ackwait: redelivered {waited:?} after the unacknowledged delivery (ack_wait {ack_wait:?})"
    );
    report("ackwait", add(stalled, stats), started);
}

#[tokio::test]
async fn a_consumer_stopped_and_restarted_five_times_processes_five_thousand_events_once() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let app = Arc::new(app);
    let topics = [Topic::Created, Topic::Audit];
    let mut config = group_config("restarts", &topics, &db);
    config.batch_size = 50;
    // What a crashed run held comes back after ack_wait.
    config.ack_wait = Duration::from_secs(2);

    let producer = {
        let app = app.clone();
        tokio::spawn(async move { create_orders(&app, 2500, 25).await })
    };
    let mut total = GroupStatsSnapshot::default();
    let mut running = Running::start(&js, config.clone(), Recorder::new("restarts"));
    for restart in 1..=5u64 {
        let start = Instant::now();
        while (effects(&db, "restarts").len() as u64) < restart * 800 {
            assert!(start.elapsed() < PATIENCE, "stuck before restart {restart}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Every other stop is a crash: work in flight is neither committed nor acknowledged.
        let stats = if restart % 2 == 0 {
            running.kill().await
        } else {
            running.stop().await
        };
        total = add(total, stats);
        running = Running::start(&js, config.clone(), Recorder::new("restarts"));
    }
    let orders = producer.await.unwrap();
    let expected = expected_events(&app, &orders, &topics);
    assert_eq!(expected.len(), 5000);
    processed_all(&db, "restarts", &expected).await;
    total = add(total, running.stop().await);
    exactly_once(&db, "restarts", &expected);
    report("restarts", total, started);
}

#[tokio::test]
async fn two_groups_each_get_every_event_and_a_later_group_gets_the_old_ones() {
    let (started, _nats, app, js, dir, _) = setup(|_| {}).await;
    // One file for all three: the processed-events key is (group, event_id).
    let db = dir.path().join("consumers.db");
    let topics = [Topic::Created, Topic::Audit];
    let a = Running::recording(&js, "group-a", &topics, &db);
    let b = Running::recording(&js, "group-b", &topics, &db);
    let orders = create_orders(&app, 200, 10).await;
    let expected = expected_events(&app, &orders, &topics);
    assert_eq!(expected.len(), 400);
    processed_all(&db, "group-a", &expected).await;
    processed_all(&db, "group-b", &expected).await;
    let a = a.stop().await;
    let b = b.stop().await;

    let late = Running::recording(&js, "group-late", &topics, &db);
    processed_all(&db, "group-late", &expected).await;
    let late = late.stop().await;

    // group-a's consumers are deleted and created again: every event arrives a second time, and
    // the processed-events table turns each into a duplicate, not a second effect.
    for stream in ["ORDER_CREATED", "ORDER_AUDIT"] {
        js.get_stream(stream)
            .await
            .unwrap()
            .delete_consumer("group-a")
            .await
            .unwrap();
    }
    let again = Running::recording(&js, "group-a", &topics, &db);
    let start = Instant::now();
    while again.stats.snapshot().duplicates < expected.len() as u64 {
        assert!(start.elapsed() < PATIENCE, "{:?}", again.stats.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = again.stop().await;
    assert_eq!(again.processed, 0, "nothing processed twice: {again:?}");
    for group in ["group-a", "group-b", "group-late"] {
        exactly_once(&db, group, &expected);
    }
    report("group-a again", again, started);
    report("group-a", a, started);
    report("group-b", b, started);
    report("group-late", late, started);
}

#[tokio::test]
async fn the_broker_restarted_at_a_third_and_at_half_of_ten_thousand_events_loses_nothing() {
    let (started, mut nats, app, js, _dir, db) = setup(|_| {}).await;
    let app = Arc::new(app);
    let topics = [Topic::Created, Topic::Audit];
    let running = Running::recording(&js, "outage", &topics, &db);
    let producer = {
        let app = app.clone();
        tokio::spawn(async move { create_orders(&app, 5000, 50).await })
    };
    for (at, label) in [(10_000 / 3, "a third"), (10_000 / 2, "half")] {
        let start = Instant::now();
        while effects(&db, "outage").len() < at {
            assert!(
                start.elapsed() < PATIENCE,
                "stuck before restarting the broker at {label}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        nats.restart().await;
        eprintln!(
            "outage: broker restarted at {label} ({} processed)",
            effects(&db, "outage").len()
        );
    }
    let orders = producer.await.unwrap();
    let expected = expected_events(&app, &orders, &topics);
    assert_eq!(expected.len(), 10_000);
    processed_all(&db, "outage", &expected).await;
    let stats = running.stop().await;
    exactly_once(&db, "outage", &expected);
    report("outage", stats, started);
}

/// Publishes `body` on `order.created.<key>` with a fresh message id, as another producer might.
pub(crate) async fn publish_raw(js: &jetstream::Context, key: &str, body: String) {
    let message = OutboxMessage {
        topic: "order.created".into(),
        key: key.into(),
        payload: body.into(),
        headers: vec![
            ("Nats-Msg-Id".into(), Uuid::now_v7().to_string()),
            ("Event-Type".into(), "order.created".into()),
            ("X-Probe".into(), "kept".into()),
        ],
    };
    bus::publish(js, &message, Duration::from_secs(5))
        .await
        .unwrap();
}
