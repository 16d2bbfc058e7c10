//! `make bench`: throughput and latency of order-service measured side by side with what the same
//! machine does without it, in one run.
//!
//! The run starts its own nats-server (a temporary store, `sync_interval: always` as in
//! `nats/nats-server.conf`) and the release `order-service` on free loopback ports, each with its
//! own temporary SQLite file, and removes all of it at the end. It measures:
//!
//! 1. baseline A: raw JetStream publishes of the service's messages (same size, same headers with a
//!    fresh `Nats-Msg-Id`, same subjects) with the relay's window in flight;
//! 2. baseline B: an axum handler (a child process) that parses the create-order body and answers
//!    201 without storing, under the same load generator and concurrency as 4;
//! 3. baseline C: SQLite with the service's pragmas, one order row and one outbox row a transaction;
//! 4. create-order over HTTP end to end with the relay on, 64 connections;
//! 5. commit→PubAck latency at a steady 1,000 orders/s, observed from outside (see [`paced`]);
//! 6. draining 100,000 pending outbox rows, with the default batch size and with 256;
//! 7. the service's peak RSS (VmHWM) during 4.
//!
//! It prints a table and the targets met or not, and writes `target/bench/latest.json`.
//! Figures vary with the machine: compare the ratios, which are taken within one run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rusqlite::{Connection, params};
use serde_json::{Value, json};
use uuid::Uuid;

use order_service::api::orders::NewOrder;
use order_service::auth::{Auth, Role};
use order_service::store::{Store, StoreConfig, Synchronous};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;

