//! Changing a pending order's items and shipping address.

use std::collections::HashMap;

use axum::extract::State;
use axum::routing::patch;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::create::{Short, insufficient_stock};
use super::{OrderView, audit, change_order};
use crate::api::AppState;
use crate::api::context::RequestMeta;
use crate::api::json::AppJson;
use crate::api::path::OrderId;
use crate::auth::{Caller, Role};
use crate::domain::events::{AuditChange, OldNew, OrderChanges, OrderUpdated};
use crate::domain::revision::{ItemRevision, revise_items};
use crate::domain::{Address, Item, Order, Quantity, Text};
use crate::error::ApiError;
use crate::store::{Tx, products};

/// `PATCH /orders/{id}`.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/orders/{id}", patch(update))
}

/// The body of `PATCH /orders/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderPatch {
    items: Option<ItemsPatch>,
    shipping_address: Option<Address>,
    reason: Option<Text<500>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemsPatch {
    #[serde(default)]
    add: Vec<Item>,
    #[serde(default)]
    remove: Vec<Uuid>,
    #[serde(default)]
    modify: Vec<QuantityChange>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantityChange {
    product_id: Uuid,
    quantity: Quantity,
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    OrderId(order_id): OrderId,
    AppJson(patch): AppJson<OrderPatch>,
) -> Result<Json<OrderView>, ApiError> {
    caller.require(&[Role::Customer, Role::Admin])?;
    let revision = patch
        .items
        .map_or_else(ItemRevision::default, |p| ItemRevision {
            add: p.add,
            remove: p.remove,
            modify: p
                .modify
                .into_iter()
                .map(|m| (m.product_id, m.quantity))
                .collect(),
        });
    let address = patch.shipping_address;
    if revision.is_empty() && address.is_none() {
        return Err(nothing_to_change(
            "send items (add, remove, modify) and/or shipping_address",
        ));
    }
    let reason = patch.reason.map(|r| r.to_string());
    let ctx = meta.events(&caller);
    let now = ctx.now;
    let order = change_order(&state, caller, ctx, order_id, move |tx, order, events| {
        let revised = revise_items(order, &revision)?;
        check_added_stock(tx, order, &revised.stock_delta)?;
        for (product_id, delta) in &revised.stock_delta {
            products::adjust(tx, *product_id, -delta, now)?;
        }
        let old_total = order.total_amount();
        let old_address = order.shipping_address.clone();
        order.items = revised.items;
        if let Some(address) = address {
            order.shipping_address = address;
        }

        let mut fields = Vec::new();
        let mut old = serde_json::Map::new();
        let mut new = serde_json::Map::new();
        if !revision.is_empty() {
            fields.push("items");
            old.insert("total_amount".into(), json!(old_total));
            new.insert("total_amount".into(), json!(order.total_amount()));
        }
        if order.shipping_address != old_address {
            fields.push("shipping_address");
            old.insert("shipping_address".into(), json!(old_address));
            new.insert("shipping_address".into(), json!(order.shipping_address));
        }
        if fields.is_empty() {
            return Err(nothing_to_change(
                "the shipping address is the order's already",
            ));
        }
        let changes = &revised.changes;
        let reason = reason.unwrap_or_else(|| {
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
        });
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
        let event = audit(
            order,
            events.context(),
            "update",
            AuditChange {
                field: fields.join(","),
                old_value: serde_json::Value::Object(old).to_string(),
                new_value: serde_json::Value::Object(new).to_string(),
            },
            &reason,
        );
        events.push(event);
        Ok(())
    })
    .await?;
    Ok(Json(OrderView::from(&order)))
}

fn nothing_to_change(message: &str) -> ApiError {
    ApiError::Unprocessable {
        code: "nothing_to_change",
        message: message.to_owned(),
        details: serde_json::Value::Null,
    }
}

/// Fails with 409 when an update asks for more of a tracked product than the stock view has.
fn check_added_stock(
    tx: &Tx<'_>,
    order: &Order,
    delta: &HashMap<Uuid, i64>,
) -> Result<(), ApiError> {
    let wanted: Vec<Uuid> = delta
        .iter()
        .filter(|(_, d)| **d > 0)
        .map(|(id, _)| *id)
        .collect();
    let stock = products::available(tx, wanted.iter().copied())?;
    let short: Vec<Short> = wanted
        .iter()
        .filter_map(|id| {
            let available = *stock.get(id)?;
            let held = order.item(*id).map_or(0, |i| i64::from(i.quantity.get()));
            (delta[id] > available).then(|| Short {
                product_id: *id,
                requested: u32::try_from(held + delta[id]).unwrap_or(u32::MAX),
                available: available + held,
            })
        })
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(insufficient_stock(&short))
    }
}
