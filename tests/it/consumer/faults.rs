//! Consumer groups that survive faults: their own database failing or a dead letter that cannot be
//! published costs no message and no delivery (the breaker holds the messages), a handler that
//! panics or hangs takes down nothing else, a batch of slow handlers outlives `ack_wait`, and a
//! stopping group sends back what it had not started; redeliveries wait out the backoff.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use order_service::consumer::{
    BreakerState, Delivery, Event, Failure, GroupStats, Handler, HandlerTx, dlq,
};
use order_service::domain::Topic;

use crate::app::{PATIENCE, until};
use crate::consumer::{
    Recorder, Running, create_orders, effects, exactly_once, expected_events, group_config,
    processed_all, read_only, report, setup,
};

/// Waits until the group's breaker opened and its infrastructure failed `n` times since.
async fn outage_of(stats: &GroupStats, n: u64) {
    until("the breaker opens", async || {
        stats.breaker.state() != BreakerState::Closed
            && stats.infrastructure_faults.load(Ordering::Relaxed) >= n
    })
    .await;
}

/// The deliveries that processed each event, from the effects table.
fn deliveries(db: &Path, group: &str) -> Vec<(String, i64)> {
    let conn = read_only(db);
    let mut stmt = conn
        .prepare("SELECT event_id, delivered FROM effects WHERE grp = ?1")
        .unwrap();
    stmt.query_map([group], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Every event was processed on its first delivery: no fault burned one.
fn all_on_first_delivery(db: &Path, group: &str) {
    let later: Vec<_> = deliveries(db, group)
        .into_iter()
        .filter(|(_, delivered)| *delivered != 1)
        .collect();
    assert!(
        later.is_empty(),
        "{group}: processed on a later delivery: {later:?}"
    );
}

#[tokio::test]
async fn a_locked_database_holds_the_messages_without_using_deliveries_or_dead_letters() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let mut config = group_config("locked", &topics, &db);
    config.max_deliver = 2;
    config.ack_wait = Duration::from_secs(1);
    config.busy_timeout = Duration::from_millis(100);
    let running = Running::start(&js, config, Recorder::new("locked"));
    let first = create_orders(&app, 1, 1).await;
    processed_all(&db, "locked", &expected_events(&app, &first, &topics)).await;

    // Another process holds the file's write lock: the group cannot begin its transaction.
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let orders = create_orders(&app, 10, 2).await;
    outage_of(&running.stats, 4).await;
    // Longer than ack_wait times max_deliver: without the in-progress acks the broker would have
    // given the held messages up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(running.stats.breaker.state(), BreakerState::Closed);
    let health = running.stats.health();
    assert_eq!(health["status"], "degraded", "{health}");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);

    let mut all = first.clone();
    all.extend(orders);
    let expected = expected_events(&app, &all, &topics);
    processed_all(&db, "locked", &expected).await;
    until("the breaker closes", async || {
        running.stats.breaker.state() == BreakerState::Closed
    })
    .await;
    assert_eq!(running.stats.health()["status"], "ok");
    let stats = running.stop().await;
    exactly_once(&db, "locked", &expected);
    all_on_first_delivery(&db, "locked");
    assert!(dlq::list(&js, "locked", None).await.unwrap().is_empty());
    assert_eq!(stats.dead_lettered, 0);
    report("locked", stats, started);
}

/// A [`Recorder`] whose writes find the disk full while `full` is set: it caps the file at its
/// size (`PRAGMA max_page_count`), writes, and lifts the cap again.
struct FullDisk {
    full: Arc<AtomicBool>,
    inner: Recorder,
}

impl Handler for FullDisk {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        self.inner.migrate(conn)?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS padding (b BLOB)")
    }

    async fn handle(
        &self,
        event: &Event,
        delivery: &Delivery,
        tx: &mut HandlerTx<'_>,
    ) -> Result<(), Failure> {
        if self.full.load(Ordering::Relaxed) {
            let conn = tx.conn();
            let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get::<_, i64>(0)
            })?;
            let written = conn.execute("INSERT INTO padding VALUES (randomblob(200000))", []);
            conn.query_row("PRAGMA max_page_count = 1073741823", [], |r| {
                r.get::<_, i64>(0)
            })?;
            written?;
        }
        self.inner.handle(event, delivery, tx).await
    }
}

