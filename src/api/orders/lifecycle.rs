//! Moving an order through its life cycle: status steps, confirmation, cancellation.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::OrderView;
use crate::api::AppState;
use crate::api::context::RequestMeta;
use crate::api::json::AppJson;
use crate::api::order_view::record_ok;
use crate::api::path::OrderId;
use crate::api::spec::Api;
use crate::auth::{Caller, Role};
use crate::commands::{self, Cancellation, Confirmation, StatusStep};
use crate::domain::{Status, Text};
use crate::error::ApiError;

/// `POST /orders/{id}/status`, `/confirm` and `/cancel`.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/orders/{id}/status", post(change_status))
        .route("/orders/{id}/confirm", post(confirm))
        .route("/orders/{id}/cancel", post(cancel))
}

/// The three routes in the OpenAPI document.
pub(super) fn describe(api: &mut Api) {
    api.post(
        "/api/v1/orders/{id}/status",
        "changeOrderStatus",
        "Move an order one step on",
    )
    .description(
        "processing, shipped, delivered: one step at a time. confirmed and cancelled have \
             routes of their own (422 use_confirm, use_cancel).",
    )
    .roles(&[Role::Admin, Role::System])
    .order_path()
    .body::<StatusRequest>()
    .json::<OrderView>(200, "The order after the step.")
    .order_links(200)
    .error(409, &["invalid_status_transition"])
    .error(422, &["use_confirm", "use_cancel"])
    .add();
    api.post(
        "/api/v1/orders/{id}/confirm",
        "confirmOrder",
        "Confirm a pending order",
    )
    .description("Records payment and reservation; writes order.confirmed.")
    .roles(&[Role::Admin, Role::System])
    .order_path()
    .body::<ConfirmRequest>()
    .json::<OrderView>(200, "The confirmed order.")
    .order_links(200)
    .error(409, &["invalid_status_transition", "order_not_pending"])
    .add();
    api.post(
        "/api/v1/orders/{id}/cancel",
        "cancelOrder",
        "Cancel an order",
    )
    .description(
        "Restocks its items; writes order.cancelled. A customer cancels only its own pending \
             orders (409 order_not_pending).",
    )
    .roles(&[Role::Customer, Role::Admin, Role::System])
    .order_path()
    .body::<CancelRequest>()
    .json::<OrderView>(200, "The cancelled order.")
    .order_links(200)
    .error(409, &["invalid_status_transition", "order_not_pending"])
    .add();
}

/// The body of `POST /orders/{id}/status`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StatusRequest {
    /// The next status.
    status: Status,
    /// Why.
    reason: Text<500>,
    /// Whether a system made the step without a person.
    #[serde(default)]
    automatic: bool,
}

async fn change_status(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    OrderId(order_id): OrderId,
    AppJson(body): AppJson<StatusRequest>,
) -> Result<Json<OrderView>, ApiError> {
    caller.require(&[Role::Admin, Role::System])?;
    // These two steps carry facts of their own (payment, restocking) and events of their own.
    let dedicated = match body.status {
        Status::Confirmed => Some(("use_confirm", "confirm", "records payment and stock")),
        Status::Cancelled => Some(("use_cancel", "cancel", "restocks its items")),
        _ => None,
    };
    if let Some((code, path, why)) = dedicated {
        return Err(ApiError::Unprocessable {
            code,
            message: format!("use POST /api/v1/orders/{{id}}/{path}, which {why}"),
            details: json!({ "field": "status" }),
        });
    }
    let step = StatusStep {
        to: body.status,
        reason: body.reason.to_string(),
        automatic: body.automatic,
    };
    let ctx = meta.events(&caller);
    record_ok();
    let order = commands::change_status(&state.store, caller, ctx, order_id, step).await?;
    Ok(Json(OrderView::from(&order)))
}

/// The body of `POST /orders/{id}/confirm`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ConfirmRequest {
    /// Whether payment was received.
    payment_confirmed: bool,
    /// Whether the stock is reserved.
    inventory_reserved: bool,
    /// When the order is expected to be fulfilled.
    estimated_fulfillment_date: Option<DateTime<Utc>>,
    /// Why, when there is more to say.
    reason: Option<Text<500>>,
}

async fn confirm(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    OrderId(order_id): OrderId,
    AppJson(body): AppJson<ConfirmRequest>,
) -> Result<Json<OrderView>, ApiError> {
    caller.require(&[Role::Admin, Role::System])?;
    let confirmation = Confirmation {
        payment_confirmed: body.payment_confirmed,
        inventory_reserved: body.inventory_reserved,
        estimated_fulfillment_date: body.estimated_fulfillment_date,
        reason: body.reason.map(|r| r.to_string()),
    };
    let ctx = meta.events(&caller);
    record_ok();
    let order = commands::confirm(&state.store, caller, ctx, order_id, confirmation).await?;
    Ok(Json(OrderView::from(&order)))
}

/// The body of `POST /orders/{id}/cancel`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    /// Why.
    reason: Text<500>,
    /// Whether the customer is to be refunded (admin and system callers only; when omitted, a
    /// paid order is refunded).
    refund_required: Option<bool>,
}

async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    OrderId(order_id): OrderId,
    AppJson(body): AppJson<CancelRequest>,
) -> Result<Json<OrderView>, ApiError> {
    caller.require(&[Role::Customer, Role::Admin, Role::System])?;
    // A refund moves money: the back office or the payment service says so, not the customer
    // (without it, the service refunds what was paid).
    if body.refund_required.is_some() && !matches!(caller.role, Role::Admin | Role::System) {
        return Err(ApiError::Forbidden(
            "refund_required may be set only by an admin or a system caller; leave it out and a \
             paid order is refunded"
                .into(),
        ));
    }
    let cancellation = Cancellation {
        reason: body.reason.to_string(),
        refund_required: body.refund_required,
    };
    let ctx = meta.events(&caller);
    record_ok();
    let order = commands::cancel(&state.store, caller, ctx, order_id, cancellation).await?;
    Ok(Json(OrderView::from(&order)))
}
