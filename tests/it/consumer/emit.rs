//! Handlers that publish, against a real broker and real SQLite files: what a group's handler
//! emits is published once when its effects commit, never when they roll back, never again when
//! its event comes again, once after a crash between the commit and the publish, and per key in
//! the order it was emitted.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use order_service::auth::Role;
use order_service::bus::Topics;
use order_service::consumer::BreakerState;
use order_service::consumer::emit::derived_id;
use order_service::consumer::{
    Delivery, Emits, Event, Failure, Group, Handled, Handler, HandlerTx,
};
use order_service::domain::Topic;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{TestApp, User, order_body, relaying_app, until};
use crate::consumer::{Running, group_config};
use crate::nats::NatsServer;

/// The group that emits.
pub(crate) const GROUP: &str = "picking-service";
/// What it emits to, and that topic's stream.
pub(crate) const TOPIC: &str = "picking.line_queued";
const STREAM: &str = "PICKING_LINE_QUEUED";

/// The emitted topic's table: two partitions, so per-key order is per subject partition too.
fn emitted_topics() -> Topics {
    Topics::from_json(&format!(
        r#"[{{"topic": "{TOPIC}", "partitions": 2, "replication": 1, "retention": "1d"}}]"#
    ))
    .unwrap()
}

/// The group's outbox settings: small batches, so events cross several, and a fallback poll of
/// an hour, so that only the wake-up after each commit gets rows published within the test.
pub(crate) fn emits() -> Emits {
    let mut emits = Emits::new(emitted_topics());
    emits.relay.publish_batch = 7;
    emits.relay.polling_interval = Duration::from_secs(3600);
    emits
}

/// What the picking handler does with an order's `order.created` besides emitting.
type Decide = dyn Fn(&Event, &Delivery) -> Option<Failure> + Send + Sync;

/// Queues one picking line per item of each created order: a row in `lines` and an emitted
/// event per item, keyed by the order, numbered in order. Then fails when `decide` says so.
pub(crate) struct Picking {
    decide: Arc<Decide>,
}

impl Picking {
    pub(crate) fn new() -> Picking {
        Picking::failing(|_, _| None)
    }

    fn failing(
        decide: impl Fn(&Event, &Delivery) -> Option<Failure> + Send + Sync + 'static,
    ) -> Picking {
        Picking {
            decide: Arc::new(decide),
        }
    }
}

