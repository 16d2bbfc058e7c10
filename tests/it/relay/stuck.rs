//! The relay's stuck paths, against a real broker: answers that say "outcome unknown", a message
//! too large for the server inside a batch, a broker that stops answering while batches are sent,
//! a stream that refused batches once, and resends later than the stream's duplicate window.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use order_service::bus::{self, OutboxMessage, Topics};
use order_service::config::Config;
use order_service::metrics::Metrics;
use order_service::relay::{Relay, RelayStatus};
use order_service::store::outbox::{self, NewRow, OutboxRow};
use order_service::store::sent_marks;
use order_service::store::{Store, StoreConfig, StoreError, Synchronous};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::nats::NatsServer;
use crate::relay::stored;

/// A fresh outbox database (the directory lives as long as the store is used).
fn outbox_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig {
        path: dir.path().join("outbox.db"),
        synchronous: Synchronous::Normal,
        readers: 2,
    })
    .unwrap();
    (store, dir)
}

/// A pending row of `topic` and `key` with `payload`; returns its id and event id.
async fn insert(store: &Store, topic: &str, key: &str, payload: String) -> (i64, String) {
    let event_id = Uuid::now_v7();
    let (topic, key) = (topic.to_owned(), key.to_owned());
    let id = store
        .write(move |tx| {
            let headers = vec![
                ("Nats-Msg-Id".to_owned(), event_id.to_string()),
                ("Content-Type".to_owned(), "application/json".to_owned()),
            ];
            outbox::insert_row(
                tx,
                &NewRow {
                    event_id,
                    topic: &topic,
                    key: &key,
                    payload: &payload,
                    headers: &headers,
                    created_at: chrono::Utc::now(),
                },
            )?;
            Ok::<_, StoreError>(tx.last_insert_rowid())
        })
        .await
        .unwrap();
    (id, event_id.to_string())
}

/// Every row, in commit order.
async fn rows(store: &Store) -> Vec<OutboxRow> {
    store
        .read(|conn| outbox::list(conn, None, 0, 10_000))
        .await
        .unwrap()
}

async fn row(store: &Store, id: i64) -> OutboxRow {
    rows(store).await.into_iter().find(|r| r.id == id).unwrap()
}

/// A relay of `store` publishing through `js`, with the test defaults (quick retries, 2 s PubAck
/// timeout, passes of at most 1 s) changed by `adjust`.
pub fn relay(store: &Store, js: &jetstream::Context, adjust: impl FnOnce(&mut Config)) -> Relay {
    let mut config = crate::app::test_config(std::path::Path::new("/unused"));
    config.event_outbox_retry_base = Duration::from_millis(20);
    config.event_outbox_retry_max = Duration::from_millis(200);
    config.nats_ack_timeout = Duration::from_secs(2);
    config.event_outbox_polling_interval = Duration::from_secs(1);
    adjust(&mut config);
    Relay::new(
        store.clone(),
        js.clone(),
        order_service::app::relay_config(&config, &Topics::embedded()),
        Arc::new(Metrics::new()),
        Arc::new(RelayStatus::default()),
    )
}

async fn reconciled(nats: &NatsServer, duplicate_window: Duration) -> jetstream::Context {
    let js = nats.jetstream().await;
    bus::reconcile(&js, &Topics::embedded(), duplicate_window)
        .await
        .unwrap();
    js
}

