//! A subscriber process's `/health` and `/metrics` (`consumer::health`), asked over real HTTP:
//! a running group's figures, 503 while its breaker is open and once it stopped, and a server no
//! client can starve (a head too large, a stalled client, a client trickling bytes, all
//! connection slots taken).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use order_service::consumer::health::MAX_CONNECTIONS;
use order_service::consumer::{Group, Health};
use order_service::domain::Topic;
use order_service::shutdown::Shutdown;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::app::PATIENCE;
use crate::consumer::{
    Recorder, Running, create_orders, expected_events, group_config, processed_all, report, setup,
};

/// `health` served on a free loopback port until the returned shutdown is triggered.
async fn serve(health: Health) -> (SocketAddr, Shutdown, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Shutdown::new();
    let task = tokio::spawn(health.serve(listener, stop.signal()));
    (addr, stop, task)
}

/// `GET path`: the status, the content type and the body.
async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert_eq!(
        response.headers().get("connection").unwrap(),
        "close",
        "{path}"
    );
    (status, content_type, response.text().await.unwrap())
}

/// `GET /health`: the status and the JSON.
async fn health(addr: SocketAddr) -> (StatusCode, Value) {
    let (status, content_type, body) = get(addr, "/health").await;
    assert_eq!(content_type, "application/json");
    (status, serde_json::from_str(&body).unwrap())
}

