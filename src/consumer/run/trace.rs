//! The span a message is handled in, a child of the trace that produced it.
//!
//! An event's message carries the W3C `traceparent` (and `tracestate`, when the producer sets
//! one) of the request that caused it. [`message_span`] makes that remote span the parent of the
//! message's `event` span, through `tracing-opentelemetry`. A subscriber process that installs a
//! `tracing_opentelemetry` layer with its exporter then sees its handler's work as part of the
//! producer's trace; without such a layer the span is an ordinary `tracing` span and the parent is
//! not used.

use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::consumer::handling::handler::{Delivery, Event};
use crate::trace_context;

/// The span `event` of one message of `group` on `topic`, with the event's id and correlation id
/// as fields, whose parent is the span named by the message's `traceparent`.
///
/// A missing or malformed `traceparent` makes it the root of a trace of its own.
pub(in crate::consumer) fn message_span(
    group: &str,
    topic: &str,
    event: &Event,
    delivery: &Delivery,
) -> tracing::Span {
    let span = tracing::info_span!(
        "event",
        group,
        topic,
        event_id = %event.event_id(),
        correlation_id = event.metadata()["correlation_id"].as_str().unwrap_or_default(),
        traceparent = delivery.header("traceparent").unwrap_or_default(),
        delivered = delivery.delivered,
    );
    // Set even when the message has no trace context: the empty context makes the span a root,
    // so one message's work never joins the trace of whatever span the worker runs in.
    // It fails only when no OpenTelemetry layer is installed or the span is filtered out, and
    // then there is no trace to join.
    let _ = span.set_parent(remote_context(delivery));
    span
}

/// The trace context of the message's headers (names case-insensitive), or the empty context.
fn remote_context(delivery: &Delivery) -> Context {
    trace_context::remote(|name| delivery.header(name))
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    fn delivery(headers: &[(&str, &str)]) -> Delivery {
        Delivery {
            subject: "order.created.0.k".into(),
            stream: "ORDER_CREATED".into(),
            stream_sequence: 1,
            delivered: 1,
            published: chrono::Utc::now(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            payload: bytes::Bytes::new(),
        }
    }

    #[test]
    fn the_traceparent_and_tracestate_are_the_remote_parent() {
        let cx = remote_context(&delivery(&[
            (
                "Traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "vendor=opaque"),
        ]));
        let span = cx.span();
        let parent = span.span_context();
        assert!(parent.is_valid() && parent.is_remote() && parent.is_sampled());
        assert_eq!(
            parent.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(parent.span_id().to_string(), "b7ad6b7169203331");
        assert_eq!(parent.trace_state().get("vendor"), Some("opaque"));
    }

    #[test]
    fn no_or_a_malformed_traceparent_is_no_parent() {
        for headers in [
            &[][..],
            &[("traceparent", "garbage")][..],
            &[(
                "traceparent",
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            )][..],
        ] {
            assert!(!remote_context(&delivery(headers)).has_active_span());
        }
    }
}