#[tokio::test]
async fn a_full_disk_holds_the_messages_without_using_deliveries_or_dead_letters() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let mut config = group_config("full", &topics, &db);
    config.max_deliver = 2;
    config.ack_wait = Duration::from_secs(1);
    let full = Arc::new(AtomicBool::new(false));
    let handler = FullDisk {
        full: full.clone(),
        inner: Recorder::new("full"),
    };
    let running = Running::start(&js, config, handler);
    let first = create_orders(&app, 1, 1).await;
    processed_all(&db, "full", &expected_events(&app, &first, &topics)).await;

    full.store(true, Ordering::Relaxed);
    let orders = create_orders(&app, 10, 2).await;
    outage_of(&running.stats, 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        effects(&db, "full").len() < 11,
        "nothing written while full"
    );
    full.store(false, Ordering::Relaxed);

    let mut all = first.clone();
    all.extend(orders);
    let expected = expected_events(&app, &all, &topics);
    processed_all(&db, "full", &expected).await;
    let stats = running.stop().await;
    exactly_once(&db, "full", &expected);
    all_on_first_delivery(&db, "full");
    assert!(dlq::list(&js, "full", None).await.unwrap().is_empty());
    assert_eq!((stats.dead_lettered, stats.retried), (0, 0));
    report("full", stats, started);
}

#[tokio::test]
async fn a_dead_letter_that_cannot_be_published_holds_its_message_until_it_is_stored() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let mut config = group_config("dlqdown", &topics, &db);
    config.max_deliver = 2;
    config.ack_wait = Duration::from_secs(1);
    // Once armed, the first event seen is refused for good.
    let armed = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(std::sync::Mutex::new(None::<String>));
    let (decide_armed, decide_refused) = (armed.clone(), refused.clone());
    let handler = Recorder::failing("dlqdown", move |event, _| {
        let order = event.order_id().map(|id| id.to_string());
        let mut refused = decide_refused.lock().unwrap();
        if decide_armed.load(Ordering::Relaxed) && refused.is_none() {
            *refused = order.clone();
        }
        (refused.is_some() && *refused == order).then(|| Failure::permanent("refused"))
    });
    let running = Running::start(&js, config, handler);
    let first = create_orders(&app, 1, 1).await;
    processed_all(&db, "dlqdown", &expected_events(&app, &first, &topics)).await;

    // The dead-letter stream is gone when the group runs into the refused event.
    js.delete_stream(dlq::DLQ_STREAM).await.unwrap();
    armed.store(true, Ordering::Relaxed);
    let orders = create_orders(&app, 4, 1).await;
    outage_of(&running.stats, 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(running.stats.dead_lettered.load(Ordering::Relaxed), 0);

    // Back: the held message's dead letter is stored, and only then is it terminated.
    dlq::ensure_streams(&js).await.unwrap();
    let start = Instant::now();
    let letters = loop {
        let letters = dlq::list(&js, "dlqdown", None).await.unwrap();
        if !letters.is_empty() {
            break letters;
        }
        assert!(start.elapsed() < PATIENCE, "the dead letter never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let refused = refused.lock().unwrap().clone().unwrap();
    let mut ok: HashSet<String> = orders.into_iter().filter(|o| *o != refused).collect();
    ok.extend(first);
    let expected_ok = expected_events(&app, &ok, &topics);
    processed_all(&db, "dlqdown", &expected_ok).await;
    let stats = running.stop().await;
    exactly_once(&db, "dlqdown", &expected_ok);
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!((letter.reason.as_str(), letter.delivered), ("permanent", 1));
    let refused_ids = expected_events(&app, &HashSet::from([refused]), &topics);
    assert!(refused_ids.contains(letter.header("Dlq-Original-Msg-Id").unwrap()));
    report("dlqdown", stats, started);
}

/// A [`Recorder`] that panics on one order's events.
struct Panics {
    order: String,
    inner: Recorder,
}

impl Handler for Panics {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        self.inner.migrate(conn)
    }

    async fn handle(
        &self,
        event: &Event,
        delivery: &Delivery,
        tx: &mut HandlerTx<'_>,
    ) -> Result<(), Failure> {
        if event.order_id().map(|id| id.to_string()) == Some(self.order.clone()) {
            tx.execute("INSERT INTO effects (grp, event_id, topic, delivered, payload, headers, at_ms) VALUES ('panics', 'half-done', '', 0, '', '', 0)", [])?;
            panic!("the handler tripped over order {}", self.order);
        }
        self.inner.handle(event, delivery, tx).await
    }
}

#[tokio::test]
async fn a_handler_that_panics_dead_letters_its_message_and_the_group_goes_on() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let orders: Vec<String> = create_orders(&app, 6, 1).await.into_iter().collect();
    let handler = Panics {
        order: orders[0].clone(),
        inner: Recorder::new("panics"),
    };
    let running = Running::start(&js, group_config("panics", &topics, &db), handler);
    let ok: HashSet<String> = orders[1..].iter().cloned().collect();
    let expected = expected_events(&app, &ok, &topics);
    processed_all(&db, "panics", &expected).await;
    let later = create_orders(&app, 3, 1).await;
    let expected_later = expected_events(&app, &later, &topics);
    processed_all(&db, "panics", &expected_later).await;
    let start = Instant::now();
    let letters = loop {
        let letters = dlq::list(&js, "panics", None).await.unwrap();
        if !letters.is_empty() {
            break letters;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the panic never became a dead letter"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The group is still running and stops cleanly.
    let stats = running.stop().await;
    let mut all = expected;
    all.extend(expected_later);
    // The panicking handler's half-done write was rolled back with its savepoint.
    exactly_once(&db, "panics", &all);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "permanent");
    assert!(
        letters[0].error.contains("tripped over order"),
        "{}",
        letters[0].error
    );
    report("panics", stats, started);
}

/// A [`Recorder`] that hangs on the first delivery of one order's events, and is `slow` on
/// every event.
struct Hangs {
    order: Option<String>,
    slow: Duration,
    /// Calls so far.
    calls: Arc<AtomicU64>,
    inner: Recorder,
}

impl Handler for Hangs {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        self.inner.migrate(conn)
    }

    async fn handle(
        &self,
        event: &Event,
        delivery: &Delivery,
        tx: &mut HandlerTx<'_>,
    ) -> Result<(), Failure> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let order = event.order_id().map(|id| id.to_string());
        if order.is_some() && order == self.order && delivery.delivered == 1 {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.slow).await;
        self.inner.handle(event, delivery, tx).await
    }
}

