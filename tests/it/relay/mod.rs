//! The relay against a real broker: streams from the topic table, every event once on its subject,
//! per-order order through failures, outages and crashes, dead rows and requeue, bounded cleanup.

mod batches;
pub(crate) mod stuck;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use order_service::auth::Role;
use order_service::bus::{self, OutboxMessage, Topics};
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::app::{
    PATIENCE, SECRET, TestApp, User, chat_order, metric, order_body, ready, relaying_app, run_cli,
    simple_order, spawn_app_with, stream_config, table_without_chat_links,
};
use crate::nats::NatsServer;

/// (pending, published, dead) outbox rows.
pub(crate) fn counts(app: &TestApp) -> (i64, i64, i64) {
    app.db()
        .query_row(
            "SELECT count(*) FILTER (WHERE status = 'pending'),
                    count(*) FILTER (WHERE status = 'published'),
                    count(*) FILTER (WHERE status = 'dead')
             FROM order_events_outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

/// Waits until nothing is pending; fails the test after [`PATIENCE`].
pub(crate) async fn drained(app: &TestApp) {
    let start = Instant::now();
    loop {
        let (pending, _, _) = counts(app);
        if pending == 0 {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "{pending} rows still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message as the broker stored it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub stream: String,
    pub subject: String,
    pub sequence: u64,
    pub msg_id: String,
    pub headers: BTreeMap<String, String>,
    pub payload: String,
}

/// Every message of every stream of the topic table.
pub(crate) async fn stored(js: &jetstream::Context) -> Vec<Stored> {
    let mut all = Vec::new();
    for topic in &Topics::embedded() {
        let name = topic.stream_name();
        let Ok(mut stream) = js.get_stream(&name).await else {
            continue;
        };
        let info = stream.info().await.unwrap();
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        for seq in first..=last {
            if seq == 0 {
                continue;
            }
            let Ok(m) = stream.get_raw_message(seq).await else {
                continue;
            };
            let headers: BTreeMap<String, String> = m
                .headers
                .iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
                .collect();
            all.push(Stored {
                stream: name.clone(),
                subject: m.subject.to_string(),
                sequence: m.sequence,
                msg_id: headers.get("Nats-Msg-Id").cloned().unwrap_or_default(),
                headers,
                payload: String::from_utf8(m.payload.to_vec()).unwrap(),
            });
        }
    }
    all
}

/// Checks that the broker holds each outbox event exactly once, as stored in the outbox.
pub(crate) async fn every_event_once(app: &TestApp, js: &jetstream::Context) -> Vec<Stored> {
    let rows = app.outbox();
    let messages = stored(js).await;
    let mut by_id: HashMap<&str, Vec<&Stored>> = HashMap::new();
    for m in &messages {
        by_id.entry(m.msg_id.as_str()).or_default().push(m);
    }
    for row in &rows {
        let found = by_id.get(row.event_id.as_str()).map_or(0, Vec::len);
        assert_eq!(
            found, 1,
            "event {} ({}) stored {found} times",
            row.event_id, row.topic
        );
    }
    assert_eq!(
        messages.len(),
        rows.len(),
        "the broker holds nothing but the outbox's events"
    );
    messages
}

#[tokio::test]
async fn the_service_creates_the_streams_and_reports_clamps() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let ready = ready(&app).await;
    let streams = &ready["checks"]["streams"];
    assert_eq!(streams["reconciled"], true);
    assert_eq!(streams["created"].as_array().unwrap().len(), 10);
    let clamps = streams["clamps"].as_array().unwrap();
    assert_eq!(
        clamps.len(),
        10,
        "every replication is clamped to the single server: {clamps:?}"
    );
    assert!(clamps.iter().any(|c| {
        c.as_str()
            .unwrap()
            .contains("ORDER_AUDIT num_replicas: wanted 3, using 1")
    }));
    assert_eq!(ready["checks"]["broker"]["connected"], true);
    assert_eq!(ready["checks"]["relay"]["alive"], true);

    let js = nats.jetstream().await;
    let audit = stream_config(&js, "ORDER_AUDIT").await;
    assert_eq!(audit.subjects, ["order.audit.*"]);
    assert_eq!(audit.max_age, Duration::from_secs(90 * 24 * 3600));
    assert_eq!(audit.num_replicas, 1);
    assert_eq!(
        audit.metadata.get("replication").map(String::as_str),
        Some("3")
    );
}

/// Drives one order through every endpoint that writes events, plus a chat order; returns the
/// order id.
async fn whole_life_cycle(app: &TestApp) -> String {
    let admin = User::new(Role::Admin);
    let ai = User::new(Role::Ai);
    let customer = User::new(Role::Customer);
    let (a, short) = (Uuid::now_v7(), Uuid::now_v7());
    app.set_stock(short, 0).await;
    let mut body = order_body(&[a, short]);
    body["customer_id"] = json!(customer.id);
    body["stock_override"] =
        json!({"reason": "VIP", "expected_restock_date": "2030-01-01T00:00:00Z"});
    let order = app.create_order(admin, body).await;
    let id = order["order_id"].as_str().unwrap().to_owned();
    let calls = [
        (
            customer,
            Method::PATCH,
            format!("/api/v1/orders/{id}"),
            json!({"items": {"modify": [{"product_id": a, "quantity": 5}]}}),
        ),
        (
            admin,
            Method::POST,
            format!("/api/v1/orders/{id}/stock-override"),
            json!({"reason": "late", "expected_restock_date": "2030-01-01T00:00:00Z", "items": [{"product_id": short, "override_quantity": 1}]}),
        ),
        (
            admin,
            Method::POST,
            format!("/api/v1/orders/{id}/confirm"),
            json!({"payment_confirmed": true, "inventory_reserved": true}),
        ),
        (
            admin,
            Method::POST,
            format!("/api/v1/orders/{id}/status"),
            json!({"status": "processing", "reason": "picking"}),
        ),
        (
            ai,
            Method::POST,
            format!("/api/v1/orders/{id}/chat-links"),
            json!({"chat_id": Uuid::now_v7(), "link_type": "inquiry", "context": "where is it"}),
        ),
        (
            admin,
            Method::POST,
            format!("/api/v1/orders/{id}/cancel"),
            json!({"reason": "out of stock after all"}),
        ),
    ];
    for (user, method, path, body) in calls {
        let (status, answer) = app.send(user, method, &path, Some(body)).await;
        assert!(status.is_success(), "{path}: {answer}");
    }
    let chat = chat_order(customer.id, Uuid::now_v7());
    let (status, answer) = app.post(ai, "/api/v1/chat/orders", chat).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    id
}

#[tokio::test]
async fn every_endpoints_events_arrive_once_on_their_subjects() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    whole_life_cycle(&app).await;
    drained(&app).await;
    let js = nats.jetstream().await;
    let messages = every_event_once(&app, &js).await;

    let topics = Topics::embedded();
    let rows: HashMap<String, _> = app
        .outbox()
        .into_iter()
        .map(|r| (r.event_id.clone(), r))
        .collect();
    let db = app.db();
    for m in &messages {
        let row = &rows[&m.msg_id];
        let topic = topics.get(&row.topic).unwrap();
        let tokens: Vec<&str> = m.subject.rsplitn(3, '.').collect();
        let (key, partition, prefix) = (tokens[0], tokens[1], tokens[2]);
        assert_eq!(prefix, row.topic, "{}", m.subject);
        assert_eq!(key, row.key, "{}", m.subject);
        assert!(
            partition.parse::<u32>().unwrap() < topic.partitions,
            "{}",
            m.subject
        );
        assert_eq!(
            m.payload, row.raw,
            "the message is the outbox payload, byte for byte"
        );
        assert_eq!(m.headers["Event-Type"], row.topic);
        assert_eq!(m.headers["Event-Version"], "1.0");
        assert_eq!(m.headers["Content-Type"], "application/json");
        assert_eq!(
            m.headers["Correlation-Id"],
            row.headers["Correlation-Id"].as_str().unwrap()
        );
        let (stream, seq): (String, i64) = db
            .query_row(
                "SELECT stream, stream_seq FROM order_events_outbox WHERE event_id = ?1",
                [&m.msg_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (stream.as_str(), seq as u64),
            (m.stream.as_str(), m.sequence)
        );
    }
    let by_topic: BTreeMap<&str, usize> = rows.values().fold(BTreeMap::new(), |mut acc, r| {
        *acc.entry(r.topic.as_str()).or_default() += 1;
        acc
    });
    assert_eq!(
        by_topic.len(),
        10,
        "all ten topics were exercised: {by_topic:?}"
    );

    // The broker drops a republished event.
    let again = rows.values().next().unwrap();
    let message = OutboxMessage {
        topic: again.topic.clone(),
        key: again.key.clone(),
        payload: again.raw.clone().into(),
        headers: again
            .headers
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect(),
    };
    let ack = bus::publish(&js, &message, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(ack.duplicate);
    assert_eq!(stored(&js).await.len(), messages.len());
}

/// Checks that, per subject key and stream, the broker stored the events in commit (outbox id)
/// order.
async fn in_commit_order_per_key(app: &TestApp, js: &jetstream::Context) {
    let messages = every_event_once(app, js).await;
    let stored_at: HashMap<&str, (&str, u64)> = messages
        .iter()
        .map(|m| (m.msg_id.as_str(), (m.stream.as_str(), m.sequence)))
        .collect();
    let mut per_key_and_stream: HashMap<(String, &str), Vec<(i64, u64)>> = HashMap::new();
    let rows = app.outbox();
    for r in &rows {
        let (stream, sequence) = stored_at[r.event_id.as_str()];
        per_key_and_stream
            .entry((r.key.clone(), stream))
            .or_default()
            .push((r.id, sequence));
    }
    for ((key, stream), mut events) in per_key_and_stream {
        events.sort();
        for pair in events.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "key {key} in {stream}: stored out of commit order: {events:?}"
            );
        }
    }
}

#[tokio::test]
async fn per_order_order_holds_while_publishes_fail_and_retry() {
    let mut nats = NatsServer::start().await;
    let app = relaying_app(&nats, |c| c.event_outbox_max_retries = 10_000).await;
    let js = nats.jetstream().await;
    drained(&app).await;
    let admin = User::new(Role::Admin);

    // Break ORDER_AUDIT (no stream takes order.audit.* any more: the relay heals it by
    // reconciling) while orders keep changing; then take the broker away and back.
    let mut broken = stream_config(&js, "ORDER_AUDIT").await;
    let mut ids = Vec::new();
    for round in 0..4 {
        match round {
            1 => {
                broken.subjects = vec!["order.audit_paused.*".into()];
                broken.subject_transform = None;
                js.update_stream(&broken).await.unwrap();
            }
            2 => {
                bus::reconcile(&js, &Topics::embedded(), Duration::from_secs(120))
                    .await
                    .unwrap();
                nats.stop().await;
            }
            3 => nats.start_again().await,
            _ => {}
        }
        for _ in 0..5 {
            let order = app
                .create_order(User::new(Role::Customer), simple_order())
                .await;
            ids.push(order["order_id"].as_str().unwrap().to_owned());
        }
        for id in &ids {
            let (status, body) = app
                .send(
                    admin,
                    Method::PATCH,
                    &format!("/api/v1/orders/{id}"),
                    Some(json!({"shipping_address": {"street": format!("{round} Road"), "city": "Bangkok", "postal_code": "10100", "country": "Thailand"}})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drained(&app).await;
    let (_, published, dead) = counts(&app);
    assert_eq!(dead, 0);
    // A table topic without its stream is the broker's problem, not the row's: transient
    // failures, the streams reconciled by the relay itself, no attempt used.
    let metrics = app.metrics().await;
    let transient = metric(
        &metrics,
        r#"outbox_publish_failures_total{topic="order.audit",kind="transient"}"#,
    )
    .unwrap_or(0.0);
    assert!(
        transient > 0.0,
        "the broken stream caused transient failures"
    );
    let permanent = metric(
        &metrics,
        r#"outbox_publish_failures_total{topic="order.audit",kind="permanent"}"#,
    )
    .unwrap_or(0.0);
    assert_eq!(permanent, 0.0, "a missing stream used up no attempt");
    eprintln!("relay: {published} events published through a broken stream and a broker restart");
    in_commit_order_per_key(&app, &nats.jetstream().await).await;
}

#[tokio::test]
async fn a_broker_outage_loses_no_order_and_no_event() {
    let mut nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let customer = User::new(Role::Customer);
    app.create_order(customer, simple_order()).await;
    drained(&app).await;

    nats.stop().await;
    let outage = Instant::now();
    let mut created = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        let (status, body) = app.post(customer, "/api/v1/orders", simple_order()).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "an order during the outage: {body}"
        );
        created += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (pending, _, _) = counts(&app);
    assert_eq!(
        pending,
        2 * created,
        "every event of the outage waits in the outbox"
    );
    let ready = app.readiness().await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["checks"]["broker"]["connected"], false);
    assert!(
        ready["checks"]["outbox"]["oldest_pending_age_seconds"]
            .as_f64()
            .unwrap()
            > 5.0
    );

    nats.start_again().await;
    drained(&app).await;
    let messages = every_event_once(&app, &nats.jetstream().await).await;
    assert_eq!(messages.len() as i64, 2 * (created + 1));
    eprintln!("outage: {created} orders taken while the broker was down, all delivered after");
}

#[tokio::test]
async fn a_poison_row_goes_dead_alone_and_requeue_delivers_it_once() {
    let nats = NatsServer::start().await;
    // The service's table lacks order.chat_linked: no stream takes those events.
    let dir = tempfile::tempdir().unwrap();
    let table = table_without_chat_links(dir.path());
    let app = relaying_app(&nats, |c| {
        c.topics_file = Some(table);
        c.event_outbox_max_retries = 2;
    })
    .await;
    let admin = User::new(Role::Admin);
    let customer = User::new(Role::Customer);

    let poisoned = app.create_order(customer, simple_order()).await;
    let poisoned_id = poisoned["order_id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .post(
            customer,
            &format!("/api/v1/orders/{poisoned_id}/chat-links"),
            json!({"chat_id": Uuid::now_v7(), "link_type": "support", "context": "help"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let start = Instant::now();
    while counts(&app).2 == 0 {
        assert!(start.elapsed() < PATIENCE, "the poison row never went dead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Other orders keep flowing; the poisoned order's later events wait behind the dead row.
    let healthy = app.create_order(customer, simple_order()).await;
    let start = Instant::now();
    loop {
        let rows = app.events_of(healthy["order_id"].as_str().unwrap());
        if rows.iter().all(|r| r.status == "published") {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "a healthy order's events were held back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The link's audit event goes to another stream in the same read, so it may have been sent
    // before the failure was known (rows in flight are not recalled). Once the row is dead,
    // every later event of the order waits behind it, in every stream.
    let (status, body) = app
        .send(
            admin,
            Method::PATCH,
            &format!("/api/v1/orders/{poisoned_id}"),
            Some(json!({"shipping_address": {"street": "9 River Rd", "city": "Chiang Mai", "postal_code": "50000", "country": "Thailand"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let poisoned_rows = app.events_of(&poisoned_id);
    let statuses: Vec<(&str, &str)> = poisoned_rows
        .iter()
        .map(|r| (r.topic.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(statuses.len(), 6, "{statuses:?}");
    assert_eq!(
        statuses[..3],
        [
            ("order.created", "published"),
            ("order.audit", "published"),
            ("order.chat_linked", "dead"),
        ]
    );
    assert!(
        ["published", "pending"].contains(&statuses[3].1),
        "{statuses:?}"
    );
    assert_eq!(
        statuses[4..],
        [("order.updated", "pending"), ("order.audit", "pending")],
        "events committed after the row went dead wait behind it"
    );

    let (status, dead) = app.get(admin, "/api/v1/admin/outbox?status=dead").await;
    assert_eq!(status, StatusCode::OK);
    let dead_rows = dead["rows"].as_array().unwrap();
    assert_eq!(dead_rows.len(), 1);
    assert_eq!(dead_rows[0]["attempts"], 3, "the first try and two retries");
    assert!(
        dead_rows[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("no stream"),
        "{}",
        dead_rows[0]
    );
    let dead_id = dead_rows[0]["id"].as_i64().unwrap();
    let (status, _) = app
        .post(
            customer,
            &format!("/api/v1/admin/outbox/{dead_id}/requeue"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Mend the cause (the stream), then requeue.
    let js = nats.jetstream().await;
    bus::reconcile(&js, &Topics::embedded(), Duration::from_secs(120))
        .await
        .unwrap();
    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/admin/outbox/{dead_id}/requeue"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    drained(&app).await;
    every_event_once(&app, &js).await;
    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/admin/outbox/{dead_id}/requeue"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("already_published"))
    );
    let (status, _) = app
        .post(admin, "/api/v1/admin/outbox/999999/requeue", json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cleanup_keeps_the_outbox_bounded_under_steady_load() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |c| {
        c.event_outbox_retention = Duration::from_millis(300);
        c.event_outbox_cleanup_interval = Duration::from_millis(100);
    })
    .await;
    let customer = User::new(Role::Customer);
    let load = Instant::now();
    let mut created = 0;
    let mut largest = 0;
    while load.elapsed() < Duration::from_secs(4) {
        app.create_order(customer, simple_order()).await;
        created += 1;
        largest = largest.max(app.count("order_events_outbox"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drained(&app).await;
    let start = Instant::now();
    while app.count("order_events_outbox") > 0 {
        assert!(
            start.elapsed() < PATIENCE,
            "published rows were never cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        largest < created,
        "the outbox held {largest} rows at most while {created} orders wrote {} events",
        2 * created
    );
    eprintln!(
        "cleanup: at most {largest} rows in the outbox for {} events",
        2 * created
    );
    // The events themselves are all on the broker.
    let messages = stored(&nats.jetstream().await).await;
    assert_eq!(messages.len() as i64, 2 * created);
}

#[tokio::test]
async fn metrics_name_every_series_and_the_relay_can_be_off() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    app.create_order(User::new(Role::Customer), simple_order())
        .await;
    drained(&app).await;
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    for series in [
        "outbox_events_published_total{topic=\"order.created\"} 1",
        "outbox_pending 0",
        "outbox_dead 0",
        "outbox_oldest_pending_age_seconds 0",
        "outbox_duplicate_acks_total 0",
        "outbox_commit_to_ack_seconds_count 2",
    ] {
        assert!(text.contains(series), "missing `{series}` in:\n{text}");
    }
    assert!(
        text.contains("outbox_publish_failures_total{topic=\"order.audit\",kind=\"permanent\"} 0"),
        "{text}"
    );
    assert!(text.contains("outbox_events_published_total{topic=\"order.chat_linked\"} 0"));

    let off = spawn_app_with(|_| {}).await;
    off.create_order(User::new(Role::Customer), simple_order())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counts(&off),
        (2, 0, 0),
        "without a relay, events stay pending"
    );
    let ready = off.readiness().await;
    assert_eq!(ready["checks"]["relay"]["status"], "disabled");
}

/// The service as a child process, so it can be killed for real.
struct ServiceProcess {
    child: tokio::process::Child,
    base: String,
}

impl ServiceProcess {
    async fn start(db: &Path, nats_url: &str, relay: bool) -> ServiceProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_PATH", db)
            .env("AUTH_JWT_SECRET", SECRET)
            .env("NATS_URL", nats_url)
            .env("EVENT_OUTBOX_ENABLED", relay.to_string())
            .env("EVENT_OUTBOX_BATCH_SIZE", "10")
            // Small atomic batches, so that a drain of a few hundred rows takes many of them and
            // can be cut in the middle.
            .env("EVENT_OUTBOX_PUBLISH_BATCH", "20")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let service = ServiceProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        while reqwest::get(format!("{}/health", service.base))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < PATIENCE,
                "the service process did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        service
    }
}

#[tokio::test]
async fn a_service_killed_mid_drain_loses_nothing_and_duplicates_are_dropped() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    // A backlog, written with the relay off.
    let backlog = {
        let path = db.clone();
        spawn_app_with(move |c| c.database_path = path).await
    };
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let client = backlog.client.clone();
        let url = backlog.url("/api/v1/orders");
        let token = backlog.token(User::new(Role::Customer));
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&simple_order())
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    backlog.stop().await;

    let published = |db: &Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM order_events_outbox WHERE status = 'published'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    let mut first = ServiceProcess::start(&db, &nats.url(), true).await;
    let start = Instant::now();
    while published(&db) < 100 {
        assert!(
            start.elapsed() < PATIENCE,
            "the relay did not start draining"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    let at_kill = published(&db);
    assert!(
        at_kill < 600,
        "killed mid-drain, not after it ({at_kill} of 600)"
    );

    let mut second = ServiceProcess::start(&db, &nats.url(), true).await;
    let start = Instant::now();
    while published(&db) < 600 {
        assert!(
            start.elapsed() < PATIENCE,
            "the restarted relay did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = reqwest::get(format!("{}/metrics", second.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let duplicates = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outbox_duplicate_acks_total "))
        .unwrap_or("0")
        .to_owned();
    // SIGTERM: the service finishes and exits 0.
    let pid = second.child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let exit = second.child.wait().await.unwrap();
    assert!(
        exit.success(),
        "SIGTERM ends the service with 0, got {exit}"
    );

    let reader = {
        let path = db.clone();
        spawn_app_with(move |c| c.database_path = path).await
    };
    let messages = every_event_once(&reader, &nats.jetstream().await).await;
    assert_eq!(messages.len(), 600);
    eprintln!(
        "crash: {at_kill} of 600 published before SIGKILL; duplicate PubAcks after restart: {duplicates}"
    );
}

#[tokio::test]
async fn the_streams_command_applies_diffs_and_lists_the_table() {
    let nats = NatsServer::start().await;
    let run = |args: &[&str]| run_cli(&nats, &[&["streams"], args].concat());
    let before = run(&["diff"]);
    assert!(
        before.contains("ORDER_CREATED"),
        "a missing stream is drift:\n{before}"
    );
    assert!(
        before.contains("clamped: ORDER_AUDIT num_replicas: wanted 3, using 1"),
        "{before}"
    );
    run(&["apply"]);
    let after = run(&["diff"]);
    assert!(
        after.contains("the streams match the topic table"),
        "{after}"
    );
    let list = run(&["list"]);
    for stream in ["ORDER_CREATED", "ORDER_AUDIT", "ORDER_STATISTICS_UPDATED"] {
        assert!(list.contains(stream), "{list}");
    }
    assert!(list.contains("order.audit.*"), "{list}");
}

#[tokio::test]
async fn a_broker_that_comes_back_without_a_stream_gets_it_back() {
    let mut nats = NatsServer::start().await;
    // The default retry schedule: the first retry comes after half a second at the earliest.
    let app = relaying_app(&nats, |c| {
        c.event_outbox_retry_base = Duration::from_secs(1);
        c.event_outbox_max_retries = 3;
    })
    .await;
    let js = nats.jetstream().await;
    js.delete_stream("ORDER_CREATED").await.unwrap();
    nats.restart().await;
    let customer = User::new(Role::Customer);
    app.create_order(customer, simple_order()).await;
    drained(&app).await;
    assert_eq!(
        counts(&app).2,
        0,
        "no event went dead for want of its stream"
    );
    every_event_once(&app, &nats.jetstream().await).await;
}