const SECRET: &str = "bench-only-secret-0123456789abcdef0123456789";
/// Connections of the closed-loop load (4 and baseline B).
const CONCURRENCY: usize = 64;
/// How long 4 and baseline B run.
const LOAD_FOR: Duration = Duration::from_secs(10);
/// How long baselines A and C run.
const BASELINE_FOR: Duration = Duration::from_secs(5);
/// The steady rate and duration of 5.
const STEADY_RATE: u32 = 1_000;
const STEADY_FOR: Duration = Duration::from_secs(20);
/// Rows of the drain, and the longest a drain may take before it is cut short.
const DRAIN_ROWS: usize = 100_000;
const DRAIN_CAP: Duration = Duration::from_secs(40);
/// The service's default batch size (`EVENT_OUTBOX_BATCH_SIZE`) and the larger one measured.
const DEFAULT_BATCH: u32 = 10;
const LARGE_BATCH: u32 = 256;
/// The relay's publish window, used for baseline A too: `EVENT_OUTBOX_PUBLISH_WINDOW` when set
/// (the service inherits it), else the service's default.
fn window() -> usize {
    std::env::var("EVENT_OUTBOX_PUBLISH_WINDOW")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(256)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("baseline-server") {
        return baseline_server();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run()) {
        Ok(_all_met) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The run.

async fn run() -> Res<bool> {
    let started = Instant::now();
    let root = std::env::current_dir()?;
    let service_bin = env_path(
        "BENCH_SERVICE_BIN",
        root.join("target/release/order-service"),
    );
    let nats_bin = env_path("NATS_SERVER_BIN", root.join("tools/nats-server"));
    for bin in [&service_bin, &nats_bin] {
        if !bin.exists() {
            return Err(format!("{} not found (run `make bench`)", bin.display()).into());
        }
    }
    let scratch = Scratch::new()?;
    let nats = Nats::start(&nats_bin, &scratch.0).await?;
    let client = connect_nats(&nats.url).await?;
    let js = jetstream::new(client);
    let token = Auth::new(SECRET, None, None)?.issue(
        Uuid::now_v7(),
        Role::System,
        Duration::from_secs(3600),
    );
    let body = Bytes::from(order_body());
    let mut report = Report::default();

    // 4, 7 and 5 on one service with a fresh database.
    let db = scratch.0.join("e2e.db");
    let service = Service::start(
        &service_bin,
        &db,
        &nats.url,
        true,
        DEFAULT_BATCH,
        &scratch.0,
    )
    .await?;
    wait_for_streams(&js).await?;
    if wants("4") {
        eprintln!("bench: 4. create-order end to end, {CONCURRENCY} connections, {LOAD_FOR:?}");
        let before = stream_messages(&js).await?;
        let load = closed_loop(service.addr, &token, &body, CONCURRENCY, LOAD_FOR).await?;
        let after = stream_messages(&js).await?;
        let backlog = pending(&db)?;
        let rss = service.peak_rss_kib()?;
        report.e2e = Some(E2e {
            orders_per_s: load.rate(),
            p50_ms: ms(percentile(&load.latencies, 50.0)),
            p99_ms: ms(percentile(&load.latencies, 99.0)),
            events_per_s: (after - before) as f64 / load.elapsed.as_secs_f64(),
            backlog,
            errors: load.failed,
        });
        report.rss_mib = Some(rss as f64 / 1024.0);
    } else {
        // One order, for the messages the other phases copy.
        let mut sender = http_connect(service.addr).await?;
        send(
            &mut sender,
            Method::POST,
            "/api/v1/orders",
            &token,
            body.clone(),
        )
        .await?;
    }
    wait_drained(&db, Duration::from_secs(60)).await?;

    if wants("5") {
        eprintln!("bench: 5. commit→PubAck at {STEADY_RATE} orders/s for {STEADY_FOR:?}");
        report.steady = Some(paced(&js, service.addr, &token, &body).await?);
    }
    let template = template_rows(&db)?;
    service.stop().await;

    if wants("C") {
        eprintln!("bench: C. SQLite, one order row and one outbox row a transaction");
        report.sqlite_tx_per_s = Some(baseline_sqlite(
            &scratch.0.join("baseline-c.db"),
            &template,
        )?);
    }
    if wants("B") {
        eprintln!("bench: B. parse-only axum handler, {CONCURRENCY} connections");
        let server = BaselineServer::start().await?;
        let b = closed_loop(server.addr, &token, &body, CONCURRENCY, LOAD_FOR).await?;
        drop(server);
        report.parse_only_per_s = Some(b.rate());
    }

    // Right before the drains it is compared with, on a machine whose load drifts.
    if wants("A") {
        eprintln!("bench: A. raw JetStream publish, window {}", window());
        report.raw_publish_per_s = Some(baseline_publish(&js, &template).await?);
    }

    for batch in [DEFAULT_BATCH, LARGE_BATCH] {
        if !wants("6") && !wants(&format!("6-{batch}")) {
            continue;
        }
        eprintln!("bench: 6. drain {DRAIN_ROWS} rows, batch {batch}");
        let db = scratch.0.join(format!("drain-{batch}.db"));
        write_pending(&db, &template, DRAIN_ROWS)?;
        let base = stream_messages(&js).await?;
        let service = Service::start(&service_bin, &db, &nats.url, true, batch, &scratch.0).await?;
        let drain = drain(&js, &db, base, DRAIN_ROWS as u64).await?;
        service.stop().await;
        report.drains.push((batch, drain));
    }

    report.total = started.elapsed();
    let all_met = report.print();
    let json_path = root.join("target/bench/latest.json");
    std::fs::create_dir_all(json_path.parent().expect("has a parent"))?;
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&report.json())? + "\n",
    )?;
    eprintln!("bench: wrote {}", json_path.display());
    drop(nats);
    Ok(all_met)
}

/// Whether to run a phase: all unless `BENCH_ONLY` lists some (e.g. `BENCH_ONLY=A,6-256`), for
/// profiling one at a time.
fn wants(phase: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|p| p.trim() == phase))
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

