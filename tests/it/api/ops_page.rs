//! The operations page at `/ops`, in headless Chromium against the real service, SQLite file and
//! nats-server: sign-in, the outbox numbers after a burst, requeueing a dead row, the live tail,
//! and every panel filled. Each test saves screenshots under `target/ops-screenshots/`.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use bytes::Bytes;
use order_service::auth::Role;
use order_service::bus::{self, Topics};
use order_service::consumer::Reason;
use order_service::consumer::dlq::{self, DeadLetter};
use serde_json::{Value, json};
use uuid::Uuid;

use super::browser::{Browser, screenshot_dir};
use crate::app::{
    PATIENCE, TestApp, User, relaying_app, simple_order, stream_messages, table_without_chat_links,
};
use crate::nats::NatsServer;

/// Opens `/ops` and signs in with `token` through the form.
async fn sign_in(browser: &mut Browser, app: &TestApp, token: &str) {
    browser.open(&app.url("/ops")).await;
    browser.type_into("#token", token).await;
    browser.click("#signin-button").await;
}

/// Waits until the page has finished `n` more refreshes than now.
async fn refreshed(browser: &mut Browser, n: u64) {
    let now = browser
        .eval("Number(document.body.dataset.refreshes || 0)")
        .await
        .as_u64()
        .unwrap();
    browser
        .wait_for(
            &format!(
                "Number(document.body.dataset.refreshes || 0) >= {}",
                now + n
            ),
            "the page to refresh",
        )
        .await;
}

async fn overview(app: &TestApp) -> Value {
    let (status, body) = app
        .get(User::new(Role::Admin), "/api/v1/admin/overview")
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn sign_in_works_and_a_customer_token_is_refused() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let mut browser = Browser::start().await;

    sign_in(&mut browser, &app, &app.token(User::new(Role::Customer))).await;
    let refusal = browser
        .wait_for(
            "document.getElementById('signin-error').textContent",
            "the refusal",
        )
        .await;
    assert!(
        refusal.as_str().unwrap().contains("not an admin"),
        "{refusal}"
    );
    assert_eq!(
        browser
            .eval("document.getElementById('board').hidden")
            .await,
        true
    );
    assert_eq!(
        browser
            .eval("sessionStorage.getItem('order-service-ops-token')")
            .await,
        Value::Null,
        "a refused token is not kept"
    );
    browser.screenshot("sign-in-refused").await;

    sign_in(&mut browser, &app, &app.token(User::new(Role::Admin))).await;
    browser
        .wait_for(
            "document.body.dataset.state === 'signed-in' && Number(document.body.dataset.refreshes) >= 1",
            "the board",
        )
        .await;
    assert_eq!(browser.text("#health").await.as_deref(), Some("connected"));
    assert_eq!(browser.text("#signin-error").await.as_deref(), Some(""));
    // Kept for the tab's session: a reload comes back signed in.
    browser.open(&app.url("/ops")).await;
    browser
        .wait_for(
            "document.body.dataset.state === 'signed-in' && Number(document.body.dataset.refreshes) >= 1",
            "the board after a reload",
        )
        .await;
    browser.screenshot("signed-in").await;
}

