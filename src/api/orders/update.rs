//! Changing a pending order's items and shipping address.

use axum::extract::State;
use axum::routing::patch;
use axum::{Json, Router};
use schemars::JsonSchema;
use serde::Deserialize;
use uuid::Uuid;

use super::OrderView;
use crate::api::AppState;
use crate::api::context::RequestMeta;
use crate::api::json::AppJson;
use crate::api::path::OrderId;
use crate::api::spec::Api;
use crate::auth::{Caller, Role};
use crate::commands::{self, OrderRevision};
use crate::domain::revision::ItemRevision;
use crate::domain::{Address, Item, Quantity, Text};
use crate::error::ApiError;

/// `PATCH /orders/{id}`.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/orders/{id}", patch(update))
}

/// `PATCH /orders/{id}` in the OpenAPI document.
pub(super) fn describe(api: &mut Api) {
    api.patch(
        "/api/v1/orders/{id}",
        "updateOrder",
        "Change a pending order",
    )
    .description(
        "Adds, removes or changes items (stock is checked and taken or given back) and \
             replaces the shipping address; writes order.updated. Only pending orders change. \
             Lines a customer adds must carry the catalogue's prices, as on POST /api/v1/orders.",
    )
    .roles(&[Role::Customer, Role::Admin])
    .order_path()
    .body::<OrderPatch>()
    .json::<OrderView>(200, "The order after the change.")
    .order_links(200)
    .error(409, &["order_not_pending", "insufficient_stock"])
    .error(422, super::ITEM_CODES)
    .error(422, super::PRICE_CODES)
    .error(422, &["nothing_to_change", "product_already_in_order"])
    .add();
}

/// The body of `PATCH /orders/{id}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OrderPatch {
    /// Changes to the items.
    items: Option<ItemsPatch>,
    /// The new shipping address.
    shipping_address: Option<Address>,
    /// Why.
    reason: Option<Text<500>>,
}

/// Changes to an order's items.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ItemsPatch {
    /// New lines; their products may not be in the order yet.
    #[serde(default)]
    add: Vec<Item>,
    /// Products to take out.
    #[serde(default)]
    remove: Vec<Uuid>,
    /// New quantities of products in the order.
    #[serde(default)]
    modify: Vec<QuantityChange>,
}

/// A new quantity for a product in the order.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct QuantityChange {
    /// A product of the order.
    product_id: Uuid,
    /// Its new quantity.
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
    let order = commands::update(
        &state.store,
        caller,
        ctx,
        order_id,
        revision,
        state.catalogue_prices,
    )
    .await?;
    Ok(Json(OrderView::from(&order)))
}
