//! `/products/{id}/stock` and `/products/{id}/price`: the local stock view and the catalogue's
//! prices that new orders are checked against.

use axum::extract::State;
use axum::routing::{get, put};
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
use crate::domain::{Currency, Money};
use crate::error::ApiError;
use crate::store::products::{self, CataloguePrice};

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/products/{id}/stock", put(set_stock))
        .route("/products/{id}/price", put(set_price))
        .route("/products/{id}/price", get(read_price))
}

/// The routes' operations in the OpenAPI document.
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
    api.put(
        "/api/v1/products/{id}/price",
        "setPrice",
        "Set a product's catalogue price",
    )
    .description(
        "The price customers and the chat assistant are charged: each line of their orders \
         (and of lines they add to one) must carry exactly this unit price in the order's \
         currency, or the command is refused with 422 price_mismatch. Replaces the product's \
         price; one price per product. Admin and system callers (back-office imports) may order \
         at any price.",
    )
    .roles(&[Role::Admin, Role::System])
    .path_uuid("id", "The product id.")
    .body::<PriceBody>()
    .json::<PriceView>(200, "The product's price now.")
    .add();
    api.get(
        "/api/v1/products/{id}/price",
        "getPrice",
        "Read a product's catalogue price",
    )
    .description("The unit price and currency an order of a customer or the assistant must carry.")
    .roles(&[Role::Customer, Role::Ai, Role::Admin, Role::System])
    .path_uuid("id", "The product id.")
    .json::<PriceView>(200, "The product's price.")
    .error(404, &["not_found"])
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
/// The body of `PUT /products/{id}/price`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    /// The price of one, charged to customers and the chat assistant.
    unit_price: Money,
    /// Its currency; orders in another currency cannot be placed by them for this product.
    currency: Currency,
}

/// A product's catalogue price.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PriceView {
    /// The product.
    product_id: Uuid,
    /// The price of one.
    unit_price: Money,
    /// Its currency.
    currency: Currency,
    /// When it was set.
    updated_at: DateTime<Utc>,
}

impl From<CataloguePrice> for PriceView {
    fn from(p: CataloguePrice) -> PriceView {
        PriceView {
            product_id: p.product_id,
            unit_price: p.unit_price,
            currency: p.currency,
            updated_at: p.updated_at,
        }
    }
}

async fn set_price(
    State(state): State<AppState>,
    caller: Caller,
    ProductId(product_id): ProductId,
    AppJson(body): AppJson<PriceBody>,
) -> Result<Json<PriceView>, ApiError> {
    caller.require(&[Role::Admin, Role::System])?;
    let price = CataloguePrice {
        product_id,
        unit_price: body.unit_price,
        currency: body.currency,
        updated_at: now_millis(),
    };
    let stored = price.clone();
    state
        .store
        .write(move |tx| {
            products::set_price(tx, &stored)?;
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok(Json(PriceView::from(price)))
}

async fn read_price(
    State(state): State<AppState>,
    caller: Caller,
    ProductId(product_id): ProductId,
) -> Result<Json<PriceView>, ApiError> {
    caller.require(&[Role::Customer, Role::Ai, Role::Admin, Role::System])?;
    let price = state
        .store
        .read(move |conn| {
            Ok::<_, ApiError>(products::prices(conn, [product_id])?.remove(&product_id))
        })
        .await?;
    price
        .map(|p| Json(PriceView::from(p)))
        .ok_or_else(|| ApiError::NotFound(format!("product {product_id} has no catalogue price")))
}
