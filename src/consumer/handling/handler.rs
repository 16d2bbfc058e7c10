//! What a consumer group's handler is: the [`Handler`] trait and the [`HandlerTx`] it writes its
//! state (and the events it emits) through. The typed event it sees is [`Event`] (decoded as
//! [`decode`] says), where it came from a [`Delivery`], and a [`Failure`] is why it did not
//! process one.

use std::future::Future;

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use uuid::Uuid;

pub use super::delivery::{Delivery, Failure};
use super::emit::Emitter;
pub use super::event::{Event, SUPPORTED_MAJOR, SchemaError, decode};
pub use super::raw::RawEvent;
use crate::domain::events::Payload;

/// The open transaction a handler writes its own state in.
///
/// It holds the connection mutably so that the handler's future stays `Send`; take
/// [`HandlerTx::conn`] for each statement and do not keep it across an `.await`.
///
/// The round's transaction is the library's: while a `HandlerTx` lives, statements that would
/// begin, commit or roll back a transaction, or release or roll back to the savepoint the
/// library keeps each event in, are refused when prepared (SQLite's authorizer answers "not
/// authorized", a transient failure of the event). A handler's own savepoints are its own.
///
/// `T` is the handler's [`Handler::Prepared`]: what its `prepare` made of this event, read with
/// [`HandlerTx::prepared`].
pub struct HandlerTx<'c, T = ()> {
    conn: &'c mut Connection,
    emitter: Option<Emitter>,
    prepared: &'c T,
}

impl<'c, T> HandlerTx<'c, T> {
    /// The transaction on `conn`, which the batch has already begun; `emitter` when the group
    /// emits events; `prepared`, what [`Handler::prepare`] made of the event.
    pub(crate) fn new(
        conn: &'c mut Connection,
        emitter: Option<Emitter>,
        prepared: &'c T,
    ) -> HandlerTx<'c, T> {
        // Fails only on a connection owned by another thread, which this one is not.
        let _ = conn.authorizer(Some(keep_the_round));
        HandlerTx {
            conn,
            emitter,
            prepared,
        }
    }

    /// What [`Handler::prepare`] returned for this event.
    pub fn prepared(&self) -> &T {
        self.prepared
    }

    /// Records an outgoing event on `topic` (one of the group's emitted topics, see
    /// [`Group::emitting`](crate::consumer::Group::emitting)) with subject key `key`: `data` in the
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

impl<T> Drop for HandlerTx<'_, T> {
    /// The library goes on with its transaction: nothing is refused any more.
    fn drop(&mut self) {
        let _ = self
            .conn
            .authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
    }
}

/// The authorizer while a handler runs: no transaction control, and not the event's savepoint
/// ([`EVENT_SAVEPOINT`]).
fn keep_the_round(context: AuthContext<'_>) -> Authorization {
    match context.action {
        AuthAction::Transaction { .. } => Authorization::Deny,
        AuthAction::Savepoint { savepoint_name, .. }
            if savepoint_name.eq_ignore_ascii_case(EVENT_SAVEPOINT) =>
        {
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }
}

/// The savepoint the library runs each event's handler in (see `idempotency`).
pub(in crate::consumer) const EVENT_SAVEPOINT: &str = "event";

/// A consumer group's business logic.
///
/// `handle` runs inside the group's SQLite transaction, which already holds the event's row in
/// the processed-events table: whatever it writes through `tx` commits together with that row,
/// or not at all. So an event's effects on this state happen once, however often it arrives.
/// Effects outside the database (an e-mail) need their own idempotency, e.g. keyed by event id;
/// events to publish are recorded with [`HandlerTx::emit`], which gives them exactly that.
///
/// Work that needs no database (a call to another service, a message to send) belongs in
/// [`Handler::prepare`]: it runs outside the transaction, concurrently for events of different
/// orders, and hands its result, a [`Handler::Prepared`], to `handle` through
/// [`HandlerTx::prepared`]: the compiler checks that both sides agree on its type. `handle` runs
/// one event after another in the group's transaction, so it should only write.
///
/// ```
/// use order_service::consumer::{Delivery, Event, Failure, Handled, Handler, HandlerTx};
///
/// /// Asks a payment provider outside the transaction, records its answer inside.
/// struct Payments;
///
/// impl Handler for Payments {
///     /// The provider's reference for the event's order, when it has one.
///     type Prepared = Option<String>;
///
///     async fn prepare(&self, event: &Event, _: &Delivery) -> Result<Option<String>, Failure> {
///         Ok(event.order_id().map(|id| format!("pay-{id}")))
///     }
///
///     async fn handle(&self, _: &Event, _: &Delivery, tx: &mut HandlerTx<'_, Option<String>>) -> Handled {
///         if let Some(reference) = tx.prepared().clone() {
///             tx.execute("INSERT INTO payments (reference) VALUES (?1)", [reference])?;
///         }
///         Ok(())
///     }
/// }
/// ```
///
/// A `handle` that expects another type than `prepare` makes does not compile:
///
/// ```compile_fail
/// use order_service::consumer::{Delivery, Event, Failure, Handled, Handler, HandlerTx};
///
/// struct Payments;
///
/// impl Handler for Payments {
///     type Prepared = Option<String>;
///
///     async fn prepare(&self, _: &Event, _: &Delivery) -> Result<Option<String>, Failure> {
///         Ok(None)
///     }
///
///     async fn handle(&self, _: &Event, _: &Delivery, tx: &mut HandlerTx<'_, u64>) -> Handled {
///         let _: &u64 = tx.prepared();
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// What [`Handler::prepare`] hands to [`Handler::handle`] for one event; `()` for a handler
    /// that prepares nothing. Its default value is what `handle` gets when `prepare` is not
    /// written (an `Option` says "nothing prepared" plainly).
    type Prepared: Default + Send + Sync + 'static;

    /// Creates or migrates the handler's own tables; called once per connection at start.
    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        let _ = conn;
        Ok(())
    }

    /// The part of processing an event that needs no database; by default nothing.
    ///
    /// It runs before [`Handler::handle`] for the same event, outside the group's transaction,
    /// concurrently with other orders' events (up to [`GroupConfig::concurrency`] at once) and
    /// after the previous event of the same order was handled. It runs again when the event is
    /// delivered again, so an effect it has outside (an e-mail) needs its own idempotency, e.g.
    /// keyed by the event's id. It is not called for an event the group processed before. A
    /// failure here counts as the event's failure, exactly as in `handle`.
    ///
    /// [`GroupConfig::concurrency`]: crate::consumer::GroupConfig::concurrency
    fn prepare(
        &self,
        event: &Event,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Self::Prepared, Failure>> + Send {
        let _ = (event, delivery);
        std::future::ready(Ok(Self::Prepared::default()))
    }

    /// Processes one event. Events the handler does not care about should return `Ok(())`.
    fn handle(
        &self,
        event: &Event,
        delivery: &Delivery,
        tx: &mut HandlerTx<'_, Self::Prepared>,
    ) -> impl Future<Output = Handled> + Send;
}

/// What [`Handler::handle`] answers: `Ok(())` once the event is processed (or of no interest).
pub type Handled = Result<(), Failure>;
