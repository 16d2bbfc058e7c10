//! The relay's atomic batches and how it heals, against the real broker: batches with their own
//! sequences, the fall-back when a batch holds a duplicate, a stream without atomic batches, a
//! stream deleted under a live connection, unreadable rows, and retries and requeues that come due
//! behind a running pass.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use order_service::auth::Role;
use order_service::bus::{self, OutboxMessage, Topics};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{
    TestApp, User, metric, ready, relaying_app, run_cli, simple_order, spawn_app_with,
    stream_config, table_without_chat_links, until,
};
use crate::nats::NatsServer;
use crate::relay::{counts, drained, every_event_once, stored};

/// Every row's recorded stream and sequence, by event id.
fn recorded(app: &TestApp) -> HashMap<String, (Option<String>, Option<u64>, String)> {
    let conn = app.db();
    let mut stmt = conn
        .prepare("SELECT event_id, stream, stream_seq, status FROM order_events_outbox")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (
                r.get(1)?,
                r.get::<_, Option<i64>>(2)?.map(|s| s as u64),
                r.get(3)?,
            ),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Creates `n` orders as one customer, one after another.
async fn create_orders(app: &TestApp, n: usize) -> Vec<String> {
    let customer = User::new(Role::Customer);
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            app.create_order(customer, simple_order()).await["order_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    ids
}

#[tokio::test]
async fn a_backlog_is_stored_as_atomic_batches_each_row_with_its_own_sequence() {
    let mut nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let js = nats.jetstream().await;
    for topic in &Topics::embedded() {
        let mut stream = js.get_stream(topic.stream_name()).await.unwrap();
        let info = stream.info().await.unwrap();
        assert!(
            info.config.allow_atomic_publish,
            "{} allows atomic batches",
            topic.name
        );
    }

    // A backlog built while the broker is away goes out as one batch per stream.
    nats.stop().await;
    create_orders(&app, 60).await;
    nats.start_again().await;
    drained(&app).await;

    let js = nats.jetstream().await;
    let messages = every_event_once(&app, &js).await;
    let created: Vec<_> = messages
        .iter()
        .filter(|m| m.stream == "ORDER_CREATED")
        .collect();
    assert!(
        created
            .iter()
            .any(|m| m.headers.get("Nats-Batch-Sequence").map(String::as_str) == Some("60")),
        "the 60 order.created events were stored as one batch"
    );
    let rows = recorded(&app);
    for m in &messages {
        let (stream, seq, status) = &rows[&m.msg_id];
        assert_eq!(status, "published");
        assert_eq!(
            (stream.as_deref(), *seq),
            (Some(m.stream.as_str()), Some(m.sequence)),
            "each row records its own sequence, computed from the batch's PubAck"
        );
    }
}

#[tokio::test]
async fn a_batch_holding_an_event_the_stream_already_has_falls_back_and_stores_it_once() {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    bus::reconcile(&js, &Topics::embedded(), Duration::from_secs(120))
        .await
        .unwrap();
    // Orders taken while nothing relays; one of their events reaches the stream another way
    // (as after a relay that published it and died before marking it).
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let writer = spawn_app_with({
        let db = db.clone();
        move |c| c.database_path = db
    })
    .await;
    create_orders(&writer, 10).await;
    let early = writer
        .outbox()
        .into_iter()
        .find(|r| r.topic == "order.created")
        .unwrap();
    let headers: Vec<(String, String)> = early
        .headers
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let first = bus::publish(
        &js,
        &OutboxMessage {
            topic: early.topic.clone(),
            key: early.key.clone(),
            payload: early.raw.clone().into(),
            headers,
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    writer.stop().await;

    let app = relaying_app(&nats, move |c| c.database_path = db).await;
    drained(&app).await;
    every_event_once(&app, &js).await;
    let rows = recorded(&app);
    assert_eq!(
        rows[&early.event_id].1,
        Some(first.sequence),
        "the duplicate's row records the sequence the stream stored it at"
    );
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, "outbox_duplicate_acks_total"), Some(1.0));
}

#[tokio::test]
async fn a_stream_without_atomic_batches_is_published_one_by_one_and_said_so() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let js = nats.jetstream().await;
    let mut config = stream_config(&js, "ORDER_CREATED").await;
    config.allow_atomic_publish = false;
    js.update_stream(&config).await.unwrap();

    create_orders(&app, 5).await;
    drained(&app).await;
    every_event_once(&app, &js).await;
    let ready = ready(&app).await;
    assert_eq!(
        ready["checks"]["relay"]["streams_one_by_one"],
        json!(["ORDER_CREATED"]),
        "{ready}"
    );
    let diff = run_cli(&nats, &["streams", "diff"]);
    assert!(
        diff.lines()
            .any(|l| l.contains("ORDER_CREATED") && l.contains("allow_atomic")),
        "{diff}"
    );
}

#[tokio::test]
async fn a_stream_deleted_under_a_live_connection_comes_back_and_no_row_goes_dead() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |c| c.event_outbox_max_retries = 0).await;
    let js = nats.jetstream().await;
    create_orders(&app, 3).await;
    drained(&app).await;
    js.delete_stream("ORDER_CREATED").await.unwrap();
    js.delete_stream("ORDER_AUDIT").await.unwrap();

    create_orders(&app, 5).await;
    drained(&app).await;
    let (_, published, dead) = counts(&app);
    assert_eq!(
        (published, dead),
        (16, 0),
        "no row went dead for a missing stream"
    );
    let messages = stored(&js).await;
    let created = messages
        .iter()
        .filter(|m| m.stream == "ORDER_CREATED")
        .count();
    assert_eq!(
        created, 8,
        "the recreated stream holds the events it had acknowledged (put back by the repair) and \
         those published after"
    );
}

