//! What changes orders: placing them, changing them, moving them through their life cycle,
//! overriding stock and linking chats. No HTTP here: a command takes the caller, the request's
//! event context and plain input, and answers the order or a [`CommandError`], which the API
//! turns into its answer. The order handlers and the chat handlers both call in here.
//!
//! Every change to an existing order runs as one command on the writer (`change_order`): it
//! reads the order, lets the domain decide, writes the order rows and the resulting events to the
//! outbox, and commits them together.
//!
//! - `place` — a new order: the stock check, the order number, the creation events.
//! - `update` — changing a pending order's items and address.
//! - `lifecycle` — status steps, confirmation and cancellation.
//! - `stock` — taking stock, and selling beyond it with an admin's approval.
//! - `prices` — the catalogue's prices that customers' and the assistant's lines must carry.
//! - `chat` — chat orders' events and links between orders and chats.
//! - `error` — why a command was refused.

mod chat;
mod error;
mod lifecycle;
mod place;
mod prices;
mod stock;
mod update;

pub use chat::{ChatLinkRequest, MAX_CHAT_LINKS_PER_ORDER, link_chat};
pub use error::CommandError;
pub use lifecycle::{Cancellation, Confirmation, StatusStep, cancel, change_status, confirm};
pub use place::{NewOrder, OverrideRequest, place};
pub use prices::{CataloguePrices, UnpricedItem, WrongPrice};
pub use stock::{OverrideApproval, ShortItem, override_stock};
pub use update::{OrderRevision, update};

use uuid::Uuid;

use crate::auth::{Caller, Role};
use crate::domain::events::{AuditChange, OrderAuditEvent};
use crate::domain::{EventContext, Events, Order};
use crate::store::{Store, Tx, orders, outbox};

/// The order, if the caller may see it; otherwise the same refusal as for a missing order.
pub fn visible(
    order: Option<Order>,
    order_id: Uuid,
    caller: &Caller,
) -> Result<Order, CommandError> {
    match order {
        Some(o) if caller.role != Role::Customer || o.customer_id == caller.user_id => Ok(o),
        _ => Err(CommandError::OrderNotFound(order_id)),
    }
}

/// An `order.audit` event for `order`.
fn audit(
    order: &Order,
    ctx: &EventContext,
    action: &str,
    changes: AuditChange,
    reason: &str,
) -> OrderAuditEvent {
    OrderAuditEvent {
        order_id: order.order_id,
        order_number: order.order_number.clone(),
        action: action.to_owned(),
        actor: ctx.actor.clone(),
        changes,
        reason: reason.to_owned(),
    }
}

/// Runs a change to one order as one command: loads the order (refused like a missing one
/// unless the caller may see it), lets `change` alter it and add events, saves it when it changed
/// (`updated_at` = the request's time), and writes the events to the outbox, all in one
/// transaction: if `change` fails, nothing of it is stored.
async fn change_order<F>(
    store: &Store,
    caller: Caller,
    ctx: EventContext,
    order_id: Uuid,
    change: F,
) -> Result<Order, CommandError>
where
    F: FnOnce(&Tx<'_>, &mut Order, &mut Events<'_>) -> Result<(), CommandError> + Send + 'static,
{
    change_order_with(store, caller, ctx, order_id, change, |order| order).await
}

/// [`change_order`], answering `output(order)`: the transaction's result is what the command
/// answers, which is what an Idempotency-Key's stored answer is rendered from.
async fn change_order_with<F, O, R>(
    store: &Store,
    caller: Caller,
    ctx: EventContext,
    order_id: Uuid,
    change: F,
    output: O,
) -> Result<R, CommandError>
where
    F: FnOnce(&Tx<'_>, &mut Order, &mut Events<'_>) -> Result<(), CommandError> + Send + 'static,
    O: FnOnce(Order) -> R + Send + 'static,
    R: Send + 'static,
{
    store
        .write(move |tx| {
            let before = visible(orders::find(tx, order_id)?, order_id, &caller)?;
            let mut order = before.clone();
            let mut events = Events::new(&ctx);
            change(tx, &mut order, &mut events)?;
            if order != before {
                order.updated_at = ctx.now;
                orders::save(tx, &order)?;
            }
            outbox::enqueue(tx, &events.into_vec())?;
            Ok(output(order))
        })
        .await
}
