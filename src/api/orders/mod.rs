//! `/orders`: create, read, list, update, and move orders through their life cycle.
//!
//! Every change runs as one command on the writer: it reads the order, lets the domain decide,
//! writes the order rows and the resulting events to the outbox, and commits them together
//! ([`change_order`]).
//!
//! - [`create`] — placing an order: stock check, order number, the creation events.
//! - [`read`] — one order, and lists with filters and a cursor.
//! - [`update`] — changing a pending order's items and address.
//! - [`lifecycle`] — status steps, confirmation and cancellation.
//! - [`stock_override`] — selling beyond available stock on an existing order.

mod create;
mod lifecycle;
mod read;
mod stock_override;
mod update;

pub use create::{NewOrder, OverrideRequest, place};

use axum::Router;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::api::AppState;
use crate::auth::{Caller, Role};
use crate::domain::events::{AuditChange, ItemLine, OrderAuditEvent};
use crate::domain::{Address, EventContext, Events, Money, Order, Status};
use crate::error::ApiError;
use crate::store::{Tx, orders, outbox};

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(create::routes())
        .merge(read::routes())
        .merge(update::routes())
        .merge(lifecycle::routes())
        .merge(stock_override::routes())
}

/// An order as the API answers it.
#[derive(Debug, Serialize)]
pub struct OrderView {
    order_id: Uuid,
    order_number: String,
    customer_id: Uuid,
    status: Status,
    currency: String,
    total_amount: Money,
    items: Vec<ItemLine>,
    shipping_address: Address,
    source_channel: &'static str,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> OrderView {
        OrderView {
            order_id: o.order_id,
            order_number: o.order_number.clone(),
            customer_id: o.customer_id,
            status: o.status,
            currency: o.currency.as_str().to_owned(),
            total_amount: o.total_amount(),
            items: o.items.iter().map(ItemLine::from).collect(),
            shipping_address: o.shipping_address.clone(),
            source_channel: o.source_channel.as_str(),
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// An `order.audit` event for `order`.
pub fn audit(
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

/// The order, if the caller may see it; otherwise the same 404 as for a missing order.
pub fn visible(order: Option<Order>, order_id: Uuid, caller: &Caller) -> Result<Order, ApiError> {
    match order {
        Some(o) if caller.role != Role::Customer || o.customer_id == caller.user_id => Ok(o),
        _ => Err(ApiError::order_not_found(order_id)),
    }
}

/// Runs a change to one order as one command: loads the order (the same 404 as for a missing one
/// unless the caller may see it), lets `change` alter it and add events, saves it when it changed
/// (`updated_at` = the request's time), and writes the events to the outbox, all in one
/// transaction: if `change` fails, nothing of it is stored.
pub(in crate::api) async fn change_order<F>(
    state: &AppState,
    caller: Caller,
    ctx: EventContext,
    order_id: Uuid,
    change: F,
) -> Result<Order, ApiError>
where
    F: FnOnce(&Tx<'_>, &mut Order, &mut Events<'_>) -> Result<(), ApiError> + Send + 'static,
{
    state
        .store
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
            Ok(order)
        })
        .await
}
