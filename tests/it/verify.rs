//! Verify and repair against the losses JetStream is known for, on one real nats-server: a block
//! file damaged while the server was down (an event gone from the middle of a stream, its first
//! and last sequence unchanged), a lost head, holes, copies stored past the duplicate window, a
//! stream re-created with nobody reconnecting; and repair keeping a key's later events behind
//! one it cannot put back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use order_service::auth::Role;
use order_service::relay::repair::{LIVE_PATIENCE, Tail};
use order_service::store::{Store, StoreConfig, Synchronous};

use crate::app::{OutboxRow, TestApp, User, relaying_app, simple_order};
use crate::nats::NatsServer;
use crate::relay::{Stored, drained, every_event_once, stored};
use crate::repair::{cancel_all, missing_in, orders, outbox_cli, outbox_cli_with};

/// The header repair puts on an event it publishes again.
const REPAIRED: &str = "Repaired-From-Sequence";

/// The rows of `topic` in commit order.
fn rows_of(app: &TestApp, topic: &str) -> Vec<OutboxRow> {
    app.outbox()
        .into_iter()
        .filter(|r| r.topic == topic)
        .collect()
}

/// The sequence each row of `stream` is recorded at, by event id.
fn recorded(app: &TestApp, stream: &str) -> HashMap<String, u64> {
    app.db()
        .prepare("SELECT event_id, stream_seq FROM order_events_outbox WHERE stream = ?1")
        .unwrap()
        .query_map([stream], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Waits until the stream holds every outbox event once, or fails after `within`.
async fn until_every_event_once(app: &TestApp, js: &jetstream::Context, within: Duration) {
    let start = Instant::now();
    loop {
        let messages = stored(js).await;
        let rows = app.outbox();
        let ids: std::collections::HashSet<&str> =
            messages.iter().map(|m| m.msg_id.as_str()).collect();
        if messages.len() == rows.len() && rows.iter().all(|r| ids.contains(r.event_id.as_str())) {
            every_event_once(app, js).await;
            return;
        }
        assert!(
            start.elapsed() < within,
            "after {within:?} the streams hold {} messages for {} outbox rows",
            messages.len(),
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The messages that came back through repair: each names the sequence its event had.
fn repaired<'a>(messages: &'a [Stored], before: &HashMap<String, u64>) -> Vec<&'a Stored> {
    let back: Vec<&Stored> = messages
        .iter()
        .filter(|m| m.headers.contains_key(REPAIRED))
        .collect();
    for message in &back {
        assert_eq!(
            message.headers[REPAIRED],
            before[&message.msg_id].to_string(),
            "a repaired event names the sequence it had"
        );
    }
    back
}

#[tokio::test]
async fn an_event_lost_from_a_damaged_block_is_found_by_verify_and_put_back() {
    let mut nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let path = db.clone();
    let app = relaying_app(&nats, move |c| c.database_path = path).await;
    for _ in 0..80 {
        app.create_order(User::new(Role::Customer), simple_order())
            .await;
    }
    drained(&app).await;
    let before = recorded(&app, "ORDER_CREATED");
    assert_eq!(before.len(), 80);
    app.stop().await;

    // 64 bytes overwritten in the middle of the stream's block while the server is down, as a
    // disk that damaged a sector would, and the stream's state file lost with it: the server
    // reads the block again on its next start and drops the message it cannot read.
    nats.stop().await;
    nats.edit_blocks("ORDER_CREATED", |files| {
        for file in files {
            let mut bytes = std::fs::read(file).unwrap();
            if file.ends_with("index.db") {
                bytes.fill(0);
            } else if file.ends_with("1.blk") {
                let middle = bytes.len() / 2;
                bytes[middle..middle + 64].fill(0xA5);
            }
            std::fs::write(file, bytes).unwrap();
        }
    })
    .await;
    nats.start_again().await;
    let js = nats.jetstream().await;
    let info = js
        .get_stream("ORDER_CREATED")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert!(
        info.state.messages < 80,
        "the damaged block still holds every message: {:?}",
        info.state
    );

    let (ok, table) = outbox_cli(&nats.url(), &db, &["verify"]);
    assert!(!ok, "verify exits non-zero on a loss: {table}");
    let missing = missing_in(&table, "ORDER_CREATED").unwrap();
    assert_eq!(
        missing,
        80 - info.state.messages,
        "verify finds every lost event: {table}"
    );

    // The service, started again, finds the loss before it publishes anything and puts the
    // events back.
    let path = db.clone();
    let app = relaying_app(&nats, move |c| c.database_path = path).await;
    until_every_event_once(&app, &js, Duration::from_secs(60)).await;
    let messages = stored(&js).await;
    assert_eq!(repaired(&messages, &before).len() as u64, missing);
    let (ok, table) = outbox_cli(&nats.url(), &db, &["verify"]);
    assert!(ok, "{table}");
}

#[tokio::test]
async fn a_lost_head_holes_and_a_lost_end_are_put_back_by_the_running_service() {
    let nats = NatsServer::start().await;
    // Deleting by hand, unlike a lost block, leaves the ids in the stream's duplicate window,
    // which answers "duplicate" to a resend: a short window lets the repair through.
    let app = relaying_app(&nats, |c| {
        c.event_outbox_verify_interval = Duration::from_secs(1);
        c.nats_duplicate_window = Duration::from_secs(1);
    })
    .await;
    for _ in 0..30 {
        app.create_order(User::new(Role::Customer), simple_order())
            .await;
    }
    drained(&app).await;
    let before = recorded(&app, "ORDER_CREATED");
    let js = nats.jetstream().await;
    let stream = js.get_stream("ORDER_CREATED").await.unwrap();
    // The head (1-3), the middle (12-16) and the end (29, 30): the stream's last sequence stays,
    // as it does when a block is lost.
    for sequence in [1, 2, 3, 12, 13, 14, 15, 16, 29, 30] {
        assert!(stream.delete_message(sequence).await.unwrap());
    }
    until_every_event_once(&app, &js, Duration::from_secs(30)).await;
    let messages = stored(&js).await;
    let mut back: Vec<u64> = repaired(&messages, &before)
        .iter()
        .map(|m| before[&m.msg_id])
        .collect();
    back.sort_unstable();
    assert_eq!(back, vec![1, 2, 3, 12, 13, 14, 15, 16, 29, 30]);
}

/// The relaying service on `nats` and the file `db`, with a duplicate window of 1 s (so a copy
/// can be stored soon), once five orders are published.
async fn five_orders_with_a_short_window(nats: &NatsServer, db: &std::path::Path) -> TestApp {
    let path = db.to_path_buf();
    let app = relaying_app(nats, move |c| {
        c.database_path = path;
        c.nats_duplicate_window = Duration::from_secs(1);
    })
    .await;
    for _ in 0..5 {
        app.create_order(User::new(Role::Customer), simple_order())
            .await;
    }
    drained(&app).await;
    app
}

#[tokio::test]
async fn a_copy_stored_past_the_duplicate_window_is_seen_and_deleted() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let app = five_orders_with_a_short_window(&nats, &db).await;
    // The event is sent again after the duplicate window, as a resend after a long partition
    // would: the stream stores it a second time, past the newest recorded sequence.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let row = &rows_of(&app, "order.created")[2];
    let js = nats.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", row.event_id.as_str());
    let ack = js
        .publish_with_headers(
            format!("order.created.{}", row.key),
            headers,
            row.raw.clone().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!ack.duplicate, "past the window the stream stores it again");

    let (ok, table) = outbox_cli(&nats.url(), &db, &["verify"]);
    assert!(!ok, "{table}");
    assert!(table.contains("1 events stored twice"), "{table}");
    let (ok, out) = outbox_cli(&nats.url(), &db, &["repair"]);
    assert!(ok, "{out}");
    every_event_once(&app, &js).await;
    let (ok, table) = outbox_cli(&nats.url(), &db, &["verify"]);
    assert!(ok, "{table}");
}

#[tokio::test]
async fn a_copy_that_cannot_be_deleted_does_not_keep_the_missing_events_from_coming_back() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let app = five_orders_with_a_short_window(&nats, &db).await;
    let rows = rows_of(&app, "order.created");
    app.stop().await;
    let js = nats.jetstream().await;
    // One event lost from the middle, and another stored a second time past the window.
    let lost = stored(&js)
        .await
        .into_iter()
        .find(|m| m.msg_id == rows[1].event_id)
        .unwrap();
    let mut stream = js.get_stream("ORDER_CREATED").await.unwrap();
    stream.delete_message(lost.sequence).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let copied = &rows[3];
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", copied.event_id.as_str());
    js.publish_with_headers(
        format!("order.created.{}", copied.key),
        headers,
        copied.raw.clone().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // The broker now refuses every delete of this stream: the copy cannot be deleted, as when a
    // delete times out or its sequence is gone from the leader.
    let mut config = stream.info().await.unwrap().config.clone();
    config.deny_delete = true;
    js.update_stream(config).await.unwrap();

    let (ok, out) = outbox_cli(&nats.url(), &db, &["repair"]);
    assert!(
        !ok,
        "a copy it could not delete makes the repair fail: {out}"
    );
    let (_, table) = outbox_cli(&nats.url(), &db, &["verify"]);
    let created = table
        .lines()
        .find(|line| line.starts_with("ORDER_CREATED"))
        .unwrap_or_else(|| panic!("{table}"));
    let columns: Vec<&str> = created.split_whitespace().collect();
    assert_eq!(
        (columns[2], columns[3]),
        ("0", "1"),
        "the lost event is back, the copy is still there: {table}"
    );
}

#[tokio::test]
async fn repair_holds_a_keys_later_events_behind_one_it_cannot_put_back() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let path = db.clone();
    let app = relaying_app(&nats, move |c| {
        c.database_path = path;
        c.event_outbox_publish_batch = 2;
    })
    .await;
    let ids = orders(&app, 3).await;
    cancel_all(&app, &ids).await;
    drained(&app).await;
    // Each order has two status changes, the first three in one run, then the second three:
    // with batches of two, an order's first and second land in different chunks of the repair.
    let changes = rows_of(&app, "order.status_changed");
    let first = changes[0].clone();
    let later: Vec<OutboxRow> = changes[1..]
        .iter()
        .filter(|r| r.key == first.key)
        .cloned()
        .collect();
    assert!(!later.is_empty(), "{changes:?}");
    app.stop().await;
    let js = nats.jetstream().await;
    js.delete_stream("ORDER_STATUS_CHANGED").await.unwrap();
    // The key's first event can no longer be sent (a header no server takes).
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            r#"UPDATE order_events_outbox SET headers = json_set(headers, '$."Bad:Name"', 'v')
               WHERE id = ?1"#,
            [first.id],
        )
        .unwrap();

    let (ok, out) = outbox_cli_with(
        &nats.url(),
        &db,
        &["repair"],
        &[("EVENT_OUTBOX_PUBLISH_BATCH", "2")],
    );
    assert!(!ok, "{out}");
    let messages = stored(&js).await;
    for row in &later {
        assert!(
            !messages.iter().any(|m| m.msg_id == row.event_id),
            "a later event of the key went out before the one that failed: {out}"
        );
    }
}

