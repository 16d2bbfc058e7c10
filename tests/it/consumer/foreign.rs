//! A topic this crate does not know: another team's stream (`PAYMENTS`, created here with
//! async-nats, subjects `payments.settled.<region>.<payment>`) consumed by a group through
//! [`ForeignTopic`], with the library's guarantees: each event applied once (a duplicate
//! `Nats-Msg-Id` too), one payment's events in stream order while another's waits for a retry,
//! a message without an id or a JSON body dead-lettered with reason `schema`, and a dead letter
//! of the topic replayed back to the group and applied.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use order_service::consumer::{
    Delivery, Event, Failure, ForeignTopic, GroupConfig, Handler, HandlerTx, OrderingKey, dlq,
};

use crate::app::until;
use crate::consumer::{Running, read_only, report};
use crate::nats::NatsServer;

const TOPIC: &str = "payments.settled";

/// Applies each settlement as a row of `applied` (no unique key, so a second run would show),
/// fails payment `p1`'s first event transiently once and refuses a `poison` body while
/// `refusing` is set.
struct Ledger {
    failed_once: AtomicBool,
    refusing: Arc<AtomicBool>,
}

impl Handler for Ledger {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS applied (
                 n        INTEGER PRIMARY KEY AUTOINCREMENT,
                 id       TEXT NOT NULL,
                 payment  TEXT NOT NULL,
                 seq      INTEGER NOT NULL,
                 topic    TEXT NOT NULL,
                 replayed INTEGER NOT NULL
             )",
        )
    }

    async fn handle(
        &self,
        event: &Event,
        delivery: &Delivery,
        tx: &mut HandlerTx<'_>,
    ) -> Result<(), Failure> {
        let Event::Other(raw) = event else {
            return Err(Failure::permanent("only payments here"));
        };
        let payment = raw.json()["payment"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if payment == "p1" && !self.failed_once.swap(true, Ordering::SeqCst) {
            return Err(Failure::transient("the bank is away"));
        }
        if raw.json()["poison"] == true && self.refusing.load(Ordering::SeqCst) {
            return Err(Failure::permanent("refused for now"));
        }
        // The original stream's sequence, for a replay too.
        let seq = delivery
            .original()
            .map_or(delivery.stream_sequence, |(_, s)| s);
        tx.execute(
            "INSERT INTO applied (id, payment, seq, topic, replayed) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                raw.id(),
                payment,
                seq as i64,
                event.topic_name(),
                delivery.is_replay()
            ],
        )?;
        Ok(())
    }
}