fn order_body() -> String {
    json!({
        "customer_id": Uuid::now_v7(),
        "items": [
            {"product_id": "0190b7a4-0000-7000-8000-000000000001", "quantity": 2, "unit_price": 100.00},
            {"product_id": "0190b7a4-0000-7000-8000-000000000002", "quantity": 1, "unit_price": 49.50}
        ],
        "shipping_address": {"street": "123 Main St", "city": "Bangkok", "postal_code": "10100", "country": "Thailand"},
        "currency": "THB",
        "source_channel": "web"
    })
    .to_string()
}

// ------------------------------------------------------------------------------------------------
// Results.

struct E2e {
    orders_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    events_per_s: f64,
    backlog: u64,
    errors: u64,
}

struct Steady {
    achieved_per_s: f64,
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

struct Drain {
    rows: usize,
    events_per_s: f64,
    seconds: f64,
}

#[derive(Default)]
struct Report {
    raw_publish_per_s: Option<f64>,
    parse_only_per_s: Option<f64>,
    sqlite_tx_per_s: Option<f64>,
    e2e: Option<E2e>,
    steady: Option<Steady>,
    drains: Vec<(u32, Drain)>,
    rss_mib: Option<f64>,
    total: Duration,
}

struct Target {
    name: &'static str,
    wanted: &'static str,
    value: f64,
    met: bool,
}

impl Report {
    fn large_drain(&self) -> Option<&Drain> {
        self.drains
            .iter()
            .find(|(b, _)| *b == LARGE_BATCH)
            .map(|(_, d)| d)
    }

    fn targets(&self) -> Vec<Target> {
        let e2e = self.e2e.as_ref().map_or(0.0, |e| e.orders_per_s);
        let b = self.parse_only_per_s.unwrap_or(f64::NAN);
        let a = self.raw_publish_per_s.unwrap_or(f64::NAN);
        let drain = self.large_drain().map_or(0.0, |d| d.events_per_s);
        let p99 = self.steady.as_ref().map_or(f64::INFINITY, |s| s.p99_ms);
        let rss = self.rss_mib.unwrap_or(f64::INFINITY);
        vec![
            Target {
                name: "end to end / baseline B",
                wanted: ">= 15%",
                value: 100.0 * e2e / b,
                met: e2e / b >= 0.15,
            },
            Target {
                name: "drain (batch 256) / baseline A",
                wanted: ">= 80%",
                value: 100.0 * drain / a,
                met: drain / a >= 0.80,
            },
            Target {
                name: "commit→PubAck p99 (ms)",
                wanted: "<= 5 ms",
                value: p99,
                met: p99 <= 5.0,
            },
            Target {
                name: "peak RSS (MiB)",
                wanted: "<= 100 MiB",
                value: rss,
                met: rss <= 100.0,
            },
        ]
    }