impl Handler for Picking {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS lines (order_id TEXT NOT NULL, line INTEGER NOT NULL)",
        )
    }

    async fn handle(&self, event: &Event, delivery: &Delivery, tx: &mut HandlerTx<'_>) -> Handled {
        let Event::Created(e) = event else {
            return Ok(());
        };
        let order = e.data.order_id.to_string();
        for (line, item) in e.data.items.iter().enumerate() {
            tx.execute(
                "INSERT INTO lines VALUES (?1, ?2)",
                rusqlite::params![order, line as i64],
            )?;
            tx.emit(
                TOPIC,
                &order,
                &json!({"order_id": order, "line": line, "product_id": item.product_id}),
                &[("Picking-Line", &line.to_string())],
            )?;
        }
        match (self.decide)(event, delivery) {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

/// A broker, the relaying service, JetStream, and a folder for the group's database.
async fn setup() -> (NatsServer, TestApp, jetstream::Context, tempfile::TempDir) {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let js = nats.jetstream().await;
    (nats, app, js, tempfile::tempdir().unwrap())
}

/// The emitting group on `db`, started.
pub(crate) fn start(js: &jetstream::Context, db: &Path, handler: Picking, emits: Emits) -> Running {
    let mut config = group_config(GROUP, &[Topic::Created], db);
    config.batch_size = 16;
    Running::of(
        Group::new(js.clone(), config, handler)
            .unwrap()
            .emitting(emits),
    )
}

/// Places an order of `lines` new products; returns its id.
pub(crate) async fn order(app: &TestApp, lines: usize) -> String {
    let products: Vec<Uuid> = (0..lines).map(|_| Uuid::now_v7()).collect();
    let order = app
        .create_order(User::new(Role::Customer), order_body(&products))
        .await;
    order["order_id"].as_str().unwrap().to_owned()
}

fn query<T: rusqlite::types::FromSql>(db: &Path, sql: &str) -> T {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The group's outbox rows by status; none before the group has made its database.
fn outbox(db: &Path) -> BTreeMap<String, i64> {
    if !db.exists() {
        return BTreeMap::new();
    }
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let Ok(mut stmt) =
        conn.prepare("SELECT status, count(*) FROM order_events_outbox GROUP BY status")
    else {
        return BTreeMap::new();
    };
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Waits until the group's outbox has `n` rows, all published.
pub(crate) async fn all_published(db: &Path, n: i64) {
    let want = BTreeMap::from([("published".to_owned(), n)]);
    until(&format!("{n} emitted rows published"), async || {
        outbox(db) == want
    })
    .await;
}

/// One stored message of the emitted stream.
#[derive(Debug)]
pub(crate) struct Stored {
    subject: String,
    headers: HashMap<String, String>,
    body: Value,
}

/// Every message of the emitted stream, in stream order.
pub(crate) async fn stored(js: &jetstream::Context) -> Vec<Stored> {
    let Ok(mut stream) = js.get_stream(STREAM).await else {
        return Vec::new();
    };
    let state = stream.info().await.unwrap().state.clone();
    let mut all = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let m = stream.get_raw_message(seq).await.unwrap();
        let headers = m
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.first().unwrap().to_string()))
            .collect();
        all.push(Stored {
            subject: m.subject.to_string(),
            headers,
            body: serde_json::from_slice(&m.payload).unwrap(),
        });
    }
    all
}

/// The incoming `order.created` event of `order`, from the service's outbox.
fn created_event(app: &TestApp, order: &str) -> Value {
    app.events_of(order)
        .into_iter()
        .find(|r| r.topic == "order.created")
        .unwrap()
        .payload
}

/// Each order's lines in stream order: every emitted event exactly once, per key in emit order.
fn lines_per_order(messages: &[Stored]) -> HashMap<String, Vec<u64>> {
    let mut lines: HashMap<String, Vec<u64>> = HashMap::new();
    for m in messages {
        let order = m.body["data"]["order_id"].as_str().unwrap().to_owned();
        assert!(
            m.subject.ends_with(&order),
            "{} keyed by its order",
            m.subject
        );
        lines
            .entry(order)
            .or_default()
            .push(m.body["data"]["line"].as_u64().unwrap());
    }
    lines
}

#[tokio::test]
async fn emitted_events_are_published_once_per_key_in_emit_order_and_not_again_on_redelivery() {
    let (_nats, app, js, dir) = setup().await;
    let db = dir.path().join("picking.db");
    let first = emits();
    let status = first.status();
    let running = start(&js, &db, Picking::new(), first);
    // The group's relay has made a pass and sleeps: only a wake-up after a commit gets the rows
    // below published before its hour of polling is up.
    until("the group's relay idle", async || {
        status.snapshot().relay_last_run.is_some()
    })
    .await;
    let mut orders = Vec::new();
    for i in 0..12 {
        orders.push(order(&app, 1 + i % 5).await);
    }
    let total: i64 = (0..12).map(|i| 1 + i % 5).sum();
    all_published(&db, total).await;

    let messages = stored(&js).await;
    assert_eq!(
        messages.len() as i64,
        total,
        "each emitted event stored once"
    );
    let lines = lines_per_order(&messages);
    for (i, order) in orders.iter().enumerate() {
        let want: Vec<u64> = (0..(1 + i % 5) as u64).collect();
        assert_eq!(lines[order], want, "order {order}: its lines in emit order");
    }
    // The envelope: derived ids, the group as source, the incoming event as cause.
    for m in &messages {
        let order = m.body["data"]["order_id"].as_str().unwrap();
        let line = m.body["data"]["line"].as_u64().unwrap() as u32;
        let cause = created_event(&app, order);
        let cause_id: Uuid = cause["event_id"].as_str().unwrap().parse().unwrap();
        let id = derived_id(GROUP, cause_id, line).to_string();
        assert_eq!(m.body["event_id"], id.as_str());
        assert_eq!(m.headers["Nats-Msg-Id"], id);
        assert_eq!(m.body["event_type"], TOPIC);
        assert_eq!(m.body["source"], GROUP);
        assert_eq!(m.body["metadata"]["causation_id"], cause["event_id"]);
        assert_eq!(
            m.body["metadata"]["correlation_id"],
            cause["metadata"]["correlation_id"]
        );
        assert_eq!(m.body["metadata"]["user_id"], cause["metadata"]["user_id"]);
        assert_eq!(m.headers["Picking-Line"], line.to_string());
        assert_eq!(m.subject.split('.').count(), 4, "stored with its partition");
    }
    running.stop().await;

    // Every order.created again: the group's consumer is deleted and made anew on the same file.
    js.get_stream("ORDER_CREATED")
        .await
        .unwrap()
        .delete_consumer(GROUP)
        .await
        .unwrap();
    let again = start(&js, &db, Picking::new(), emits());
    let stats = again.stats.clone();
    until("every order.created delivered again", async || {
        stats.snapshot().duplicates >= orders.len() as u64
    })
    .await;
    let after = again.stop().await;
    assert_eq!(after.processed, 0, "{after:?}");
    assert_eq!(
        outbox(&db),
        BTreeMap::from([("published".to_owned(), total)])
    );
    assert_eq!(stored(&js).await.len() as i64, total, "nothing new emitted");
    let lines: i64 = query(&db, "SELECT count(*) FROM lines");
    assert_eq!(lines, total);
}

#[tokio::test]
async fn a_handler_that_emits_then_fails_emits_nothing() {
    let (_nats, app, js, dir) = setup().await;
    let db = dir.path().join("picking.db");
    // Orders of three lines fail for good after emitting; orders of two lines fail once, after
    // emitting, and succeed when delivered again; orders of one line succeed.
    let picking = Picking::failing(|event, delivery| {
        let Event::Created(e) = event else {
            return None;
        };
        match e.data.items.len() {
            3 => Some(Failure::permanent("this order cannot be picked")),
            2 if delivery.delivered == 1 => Some(Failure::transient("the picker is busy")),
            _ => None,
        }
    });
    let running = start(&js, &db, picking, emits());
    let refused = order(&app, 3).await;
    let retried = order(&app, 2).await;
    let fine = order(&app, 1).await;
    all_published(&db, 3).await;
    let stats = running.stats.clone();
    until("the refused order dead-lettered", async || {
        stats.snapshot().dead_lettered == 1
    })
    .await;
    let after = running.stop().await;
    assert_eq!(after.processed, 2, "{after:?}");

    let lines = lines_per_order(&stored(&js).await);
    assert_eq!(
        lines.get(&refused),
        None,
        "the failed handler's events were not published"
    );
    assert_eq!(
        lines[&retried],
        vec![0, 1],
        "the retried handler's events, once"
    );
    assert_eq!(lines[&fine], vec![0]);
    assert_eq!(lines.len(), 2);
    let refused_lines: i64 = query(
        &db,
        &format!("SELECT count(*) FROM lines WHERE order_id = '{refused}'"),
    );
    assert_eq!(
        refused_lines, 0,
        "its effects were rolled back with its events"
    );
}

#[tokio::test]
async fn a_group_killed_between_commit_and_publish_publishes_once_after_restart() {
    let (_nats, app, js, dir) = setup().await;
    let db = dir.path().join("picking.db");
    // The first run's relay is held before it publishes anything: every commit lands, no publish.
    let first = emits();
    let status = first.status();
    let held = status.pause_publishing().await;
    let running = start(&js, &db, Picking::new(), first);
    let mut orders = Vec::new();
    for _ in 0..4 {
        orders.push(order(&app, 2).await);
    }
    until("the four orders processed and committed", async || {
        outbox(&db) == BTreeMap::from([("pending".to_owned(), 8)])
    })
    .await;
    assert!(stored(&js).await.is_empty(), "nothing published yet");
    // The crash: the group's tasks end where they are; only what was committed remains.
    running.kill().await;
    drop(held);

    // Polling, for the row set back below without a commit of the group's.
    let mut second = emits();
    second.relay.polling_interval = Duration::from_millis(100);
    let restarted = start(&js, &db, Picking::new(), second);
    all_published(&db, 8).await;
    let lines = lines_per_order(&stored(&js).await);
    for order in &orders {
        assert_eq!(
            lines[order],
            vec![0, 1],
            "order {order}: published once, in order"
        );
    }

    // A crash after the broker stored a row but before it was marked: the row is pending again,
    // is published again, and JetStream's duplicate window drops the second copy by its id.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute(
        "UPDATE order_events_outbox SET status = 'pending', stream = NULL, stream_seq = NULL
         WHERE id IN (SELECT min(id) FROM order_events_outbox)",
        [],
    )
    .unwrap();
    all_published(&db, 8).await;
    assert_eq!(
        stored(&js).await.len(),
        8,
        "the second publish was a duplicate"
    );
    let after = restarted.stop().await;
    assert_eq!(after.processed, 0, "nothing ran twice: {after:?}");
}

