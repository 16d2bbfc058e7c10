//! Phase V: what `outbox verify` costs on a shop's history. A stream of its own holds
//! [`VERIFY_ROWS`] small events and a fresh database records each at its sequence, as a year of
//! published rows would; then the relay's verify runs once on the clean stream, and once after
//! [`LOST`] events were deleted from its middle (a lost block). Each run reports its time and the
//! broker calls it made (the client's count of messages sent), so a check whose cost grew with the
//! rows, or that read payloads, shows. Filling the stream and the database takes longer than the
//! checks; both count what they wrote.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use clap::Parser;
use rusqlite::params;
use uuid::Uuid;

use order_service::bus::{OutboxMessage, publish_batch};
use order_service::config::Cli;
use order_service::metrics::Metrics;
use order_service::progress::Progress;
use order_service::progress::outbox::OutboxProgress;
use order_service::relay::Relay;
use order_service::relay::repair::Tail;
use order_service::store::{self, Store, StoreConfig, Synchronous};

use crate::Res;
use crate::outbox::fresh_database;

/// Rows recorded, and events in the stream.
pub const VERIFY_ROWS: u64 = 1_000_000;
/// Events deleted from the middle for the second run.
const LOST: u64 = 1_000;
const STREAM: &str = "BENCH_VERIFY";
const TOPIC: &str = "bench.verify";

/// One verify run.
#[derive(Debug, Clone)]
pub struct VerifyRun {
    /// How long it took.
    pub seconds: f64,
    /// Messages the client sent meanwhile (requests to the broker).
    pub broker_calls: u64,
    /// Events it found missing.
    pub missing: usize,
}

/// The clean run and the run after a loss.
#[derive(Debug, Clone)]
pub struct VerifyPhase {
    /// Rows recorded.
    pub rows: u64,
    /// On the clean stream.
    pub clean: VerifyRun,
    /// After [`LOST`] events were lost from the middle.
    pub lost: VerifyRun,
}

/// Fills the stream and the database, then times the two runs.
pub async fn verify_phase(nats_url: &str, scratch: &Path) -> Res<VerifyPhase> {
    let client = async_nats::connect(nats_url).await?;
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{TOPIC}.>")],
            allow_atomic_publish: true,
            ..Default::default()
        })
        .await?;
    let db = scratch.join("verify.db");
    let ids = fill_stream(&js, VERIFY_ROWS).await?;
    record(&db, &ids)?;
    drop(ids);

    let relay = relay(&db, js.clone())?;
    let clean = timed(&client, &relay, "clean").await?;
    let middle = VERIFY_ROWS / 2;
    for sequence in middle..middle + LOST {
        stream.delete_message(sequence).await?;
    }
    let lost = timed(&client, &relay, &format!("{LOST} lost")).await?;
    js.delete_stream(STREAM).await?;
    Ok(VerifyPhase {
        rows: VERIFY_ROWS,
        clean,
        lost,
    })
}

/// Publishes `rows` small events in atomic batches of 1,000, a few batches in flight; returns
/// their ids in sequence order.
async fn fill_stream(js: &jetstream::Context, rows: u64) -> Res<Vec<String>> {
    let stored = Progress::count("bench: V. events stored", "events", Some(rows));
    let ids: Vec<String> = (0..rows).map(|_| Uuid::now_v7().to_string()).collect();
    // One batch at a time keeps the sequences in the order of `ids`.
    for chunk in ids.chunks(1000) {
        let messages: Vec<OutboxMessage> = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| OutboxMessage {
                topic: TOPIC.into(),
                key: format!("k{}", i % 100),
                payload: bytes::Bytes::from_static(b"{}"),
                headers: vec![("Nats-Msg-Id".into(), id.clone())],
            })
            .collect();
        publish_batch(&js.client(), &messages, Duration::from_secs(30)).await?;
        stored.inc(chunk.len() as u64);
    }
    stored.finish();
    Ok(ids)
}

/// Records every id as a published row at its sequence (1, 2, ...).
fn record(db: &Path, ids: &[String]) -> Res<()> {
    let written = Progress::count("bench: V. rows recorded", "rows", Some(ids.len() as u64));
    let conn = fresh_database(db)?;
    let at = store::timestamp(chrono::Utc::now());
    conn.execute_batch("BEGIN IMMEDIATE")?;
    {
        let mut insert = conn.prepare(
            "INSERT INTO order_events_outbox (event_id, topic, subject_key, payload, headers,
                status, stream, stream_seq, created_at, published_at)
             VALUES (?1, ?2, 'k', '{}', '{}', 'published', ?3, ?4, ?5, ?5)",
        )?;
        for (index, id) in ids.iter().enumerate() {
            insert.execute(params![id, TOPIC, STREAM, index as i64 + 1, at])?;
            written.inc(1);
        }
    }
    conn.execute_batch("COMMIT")?;
    written.finish();
    Ok(())
}

/// A relay on the database at `db` with the service's default settings.
fn relay(db: &Path, js: jetstream::Context) -> Res<Relay> {
    let mut config = Cli::parse_from(["order-service"]).config;
    config.database_path = db.to_owned();
    let topics = order_service::bus::Topics::embedded();
    let store = Store::open(&StoreConfig {
        path: db.to_owned(),
        synchronous: Synchronous::Full,
        readers: 2,
    })?;
    Ok(Relay::new(
        store,
        js,
        order_service::app::relay_config(&config, &topics),
        Arc::new(Metrics::new()),
        Arc::default(),
    ))
}

/// One verify (`what` it checks), timed, with the broker calls it made.
async fn timed(client: &async_nats::Client, relay: &Relay, what: &str) -> Res<VerifyRun> {
    let progress = Arc::new(OutboxProgress::verify_labelled(format!(
        "bench: V. outbox verify over {VERIFY_ROWS} rows, {what}"
    )));
    let relay = relay.clone().observed_by(progress.clone());
    let sent_before = client
        .statistics()
        .out_messages
        .load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let checks = relay.verify(None, Tail::Skip).await?;
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();
    let sent_after = client
        .statistics()
        .out_messages
        .load(std::sync::atomic::Ordering::Relaxed);
    let missing = checks.iter().map(|c| c.missing.len()).sum();
    Ok(VerifyRun {
        seconds,
        broker_calls: sent_after - sent_before,
        missing,
    })
}
