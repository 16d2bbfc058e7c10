//! `/orders`: create, read, list, update, and move orders through their life cycle.
//!
//! The handlers read the request and answer it; what changes an order is a command of
//! [`crate::commands`].
//!
//! - `create` — placing an order: stock check, order number, the creation events.
//! - `read` — one order, and lists with filters and a cursor.
//! - `update` — changing a pending order's items and address.
//! - `lifecycle` — status steps, confirmation and cancellation.
//! - `stock_override` — selling beyond available stock on an existing order.

mod create;
mod lifecycle;
mod read;
mod stock_override;
mod update;

/// The body of `POST /orders`.
pub use crate::commands::NewOrder;

use axum::Router;

use crate::api::AppState;
use crate::api::order_view::OrderView;
use crate::api::spec::Api;

/// The 422 codes of the checks every set of items passes.
pub(crate) const ITEM_CODES: &[&str] = &[
    "no_items",
    "too_many_items",
    "duplicate_product",
    "total_too_large",
    "unknown_product",
];

/// The 422 codes of the catalogue's price check of a customer's or the assistant's lines.
pub(crate) const PRICE_CODES: &[&str] = &["price_mismatch", "unpriced_product"];

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(create::routes())
        .merge(read::routes())
        .merge(update::routes())
        .merge(lifecycle::routes())
        .merge(stock_override::routes())
}

/// The routes' operations in the OpenAPI document.
pub fn describe(api: &mut Api) {
    create::describe(api);
    read::describe(api);
    update::describe(api);
    lifecycle::describe(api);
    stock_override::describe(api);
}
