//! Trace context end to end: an order created with a W3C `traceparent` reaches a consumer group
//! through the outbox and the broker, and the group's `event` span, exported through a
//! `tracing-opentelemetry` layer, is a child of the request's span, itself a child of the remote
//! span the header names; without one the request span is a root, and the event is in its trace.

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use order_service::auth::Role;
use order_service::domain::Topic;
use reqwest::{Method, StatusCode};
use std::collections::HashSet;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

use crate::app::{User, simple_order};
use crate::consumer::{Running, processed_all, setup};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// Creates an order, with `traceparent` when given; the id of its `order.created` event.
async fn order_created(
    app: &crate::app::TestApp,
    correlation: Uuid,
    traceparent: Option<&str>,
) -> String {
    let mut request = app
        .request(User::new(Role::Customer), Method::POST, "/api/v1/orders")
        .header("X-Correlation-ID", correlation.to_string());
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.json(&simple_order()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: serde_json::Value = response.json().await.unwrap();
    let id = order["order_id"].as_str().unwrap();
    app.events_of(id)
        .into_iter()
        .find(|r| r.topic == "order.created")
        .unwrap()
        .event_id
}

/// The span's attribute `key` as a string.
fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

// `set_default` holds for this thread only: the test's runtime is current-thread (tokio::test's
// default), so the group's workers run here and their spans reach the layer.
#[tokio::test]
async fn the_event_span_is_a_child_of_the_messages_traceparent_or_a_root_without_one() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("consumer-trace-test")));
    let _recording = tracing::subscriber::set_default(subscriber);

    let (_started, _nats, app, js, _dir, db) = setup(|_| {}).await;
    let (traced_correlation, root_correlation) = (Uuid::now_v7(), Uuid::now_v7());
    let traced = order_created(
        &app,
        traced_correlation,
        Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01")),
    )
    .await;
    let root = order_created(&app, root_correlation, None).await;

    let running = Running::recording(&js, "traced", &[Topic::Created], &db);
    processed_all(
        &db,
        "traced",
        &HashSet::from([traced.clone(), root.clone()]),
    )
    .await;
    running.stop().await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let event_span = |event_id: &str| {
        let mut found: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.name == "event" && attribute(s, "event_id").as_deref() == Some(event_id))
            .collect();
        assert_eq!(found.len(), 1, "one span per event {event_id}: {spans:#?}");
        found.remove(0)
    };

    // The service runs in this process, under the same layer: the outbox row carries its request
    // span's context, and that span's parent is the caller's.
    let request = spans
        .iter()
        .find(|s| s.name == "request" && s.parent_span_id == SpanId::from_hex(PARENT_ID).unwrap())
        .unwrap_or_else(|| panic!("no request span below the caller's: {spans:#?}"));
    assert!(request.parent_span_is_remote, "{request:#?}");
    let span = event_span(&traced);
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex(TRACE_ID).unwrap(),
        "the producer's trace: {span:#?}"
    );
    assert_eq!(span.parent_span_id, request.span_context.span_id());
    assert!(span.parent_span_is_remote, "{span:#?}");
    assert_eq!(
        attribute(span, "correlation_id"),
        Some(traced_correlation.to_string())
    );
    assert_eq!(attribute(span, "group").as_deref(), Some("traced"));
    assert_eq!(attribute(span, "topic").as_deref(), Some("order.created"));

    // No caller's context: the request span is a root, and the event's trace is the request's.
    let span = event_span(&root);
    let parent = spans
        .iter()
        .find(|s| s.span_context.span_id() == span.parent_span_id)
        .unwrap_or_else(|| panic!("the event's parent is not exported: {span:#?}"));
    assert_eq!(parent.name, "request", "{parent:#?}");
    assert_eq!(
        parent.parent_span_id,
        SpanId::INVALID,
        "a root: {parent:#?}"
    );
    assert_ne!(span.span_context.trace_id(), TraceId::INVALID);
    assert_ne!(
        span.span_context.trace_id(),
        TraceId::from_hex(TRACE_ID).unwrap(),
        "a trace of its own"
    );
    assert_eq!(
        attribute(span, "correlation_id"),
        Some(root_correlation.to_string())
    );
}
