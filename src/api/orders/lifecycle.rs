//! Moving an order through its life cycle: status steps, confirmation, cancellation.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Days, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{OrderView, audit, change_order};
use crate::api::AppState;
use crate::api::context::RequestMeta;
use crate::api::json::AppJson;
use crate::api::path::OrderId;
use crate::auth::{Caller, Role};
use crate::domain::events::{
    AuditChange, OrderCancelled, OrderConfirmed, OrderStatisticsUpdated, OrderStatusChanged,
    RestockItem, StatusChange,
};
use crate::domain::{Events, Order, Status, Text, Topic};
use crate::error::ApiError;
use crate::store::products;

/// `POST /orders/{id}/status`, `/confirm` and `/cancel`.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/orders/{id}/status", post(change_status))
        .route("/orders/{id}/confirm", post(confirm))
        .route("/orders/{id}/cancel", post(cancel))
}

/// The body of `POST /orders/{id}/status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusRequest {
    status: Status,
    reason: Text<500>,
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
    let ctx = meta.events(&caller);
    let order = change_order(&state, caller, ctx, order_id, move |_, order, events| {
        let from = order.status;
        order.status = from.advance_to(body.status)?;
        let reason = body.reason.as_str();
        events.push(status_changed(events, order, from, reason, body.automatic));
        push_status_audit(events, order, from, reason, "status_update");
        Ok(())
    })
    .await?;
    Ok(Json(OrderView::from(&order)))
}

/// `order.status_changed` for a step from `from` to the order's status, by the request's user.
fn status_changed(
    events: &Events<'_>,
    order: &Order,
    from: Status,
    reason: &str,
    automatic: bool,
) -> OrderStatusChanged {
    OrderStatusChanged {
        order_id: order.order_id,
        order_number: order.order_number.clone(),
        customer_id: order.customer_id,
        status_change: StatusChange {
            from,
            to: order.status,
        },
        reason: reason.to_owned(),
        changed_by: events.context().actor.user_id,
        automatic,
    }
}

/// The `order.audit` of a status step.
fn push_status_audit(
    events: &mut Events<'_>,
    order: &Order,
    from: Status,
    reason: &str,
    action: &str,
) {
    let event = audit(
        order,
        events.context(),
        action,
        AuditChange {
            field: "status".into(),
            old_value: from.as_str().into(),
            new_value: order.status.as_str().into(),
        },
        reason,
    );
    events.push(event);
}

/// The body of `POST /orders/{id}/confirm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmRequest {
    payment_confirmed: bool,
    inventory_reserved: bool,
    estimated_fulfillment_date: Option<DateTime<Utc>>,
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
    let ctx = meta.events(&caller);
    let now = ctx.now;
    if body
        .estimated_fulfillment_date
        .is_some_and(|date| date < now)
    {
        return Err(ApiError::invalid_field(
            "estimated_fulfillment_date",
            "estimated_fulfillment_date is in the past",
        ));
    }
    // Without a date, fulfilment is expected from the start of the next UTC day.
    let fulfillment = body.estimated_fulfillment_date.unwrap_or_else(|| {
        (now.date_naive() + Days::new(1))
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
    });
    let reason = match (body.reason, body.payment_confirmed) {
        (Some(reason), _) => reason.to_string(),
        (None, true) => "Payment confirmed".to_owned(),
        (None, false) => "Confirmed before payment".to_owned(),
    };
    let automatic = caller.role == Role::System;
    let order = change_order(&state, caller, ctx, order_id, move |_, order, events| {
        let from = order.status;
        order.status = from.advance_to(Status::Confirmed)?;
        order.payment_confirmed = body.payment_confirmed;
        events.push(status_changed(events, order, from, &reason, automatic));
        events.push(OrderConfirmed {
            order_id: order.order_id,
            order_number: order.order_number.clone(),
            customer_id: order.customer_id,
            total_amount: order.total_amount(),
            confirmed_by: caller.user_id,
            payment_confirmed: body.payment_confirmed,
            inventory_reserved: body.inventory_reserved,
            estimated_fulfillment_date: fulfillment,
        });
        push_status_audit(events, order, from, &reason, "confirm");
        events.push(OrderStatisticsUpdated::after(Topic::Confirmed, order, now));
        Ok(())
    })
    .await?;
    Ok(Json(OrderView::from(&order)))
}

/// The body of `POST /orders/{id}/cancel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    reason: Text<500>,
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
    let ctx = meta.events(&caller);
    let now = ctx.now;
    let automatic = caller.role == Role::System;
    let order = change_order(&state, caller, ctx, order_id, move |tx, order, events| {
        let from = order.status;
        if caller.role == Role::Customer && from != Status::Pending {
            return Err(ApiError::Conflict {
                code: "order_not_pending",
                message: format!(
                    "a customer can cancel only a pending order; it is `{}`",
                    from.as_str()
                ),
                details: json!({ "current_status": from }),
            });
        }
        order.status = from.cancel()?;
        for item in &order.items {
            products::adjust(tx, item.product_id, i64::from(item.quantity.get()), now)?;
        }
        let reason = body.reason.to_string();
        // Money was taken only if payment was confirmed; the caller may say otherwise.
        let refund_required = body.refund_required.unwrap_or(order.payment_confirmed);
        events.push(status_changed(events, order, from, &reason, automatic));
        events.push(OrderCancelled {
            order_id: order.order_id,
            order_number: order.order_number.clone(),
            customer_id: order.customer_id,
            cancellation_reason: reason.clone(),
            cancelled_by: caller.user_id,
            automatic,
            refund_required,
            items_to_restock: order
                .items
                .iter()
                .map(|i| RestockItem {
                    product_id: i.product_id,
                    quantity: i.quantity.get(),
                })
                .collect(),
        });
        push_status_audit(events, order, from, &reason, "cancel");
        events.push(OrderStatisticsUpdated::after(Topic::Cancelled, order, now));
        Ok(())
    })
    .await?;
    Ok(Json(OrderView::from(&order)))
}
