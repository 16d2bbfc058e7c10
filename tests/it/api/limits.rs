//! Fair limits over HTTP: the per-caller write limit (429, `Retry-After`) by token subject and by
//! client address, and the request timeout (408) for a client that sends its body too slowly.

use std::time::Duration;

use clap::Parser;
use order_service::auth::Role;
use order_service::config::Cli;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app::{TestApp, User, into_json, simple_order, spawn_app_with};

async fn create(app: &TestApp, user: User) -> (StatusCode, Option<String>, Value) {
    let response = app
        .request(user, Method::POST, "/api/v1/orders")
        .json(&simple_order())
        .send()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = into_json(response).await;
    (status, retry_after, body)
}

async fn anonymous(app: &TestApp, forwarded_for: &str) -> StatusCode {
    app.client
        .post(app.url("/api/v1/orders"))
        .header("X-Forwarded-For", forwarded_for)
        .json(&simple_order())
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_caller_over_its_write_limit_gets_429_with_retry_after() {
    let app = spawn_app_with(|c| {
        c.write_rate_limit = 1;
        c.write_rate_burst = 3;
    })
    .await;
    let customer = User::new(Role::Customer);
    for _ in 0..3 {
        assert_eq!(create(&app, customer).await.0, StatusCode::CREATED);
    }
    let (status, retry_after, body) = create(&app, customer).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body["error"], "too_many_requests");
    assert!(body["message"].is_string());
    assert_eq!(body["details"]["retry_after_seconds"], 1);
    assert_eq!(body["details"]["limit_per_second"], 1);
    assert_eq!(body["details"]["burst"], 3);
    assert_eq!(app.count("orders"), 3, "the refused write wrote nothing");

    // Another caller has its own allowance; reads are not limited.
    assert_eq!(
        create(&app, User::new(Role::Customer)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(app.get(customer, "/api/v1/orders").await.0, StatusCode::OK);

    // After Retry-After, the caller may write again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(create(&app, customer).await.0, StatusCode::CREATED);

    // `system` callers (other services, the bench) are exempt by default.
    let system = User::new(Role::System);
    for _ in 0..10 {
        let (status, body) = app
            .post(system, "/api/v1/orders", {
                let mut order = simple_order();
                order["customer_id"] = serde_json::json!(uuid::Uuid::now_v7());
                order
            })
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

#[tokio::test]
async fn requests_without_a_token_are_limited_by_client_address() {
    // The tests' service trusts 127.0.0.1 as a proxy, so X-Forwarded-For names the client.
    let app = spawn_app_with(|c| {
        c.write_rate_limit = 1;
        c.write_rate_burst = 2;
    })
    .await;
    assert_eq!(
        anonymous(&app, "203.0.113.7").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        anonymous(&app, "203.0.113.7").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        anonymous(&app, "203.0.113.7").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        anonymous(&app, "198.51.100.9").await,
        StatusCode::UNAUTHORIZED,
        "another client address has its own allowance"
    );

    // Without trusted proxies the header is not believed: every request is the peer's.
    let untrusting = spawn_app_with(|c| {
        c.write_rate_limit = 1;
        c.write_rate_burst = 2;
        c.trusted_proxies = vec![];
    })
    .await;
    for address in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(
            anonymous(&untrusting, address).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        anonymous(&untrusting, "203.0.113.3").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[test]
fn the_defaults_are_documented_values() {
    let config = Cli::try_parse_from(["order-service"]).unwrap().config;
    assert_eq!(config.write_rate_limit, 50);
    assert_eq!(config.write_rate_burst, 100);
    assert_eq!(config.write_rate_limit_exempt, vec![Role::System]);
    assert_eq!(config.request_timeout, Duration::from_secs(30));
}

#[tokio::test]
async fn a_body_sent_too_slowly_answers_408_and_writes_nothing() {
    let app = spawn_app_with(|c| c.request_timeout = Duration::from_millis(500)).await;
    let customer = User::new(Role::Customer);
    let body = serde_json::to_vec(&simple_order()).unwrap();
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/orders HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.token(customer),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("\"details\"") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 5 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(app.count("orders"), 0);
}

/// Opens a connection to `app` and sends `bytes` of a request.
async fn send_raw(app: &TestApp, bytes: &[u8]) -> tokio::net::TcpStream {
    let addr = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// What the server sends on `stream` until it closes it or `patience` is over.
async fn answer(stream: &mut tokio::net::TcpStream, patience: Duration) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(patience, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_request_head_over_the_limit_answers_431_and_writes_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let body = serde_json::to_vec(&simple_order()).unwrap();
    let head = format!(
        "POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nUser-Agent: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.token(User::new(Role::Customer)),
        "a".repeat(400 * 1024),
        body.len()
    );
    let mut stream = send_raw(&app, head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let text = answer(&mut stream, Duration::from_secs(5)).await;
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "a 400 KB head: {}",
        text.lines().next().unwrap_or("no answer")
    );
    assert_eq!(app.count("orders"), 0);
    assert_eq!(app.outbox().len(), 0);
}

#[tokio::test]
async fn a_long_user_agent_is_cut_before_it_lands_in_an_event() {
    let app = spawn_app_with(|_| {}).await;
    let agent = "b".repeat(20_000);
    let response = app
        .request(User::new(Role::Customer), Method::POST, "/api/v1/orders")
        .header("User-Agent", &agent)
        .json(&simple_order())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let rows = app.outbox();
    assert!(!rows.is_empty());
    for row in &rows {
        let found = find_user_agent(&row.payload);
        let Some(found) = found else { continue };
        assert!(
            found.len() <= order_service::api::MAX_USER_AGENT_BYTES,
            "{}: a user agent of {} bytes in the event",
            row.topic,
            found.len()
        );
        assert!(agent.starts_with(&found), "{}: cut, not changed", row.topic);
    }
    assert!(
        rows.iter()
            .any(|r| find_user_agent(&r.payload).is_some_and(|a| a.starts_with("bbbb"))),
        "the audit event keeps the user agent's start"
    );
}

/// The first `user_agent` field anywhere in `value`.
fn find_user_agent(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => map
            .get("user_agent")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| map.values().find_map(find_user_agent)),
        Value::Array(items) => items.iter().find_map(find_user_agent),
        _ => None,
    }
}

#[tokio::test]
async fn half_sent_heads_are_closed_after_the_header_timeout_and_health_answers_meanwhile() {
    let app = spawn_app_with(|c| {
        c.http_header_read_timeout = Duration::from_secs(1);
        c.http_max_connections = 512;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3_000 {
        idle.push(send_raw(&app, b"GET /health HTTP/1.1\r\nHost: x\r\n").await);
    }
    let started = std::time::Instant::now();
    let health =
        tokio::time::timeout(Duration::from_secs(1), reqwest::get(app.url("/health"))).await;
    assert!(
        matches!(&health, Ok(Ok(r)) if r.status().is_success()),
        "/health beside 3,000 half-sent heads: {health:?} after {:?}",
        started.elapsed()
    );
    // After the header timeout every one of them is closed by the server.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut open = 0;
    for stream in &mut idle {
        let mut buf = [0u8; 1024];
        // A read that waits is a connection the server keeps; a closed one answers at once.
        let waits = tokio::time::timeout(Duration::from_millis(5), stream.read(&mut buf))
            .await
            .is_err();
        open += usize::from(waits);
    }
    assert_eq!(
        open, 0,
        "{open} of 3,000 half-sent connections still open after 3 s"
    );
}