    fn print(&self) -> bool {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        let f = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.0} {unit}"));
        row(
            &format!("A  raw JetStream publish (window {})", window()),
            f(self.raw_publish_per_s, "events/s"),
        );
        row(
            "B  parse-only axum handler (c=64)",
            f(self.parse_only_per_s, "req/s"),
        );
        row(
            "C  SQLite order+outbox, 1 tx each",
            f(self.sqlite_tx_per_s, "tx/s"),
        );
        if let Some(e) = &self.e2e {
            row(
                "4  create-order end to end (c=64)",
                format!("{:.0} orders/s", e.orders_per_s),
            );
            row(
                "4  latency p50 / p99",
                format!("{:.2} / {:.2} ms", e.p50_ms, e.p99_ms),
            );
            row(
                "4  events reaching JetStream",
                format!("{:.0} events/s", e.events_per_s),
            );
            row(
                "4  backlog at the end / errors",
                format!("{} rows / {}", e.backlog, e.errors),
            );
        }
        if let Some(s) = &self.steady {
            row(
                "5  steady rate achieved",
                format!("{:.0} orders/s ({} samples)", s.achieved_per_s, s.samples),
            );
            row(
                "5  commit→PubAck p50 / p99 / max",
                format!("{:.2} / {:.2} / {:.2} ms", s.p50_ms, s.p99_ms, s.max_ms),
            );
        }
        for (batch, d) in &self.drains {
            row(
                &format!("6  drain, batch {batch}"),
                format!(
                    "{:.0} events/s ({} rows in {:.1} s)",
                    d.events_per_s, d.rows, d.seconds
                ),
            );
        }
        row("7  service peak RSS during 4", f(self.rss_mib, "MiB"));
        let ratio = |n: Option<f64>, d: Option<f64>| match (n, d) {
            (Some(n), Some(d)) if d > 0.0 => format!("{:.1}%", 100.0 * n / d),
            _ => "-".into(),
        };
        let e2e = self.e2e.as_ref().map(|e| e.orders_per_s);
        row("ratio 4 / B", ratio(e2e, self.parse_only_per_s));
        for (batch, d) in &self.drains {
            row(
                &format!("ratio 6 (batch {batch}) / A"),
                ratio(Some(d.events_per_s), self.raw_publish_per_s),
            );
        }
        row("ratio 4 / C", ratio(e2e, self.sqlite_tx_per_s));
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        println!();
        for (k, v) in &rows {
            println!("{k:<width$}  {v}");
        }
        println!();
        let mut all = true;
        for t in self.targets() {
            all &= t.met;
            let value = if t.name.contains('/') && !t.name.contains("ms") {
                format!("{:.1}%", t.value)
            } else {
                format!("{:.2}", t.value)
            };
            println!(
                "target {:<34} {:<11} {:>9}  {}",
                t.name,
                t.wanted,
                value,
                if t.met { "met" } else { "NOT met" }
            );
        }
        println!("\nwhole run: {:.0} s", self.total.as_secs_f64());
        all
    }

