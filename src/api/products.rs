//! `/products/{id}/stock`: the local stock view that new orders are checked against.

use axum::extract::State;
use axum::routing::put;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::context::now_millis;
use super::json::AppJson;
use super::path::OrderId as ProductId;
use super::spec::Api;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::store::products;

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new().route("/products/{id}/stock", put(set_stock))
}

/// The route's operation in the OpenAPI document.
pub fn describe(api: &mut Api) {
    api.put(
        "/api/v1/products/{id}/stock",
        "setStock",
        "Set a product's available stock",
    )
    .description("The stock view that new orders are checked against.")
    .roles(&[Role::Admin, Role::System])
    .path_uuid("id", "The product id.")
    .body::<StockBody>()
    .json::<StockView>(200, "The product's stock now.")
    .add();
}

/// The body of `PUT /products/{id}/stock`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StockBody {
    /// How many new orders may take; 0 or more.
    #[serde(deserialize_with = "available")]
    available: u32,
}

fn available<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let value = crate::domain::order::whole_number(d)?;
    u32::try_from(value)
        .map_err(|_| serde::de::Error::custom(format!("must be 0 to {}, got {value}", u32::MAX)))
}

/// A product's stock.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StockView {
    /// The product.
    product_id: Uuid,
    /// How many new orders may take.
    available: u32,
    /// When it was set.
    updated_at: DateTime<Utc>,
}

async fn set_stock(
    State(state): State<AppState>,
    caller: Caller,
    ProductId(product_id): ProductId,
    AppJson(body): AppJson<StockBody>,
) -> Result<Json<StockView>, ApiError> {
    caller.require(&[Role::Admin, Role::System])?;
    let now = now_millis();
    state
        .store
        .write(move |tx| {
            products::set(tx, product_id, i64::from(body.available), now)?;
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok(Json(StockView {
        product_id,
        available: body.available,
        updated_at: now,
    }))
}
