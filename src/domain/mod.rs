//! The order domain, free of IO: orders and the rules they keep, money, and the events that
//! changes produce.
//!
//! - [`money`] — amounts in integer minor units, written with two decimals.
//! - [`text`] — client text that is never blank and never too long.
//! - [`order`] — the order, its items, address and status machine.
//! - [`revision`] — changing a pending order's items.
//! - [`chat`] — where a chat assistant's order came from.
//! - [`events`] — the ten events of the contract, their envelope and the outbox form.

pub mod chat;
pub mod events;
pub mod money;
pub mod order;
pub mod revision;
pub mod text;

pub use events::{Actor, EventContext, Events, OutboxEvent, Topic};
pub use money::Money;
pub use order::{Address, Currency, Item, Order, OrderError, Quantity, SourceChannel, Status};
pub use text::Text;
