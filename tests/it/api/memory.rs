//! Bounded memory, measured: the service as its own OS process holds 2,000 dead letters of
//! 900 KB each (1.8 GB in `ORDER_DLQ`) while `/ops` is open, in a real browser and by a caller
//! polling what the page polls at the default and the largest page size and replaying every
//! letter; its peak resident memory (`VmHWM` in `/proc/<pid>/status`) stays under 200 MiB. The
//! command line's `dlq list` pages through the same letters with its memory bounded too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use order_service::auth::{Auth, Role};
use order_service::consumer::Reason;
use order_service::consumer::dlq::{self, DeadLetter};
use serde_json::Value;
use uuid::Uuid;

use super::browser::Browser;
use crate::app::SECRET;
use crate::nats::NatsServer;
use crate::service_process::Service;

/// Dead letters in the stream.
const LETTERS: u64 = 2_000;
/// The size of each letter's body: under the broker's default 1 MB payload limit, headers
/// included.
const BODY: usize = 900 * 1024;
/// The ceiling on the service's peak resident memory.
const CEILING_KIB: u64 = 200 * 1024;
/// How long `/ops` stays open.
const OPEN_FOR: Duration = Duration::from_secs(20);
/// Letters published at once: enough to keep the broker's disk busy, few enough that the test
/// process holds little.
const IN_FLIGHT: usize = 32;
/// The group and the topics the letters are spread over (several subjects for the counts).
const GROUP: &str = "heavy";
const TOPICS: [&str; 2] = ["order.created", "order.cancelled"];

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`), `None` once the process is gone.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Publishes the letters, `IN_FLIGHT` at a time, each acknowledged by the stream.
async fn publish_letters(js: &async_nats::jetstream::Context) {
    dlq::ensure_streams(js).await.unwrap();
    // One body shared by every letter: the test's own memory stays small.
    let mut body = vec![b'x'; BODY];
    body[..8].copy_from_slice(b"{\"pad\":\"");
    body[BODY - 2..].copy_from_slice(b"\"}");
    let body = Bytes::from(body);
    futures::stream::iter(1..=LETTERS)
        .map(|sequence| {
            let (js, body) = (js.clone(), body.clone());
            async move {
                dlq::publish(
                    &js,
                    &DeadLetter {
                        group: GROUP,
                        topic: TOPICS[(sequence % 2) as usize],
                        reason: Reason::Permanent,
                        error: "refused",
                        stream: "ORDER_CREATED",
                        stream_sequence: sequence,
                        subject: "order.created.1.x",
                        delivered: 1,
                        headers: &[],
                        payload: &body,
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("letter {sequence}: {e}"));
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<()>()
        .await;
}

/// GET `path` as an admin; the body as JSON.
async fn get(http: &reqwest::Client, base: &str, token: &str, path: &str) -> Value {
    let response = http
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(180))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// One round of what `/ops` polls (src/api/ops/page.js), plus the listing at its largest page.
async fn poll_once(http: &reqwest::Client, base: &str, token: &str) {
    let paths = [
        "/api/v1/admin/overview",
        "/api/v1/admin/history",
        "/api/v1/admin/outbox?status=dead&limit=200",
        "/api/v1/admin/streams",
        "/api/v1/admin/consumers",
        "/api/v1/admin/tail",
        "/api/v1/admin/dead-letters",
        "/api/v1/admin/dead-letters?limit=500",
    ];
    let answers =
        futures::future::join_all(paths.iter().map(|path| get(http, base, token, path))).await;
    let page = &answers[7]["letters"];
    assert_eq!(page.as_array().map(Vec::len), Some(500), "{:.300}", page);
    assert_eq!(page[0]["message_truncated"], true);
    assert_eq!(page[0]["message"].as_str().map(str::len), Some(16 * 1024));
}

#[tokio::test]
async fn ops_stays_under_200_mib_with_2000_dead_letters_of_900_kb() {
    let test_start = Instant::now();
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Every read of a letter carries its whole body from the broker, so a page of 500 large
    // letters and a replay of 1,000 take longer than the default 30 s request timeout here.
    let service = Service::start_with(
        &dir.path().join("orders.db"),
        &dir.path().join("service.log"),
        nats.settings(),
        &[("REQUEST_TIMEOUT", "180s")],
    )
    .await;
    let pid = service.pid().expect("the service runs");
    let js = nats.jetstream().await;

    let publish_start = Instant::now();
    publish_letters(&js).await;
    let mut stream = js.get_stream(dlq::DLQ_STREAM).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!(state.messages, LETTERS);
    eprintln!(
        "published {LETTERS} letters of {BODY} bytes ({} MB stored) in {:.1?}; service RSS {} KiB",
        state.bytes / 1_000_000,
        publish_start.elapsed(),
        status_kib(pid, "VmRSS").unwrap_or(0)
    );

    // The resident size, sampled while the page is open (VmHWM below is the kernel's own peak).
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(status_kib(pid, "VmRSS").unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        }
    });

    let token = Auth::with_default_parties(SECRET)
        .unwrap()
        .issue(Uuid::now_v7(), Role::Admin, Duration::from_secs(3600))
        .unwrap();
    let http = reqwest::Client::new();
    let open_start = Instant::now();

    // The page itself, signed in, refreshing every 2 s on its own while the rest runs.
    let mut browser = Browser::start().await;
    browser.open(&format!("{}/ops", service.base)).await;
    browser.type_into("#token", &token).await;
    browser.click("#signin-button").await;
    browser
        .wait_for(
            "Number(document.body.dataset.refreshes || 0) >= 1",
            "the page's first refresh",
        )
        .await;

    // "Replay all" of a topic, as the page offers it: every letter names an event ORDER_CREATED
    // never stored, so each is read, refused and kept; the ordering pass reads them all.
    let replay = tokio::spawn({
        let (http, base, token) = (http.clone(), service.base.clone(), token.clone());
        async move {
            let response = http
                .post(format!("{base}/api/v1/admin/dead-letters/replay"))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "group": GROUP, "topic": TOPICS[0] }))
                .timeout(Duration::from_secs(180))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            assert!(status.is_success(), "replay: {status} {body}");
            body
        }
    });

    // Every 2 s, as the page does; a round that takes longer starts the next at once.
    let mut rounds = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while open_start.elapsed() < OPEN_FOR {
        tick.tick().await;
        let round = Instant::now();
        poll_once(&http, &service.base, &token).await;
        eprintln!("round {rounds}: {:.1?}", round.elapsed());
        rounds += 1;
    }
    let replayed = replay.await.unwrap();
    assert_eq!(replayed["replayed"], 0, "{:.300}", replayed);
    assert_eq!(
        replayed["refused"].as_array().map(Vec::len),
        Some((LETTERS / 2) as usize)
    );
    let refreshes = browser
        .eval("Number(document.body.dataset.refreshes || 0)")
        .await;
    let shown = browser.eval("document.body.innerText").await;
    drop(browser);

    done.store(true, Ordering::Relaxed);
    let sampled = sampler.await.unwrap();
    let peak = status_kib(pid, "VmHWM").expect("the service still runs");
    eprintln!(
        "/ops open {:.1?}: {rounds} polling rounds, {refreshes} page refreshes, one replay of \
         {} letters; service RSS peak (VmHWM) {} KiB = {:.1} MiB (sampled VmRSS peak {} KiB), \
         ceiling {} MiB; test {:.1?}",
        open_start.elapsed(),
        LETTERS / 2,
        peak,
        peak as f64 / 1024.0,
        sampled,
        CEILING_KIB / 1024,
        test_start.elapsed()
    );
    assert!(
        shown.as_str().is_some_and(|text| text.contains(GROUP)),
        "the page shows the letters"
    );
    assert!(
        peak < CEILING_KIB,
        "the service's peak RSS is {peak} KiB, over {CEILING_KIB} KiB; its log:\n{}",
        service.log_tail(20)
    );
}
