//! `make bench`: throughput and latency of order-service measured side by side with what the same
//! machine does without it, in one run.
//!
//! The run starts its own nats-server (a temporary store, `sync_interval: always` as in
//! `nats/nats-server.conf`) and the release `order-service` on free loopback ports, each with its
//! own temporary SQLite file, and removes all of it at the end. It measures:
//!
//! 1. baseline A: raw JetStream publishes of the service's messages (same size, same headers with a
//!    fresh `Nats-Msg-Id`, same subjects) with the relay's window in flight, one message each;
//!    baseline A2: the same messages as atomic batches of the relay's batch size, one batch in
//!    flight per stream, every stream at once;
//! 2. baseline B: an axum handler (a child process) that parses the create-order body and answers
//!    201 without storing, under the same load generator and concurrency as 4;
//! 3. baseline C: SQLite with the service's pragmas, one order row and one outbox row a transaction;
//! 4. create-order over HTTP end to end with the relay on, 64 connections;
//! 5. commit→PubAck latency at a steady 1,000 orders/s, observed from outside (see [`load::paced`]);
//! 6. draining 100,000 pending outbox rows, with the default publish batch (1,000) and with 100;
//! 7. the service's peak RSS (VmHWM) during 4;
//! 8. (phase V) `outbox verify` over 1,000,000 recorded rows: clean, and after 1,000 events were
//!    lost from the middle of the stream.
//!
//! It prints a table and the targets met or not, and writes `target/bench/latest.json`.
//! Figures vary with the machine: compare the ratios, which are taken within one run. Each phase
//! shows its progress on stderr ([`order_service::progress`]): the time gone of a timed phase,
//! rows and events of a fill or a drain.

//!
//! # Layout
//! - `main.rs` — the run: the phases in order, and what they share.
//! - [`load`] — the HTTP load generator (phases 4, 5 and baseline B).
//! - [`baselines`] — baselines A, B and C.
//! - [`drain`](mod@drain) — phase 6.
//! - [`outbox`] — template messages and pending rows in the service's outbox.
//! - [`verify`] — phase V.
//! - [`processes`] — nats-server, the service and baseline B's server as child processes.
//! - [`report`] — the table, the targets and the JSON report.

mod baselines;
mod drain;
mod load;
mod outbox;
mod processes;
mod report;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use serde_json::json;
use uuid::Uuid;

use order_service::auth::{Auth, Role};
use order_service::progress::Progress;

use crate::baselines::{baseline_batches, baseline_publish, baseline_server, baseline_sqlite};
use crate::drain::drain;
use crate::load::{closed_loop, create_order, http_connect, paced};
use crate::outbox::{committed, pending, template_rows, wait_drained, write_pending};
use crate::processes::{
    BaselineServer, Scratch, Service, start_nats, stream_messages, wait_for_streams,
};
use crate::report::{E2e, Report, ms, percentile};

/// Any failure ends the run with its message.
type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;

