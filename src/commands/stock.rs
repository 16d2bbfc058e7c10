//! Stock: taking it for an order, checking what an update adds, and selling beyond it on an
//! admin's approval (`order.stock_override_applied`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{CommandError, audit, change_order};
use crate::auth::Caller;
use crate::domain::events::{
    AuditChange, OrderStockOverrideApplied, OverriddenItem, OverrideDetails,
};
use crate::domain::{EventContext, Events, Order, OrderError, Quantity, Status};
use crate::store::products::StockOverride;
use crate::store::{Store, Tx, products};

/// An item short of stock: what was asked and what the stock view had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortItem {
    /// The product.
    pub product_id: Uuid,
    /// The quantity the order asks for.
    pub requested: u32,
    /// What the stock view had (below zero when already oversold).
    pub available: i64,
}

impl ShortItem {
    /// The item as `order.stock_override_applied` lists it: all that was not available.
    pub(super) fn overridden(self) -> OverriddenItem {
        let available = never_negative(self.available);
        OverriddenItem {
            product_id: self.product_id,
            requested_quantity: self.requested,
            available_quantity: available,
            override_quantity: self.requested - available,
        }
    }
}

/// Takes the order's quantities from the stock view. Short items refuse the command unless
/// `may_override`, in which case they are returned for the override event.
pub(super) fn take(
    tx: &Tx<'_>,
    order: &Order,
    may_override: bool,
    now: DateTime<Utc>,
) -> Result<Vec<ShortItem>, CommandError> {
    let stock = products::available(tx, order.product_ids())?;
    let short: Vec<ShortItem> = order
        .items
        .iter()
        .filter_map(|item| {
            let available = *stock.get(&item.product_id)?;
            (i64::from(item.quantity.get()) > available).then_some(ShortItem {
                product_id: item.product_id,
                requested: item.quantity.get(),
                available,
            })
        })
        .collect();
    if !short.is_empty() && !may_override {
        return Err(CommandError::InsufficientStock(short));
    }
    for item in &order.items {
        products::adjust(tx, item.product_id, -i64::from(item.quantity.get()), now)?;
    }
    Ok(short)
}

/// Refuses an update that asks for more of a tracked product than the stock view has.
pub(super) fn check_added(
    tx: &Tx<'_>,
    order: &Order,
    delta: &HashMap<Uuid, i64>,
) -> Result<(), CommandError> {
    let wanted: Vec<Uuid> = delta
        .iter()
        .filter(|(_, d)| **d > 0)
        .map(|(id, _)| *id)
        .collect();
    let stock = products::available(tx, wanted.iter().copied())?;
    let short: Vec<ShortItem> = wanted
        .iter()
        .filter_map(|id| {
            let available = *stock.get(id)?;
            let held = order.item(*id).map_or(0, |i| i64::from(i.quantity.get()));
            (delta[id] > available).then(|| ShortItem {
                product_id: *id,
                requested: u32::try_from(held + delta[id]).unwrap_or(u32::MAX),
                available: available + held,
            })
        })
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(CommandError::InsufficientStock(short))
    }
}

/// A stock view quantity as the events report it: what could be had, never below zero.
fn never_negative(available: i64) -> u32 {
    u32::try_from(available.max(0)).unwrap_or(u32::MAX)
}

/// Records approved overrides and adds `order.stock_override_applied` listing them.
pub(super) fn apply_overrides(
    tx: &Tx<'_>,
    order: &Order,
    events: &mut Events<'_>,
    approval: OverrideDetails,
    items: Vec<OverriddenItem>,
    at: DateTime<Utc>,
) -> Result<(), CommandError> {
    for item in &items {
        products::record_override(
            tx,
            &StockOverride {
                order_id: order.order_id,
                product_id: item.product_id,
                requested_quantity: item.requested_quantity,
                available_quantity: item.available_quantity,
                override_quantity: item.override_quantity,
                reason: approval.reason.clone(),
                expected_restock_date: approval.expected_restock_date,
                approved_by: approval.approved_by,
            },
            at,
        )?;
    }
    events.push(OrderStockOverrideApplied {
        order_id: order.order_id,
        order_number: order.order_number.clone(),
        customer_id: order.customer_id,
        override_details: approval,
        items_overridden: items,
    });
    Ok(())
}

/// An admin's approval to sell beyond available stock on an existing order.
#[derive(Debug, Clone)]
pub struct OverrideApproval {
    /// Why.
    pub reason: String,
    /// When the products are expected back.
    pub expected_restock_date: DateTime<Utc>,
    /// Each product and how many of it may be oversold.
    pub items: Vec<(Uuid, Quantity)>,
}

/// Sells beyond available stock on a pending or confirmed order: records the overrides and
/// writes `order.stock_override_applied` and its `order.audit`.
pub async fn override_stock(
    store: &Store,
    caller: Caller,
    ctx: EventContext,
    order_id: Uuid,
    approval: OverrideApproval,
) -> Result<Order, CommandError> {
    if approval.items.is_empty() {
        return Err(CommandError::invalid_field(
            "items",
            "items must not be empty",
        ));
    }
    let now = ctx.now;
    change_order(store, caller, ctx, order_id, move |tx, order, events| {
        if !matches!(order.status, Status::Pending | Status::Confirmed) {
            return Err(CommandError::OverrideNotAllowed(order.status));
        }
        let items = overridden_items(tx, order, &approval.items)?;
        let summary: Vec<String> = items
            .iter()
            .map(|o| format!("{}:{}", o.product_id, o.override_quantity))
            .collect();
        let details = OverrideDetails {
            reason: approval.reason.clone(),
            expected_restock_date: approval.expected_restock_date,
            approved_by: caller.user_id,
        };
        apply_overrides(tx, order, events, details, items, now)?;
        let event = audit(
            order,
            events.context(),
            "stock_override",
            AuditChange {
                field: "stock_override".into(),
                old_value: String::new(),
                new_value: summary.join(","),
            },
            &approval.reason,
        );
        events.push(event);
        Ok(())
    })
    .await
}

/// The overridden items of an approval: each must be on the order, and not more than ordered.
fn overridden_items(
    tx: &Tx<'_>,
    order: &Order,
    wanted: &[(Uuid, Quantity)],
) -> Result<Vec<OverriddenItem>, CommandError> {
    let stock = products::available(tx, wanted.iter().map(|(id, _)| *id))?;
    let mut items = Vec::with_capacity(wanted.len());
    for (n, (product_id, quantity)) in wanted.iter().enumerate() {
        let item = order
            .item(*product_id)
            .ok_or(OrderError::UnknownProduct(*product_id))?;
        if *quantity > item.quantity {
            return Err(CommandError::invalid_field(
                &format!("items[{n}].override_quantity"),
                format!(
                    "override_quantity {} exceeds the ordered quantity {}",
                    quantity.get(),
                    item.quantity.get()
                ),
            ));
        }
        items.push(OverriddenItem {
            product_id: item.product_id,
            requested_quantity: item.quantity.get(),
            available_quantity: never_negative(stock.get(&item.product_id).copied().unwrap_or(0)),
            override_quantity: quantity.get(),
        });
    }
    Ok(items)
}
