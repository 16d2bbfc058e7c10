//! Placing an order: who it is for, the price and stock checks, the order number, and the
//! creation events.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::prices::{self, CataloguePrices};
use super::{CommandError, audit, chat, stock};
use crate::auth::{Caller, Role};
use crate::domain::chat::ChatOrigin;
use crate::domain::events::{AuditChange, OrderCreated, OverrideDetails};
use crate::domain::order::check_items;
use crate::domain::{
    Address, Currency, EventContext, Events, Item, Order, SourceChannel, Status, Text,
};
use crate::store::{Store, Tx, orders, outbox};

/// A new order as a client asks for it: the body of `POST /orders`, and the order part of
/// `POST /chat/orders`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// Whose order; a customer's own id when omitted by a customer.
    pub customer_id: Option<Uuid>,
    /// The lines: 1 to 100, each product once.
    #[schemars(length(min = 1, max = crate::domain::order::MAX_ITEMS))]
    pub items: Vec<Item>,
    /// Where it goes.
    pub shipping_address: Address,
    /// THB unless given.
    #[serde(default)]
    pub currency: Currency,
    /// web unless given.
    pub source_channel: Option<SourceChannel>,
    /// Admins only: create the order even where stock is short.
    pub stock_override: Option<OverrideRequest>,
}

/// An admin's approval to sell beyond available stock.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    /// Why the stock may be oversold.
    pub reason: Text<500>,
    /// When the short products are expected back.
    pub expected_restock_date: DateTime<Utc>,
}

/// Creates an order (and, from a chat, its chat origin): checks a customer's or the assistant's
/// prices against the catalogue (`catalogue` says which products need one), checks stock, takes
/// it, and writes `order.created`, then `order.chat_created` for chat orders, `order.audit`, and
/// `order.stock_override_applied` when an admin's override let short items through.
pub async fn place(
    store: &Store,
    caller: Caller,
    ctx: EventContext,
    new: NewOrder,
    chat: Option<ChatOrigin>,
    catalogue: CataloguePrices,
) -> Result<Order, CommandError> {
    let customer_id = customer_of(&caller, new.customer_id)?;
    if new.stock_override.is_some() && caller.role != Role::Admin {
        return Err(CommandError::Forbidden("only an admin may override stock"));
    }
    let source_channel = channel_of(&caller, chat.is_some(), new.source_channel)?;
    check_items(&new.items)?;
    let order = Order {
        order_id: Uuid::now_v7(),
        order_number: String::new(),
        customer_id,
        status: Status::Pending,
        currency: new.currency,
        items: new.items,
        shipping_address: new.shipping_address,
        source_channel,
        created_by: caller.user_id,
        payment_confirmed: false,
        created_at: ctx.now,
        updated_at: ctx.now,
    };
    let approval = new.stock_override.map(|o| OverrideDetails {
        reason: o.reason.to_string(),
        expected_restock_date: o.expected_restock_date,
        approved_by: caller.user_id,
    });
    let check_prices = !prices::sets_prices(caller.role);
    store
        .write(move |tx| {
            // In the placement's transaction: the price checked is the price of the commit.
            if check_prices {
                prices::check(tx, catalogue, &order.items, &order.currency, "items")?;
            }
            insert(tx, order, &ctx, chat.as_ref(), approval)
        })
        .await
}

/// Whose order it is: a customer orders only for itself, staff name the customer.
fn customer_of(caller: &Caller, asked: Option<Uuid>) -> Result<Uuid, CommandError> {
    match (caller.role, asked) {
        (Role::Customer, Some(id)) if id != caller.user_id => Err(CommandError::Forbidden(
            "a customer places orders only for itself",
        )),
        (Role::Customer, _) => Ok(caller.user_id),
        (_, Some(id)) => Ok(id),
        (_, None) => Err(CommandError::invalid_field(
            "customer_id",
            "customer_id is required when ordering for a customer",
        )),
    }
}

/// The order's channel: chat for chat orders, else the one asked for (web by default); the
/// admin channel is for staff.
fn channel_of(
    caller: &Caller,
    from_chat: bool,
    asked: Option<SourceChannel>,
) -> Result<SourceChannel, CommandError> {
    match asked {
        _ if from_chat => Ok(SourceChannel::Chat),
        Some(SourceChannel::Admin) if caller.role == Role::Customer => {
            Err(CommandError::Forbidden("the admin channel is for staff"))
        }
        channel => Ok(channel.unwrap_or_default()),
    }
}

/// The transaction of a placement: takes the stock, numbers and stores the order, and writes its
/// events to the outbox.
fn insert(
    tx: &Tx<'_>,
    mut order: Order,
    ctx: &EventContext,
    chat: Option<&ChatOrigin>,
    approval: Option<OverrideDetails>,
) -> Result<Order, CommandError> {
    let short = stock::take(tx, &order, approval.is_some(), ctx.now)?;
    order.order_number = orders::next_order_number(tx, ctx.now)?;
    orders::insert(tx, &order)?;
    let mut events = Events::new(ctx);
    events.push(OrderCreated::of(&order));
    if let Some(chat) = chat {
        crate::store::chat::insert_origin(tx, order.order_id, chat)?;
        events.push(chat::created_event(&order, chat));
    }
    events.push(creation_audit(&order, ctx, chat));
    if let (Some(approval), false) = (approval, short.is_empty()) {
        let items = short
            .into_iter()
            .map(stock::ShortItem::overridden)
            .collect();
        stock::apply_overrides(tx, &order, &mut events, approval, items, ctx.now)?;
    }
    outbox::enqueue(tx, &events.into_vec())?;
    Ok(order)
}

/// The `order.audit` of a new order: its status from nothing to pending, and where it came from.
fn creation_audit(
    order: &Order,
    ctx: &EventContext,
    chat: Option<&ChatOrigin>,
) -> crate::domain::events::OrderAuditEvent {
    let how = match chat {
        Some(c) => format!("Order created from chat {}", c.chat_id),
        None => format!("Order created via {}", order.source_channel.as_str()),
    };
    audit(
        order,
        ctx,
        "create",
        AuditChange {
            field: "status".into(),
            old_value: String::new(),
            new_value: order.status.as_str().into(),
        },
        &how,
    )
}
