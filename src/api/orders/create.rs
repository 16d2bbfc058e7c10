//! `POST /orders`: placing an order.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;

use crate::api::AppState;
use crate::api::context::RequestMeta;
use crate::api::json::AppJson;
use crate::api::order_view::{created, record_created};
use crate::auth::{Caller, Role};
use crate::commands::{self, NewOrder};
use crate::domain::SourceChannel;
use crate::error::ApiError;

/// `POST /orders`.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/orders", post(create))
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
