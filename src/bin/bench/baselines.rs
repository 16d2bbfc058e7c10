//! Baselines A, A2, B and C: what the same machine does without the service, measured in the same
//! run so the ratios compare like with like.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hyper::StatusCode;
use order_service::api::orders::NewOrder;
use order_service::bus::{OutboxMessage, publish_batch};
use order_service::domain::OutboxEvent;
use order_service::store;
use rusqlite::params;
use serde_json::json;
use uuid::Uuid;

use crate::outbox::{fresh_database, renamed};
use crate::{BASELINE_FOR, Res, window};

/// Baseline B's server: parses the create-order body exactly as the service's handler type does
/// and answers 201 with a small JSON body, storing nothing. Runs as a child process of the bench
/// so that it does not share the load generator's runtime.
pub fn baseline_server() -> ExitCode {
    use axum::Router;
    use axum::response::IntoResponse;
    use axum::routing::post;
    async fn create(body: Bytes) -> axum::response::Response {
        match serde_json::from_slice::<NewOrder>(&body) {
            Ok(order) => (
                StatusCode::CREATED,
                axum::Json(json!({"order_id": Uuid::now_v7(), "items": order.items.len()})),
            )
                .into_response(),
            Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", listener.local_addr().expect("addr"));
        let app = Router::new().route("/api/v1/orders", post(create));
        axum::serve(listener, app).await.expect("serve");
    });
    ExitCode::SUCCESS
}

/// Baseline A: the relay's messages published straight to JetStream, `window()` in flight.
pub async fn baseline_publish(js: &jetstream::Context, template: &[OutboxEvent]) -> Res<f64> {
    let window = window();
    let mut in_flight = FuturesUnordered::new();
    let (mut acked, mut failed) = (0u64, 0u64);
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < BASELINE_FOR {
        let row = renamed(
            &template[n % template.len()],
            Uuid::now_v7(),
            Uuid::now_v7(),
            chrono::Utc::now(),
        );
        n += 1;
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in &row.headers {
            map.insert(k.as_str(), v.as_str());
        }
        let subject = format!("{}.{}", row.topic.as_str(), row.key);
        in_flight.push(
            js.publish_with_headers(subject, map, row.payload.into())
                .await?
                .into_future(),
        );
        while in_flight.len() >= window {
            match in_flight.next().await {
                Some(Ok(_)) => acked += 1,
                _ => failed += 1,
            }
        }
    }
    while let Some(ack) = in_flight.next().await {
        match ack {
            Ok(_) => acked += 1,
            Err(_) => failed += 1,
        }
    }
    let elapsed = start.elapsed();
    if failed > 0 {
        eprintln!("bench: baseline A: {failed} publishes failed");
    }
    Ok(acked as f64 / elapsed.as_secs_f64())
}

/// Baseline A2: the same messages published raw as atomic batches of `batch` messages, one batch
/// in flight per stream and every stream of the template at once, as the relay sends them but
/// without SQLite; stored messages per second.
pub async fn baseline_batches(
    js: &jetstream::Context,
    template: &[OutboxEvent],
    batch: usize,
) -> Res<f64> {
    let start = Instant::now();
    let mut streams: Vec<&OutboxEvent> = template.iter().collect();
    streams.dedup_by_key(|row| row.topic);
    let lanes = streams.into_iter().map(|row| async move {
        let mut stored = 0u64;
        while start.elapsed() < BASELINE_FOR {
            let messages: Vec<OutboxMessage> = (0..batch)
                .map(|_| {
                    let row = renamed(row, Uuid::now_v7(), Uuid::now_v7(), chrono::Utc::now());
                    OutboxMessage {
                        topic: row.topic.as_str().to_owned(),
                        key: row.key.to_string(),
                        payload: row.payload.into(),
                        headers: row.headers,
                    }
                })
                .collect();
            match publish_batch(&js.client(), &messages, Duration::from_secs(30)).await {
                Ok(ack) => stored += ack.count,
                Err(e) => eprintln!("bench: baseline A2: a batch failed: {e}"),
            }
        }
        stored
    });
    let stored: u64 = futures::future::join_all(lanes).await.into_iter().sum();
    Ok(stored as f64 / start.elapsed().as_secs_f64())
}

/// Baseline C: one order row and one outbox row per `BEGIN IMMEDIATE` … `COMMIT`. The order row
/// is a bare one (no items), written by hand: the measure is SQLite's, not the store's.
pub fn baseline_sqlite(db: &Path, template: &[OutboxEvent]) -> Res<f64> {
    let conn = fresh_database(db)?;
    let at = chrono::Utc::now();
    let now = store::timestamp(at);
    let row = &template[0];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < BASELINE_FOR {
        let order_id = Uuid::now_v7();
        let event = renamed(row, order_id, Uuid::now_v7(), at);
        let order_id = order_id.to_string();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        conn.prepare_cached(
            "INSERT INTO orders (order_id, order_number, customer_id, status, currency, street, city,
                postal_code, country, source_channel, created_by, created_at, updated_at)
             VALUES (?1, ?2, ?3, 'pending', 'THB', '123 Main St', 'Bangkok', '10100', 'Thailand',
                'web', ?3, ?4, ?4)",
        )?
        .execute(params![order_id, format!("ORD-2026-{n:06}"), order_id, now])?;
        store::outbox::insert_pending(&conn, std::slice::from_ref(&event))?;
        conn.execute_batch("COMMIT")?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
