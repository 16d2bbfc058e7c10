//! A consumer group staying correct over time, against the real broker: its processed events are
//! pruned once no stream it reads can deliver them again, and events of a later minor version
//! (fields this build does not know, anywhere) are handled while another major is a dead letter.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use order_service::consumer::{dlq, idempotency};
use order_service::domain::Topic;
use serde_json::json;
use uuid::Uuid;

use crate::app::{PATIENCE, stream_config};
use crate::consumer::{
    Running, create_orders, effects, expected_events, processed_all, publish_raw, setup,
};

/// Writes processed-events rows of `group` recorded `age` ago; returns their event ids.
fn seed(db: &Path, group: &str, age: Duration, n: usize) -> Vec<String> {
    let conn = idempotency::open(db, false).unwrap();
    let at = idempotency::timestamp(Utc::now() - chrono::Duration::from_std(age).unwrap());
    let ids: Vec<String> = (0..n).map(|_| Uuid::now_v7().to_string()).collect();
    for id in &ids {
        conn.execute(
            "INSERT INTO processed_events
                 (consumer_group, event_id, topic, stream, stream_seq, delivered, processed_at)
             VALUES (?1, ?2, 'order.created', 'ORDER_CREATED', 1, 1, ?3)",
            (group, id, &at),
        )
        .unwrap();
    }
    ids
}

/// Which of `ids` `group` still has in its processed events.
fn still_recorded(db: &Path, group: &str, ids: &[String]) -> usize {
    let conn = idempotency::open(db, false).unwrap();
    ids.iter()
        .filter(|id| idempotency::is_processed(&conn, group, id.parse().unwrap()).unwrap())
        .count()
}

#[tokio::test]
async fn processed_events_are_pruned_after_the_streams_max_age_and_duplicate_window() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    // order.created keeps 7 days, order.audit 90: the group must keep what the longest allows.
    let topics = [Topic::Created, Topic::Audit];
    // The dead-letter streams are created by the first group; the horizon is needed before.
    dlq::ensure_streams(&js).await.unwrap();
    let mut keeping = HashMap::new();
    for stream in [
        "ORDER_CREATED",
        "ORDER_AUDIT",
        dlq::DLQ_STREAM,
        dlq::REPLAY_STREAM,
    ] {
        let config = stream_config(&js, stream).await;
        assert!(!config.max_age.is_zero(), "{stream} keeps messages forever");
        keeping.insert(stream, config.max_age + config.duplicate_window);
    }
    let delivered_for = keeping["ORDER_CREATED"].max(keeping["ORDER_AUDIT"]);
    // An event processed and also dead-lettered can be replayed while ORDER_DLQ keeps its
    // letter, and delivered while the replay stream keeps the copy.
    let horizon = delivered_for + keeping[dlq::DLQ_STREAM] + keeping[dlq::REPLAY_STREAM];
    assert!(
        horizon > Duration::from_secs(150 * 24 * 3600),
        "{horizon:?}"
    );
    let hour = Duration::from_secs(3600);

    let expired = seed(&db, "pruning", horizon + hour, 2_500);
    let within = seed(&db, "pruning", horizon - hour, 3);
    let replayable = seed(&db, "pruning", delivered_for + hour, 3);
    let past_created_only = seed(&db, "pruning", Duration::from_secs(8 * 24 * 3600), 3);
    let other_group = seed(&db, "other", horizon + hour, 3);

    let running = Running::recording(&js, "pruning", &topics, &db);
    let start = Instant::now();
    while still_recorded(&db, "pruning", &expired) > 0 {
        assert!(
            start.elapsed() < PATIENCE,
            "{} of {} expired rows still there",
            still_recorded(&db, "pruning", &expired),
            expired.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(still_recorded(&db, "pruning", &within), within.len());
    assert_eq!(
        still_recorded(&db, "pruning", &replayable),
        replayable.len(),
        "a dead letter of these may still be replayed"
    );
    assert_eq!(
        still_recorded(&db, "pruning", &past_created_only),
        past_created_only.len(),
        "order.audit may still deliver these"
    );
    assert_eq!(
        still_recorded(&db, "other", &other_group),
        other_group.len(),
        "another group's rows are its own"
    );

    // The group goes on processing, and what it processes now stays recorded.
    let orders = create_orders(&app, 5, 1).await;
    let expected = expected_events(&app, &orders, &topics);
    processed_all(&db, "pruning", &expected).await;
    let fresh: Vec<String> = expected.into_iter().collect();
    assert_eq!(still_recorded(&db, "pruning", &fresh), fresh.len());
    let stats = running.stop().await;
    eprintln!(
        "pruning: horizon {horizon:?}, {} expired rows deleted, {} processed, {:.1}s",
        expired.len(),
        stats.processed,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn unknown_fields_of_any_1_x_are_dropped_and_2_0_is_a_schema_dead_letter() {
    let (_started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let orders = create_orders(&app, 1, 1).await;
    let running = Running::recording(&js, "versions", &[Topic::Created], &db);
    let ordinary = expected_events(&app, &orders, &[Topic::Created]);
    let template = app
        .outbox()
        .into_iter()
        .find(|r| r.topic == "order.created")
        .unwrap()
        .payload;

    // Straight onto the stream, as a newer producer would write them: unknown fields in the
    // envelope, the metadata, the payload and an item, under 1.0, 1.3 and 2.0.
    let mut handled = HashSet::new();
    for (n, version) in ["1.0", "1.3", "2.0"].into_iter().enumerate() {
        let mut event = template.clone();
        let id = Uuid::now_v7();
        event["event_id"] = json!(id);
        event["version"] = json!(version);
        event["data"]["order_id"] = json!(Uuid::now_v7());
        event["data"]["loyalty_tier"] = json!("gold");
        event["data"]["items"][0]["gift_wrap"] = json!(true);
        event["metadata"]["tenant_id"] = json!("t-1");
        event["trace"] = json!({"sampled": true});
        if version != "2.0" {
            handled.insert(id.to_string());
        }
        publish_raw(&js, &format!("probe-{n}"), event.to_string()).await;
    }
    let expected: HashSet<String> = ordinary.union(&handled).cloned().collect();
    processed_all(&db, "versions", &expected).await;

    let start = Instant::now();
    let letters = loop {
        let letters = dlq::list(&js, "versions", None).await.unwrap();
        if !letters.is_empty() {
            break letters;
        }
        assert!(start.elapsed() < PATIENCE, "2.0 never became a dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stats = running.stop().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, "schema");
    assert!(letters[0].error.contains("2.0"), "{}", letters[0].error);
    let done = effects(&db, "versions");
    assert_eq!(
        done.keys().cloned().collect::<HashSet<_>>(),
        expected,
        "exactly the 1.x events"
    );
    assert!(done.values().all(|n| *n == 1), "{done:?}");
    eprintln!(
        "versions: {} processed, {} dead letters",
        stats.processed, stats.dead_lettered
    );
}
