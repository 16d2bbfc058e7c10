//! Logging and traces: `RUST_LOG` filters (info for the service, warn for one-shot commands by
//! default), `LOG_FORMAT` picks text or JSON lines, and `OTEL_EXPORTER_OTLP_ENDPOINT`, when set,
//! exports the spans over OTLP as well ([`crate::otlp`]); nothing is exported when it is unset.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;
use crate::otlp::Exporter;

/// The process's span export, if any: keep it until the process ends, and its last spans are
/// sent when it is dropped.
#[derive(Debug)]
#[must_use = "dropping it ends the span export"]
pub struct Telemetry {
    /// Held only for its drop, which sends the last spans.
    _exporter: Option<Exporter>,
}

/// Installs the global subscriber, filtering at `default_level` unless `RUST_LOG` is set, with an
/// OTLP exporter when the environment names an endpoint; later calls install nothing (tests call
/// it once per process). An exporter that cannot be built is reported and left out: the service
/// runs without traces rather than not at all.
pub fn init(format: LogFormat, default_level: &str) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let exporter = Exporter::from_env("order-service").unwrap_or_else(|e| {
        eprintln!("order-service: {e}; spans are not exported");
        None
    });
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(exporter.as_ref().map(Exporter::layer));
    // Colours on a terminal only: a log written to a file or a journal gets no escape codes
    // (tracing-subscriber colours by default), so it can be read and searched as it is.
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => registry.with(stderr).try_init(),
        LogFormat::Json => registry.with(stderr.json()).try_init(),
    };
    Telemetry {
        _exporter: exporter,
    }
}
