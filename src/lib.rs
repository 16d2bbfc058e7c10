//! # order-service
//!
//! Takes orders over HTTP, keeps them in SQLite and publishes every order event onto NATS
//! JetStream through a transactional outbox.
//!
//! # Layout
//! - [`cli`] — the command line: what each subcommand does.
//! - [`app`] — builds everything production builds and runs it until shutdown.
//! - [`bus`] — NATS JetStream: connection, topic table and streams, publishing events.
//! - [`nats_server`] — a local nats-server process, for the bench and the integration tests.
//! - [`config`] — the command line and its environment variables.
//! - [`telemetry`] — logging.
//! - [`auth`] — bearer tokens and roles.
//! - [`backoff`] — retry schedules: how long to wait after a failure.
//! - [`shutdown`] — one shutdown signal for every long-running task.
//! - [`secret`] — text kept out of logs and debug output (passwords, signing secrets).
//! - [`table`] — aligned text tables for the command line.
//! - [`progress`] — progress of long commands and the bench on stderr: a bar, or plain lines.
//! - [`error`] — the API's error type and JSON error shape.
//! - [`api`] — the HTTP routes, one module per resource.
//! - [`commands`] — what changes orders (place, update, life cycle, stock, chat links); no HTTP.
//! - [`domain`] — orders, money and the ten events, without IO.
//! - [`store`] — SQLite: the writer, the readers, orders and the outbox.
//! - [`relay`] — the outbox relay: publishes pending rows onto JetStream, cleans up.
//! - [`metrics`] — Prometheus metrics of the outbox, the relay and the consumer groups.
//! - [`ops`] — the operations page's 15-minute history and broker connection.
//! - [`consumer`] — consumer groups: idempotent handlers, dead letters, lag, `tail`.
//! - [`demo`] — `make demo`: three example consumers and a driver.
//!
//! # Features
//! - `service` (default) — everything above: the HTTP API, the relay, the command line and the
//!   binaries.
//! - `consumer` — what a subscriber needs and nothing of the HTTP stack: [`domain`], [`bus`],
//!   [`consumer`] (without its command line and the service's lag watch), [`backoff`],
//!   [`secret`], [`shutdown`], [`table`], and for a group that emits events the service's outbox
//!   machinery: [`store`], [`relay`], [`metrics`]. A subscriber depends on this crate with
//!   `default-features = false, features = ["consumer"]`.
//! - neither — [`domain`] only.

#[cfg(feature = "service")]
pub mod api;
#[cfg(feature = "service")]
pub mod app;
#[cfg(feature = "service")]
pub mod auth;
#[cfg(feature = "consumer")]
pub mod backoff;
#[cfg(feature = "consumer")]
pub mod bus;
#[cfg(feature = "service")]
pub mod cli;
#[cfg(feature = "service")]
pub mod commands;
#[cfg(feature = "service")]
pub mod config;
#[cfg(feature = "consumer")]
pub mod consumer;
#[cfg(feature = "service")]
pub mod demo;
pub mod domain;
#[cfg(feature = "service")]
pub mod error;
#[cfg(feature = "service")]
pub mod identities;
#[cfg(feature = "consumer")]
pub mod metrics;
#[cfg(feature = "service")]
pub mod nats_server;
#[cfg(feature = "service")]
pub mod ops;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "service")]
pub mod progress;
#[cfg(feature = "consumer")]
pub mod relay;
#[cfg(feature = "consumer")]
pub mod secret;
// Its users (the decoders' property tests) are the consumer's.
#[cfg(all(test, feature = "consumer"))]
mod seeded;
#[cfg(feature = "consumer")]
pub mod shutdown;
// Its users (the history-cost tests) are the store's and the consumer's.
#[cfg(all(test, feature = "consumer"))]
mod sql_steps;
#[cfg(feature = "consumer")]
pub mod store;
#[cfg(feature = "consumer")]
pub mod table;
#[cfg(feature = "service")]
pub mod telemetry;
#[cfg(feature = "consumer")]
pub mod trace_context;

// The consumer's API takes these crates' types (a `jetstream::Context`, a `rusqlite::Connection`)
// and runs on tokio: re-exported, a subscriber needs no other dependency and gets the versions
// this crate was built with.
#[cfg(feature = "consumer")]
pub use {async_nats, rusqlite, tokio};
// A message's span gets its remote parent through the OpenTelemetry layer of exactly these
// versions (`consumer::trace`): a subscriber process installs its layer from them.
#[cfg(feature = "consumer")]
pub use {opentelemetry, opentelemetry_sdk, tracing_opentelemetry};

/// The code of the README and of the pages under `docs/`, compiled by `cargo test --doc`: one
/// item per page, so that a Rust example on any of them is compiled. `docs/consumers.md` holds
/// the smallest consumer, which `make library-check` compiles against feature `consumer` alone.
#[cfg(all(doctest, feature = "consumer"))]
pub mod doc_pages {
    /// `README.md`.
    #[doc = include_str!("../README.md")]
    pub struct Readme;
    /// `docs/api.md`.
    #[doc = include_str!("../docs/api.md")]
    pub struct Api;
    /// `docs/operations-page.md`.
    #[doc = include_str!("../docs/operations-page.md")]
    pub struct OperationsPage;
    /// `docs/events.md`.
    #[doc = include_str!("../docs/events.md")]
    pub struct Events;
    /// `docs/relay.md`.
    #[doc = include_str!("../docs/relay.md")]
    pub struct Relay;
    /// `docs/streams.md`.
    #[doc = include_str!("../docs/streams.md")]
    pub struct Streams;
    /// `docs/identities.md`.
    #[doc = include_str!("../docs/identities.md")]
    pub struct Identities;
    /// `docs/cluster.md`.
    #[doc = include_str!("../docs/cluster.md")]
    pub struct Cluster;
    /// `docs/configuration.md`.
    #[doc = include_str!("../docs/configuration.md")]
    pub struct Configuration;
    /// `docs/consumers.md`: the smallest consumer, the health endpoint, a group on another
    /// team's stream and a handler that publishes.
    #[doc = include_str!("../docs/consumers.md")]
    pub struct Consumers;
    /// `docs/observability.md`.
    #[doc = include_str!("../docs/observability.md")]
    pub struct Observability;
    /// `docs/performance.md`.
    #[doc = include_str!("../docs/performance.md")]
    pub struct Performance;
    /// `docs/security.md`.
    #[doc = include_str!("../docs/security.md")]
    pub struct Security;
}