/// Waits until `done` holds for the rows; fails with them after `patience`.
async fn rows_until(store: &Store, patience: Duration, done: impl Fn(&[OutboxRow]) -> bool) {
    let start = Instant::now();
    loop {
        let rows = rows(store).await;
        if done(&rows) {
            return;
        }
        let states: Vec<_> = rows
            .iter()
            .map(|r| (r.id, r.status.clone(), r.attempts, r.last_error.clone()))
            .collect();
        assert!(
            start.elapsed() < patience,
            "rows never got there: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_of(rows: &[OutboxRow], id: i64) -> &str {
    &rows.iter().find(|r| r.id == id).unwrap().status
}

/// What a clustered stream's leader answers a publish whose `Nats-Msg-Id` it has staged for a
/// proposal still in flight (e.g. the first attempt, with a follower paused).
const IN_PROCESS: &str =
    r#"{"error":{"code":409,"err_code":10158,"description":"duplicate message id is in process"}}"#;

#[tokio::test]
async fn a_duplicate_in_process_answer_leaves_the_rows_pending_without_using_an_attempt() {
    let nats = NatsServer::start().await;
    // No stream: a responder of our own answers every publish the way such a leader does.
    let responder = nats.connect().await;
    let mut requests = responder.subscribe("order.created.*").await.unwrap();
    responder.flush().await.unwrap();
    let answering = tokio::spawn({
        let responder = responder.clone();
        async move {
            while let Some(request) = requests.next().await {
                if let Some(reply) = request.reply {
                    responder.publish(reply, IN_PROCESS.into()).await.unwrap();
                }
            }
        }
    });

    let (store, _dir) = outbox_store();
    let (a, _) = insert(&store, "order.created", "a", "{}".into()).await;
    let (b, _) = insert(&store, "order.created", "b", "{}".into()).await;
    let js = nats.jetstream().await;
    // No retries at all: one permanent failure would make a row dead at once.
    let relay = relay(&store, &js, |c| c.event_outbox_max_retries = 0);
    let outcome = relay.run_once().await.unwrap();

    for id in [a, b] {
        let row = row(&store, id).await;
        assert_eq!(
            (row.status.as_str(), row.attempts),
            ("pending", 0),
            "an answer that says the publish may yet land is transient: {row:?} ({outcome:?})"
        );
    }
    answering.abort();
}

#[tokio::test]
async fn a_message_too_large_for_the_server_fails_alone_and_the_rest_of_its_batch_is_sent() {
    let nats = NatsServer::start().await;
    let js = reconciled(&nats, Duration::from_secs(120)).await;
    let max_payload = js.client().server_info().max_payload;
    // The payload alone fits; with its headers the message is above the server's limit.
    let too_large = format!("\"{}\"", "x".repeat(max_payload - 12));

    let (store, _dir) = outbox_store();
    let (a, _) = insert(&store, "order.created", "a", "{}".into()).await;
    let (big, _) = insert(&store, "order.created", "b", too_large).await;
    let (c, _) = insert(&store, "order.created", "c", "{}".into()).await;
    let (b_later, _) = insert(&store, "order.created", "b", "{}".into()).await;
    let relay = relay(&store, &js, |c| c.event_outbox_max_retries = 1);
    let shutdown = order_service::shutdown::Shutdown::new();
    let running = tokio::spawn(relay.run(shutdown.signal()));

    rows_until(&store, Duration::from_secs(20), |rows| {
        status_of(rows, a) == "published"
            && status_of(rows, c) == "published"
            && status_of(rows, big) == "dead"
    })
    .await;
    let big_row = row(&store, big).await;
    assert!(
        big_row
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("too large")),
        "{big_row:?}"
    );
    assert_eq!(
        row(&store, b_later).await.status,
        "pending",
        "the later row of the dead row's key waits behind it"
    );
    let held: Vec<_> = stored(&js).await.into_iter().map(|m| m.subject).collect();
    assert_eq!(held.len(), 2, "{held:?}");
    shutdown.trigger();
    running.await.unwrap();
}

#[tokio::test]
async fn the_relay_stops_promptly_while_the_broker_does_not_answer_a_batch() {
    let nats = NatsServer::start().await;
    reconciled(&nats, Duration::from_secs(120)).await;
    // A client whose command queue is short, so that a broker that takes nothing more fills it
    // with a batch of a few dozen large messages, as full lanes fill the default queue.
    let client = async_nats::ConnectOptions::new()
        .client_capacity(16)
        .connect(nats.url())
        .await
        .unwrap();
    let js = jetstream::new(client);

    let (store, _dir) = outbox_store();
    for n in 0..100 {
        let payload = format!("\"{}\"", "x".repeat(512 * 1024));
        insert(&store, "order.created", &format!("k{n}"), payload).await;
    }
    nats.pause().await;
    let relay = relay(&store, &js, |_| {});
    let shutdown = order_service::shutdown::Shutdown::new();
    let running = tokio::spawn(relay.run(shutdown.signal()));
    tokio::time::sleep(Duration::from_secs(4)).await;

    let asked = Instant::now();
    shutdown.trigger();
    let stopped = tokio::time::timeout(Duration::from_secs(10), running).await;
    nats.resume().await;
    assert!(
        stopped.is_ok(),
        "the relay did not stop within {:?} of shutdown while the broker was frozen",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_stream_that_allows_batches_again_gets_batches_again() {
    let nats = NatsServer::start().await;
    let app = crate::app::relaying_app(&nats, |_| {}).await;
    let js = nats.jetstream().await;
    let mut config = crate::app::stream_config(&js, "ORDER_CREATED").await;
    config.allow_atomic_publish = false;
    js.update_stream(&config).await.unwrap();
    let customer = crate::app::User::new(order_service::auth::Role::Customer);
    for _ in 0..3 {
        app.create_order(customer, crate::app::simple_order()).await;
    }
    crate::relay::drained(&app).await;
    let ready = crate::app::ready(&app).await;
    assert_eq!(
        ready["checks"]["relay"]["streams_one_by_one"],
        serde_json::json!(["ORDER_CREATED"])
    );

    config.allow_atomic_publish = true;
    js.update_stream(&config).await.unwrap();
    // Later orders, each once the relay may have tried batches again.
    let mut later = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let order = app.create_order(customer, crate::app::simple_order()).await;
        later.push(order["order_id"].as_str().unwrap().to_owned());
        crate::relay::drained(&app).await;
    }
    let messages = stored(&js).await;
    let batched: Vec<bool> = messages
        .iter()
        .filter(|m| m.stream == "ORDER_CREATED" && later.iter().any(|o| m.subject.ends_with(o)))
        .map(|m| m.headers.contains_key("Nats-Batch-Id"))
        .collect();
    assert_eq!(batched.len(), 4);
    assert!(
        batched.last() == Some(&true),
        "order.created events after atomic batches were allowed again, batched or not: {batched:?}"
    );
    let ready = crate::app::ready(&app).await;
    assert_eq!(
        ready["checks"]["relay"]["streams_one_by_one"],
        serde_json::json!([]),
        "{ready}"
    );
}

#[tokio::test]
async fn a_row_stored_before_the_duplicate_window_is_not_stored_again() {
    let nats = NatsServer::start().await;
    let window = Duration::from_secs(1);
    let js = reconciled(&nats, window).await;

    let (store, _dir) = outbox_store();
    let (sent, event) = insert(&store, "order.created", "k", "{\"n\":1}".into()).await;
    let (other, _) = insert(&store, "order.created", "j", "{\"n\":2}".into()).await;
    // The row reached the stream, but its PubAck never reached the relay (a lost connection, a
    // relay that died before marking it). That relay had noted that it hands the row out.
    store
        .write(move |tx| sent_marks::raise(tx, "ORDER_CREATED", sent))
        .await
        .unwrap();
    let first = bus::publish(
        &js,
        &OutboxMessage {
            topic: "order.created".into(),
            key: "k".into(),
            payload: "{\"n\":1}".into(),
            headers: vec![("Nats-Msg-Id".into(), event.clone())],
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    tokio::time::sleep(window * 3).await;

    let relay = relay(&store, &js, |c| c.nats_duplicate_window = window);
    relay.run_once().await.unwrap();
    let messages = stored(&js).await;
    let copies = messages.iter().filter(|m| m.msg_id == event).count();
    assert_eq!(copies, 1, "the event is stored {copies} times");
    let row = row(&store, sent).await;
    assert_eq!(
        (row.status.as_str(), row.stream_seq),
        ("published", Some(first.sequence as i64)),
        "recorded at the sequence the stream holds it at: {row:?}"
    );
    assert_eq!(
        rows(&store)
            .await
            .iter()
            .find(|r| r.id == other)
            .unwrap()
            .status,
        "published"
    );
    assert_eq!(messages.len(), 2);
}

/// A TCP proxy in front of the broker that can stop passing the broker's answers on (they are
/// dropped, as with a connection that died on the way back) and cut its connections.
struct Proxy {
    url: String,
    dropping: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(to: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let dropping = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accepting = tokio::spawn({
            let (dropping, connections) = (dropping.clone(), connections.clone());
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let Ok(server) = tokio::net::TcpStream::connect(&to).await else {
                        continue;
                    };
                    let dropping = dropping.clone();
                    let task = tokio::spawn(async move {
                        let (mut client_read, mut client_write) = client.into_split();
                        let (mut server_read, mut server_write) = server.into_split();
                        let up = tokio::io::copy(&mut client_read, &mut server_write);
                        let down = async {
                            let mut buffer = vec![0; 64 * 1024];
                            loop {
                                let n = server_read.read(&mut buffer).await?;
                                if n == 0 {
                                    return Ok::<_, std::io::Error>(());
                                }
                                if !dropping.load(Ordering::SeqCst) {
                                    client_write.write_all(&buffer[..n]).await?;
                                }
                            }
                        };
                        tokio::select! {
                            _ = up => {}
                            _ = down => {}
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            }
        });
        Proxy {
            url,
            dropping,
            connections,
            accepting,
        }
    }

    /// Drops (or passes on again) what the broker sends.
    fn drop_answers(&self, dropping: bool) {
        self.dropping.store(dropping, Ordering::SeqCst);
    }

    /// Closes every connection through the proxy; clients connect again.
    fn cut(&self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

#[tokio::test]
async fn a_batch_whose_pub_ack_was_lost_is_not_stored_again_after_the_window() {
    let nats = NatsServer::start().await;
    let window = Duration::from_secs(1);
    let js = reconciled(&nats, window).await;
    let proxy = Proxy::start(nats.url().trim_start_matches("nats://").to_owned()).await;
    let client = async_nats::ConnectOptions::new()
        .ignore_discovered_servers()
        .connect(proxy.url.as_str())
        .await
        .unwrap();
    let through_proxy = jetstream::new(client);

    let (store, _dir) = outbox_store();
    let (id, event) = insert(&store, "order.created", "k", "{}".into()).await;
    // The batch reaches the stream; its PubAck, and every answer after it, is lost for longer
    // than the duplicate window, while the relay tries again and again.
    proxy.drop_answers(true);
    let relay = relay(&store, &through_proxy, |c| {
        c.nats_duplicate_window = window;
        c.nats_ack_timeout = Duration::from_millis(500);
    });
    let shutdown = order_service::shutdown::Shutdown::new();
    let running = tokio::spawn(relay.run(shutdown.signal()));
    tokio::time::sleep(window * 4).await;
    proxy.drop_answers(false);
    proxy.cut();

    rows_until(&store, Duration::from_secs(30), |rows| {
        status_of(rows, id) == "published"
    })
    .await;
    shutdown.trigger();
    running.await.unwrap();
    let copies = stored(&js)
        .await
        .iter()
        .filter(|m| m.msg_id == event)
        .count();
    assert_eq!(copies, 1, "the event is stored {copies} times");
}

#[tokio::test]
async fn a_backlog_no_relay_sent_is_not_looked_up_in_the_stream_after_a_restart() {
    let nats = NatsServer::start().await;
    let window = Duration::from_secs(1);
    let js = reconciled(&nats, window).await;
    let (store, _dir) = outbox_store();
    // A backlog committed while nothing could be published, older than the duplicate window when
    // a relay (a restarted service) starts on it. No relay ever handed these rows out.
    for n in 0..200 {
        insert(
            &store,
            "order.created",
            &format!("k{}", n % 20),
            format!("{{\"n\":{n}}}"),
        )
        .await;
    }
    tokio::time::sleep(window * 3).await;
    // Every read of a stored message, as a lookup before a resend makes them.
    let client = nats.connect().await;
    let mut reads = futures::stream::select(
        client.subscribe("$JS.API.STREAM.MSG.GET.>").await.unwrap(),
        client.subscribe("$JS.API.DIRECT.GET.>").await.unwrap(),
    );
    client.flush().await.unwrap();

    let relay = relay(&store, &js, |c| c.nats_duplicate_window = window);
    while rows(&store).await.iter().any(|r| r.status != "published") {
        relay.run_once().await.unwrap();
    }
    let mut lookups = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), reads.next()).await {
        lookups += 1;
    }
    assert_eq!(
        lookups, 0,
        "rows no relay had sent were looked up in the stream before their first send"
    );
    assert_eq!(stored(&js).await.len(), 200);
}
