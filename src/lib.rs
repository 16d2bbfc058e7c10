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
//! - [`table`] — aligned text tables for the command line.
//! - [`error`] — the API's error type and JSON error shape.
//! - [`api`] — the HTTP routes, one module per resource.
//! - [`commands`] — what changes orders (place, update, life cycle, stock, chat links); no HTTP.
//! - [`domain`] — orders, money and the ten events, without IO.
//! - [`store`] — SQLite: the writer, the readers, orders and the outbox.
//! - [`relay`] — the outbox relay: publishes pending rows onto JetStream, cleans up.
//! - [`metrics`] — Prometheus metrics of the outbox, the relay and the consumer groups.
//! - [`consumer`] — consumer groups: idempotent handlers, dead letters, lag, `tail`.
//! - [`demo`] — `make demo`: three example consumers and a driver.

pub mod api;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod bus;
pub mod cli;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod demo;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod nats_server;
pub mod relay;
pub mod shutdown;
pub mod store;
pub mod table;
pub mod telemetry;
