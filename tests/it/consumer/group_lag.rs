//! The spec's lag warning (> 1000 messages) is about a group over all its consumers: a group
//! with one consumer per partition, each below the threshold, warns once their sum is over it.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use order_service::bus::Topics;
use order_service::consumer::lag;
use order_service::domain::Topic;
use serde_json::Value;

use crate::app::{PATIENCE, TestApp};
use crate::consumer::{Recorder, Running, group_config, setup};

const GROUP: &str = "split";

/// Publishes `n` messages on `order.created.<key>`. Nobody consumes them, so their bodies do not
/// matter.
async fn publish(js: &jetstream::Context, key: &str, n: usize) {
    let mut acks = Vec::with_capacity(n);
    for _ in 0..n {
        acks.push(
            js.publish(format!("order.created.{key}"), "{}".into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// A key the stream puts in partition 0 and one it puts in partition 1, and how many messages
/// finding them put in each of the two: the stream picks a message's partition from its key.
async fn keys_of_partitions(js: &jetstream::Context) -> ([String; 2], [usize; 2]) {
    let stream = js.get_stream("ORDER_CREATED").await.unwrap();
    let (mut keys, mut probes) = ([None, None], [0, 0]);
    for n in 0.. {
        let key = format!("lag-{n}");
        let ack = js
            .publish(format!("order.created.{key}"), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let subject = stream.get_raw_message(ack.sequence).await.unwrap().subject;
        // order.created.<partition>.<key>
        let partition: usize = subject.split('.').nth(2).unwrap().parse().unwrap();
        if partition < 2 {
            probes[partition] += 1;
            keys[partition].get_or_insert(key);
        }
        if let [Some(k0), Some(k1)] = &keys {
            return ([k0.clone(), k1.clone()], probes);
        }
        assert!(n < 100, "no key for partitions 0 and 1");
    }
    unreachable!()
}

/// `/ready` once its consumers check shows the group `lag_messages` behind in total.
async fn ready_at(app: &TestApp, lag_messages: u64) -> Value {
    let start = Instant::now();
    loop {
        let ready = app.readiness().await;
        let total = ready["checks"]["consumers"]["group_totals"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["group"] == GROUP)
            .map(|t| t["lag_messages"].clone());
        if total == Some(lag_messages.into()) {
            return ready;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "never {lag_messages} behind: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `ready` has a lag warning about the group.
fn warns(ready: &Value) -> bool {
    ready["warnings"].as_array().unwrap().iter().any(|w| {
        w.as_str()
            .unwrap()
            .starts_with(&format!("consumer lag: group {GROUP} "))
    })
}

#[tokio::test]
async fn lag_warns_on_the_sum_over_a_groups_partitions() {
    let (_started, _nats, app, js, dir, _db) = setup(|_| {}).await;

    // One consumer per partition (`split-p0`, `split-p1`), set up and then stopped.
    for partition in [0, 1] {
        let mut config = group_config(
            GROUP,
            &[Topic::Created],
            &dir.path().join(format!("p{partition}.db")),
        );
        config.partition = Some(partition);
        let running = Running::start(&js, config, Recorder::new(GROUP));
        let start = Instant::now();
        while !lag::rows(&js, &Topics::embedded(), Some(GROUP))
            .await
            .unwrap()
            .iter()
            .any(|r| r.consumer == format!("{GROUP}-p{partition}"))
        {
            assert!(start.elapsed() < PATIENCE, "no consumer for p{partition}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running.stop().await;
    }

    // 400 + 400: below the threshold in sum.
    let (keys, probes) = keys_of_partitions(&js).await;
    publish(&js, &keys[0], 400 - probes[0]).await;
    publish(&js, &keys[1], 400 - probes[1]).await;
    let ready = ready_at(&app, 800).await;
    assert!(!warns(&ready), "{ready}");
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("consumer_group_lag_messages{{group=\"{GROUP}\"}} 800")),
        "{metrics}"
    );

    // 600 + 600: each partition below, the group above.
    publish(&js, &keys[0], 200).await;
    publish(&js, &keys[1], 200).await;
    let ready = ready_at(&app, 1200).await;
    assert!(warns(&ready), "{ready}");
    assert_eq!(ready["checks"]["consumers"]["status"], "warning");
    let rows = lag::rows(&js, &Topics::embedded(), Some(GROUP))
        .await
        .unwrap();
    // The replay consumer (`split`, on ORDER_DLQ_REPLAY) is the group's third, with nothing.
    let per_consumer: Vec<(String, u64)> = rows
        .iter()
        .filter(|r| r.topic == "order.created")
        .map(|r| (r.consumer.clone(), r.lag_messages()))
        .collect();
    assert_eq!(
        per_consumer,
        [(format!("{GROUP}-p0"), 600), (format!("{GROUP}-p1"), 600)]
    );
    assert!(
        app.metrics().await.lines().any(|l| l
            == format!(
                "consumer_lag_messages{{group=\"{GROUP}\",topic=\"order.created\",consumer=\"{GROUP}-p0\"}} 600"
            )),
        "the per-consumer series stay"
    );
}
