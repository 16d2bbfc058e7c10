//! What a consumer group's handler is: the [`Handler`] trait and the [`HandlerTx`] it writes its
//! state (and the events it emits) through. The typed event it sees is [`Event`] (decoded as
//! [`decode`] says), where it came from a [`Delivery`], and a [`Failure`] is why it did not
//! process one.

use std::future::Future;

use rusqlite::Connection;
use uuid::Uuid;

pub use super::delivery::{Delivery, Failure};
use super::emit::Emitter;
pub use super::event::{Event, SUPPORTED_MAJOR, SchemaError, decode};
use crate::domain::events::Payload;

/// The open transaction a handler writes its own state in.
///
/// It holds the connection mutably so that the handler's future stays `Send`; take
/// [`HandlerTx::conn`] for each statement and do not keep it across an `.await`.
pub struct HandlerTx<'c> {
    conn: &'c mut Connection,
    emitter: Option<Emitter>,
}

impl<'c> HandlerTx<'c> {
    /// The transaction on `conn`, which the batch has already begun; `emitter` when the group
    /// emits events.
    pub(crate) fn new(conn: &'c mut Connection, emitter: Option<Emitter>) -> HandlerTx<'c> {
        HandlerTx { conn, emitter }
    }

    /// Records an outgoing event on `topic` (one of the group's emitted topics, see
    /// [`Group::emitting`](super::Group::emitting)) with subject key `key`: `data` in the
    /// envelope, `headers` added to the outbox's. It is published after the batch commits, and
    /// never when this handler fails. Returns the event's id, derived from the incoming event
    /// and the emit's position in this run (see [`super::emit::derived_id`]).
    pub fn emit(
        &mut self,
        topic: &str,
        key: &str,
        data: &impl serde::Serialize,
        headers: &[(&str, &str)],
    ) -> Result<Uuid, Failure> {
        match &mut self.emitter {
            Some(emitter) => emitter.emit(self.conn, topic, key, data, headers),
            None => Err(Failure::permanent(format!(
                "cannot emit to {topic}: the group has no table of emitted topics"
            ))),
        }
    }

    /// [`HandlerTx::emit`] for a payload type of this crate: its topic, keyed as its type says.
    pub fn emit_event<P: Payload>(
        &mut self,
        data: &P,
        headers: &[(&str, &str)],
    ) -> Result<Uuid, Failure> {
        self.emit(P::TOPIC.as_str(), &data.key().to_string(), data, headers)
    }

    /// How many events this run has emitted.
    pub(crate) fn emitted(&self) -> u32 {
        self.emitter.as_ref().map_or(0, Emitter::emitted)
    }

    /// The connection, inside the transaction.
    pub fn conn(&self) -> &Connection {
        self.conn
    }

    /// Runs one statement; see [`Connection::execute`].
    pub fn execute(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.conn.execute(sql, params)
    }
}

/// A consumer group's business logic.
///
/// `handle` runs inside the group's SQLite transaction, which already holds the event's row in
/// the processed-events table: whatever it writes through `tx` commits together with that row,
/// or not at all. So an event's effects on this state happen once, however often it arrives.
/// Effects outside the database (an e-mail) need their own idempotency, e.g. keyed by event id;
/// events to publish are recorded with [`HandlerTx::emit`], which gives them exactly that.
pub trait Handler: Send + Sync + 'static {
    /// Creates or migrates the handler's own tables; called once per connection at start.
    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        let _ = conn;
        Ok(())
    }

    /// Processes one event. Events the handler does not care about should return `Ok(())`.
    fn handle(
        &self,
        event: &Event,
        delivery: &Delivery,
        tx: &mut HandlerTx<'_>,
    ) -> impl Future<Output = Handled> + Send;
}

/// What [`Handler::handle`] answers: `Ok(())` once the event is processed (or of no interest).
pub type Handled = Result<(), Failure>;
