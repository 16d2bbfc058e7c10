//! One order's trace, exported for real: the service binary with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! set, and a consumer group in this process (a subscriber, with the library's OTLP exporter),
//! both sending to a real OTLP/HTTP receiver. The spans must form one tree under the caller's
//! trace id: the HTTP `request` (a child of the caller's `traceparent`) → its `command` → the
//! command's `commit`; the group's `event` span a child of the request span (the context the
//! outbox row carries); and what the handler emits carries the `event` span's context, so its
//! consumers are children of the handler's work. Each relay `publish` span (the service's, and
//! the group's own relay for what it emits) is a root linked to the span each of its rows was
//! written in: a batch has many parents.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use order_service::auth::{Auth, Role};
use order_service::bus::Topics;
use order_service::consumer::{Delivery, Emits, Event, Group, Handled, Handler, HandlerTx};
use order_service::domain::Topic;
use order_service::otlp::Exporter;
use serde_json::json;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

use crate::app::{PATIENCE, SECRET, simple_order};
use crate::consumer::{Running, group_config};
use crate::nats::NatsServer;
use crate::observe::otlp_receiver::{Received, Receiver};
use crate::service_process::Service;

/// The caller's trace and span: the request continues this trace.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const GROUP: &str = "packing-traced";
/// What the group emits to.
const EMITTED: &str = "packing.box_requested";
const EMITTED_STREAM: &str = "PACKING_BOX_REQUESTED";

/// Requests a box for each created order: one emitted event.
struct Packing;

impl Handler for Packing {
    type Prepared = ();

    fn migrate(&self, _: &rusqlite::Connection) -> rusqlite::Result<()> {
        Ok(())
    }

    async fn handle(&self, event: &Event, _: &Delivery, tx: &mut HandlerTx<'_>) -> Handled {
        if let Event::Created(e) = event {
            let order = e.data.order_id.to_string();
            tx.emit(EMITTED, &order, &json!({"order_id": order}), &[])?;
        }
        Ok(())
    }
}

fn emits() -> Emits {
    Emits::new(
        Topics::from_json(&format!(
            r#"[{{"topic": "{EMITTED}", "partitions": 1, "replication": 1, "retention": "1d"}}]"#
        ))
        .unwrap(),
    )
}

/// The one span of `spans` that `is` picks; fails with every span when there is not exactly one.
fn one<'a>(spans: &'a [Received], what: &str, is: impl Fn(&Received) -> bool) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| is(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {found:#?}\namong {spans:#?}");
    found[0]
}

/// The first message of `stream`'s `traceparent`.
async fn first_traceparent(js: &jetstream::Context, stream: &str) -> Option<String> {
    let stream = js.get_stream(stream).await.ok()?;
    let message = stream.get_raw_message(1).await.ok()?;
    let headers = message.headers;
    headers
        .get("traceparent")
        .map(|value| value.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_orders_spans_form_one_tree_from_the_request_to_what_its_consumer_emits() {
    let receiver = Receiver::start().await;
    // This test process is the subscriber: its spans go to the same receiver, as its own service.
    let exporter = Exporter::to(&receiver.traces_url(), "packing").unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("info"))
        .with(exporter.layer());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start_with(
        &dir.path().join("order-service.db"),
        &dir.path().join("service.log"),
        nats.settings(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let js = nats.jetstream().await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    while !http
        .get(format!("{}/ready", service.base))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(started.elapsed() < PATIENCE, "{}", service.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut config = group_config(GROUP, &[Topic::Created], &dir.path().join("packing.db"));
    config.batch_size = 1;
    let group = Running::of(
        Group::new(js.clone(), config, Packing)
            .unwrap()
            .emitting(emits()),
    );

    let token = Auth::with_default_parties(SECRET)
        .unwrap()
        .issue(Uuid::now_v7(), Role::Customer, Duration::from_secs(600))
        .unwrap();
    let response = http
        .post(format!("{}/api/v1/orders", service.base))
        .bearer_auth(token)
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&simple_order())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        reqwest::StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );

    // What the group emitted reached its stream, with the context it was written in.
    let started = Instant::now();
    let emitted = loop {
        if let Some(traceparent) = first_traceparent(&js, EMITTED_STREAM).await {
            break traceparent;
        }
        assert!(started.elapsed() < PATIENCE, "nothing emitted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    group.stop().await;
    exporter.flush().unwrap();
    // The service's batch processor sends every 100 ms; the group's spans were just flushed.
    let started = Instant::now();
    let spans = loop {
        let spans = receiver.spans();
        let of_trace = |name: &str| {
            spans
                .iter()
                .any(|s| s.name == name && s.trace_id == TRACE_ID)
        };
        // The service exports in its own batches: wait for the publish spans this test reads by
        // what they are, not by their count (the audit stream's publish may come first).
        let published = |service: &str, stream: Option<&str>| {
            spans.iter().any(|s| {
                s.service == service
                    && s.name == "publish"
                    && stream.is_none_or(|stream| s.attribute("stream") == Some(stream))
            })
        };
        if ["request", "command", "commit", "event"]
            .iter()
            .all(|n| of_trace(n))
            && published("order-service", Some("ORDER_CREATED"))
            && published("packing", None)
        {
            break spans;
        }
        assert!(started.elapsed() < PATIENCE, "spans missing: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let in_trace = |s: &Received| s.trace_id == TRACE_ID;
    let request = one(&spans, "the request span", |s| {
        in_trace(s) && s.name == "request" && s.attribute("uri") == Some("/api/v1/orders")
    });
    assert_eq!(request.service, "order-service");
    assert_eq!(
        request.parent_span_id, CALLER_SPAN,
        "the caller's span is its parent"
    );
    let command = one(&spans, "the command span", |s| {
        in_trace(s) && s.name == "command" && s.parent_span_id == request.span_id
    });
    assert!(
        command
            .attribute("command")
            .is_some_and(|c| c.contains("place")),
        "{command:?}"
    );
    one(&spans, "the commit span", |s| {
        in_trace(s) && s.name == "commit" && s.parent_span_id == command.span_id
    });
    // One batch per stream: the order's `order.created` and `order.audit` went in two.
    let relayed = one(&spans, "the service's publish span of ORDER_CREATED", |s| {
        s.service == "order-service"
            && s.name == "publish"
            && s.attribute("stream") == Some("ORDER_CREATED")
            && s.links
                .iter()
                .any(|l| *l == (TRACE_ID.to_owned(), request.span_id.clone()))
    });
    assert!(
        relayed.parent_span_id.is_empty(),
        "a batch's span is a root: {relayed:?}"
    );
    let event = one(&spans, "the group's event span", |s| {
        in_trace(s) && s.name == "event" && s.attribute("group") == Some(GROUP)
    });
    assert_eq!(event.service, "packing");
    assert_eq!(
        event.parent_span_id, request.span_id,
        "the outbox row carried the request's span"
    );
    assert_eq!(
        emitted,
        format!("00-{TRACE_ID}-{}-01", event.span_id),
        "what the handler emitted carries its event span"
    );
    one(&spans, "the group's relay publish span", |s| {
        s.service == "packing"
            && s.name == "publish"
            && s.links
                .iter()
                .any(|l| *l == (TRACE_ID.to_owned(), event.span_id.clone()))
    });
}