#[tokio::test]
async fn a_stream_re_created_by_hand_is_repaired_without_waiting_for_the_periodic_check() {
    let nats = NatsServer::start().await;
    // The default check runs every 5 minutes: only the broker's advisory can be this quick.
    let app = relaying_app(&nats, |_| {}).await;
    orders(&app, 4).await;
    drained(&app).await;
    let js = nats.jetstream().await;
    let config = crate::app::stream_config(&js, "ORDER_CREATED").await;
    js.delete_stream("ORDER_CREATED").await.unwrap();
    js.create_stream(config).await.unwrap();
    until_every_event_once(&app, &js, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_stream_that_cannot_be_read_does_not_stop_the_check_of_the_others() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let path = db.clone();
    let app = relaying_app(&nats, move |c| c.database_path = path).await;
    for _ in 0..3 {
        app.create_order(User::new(Role::Customer), simple_order())
            .await;
    }
    drained(&app).await;
    app.stop().await;
    // A row recorded in a stream whose name the broker's API cannot even take.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO order_events_outbox (event_id, topic, subject_key, payload, headers,
                status, stream, stream_seq, created_at, published_at)
             VALUES ('x-1', 'order.created', 'k', '{}', '{}', 'published', 'A.B', 1,
                strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            [],
        )
        .unwrap();
    let (ok, table) = outbox_cli(&nats.url(), &db, &["verify"]);
    assert!(!ok, "a stream not checked is a failed verify: {table}");
    assert!(table.contains("not checked"), "{table}");
    assert_eq!(missing_in(&table, "ORDER_CREATED"), Some(0), "{table}");
    assert_eq!(missing_in(&table, "ORDER_AUDIT"), Some(0), "{table}");
}