#[tokio::test]
async fn an_unreadable_row_is_parked_as_dead_and_the_relay_goes_on() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let key = Uuid::now_v7().to_string();
    {
        let conn = rusqlite::Connection::open(&app.db_path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        for headers in ["{not json", "{\"Nats-Msg-Id\": \"later\"}"] {
            conn.execute(
                "INSERT INTO order_events_outbox (event_id, topic, subject_key, payload, headers, created_at)
                 VALUES (?1, 'order.created', ?2, '{}', ?3, '2026-01-01T00:00:00.000Z')",
                rusqlite::params![Uuid::now_v7().to_string(), key, headers],
            )
            .unwrap();
        }
    }
    let later = create_orders(&app, 3).await;
    until("the orders after the unreadable row were published", async || {
        let conn = app.db();
        let pending: i64 = conn
            .query_row(
                "SELECT count(*) FROM order_events_outbox WHERE status = 'pending' AND subject_key <> ?1",
                [&key],
                |r| r.get(0),
            )
            .unwrap();
        pending == 0
    })
    .await;
    let conn = app.db();
    let rows: Vec<(String, Option<String>)> = conn
        .prepare(
            "SELECT status, last_error FROM order_events_outbox WHERE subject_key = ?1 ORDER BY id",
        )
        .unwrap()
        .query_map([&key], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows[0].0, "dead", "{rows:?}");
    assert!(
        rows[0].1.as_deref().unwrap().contains("headers"),
        "{rows:?}"
    );
    assert_eq!(
        rows[1].0, "pending",
        "the key's later row waits behind it: {rows:?}"
    );
    assert_eq!(later.len(), 3);
}

