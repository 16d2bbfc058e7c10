//! The load generator: HTTP/1.1 keep-alive, one connection per worker, closed loop (phase 4,
//! baseline B) or at a steady rate (phase 5).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::report::{Steady, ms, percentile};
use crate::{Res, STEADY_FOR, STEADY_RATE};

/// One keep-alive HTTP/1.1 connection.
pub async fn http_connect(addr: SocketAddr) -> Res<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One request; the status and the whole body.
pub async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    token: &str,
    body: Bytes,
) -> Res<(StatusCode, Bytes)> {
    sender.ready().await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// One create-order request.
pub async fn create_order(
    sender: &mut SendRequest<Full<Bytes>>,
    token: &str,
    body: &Bytes,
) -> Res<(StatusCode, Bytes)> {
    send(sender, Method::POST, "/api/v1/orders", token, body.clone()).await
}

/// What a closed loop achieved.
pub struct Load {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Sorted, in microseconds.
    pub latencies: Vec<i64>,
}

impl Load {
    /// Successful requests a second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// `concurrency` connections each sending create-order requests back to back for `duration`.
pub async fn closed_loop(
    addr: SocketAddr,
    token: &str,
    body: &Bytes,
    concurrency: usize,
    duration: Duration,
) -> Res<Load> {
    let mut senders = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        senders.push(http_connect(addr).await?);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let token = token.to_owned();
            let body = body.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match create_order(&mut sender, &token, &body).await {
                        Ok((StatusCode::CREATED, _)) => {
                            ok += 1;
                            latencies.push(sent.elapsed().as_micros() as i64);
                        }
                        Ok(_) => failed += 1,
                        Err(_) => {
                            failed += 1;
                            match http_connect(addr).await {
                                Ok(s) => sender = s,
                                Err(_) => break,
                            }
                        }
                    }
                }
                (ok, failed, latencies)
            })
        })
        .collect();
    let mut load = Load {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for worker in workers {
        let (ok, failed, latencies) = worker.await?;
        load.ok += ok;
        load.failed += failed;
        load.latencies.extend(latencies);
    }
    load.elapsed = start.elapsed();
    load.latencies.sort_unstable();
    Ok(load)
}

/// 5: orders at a steady rate; commit→PubAck per order, observed from outside.
///
/// The service answers 201 right after the commit, and nats-server hands a stored message to
/// consumers right after it stored (and, with `sync_interval: always`, fsynced) it and sent the
/// PubAck. So "201 received" to "order.created delivered to a consumer" is commit→PubAck plus
/// the few tens of microseconds the two deliveries take, measured on one clock.
pub async fn paced(
    js: &jetstream::Context,
    addr: SocketAddr,
    token: &str,
    body: &Bytes,
) -> Res<Steady> {
    let delivered: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stream = js.get_stream("ORDER_CREATED").await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: "order.created.>".into(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let seen = delivered.clone();
    let listener = tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let at = Instant::now();
            if let Some(order_id) = message.subject.rsplit('.').next() {
                seen.lock().expect("lock").insert(order_id.to_owned(), at);
            }
        }
    });

    // Workers each send on their own connection every `period`, staggered, so the sum is
    // STEADY_RATE a second; a slow answer delays its worker's next tick, not the others.
    const WORKERS: u32 = 32;
    let period = Duration::from_secs(1) * WORKERS / STEADY_RATE;
    let start = Instant::now();
    let deadline = start + STEADY_FOR;
    let mut tasks = Vec::new();
    for i in 0..WORKERS {
        let mut sender = http_connect(addr).await?;
        let (token, body) = (token.to_owned(), body.clone());
        let first = tokio::time::Instant::from_std(start) + period * i / WORKERS;
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(first, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut answered = Vec::new();
            loop {
                ticks.tick().await;
                if Instant::now() >= deadline {
                    break;
                }
                if let Ok((StatusCode::CREATED, reply)) =
                    create_order(&mut sender, &token, &body).await
                {
                    let at = Instant::now();
                    let order: Value = serde_json::from_slice(&reply).unwrap_or_default();
                    if let Some(id) = order["order_id"].as_str() {
                        answered.push((id.to_owned(), at));
                    }
                }
            }
            answered
        }));
    }
    let mut answered = Vec::new();
    for task in tasks {
        answered.extend(task.await?);
    }
    let elapsed = start.elapsed();
    // Let the last events arrive.
    let settle = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settle {
        let seen = delivered.lock().expect("lock").len();
        if seen >= answered.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    listener.abort();
    let delivered = delivered.lock().expect("lock");
    let mut latencies: Vec<i64> = answered
        .iter()
        .filter_map(|(id, at)| {
            let got = delivered.get(id)?;
            Some(if got >= at {
                got.duration_since(*at).as_micros() as i64
            } else {
                -(at.duration_since(*got).as_micros() as i64)
            })
        })
        .collect();
    let missing = answered.len() - latencies.len();
    if missing > 0 {
        eprintln!("bench: {missing} orders' events did not arrive within 5 s of the end");
        // Count them as at least the settle time, so they weigh on p99 and max.
        latencies.extend(std::iter::repeat_n(5_000_000, missing));
    }
    latencies.sort_unstable();
    Ok(Steady {
        achieved_per_s: answered.len() as f64 / elapsed.as_secs_f64(),
        samples: latencies.len(),
        p50_ms: ms(percentile(&latencies, 50.0)),
        p99_ms: ms(percentile(&latencies, 99.0)),
        max_ms: ms(latencies.last().copied().unwrap_or(0)),
    })
}
