//! `Idempotency-Key` over HTTP on a real SQLite file: replays, refusals, scopes, the in-flight
//! 409, concurrency and pruning.

use std::time::Duration;

use order_service::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{TestApp, User, simple_order, spawn_app, spawn_app_with};

/// What one request answered: status, `Idempotent-Replayed`, `Location`, raw body.
struct Answer {
    status: StatusCode,
    replayed: bool,
    location: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

async fn post_with_key(app: &TestApp, user: User, path: &str, key: &str, body: &Value) -> Answer {
    let response = app
        .request(user, Method::POST, path)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Answer {
        status: response.status(),
        replayed: header("idempotent-replayed").as_deref() == Some("true"),
        location: header("location"),
        body: response.text().await.unwrap(),
    }
}

fn orders_and_events(app: &TestApp) -> (i64, i64) {
    (app.count("orders"), app.count("order_events_outbox"))
}

#[tokio::test]
async fn a_retry_with_the_same_key_and_body_gets_the_same_answer_and_writes_nothing() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let body = simple_order();
    let first = post_with_key(&app, customer, "/api/v1/orders", "order-1", &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert!(!first.replayed);
    let written = orders_and_events(&app);
    assert_eq!(written, (1, 2), "one order, order.created + order.audit");
    for _ in 0..3 {
        let again = post_with_key(&app, customer, "/api/v1/orders", "\"order-1\"", &body).await;
        assert_eq!(again.status, StatusCode::CREATED);
        assert!(again.replayed, "the retry is marked as a replay");
        assert_eq!(again.body, first.body, "same body, byte for byte");
        assert_eq!(again.location, first.location);
    }
    assert_eq!(orders_and_events(&app), written, "retries wrote nothing");

    // The same key on another path of the same caller is another request.
    let order_id = first.json()["order_id"].as_str().unwrap().to_owned();
    let cancel = json!({"reason": "changed my mind"});
    let path = format!("/api/v1/orders/{order_id}/cancel");
    let cancelled = post_with_key(&app, customer, &path, "order-1", &cancel).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert!(!cancelled.replayed);
    let after_cancel = orders_and_events(&app);
    let again = post_with_key(&app, customer, &path, "order-1", &cancel).await;
    assert_eq!(
        (again.status, again.replayed),
        (StatusCode::OK, true),
        "{}",
        again.body
    );
    assert_eq!(again.body, cancelled.body);
    assert_eq!(orders_and_events(&app), after_cancel);

    // Without a replay the second cancel is refused (409): the replayed one never ran.
    let (status, _) = app.post(customer, &path, cancel).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn the_same_key_with_another_body_answers_422_and_writes_nothing() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let first = post_with_key(&app, customer, "/api/v1/orders", "k", &simple_order()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let other = post_with_key(&app, customer, "/api/v1/orders", "k", &simple_order()).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    let error = other.json();
    assert_eq!(error["error"], "idempotency_key_reused", "{error}");
    assert!(error["message"].is_string() && error.get("details").is_some());
    assert_eq!(orders_and_events(&app), (1, 2));
}

#[tokio::test]
async fn keys_are_scoped_to_the_caller() {
    let app = spawn_app().await;
    let (a, b) = (User::new(Role::Customer), User::new(Role::Customer));
    let body = simple_order();
    let first = post_with_key(&app, a, "/api/v1/orders", "shared", &body).await;
    let second = post_with_key(&app, b, "/api/v1/orders", "shared", &body).await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert!(!second.replayed, "another caller's key is another request");
    assert_ne!(first.json()["order_id"], second.json()["order_id"]);
    assert_eq!(app.count("orders"), 2);
}

#[tokio::test]
async fn ten_concurrent_requests_with_one_key_make_one_order_and_one_set_of_events() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let body = simple_order();
    let answers = futures::future::join_all(
        (0..10).map(|_| post_with_key(&app, customer, "/api/v1/orders", "burst", &body)),
    )
    .await;
    let mut created = Vec::new();
    for answer in &answers {
        match answer.status {
            StatusCode::CREATED => created.push(answer.json()["order_id"].clone()),
            StatusCode::CONFLICT => {
                assert_eq!(
                    answer.json()["error"],
                    "idempotency_key_in_use",
                    "{}",
                    answer.body
                );
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert!(!created.is_empty());
    assert!(
        created.iter().all(|id| *id == created[0]),
        "every 201 names the same order: {created:?}"
    );
    assert_eq!(orders_and_events(&app), (1, 2));
    println!(
        "ten concurrent: {} answered 201 ({} replays), {} answered 409",
        created.len(),
        answers.iter().filter(|a| a.replayed).count(),
        answers.len() - created.len()
    );
    let retry = post_with_key(&app, customer, "/api/v1/orders", "burst", &body).await;
    assert!(retry.replayed);
    assert_eq!(retry.json()["order_id"], created[0]);
}

#[tokio::test]
async fn a_retry_while_the_first_is_in_flight_answers_409() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let body = simple_order();
    // Hold SQLite's write lock from outside: the first request's command waits for it (the
    // service's busy timeout is 5 s), so its key stays in flight.
    let lock = rusqlite::Connection::open(&app.db_path).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let first = {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/api/v1/orders"),
            app.token(customer),
        );
        let body = body.clone();
        tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", "slow")
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retry = post_with_key(&app, customer, "/api/v1/orders", "slow", &body).await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.body);
    let error = retry.json();
    assert_eq!(error["error"], "idempotency_key_in_use");
    assert_eq!(error["details"]["idempotency_key"], "slow");
    lock.execute_batch("COMMIT").unwrap();
    let (status, first_body) = first.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{first_body}");
    let replay = post_with_key(&app, customer, "/api/v1/orders", "slow", &body).await;
    assert!(replay.replayed);
    assert_eq!(replay.body, first_body);
    assert_eq!(orders_and_events(&app), (1, 2));
}

#[tokio::test]
async fn a_refused_request_stores_no_answer_and_can_be_retried() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let product = Uuid::now_v7();
    app.set_stock(product, 0).await;
    let body = crate::app::order_body(&[product]);
    let refused = post_with_key(&app, customer, "/api/v1/orders", "stock", &body).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(app.count("idempotency_keys"), 0);
    app.set_stock(product, 100).await;
    let accepted = post_with_key(&app, customer, "/api/v1/orders", "stock", &body).await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.body);
    assert!(!accepted.replayed);
    // The answer and the order were committed together.
    let stored: (i64, String) = app
        .db()
        .query_row(
            "SELECT status, CAST(body AS TEXT) FROM idempotency_keys WHERE key = 'stock'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(stored, (201, accepted.body));
}

#[tokio::test]
async fn chat_links_replay_too() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    let order = app.create_order(customer, simple_order()).await;
    let path = format!(
        "/api/v1/orders/{}/chat-links",
        order["order_id"].as_str().unwrap()
    );
    let link = json!({"chat_id": Uuid::now_v7(), "link_type": "support", "context": "delivery"});
    let first = post_with_key(&app, customer, &path, "link", &link).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let events = app.count("order_events_outbox");
    let again = post_with_key(&app, customer, &path, "link", &link).await;
    assert_eq!((again.status, again.replayed), (StatusCode::CREATED, true));
    assert_eq!(again.body, first.body);
    assert_eq!(app.count("order_events_outbox"), events);
    assert_eq!(app.count("order_chat_links"), 1);
}

