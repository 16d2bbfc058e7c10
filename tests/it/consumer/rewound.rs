//! A stream that went back under a group's consumer: the stream lost its last messages (its block
//! cut while the server was down) and stored others at their sequences, while the consumer stood
//! past them. On one server the server itself moves a single-replica consumer back when it starts;
//! a replicated one can stay where it was (the campaign's 30-minute run lost thousands of events
//! so, and no cluster scenario scripted so far reproduced it), which the test sets with the
//! broker's own reset. The group must notice, move the consumer
//! back, and apply what the stream holds now, each event once.

use std::collections::HashSet;

use order_service::domain::Topic;
use serde_json::Value;

use super::order::body;
use super::{
    Running, create_orders, exactly_once, expected_events, processed_all, publish_raw, setup,
};
use crate::relay::drained;

#[tokio::test]
async fn a_stream_that_lost_its_tail_and_stored_others_there_gets_them_to_the_group() {
    let (_, mut nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let orders = create_orders(&app, 40, 4).await;
    drained(&app).await;
    let before = expected_events(&app, &orders, &topics);
    let template = app.outbox()[0].payload.clone();
    let group = Running::recording(&js, "rewound", &topics, &db);
    processed_all(&db, "rewound", &before).await;
    group.stop().await;
    // The service is gone: what the stream holds from here on is the test's.
    app.stop().await;
    let stream = "ORDER_CREATED";
    let held = last_sequence(&js, stream).await;
    assert_eq!(held, 40);

    // The block cut in half while the server is down, and its state file lost with it.
    nats.stop().await;
    nats.edit_blocks(stream, |files| {
        for file in files {
            let mut bytes = std::fs::read(file).unwrap();
            if file.ends_with("index.db") {
                bytes.fill(0);
            } else if file.ends_with("1.blk") {
                bytes.truncate(bytes.len() / 2);
            }
            std::fs::write(file, bytes).unwrap();
        }
    })
    .await;
    nats.start_again().await;
    let js = nats.jetstream().await;
    let kept = last_sequence(&js, stream).await;
    assert!(kept < held, "the cut did not take: {kept} of {held} kept");

    // Where a replicated consumer stays: past what the stream holds now.
    let consumer = "rewound";
    let answer: Value = js
        .request(
            format!("CONSUMER.RESET.{stream}.{consumer}"),
            &serde_json::json!({ "seq": held + 1 }),
        )
        .await
        .unwrap();
    assert!(answer.get("error").is_none(), "{answer}");
    // Thirty new events: the stream stores them from the first lost sequence on, so the
    // sequences the group read before now hold other events, and the stream goes on past them.
    let mut after = HashSet::new();
    for i in 0..30 {
        let body = body(&template);
        let id: Value = serde_json::from_str(&body).unwrap();
        after.insert(id["event_id"].as_str().unwrap().to_owned());
        publish_raw(&js, &format!("new-{i}"), body).await;
    }
    assert_eq!(last_sequence(&js, stream).await, kept + 30);
    eprintln!(
        "rewound: {stream} held {held}, kept {kept}, holds {} now; the consumer stood at {}",
        kept + 30,
        held + 1
    );

    let group = Running::recording(&js, "rewound", &topics, &db);
    let all: HashSet<String> = before.union(&after).cloned().collect();
    processed_all(&db, "rewound", &all).await;
    let rewinds = group
        .stats
        .rewinds
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(rewinds, 1, "the consumer was moved back once");
    let stats = group.stop().await;
    eprintln!("rewound: {stats:?}");
    exactly_once(&db, "rewound", &all);
}

async fn last_sequence(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .cached_info()
        .state
        .last_sequence
}