#[tokio::test]
async fn a_handler_past_its_timeout_is_retried_and_holds_up_nothing_else() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let orders: Vec<String> = create_orders(&app, 5, 1).await.into_iter().collect();
    let mut config = group_config("hangs", &topics, &db);
    // Longer than the test waits: only the timeout can end the hung call.
    config.ack_wait = PATIENCE * 2;
    config.handler_timeout = Duration::from_millis(300);
    let handler = Hangs {
        order: Some(orders[0].clone()),
        slow: Duration::ZERO,
        calls: Arc::default(),
        inner: Recorder::new("hangs"),
    };
    let running = Running::start(&js, config, handler);
    let expected = expected_events(&app, &orders.iter().cloned().collect(), &topics);
    processed_all(&db, "hangs", &expected).await;
    let timeouts = running.stats.timeouts.load(Ordering::Relaxed);
    let stats = running.stop().await;
    exactly_once(&db, "hangs", &expected);
    let hung = expected_events(&app, &HashSet::from([orders[0].clone()]), &topics);
    for (event_id, delivered) in deliveries(&db, "hangs") {
        let want = if hung.contains(&event_id) { 2 } else { 1 };
        assert_eq!(delivered, want, "{event_id}");
    }
    assert_eq!(timeouts, 1);
    report("hangs", stats, started);
}

#[tokio::test]
async fn a_batch_of_slow_handlers_longer_than_ack_wait_is_not_delivered_again() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    // All stored before the group starts, so they come in one batch.
    let orders = create_orders(&app, 8, 1).await;
    let mut config = group_config("slow", &topics, &db);
    config.ack_wait = Duration::from_secs(1);
    // Every delivery is the last: in-progress acks must not make the broker give any up.
    config.max_deliver = 1;
    let handler = Hangs {
        order: None,
        slow: Duration::from_millis(400),
        calls: Arc::default(),
        inner: Recorder::new("slow"),
    };
    let running = Running::start(&js, config, handler);
    let expected = expected_events(&app, &orders, &topics);
    processed_all(&db, "slow", &expected).await;
    let stats = running.stop().await;
    exactly_once(&db, "slow", &expected);
    assert_eq!((stats.redeliveries, stats.duplicates), (0, 0));
    let letters = dlq::list(&js, "slow", None).await.unwrap();
    assert!(
        letters.is_empty(),
        "processed events dead-lettered: {}",
        letters.len()
    );
    report("slow", stats, started);
}

