//! Settings take effect, and settings that cannot work stop the service at start-up: a zero
//! interval would spin, an absurd duration would overflow date arithmetic in a background task.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use order_service::bus::{DEFAULT_DUPLICATE_WINDOW, OutboxMessage, PublishError, Topics};

use crate::app::test_config;
use crate::nats::NatsServer;

/// Runs `order-service serve` with `name=value` and every other setting valid; returns its exit
/// status and what it wrote to stderr, or fails when it is still running after a few seconds.
fn serve_with(name: &str, value: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .arg("serve")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("DATABASE_PATH", dir.path().join("orders.db"))
        .env("AUTH_JWT_SECRET", "a-test-secret-of-at-least-32-bytes!")
        .env("EVENT_OUTBOX_ENABLED", "false")
        .env("RUST_LOG", "error")
        .env(name, value)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name}={value}: the service started instead of refusing the setting");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn unusable_durations_stop_the_service_at_start_up_naming_the_variable() {
    for (name, value) in [
        ("EVENT_OUTBOX_POLLING_INTERVAL", "0s"),
        ("EVENT_OUTBOX_CLEANUP_INTERVAL", "0s"),
        ("EVENT_OUTBOX_RETENTION", "1000000000y"),
        ("EVENT_OUTBOX_RETRY_MAX", "1000000000y"),
    ] {
        let (status, stderr) = serve_with(name, value);
        assert!(!status.success(), "{name}={value}: {status}");
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }
}

/// A broker that never answers: the publish fails after `NATS_ACK_TIMEOUT`, not after the
/// client's own 5 s default for requests.
#[tokio::test]
async fn an_ack_timeout_above_five_seconds_is_waited_out() {
    let nats = NatsServer::start().await;
    order_service::bus::reconcile(
        &nats.jetstream().await,
        &Topics::embedded(),
        DEFAULT_DUPLICATE_WINDOW,
    )
    .await
    .expect("reconcile the streams");
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.nats_ack_timeout = Duration::from_secs(7);
    let js = order_service::app::relay_jetstream(nats.connect().await, &config);
    let id = uuid::Uuid::now_v7().to_string();
    let message = OutboxMessage {
        topic: "order.created".into(),
        key: id.clone(),
        payload: Bytes::from(format!(r#"{{"event_id":"{id}"}}"#)),
        headers: vec![("Nats-Msg-Id".into(), id)],
    };

    nats.pause().await;
    let start = Instant::now();
    let outcome = order_service::bus::publish(&js, &message, config.nats_ack_timeout).await;
    let waited = start.elapsed();
    nats.resume().await;

    assert!(
        matches!(outcome, Err(PublishError::Transient(_))),
        "{outcome:?}"
    );
    assert!(
        waited >= Duration::from_millis(6_500),
        "gave up after {waited:?} with NATS_ACK_TIMEOUT=7s: {outcome:?}"
    );
}
