//! Broker-loss repair on a single node: a broker that lost its store between two runs of the
//! service, or while the service was connected, gets back every event the outbox still keeps, in
//! commit order per key, exactly once, before newer events; a stream deleted without a reconnect
//! is noticed by the periodic check; `outbox verify` reports what is missing and `outbox repair`
//! puts back a stream that holds other events at the recorded sequences. The helpers are
//! `pub(crate)` so a cluster test can make the same checks.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use async_nats::jetstream;
use order_service::auth::Role;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::app::{PATIENCE, TestApp, User, metric, relaying_app, simple_order, spawn_app_with};
use crate::nats::NatsServer;
use crate::relay::{Stored, drained, every_event_once, stored};

/// Runs `order-service outbox <args>` on the database `db` against the servers `nats_url` (one URL
/// or a comma-separated list): (succeeded, stdout).
pub(crate) fn outbox_cli(nats_url: &str, db: &Path, args: &[&str]) -> (bool, String) {
    outbox_cli_with(nats_url, db, args, &[])
}

/// [`outbox_cli`] with more environment variables (settings).
pub(crate) fn outbox_cli_with(
    nats_url: &str,
    db: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
        .arg("outbox")
        .args(args)
        .envs(env.iter().copied())
        .env("NATS_URL", nats_url)
        .env("DATABASE_PATH", db)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("outbox {args:?}:\n{stdout}{stderr}");
    (output.status.success(), stdout)
}

/// The `MISSING` column of `stream`'s line in `outbox verify`'s table.
pub(crate) fn missing_in(table: &str, stream: &str) -> Option<u64> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(stream))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Creates `n` orders and confirms each: two or more events per order key.
pub(crate) async fn orders(app: &TestApp, n: usize) -> Vec<String> {
    let admin = User::new(Role::Admin);
    let mut ids = Vec::new();
    for _ in 0..n {
        let order = app
            .create_order(User::new(Role::Customer), simple_order())
            .await;
        let id = order["order_id"].as_str().unwrap().to_owned();
        let (status, answer) = app
            .post(
                admin,
                &format!("/api/v1/orders/{id}/confirm"),
                json!({"payment_confirmed": true, "inventory_reserved": true}),
            )
            .await;
        assert!(status.is_success(), "confirm: {answer}");
        ids.push(id);
    }
    ids
}

/// Cancels each of the orders `ids` as an admin: new events of the same keys.
pub(crate) async fn cancel_all(app: &TestApp, ids: &[String]) {
    let admin = User::new(Role::Admin);
    for id in ids {
        let (status, answer) = app
            .send(
                admin,
                Method::POST,
                &format!("/api/v1/orders/{id}/cancel"),
                Some(json!({"reason": "changed my mind"})),
            )
            .await;
        assert!(status.is_success(), "cancel: {answer}");
    }
}

/// `outbox_repaired_events_total` over every topic.
pub(crate) async fn repaired_total(app: &TestApp) -> usize {
    let text = app.metrics().await;
    let repaired: f64 = order_service::domain::Topic::ALL
        .iter()
        .filter_map(|topic| {
            let series = format!(
                r#"outbox_repaired_events_total{{topic="{}"}}"#,
                topic.as_str()
            );
            metric(&text, &series)
        })
        .sum();
    repaired as usize
}

/// The service started again, relaying, on `nats` and the file `db` of an earlier run.
async fn relaying_again(nats: &NatsServer, db: &Path) -> TestApp {
    let (url, path) = (nats.url(), db.to_path_buf());
    spawn_app_with(move |c| {
        c.event_outbox_enabled = true;
        c.nats.url = url;
        c.database_path = path;
    })
    .await
}

/// Once the background repair is done: the broker holds every outbox event exactly once, per key
/// and stream in commit order, each at its recorded sequence.
pub(crate) async fn all_back_in_order(app: &TestApp, js: &jetstream::Context) {
    held_all(app, js).await;
    let messages = every_event_once(app, js).await;
    in_commit_order(app, &messages);
}

