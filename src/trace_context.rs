//! W3C trace context (`traceparent`, `tracestate`) between this process's spans and the
//! messages it reads or writes.
//!
//! An event's outbox row carries the `traceparent` of the span it was written in: the request's
//! span in the service, a group's `event` span when a handler emits. That works only where an
//! OpenTelemetry layer is installed (the span then has a valid context); elsewhere the context
//! received (the request's header, the consumed message's) is passed on unchanged, so a trace
//! started upstream still reaches the consumers.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The remote context named by `get("traceparent")` and `get("tracestate")`, or the empty
/// context when there is none or it is malformed. Read with the W3C propagator itself rather than
/// the global one, which the process may never set.
pub fn remote<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Context {
    let headers: HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| get(name).map(|value| (name.to_owned(), value.to_owned())))
        .collect();
    TraceContextPropagator::new().extract_with_context(&Context::new(), &headers)
}

/// The span context of a `traceparent` value, when it is a valid one.
pub fn span_context(traceparent: &str) -> Option<SpanContext> {
    let context = remote(|name| (name == "traceparent").then_some(traceparent));
    let span = context.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// The `traceparent` of `span` when it has a valid OpenTelemetry context (an OpenTelemetry
/// layer is installed and the span is recorded), else `None`.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span = context.span();
    let span = span.span_context();
    span.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        )
    })
}

/// The `traceparent` an event written now should carry: the current span's, else `received`.
pub fn for_written_event(received: Option<&str>) -> Option<String> {
    traceparent_of(&tracing::Span::current()).or_else(|| received.map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_a_remote_span_context_and_garbage_is_none() {
        let context =
            span_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_remote());
        assert!(span_context("garbage").is_none());
        assert!(span_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    }

    #[test]
    fn without_an_opentelemetry_layer_the_received_traceparent_is_passed_on() {
        let received = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = tracing::info_span!("request");
        let _entered = span.enter();
        assert_eq!(for_written_event(Some(received)).as_deref(), Some(received));
        assert_eq!(for_written_event(None), None);
    }
}
