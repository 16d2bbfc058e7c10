//! # order-service
//!
//! Takes orders over HTTP, keeps them in SQLite and publishes every order event onto NATS
//! JetStream through a transactional outbox.
//!
//! # Layout
//! - [`app`]: builds everything production builds and runs it until shutdown.
//! - [`bus`]: NATS JetStream: connection, topic table and streams, publishing events.
//! - [`config`]: the command line and environment configuration.

pub mod bus;