    fn json(&self) -> Value {
        let targets: Vec<Value> = self
            .targets()
            .iter()
            .map(|t| json!({"target": t.name, "wanted": t.wanted, "value": t.value, "met": t.met}))
            .collect();
        json!({
            "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
            "baseline_a_raw_publish_events_per_s": self.raw_publish_per_s,
            "baseline_b_parse_only_req_per_s": self.parse_only_per_s,
            "baseline_c_sqlite_tx_per_s": self.sqlite_tx_per_s,
            "window": window(),
            "concurrency": CONCURRENCY,
            "end_to_end": self.e2e.as_ref().map(|e| json!({
                "orders_per_s": e.orders_per_s, "p50_ms": e.p50_ms, "p99_ms": e.p99_ms,
                "events_per_s_to_jetstream": e.events_per_s, "backlog_rows": e.backlog, "errors": e.errors,
            })),
            "commit_to_puback": self.steady.as_ref().map(|s| json!({
                "rate_per_s": s.achieved_per_s, "samples": s.samples,
                "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "max_ms": s.max_ms,
            })),
            "drain": self.drains.iter().map(|(b, d)| json!({
                "batch_size": b, "rows": d.rows, "events_per_s": d.events_per_s, "seconds": d.seconds,
            })).collect::<Vec<_>>(),
            "peak_rss_mib": self.rss_mib,
            "targets": targets,
            "seconds": self.total.as_secs_f64(),
        })
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// Microseconds to milliseconds.
fn ms(micros: i64) -> f64 {
    micros as f64 / 1000.0
}

// ------------------------------------------------------------------------------------------------
// The load generator: HTTP/1.1 keep-alive, one connection per worker.

async fn http_connect(addr: SocketAddr) -> Res<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn send(
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

struct Load {
    ok: u64,
    failed: u64,
    elapsed: Duration,
    /// Sorted, in microseconds.
    latencies: Vec<i64>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// `concurrency` connections each sending create-order requests back to back for `duration`.
async fn closed_loop(
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
                    match send(
                        &mut sender,
                        Method::POST,
                        "/api/v1/orders",
                        &token,
                        body.clone(),
                    )
                    .await
                    {
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
async fn paced(
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
                if let Ok((StatusCode::CREATED, reply)) = send(
                    &mut sender,
                    Method::POST,
                    "/api/v1/orders",
                    &token,
                    body.clone(),
                )
                .await
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

// ------------------------------------------------------------------------------------------------
// Baselines.

/// Baseline B's server: parses the create-order body exactly as the service's handler type does
/// and answers 201 with a small JSON body, storing nothing. Runs as a child process of the bench
/// so that it does not share the load generator's runtime.
fn baseline_server() -> ExitCode {
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

struct BaselineServer {
    addr: SocketAddr,
    _child: ChildGuard,
}

impl BaselineServer {
    async fn start() -> Res<BaselineServer> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("baseline-server")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let guard = ChildGuard(child);
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        })
        .await??;
        let addr = line.trim().parse()?;
        Ok(BaselineServer {
            addr,
            _child: guard,
        })
    }
}

/// One template message per topic of a created order, taken from the service's own outbox.
#[derive(Clone)]
struct TemplateRow {
    event_id: String,
    topic: String,
    key: String,
    payload: String,
    headers: String,
}

fn template_rows(db: &Path) -> Res<Vec<TemplateRow>> {
    let conn = Connection::open(db)?;
    let key: String = conn.query_row(
        "SELECT subject_key FROM order_events_outbox WHERE topic = 'order.created' ORDER BY id LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare(
        "SELECT event_id, topic, subject_key, payload, headers FROM order_events_outbox
         WHERE subject_key = ?1 ORDER BY id",
    )?;
    let rows = stmt
        .query_map([key], |r| {
            Ok(TemplateRow {
                event_id: r.get(0)?,
                topic: r.get(1)?,
                key: r.get(2)?,
                payload: r.get(3)?,
                headers: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() {
        return Err("no outbox rows to copy".into());
    }
    Ok(rows)
}

impl TemplateRow {
    /// The same message for another order and event id.
    fn renamed(&self, key: &str, event_id: &str) -> TemplateRow {
        let swap = |s: &str| s.replace(&self.event_id, event_id).replace(&self.key, key);
        TemplateRow {
            event_id: event_id.to_owned(),
            topic: self.topic.clone(),
            key: key.to_owned(),
            payload: swap(&self.payload),
            headers: swap(&self.headers),
        }
    }
}

/// Baseline A: the relay's messages published straight to JetStream, `window()` in flight.
async fn baseline_publish(js: &jetstream::Context, template: &[TemplateRow]) -> Res<f64> {
    let window = window();
    let mut in_flight = FuturesUnordered::new();
    let (mut acked, mut failed) = (0u64, 0u64);
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < BASELINE_FOR {
        let key = Uuid::now_v7().to_string();
        let row = template[n % template.len()].renamed(&key, &Uuid::now_v7().to_string());
        n += 1;
        let headers: HashMap<String, String> = serde_json::from_str(&row.headers)?;
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in &headers {
            map.insert(k.as_str(), v.as_str());
        }
        let subject = format!("{}.{}", row.topic, row.key);
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

/// Opens a database the way the service does (migrations included), and a plain connection to it
/// with the service's write pragmas.
fn fresh_database(db: &Path) -> Res<Connection> {
    drop(Store::open(&StoreConfig {
        path: db.to_owned(),
        synchronous: Synchronous::Full,
        readers: 1,
    })?);
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// Baseline C: one order row and one outbox row per `BEGIN IMMEDIATE` … `COMMIT`.
fn baseline_sqlite(db: &Path, template: &[TemplateRow]) -> Res<f64> {
    let conn = fresh_database(db)?;
    let now = order_service::store::timestamp(chrono::Utc::now());
    let row = &template[0];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < BASELINE_FOR {
        let order_id = Uuid::now_v7().to_string();
        let event = row.renamed(&order_id, &Uuid::now_v7().to_string());
        conn.execute_batch("BEGIN IMMEDIATE")?;
        conn.prepare_cached(
            "INSERT INTO orders (order_id, order_number, customer_id, status, currency, street, city,
                postal_code, country, source_channel, created_by, created_at, updated_at)
             VALUES (?1, ?2, ?3, 'pending', 'THB', '123 Main St', 'Bangkok', '10100', 'Thailand',
                'web', ?3, ?4, ?4)",
        )?
        .execute(params![order_id, format!("ORD-2026-{n:06}"), order_id, now])?;
        insert_outbox(&conn, &event, &now)?;
        conn.execute_batch("COMMIT")?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn insert_outbox(conn: &Connection, row: &TemplateRow, now: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO order_events_outbox (event_id, topic, subject_key, payload, headers, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![row.event_id, row.topic, row.key, row.payload, row.headers, now])
}

// ------------------------------------------------------------------------------------------------
// 6: the drain.

/// Writes `rows` pending outbox rows (copies of a real order's events, each order with its own
/// key and every event with its own id) into a fresh database, with no relay running.
fn write_pending(db: &Path, template: &[TemplateRow], rows: usize) -> Res<()> {
    let conn = fresh_database(db)?;
    let now = order_service::store::timestamp(chrono::Utc::now());
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut written = 0;
    while written < rows {
        let key = Uuid::now_v7().to_string();
        for row in template.iter().take(rows - written) {
            insert_outbox(&conn, &row.renamed(&key, &Uuid::now_v7().to_string()), &now)?;
            written += 1;
        }
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// Times the relay from its first message stored in JetStream to an empty outbox. Progress is
/// watched on the broker (one stream listing every few milliseconds) rather than by counting
/// rows in SQLite, which would take CPU from the service being measured.
///
/// `base` is the streams' message count before the service started, `total` the pending rows.
/// The rows already stored when the first is seen are left out of the rate.
async fn drain(js: &jetstream::Context, db: &Path, base: u64, total: u64) -> Res<Drain> {
    let start_wait = Instant::now() + Duration::from_secs(30);
    let (began, first) = loop {
        let stored = stream_messages(js).await? - base;
        if stored > 0 {
            break (Instant::now(), stored.min(total));
        }
        if Instant::now() > start_wait {
            return Err("the relay published nothing within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let cap = began + DRAIN_CAP;
    let conn = Connection::open(db)?;
    let mut polls = 0_u32;
    while stream_messages(js).await? - base < total && Instant::now() < cap {
        tokio::time::sleep(Duration::from_millis(10)).await;
        polls += 1;
        // The broker's count alone would miss a drain that published some rows twice.
        if polls.is_multiple_of(10) && count_pending(&conn)? == 0 {
            break;
        }
    }
    let stored_at = began.elapsed();
    let stored = stream_messages(js).await? - base;
    // Every event is stored; the outbox is drained once the last marks are committed.
    while count_pending(&conn)? > 0 && Instant::now() < cap {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = began.elapsed().as_secs_f64();
    let left = count_pending(&conn)?;
    if std::env::var_os("BENCH_DEBUG").is_some() {
        eprintln!(
            "bench: drain: {stored} of {total} stored after {stored_at:?}, {left} left after {seconds:.1} s"
        );
    }
    if left > 0 {
        eprintln!("bench: drain cut short after {DRAIN_CAP:?}, {left} rows left");
    }
    let rows = (total - left) as usize;
    Ok(Drain {
        rows,
        events_per_s: (rows as u64).saturating_sub(first) as f64 / seconds,
        seconds,
    })
}

fn pending(db: &Path) -> Res<u64> {
    count_pending(&Connection::open(db)?)
}

fn count_pending(conn: &Connection) -> Res<u64> {
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn.query_row(
        "SELECT count(*) FROM order_events_outbox WHERE status = 'pending'",
        [],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

async fn wait_drained(db: &Path, limit: Duration) -> Res<()> {
    let deadline = Instant::now() + limit;
    let conn = Connection::open(db)?;
    while count_pending(&conn)? > 0 {
        if Instant::now() > deadline {
            return Err(format!("the backlog did not drain within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Processes: nats-server and the service.

/// A temporary folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Res<Scratch> {
        let dir = std::env::temp_dir().join(format!("order-service-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("BENCH_KEEP").is_some() {
            eprintln!("bench: kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed on drop if it is still running.
struct ChildGuard(std::process::Child);

impl ChildGuard {
    /// SIGTERM, then SIGKILL if it is still running after `grace`.
    async fn terminate(&mut self, grace: Duration) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Nats {
    url: String,
    _child: ChildGuard,
}

impl Nats {
    /// nats-server on free loopback ports with a temporary store and the same JetStream settings
    /// as `nats/nats-server.conf` (fsync every write before the PubAck).
    async fn start(bin: &Path, scratch: &Path) -> Res<Nats> {
        let port = free_port()?;
        let conf = scratch.join("nats-server.conf");
        std::fs::write(
            &conf,
            format!(
                "server_name: order-service-bench\nlisten: 127.0.0.1:{port}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  {}\n}}\n",
                scratch.join("nats").display(),
                // BENCH_NATS_SYNC=default measures the server's default (fsync every 2 min).
                if std::env::var("BENCH_NATS_SYNC").as_deref() == Ok("default") {
                    ""
                } else {
                    "sync_interval: always"
                }
            ),
        )?;
        let log = std::fs::File::create(scratch.join("nats.log"))?;
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Nats {
            url: format!("nats://127.0.0.1:{port}"),
            _child: ChildGuard(child),
        })
    }
}

async fn connect_nats(url: &str) -> Res<async_nats::Client> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match async_nats::connect(url).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn wait_for_streams(js: &jetstream::Context) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in ["ORDER_CREATED", "ORDER_AUDIT"] {
        while js.get_stream(name).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!("stream {name} did not appear").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Messages held by all streams.
async fn stream_messages(js: &jetstream::Context) -> Res<u64> {
    let mut total = 0;
    let mut streams = js.streams();
    while let Some(info) = streams.next().await {
        total += info?.state.messages;
    }
    Ok(total)
}

struct Service {
    addr: SocketAddr,
    child: ChildGuard,
}

impl Service {
    async fn start(
        bin: &Path,
        db: &Path,
        nats_url: &str,
        relay: bool,
        batch: u32,
        scratch: &Path,
    ) -> Res<Service> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = std::fs::File::create(scratch.join(format!("service-{port}.log")))?;
        let child = std::process::Command::new(bin)
            .arg("serve")
            .env("AUTH_JWT_SECRET", SECRET)
            .env("DATABASE_PATH", db)
            .env("HTTP_ADDR", addr.to_string())
            .env("NATS_URL", nats_url)
            .env("EVENT_OUTBOX_ENABLED", relay.to_string())
            .env("EVENT_OUTBOX_BATCH_SIZE", batch.to_string())
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut service = Service {
            addr,
            child: ChildGuard(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = service.child.0.try_wait() {
                return Err(format!("order-service exited at start-up: {status}").into());
            }
            if let Ok(mut sender) = http_connect(addr).await
                && let Ok((StatusCode::OK, _)) =
                    send(&mut sender, Method::GET, "/health", "", Bytes::new()).await
            {
                return Ok(service);
            }
            if Instant::now() > deadline {
                service.child.terminate(Duration::from_secs(1)).await;
                return Err("order-service did not answer /health within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// VmHWM of the service process, in KiB.
    fn peak_rss_kib(&self) -> Res<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| "no VmHWM in /proc/<pid>/status".into())
    }

    async fn stop(mut self) {
        self.child.terminate(Duration::from_secs(10)).await;
    }
}
