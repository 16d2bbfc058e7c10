//! Changing a pending order's items and shipping address (`order.updated`).
//!
//! Lines a customer adds are checked against the catalogue's prices as at placement; a quantity
//! change keeps the line's price.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::prices::{self, CataloguePrices};
use super::{CommandError, audit, change_order, stock};
use crate::auth::Caller;
use crate::domain::events::{AuditChange, ItemChanges, OldNew, OrderChanges, OrderUpdated};
use crate::domain::revision::{ItemRevision, revise_items};
use crate::domain::{Address, EventContext, Events, Money, Order};
use crate::store::{Tx, products};

/// What a client asks to change on a pending order.
#[derive(Debug, Clone, Default)]
pub struct OrderRevision {
    /// Items to add, remove or change the quantity of.
    pub items: ItemRevision,
    /// A new shipping address.
    pub shipping_address: Option<Address>,
    /// Why; a summary of the changes when omitted.
    pub reason: Option<String>,
}

/// Changes a pending order: revises its items (checking the prices of a customer's added lines
/// against the catalogue, taking or giving back stock) and its address, and writes
/// `order.updated` and its `order.audit`.
pub async fn update(
    store: &crate::store::Store,
    caller: Caller,
    ctx: EventContext,
    order_id: Uuid,
    revision: OrderRevision,
    catalogue: CataloguePrices,
) -> Result<Order, CommandError> {
    if revision.items.is_empty() && revision.shipping_address.is_none() {
        return Err(CommandError::NothingToChange(
            "send items (add, remove, modify) and/or shipping_address",
        ));
    }
    change_order(store, caller, ctx, order_id, move |tx, order, events| {
        revise(tx, order, events, revision, caller, catalogue)
    })
    .await
}

/// The change itself, inside the command's transaction.
fn revise(
    tx: &Tx<'_>,
    order: &mut Order,
    events: &mut Events<'_>,
    revision: OrderRevision,
    caller: Caller,
    catalogue: CataloguePrices,
) -> Result<(), CommandError> {
    let now = events.context().now;
    let revised = revise_items(order, &revision.items)?;
    // After the order's own rules (pending, products not in it yet), so that their refusals
    // come first.
    if !prices::sets_prices(caller.role) {
        let added = &revision.items.add;
        prices::check(tx, catalogue, added, &order.currency, "items.add")?;
    }
    stock::check_added(tx, order, &revised.stock_delta)?;
    for (product_id, delta) in &revised.stock_delta {
        products::adjust(tx, *product_id, -delta, now)?;
    }
    let old_total = order.total_amount();
    let old_address = order.shipping_address.clone();
    order.items = revised.items;
    if let Some(address) = revision.shipping_address {
        order.shipping_address = address;
    }
    let diff = Diff::of(!revision.items.is_empty(), old_total, old_address, order);
    if diff.fields.is_empty() {
        return Err(CommandError::NothingToChange(
            "the shipping address is the order's already",
        ));
    }
    let reason = revision
        .reason
        .unwrap_or_else(|| summary(&revised.changes, &diff.fields));
    events.push(OrderUpdated {
        order_id: order.order_id,
        order_number: order.order_number.clone(),
        customer_id: order.customer_id,
        changes: OrderChanges {
            items: revised.changes,
            shipping_address: order.shipping_address.clone(),
            total_amount: OldNew {
                old: old_total,
                new: order.total_amount(),
            },
        },
        updated_by: caller.user_id,
        reason: reason.clone(),
    });
    let event = audit(order, events.context(), "update", diff.audit(), &reason);
    events.push(event);
    Ok(())
}

/// What an update changed, as its `order.audit` reports it: the fields, and their old and new
/// values (the total stands for the items).
struct Diff {
    fields: Vec<&'static str>,
    old: Map<String, Value>,
    new: Map<String, Value>,
}

impl Diff {
    fn of(items_changed: bool, old_total: Money, old_address: Address, order: &Order) -> Diff {
        let mut diff = Diff {
            fields: Vec::new(),
            old: Map::new(),
            new: Map::new(),
        };
        if items_changed {
            diff.fields.push("items");
            diff.old.insert("total_amount".into(), json!(old_total));
            diff.new
                .insert("total_amount".into(), json!(order.total_amount()));
        }
        if order.shipping_address != old_address {
            diff.fields.push("shipping_address");
            diff.old
                .insert("shipping_address".into(), json!(old_address));
            diff.new
                .insert("shipping_address".into(), json!(order.shipping_address));
        }
        diff
    }

    fn audit(self) -> AuditChange {
        AuditChange {
            field: self.fields.join(","),
            old_value: Value::Object(self.old).to_string(),
            new_value: Value::Object(self.new).to_string(),
        }
    }
}

/// The reason of an update the client gave none for: what changed.
fn summary(changes: &ItemChanges, fields: &[&str]) -> String {
    let address = if fields.contains(&"shipping_address") {
        "; shipping address changed"
    } else {
        ""
    };
    format!(
        "{} item(s) added, {} removed, {} modified{address}",
        changes.added.len(),
        changes.removed.len(),
        changes.modified.len(),
    )
}
