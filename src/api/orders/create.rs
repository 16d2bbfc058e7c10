//! `POST /orders`: placing an order.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;

use crate::api::AppState;
use crate::api::context::RequestMeta;
use crate::api::json::AppJson;
use crate::api::order_view::{created, record_created};
use crate::api::spec::Api;
use crate::auth::{Caller, Role};
use crate::commands::{self, NewOrder};
use crate::domain::SourceChannel;
use crate::error::ApiError;

/// `POST /orders`.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/orders", post(create))
}

/// `POST /orders` in the OpenAPI document.
pub(super) fn describe(api: &mut Api) {
    api.post("/api/v1/orders", "createOrder", "Place an order")
        .description(
            "Checks the items against the stock view and takes them, numbers the order, and \
             commits it with its events (order.created, order.audit). A customer places its own \
             orders; only an admin may send `stock_override`.",
        )
        .description(
            "A customer's lines must carry their products' catalogue prices (GET \
             /api/v1/products/{id}/price) in the order's currency: another price is refused with \
             422 price_mismatch (not silently replaced: the customer was shown the price sent), \
             a product without one with 422 unpriced_product (unless CATALOGUE_PRICES=when-set). \
             Admin and system callers set any price.",
        )
        .roles(&[Role::Customer, Role::Admin, Role::System])
        .body::<NewOrder>()
        .created::<super::OrderView>("The order.")
        .order_links(201)
        .error(409, &["insufficient_stock"])
        .error(422, super::ITEM_CODES)
        .error(422, super::PRICE_CODES)
        .add();
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    AppJson(body): AppJson<NewOrder>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Customer, Role::Admin, Role::System])?;
    if body.source_channel == Some(SourceChannel::Chat) {
        return Err(ApiError::invalid_field(
            "source_channel",
            "chat orders are created with POST /api/v1/chat/orders",
        ));
    }
    let ctx = meta.events(&caller);
    record_created();
    let order = commands::place(
        &state.store,
        caller,
        ctx,
        body,
        None,
        state.catalogue_prices,
    )
    .await?;
    Ok(created(&order))
}
