//! Moving an order through its life cycle: status steps, confirmation, cancellation.

use chrono::{DateTime, Days, Utc};
use uuid::Uuid;

use super::{CommandError, audit, change_order};
use crate::auth::{Caller, Role};
use crate::domain::events::{
    AuditChange, OrderCancelled, OrderConfirmed, OrderStatisticsUpdated, OrderStatusChanged,
    RestockItem, StatusChange,
};
use crate::domain::{EventContext, Events, Order, Status, Topic};
use crate::store::{Store, products};

/// A step to a status that carries no facts of its own (not confirmation, not cancellation).
#[derive(Debug, Clone)]
pub struct StatusStep {
    /// The status to move to.
    pub to: Status,
    /// Why.
    pub reason: String,
    /// Whether a system took the step by itself.
    pub automatic: bool,
}

/// Moves an order one step along its status machine: `order.status_changed` and its audit.
pub async fn change_status(
    store: &Store,
    caller: Caller,
    ctx: EventContext,
    order_id: Uuid,
    step: StatusStep,
) -> Result<Order, CommandError> {
    change_order(store, caller, ctx, order_id, move |_, order, events| {
        let from = order.status;
        order.status = from.advance_to(step.to)?;
        events.push(status_changed(
            events,
            order,
            from,
            &step.reason,
            step.automatic,
        ));
        push_status_audit(events, order, from, &step.reason, "status_update");
        Ok(())
    })
    .await
}

/// A confirmation: payment and stock facts.
#[derive(Debug, Clone)]
pub struct Confirmation {
    /// Whether the payment is in.
    pub payment_confirmed: bool,
    /// Whether the stock is reserved.
    pub inventory_reserved: bool,
    /// When fulfilment is expected; the start of the next UTC day when omitted.
    pub estimated_fulfillment_date: Option<DateTime<Utc>>,
    /// Why; said from the payment when omitted.
    pub reason: Option<String>,
}

/// Confirms an order: `order.status_changed`, `order.confirmed`, the audit and the customer's
/// statistics.
pub async fn confirm(
    store: &Store,
    caller: Caller,
    ctx: EventContext,
    order_id: Uuid,
    confirmation: Confirmation,
) -> Result<Order, CommandError> {
    let now = ctx.now;
    if confirmation
        .estimated_fulfillment_date
        .is_some_and(|date| date < now)
    {
        return Err(CommandError::invalid_field(
            "estimated_fulfillment_date",
            "estimated_fulfillment_date is in the past",
        ));
    }
    // Without a date, fulfilment is expected from the start of the next UTC day.
    let fulfillment = confirmation.estimated_fulfillment_date.unwrap_or_else(|| {
        (now.date_naive() + Days::new(1))
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
    });
    let paid = confirmation.payment_confirmed;
    let reason = match (confirmation.reason, paid) {
        (Some(reason), _) => reason,
        (None, true) => "Payment confirmed".to_owned(),
        (None, false) => "Confirmed before payment".to_owned(),
    };
    let automatic = caller.role == Role::System;
    change_order(store, caller, ctx, order_id, move |_, order, events| {
        let from = order.status;
        order.status = from.advance_to(Status::Confirmed)?;
        order.payment_confirmed = paid;
        events.push(status_changed(events, order, from, &reason, automatic));
        events.push(OrderConfirmed {
            order_id: order.order_id,
            order_number: order.order_number.clone(),
            customer_id: order.customer_id,
            total_amount: order.total_amount(),
            confirmed_by: caller.user_id,
            payment_confirmed: paid,
            inventory_reserved: confirmation.inventory_reserved,
            estimated_fulfillment_date: fulfillment,
        });
        push_status_audit(events, order, from, &reason, "confirm");
        events.push(OrderStatisticsUpdated::after(Topic::Confirmed, order, now));
        Ok(())
    })
    .await
}

/// A cancellation.
#[derive(Debug, Clone)]
pub struct Cancellation {
    /// Why.
    pub reason: String,
    /// Whether money goes back; whether payment was confirmed when omitted.
    pub refund_required: Option<bool>,
}

/// Cancels an order (a customer only its pending ones): gives its stock back and writes
/// `order.status_changed`, `order.cancelled`, the audit and the customer's statistics.
pub async fn cancel(
    store: &Store,
    caller: Caller,
    ctx: EventContext,
    order_id: Uuid,
    cancellation: Cancellation,
) -> Result<Order, CommandError> {
    let now = ctx.now;
    let automatic = caller.role == Role::System;
    change_order(store, caller, ctx, order_id, move |tx, order, events| {
        let from = order.status;
        if caller.role == Role::Customer && from != Status::Pending {
            return Err(CommandError::CustomerCancelsOnlyPending(from));
        }
        order.status = from.cancel()?;
        for item in &order.items {
            products::adjust(tx, item.product_id, i64::from(item.quantity.get()), now)?;
        }
        let reason = cancellation.reason;
        // Money was taken only if payment was confirmed; the caller may say otherwise.
        let refund_required = cancellation
            .refund_required
            .unwrap_or(order.payment_confirmed);
        events.push(status_changed(events, order, from, &reason, automatic));
        events.push(OrderCancelled {
            order_id: order.order_id,
            order_number: order.order_number.clone(),
            customer_id: order.customer_id,
            cancellation_reason: reason.clone(),
            cancelled_by: caller.user_id,
            automatic,
            refund_required,
            items_to_restock: order
                .items
                .iter()
                .map(|i| RestockItem {
                    product_id: i.product_id,
                    quantity: i.quantity.get(),
                })
                .collect(),
        });
        push_status_audit(events, order, from, &reason, "cancel");
        events.push(OrderStatisticsUpdated::after(Topic::Cancelled, order, now));
        Ok(())
    })
    .await
}

/// `order.status_changed` for a step from `from` to the order's status, by the request's user.
fn status_changed(
    events: &Events<'_>,
    order: &Order,
    from: Status,
    reason: &str,
    automatic: bool,
) -> OrderStatusChanged {
    OrderStatusChanged {
        order_id: order.order_id,
        order_number: order.order_number.clone(),
        customer_id: order.customer_id,
        status_change: StatusChange {
            from,
            to: order.status,
        },
        reason: reason.to_owned(),
        changed_by: events.context().actor.user_id,
        automatic,
    }
}

/// The `order.audit` of a status step.
fn push_status_audit(
    events: &mut Events<'_>,
    order: &Order,
    from: Status,
    reason: &str,
    action: &str,
) {
    let event = audit(
        order,
        events.context(),
        action,
        AuditChange {
            field: "status".into(),
            old_value: from.as_str().into(),
            new_value: order.status.as_str().into(),
        },
        reason,
    );
    events.push(event);
}