/// Waits until the broker holds as many messages as the outbox has rows (the repair runs in the
/// background); fails the test after [`PATIENCE`].
pub(crate) async fn held_all(app: &TestApp, js: &jetstream::Context) {
    let start = std::time::Instant::now();
    loop {
        let (held, rows) = (stored(js).await.len(), app.outbox().len());
        if held >= rows {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "{held} of {rows} events stored");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Published rows per stream, as the outbox recorded them.
pub(crate) fn recorded_per_stream(app: &TestApp) -> BTreeMap<String, u64> {
    let conn = app.db();
    let mut stmt = conn
        .prepare(
            "SELECT stream, count(*) FROM order_events_outbox
             WHERE status = 'published' GROUP BY stream",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Per key and stream, the broker stored the outbox's events in commit order, and each row's
/// recorded sequence is where the event is.
pub(crate) fn in_commit_order(app: &TestApp, messages: &[Stored]) {
    let at: HashMap<&str, (&str, u64)> = messages
        .iter()
        .map(|m| (m.msg_id.as_str(), (m.stream.as_str(), m.sequence)))
        .collect();
    let recorded: HashMap<i64, u64> = app
        .db()
        .prepare("SELECT id, stream_seq FROM order_events_outbox")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut per_key: HashMap<(String, &str), Vec<(i64, u64)>> = HashMap::new();
    for row in app.outbox() {
        let (stream, sequence) = at[row.event_id.as_str()];
        assert_eq!(
            recorded[&row.id], sequence,
            "row {} records the sequence its event is stored at",
            row.id
        );
        per_key
            .entry((row.key.clone(), stream))
            .or_default()
            .push((row.id, sequence));
    }
    for ((key, stream), mut events) in per_key {
        events.sort();
        assert!(
            events.windows(2).all(|pair| pair[0].1 < pair[1].1),
            "key {key} in {stream}: stored out of commit order: {events:?}"
        );
    }
}

#[tokio::test]
async fn a_broker_that_lost_its_store_between_two_runs_gets_every_event_back_in_order() {
    let mut nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let with_db = |db: &Path| {
        let db = db.to_owned();
        move |c: &mut order_service::config::Config| c.database_path = db
    };

    // First run: orders, every event acknowledged.
    let app = relaying_app(&nats, with_db(&db)).await;
    let ids = orders(&app, 30).await;
    drained(&app).await;
    let recorded = recorded_per_stream(&app);
    every_event_once(&app, &nats.jetstream().await).await;
    let created_events = app
        .outbox()
        .iter()
        .filter(|r| r.topic == "order.created")
        .count();
    app.stop().await;

    // The broker loses its store.
    nats.start_again_empty().await;

    // (a) verify reports, per stream, every acknowledged event as missing.
    let (ok, table) = outbox_cli(&nats.url(), &db, &["verify", "--since", "24h"]);
    assert!(!ok, "verify exits non-zero when events are missing");
    for (stream, rows) in &recorded {
        assert_eq!(missing_in(&table, stream), Some(*rows), "{stream}: {table}");
        assert!(table.contains("stream missing"), "{table}");
    }

    // (b, c) Second run: the service repairs at start, while orders keep changing (the requests
    // go in as soon as it answers, without waiting for it to be ready).
    let app = relaying_again(&nats, &db).await;
    cancel_all(&app, &ids).await;
    drained(&app).await;
    let js = nats.jetstream().await;
    all_back_in_order(&app, &js).await;

    // (d) The metric counts what was put back, per topic.
    let text = app.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"outbox_repaired_events_total{topic="order.created"}"#
        ),
        Some(created_events as f64),
        "{text}"
    );
    app.stop().await;

    let (ok, table) = outbox_cli(&nats.url(), &db, &["verify"]);
    assert!(ok, "nothing is missing after the repair: {table}");
    let (ok, out) = outbox_cli(&nats.url(), &db, &["repair"]);
    assert!(ok && out.contains("nothing to repair"), "{out}");
}

#[tokio::test]
async fn outbox_repair_recreates_the_streams_of_an_empty_broker_and_puts_the_events_back() {
    let mut nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let path = db.clone();
    let app = relaying_app(&nats, move |c| c.database_path = path).await;
    orders(&app, 5).await;
    drained(&app).await;
    let recorded = recorded_per_stream(&app);
    let rows = app.outbox();
    app.stop().await;
    nats.start_again_empty().await;

    let (ok, out) = outbox_cli(&nats.url(), &db, &["repair", "--since", "1h"]);
    assert!(ok, "{out}");
    for (stream, count) in &recorded {
        let line = out
            .lines()
            .find(|l| l.starts_with(stream.as_str()))
            .unwrap();
        let cells: Vec<&str> = line.split_whitespace().collect();
        let n = count.to_string();
        assert_eq!(cells[1..5], [n.as_str(), n.as_str(), "0", "0"], "{out}");
    }
    let messages = stored(&nats.jetstream().await).await;
    assert_eq!(messages.len(), rows.len());
    for row in &rows {
        assert_eq!(
            messages.iter().filter(|m| m.msg_id == row.event_id).count(),
            1,
            "event {} stored once",
            row.event_id
        );
    }
    let (ok, table) = outbox_cli(&nats.url(), &db, &["verify"]);
    assert!(ok, "{table}");
}

#[tokio::test]
async fn a_broker_that_loses_its_store_while_connected_gets_the_events_back() {
    let mut nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let ids = orders(&app, 10).await;
    drained(&app).await;
    let before = app.outbox().len();

    nats.start_again_empty().await;
    // New events of the same orders, while the service reconnects and repairs.
    cancel_all(&app, &ids).await;
    drained(&app).await;
    let js = nats.jetstream().await;
    all_back_in_order(&app, &js).await;
    assert_eq!(
        repaired_total(&app).await,
        before,
        "every event acknowledged before"
    );
}

#[tokio::test]
async fn outbox_repair_puts_back_a_stream_that_holds_other_events_at_recorded_sequences() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let path = db.clone();
    let app = relaying_app(&nats, move |c| c.database_path = path).await;
    for _ in 0..12 {
        app.create_order(User::new(Role::Customer), simple_order())
            .await;
    }
    drained(&app).await;
    let created: Vec<_> = app
        .outbox()
        .into_iter()
        .filter(|r| r.topic == "order.created")
        .collect();
    app.stop().await;

    // The stream is re-created and gets back only its first four events (a partial restore),
    // then other events take the sequences the rest were recorded at.
    let js = nats.jetstream().await;
    let config = crate::app::stream_config(&js, "ORDER_CREATED").await;
    js.delete_stream("ORDER_CREATED").await.unwrap();
    js.create_stream(config).await.unwrap();
    let restored = 4;
    for row in &created[..restored] {
        publish(&js, &row.key, &row.event_id, row.raw.clone()).await;
    }
    for _ in 0..created.len() {
        let key = Uuid::now_v7().to_string();
        publish(&js, &key, &Uuid::now_v7().to_string(), "{}".into()).await;
    }
    // The rows were acknowledged after the stream was created, as far as the outbox can tell:
    // only the messages at the recorded sequences show the difference.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE order_events_outbox SET published_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        [],
    )
    .unwrap();
    drop(conn);

    let (ok, table) = outbox_cli(&nats.url(), &db, &["verify"]);
    assert!(!ok, "{table}");
    assert_eq!(
        missing_in(&table, "ORDER_CREATED"),
        Some((created.len() - restored) as u64),
        "{table}"
    );
    assert!(
        table.contains("another event at recorded sequence"),
        "{table}"
    );
    for line in table.lines().skip(1) {
        let stream = line.split_whitespace().next().unwrap();
        if stream != "ORDER_CREATED" {
            assert_eq!(missing_in(&table, stream), Some(0), "{table}");
        }
    }

    let (ok, out) = outbox_cli(&nats.url(), &db, &["repair"]);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("ORDER_CREATED"))
        .unwrap();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[1..5],
        [
            (created.len() - restored).to_string().as_str(),
            (created.len() - restored).to_string().as_str(),
            "0",
            "0"
        ],
        "{out}"
    );

    // Every order.created event is in the stream once, the restored ones where they were.
    let messages = stored(&js).await;
    for (index, row) in created.iter().enumerate() {
        let found: Vec<&Stored> = messages
            .iter()
            .filter(|m| m.msg_id == row.event_id)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "event {} stored {} times",
            row.event_id,
            found.len()
        );
        if index < restored {
            assert_eq!(found[0].sequence, index as u64 + 1);
        }
    }
    let (ok, table) = outbox_cli(&nats.url(), &db, &["verify"]);
    assert!(ok, "{table}");
}