/// Links a chat to `order` (events order.chat_linked and order.audit).
async fn link_chat(app: &TestApp, order: &str) {
    let (status, body) = app
        .post(
            User::new(Role::Admin),
            &format!("/api/v1/orders/{order}/chat-links"),
            json!({"chat_id": Uuid::now_v7(), "link_type": "support", "context": "help"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A stream outside the table that takes `order.chat_linked` events.
async fn chat_links_stream(js: &jetstream::Context) {
    js.create_stream(jetstream::stream::Config {
        name: "CHAT_LINKS".into(),
        subjects: vec!["order.chat_linked.*".into()],
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Waits until nothing is pending, failing after 30 s: far less than the ten-minute poll.
async fn drained_before_the_poll(app: &TestApp, what: &str) {
    let start = Instant::now();
    while counts(app).0 > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} waited for the poll"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_retry_or_a_requeue_that_comes_due_is_published_without_waiting_for_the_poll() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let table = table_without_chat_links(dir.path());
    let app = relaying_app(&nats, |c| {
        c.topics_file = Some(table.clone());
        c.event_outbox_polling_interval = Duration::from_secs(600);
        c.event_outbox_retry_base = Duration::from_millis(1);
        c.event_outbox_retry_max = Duration::from_millis(1);
        c.event_outbox_max_retries = 1_000_000;
    })
    .await;
    let js = nats.jetstream().await;
    let order = create_orders(&app, 1).await.remove(0);
    link_chat(&app, &order).await;
    until("the link's publish failed", async || {
        app.db()
            .query_row(
                "SELECT attempts FROM order_events_outbox WHERE topic = 'order.chat_linked'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            > 0
    })
    .await;
    // Mend the cause: a stream now takes the subject. The retry comes due within a
    // millisecond and must not wait out the ten-minute poll.
    chat_links_stream(&js).await;
    drained_before_the_poll(&app, "the retry").await;

    // A dead row requeued is published at once too.
    js.delete_stream("CHAT_LINKS").await.unwrap();
    let dead_app = relaying_app(&nats, |c| {
        c.topics_file = Some(table);
        c.event_outbox_polling_interval = Duration::from_secs(600);
        c.event_outbox_max_retries = 0;
    })
    .await;
    let order = create_orders(&dead_app, 1).await.remove(0);
    link_chat(&dead_app, &order).await;
    until("the link's row went dead", async || {
        counts(&dead_app).2 == 1
    })
    .await;
    chat_links_stream(&js).await;
    let admin = User::new(Role::Admin);
    let (_, dead) = dead_app
        .get(admin, "/api/v1/admin/outbox?status=dead")
        .await;
    let id = dead["rows"][0]["id"].as_i64().unwrap();
    let (status, _) = dead_app
        .post(
            admin,
            &format!("/api/v1/admin/outbox/{id}/requeue"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    drained_before_the_poll(&dead_app, "the requeued row").await;
}

#[tokio::test]
async fn the_test_broker_fsyncs_every_write_as_make_run_does() {
    let nats = NatsServer::start().await;
    let varz: Value = reqwest::get(format!("{}/varz", nats.monitor_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        varz["jetstream"]["config"]["sync_always"],
        json!(true),
        "{} runs without sync_interval: always: {}",
        nats.kind(),
        varz["jetstream"]["config"]
    );
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nats/nats-server.conf"),
    )
    .unwrap();
    assert!(shipped.contains("sync_interval: always"));
}

#[tokio::test]
async fn the_relay_holds_its_publishing_while_the_streams_are_being_changed() {
    use order_service::metrics::Metrics;
    use order_service::relay::{Relay, RelayStatus};
    use order_service::store::{Store, StoreConfig, Synchronous};

    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    bus::reconcile(&js, &Topics::embedded(), Duration::from_secs(120))
        .await
        .unwrap();
    // Orders taken with the relay off; then a relay of our own on the same database.
    let writer = spawn_app_with(|_| {}).await;
    create_orders(&writer, 3).await;
    let store = Store::open(&StoreConfig {
        path: writer.db_path.clone(),
        synchronous: Synchronous::Full,
        readers: 2,
    })
    .unwrap();
    let config = crate::app::test_config(std::path::Path::new("/unused"));
    let status = std::sync::Arc::new(RelayStatus::default());
    let relay = Relay::new(
        store,
        js.clone(),
        order_service::app::relay_config(&config, &Topics::embedded()),
        std::sync::Arc::new(Metrics::new()),
        status.clone(),
    );

    // What a reconcile that may change a stream's subjects holds while it runs.
    let paused = status.pause_publishing().await;
    let shutdown = order_service::shutdown::Shutdown::new();
    let running = tokio::spawn(relay.run(shutdown.signal()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        stored(&js).await.is_empty(),
        "published while the streams were changing"
    );
    drop(paused);
    drained(&writer).await;
    assert_eq!(stored(&js).await.len(), 6);
    shutdown.trigger();
    running.await.unwrap();
}