#[tokio::test]
async fn a_check_made_while_the_relay_runs_gives_a_stream_that_does_not_answer_its_patience() {
    let mut nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let path = db.clone();
    let app = relaying_app(&nats, move |c| c.database_path = path).await;
    for _ in 0..3 {
        app.create_order(User::new(Role::Customer), simple_order())
            .await;
    }
    drained(&app).await;
    app.stop().await;
    let store = Store::open(&StoreConfig {
        path: db,
        synchronous: Synchronous::Normal,
        readers: 2,
    })
    .unwrap();
    let relay = crate::relay::stuck::relay(&store, &nats.jetstream().await, |_| {});
    // A broker that answers nothing, as streams without a leader do: the relay's publishing
    // waits for a live check, so each stream gets the check's patience, not the client's whole
    // request timeout, and the streams wait it out together.
    nats.pause().await;
    let live = relay.verify(None, Tail::Skip).await.unwrap();
    let whole = relay.verify(None, Tail::Read).await.unwrap();
    nats.resume().await;
    assert!(live.len() >= 2, "{live:?}");
    for check in &live {
        let error = check.error.as_deref().unwrap_or_default();
        assert!(
            error.contains(&format!("no answer within {}", LIVE_PATIENCE.as_secs_f32())),
            "{}: {error}",
            check.stream
        );
        assert!(!check.found_loss(), "{check:?}");
    }
    // Without a relay waiting (start-up, the CLI), a stream gets the client's timeout.
    for check in &whole {
        let error = check.error.as_deref().unwrap_or_default();
        assert!(
            !error.is_empty() && !error.contains("no answer within"),
            "{}: {error}",
            check.stream
        );
    }
    nats.stop().await;
}
