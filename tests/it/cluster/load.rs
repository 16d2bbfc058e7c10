//! A steady load of orders during a fault, and the comparison of the streams with the outbox once
//! it is over: lost 0, duplicates 0, per-key order kept, dead rows 0.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use order_service::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::app::{PATIENCE, TestApp, User, metric, simple_order};
use crate::relay::{counts, drained, every_event_once};

/// Time between two orders of the load: 25 orders a second.
const EVERY: Duration = Duration::from_millis(40);

/// Orders being placed, one every [`EVERY`], until [`stop`](Load::stop).
pub struct Load {
    stop: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    /// Starts placing orders for one customer; every other order is confirmed right after, so an
    /// order's key has several events and the customer's key many (`order.statistics_updated`).
    pub fn start(app: &TestApp) -> Load {
        let customer = app.token(User::new(Role::Customer));
        let admin = app.token(User::new(Role::Admin));
        let (client, orders_url) = (app.client.clone(), app.url("/api/v1/orders"));
        let (stop, mut stopped) = watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !*stopped.borrow_and_update() {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let created = client
                    .post(&orders_url)
                    .bearer_auth(&customer)
                    .json(&simple_order())
                    .send()
                    .await
                    .expect("POST /orders answers");
                let status = created.status();
                let body: Value = created.json().await.unwrap_or_default();
                assert_eq!(
                    status,
                    StatusCode::CREATED,
                    "order refused during a fault: {body}"
                );
                let id = body["order_id"].as_str().expect("the order id").to_string();
                if ids.len() % 2 == 0 {
                    let confirmed = client
                        .post(format!("{orders_url}/{id}/confirm"))
                        .bearer_auth(&admin)
                        .json(&json!({"payment_confirmed": true, "inventory_reserved": true}))
                        .send()
                        .await
                        .expect("POST /confirm answers");
                    assert_eq!(confirmed.status(), StatusCode::OK, "confirm {id}");
                }
                ids.push(id);
                counter.fetch_add(1, Ordering::Relaxed);
            }
            ids
        });
        Load {
            stop,
            accepted,
            task,
        }
    }

    /// Waits until `more` orders beyond those accepted so far are accepted: the fault lasts for
    /// that much load, however fast the machine is.
    pub async fn wait_for(&self, more: usize) {
        let target = self.accepted.load(Ordering::Relaxed) + more;
        let start = Instant::now();
        while self.accepted.load(Ordering::Relaxed) < target {
            assert!(
                !self.task.is_finished(),
                "the load stopped (a request failed)"
            );
            assert!(start.elapsed() < PATIENCE, "the load stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the load; the ids of every accepted order.
    pub async fn stop(self) -> Vec<String> {
        let _ = self.stop.send(true);
        self.task
            .await
            .expect("the load ran without a failed request")
    }
}

/// Waits until the outbox is drained, checks that the fault reached the relay (transient
/// failures publishing `order.created`), then compares the streams with the outbox: every
/// accepted order has its events, every outbox event is stored exactly once and nothing else is, each stored
/// at the stream and sequence the outbox recorded, per key and stream in commit order, and no
/// row is dead.
pub async fn streams_match_the_outbox(app: &TestApp, js: &jetstream::Context, accepted: &[String]) {
    drained(app).await;
    // The fault reached the relay: it did not pass while nobody was publishing.
    let series = r#"outbox_publish_failures_total{topic="order.created",kind="transient"}"#;
    let transient = metric(&app.metrics().await, series).unwrap_or(0.0);
    assert!(
        transient > 0.0,
        "no transient publish failure during the fault"
    );
    let (_, published, dead) = counts(app);
    assert_eq!(
        dead, 0,
        "dead rows: elections and lost quorum must be transient"
    );

    let rows = app.outbox();
    let created: HashSet<&str> = rows
        .iter()
        .filter(|row| row.topic == "order.created")
        .map(|row| row.key.as_str())
        .collect();
    for id in accepted {
        assert!(
            created.contains(id.as_str()),
            "accepted order {id} has no order.created event"
        );
    }

    let stored = every_event_once(app, js).await;
    let at: HashMap<&str, (&str, u64)> = stored
        .iter()
        .map(|m| (m.msg_id.as_str(), (m.stream.as_str(), m.sequence)))
        .collect();
    let recorded = recorded_positions(app);
    let mut last: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for row in &rows {
        let (stream, sequence) = at[row.event_id.as_str()];
        assert_eq!(
            recorded.get(&row.id),
            Some(&(stream.to_string(), sequence)),
            "outbox row {} records where the broker stored it",
            row.id
        );
        if let Some(before) = last.insert((stream, row.key.as_str()), sequence) {
            assert!(
                before < sequence,
                "key {} in {stream}: commit order is not stored order ({before} then {sequence})",
                row.key
            );
        }
    }
    eprintln!(
        "cluster check: {} orders, {published} events stored once each, {} keys, \
         {transient} transient publish failures, 0 dead",
        accepted.len(),
        last.len()
    );
}

/// Outbox row id -> (stream, sequence) as the relay recorded them from the PubAcks.
fn recorded_positions(app: &TestApp) -> HashMap<i64, (String, u64)> {
    let conn = app.db();
    let mut stmt = conn
        .prepare(
            "SELECT id, stream, stream_seq FROM order_events_outbox WHERE status = 'published'",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, (r.get(1)?, r.get::<_, i64>(2)? as u64)))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}
