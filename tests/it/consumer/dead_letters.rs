//! Dead letters and the command line, end to end: schema errors, permanent failures and
//! exhausted retries become dead letters that `dlq` lists and replays once, a message never
//! answered becomes one when `max_deliver` runs out, and `tail` prints a topic's events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use order_service::consumer::{Failure, dlq};
use order_service::domain::Topic;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{OutboxRow, PATIENCE, run_cli};
use crate::consumer::{
    Recorder, Running, Stall, create_orders, effects, exactly_once, expected_events, group_config,
    processed_all, publish_raw, relaying_app, report, setup,
};
use crate::nats::NatsServer;

#[tokio::test]
async fn schema_permanent_and_exhausted_messages_become_dead_letters_and_replay_delivers_once() {
    let (started, nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let mut config = group_config("dead", &topics, &db);
    config.max_deliver = 3;

    // One order's event is refused for good, another's fails every time, until mended.
    let orders: Vec<String> = create_orders(&app, 3, 1).await.into_iter().collect();
    let (refused, exhausted) = (orders[0].clone(), orders[1].clone());
    let mended = Arc::new(AtomicBool::new(false));
    let recorder = |mended: Arc<AtomicBool>, refused: String, exhausted: String| {
        Recorder::failing("dead", move |event, _| {
            let order = event.order_id().map(|id| id.to_string());
            if mended.load(Ordering::Relaxed) {
                None
            } else if order.as_deref() == Some(refused.as_str()) {
                Some(Failure::permanent("refused"))
            } else if order.as_deref() == Some(exhausted.as_str()) {
                Some(Failure::transient("down"))
            } else {
                None
            }
        })
    };
    let running = Running::start(
        &js,
        config.clone(),
        recorder(mended.clone(), refused.clone(), exhausted.clone()),
    );

    // Straight onto the stream: a newer minor (processed), a newer major, and no JSON at all.
    let template = app
        .outbox()
        .into_iter()
        .find(|r| r.topic == "order.created")
        .unwrap()
        .payload;
    let newer_minor_id = Uuid::now_v7();
    let mut newer_minor = template.clone();
    newer_minor["event_id"] = json!(newer_minor_id);
    newer_minor["version"] = json!("1.4");
    newer_minor["data"]["loyalty_tier"] = json!("gold");
    newer_minor["data"]["order_id"] = json!(Uuid::now_v7());
    let mut newer_major = template.clone();
    newer_major["event_id"] = json!(Uuid::now_v7());
    newer_major["version"] = json!("2.0");
    publish_raw(&js, "probe-minor", newer_minor.to_string()).await;
    publish_raw(&js, "probe-major", newer_major.to_string()).await;
    publish_raw(&js, "probe-garbage", "not json".into()).await;

    let start = Instant::now();
    let letters = loop {
        let letters = dlq::list(&js, "dead", None).await.unwrap();
        if letters.len() >= 4 {
            break letters;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "only {} dead letters",
            letters.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letters.len(), 4, "{letters:?}");
    let mut reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(reasons, ["max_deliver", "permanent", "schema", "schema"]);
    for letter in &letters {
        assert_eq!(letter.subject, "dlq.dead.order.created");
        assert_eq!(letter.group, "dead");
        assert_eq!(letter.source.0, "ORDER_CREATED");
        assert!(letter.source.1 > 0);
        assert!(
            letter.header("Event-Type") == Some("order.created"),
            "{letter:?}"
        );
        let original = letter.header("Dlq-Original-Msg-Id").unwrap();
        let stored = js
            .get_stream("ORDER_CREATED")
            .await
            .unwrap()
            .get_raw_message(letter.source.1)
            .await
            .unwrap();
        assert_eq!(letter.payload, stored.payload, "the original body");
        assert_eq!(
            stored.headers.get("Nats-Msg-Id").unwrap().as_str(),
            original
        );
        match letter.reason.as_str() {
            "max_deliver" => assert_eq!(letter.delivered, 3),
            "permanent" => assert_eq!(letter.delivered, 1),
            _ => assert!(letter.error.contains("version") || letter.error.contains("JSON")),
        }
    }
    let major = letters.iter().find(|l| l.error.contains("major")).unwrap();
    assert!(major.error.contains("2.0"), "{}", major.error);

    // The spec's "dead letters accumulating": a warning and a gauge.
    let start = Instant::now();
    loop {
        let ready = app.readiness().await;
        if ready["checks"]["consumers"]["dead_letters"] == 4 {
            assert!(
                ready["warnings"].to_string().contains("dead letters: 4"),
                "{ready}"
            );
            break;
        }
        assert!(start.elapsed() < PATIENCE, "{ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    loop {
        let metrics = app.metrics().await;
        if metrics.contains(
            "consumer_dead_letters{group=\"dead\",topic=\"order.created\",consumer=\"dead\"} 4",
        ) {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = run_cli(&nats, &["dlq", "list", "--group", "dead"]);
    assert!(
        listed.contains("4 dead letter(s)") && listed.contains("max_deliver"),
        "{listed}"
    );
    let table = run_cli(&nats, &["consumers", "list"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("dead ") && l.contains("order.created"))
        .unwrap();
    assert!(line.trim_end().ends_with(" 4"), "{table}");

    // Mended: replaying sends every letter back once; the readable ones are processed, the
    // unreadable ones come back as dead letters.
    let before = effects(&db, "dead");
    mended.store(true, Ordering::Relaxed);
    let replayed = run_cli(
        &nats,
        &[
            "dlq",
            "replay",
            "--group",
            "dead",
            "--topic",
            "order.created",
        ],
    );
    assert!(replayed.contains("replayed 4"), "{replayed}");
    let mut expected: HashSet<String> =
        expected_events(&app, &orders.iter().cloned().collect(), &topics);
    expected.insert(newer_minor_id.to_string());
    processed_all(&db, "dead", &expected).await;
    let start = Instant::now();
    let again = loop {
        let again = dlq::list(&js, "dead", None).await.unwrap();
        if again.len() == 2 {
            break again;
        }
        assert!(start.elapsed() < PATIENCE, "{again:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        again
            .iter()
            .all(|l| l.reason == "schema" && l.header("Dlq-Replayed") == Some("true"))
    );
    assert!(
        again.iter().all(|l| l.source.0 == "ORDER_CREATED"),
        "still points at the original"
    );
    // Replaying nothing twice changes nothing.
    assert_eq!(
        dlq::replay(&js, "dead", Some("order.updated"))
            .await
            .unwrap()
            .sent,
        0
    );
    assert_eq!(before.len() + 2, effects(&db, "dead").len());
    let purged = run_cli(&nats, &["dlq", "purge", "--group", "dead"]);
    assert!(purged.contains("purged 2"), "{purged}");
    assert!(dlq::list(&js, "dead", None).await.unwrap().is_empty());
    let stats = running.stop().await;
    exactly_once(&db, "dead", &expected);
    report("dead", stats, started);
}

#[tokio::test]
async fn tail_prints_a_topics_events_from_the_start_and_for_one_order() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let orders: Vec<String> = create_orders(&app, 3, 1).await.into_iter().collect();
    let start = Instant::now();
    while app.outbox().iter().any(|r| r.status == "pending") {
        assert!(start.elapsed() < PATIENCE);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = run_cli(
        &nats,
        &["tail", "order.created", "--all", "--json", "--limit", "3"],
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let rows: HashMap<String, OutboxRow> = app
        .outbox()
        .into_iter()
        .filter(|r| r.topic == "order.created")
        .map(|r| (r.event_id.clone(), r))
        .collect();
    for line in &lines {
        let id = line["message"]["event_id"].as_str().unwrap();
        assert_eq!(line["message"], rows[id].payload);
        assert_eq!(line["headers"]["Nats-Msg-Id"], id);
        assert_eq!(line["stream"], "ORDER_CREATED");
    }
    let one = &orders[1];
    let out = run_cli(
        &nats,
        &[
            "tail",
            "order.audit",
            "--all",
            "--order",
            one,
            "--limit",
            "1",
        ],
    );
    assert!(
        out.contains("order.audit") && out.contains("create by customer"),
        "{out}"
    );
    let order_number = app.events_of(one)[0].payload["data"]["order_number"].clone();
    assert!(out.contains(order_number.as_str().unwrap()), "{out}");
}

#[tokio::test]
async fn a_message_never_answered_becomes_a_dead_letter_when_max_deliver_runs_out() {
    let nats = NatsServer::start().await;
    let app = relaying_app(&nats, |_| {}).await;
    let js = nats.jetstream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("consumer.db");
    let topics = [Topic::Created];
    let mut config = group_config("hung", &topics, &db);
    config.max_deliver = 2;
    config.ack_wait = Duration::from_secs(1);
    // The worker gives a hung call up after this and keeps its message alive until then.
    config.handler_timeout = Duration::from_secs(2);
    let (got, _deliveries) = tokio::sync::mpsc::unbounded_channel();
    let hung = Running::start(&js, config, Stall { got });
    let orders = create_orders(&app, 1, 1).await;
    let expected = expected_events(&app, &orders, &topics);
    let start = Instant::now();
    let letters = loop {
        let letters = dlq::list(&js, "hung", None).await.unwrap();
        if !letters.is_empty() {
            break letters;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the hung message never became a dead letter"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stats = hung.kill().await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (letter.reason.as_str(), letter.delivered),
        ("max_deliver", 2)
    );
    // The worker's verdict after the last timeout and the broker's advisory race; the first
    // dead letter is kept (its id is the delivery's).
    assert!(
        letter.error.contains("took longer than") || letter.error.contains("ack_wait"),
        "{}",
        letter.error
    );
    let id = letter.header("Dlq-Original-Msg-Id").unwrap().to_owned();
    assert!(expected.contains(&id));
    let row = app.outbox().into_iter().find(|r| r.event_id == id).unwrap();
    assert_eq!(letter.payload, row.raw.as_bytes());
    assert!(effects(&db, "hung").is_empty());
    eprintln!(
        "hung: {} deliveries, {} dead letters",
        stats.deliveries, stats.dead_lettered
    );
}

/// A replayed event whose handler takes its process down every time goes back to the dead
/// letters: the group watches the broker's `MAX_DELIVERIES` advisory on its replay consumer too.
/// The event is refused into `ORDER_DLQ`, replayed, and then delivered to a group that hangs in
/// the handler and is killed (its lease let go, as after its expiry), once per delivery the
/// broker allows (4, for `max_deliver` 1); a last group then hears the advisory. Before, nothing
/// watched the replay consumer: the event sat undeliverable in the replay stream, already gone
/// from `ORDER_DLQ`, with no effect and no dead letter.
#[tokio::test]
async fn a_replay_that_takes_its_process_down_every_time_is_a_dead_letter_again() {
    let (started, nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let mut config = group_config("crashes", &topics, &db);
    config.max_deliver = 1;
    // Long enough for the last group to be up and listening when the broker gives up (its
    // advisory is not stored).
    config.ack_wait = Duration::from_secs(3);
    // Longer than the test: only a dead process ends the hung call.
    config.handler_timeout = PATIENCE * 2;
    // Each group on a connection of its own, closed with it as a process's would be: a pull
    // request a stopped group left waiting on the server must not take a delivery.
    let own = nats.jetstream().await;
    let refusing = Running::start(
        &own,
        config.clone(),
        Recorder::failing("crashes", |_, _| Some(Failure::permanent("refused"))),
    );
    let orders = create_orders(&app, 1, 1).await;
    let expected = expected_events(&app, &orders, &topics);
    let until_letters = async |n: usize| {
        let start = Instant::now();
        loop {
            let letters = dlq::list(&js, "crashes", None).await.unwrap();
            if letters.len() >= n {
                return letters;
            }
            assert!(start.elapsed() < PATIENCE, "no dead letter");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    until_letters(1).await;
    let mut stats = vec![refusing.stop().await];
    drop(own);
    assert_eq!(dlq::replay(&js, "crashes", None).await.unwrap().sent, 1);

    let leases = js
        .get_key_value(order_service::consumer::OWNERS_BUCKET)
        .await
        .unwrap();
    for delivery in 1..=4 {
        let own = nats.jetstream().await;
        let (got, mut delivered) = tokio::sync::mpsc::unbounded_channel();
        let hung = Running::start(&own, config.clone(), Stall { got });
        tokio::time::timeout(PATIENCE, delivered.recv())
            .await
            .unwrap_or_else(|_| panic!("delivery {delivery} of the replay never came"))
            .unwrap();
        stats.push(hung.kill().await);
        drop(own);
        leases.delete("crashes").await.unwrap();
    }
    let last = Running::start(&js, config, Recorder::new("crashes"));
    let letters = until_letters(1).await;
    // Time for a second advisory, were there one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stats.push(last.stop().await);
    let letters_now = dlq::list(&js, "crashes", None).await.unwrap();
    assert_eq!(letters_now.len(), 1, "{letters_now:?}");
    let letter = &letters[0];
    assert_eq!(letter.reason, "max_deliver");
    assert_eq!(letter.header("Dlq-Replayed"), Some("true"));
    let id = letter.header("Dlq-Original-Msg-Id").unwrap();
    assert!(expected.contains(id));
    assert!(
        effects(&db, "crashes").is_empty(),
        "the event never ran to the end"
    );
    let total = stats.into_iter().reduce(crate::consumer::add).unwrap();
    report("crashes", total, started);
}
