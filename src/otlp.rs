//! A process's spans exported over OTLP/HTTP (protobuf), so that one order's trace reads from the
//! HTTP request through the outbox and the broker into every consumer group it reaches.
//!
//! [`Exporter::from_env`] builds nothing unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the
//! OpenTelemetry convention: `/v1/traces` is appended to it; `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! names the whole URL instead). The service installs its [`Exporter::layer`] beside its log
//! lines; a subscriber process does the same with its own service name, and its groups' `event`
//! spans then join the traces their messages name. Spans leave in batches from a thread of the
//! SDK's (`OTEL_BSP_SCHEDULE_DELAY`, 5 s by default); dropping the exporter sends what is left.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::registry::LookupSpan;

/// The variable that turns export on.
pub const ENDPOINT_VARIABLE: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Why spans cannot be exported as configured.
#[derive(Debug, thiserror::Error)]
#[error("OTLP span export: {0}")]
pub struct ExporterError(String);

/// The tracer provider that sends this process's spans to an OTLP/HTTP endpoint.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// An exporter to the endpoint of `OTEL_EXPORTER_OTLP_ENDPOINT` (or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), naming the process `OTEL_SERVICE_NAME` or else
    /// `service_name`; `None` when neither endpoint variable is set (or both are empty).
    ///
    /// Call it outside an async runtime (before one starts, or from a plain thread): its HTTP
    /// client is a blocking one.
    pub fn from_env(service_name: &str) -> Result<Option<Exporter>, ExporterError> {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        if !set(ENDPOINT_VARIABLE) && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return Ok(None);
        }
        let exporter = SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| ExporterError(e.to_string()))?;
        Ok(Some(Exporter::with(exporter, service_name)))
    }

    /// An exporter to `endpoint`, the whole URL of the traces (e.g.
    /// `http://collector:4318/v1/traces`), naming the process `service_name`; the environment's
    /// endpoint variables are not read.
    pub fn to(endpoint: &str, service_name: &str) -> Result<Exporter, ExporterError> {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| ExporterError(e.to_string()))?;
        Ok(Exporter::with(exporter, service_name))
    }

    fn with(exporter: SpanExporter, service_name: &str) -> Exporter {
        // Resource::builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the process's
        // own name stands only where the operator named none.
        let mut resource = Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name(service_name.to_owned());
        }
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter)
            .build();
        Exporter { provider }
    }

    /// The `tracing` layer that turns this process's spans into OpenTelemetry spans for this
    /// exporter; add it to the process's subscriber.
    pub fn layer<S>(
        &self,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("order-service"))
    }

    /// Sends the spans not yet sent and waits for the endpoint's answer.
    pub fn flush(&self) -> Result<(), ExporterError> {
        self.provider
            .force_flush()
            .map_err(|e| ExporterError(e.to_string()))
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // The batch's last spans; an endpoint that is away loses them, and says so in the log.
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "the last spans could not be exported");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_built_without_an_endpoint() {
        // The tests run without the variables (the Makefile sets none): no exporter, no layer.
        let unset = |name| std::env::var(name).map_or(true, |v: String| v.trim().is_empty());
        assert!(unset(ENDPOINT_VARIABLE) && unset("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
        assert!(Exporter::from_env("order-service").unwrap().is_none());
    }

    #[test]
    fn an_exporter_to_an_endpoint_is_built_outside_a_runtime() {
        let exporter = Exporter::to("http://127.0.0.1:9/v1/traces", "test").unwrap();
        // Nothing was recorded: the flush sends nothing and succeeds.
        exporter.flush().unwrap();
    }
}