#[tokio::test]
async fn a_stopping_group_sends_back_what_it_had_not_started_at_once() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let orders = create_orders(&app, 10, 1).await;
    let expected = expected_events(&app, &orders, &topics);
    let mut config = group_config("stops", &topics, &db);
    // Longer than the test waits: only a NAK brings the unstarted messages back in time.
    config.ack_wait = PATIENCE * 2;
    let calls = Arc::new(AtomicU64::new(0));
    let slow = Hangs {
        order: None,
        slow: Duration::from_millis(500),
        calls: calls.clone(),
        inner: Recorder::new("stops"),
    };
    let first = Running::start(&js, config.clone(), slow);
    until("a handler runs", async || calls.load(Ordering::Relaxed) > 0).await;
    let first = first.stop().await;
    let done_first = effects(&db, "stops").len();
    assert!(
        done_first < expected.len(),
        "the whole batch ran after the stop: {done_first}"
    );

    let second = Running::start(&js, config, Recorder::new("stops"));
    processed_all(&db, "stops", &expected).await;
    let second = second.stop().await;
    exactly_once(&db, "stops", &expected);
    let redelivered = deliveries(&db, "stops")
        .into_iter()
        .filter(|(_, d)| *d == 2)
        .count();
    assert_eq!(redelivered, expected.len() - done_first);
    eprintln!("stops: {done_first} processed before the stop, {redelivered} sent back");
    report("stops", crate::consumer::add(first, second), started);
}

#[tokio::test]
async fn an_event_processed_on_its_last_delivery_is_not_a_dead_letter() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let mut config = group_config("last", &topics, &db);
    config.max_deliver = 2;
    let running = Running::start(
        &js,
        config,
        Recorder::failing("last", |_, delivery| {
            (delivery.delivered < 2).then(|| Failure::transient("not yet"))
        }),
    );
    let orders = create_orders(&app, 3, 1).await;
    let expected = expected_events(&app, &orders, &topics);
    processed_all(&db, "last", &expected).await;
    // Time for the broker's advisory of the last deliveries to arrive and be acted on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = running.stop().await;
    exactly_once(&db, "last", &expected);
    let letters = dlq::list(&js, "last", None).await.unwrap();
    assert!(
        letters.is_empty(),
        "processed events dead-lettered: {}",
        letters.len()
    );
    report("last", stats, started);
}

#[tokio::test]
async fn a_partition_the_topic_does_not_have_is_refused() {
    let (_started, _nats, _app, js, _dir, db) = setup(|_| {}).await;
    let mut config = group_config("nopart", &[Topic::Created], &db);
    config.partition = Some(3);
    let group = order_service::consumer::Group::new(js.clone(), config, Recorder::new("nopart"));
    let error = group
        .unwrap()
        .run(std::future::pending())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("partition 3 of order.created"),
        "{error}"
    );
}

