//! What a handler sees (the [`handler`] trait, the typed event or a foreign topic's raw one, the
//! delivery) and where its effects go: the group's SQLite file with its processed events
//! ([`idempotency`]), and the events it emits ([`emit`]).

pub(in crate::consumer) mod delivery;
pub mod emit;
pub(in crate::consumer) mod event;
pub mod handler;
pub mod idempotency;
pub(in crate::consumer) mod raw;
pub(in crate::consumer) mod schema;