/// Waits until `/health` answers `status`; its JSON then.
async fn health_until(addr: SocketAddr, status: StatusCode) -> Value {
    let start = Instant::now();
    loop {
        let (now, body) = health(addr).await;
        if now == status {
            return body;
        }
        assert!(start.elapsed() < PATIENCE, "/health never {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_subscriber_serves_its_groups_health_and_metrics_and_503_while_the_breaker_is_open() {
    let (started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let topics = [Topic::Created];
    let mut config = group_config("watched", &topics, &db);
    config.busy_timeout = Duration::from_millis(100);
    config.ack_wait = Duration::from_secs(2);
    let group = Group::new(js.clone(), config, Recorder::new("watched")).unwrap();
    let (addr, stop, server) = serve(group.health()).await;
    let running = Running::of(group);
    let first = create_orders(&app, 3, 1).await;
    processed_all(&db, "watched", &expected_events(&app, &first, &topics)).await;

    let body = health_until(addr, StatusCode::OK).await;
    assert_eq!(body["status"], "ok", "{body}");
    let watched = &body["groups"]["watched"];
    assert_eq!(watched["role"], "active", "{body}");
    assert_eq!(watched["breaker"], "closed", "{body}");
    assert_eq!(watched["processed"], 3, "{body}");
    let (status, content_type, text) = get(addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, order_service::metrics::CONTENT_TYPE);
    assert!(
        text.contains(r#"consumer_events_processed_total{group="watched",handler="Recorder"} 3"#),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(get(addr, "/nothing").await.0, StatusCode::NOT_FOUND);
    let post = reqwest::Client::new()
        .post(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers().get("allow").unwrap(), "GET, HEAD");

    // Another process holds the file's write lock: the group cannot begin its transaction.
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let second = create_orders(&app, 3, 1).await;
    let body = health_until(addr, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["status"], "degraded", "{body}");
    assert_ne!(body["groups"]["watched"]["breaker"], "closed", "{body}");
    assert_eq!(body["groups"]["watched"]["role"], "active", "{body}");
    let text = get(addr, "/metrics").await.2;
    assert!(
        !text.contains(r#"consumer_breaker_state{group="watched"} 0"#),
        "{text}"
    );
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);

    let mut all = first;
    all.extend(second);
    processed_all(&db, "watched", &expected_events(&app, &all, &topics)).await;
    let body = health_until(addr, StatusCode::OK).await;
    assert_eq!(body["groups"]["watched"]["processed"], 6, "{body}");
    let stats = running.stop().await;

    // The group stopped, the endpoint still answers: 503, stopped.
    let (status, body) = health(addr).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "down", "{body}");
    assert_eq!(body["groups"]["watched"]["role"], "stopped", "{body}");
    stop.trigger();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the health server did not stop")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the health server still listens after its stop"
    );
    report("watched", stats, started);
}

/// Reads what the server sends until it closes (or resets) the connection, within `within`.
async fn answer_of(stream: &mut TcpStream, within: Duration) -> String {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn a_head_too_large_a_stalled_client_and_taken_slots_do_not_hurt_the_next_request() {
    let timeout = Duration::from_secs(2);
    let (addr, stop, server) = serve(
        Health::new(Arc::default())
            .head_timeout(timeout)
            .max_connections(2),
    )
    .await;
    assert_eq!(get(addr, "/health").await.0, StatusCode::OK);

    // A head over 8 KiB: 431, and the next request is answered.
    let mut big = TcpStream::connect(addr).await.unwrap();
    let mut head = b"GET /health HTTP/1.1\r\nX-Pad: ".to_vec();
    head.resize(9 * 1024, b'a');
    big.write_all(&head).await.unwrap();
    let answer = answer_of(&mut big, Duration::from_secs(10)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 "),
        "a head too large: {answer:?}"
    );
    assert_eq!(get(addr, "/metrics").await.0, StatusCode::OK);

    // A client that sends half a request line and stalls: a request beside it is answered before
    // the stalled one's head timeout, and the stalled one gets 408 after it.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(b"GET /hea").await.unwrap();
    let asked = Instant::now();
    assert_eq!(get(addr, "/health").await.0, StatusCode::OK);
    assert!(
        asked.elapsed() < timeout,
        "the request beside the stalled one waited for it"
    );
    let answer = answer_of(&mut stalled, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "stalled: {answer:?}");

    // Both slots taken, one by a stalled client and one trickling a byte every 50 ms (each byte
    // well within the timeout, the whole head never): the next request closes the oldest, the
    // stalled one, and is answered.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /health HTTP/1.1\r\n")
        .await
        .unwrap();
    let trickler = tokio::spawn(async move {
        let mut trickle = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if trickle.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        trickle
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    assert_eq!(get(addr, "/health").await.0, StatusCode::OK);
    eprintln!(
        "a request with both slots taken was answered after {:.2}s",
        asked.elapsed().as_secs_f64()
    );
    let answer = answer_of(&mut stalled, Duration::from_secs(10)).await;
    assert!(
        answer.is_empty(),
        "stalled, closed to make room: {answer:?}"
    );
    let mut trickle = trickler.await.unwrap();
    let answer = answer_of(&mut trickle, Duration::from_secs(10)).await;
    // The trickler may see its connection reset by its own bytes sent after the answer.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408 "),
        "trickling: {answer:?}"
    );
    assert_eq!(get(addr, "/health").await.0, StatusCode::OK);

    // Not HTTP at all: 400; HEAD: the head only.
    let mut junk = TcpStream::connect(addr).await.unwrap();
    junk.write_all(b"hello there\r\n\r\n").await.unwrap();
    let answer = answer_of(&mut junk, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "junk: {answer:?}");
    let mut head = TcpStream::connect(addr).await.unwrap();
    head.write_all(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = answer_of(&mut head, Duration::from_secs(10)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n"),
        "HEAD: {answer:?}"
    );
    assert!(answer.ends_with("\r\n\r\n"), "HEAD has no body: {answer:?}");

    stop.trigger();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the health server did not stop")
        .unwrap();
}

#[tokio::test]
async fn idle_connections_in_every_slot_do_not_keep_a_probe_waiting() {
    // The head timeout is long, so a probe that waits for a slot would wait for it.
    let head_timeout = Duration::from_secs(30);
    let (addr, stop, server) = serve(Health::new(Arc::default()).head_timeout(head_timeout)).await;
    // Idle sockets in every slot, as a port scanner or a load balancer's pre-opened connections
    // leave them: connected, nothing sent.
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // An orchestrator's probe with a 1 s timeout: the longest-idle connection makes room for it.
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let answer = probe.get(format!("http://{addr}/health")).send().await;
    assert!(
        answer.as_ref().is_ok_and(|a| a.status() == StatusCode::OK),
        "a probe beside {MAX_CONNECTIONS} idle connections: {answer:?}"
    );
    // The one closed to make room was the oldest.
    let first = answer_of(&mut idle[0], Duration::from_secs(5)).await;
    assert!(
        first.is_empty() || first.starts_with("HTTP/1.1 408 "),
        "{first:?}"
    );
    drop(idle);
    stop.trigger();
    server.await.unwrap();
}