#[tokio::test]
async fn the_outbox_numbers_match_the_api_after_a_burst_of_orders() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let customer = User::new(Role::Customer);
    let mut browser = Browser::start().await;
    sign_in(&mut browser, &app, &app.token(User::new(Role::Admin))).await;
    refreshed(&mut browser, 1).await;

    // A hung broker: the burst stays pending, so the numbers hold still to be compared.
    nats.pause().await;
    let burst =
        futures::future::join_all((0..25).map(|_| app.create_order(customer, simple_order())));
    assert_eq!(burst.await.len(), 25);
    let api = overview(&app).await;
    let pending = api["outbox"]["pending"].as_u64().unwrap();
    assert!(pending >= 25, "{api}");
    let (_, rows) = app
        .get(
            User::new(Role::Admin),
            "/api/v1/admin/outbox?status=pending&limit=1000",
        )
        .await;
    assert_eq!(rows["rows"].as_array().unwrap().len() as u64, pending);
    browser
        .wait_for(
            &format!("document.getElementById('pending').textContent === '{pending}'"),
            "the page's pending count to match the API",
        )
        .await;
    assert_eq!(
        browser.text("#dead").await.unwrap(),
        api["outbox"]["dead"].to_string()
    );
    assert_ne!(browser.text("#oldest").await.unwrap(), "—");
    browser.screenshot("burst-pending").await;

    nats.resume().await;
    let start = Instant::now();
    while overview(&app).await["outbox"]["pending"] != 0 {
        assert!(start.elapsed() < PATIENCE, "the burst was never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .wait_for(
            "document.getElementById('pending').textContent === '0'",
            "the page's pending count to drop to 0",
        )
        .await;
    // The chart drew the burst's publish rate and its latency.
    browser
        .wait_for(
            "Number(document.getElementById('chart-rate').dataset.max) > 0
             && document.querySelector('#chart-rate polyline.rate') !== null
             && document.querySelector('#chart-latency polyline.p99') !== null",
            "the charts to show the burst",
        )
        .await;
    let (_, history) = app
        .get(User::new(Role::Admin), "/api/v1/admin/history")
        .await;
    let published: f64 = history["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["published_per_second"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let page_max: f64 = browser
        .eval("Number(document.getElementById('chart-rate').dataset.max)")
        .await
        .as_f64()
        .unwrap();
    assert!(
        page_max > 0.0 && page_max <= published + 1e-9,
        "page {page_max}, API {published}"
    );
    assert_eq!(browser.text("#dead").await.as_deref(), Some("0"));
    browser.screenshot("burst-published").await;
}

/// Makes one dead outbox row (a chat link with no stream to take it); returns its order id.
async fn dead_row(app: &TestApp) -> String {
    let customer = User::new(Role::Customer);
    let order = app.create_order(customer, simple_order()).await;
    let order_id = order["order_id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .post(
            customer,
            &format!("/api/v1/orders/{order_id}/chat-links"),
            json!({"chat_id": Uuid::now_v7(), "link_type": "support", "context": "help"}),
        )
        .await;
    assert_eq!(status, 201);
    let start = Instant::now();
    while overview(app).await["outbox"]["dead"] == 0 {
        assert!(start.elapsed() < PATIENCE, "the row never went dead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    order_id
}

#[tokio::test]
async fn a_dead_row_is_requeued_from_the_page_and_gets_published() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let table = table_without_chat_links(dir.path());
    let app = relaying_app(&nats, |c| {
        c.topics_file = Some(table);
        c.event_outbox_max_retries = 1;
    })
    .await;
    let mut browser = Browser::start().await;
    sign_in(&mut browser, &app, &app.token(User::new(Role::Admin))).await;
    let order_id = dead_row(&app).await;
    let (_, dead) = app
        .get(User::new(Role::Admin), "/api/v1/admin/outbox?status=dead")
        .await;
    let row = &dead["rows"][0];
    let id = row["id"].as_i64().unwrap();

    let selector = format!("#dead-rows tr[data-id='{id}']");
    browser
        .wait_for(
            &format!("document.querySelector(\"{selector}\") !== null"),
            "the dead row",
        )
        .await;
    let shown = browser.text(&selector).await.unwrap();
    assert!(shown.contains("order.chat_linked"), "{shown}");
    assert!(shown.contains(&order_id), "{shown}");
    assert!(shown.contains('2'), "attempts: {shown}");
    assert_eq!(browser.text("#dead").await.as_deref(), Some("1"));
    // A click shows the row's message.
    browser.click(&format!("{selector} td")).await;
    let message = browser
        .wait_for(
            "!document.getElementById('dead-message').hidden && document.getElementById('dead-message').textContent",
            "the row's message",
        )
        .await;
    let message: Value = serde_json::from_str(message.as_str().unwrap()).unwrap();
    assert_eq!(message["event_id"], row["event_id"]);
    assert_eq!(message["event_type"], "order.chat_linked");
    browser.screenshot("dead-row").await;

    // Mend the cause (the stream), then requeue with the row's button.
    let js = nats.jetstream().await;
    bus::reconcile(&js, &Topics::embedded(), Duration::from_secs(120))
        .await
        .unwrap();
    browser.click(&format!("{selector} button.requeue")).await;
    let start = Instant::now();
    loop {
        let rows = app.events_of(&order_id);
        let linked = rows.iter().find(|r| r.id == id).unwrap();
        if linked.status == "published" {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the requeued row was never published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser
        .wait_for(
            "document.getElementById('dead').textContent === '0'
             && document.querySelector('#dead-rows tr[data-id]') === null",
            "the dead row to leave the page",
        )
        .await;
    browser.screenshot("dead-row-requeued").await;
}

/// The ids of the orders the tail shows, with their topics, newest first.
async fn tail_rows(browser: &mut Browser) -> Vec<(String, String)> {
    let rows = browser
        .eval(
            "[...document.querySelectorAll('#tail tr[data-order]')].map(r => [r.dataset.topic, r.dataset.order])",
        )
        .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_live_tail_shows_an_orders_events_as_they_happen() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let customer = User::new(Role::Customer);
    let admin = User::new(Role::Admin);
    let mut browser = Browser::start().await;
    sign_in(&mut browser, &app, &app.token(admin)).await;
    refreshed(&mut browser, 1).await;

    let order = app.create_order(customer, simple_order()).await;
    let id = order["order_id"].as_str().unwrap().to_owned();
    browser
        .wait_for(
            &format!("document.querySelector(\"#tail tr[data-order='{id}'][data-topic='order.created']\") !== null"),
            "the order's created event in the tail",
        )
        .await;

    // Filtered to this order: another order's events stay out, this one's come in.
    browser.type_into("#tail-order", &id).await;
    refreshed(&mut browser, 1).await;
    let other = app.create_order(customer, simple_order()).await;
    let other_id = other["order_id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/orders/{id}/confirm"),
            json!({"payment_confirmed": true, "inventory_reserved": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    browser
        .wait_for(
            &format!("document.querySelector(\"#tail tr[data-order='{id}'][data-topic='order.confirmed']\") !== null"),
            "the order's confirmation in the tail",
        )
        .await;
    refreshed(&mut browser, 1).await;
    let shown = tail_rows(&mut browser).await;
    assert!(shown.iter().all(|(_, o)| *o == id), "{shown:?}");
    assert!(!shown.iter().any(|(_, o)| *o == other_id));
    browser.screenshot("tail-filtered").await;

    // Paused, nothing new comes in; resumed, what happened meanwhile does.
    browser.click("#tail-pause").await;
    assert_eq!(browser.text("#tail-state").await.as_deref(), Some("paused"));
    let shown_before = tail_rows(&mut browser).await.len();
    let (status, body) = app
        .post(
            admin,
            &format!("/api/v1/orders/{id}/cancel"),
            json!({"reason": "customer asked"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    refreshed(&mut browser, 2).await;
    assert_eq!(tail_rows(&mut browser).await.len(), shown_before);
    browser.click("#tail-pause").await;
    browser
        .wait_for(
            &format!("document.querySelector(\"#tail tr[data-order='{id}'][data-topic='order.cancelled']\") !== null"),
            "the cancellation after resuming",
        )
        .await;
    browser.screenshot("tail-resumed").await;
}

/// Creates a durable consumer of `group` on `order.created`, and one dead letter of it.
async fn group_with_a_dead_letter(nats: &NatsServer, group: &str) {
    let js = nats.jetstream().await;
    let stream = js.get_stream("ORDER_CREATED").await.unwrap();
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(group.to_owned()),
            filter_subject: "order.created.>".to_owned(),
            metadata: [
                ("group".to_owned(), group.to_owned()),
                ("topic".to_owned(), "order.created".to_owned()),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
    dlq::ensure_streams(&js).await.unwrap();
    let payload = Bytes::from_static(br#"{"event_type":"order.created","data":{}}"#);
    // The event the letter is of, as its stream holds it: a replay sends that back.
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
            group,
            topic: "order.created",
            reason: Reason::MaxDeliver,
            error: "warehouse API answered 500",
            stream: "ORDER_CREATED",
            stream_sequence: sequence,
            subject: "order.created.0.x",
            delivered: 5,
            headers: &[],
            payload: &payload,
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn every_panel_shows_the_broker_and_a_dead_letter_is_replayed_from_the_page() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let table = table_without_chat_links(dir.path());
    let app = relaying_app(&nats, |c| {
        c.topics_file = Some(table);
        c.event_outbox_max_retries = 1;
        c.consumer_lag_interval = Duration::from_millis(200);
    })
    .await;
    let customer = User::new(Role::Customer);
    for _ in 0..10 {
        app.create_order(customer, simple_order()).await;
    }
    dead_row(&app).await;
    group_with_a_dead_letter(&nats, "billing").await;
    let mut browser = Browser::start().await;
    sign_in(&mut browser, &app, &app.token(User::new(Role::Admin))).await;

    // Streams: one line per stream of the service's table, batching on.
    browser
        .wait_for(
            "document.querySelectorAll('#streams tr[data-stream]').length === 9",
            "the stream table",
        )
        .await;
    let created = browser
        .text("#streams tr[data-stream='ORDER_CREATED']")
        .await
        .unwrap();
    assert!(created.contains("atomic batches"), "{created}");
    assert!(
        created.contains("2 / 1"),
        "replicas wanted / actual: {created}"
    );
    // Subscribers: the group's line and its dead letter.
    browser
        .wait_for(
            "document.querySelector(\"#groups tr[data-group='billing']\") !== null
             && document.querySelectorAll('#letters tbody tr button.replay').length === 1",
            "the group and its dead letter",
        )
        .await;
    let group = browser
        .text("#groups tr[data-group='billing']")
        .await
        .unwrap();
    assert!(group.contains("order.created"), "{group}");
    let letter = browser.text("#letters tbody tr").await.unwrap();
    assert!(letter.contains("warehouse API answered 500"), "{letter}");
    refreshed(&mut browser, 1).await;
    let order = app.create_order(customer, simple_order()).await;
    let id = order["order_id"].as_str().unwrap();
    browser
        .wait_for(
            &format!("document.querySelector(\"#tail tr[data-order='{id}']\") !== null"),
            "the new order in the tail",
        )
        .await;
    browser
        .wait_for(
            "Number(document.getElementById('chart-rate').dataset.max) > 0
             && document.querySelector('#chart-latency polyline.p50') !== null",
            "the charts",
        )
        .await;
    let shot = browser.screenshot("every-panel").await;
    // `make ops-screenshot` keeps this one as the picture of docs/operations-page.md.
    if let Some(target) = std::env::var_os("OPS_README_SCREENSHOT") {
        std::fs::copy(&shot, target).unwrap();
    }

    browser.click("#letters tbody tr button.replay").await;
    browser
        .wait_for(
            "document.querySelectorAll('#letters tbody tr button.replay').length === 0",
            "the replayed letter to leave the page",
        )
        .await;
    let js = nats.jetstream().await;
    assert_eq!(
        stream_messages(&js, dlq::REPLAY_STREAM).await,
        1,
        "the letter went back to its group"
    );
    assert!(dlq::list(&js, "billing", None).await.unwrap().is_empty());
    assert!(screenshot_dir().join("every-panel.png").exists());
}

#[tokio::test]
async fn the_page_says_when_the_broker_or_the_service_is_unreachable() {
    let mut nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let mut browser = Browser::start().await;
    sign_in(&mut browser, &app, &app.token(User::new(Role::Admin))).await;
    refreshed(&mut browser, 1).await;
    assert_eq!(browser.eval("document.body.dataset.broker").await, "up");

    nats.kill().await;
    let banner = browser
        .wait_for(
            "document.body.dataset.broker === 'down' && !document.getElementById('banner').hidden
             && document.getElementById('banner').textContent",
            "the broker banner",
        )
        .await;
    assert!(
        banner
            .as_str()
            .unwrap()
            .contains("broker cannot be reached"),
        "{banner}"
    );
    assert_eq!(
        browser.text("#broker").await.as_deref(),
        Some("unreachable")
    );
    browser.screenshot("broker-unreachable").await;

    nats.start_again().await;
    browser
        .wait_for(
            "document.body.dataset.broker === 'up' && document.getElementById('banner').hidden",
            "the broker banner to clear",
        )
        .await;

    app.stop().await;
    let banner = browser
        .wait_for(
            "document.body.dataset.service === 'down' && document.getElementById('banner').textContent",
            "the service banner",
        )
        .await;
    assert!(
        banner
            .as_str()
            .unwrap()
            .contains("service cannot be reached"),
        "{banner}"
    );
    assert_eq!(
        browser
            .eval("document.getElementById('board').classList.contains('stale')")
            .await,
        true,
        "the old numbers are marked as not current"
    );
    assert_eq!(
        browser.text("#health").await.as_deref(),
        Some("service unreachable")
    );
    browser.screenshot("service-unreachable").await;
}
