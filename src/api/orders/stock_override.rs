//! Selling beyond available stock on an existing order, approved by an admin.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{OrderView, audit, change_order};
use crate::api::AppState;
use crate::api::context::RequestMeta;
use crate::api::json::AppJson;
use crate::api::path::OrderId;
use crate::auth::{Caller, Role};
use crate::domain::events::{
    AuditChange, OrderStockOverrideApplied, OverriddenItem, OverrideDetails,
};
use crate::domain::{Events, Order, OrderError, Quantity, Status, Text};
use crate::error::ApiError;
use crate::store::products::StockOverride;
use crate::store::{Tx, products};

/// `POST /orders/{id}/stock-override`.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/orders/{id}/stock-override", post(override_stock))
}

/// The body of `POST /orders/{id}/stock-override`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    reason: Text<500>,
    expected_restock_date: DateTime<Utc>,
    items: Vec<OverrideItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideItem {
    product_id: Uuid,
    override_quantity: Quantity,
}

async fn override_stock(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    OrderId(order_id): OrderId,
    AppJson(body): AppJson<OverrideBody>,
) -> Result<Json<OrderView>, ApiError> {
    caller.require(&[Role::Admin])?;
    if body.items.is_empty() {
        return Err(ApiError::invalid_field("items", "items must not be empty"));
    }
    let ctx = meta.events(&caller);
    let now = ctx.now;
    let order = change_order(&state, caller, ctx, order_id, move |tx, order, events| {
        if !matches!(order.status, Status::Pending | Status::Confirmed) {
            return Err(ApiError::Conflict {
                code: "invalid_status",
                message: format!(
                    "stock can be overridden only for pending or confirmed orders; it is `{}`",
                    order.status.as_str()
                ),
                details: json!({ "current_status": order.status }),
            });
        }
        let stock = products::available(tx, body.items.iter().map(|i| i.product_id))?;
        let mut items = Vec::with_capacity(body.items.len());
        for (n, wanted) in body.items.iter().enumerate() {
            let item = order
                .item(wanted.product_id)
                .ok_or(OrderError::UnknownProduct(wanted.product_id))?;
            if wanted.override_quantity > item.quantity {
                return Err(ApiError::invalid_field(
                    &format!("items[{n}].override_quantity"),
                    format!(
                        "override_quantity {} exceeds the ordered quantity {}",
                        wanted.override_quantity.get(),
                        item.quantity.get()
                    ),
                ));
            }
            items.push(OverriddenItem {
                product_id: item.product_id,
                requested_quantity: item.quantity.get(),
                available_quantity: never_negative(
                    stock.get(&item.product_id).copied().unwrap_or(0),
                ),
                override_quantity: wanted.override_quantity.get(),
            });
        }
        let approval = OverrideDetails {
            reason: body.reason.to_string(),
            expected_restock_date: body.expected_restock_date,
            approved_by: caller.user_id,
        };
        let summary: Vec<String> = items
            .iter()
            .map(|o| format!("{}:{}", o.product_id, o.override_quantity))
            .collect();
        let reason = approval.reason.clone();
        apply_overrides(tx, order, events, approval, items, now)?;
        let event = audit(
            order,
            events.context(),
            "stock_override",
            AuditChange {
                field: "stock_override".into(),
                old_value: String::new(),
                new_value: summary.join(","),
            },
            &reason,
        );
        events.push(event);
        Ok(())
    })
    .await?;
    Ok(Json(OrderView::from(&order)))
}

/// A stock view quantity as the events report it: what could be had, never below zero.
pub(super) fn never_negative(available: i64) -> u32 {
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
) -> Result<(), ApiError> {
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
