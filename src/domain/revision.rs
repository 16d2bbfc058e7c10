//! Changing a pending order's items: what is added, removed and modified, and what that does to
//! the total and to stock.

use std::collections::HashMap;

use uuid::Uuid;

use super::events::{ItemChanges, ItemLine, ModifiedItem};
use super::order::{Item, Order, OrderError, Quantity, Status, check_items};

/// Item changes asked for by a client.
#[derive(Debug, Clone, Default)]
pub struct ItemRevision {
    /// New products.
    pub add: Vec<Item>,
    /// Products to take out.
    pub remove: Vec<Uuid>,
    /// Products whose quantity changes.
    pub modify: Vec<(Uuid, Quantity)>,
}

impl ItemRevision {
    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty() && self.modify.is_empty()
    }
}

/// The outcome of an item revision.
#[derive(Debug, Clone)]
pub struct RevisedItems {
    /// The order's items afterwards.
    pub items: Vec<Item>,
    /// What changed, as `order.updated` reports it.
    pub changes: ItemChanges,
    /// How many more of each product the order now takes (negative: gives back).
    pub stock_delta: HashMap<Uuid, i64>,
}

/// Applies `revision` to a pending order's items. Removals happen first, then modifications,
/// then additions; a product may appear in only one of the three lists.
pub fn revise_items(order: &Order, revision: &ItemRevision) -> Result<RevisedItems, OrderError> {
    if order.status != Status::Pending {
        return Err(OrderError::NotPending(order.status));
    }
    let mut named: Vec<Uuid> = revision.remove.clone();
    named.extend(revision.modify.iter().map(|(id, _)| *id));
    named.extend(revision.add.iter().map(|i| i.product_id));
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = named.iter().find(|id| !seen.insert(**id)) {
        return Err(OrderError::DuplicateProduct(*twice));
    }

    let mut items = order.items.clone();
    let mut changes = ItemChanges::default();
    let mut stock_delta = HashMap::new();
    for product_id in &revision.remove {
        let at = position(&items, *product_id)?;
        let item = items.remove(at);
        stock_delta.insert(*product_id, -i64::from(item.quantity.get()));
        changes.removed.push(ItemLine::from(&item));
    }
    for (product_id, quantity) in &revision.modify {
        let at = position(&items, *product_id)?;
        let previous = items[at].quantity;
        items[at].quantity = *quantity;
        stock_delta.insert(
            *product_id,
            i64::from(quantity.get()) - i64::from(previous.get()),
        );
        changes.modified.push(ModifiedItem {
            product_id: *product_id,
            quantity: quantity.get(),
            previous_quantity: previous.get(),
            unit_price: items[at].unit_price,
            total_price: items[at].total_price(),
        });
    }
    for item in &revision.add {
        if items.iter().any(|i| i.product_id == item.product_id) {
            return Err(OrderError::ProductAlreadyInOrder(item.product_id));
        }
        stock_delta.insert(item.product_id, i64::from(item.quantity.get()));
        changes.added.push(ItemLine::from(item));
        items.push(item.clone());
    }
    check_items(&items)?;
    Ok(RevisedItems {
        items,
        changes,
        stock_delta,
    })
}

fn position(items: &[Item], product_id: Uuid) -> Result<usize, OrderError> {
    items
        .iter()
        .position(|i| i.product_id == product_id)
        .ok_or(OrderError::UnknownProduct(product_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::{Address, Currency, SourceChannel};
    use crate::domain::{Money, Text};

    fn item(q: i64) -> Item {
        Item {
            product_id: Uuid::now_v7(),
            quantity: Quantity::new(q).unwrap(),
            unit_price: Money::parse("10.00").unwrap(),
        }
    }

    fn order(items: Vec<Item>) -> Order {
        Order {
            order_id: Uuid::now_v7(),
            order_number: "ORD-2025-000001".into(),
            customer_id: Uuid::now_v7(),
            status: Status::Pending,
            currency: Currency::default(),
            items,
            shipping_address: Address {
                street: Text::new("1 Road").unwrap(),
                city: Text::new("Bangkok").unwrap(),
                postal_code: Text::new("10100").unwrap(),
                country: Text::new("Thailand").unwrap(),
            },
            source_channel: SourceChannel::Web,
            created_by: Uuid::now_v7(),
            payment_confirmed: false,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn adds_removes_and_modifies_with_stock_deltas() {
        let (a, b) = (item(2), item(1));
        let order = order(vec![a.clone(), b.clone()]);
        let c = item(3);
        let revision = ItemRevision {
            add: vec![c.clone()],
            remove: vec![b.product_id],
            modify: vec![(a.product_id, Quantity::new(5).unwrap())],
        };
        let revised = revise_items(&order, &revision).unwrap();
        assert_eq!(revised.items.len(), 2);
        assert_eq!(revised.stock_delta[&a.product_id], 3);
        assert_eq!(revised.stock_delta[&b.product_id], -1);
        assert_eq!(revised.stock_delta[&c.product_id], 3);
        assert_eq!(revised.changes.modified[0].previous_quantity, 2);
        assert_eq!(revised.changes.removed[0].product_id, b.product_id);
    }

    #[test]
    fn refuses_what_cannot_apply() {
        let a = item(2);
        let pending = order(vec![a.clone()]);
        let remove_all = ItemRevision {
            remove: vec![a.product_id],
            ..Default::default()
        };
        assert_eq!(
            revise_items(&pending, &remove_all).unwrap_err(),
            OrderError::NoItems
        );
        let unknown = ItemRevision {
            remove: vec![Uuid::now_v7()],
            ..Default::default()
        };
        assert!(matches!(
            revise_items(&pending, &unknown),
            Err(OrderError::UnknownProduct(_))
        ));
        let twice = ItemRevision {
            add: vec![a.clone()],
            ..Default::default()
        };
        assert!(matches!(
            revise_items(&pending, &twice),
            Err(OrderError::ProductAlreadyInOrder(_))
        ));
        let mut confirmed = pending.clone();
        confirmed.status = Status::Confirmed;
        assert_eq!(
            revise_items(&confirmed, &remove_all).unwrap_err(),
            OrderError::NotPending(Status::Confirmed)
        );
    }
}
