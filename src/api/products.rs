//! `/products/{id}/stock`: the local stock view that new orders are checked against.

use axum::extract::State;
use axum::routing::put;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::context::now_millis;
use super::json::AppJson;
use super::path::OrderId as ProductId;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::store::products;

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new().route("/products/{id}/stock", put(set_stock))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StockBody {
    /// How many new orders may take; 0 or more.
    available: u32,
}

#[derive(Debug, Serialize)]
struct StockView {
    product_id: Uuid,
    available: u32,
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