/// (id, payment, original sequence, topic, replayed), in the order applied.
fn applied(db: &std::path::Path) -> Vec<(String, String, u64, String, bool)> {
    if !db.exists() {
        return Vec::new();
    }
    let conn = read_only(db);
    let Ok(mut stmt) =
        conn.prepare("SELECT id, payment, seq, topic, replayed FROM applied ORDER BY n")
    else {
        return Vec::new();
    };
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get::<_, i64>(2)? as u64,
            r.get(3)?,
            r.get(4)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Publishes a settlement of `payment` with message id `id` (none when `None`).
async fn settle(js: &jetstream::Context, payment: &str, id: Option<&str>, body: String) {
    let mut headers = HeaderMap::new();
    if let Some(id) = id {
        headers.insert("Nats-Msg-Id", id);
    }
    headers.insert("Content-Type", "application/json");
    js.publish_with_headers(format!("{TOPIC}.eu.{payment}"), headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_group_consumes_another_teams_stream_once_each_in_order_with_dead_letters_and_replay() {
    let started = std::time::Instant::now();
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    // Another team's stream: this crate's table knows nothing of it. A short duplicate window,
    // so that the broker stores a duplicate published after it and the group must catch it.
    js.create_stream(stream::Config {
        name: "PAYMENTS".into(),
        subjects: vec!["payments.>".into()],
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(1),
        ..Default::default()
    })
    .await
    .unwrap();

    let payments = ["p0", "p1", "p2", "p3"];
    for step in 0..3 {
        for p in payments {
            let body = serde_json::json!({"payment": p, "step": step, "amount": 100 + step});
            settle(&js, p, Some(&format!("{p}-{step}")), body.to_string()).await;
        }
    }
    // Stored twice by the broker (past its window), applied once by the group.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = serde_json::json!({"payment": "p0", "step": 0, "amount": 100});
    settle(&js, "p0", Some("p0-0"), again.to_string()).await;
    // Malformed: no id, and a body that is not JSON.
    settle(&js, "p3", None, r#"{"payment":"p3","step":9}"#.into()).await;
    settle(&js, "p3", Some("p3-garbage"), "not json".into()).await;
    // Refused now, applied once replayed.
    let poison = serde_json::json!({"payment": "p2", "step": 3, "poison": true});
    settle(&js, "p2", Some("p2-poison"), poison.to_string()).await;
    let mut payments_stream = js.get_stream("PAYMENTS").await.unwrap();
    assert_eq!(
        payments_stream.info().await.unwrap().state.messages,
        16,
        "the duplicate is stored: only the group can catch it"
    );

    let refusing = Arc::new(AtomicBool::new(true));
    let mut config = GroupConfig::new("ledger", &[], &db)
        .with_foreign(
            ForeignTopic::new(TOPIC, "PAYMENTS", "payments.settled.>")
                .with_key(OrderingKey::Token(3)),
        )
        .with_backoff(vec![Duration::from_millis(300)]);
    config.synchronous_full = false;
    let running = Running::start(
        &js,
        config,
        Ledger {
            failed_once: AtomicBool::new(false),
            refusing: refusing.clone(),
        },
    );
    until(
        "the twelve settlements are applied and three are dead",
        async || {
            applied(&db).len() >= 12 && running.stats.dead_lettered.load(Ordering::SeqCst) >= 3
        },
    )
    .await;
    // Time for the duplicate or a late redelivery to show.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let rows = applied(&db);
    let mut per_payment: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (id, payment, seq, topic, replayed) in &rows {
        assert_eq!((topic.as_str(), *replayed), (TOPIC, false));
        per_payment.entry(payment).or_default().push(*seq);
        *ids.entry(id).or_default() += 1;
    }
    assert_eq!(
        rows.len(),
        12,
        "each settlement once, the duplicate not again: {rows:?}"
    );
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");
    for p in payments {
        let seqs = &per_payment[p];
        assert_eq!(seqs.len(), 3, "{p}: {seqs:?}");
        assert!(seqs.is_sorted(), "{p}: applied in stream order: {seqs:?}");
    }
    assert!(
        running.stats.retried.load(Ordering::SeqCst) >= 1,
        "p1 waited for its retry"
    );
    assert!(
        running.stats.duplicates.load(Ordering::SeqCst) >= 1,
        "the duplicate was seen"
    );

    let letters = dlq::list(&js, "ledger", Some(TOPIC)).await.unwrap();
    let mut reasons: Vec<(String, String)> = letters
        .iter()
        .map(|l| {
            (
                l.reason.clone(),
                l.header("Dlq-Source-Subject")
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("permanent".to_owned(), format!("{TOPIC}.eu.p2")),
            ("schema".to_owned(), format!("{TOPIC}.eu.p3")),
            ("schema".to_owned(), format!("{TOPIC}.eu.p3")),
        ],
        "{letters:#?}"
    );
    assert!(
        letters.iter().any(|l| l.error.contains("no event id")),
        "the message without an id says why: {letters:#?}"
    );

    // Replayed: the refused one is applied under its original id, the malformed ones come back
    // to the dead letters.
    refusing.store(false, Ordering::SeqCst);
    assert_eq!(
        dlq::replay(&js, "ledger", Some(TOPIC)).await.unwrap().sent,
        3
    );
    until("the replayed settlement is applied", async || {
        applied(&db).iter().any(|(id, ..)| id == "p2-poison")
    })
    .await;
    until("the malformed ones are dead letters again", async || {
        dlq::list(&js, "ledger", Some(TOPIC)).await.unwrap().len() == 2
    })
    .await;
    let stats = running.stop().await;
    let rows = applied(&db);
    let poison: Vec<_> = rows.iter().filter(|(id, ..)| id == "p2-poison").collect();
    assert_eq!(poison.len(), 1, "{rows:?}");
    assert!(poison[0].4, "applied from its replay");
    let again = dlq::list(&js, "ledger", Some(TOPIC)).await.unwrap();
    assert!(
        again
            .iter()
            .all(|l| l.reason == "schema" && l.header("Dlq-Replayed") == Some("true")),
        "{again:#?}"
    );
    report("foreign", stats, started);
}

#[tokio::test]
async fn a_foreign_topic_that_cannot_be_consumed_is_refused() {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let refused = |config: GroupConfig| {
        order_service::consumer::Group::new(
            js.clone(),
            config,
            Ledger {
                failed_once: AtomicBool::new(false),
                refusing: Arc::default(),
            },
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    let topic = || ForeignTopic::new(TOPIC, "PAYMENTS", "payments.settled.>");
    assert!(
        refused(
            GroupConfig::new("g", &[], "g.db").with_foreign(topic().with_key(OrderingKey::Single))
        )
        .is_empty()
    );
    assert!(
        refused(
            GroupConfig::new("g", &[], "g.db")
                .with_foreign(topic())
                .with_partition(1)
        )
        .contains("partition")
    );
    assert!(
        refused(
            GroupConfig::new("g", &[], "g.db")
                .with_foreign(topic())
                .with_foreign(topic())
        )
        .contains("taken")
    );
    assert!(
        refused(
            GroupConfig::new("g", &[], "g.db").with_foreign(ForeignTopic::new(
                "order.created",
                "X",
                "x.>"
            ))
        )
        .contains("contract")
    );
    assert!(
        refused(
            GroupConfig::new("g", &[], "g.db").with_foreign(ForeignTopic::new("pay.*", "X", "x.>"))
        )
        .contains("wildcards")
    );
}