#[tokio::test]
async fn bad_keys_answer_400() {
    let app = spawn_app().await;
    let customer = User::new(Role::Customer);
    for key in ["", "\"\"", &"k".repeat(256), "with space"] {
        let answer = post_with_key(&app, customer, "/api/v1/orders", key, &simple_order()).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{key:?}: {}",
            answer.body
        );
        assert_eq!(answer.json()["error"], "invalid_idempotency_key");
    }
    assert_eq!(app.count("orders"), 0);
}

#[tokio::test]
async fn keys_are_pruned_after_the_retention() {
    let app = spawn_app_with(|c| {
        c.idempotency_key_retention = Duration::from_secs(1);
        c.event_outbox_cleanup_interval = Duration::from_millis(100);
    })
    .await;
    let customer = User::new(Role::Customer);
    let first = post_with_key(&app, customer, "/api/v1/orders", "old", &simple_order()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(app.count("idempotency_keys"), 1);
    let start = std::time::Instant::now();
    while app.count("idempotency_keys") > 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A pruned key is free again: another body makes another order.
    let later = post_with_key(&app, customer, "/api/v1/orders", "old", &simple_order()).await;
    assert_eq!(later.status, StatusCode::CREATED);
    assert!(!later.replayed);
    assert_eq!(app.count("orders"), 2);
}

#[tokio::test]
async fn a_replay_is_refused_to_a_caller_whose_role_no_longer_allows_the_request() {
    let app = spawn_app().await;
    let admin = User::new(Role::Admin);
    let mut order = simple_order();
    order["customer_id"] = serde_json::json!(uuid::Uuid::now_v7());
    let order = app.create_order(admin, order).await;
    let path = format!(
        "/api/v1/orders/{}/confirm",
        order["order_id"].as_str().unwrap()
    );
    let body = serde_json::json!({"payment_confirmed": true, "inventory_reserved": true});
    let first = post_with_key(&app, admin, &path, "confirm-1", &body).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    // The same subject, now with a customer's token (its role was taken away): the role is
    // checked before anything is replayed.
    let demoted = User {
        id: admin.id,
        role: Role::Customer,
    };
    let again = post_with_key(&app, demoted, &path, "confirm-1", &body).await;
    assert_eq!(again.status, StatusCode::FORBIDDEN, "{}", again.body);
    assert!(!again.replayed);
}