/// The JWT secret the bench's service signs with; its tokens never leave the run.
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
/// The service's default publish batch (`EVENT_OUTBOX_PUBLISH_BATCH`), which baseline A2 uses too,
/// and a smaller one, to price the setting.
const DEFAULT_BATCH: u32 = 1000;
const SMALL_BATCH: u32 = 100;
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
    let nats_bin = order_service::nats_server::find_binary(&root)
        .unwrap_or_else(|| root.join("tools/nats-server"));
    for bin in [&service_bin, &nats_bin] {
        if !bin.exists() {
            return Err(format!("{} not found (run `make bench`)", bin.display()).into());
        }
    }
    let scratch = Scratch::new()?;
    let mut nats = start_nats(&nats_bin, &scratch.0).await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client);
    let token = Auth::with_default_parties(SECRET)?.issue(
        Uuid::now_v7(),
        Role::System,
        Duration::from_secs(3600),
    )?;
    let body = Bytes::from(order_body());
    let mut report = Report::default();

    // 4, 7 and 5 on one service with a fresh database.
    let db = scratch.0.join("e2e.db");
    let service = Service::start(
        &service_bin,
        &db,
        &nats.url(),
        true,
        DEFAULT_BATCH,
        &scratch.0,
    )
    .await?;
    wait_for_streams(&js).await?;
    if wants("4") {
        let shown = Progress::timed(
            format!("bench: 4. create-order end to end, {CONCURRENCY} connections"),
            LOAD_FOR,
        );
        let (before, committed_before) = (stream_messages(&js).await?, committed(&db)?);
        let load = closed_loop(service.addr, &token, &body, CONCURRENCY, LOAD_FOR).await?;
        shown.finish();
        let (after, committed_after) = (stream_messages(&js).await?, committed(&db)?);
        let backlog = pending(&db)?;
        let rss = service.peak_rss_kib()?;
        let seconds = load.elapsed.as_secs_f64();
        report.e2e = Some(E2e {
            orders_per_s: load.rate(),
            p50_ms: ms(percentile(&load.latencies, 50.0)),
            p99_ms: ms(percentile(&load.latencies, 99.0)),
            events_per_s: (after - before) as f64 / seconds,
            committed_per_s: (committed_after - committed_before) as f64 / seconds,
            backlog,
            errors: load.failed,
        });
        report.rss_mib = Some(rss as f64 / 1024.0);
    } else {
        // One order, for the messages the other phases copy.
        let mut sender = http_connect(service.addr).await?;
        create_order(&mut sender, &token, &body).await?;
    }
    wait_drained(&db, Duration::from_secs(60)).await?;

    if wants("5") {
        let shown = Progress::timed(
            format!("bench: 5. commit→PubAck at {STEADY_RATE} orders/s"),
            STEADY_FOR,
        );
        report.steady = Some(paced(&js, service.addr, &token, &body).await?);
        shown.finish();
    }
    let template = template_rows(&db)?;
    service.stop().await;

    if wants("C") {
        let shown = Progress::timed(
            "bench: C. SQLite, one order row and one outbox row a transaction",
            BASELINE_FOR,
        );
        report.sqlite_tx_per_s = Some(baseline_sqlite(
            &scratch.0.join("baseline-c.db"),
            &template,
        )?);
        shown.finish();
    }
    if wants("B") {
        let shown = Progress::timed(
            format!("bench: B. parse-only axum handler, {CONCURRENCY} connections"),
            LOAD_FOR,
        );
        let server = BaselineServer::start().await?;
        let b = closed_loop(server.addr, &token, &body, CONCURRENCY, LOAD_FOR).await?;
        drop(server);
        shown.finish();
        report.parse_only_per_s = Some(b.rate());
    }

    // Right before the drains it is compared with, on a machine whose load drifts.
    if wants("A") {
        let shown = Progress::timed(
            format!("bench: A. raw JetStream publish, window {}", window()),
            BASELINE_FOR,
        );
        report.raw_publish_per_s = Some(baseline_publish(&js, &template).await?);
        shown.finish();
    }
    if wants("A2") {
        let shown = Progress::timed(
            format!("bench: A2. raw atomic batches of {DEFAULT_BATCH}, one in flight per stream"),
            BASELINE_FOR,
        );
        report.raw_batches_per_s =
            Some(baseline_batches(&js, &template, DEFAULT_BATCH as usize).await?);
        shown.finish();
    }

    for batch in [DEFAULT_BATCH, SMALL_BATCH] {
        if !wants("6") && !wants(&format!("6-{batch}")) {
            continue;
        }
        let db = scratch.0.join(format!("drain-{batch}.db"));
        let written = Progress::count(
            format!("bench: 6-{batch}. pending rows written"),
            "rows",
            Some(DRAIN_ROWS as u64),
        );
        write_pending(&db, &template, DRAIN_ROWS, &written)?;
        written.finish();
        let base = stream_messages(&js).await?;
        let service =
            Service::start(&service_bin, &db, &nats.url(), true, batch, &scratch.0).await?;
        let stored = Progress::count(
            format!("bench: 6-{batch}. drain, publish batch {batch}"),
            "events",
            Some(DRAIN_ROWS as u64),
        );
        let drain = drain(&js, &db, base, DRAIN_ROWS as u64, &stored).await?;
        stored.finish();
        service.stop().await;
        report.drains.push((batch, drain));
    }

    if wants("V") {
        report.verify = Some(verify::verify_phase(&nats.url(), &scratch.0).await?);
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
    // Killed and reaped before the scratch folder holding its store is removed.
    nats.kill().await;
    Ok(all_met)
}

/// Whether to run a phase: all unless `BENCH_ONLY` lists some (e.g. `BENCH_ONLY=A2,6-1000`), for
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
