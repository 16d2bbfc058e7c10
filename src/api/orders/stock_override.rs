//! Selling beyond available stock on an existing order, approved by an admin.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Deserialize;
use uuid::Uuid;

use super::OrderView;
use crate::api::AppState;
use crate::api::context::RequestMeta;
use crate::api::json::AppJson;
use crate::api::order_view::record_ok;
use crate::api::path::OrderId;
use crate::api::spec::Api;
use crate::auth::{Caller, Role};
use crate::commands::{self, OverrideApproval};
use crate::domain::{Quantity, Text};
use crate::error::ApiError;

/// `POST /orders/{id}/stock-override`.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/orders/{id}/stock-override", post(override_stock))
}

/// `POST /orders/{id}/stock-override` in the OpenAPI document.
pub(super) fn describe(api: &mut Api) {
    api.post(
        "/api/v1/orders/{id}/stock-override",
        "overrideStock",
        "Sell beyond available stock on an order",
    )
    .description("Writes order.stock_override_applied.")
    .roles(&[Role::Admin])
    .order_path()
    .body::<OverrideBody>()
    .json::<OrderView>(200, "The order.")
    .order_links(200)
    .error(409, &["invalid_status"])
    .error(422, &["unknown_product"])
    .add();
}

/// The body of `POST /orders/{id}/stock-override`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    /// Why the stock may be oversold.
    reason: Text<500>,
    /// When the short products are expected back.
    expected_restock_date: DateTime<Utc>,
    /// The products of the order to oversell, and by how much.
    #[schemars(length(min = 1))]
    items: Vec<OverrideItem>,
}

/// One product to oversell.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OverrideItem {
    /// A product of the order.
    product_id: Uuid,
    /// How many beyond the stock.
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
    let approval = OverrideApproval {
        reason: body.reason.to_string(),
        expected_restock_date: body.expected_restock_date,
        items: body
            .items
            .iter()
            .map(|i| (i.product_id, i.override_quantity))
            .collect(),
    };
    let ctx = meta.events(&caller);
    record_ok();
    let order = commands::override_stock(&state.store, caller, ctx, order_id, approval).await?;
    Ok(Json(OrderView::from(&order)))
}