/// Emits one event per created order; while `full` is set, the group's file is capped at its
/// size just for the emit, which is made large enough to need new pages: the disk is full.
struct FullOnEmit {
    full: Arc<AtomicBool>,
}

impl Handler for FullOnEmit {
    type Prepared = ();

    async fn handle(&self, event: &Event, _: &Delivery, tx: &mut HandlerTx<'_>) -> Handled {
        let Event::Created(e) = event else {
            return Ok(());
        };
        let order = e.data.order_id.to_string();
        if !self.full.load(Ordering::Relaxed) {
            tx.emit(TOPIC, &order, &json!({"order_id": order, "line": 0}), &[])?;
            return Ok(());
        }
        let conn = tx.conn();
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
            r.get::<_, i64>(0)
        })?;
        let pad = "x".repeat(300_000);
        let emitted = tx.emit(TOPIC, &order, &json!({"order_id": order, "pad": pad}), &[]);
        tx.conn()
            .query_row("PRAGMA max_page_count = 1073741823", [], |r| {
                r.get::<_, i64>(0)
            })?;
        emitted.map(|_| ())
    }
}

#[tokio::test]
async fn a_full_disk_while_emitting_holds_the_messages_instead_of_using_their_deliveries() {
    let (_nats, app, js, dir) = setup().await;
    let db = dir.path().join("picking.db");
    let full = Arc::new(AtomicBool::new(true));
    let mut config = group_config(GROUP, &[Topic::Created], &db);
    config.max_deliver = 2;
    config.ack_wait = Duration::from_secs(1);
    let handler = FullOnEmit { full: full.clone() };
    let running = Running::of(
        Group::new(js.clone(), config, handler)
            .unwrap()
            .emitting(emits()),
    );
    for _ in 0..3 {
        order(&app, 1).await;
    }
    let stats = running.stats.clone();
    // The group's own disk, not the events: the breaker opens and the messages wait.
    until("the breaker opens", async || {
        stats.breaker.state() != BreakerState::Closed
    })
    .await;
    // Long enough for both deliveries and their backoff to be used up, were they counted.
    tokio::time::sleep(Duration::from_secs(4)).await;
    full.store(false, Ordering::Relaxed);
    all_published(&db, 3).await;
    let after = running.stop().await;
    assert_eq!(
        (after.processed, after.dead_lettered, after.retried),
        (3, 0, 0),
        "{after:?}"
    );
    let letters = order_service::consumer::dlq::list(&js, GROUP, None)
        .await
        .unwrap();
    assert!(letters.is_empty(), "{letters:?}");
}
