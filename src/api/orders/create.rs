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
        .roles(&[Role::Customer, Role::Admin, Role::System])
        .body::<NewOrder>()
        .created::<super::OrderView>("The order.")
        .order_links(201)
        .error(409, &["insufficient_stock"])
        .error(422, super::ITEM_CODES)
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
    let order = commands::place(&state.store, caller, ctx, body, None).await?;
    Ok(created(&order))
}
