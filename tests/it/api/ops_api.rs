//! The admin endpoints of the operations page over HTTP: who may call them, bad input, and what
//! they answer against the real SQLite file and nats-server.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use bytes::Bytes;
use order_service::auth::Role;
use order_service::consumer::Reason;
use order_service::consumer::dlq::{self, DeadLetter};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{
    PATIENCE, User, into_json, relaying_app, simple_order, spawn_app, stream_config,
    stream_messages,
};
use crate::nats::NatsServer;

const GETS: &[&str] = &[
    "/api/v1/admin/overview",
    "/api/v1/admin/history",
    "/api/v1/admin/tail",
    "/api/v1/admin/streams",
    "/api/v1/admin/consumers",
    "/api/v1/admin/dead-letters",
];

fn assert_error_shape(body: &Value, code: &str) {
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert!(body.get("details").is_some(), "{body}");
}

#[tokio::test]
async fn the_page_and_its_assets_carry_a_content_security_policy_and_no_sniffing() {
    let app = spawn_app().await;
    for path in ["/ops", "/ops/page.js", "/ops/page.css"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| panic!("{path}: no {name}"))
        };
        let policy = header("content-security-policy");
        // Only the page's own script, style and API; no frame may hold it (clickjacking of the
        // requeue and replay buttons); no inline script.
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(
                policy.contains(directive),
                "{path}: {policy} lacks {directive}"
            );
        }
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
    }
}