#[tokio::test]
async fn replay_sends_dead_letters_back_in_their_original_order_and_says_so() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let orders = create_orders(&app, 5, 1).await;
    let refuse = Arc::new(AtomicBool::new(true));
    let decide = refuse.clone();
    let running = Running::start(
        &js,
        group_config("replays", &topics, &db),
        Recorder::failing("replays", move |_, delivery| {
            if !decide.load(Ordering::Relaxed) || delivery.is_replay() {
                assert!(delivery.original().is_some() == delivery.is_replay());
                return None;
            }
            // The first event fails once before it is refused: it becomes the last dead letter.
            Some(
                if delivery.stream_sequence == 1 && delivery.delivered == 1 {
                    Failure::transient("not yet")
                } else {
                    Failure::permanent("refused")
                },
            )
        }),
    );
    let expected = expected_events(&app, &orders, &topics);
    until("every event is a dead letter", async || {
        running.stats.dead_lettered.load(Ordering::Relaxed) == expected.len() as u64
    })
    .await;
    refuse.store(false, Ordering::Relaxed);
    assert_eq!(dlq::replay(&js, "replays", None).await.unwrap().sent, 5);
    processed_all(&db, "replays", &expected).await;
    let stats = running.stop().await;
    exactly_once(&db, "replays", &expected);
    // Processed in the order they were first stored, each knowing its original sequence.
    let conn = read_only(&db);
    let mut stmt = conn
        .prepare("SELECT headers FROM effects WHERE grp = 'replays' ORDER BY seq")
        .unwrap();
    let sources: Vec<u64> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|h| {
            let h: serde_json::Value = serde_json::from_str(&h.unwrap()).unwrap();
            h["Dlq-Source-Sequence"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    let mut sorted = sources.clone();
    sorted.sort_unstable();
    assert_eq!(sources, sorted);
    report("replays", stats, started);
}

#[tokio::test]
async fn metrics_count_per_group_and_handler_and_failures_by_kind() {
    let (_started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let orders: Vec<String> = create_orders(&app, 4, 1).await.into_iter().collect();
    let handler = Panics {
        order: orders[0].clone(),
        inner: Recorder::new("metered"),
    };
    let metrics = Arc::new(order_service::consumer::metrics::ConsumerMetrics::new());
    let group = order_service::consumer::Group::new(
        js.clone(),
        group_config("metered", &topics, &db),
        handler,
    )
    .unwrap()
    .with_metrics(metrics.clone());
    let shutdown = order_service::shutdown::Shutdown::new();
    let task = tokio::spawn(group.run(shutdown.signal()));
    let ok: HashSet<String> = orders[1..].iter().cloned().collect();
    processed_all(&db, "metered", &expected_events(&app, &ok, &topics)).await;
    until("the panic is counted", async || {
        metrics.render().contains(r#"kind="panic"} 1"#)
    })
    .await;
    shutdown.trigger();
    task.await.unwrap().unwrap();
    let text = metrics.render();
    assert!(
        text.contains(r#"consumer_events_processed_total{group="metered",handler="Panics"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"consumer_events_failed_total{group="metered",handler="Panics",kind="panic"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"consumer_handler_duration_seconds_count{group="metered",handler="Panics"} 4"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn redeliveries_after_transient_failures_wait_out_the_groups_backoff() {
    let (_started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let seen: Arc<std::sync::Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let noted = seen.clone();
    let mut config = group_config("backoff", &topics, &db);
    config.backoff = vec![Duration::from_millis(400), Duration::from_millis(1500)];
    let running = Running::start(
        &js,
        config,
        Recorder::failing("backoff", move |_, delivery| {
            noted
                .lock()
                .unwrap()
                .push((delivery.delivered, Instant::now()));
            (delivery.delivered < 3).then(|| Failure::transient("not yet"))
        }),
    );
    let orders = create_orders(&app, 1, 1).await;
    processed_all(&db, "backoff", &expected_events(&app, &orders, &topics)).await;
    running.stop().await;
    let seen = seen.lock().unwrap();
    let deliveries: Vec<u64> = seen.iter().map(|(d, _)| *d).collect();
    assert_eq!(deliveries, [1, 2, 3]);
    // Never sooner than the schedule says: the n-th failure waits the n-th entry.
    let first_wait = seen[1].1 - seen[0].1;
    let second_wait = seen[2].1 - seen[1].1;
    assert!(first_wait >= Duration::from_millis(400), "{first_wait:?}");
    assert!(
        second_wait >= Duration::from_millis(1500),
        "{second_wait:?}"
    );
}

/// `max_deliver` counts the handler's runs, not the broker's deliveries. An order's second event
/// waits parked behind its first, which failed once and is due again in 5 s; meanwhile the group
/// (max_deliver 2) is stopped and started three times, and each stop sends the parked event back
/// unstarted. Both events are then applied once, and nothing is a dead letter, though the second
/// was delivered at least four times. Before, the broker's `max_deliver` of 2 ran out on the
/// second stop: the broker never delivered the event again (the third start waited for it in
/// vain), and it went to the dead letters without ever running.
#[tokio::test]
async fn restarts_do_not_use_up_the_runs_of_an_event_that_never_ran() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::StatusChanged];
    let ids = crate::repair::orders(&app, 1).await;
    crate::repair::cancel_all(&app, &ids).await;
    let orders: HashSet<String> = ids.iter().cloned().collect();
    let expected = expected_events(&app, &orders, &topics);
    assert_eq!(expected.len(), 2);
    let first = app
        .outbox()
        .into_iter()
        .find(|r| expected.contains(&r.event_id))
        .unwrap()
        .event_id;
    let mut config = group_config("restarts", &topics, &db);
    config.max_deliver = 2;
    config.backoff = vec![Duration::from_secs(5)];
    let handler = || {
        let first = first.clone();
        Recorder::failing("restarts", move |event, delivery| {
            (event.event_id().to_string() == first && delivery.delivered == 1)
                .then(|| Failure::transient("not yet"))
        })
    };
    let mut stats = Vec::new();
    for _ in 0..3 {
        let running = Running::start(&js, config.clone(), handler());
        let parked = running.stats.clone();
        until(
            "the second event is delivered again and parked",
            async || parked.parked.load(Ordering::Relaxed) > 0,
        )
        .await;
        stats.push(running.stop().await);
    }
    let running = Running::start(&js, config, handler());
    processed_all(&db, "restarts", &expected).await;
    // Time for an advisory of the broker's max_deliver to arrive and be acted on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stats.push(running.stop().await);
    exactly_once(&db, "restarts", &expected);
    let letters = dlq::list(&js, "restarts", None).await.unwrap();
    assert!(letters.is_empty(), "dead letters: {letters:?}");
    let most = deliveries(&db, "restarts")
        .into_iter()
        .map(|(_, d)| d)
        .max()
        .unwrap();
    assert!(most >= 4, "the parked event was delivered {most} times");
    let total = stats.into_iter().reduce(crate::consumer::add).unwrap();
    report("restarts", total, started);
}

/// Each partition's process gets the replays of its own partition: three groups of one name,
/// partitions 0 to 2, each with its own file, dead-letter every event; after `dlq replay` each
/// file holds the effects of its own partition's events, once each. Before, the partitions
/// shared one replay consumer, and replays landed in whichever partition's process pulled
/// first (another partition's file).
#[tokio::test]
async fn replays_go_to_the_process_and_file_of_their_partition() {
    let (started, _nats, app, js, dir, _) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let orders = create_orders(&app, 30, 2).await;
    let expected = expected_events(&app, &orders, &topics);
    let refuse = Arc::new(AtomicBool::new(true));
    let mut groups = Vec::new();
    for partition in 0..3 {
        let db = dir.path().join(format!("p{partition}.db"));
        let mut config = group_config("split", &topics, &db);
        config.partition = Some(partition);
        let decide = refuse.clone();
        let handler = Recorder::failing("split", move |_, delivery| {
            (decide.load(Ordering::Relaxed) && !delivery.is_replay())
                .then(|| Failure::permanent("refused"))
        });
        groups.push((partition, db, Running::start(&js, config, handler)));
    }
    until("every event is a dead letter", async || {
        let dead: u64 = groups
            .iter()
            .map(|(_, _, g)| g.stats.dead_lettered.load(Ordering::Relaxed))
            .sum();
        dead == expected.len() as u64
    })
    .await;
    refuse.store(false, Ordering::Relaxed);
    assert_eq!(
        dlq::replay(&js, "split", None).await.unwrap().sent,
        expected.len()
    );
    until("every replay is applied", async || {
        let done: HashSet<String> = groups
            .iter()
            .flat_map(|(_, db, _)| effects(db, "split").into_keys())
            .collect();
        expected.is_subset(&done)
    })
    .await;
    let mut stats = Vec::new();
    let mut misplaced = Vec::new();
    for (partition, db, running) in groups {
        stats.push(running.stop().await);
        let conn = read_only(&db);
        let mut stmt = conn
            .prepare("SELECT headers FROM effects WHERE grp = 'split'")
            .unwrap();
        for headers in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
            let headers: serde_json::Value = serde_json::from_str(&headers.unwrap()).unwrap();
            // order.created.<P>.<key>
            let source = headers["Dlq-Source-Subject"].as_str().unwrap().to_owned();
            if source.split('.').nth(2) != Some(partition.to_string().as_str()) {
                misplaced.push((partition, source));
            }
        }
        let done = effects(&db, "split");
        assert!(done.values().all(|n| *n == 1), "applied twice: {done:?}");
    }
    assert!(
        misplaced.is_empty(),
        "{} replays applied by another partition's process: {misplaced:?}",
        misplaced.len()
    );
    let total = stats.into_iter().reduce(crate::consumer::add).unwrap();
    report("split", total, started);
}
