//! Consumer groups: what every subscriber of the contract must do, as a library.
//!
//! A group (e.g. `inventory-service`) over some topics is one durable pull consumer per topic
//! stream, named after the group (`<group>`, or `<group>-p<P>` when it takes one partition):
//! explicit ack, every stored event on first start (the spec's `auto_offset_reset: earliest`),
//! `max_deliver`, `ack_wait`, and a filter `<topic>.>` or `<topic>.<P>.>`. Each consumer is
//! drained by its own task with its own SQLite connection to the group's database:
//!
//! 1. take the parked messages that became ready (see below), else pull the next message, and
//!    those ready with it (up to `batch_size`; nothing is pulled while a batch runs);
//! 2. handle the batch in rounds (`rounds`): round `r` holds the `r`-th message of each order
//!    (the subject's key). A round's messages are decoded ([`handler::decode`]: a schema error
//!    is a dead letter), those processed before are acknowledged without running anything, the
//!    rest are prepared concurrently ([`Handler::prepare`], outside any transaction), then
//!    handled one after another in one transaction: `(group, event_id)` recorded in the
//!    processed-events table and the [`Handler`] run in a savepoint ([`idempotency`]);
//! 3. commit each round (and wake the group's relay when a handler emitted events, see
//!    [`emit`]), then acknowledge what was processed, send transient failures back with a delay
//!    from the backoff schedule (`-NAK {delay}`), park the later messages of their orders, and
//!    publish permanent failures, schema errors and transient failures of the last allowed
//!    delivery to the dead letters ([`dlq`]) before terminating them. Messages the broker gives
//!    up on because no delivery was answered within `ack_wait` are dead-lettered from its
//!    `MAX_DELIVERIES` advisory.
//!
//! Faults stay where they belong. The handler runs guarded (`guard`): a panic is a permanent
//! failure of its message, a call past `handler_timeout` a transient one, and a batch's messages
//! get in-progress acks while it runs. A fault of the group's own infrastructure (its database
//! cannot begin, write or commit; a dead letter cannot be published) is no message's failure: the
//! breaker opens, the worker holds the batch unsettled (in-progress acks, no fetching, no
//! delivery used up) and tries its rounds not yet committed again after a backoff.
//!
//! Order per order, concurrency across orders: an order's events are prepared and handled one
//! after another, different orders' concurrently (up to [`GroupConfig::concurrency`]). An event
//! that fails transiently holds back its order's later events (`parking`: held unacknowledged
//! with in-progress acks until it is processed or dead-lettered, also across a restart) and no
//! other order's. [`GroupConfig::ordered`] (`max_ack_pending = 1`) gives a strict order over the
//! whole consumer instead, and a partition filter lets N such workers share a topic.
//!
//! The modules, by concern:
//!
//! - `config` — [`GroupConfig`]: a group's settings and the consumer configs they imply.
//! - `foreign` — [`ForeignTopic`]: a stream this crate does not know, consumed as
//!   [`Event::Other`] with the same guarantees.
//! - `run/` — running a group:
//!   - `group` — [`Group`]: sets a group up and runs its workers until shutdown;
//!   - `worker` — one consumer's task: pull, process a batch, settle each message;
//!   - `rounds` — a batch handled in rounds: orders concurrently, one order's events in
//!     sequence;
//!   - `parking` — orders waiting for a retry and their later events held back meanwhile;
//!   - `held` — what an earlier owner left unacknowledged: its orders wait for it after a
//!     takeover;
//!   - `guard` — the handler with its guards: panics, timeouts, store faults told apart;
//!   - `trace` — the span a message is handled in, a child of its `traceparent`;
//!   - `exhausted` — dead-letters what the broker gave up on after `max_deliver`;
//!   - `prune` — deletes processed events older than the streams' `max_age` plus the
//!     duplicate window.
//! - `handling/` — what a handler sees and where its effects go:
//!   - [`handler`] — the [`Handler`] trait and its [`HandlerTx`]; re-exports the rest a
//!     handler sees: `event` (the typed [`Event`], decoding and versions) and `delivery`
//!     ([`Delivery`], [`Failure`]);
//!   - [`idempotency`] — the consumer's SQLite file, processed events, the batch transaction;
//!   - [`emit`] — handlers that publish: the group's outbox and its relay.
//! - `ownership/` — one active process per group and partition:
//!   - `owner` — the lease;
//!   - `fence` — the checks that keep a process that lost its lease from committing.
//! - `observe/` — what a group shows:
//!   - `stats` — [`GroupStats`]: what a group's workers have done, its role and health;
//!   - [`metrics`] — Prometheus metrics per group and handler, for a subscriber process;
//!   - [`health`] — `/health` and `/metrics` for a subscriber process: a small HTTP/1.1 server
//!     without an HTTP stack;
//!   - [`lag`] — pending, ack-pending and lag in seconds per group and topic; `/ready`
//!     thresholds.
//! - `breaker` — the circuit breaker for the group's database and dead-letter stream.
//! - `message` — headers, times and bodies of NATS messages.
//! - [`dlq`] — the dead-letter stream: publish, list, replay, purge.
//! - [`tail`] — print a topic's events as they arrive.
//! - [`commands`] — the `tail`, `consumers` and `dlq` subcommands.
//!
//! `lag` (it feeds the service's `/ready` and `/metrics`), `tail` and `commands` are the
//! service's: they come with feature `service`, the rest with `consumer`.

mod breaker;
#[cfg(feature = "service")]
pub mod commands;
mod config;
pub mod dlq;
mod foreign;
mod handling;
mod message;
mod observe;
mod ownership;
mod run;
#[cfg(feature = "service")]
pub mod tail;

pub use handling::{emit, handler, idempotency};
#[cfg(feature = "service")]
pub use observe::lag;
pub use observe::{health, metrics};

pub use breaker::{Breaker, BreakerState};
pub use config::{GroupConfig, is_valid_group};
pub use dlq::Reason;
pub use emit::Emits;
pub use foreign::{EventIdFrom, ForeignTopic, OrderingKey};
pub use handler::{Delivery, Event, Failure, Handled, Handler, HandlerTx, RawEvent, SchemaError};
pub use health::Health;
pub use observe::stats::{GroupRole, GroupStats, GroupStatsSnapshot};
pub use ownership::LEASE;
pub use ownership::owner::{OWNERS_BUCKET, ensure_bucket};
pub use run::group::Group;

/// Why a consumer operation failed. Non-exhaustive: a new kind of failure breaks no `match`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The group's settings are wrong.
    #[error("{0}")]
    Config(String),
    /// The broker said no or could not be reached.
    #[error("NATS: {0}")]
    Nats(String),
    /// The consumer's database failed.
    #[error("consumer database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The group's outbox could not be opened.
    #[error("outbox: {0}")]
    Outbox(#[from] crate::store::StoreError),
    /// Writing the output failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Another process took the consumer's lease and committed: this one stands by again.
    #[error("superseded: {0}")]
    Superseded(String),
}

impl ConsumerError {
    fn nats(error: impl std::fmt::Display) -> ConsumerError {
        ConsumerError::Nats(error.to_string())
    }
}