#[tokio::test]
async fn the_page_is_served_whole_and_the_endpoints_are_admin_only() {
    let app = spawn_app().await;
    for path in ["/ops", "/ops/page.js", "/ops/page.css"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        // The SVG namespace is a name, not an address the page fetches.
        let text = response
            .text()
            .await
            .unwrap()
            .replace("http://www.w3.org/2000/svg", "");
        // Nothing is fetched from elsewhere: an edge box may have no internet.
        for outside in ["http://", "https://", "//cdn", "@import", "fonts."] {
            assert!(!text.contains(outside), "{path} refers to {outside}");
        }
    }
    for path in GETS {
        let (status, body) = into_json(app.client.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_error_shape(&body, "unauthorized");
        let (status, body) = app.get(User::new(Role::Customer), path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_error_shape(&body, "forbidden");
    }
    for (path, body) in [
        (
            "/api/v1/admin/dead-letters/replay",
            json!({"group": "billing"}),
        ),
        (
            "/api/v1/admin/dead-letters/1/replay",
            json!({"group": "billing"}),
        ),
    ] {
        let (status, _) = app.post(User::new(Role::Customer), path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test]
async fn bad_input_gets_the_right_4xx() {
    let app = spawn_app().await;
    let admin = User::new(Role::Admin);
    for (path, code) in [
        ("/api/v1/admin/tail?topic=order.nope", "invalid_query"),
        ("/api/v1/admin/tail?order=not-a-uuid", "invalid_query"),
        ("/api/v1/admin/tail?limit=0", "invalid_query"),
        ("/api/v1/admin/tail?limit=501", "invalid_query"),
        ("/api/v1/admin/tail?after=-1", "invalid_query"),
        ("/api/v1/admin/tail?after=x", "invalid_query"),
        ("/api/v1/admin/tail?colour=red", "invalid_query"),
        ("/api/v1/admin/dead-letters?group=a.b", "invalid_group"),
        (
            "/api/v1/admin/dead-letters?topic=order.nope",
            "invalid_topic",
        ),
    ] {
        let (status, body) = app.get(admin, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_error_shape(&body, code);
    }
    let (status, body) = app
        .post(
            admin,
            "/api/v1/admin/dead-letters/x/replay",
            json!({"group": "g"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&body, "invalid_sequence");
    let (status, body) = app
        .post(
            admin,
            "/api/v1/admin/dead-letters/replay",
            json!({"group": "a b"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&body, "invalid_group");
    let (status, body) = app
        .post(admin, "/api/v1/admin/dead-letters/replay", json!({}))
        .await;
    assert!(status.is_client_error(), "{status}: {body}");
    assert!(body["error"].is_string(), "{body}");
    let response = app
        .request(
            admin,
            reqwest::Method::POST,
            "/api/v1/admin/dead-letters/replay",
        )
        .body("group=g")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // With the relay off the service has no broker: the broker's views say so.
    for path in ["/api/v1/admin/streams", "/api/v1/admin/dead-letters"] {
        let (status, body) = app.get(admin, path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_error_shape(&body, "broker_unreachable");
    }
    let (status, body) = app.get(admin, "/api/v1/admin/overview").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["broker"]["relay_enabled"], false);
}

async fn get(app: &crate::app::TestApp, path: &str) -> Value {
    let (status, body) = app.get(User::new(Role::Admin), path).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

#[tokio::test]
async fn overview_history_and_tail_follow_the_outbox() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let customer = User::new(Role::Customer);
    let start_tail = get(&app, "/api/v1/admin/tail").await;
    assert_eq!(start_tail["events"], json!([]));
    let cursor = start_tail["next_after"].as_i64().unwrap();

    let mut orders = Vec::new();
    for _ in 0..5 {
        orders.push(app.create_order(customer, simple_order()).await);
    }
    // Once published, the overview agrees with the database, and the history saw the rate and
    // the latencies.
    let start = Instant::now();
    loop {
        let overview = get(&app, "/api/v1/admin/overview").await;
        let pending = app
            .outbox()
            .iter()
            .filter(|r| r.status == "pending")
            .count();
        let history = get(&app, "/api/v1/admin/history").await;
        let busy = history["samples"].as_array().unwrap().iter().find(|s| {
            s["published_per_second"].as_f64().unwrap() > 0.0 && !s["latency_p99_ms"].is_null()
        });
        if overview["outbox"]["pending"] == 0
            && pending == 0
            && let Some(busy) = busy
        {
            let (p50, p99) = (
                busy["latency_p50_ms"].as_f64().unwrap(),
                busy["latency_p99_ms"].as_f64().unwrap(),
            );
            assert!(0.0 < p50 && p50 <= p99, "{busy}");
            assert_eq!(overview["outbox"]["dead"], 0);
            assert_eq!(overview["outbox"]["oldest_pending_age_seconds"], 0.0);
            assert_eq!(overview["broker"]["connected"], true);
            assert_eq!(history["interval_seconds"], 2.0);
            assert_eq!(history["window_seconds"], 900);
            break;
        }
        assert!(start.elapsed() < PATIENCE, "{overview} {history}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The tail from the cursor: every event since, in commit order, filtered on demand.
    let all = get(&app, &format!("/api/v1/admin/tail?after={cursor}")).await;
    let events = all["events"].as_array().unwrap();
    assert_eq!(events.len(), app.outbox().len() - cursor as usize);
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64())
    );
    assert_eq!(all["next_after"], events.last().unwrap()["id"]);
    let first = orders[0]["order_id"].as_str().unwrap();
    let one = get(
        &app,
        &format!("/api/v1/admin/tail?after={cursor}&order={first}"),
    )
    .await;
    let mine = one["events"].as_array().unwrap();
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|e| e["order_id"] == first), "{one}");
    assert_eq!(
        one["next_after"], all["next_after"],
        "a filter still moves the cursor"
    );
    let created = get(
        &app,
        &format!("/api/v1/admin/tail?after={cursor}&topic=order.created&limit=2"),
    )
    .await;
    let created = created["events"].as_array().unwrap();
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|e| e["topic"] == "order.created"
        && e["status"] == "published"
        && e["stream"] == "ORDER_CREATED"));
}

#[tokio::test]
async fn streams_consumers_and_dead_letters_as_the_broker_has_them() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |c| {
        c.consumer_lag_interval = Duration::from_millis(200);
    })
    .await;
    app.create_order(User::new(Role::Customer), simple_order())
        .await;
    let streams = get(&app, "/api/v1/admin/streams").await;
    let streams = streams["streams"].as_array().unwrap();
    let table: Vec<Value> =
        serde_json::from_str(include_str!("../../../nats/topics.json")).unwrap();
    assert_eq!(streams.len(), table.len());
    for (stream, topic) in streams.iter().zip(&table) {
        assert_eq!(stream["topic"], topic["topic"]);
        assert_eq!(stream["partitions"], topic["partitions"]);
        assert_eq!(stream["exists"], true);
        assert_eq!(stream["replicas"], 1);
        assert_eq!(stream["batching"], true, "{stream}");
        // A single server holds one replica: the clamp is reported, not hidden.
        assert_eq!(
            stream["clamps"].as_array().unwrap().len(),
            usize::from(topic["replication"].as_u64().unwrap() > 1),
            "{stream}"
        );
    }

    // A stream that refuses atomic batches is published one by one: batching is off.
    let js = nats.jetstream().await;
    let mut audit = stream_config(&js, "ORDER_AUDIT").await;
    audit.allow_atomic_publish = false;
    js.update_stream(&audit).await.unwrap();
    let streams = get(&app, "/api/v1/admin/streams").await;
    for stream in streams["streams"].as_array().unwrap() {
        let on = stream["stream"] != "ORDER_AUDIT";
        assert_eq!(
            (&stream["allow_atomic"], &stream["batching"]),
            (&json!(on), &json!(on)),
            "{stream}"
        );
    }

    // A group on partition 1 of order.created, with two dead letters.
    js.get_stream("ORDER_CREATED")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some("billing-p1".to_owned()),
            filter_subject: "order.created.1.>".to_owned(),
            metadata: [
                ("group".to_owned(), "billing".to_owned()),
                ("topic".to_owned(), "order.created".to_owned()),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
    dlq::ensure_streams(&js).await.unwrap();
    let payload = Bytes::from_static(b"{\"n\":1}");
    // Dead letters of two deliveries (a letter's id is its source sequence) of events the stream
    // holds: a replay sends back what the stream stored, and refuses a letter that is not that.
    for error in ["first", "second"] {
        let sequence = js
            .publish("order.created.x", payload.clone())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence;
        dlq::publish(
            &js,
            &DeadLetter {
                group: "billing",
                topic: "order.created",
                reason: Reason::Permanent,
                error,
                stream: "ORDER_CREATED",
                stream_sequence: sequence,
                subject: "order.created.1.x",
                delivered: 1,
                headers: &[],
                payload: &payload,
            },
        )
        .await
        .unwrap();
    }
    let start = Instant::now();
    let group = loop {
        let consumers = get(&app, "/api/v1/admin/consumers").await;
        if let Some(row) = consumers["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == "billing" && g["dead_letters"] == 2)
        {
            break row.clone();
        }
        assert!(start.elapsed() < PATIENCE, "{consumers}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(group["partition"], 1);
    assert_eq!(group["topic"], "order.created");
    assert!(group["lag_messages"].is_u64() && group["lag_seconds"].is_f64());

    let letters = get(&app, "/api/v1/admin/dead-letters?group=billing").await;
    let letters = letters["letters"].as_array().unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["error"], "first");
    assert_eq!(letters[0]["reason"], "permanent");
    assert_eq!(letters[0]["message"], "{\"n\":1}");
    let everyone = get(&app, "/api/v1/admin/dead-letters").await;
    assert_eq!(everyone["letters"].as_array().unwrap().len(), 2);

    let admin = User::new(Role::Admin);
    let first = letters[0]["sequence"].as_u64().unwrap();
    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/admin/dead-letters/{first}/replay"),
            json!({"group": "billing"}),
        )
        .await;
    assert_eq!(
        (status, &body["replayed"]),
        (StatusCode::OK, &json!(1)),
        "{body}"
    );
    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/admin/dead-letters/{first}/replay"),
            json!({"group": "billing"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error_shape(&body, "not_found");
    let left = get(&app, "/api/v1/admin/dead-letters?group=billing").await;
    assert_eq!(left["letters"][0]["error"], "second");
    let (status, body) = app
        .post(
            admin,
            "/api/v1/admin/dead-letters/replay",
            json!({"group": "billing", "topic": "order.created"}),
        )
        .await;
    assert_eq!(
        (status, &body["replayed"]),
        (StatusCode::OK, &json!(1)),
        "{body}"
    );
    let left = get(&app, "/api/v1/admin/dead-letters?group=billing").await;
    assert_eq!(left["letters"], json!([]));
    assert_eq!(stream_messages(&js, dlq::REPLAY_STREAM).await, 2);

    // A letter that is not the event it points at is refused, says why, and stays.
    let third = js
        .publish("order.created.x", payload.clone())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let forged = Bytes::from_static(b"{\"n\":2}");
    dlq::publish(
        &js,
        &DeadLetter {
            group: "billing",
            topic: "order.created",
            reason: Reason::Permanent,
            error: "forged",
            stream: "ORDER_CREATED",
            stream_sequence: third,
            subject: "order.created.1.x",
            delivered: 1,
            headers: &[],
            payload: &forged,
        },
    )
    .await
    .unwrap();
    let left = get(&app, "/api/v1/admin/dead-letters?group=billing").await;
    let forged_letter = left["letters"][0]["sequence"].as_u64().unwrap();
    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/admin/dead-letters/{forged_letter}/replay"),
            json!({"group": "billing"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_error_shape(&body, "letter_not_replayable");
    assert!(
        body["message"].as_str().unwrap().contains("differs"),
        "{body}"
    );
    let (status, body) = app
        .post(
            admin,
            "/api/v1/admin/dead-letters/replay",
            json!({"group": "billing"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["replayed"], json!(0), "{body}");
    assert_eq!(
        body["refused"][0]["sequence"],
        json!(forged_letter),
        "{body}"
    );
    assert_eq!(stream_messages(&js, dlq::REPLAY_STREAM).await, 2);
}

/// The dead-letter listing comes in pages of at most `limit` letters (100 by default, 500 at
/// most), each body cut to 16 KiB, so that a page stays small however many and however large the
/// letters are; `next_after` leads through them, oldest first. Before, the listing loaded every
/// letter with its whole body on each call (the page polls it every 2 s).
#[tokio::test]
async fn dead_letters_are_listed_in_bounded_pages() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let js = nats.jetstream().await;
    dlq::ensure_streams(&js).await.unwrap();
    let large = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(40_000)));
    let small = Bytes::from_static(b"{\"n\":1}");
    for sequence in 1..=5u64 {
        dlq::publish(
            &js,
            &DeadLetter {
                group: "pager",
                topic: "order.created",
                reason: Reason::Permanent,
                error: "refused",
                stream: "ORDER_CREATED",
                stream_sequence: sequence,
                subject: "order.created.1.x",
                delivered: 1,
                headers: &[],
                payload: if sequence == 3 { &large } else { &small },
            },
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/admin/dead-letters?group=pager&limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = get(&app, &path).await;
        pages += 1;
        let letters = page["letters"].as_array().unwrap();
        assert!(letters.len() <= 2, "{page}");
        for letter in letters {
            let message = letter["message"].as_str().unwrap();
            let cut = letter["message_truncated"].as_bool().unwrap();
            assert!(message.len() <= 16 * 1024);
            assert_eq!(
                cut,
                letter["source_sequence"] == 3,
                "{}",
                letter["sequence"]
            );
            seen.push(letter["source_sequence"].as_u64().unwrap());
        }
        match page["next_after"].as_u64() {
            Some(after) => {
                path = format!("/api/v1/admin/dead-letters?group=pager&limit=2&after={after}")
            }
            None => break,
        }
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    assert_eq!(pages, 3);
    let all = get(&app, "/api/v1/admin/dead-letters?group=pager").await;
    assert_eq!(all["letters"].as_array().unwrap().len(), 5);
    assert!(all["next_after"].is_null(), "{all}");
    for limit in ["0", "501", "x"] {
        let (status, body) = app
            .get(
                User::new(Role::Admin),
                &format!("/api/v1/admin/dead-letters?limit={limit}"),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{limit}: {body}");
        assert_eq!(body["error"], "invalid_query", "{body}");
    }
}
