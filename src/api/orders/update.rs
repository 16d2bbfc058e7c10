//! Changing a pending order's items and shipping address.

use axum::extract::State;
use axum::routing::patch;
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use super::OrderView;
use crate::api::AppState;
use crate::api::context::RequestMeta;
use crate::api::json::AppJson;
use crate::api::path::OrderId;
use crate::auth::{Caller, Role};
use crate::commands::{self, OrderRevision};
use crate::domain::revision::ItemRevision;
use crate::domain::{Address, Item, Quantity, Text};
use crate::error::ApiError;

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
    let items = patch
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
    let revision = OrderRevision {
        items,
        shipping_address: patch.shipping_address,
        reason: patch.reason.map(|r| r.to_string()),
    };
    let ctx = meta.events(&caller);
    let order = commands::update(&state.store, caller, ctx, order_id, revision).await?;
    Ok(Json(OrderView::from(&order)))
}
