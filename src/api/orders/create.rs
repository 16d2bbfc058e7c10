//! Placing an order: the stock check, the order number, and the creation events.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::stock_override::{apply_overrides, never_negative};
use super::{OrderView, audit};
use crate::api::AppState;
use crate::api::context::RequestMeta;
use crate::api::json::AppJson;
use crate::auth::{Caller, Role};
use crate::domain::events::{AuditChange, OrderCreated, OverriddenItem, OverrideDetails};
use crate::domain::order::check_items;
use crate::domain::{Address, Currency, Events, Item, Order, SourceChannel, Status, Text};
use crate::error::ApiError;
use crate::store::chat::ChatOrigin;
use crate::store::{Tx, orders, outbox, products};

/// `POST /orders`.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/orders", post(create))
}

/// The body that creates an order, here and in `/chat/orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// Whose order; a customer's own id when omitted by a customer.
    pub customer_id: Option<Uuid>,
    /// The lines.
    pub items: Vec<Item>,
    /// Where it goes.
    pub shipping_address: Address,
    /// THB unless given.
    #[serde(default)]
    pub currency: Currency,
    /// web unless given.
    pub source_channel: Option<SourceChannel>,
    /// Admins only: create the order even where stock is short.
    pub stock_override: Option<OverrideRequest>,
}

/// An admin's approval to sell beyond available stock.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    reason: Text<500>,
    expected_restock_date: DateTime<Utc>,
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
    place(&state, caller, &meta, body, None).await
}

/// Creates an order (and, from a chat, its chat origin): checks stock, takes it, and writes
/// `order.created`, then `order.chat_created` for chat orders, `order.audit`, and
/// `order.stock_override_applied` when an admin's override let short items through.
pub async fn place(
    state: &AppState,
    caller: Caller,
    meta: &RequestMeta,
    body: NewOrder,
    chat: Option<ChatOrigin>,
) -> Result<Response, ApiError> {
    let customer_id = match (caller.role, body.customer_id) {
        (Role::Customer, Some(id)) if id != caller.user_id => {
            return Err(ApiError::Forbidden(
                "a customer places orders only for itself".into(),
            ));
        }
        (Role::Customer, _) => caller.user_id,
        (_, Some(id)) => id,
        (_, None) => {
            return Err(ApiError::invalid_field(
                "customer_id",
                "customer_id is required when ordering for a customer",
            ));
        }
    };
    if body.stock_override.is_some() && caller.role != Role::Admin {
        return Err(ApiError::Forbidden(
            "only an admin may override stock".into(),
        ));
    }
    let source_channel = match (&chat, body.source_channel) {
        (Some(_), _) => SourceChannel::Chat,
        (None, Some(SourceChannel::Admin)) if caller.role == Role::Customer => {
            return Err(ApiError::Forbidden("the admin channel is for staff".into()));
        }
        (None, channel) => channel.unwrap_or_default(),
    };
    check_items(&body.items)?;
    let ctx = meta.events(&caller);
    let order = Order {
        order_id: Uuid::now_v7(),
        order_number: String::new(),
        customer_id,
        status: Status::Pending,
        currency: body.currency,
        items: body.items,
        shipping_address: body.shipping_address,
        source_channel,
        created_by: caller.user_id,
        payment_confirmed: false,
        created_at: ctx.now,
        updated_at: ctx.now,
    };
    let stock_override = body.stock_override;
    let order = state
        .store
        .write(move |tx| {
            let mut order = order;
            let overridden = take_stock(tx, &order, stock_override.is_some(), ctx.now)?;
            order.order_number = orders::next_order_number(tx, ctx.now)?;
            orders::insert(tx, &order)?;
            let mut events = Events::new(&ctx);
            events.push(OrderCreated::of(&order));
            if let Some(chat) = &chat {
                crate::store::chat::insert_origin(tx, order.order_id, chat)?;
                events.push(crate::api::chat::created_event(&order, chat));
            }
            let how = match &chat {
                Some(c) => format!("Order created from chat {}", c.chat_id),
                None => format!("Order created via {}", order.source_channel.as_str()),
            };
            events.push(audit(
                &order,
                &ctx,
                "create",
                AuditChange {
                    field: "status".into(),
                    old_value: String::new(),
                    new_value: order.status.as_str().into(),
                },
                &how,
            ));
            if let (Some(approval), false) = (stock_override, overridden.is_empty()) {
                let items = overridden
                    .into_iter()
                    .map(|s| {
                        let available = never_negative(s.available);
                        OverriddenItem {
                            product_id: s.product_id,
                            requested_quantity: s.requested,
                            available_quantity: available,
                            override_quantity: s.requested - available,
                        }
                    })
                    .collect();
                let details = OverrideDetails {
                    reason: approval.reason.to_string(),
                    expected_restock_date: approval.expected_restock_date,
                    approved_by: caller.user_id,
                };
                apply_overrides(tx, &order, &mut events, details, items, ctx.now)?;
            }
            outbox::enqueue(tx, &events.into_vec())?;
            Ok::<_, ApiError>(order)
        })
        .await?;
    Ok(created(&order))
}

/// Answers 201 with the order and where to find it.
fn created(order: &Order) -> Response {
    (
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("/api/v1/orders/{}", order.order_id),
        )],
        Json(OrderView::from(order)),
    )
        .into_response()
}

/// A short item: what was asked and what the stock view had.
pub(super) struct Short {
    pub(super) product_id: Uuid,
    pub(super) requested: u32,
    pub(super) available: i64,
}

/// Takes the order's quantities from the stock view. Short items fail the command with 409
/// unless `may_override`, in which case they are returned for the override event.
fn take_stock(
    tx: &Tx<'_>,
    order: &Order,
    may_override: bool,
    now: DateTime<Utc>,
) -> Result<Vec<Short>, ApiError> {
    let stock = products::available(tx, order.product_ids())?;
    let short: Vec<Short> = order
        .items
        .iter()
        .filter_map(|item| {
            let available = *stock.get(&item.product_id)?;
            (i64::from(item.quantity.get()) > available).then_some(Short {
                product_id: item.product_id,
                requested: item.quantity.get(),
                available,
            })
        })
        .collect();
    if !short.is_empty() && !may_override {
        return Err(insufficient_stock(&short));
    }
    for item in &order.items {
        products::adjust(tx, item.product_id, -i64::from(item.quantity.get()), now)?;
    }
    Ok(short)
}

pub(super) fn insufficient_stock(short: &[Short]) -> ApiError {
    let items: Vec<_> = short
        .iter()
        .map(|s| {
            json!({
                "product_id": s.product_id,
                "requested": s.requested,
                "available": s.available.max(0),
            })
        })
        .collect();
    ApiError::Conflict {
        code: "insufficient_stock",
        message: format!("{} item(s) ask for more than is available", items.len()),
        details: json!({ "items": items }),
    }
}