/// Publishes `payload` on `order.created.<key>` with `Nats-Msg-Id: id`.
async fn publish(js: &jetstream::Context, key: &str, id: &str, payload: String) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    js.publish_with_headers(format!("order.created.{key}"), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn the_periodic_check_repairs_a_stream_deleted_without_a_reconnect() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |c| {
        c.event_outbox_verify_interval = std::time::Duration::from_secs(1);
    })
    .await;
    orders(&app, 5).await;
    drained(&app).await;
    let js = nats.jetstream().await;
    // Nothing new is published and the connection stays up: only the periodic check can notice.
    js.delete_stream("ORDER_CREATED").await.unwrap();
    all_back_in_order(&app, &js).await;
    let text = app.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"outbox_repaired_events_total{topic="order.created"}"#
        ),
        Some(5.0),
        "{text}"
    );
}

/// Events the outbox records as acknowledged by `ORDER_CREATED` that no broker holds: `n` rows
/// written straight into the database, so a repair of that many costs what it costs at scale.
fn lost_created_rows(db: &Path, n: usize) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let at = order_service::store::timestamp(chrono::Utc::now());
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO order_events_outbox (event_id, topic, subject_key, payload, headers,
                    status, stream, stream_seq, created_at, published_at)
                 VALUES (?1, 'order.created', ?2, '{}', ?5, 'published', 'ORDER_CREATED',
                    ?3, ?4, ?4)",
            )
            .unwrap();
        for i in 0..n {
            let id = Uuid::now_v7().to_string();
            let headers = json!({"Nats-Msg-Id": id}).to_string();
            insert
                .execute(rusqlite::params![
                    id,
                    format!("lost-{}", i % 500),
                    (1_000 + i) as i64,
                    at,
                    headers
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

#[tokio::test]
async fn a_stream_being_put_back_at_start_holds_back_no_other_stream() {
    let mut nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let path = db.clone();
    let app = relaying_app(&nats, move |c| c.database_path = path).await;
    let ids = orders(&app, 3).await;
    drained(&app).await;
    app.stop().await;

    // The broker loses its store, and `ORDER_CREATED` had acknowledged many more events.
    nats.start_again_empty().await;
    lost_created_rows(&db, 20_000);

    let app = relaying_again(&nats, &db).await;
    // Orders cancelled while `ORDER_CREATED` is put back: their stream lost nothing.
    cancel_all(&app, &ids).await;
    drained(&app).await;
    let js = nats.jetstream().await;
    held_all(&app, &js).await;
    let (cancelled, repaired): (String, String) = app
        .db()
        .query_row(
            "SELECT (SELECT max(published_at) FROM order_events_outbox
                     WHERE topic = 'order.cancelled'),
                    (SELECT max(published_at) FROM order_events_outbox
                     WHERE topic = 'order.created')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        cancelled < repaired,
        "the cancellations went out at {cancelled}, only after ORDER_CREATED's repair ended at {repaired}"
    );
    let messages = every_event_once(&app, &js).await;
    in_commit_order(&app, &messages);
}
