//! `/orders`: create, read, list, update, and move orders through their life cycle.
//!
//! Every change runs as one command on the writer: it reads the order, lets the domain decide,
//! writes the order rows and the resulting events to the outbox, and commits them together.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Days, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::context::RequestMeta;
use super::json::AppJson;
use super::path::OrderId;
use crate::auth::{Caller, Role};
use crate::domain::events::{
    AuditChange, ItemLine, OldNew, OrderAuditEvent, OrderCancelled, OrderChanges, OrderConfirmed,
    OrderCreated, OrderStatisticsUpdated, OrderStatusChanged, OrderStockOverrideApplied,
    OrderUpdated, OverriddenItem, OverrideDetails, RestockItem, StatusChange,
};
use crate::domain::order::check_items;
use crate::domain::revision::{ItemRevision, revise_items};
use crate::domain::{
    Address, Currency, EventContext, Events, Item, Money, Order, Quantity, SourceChannel, Status,
    Text, Topic,
};
use crate::error::ApiError;
use crate::store::chat::ChatOrigin;
use crate::store::products::StockOverride;
use crate::store::{Tx, orders, outbox, products};

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", post(create).get(list))
        .route("/orders/{id}", get(read).patch(update))
        .route("/orders/{id}/status", post(change_status))
        .route("/orders/{id}/confirm", post(confirm))
        .route("/orders/{id}/cancel", post(cancel))
        .route("/orders/{id}/stock-override", post(override_stock))
}

/// An order as the API answers it.
#[derive(Debug, Serialize)]
pub struct OrderView {
    order_id: Uuid,
    order_number: String,
    customer_id: Uuid,
    status: Status,
    currency: String,
    total_amount: Money,
    items: Vec<ItemLine>,
    shipping_address: Address,
    source_channel: &'static str,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> OrderView {
        OrderView {
            order_id: o.order_id,
            order_number: o.order_number.clone(),
            customer_id: o.customer_id,
            status: o.status,
            currency: o.currency.as_str().to_owned(),
            total_amount: o.total_amount(),
            items: o.items.iter().map(ItemLine::from).collect(),
            shipping_address: o.shipping_address.clone(),
            source_channel: o.source_channel.as_str(),
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
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
                events.push(super::chat::created_event(&order, chat));
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
                events.push(record_overrides(tx, &order, &ctx, &approval, overridden)?);
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
struct Short {
    product_id: Uuid,
    requested: u32,
    available: i64,
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

fn insufficient_stock(short: &[Short]) -> ApiError {
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

fn record_overrides(
    tx: &Tx<'_>,
    order: &Order,
    ctx: &EventContext,
    approval: &OverrideRequest,
    short: Vec<Short>,
) -> Result<OrderStockOverrideApplied, ApiError> {
    let mut items = Vec::with_capacity(short.len());
    for s in short {
        let available = u32::try_from(s.available.max(0)).unwrap_or(0);
        let o = StockOverride {
            order_id: order.order_id,
            product_id: s.product_id,
            requested_quantity: s.requested,
            available_quantity: available,
            override_quantity: s.requested - available,
            reason: approval.reason.to_string(),
            expected_restock_date: approval.expected_restock_date,
            approved_by: ctx.actor.user_id,
        };
        products::record_override(tx, &o, ctx.now)?;
        items.push(OverriddenItem {
            product_id: o.product_id,
            requested_quantity: o.requested_quantity,
            available_quantity: o.available_quantity,
            override_quantity: o.override_quantity,
        });
    }
    Ok(OrderStockOverrideApplied {
        order_id: order.order_id,
        order_number: order.order_number.clone(),
        customer_id: order.customer_id,
        override_details: OverrideDetails {
            reason: approval.reason.to_string(),
            expected_restock_date: approval.expected_restock_date,
            approved_by: ctx.actor.user_id,
        },
        items_overridden: items,
    })
}

/// An `order.audit` event for `order`.
pub fn audit(
    order: &Order,
    ctx: &EventContext,
    action: &str,
    changes: AuditChange,
    reason: &str,
) -> OrderAuditEvent {
    OrderAuditEvent {
        order_id: order.order_id,
        order_number: order.order_number.clone(),
        action: action.to_owned(),
        actor: ctx.actor.clone(),
        changes,
        reason: reason.to_owned(),
    }
}

/// The order, if the caller may see it; otherwise the same 404 as for a missing order.
pub fn visible(order: Option<Order>, order_id: Uuid, caller: &Caller) -> Result<Order, ApiError> {
    match order {
        Some(o) if caller.role != Role::Customer || o.customer_id == caller.user_id => Ok(o),
        _ => Err(ApiError::order_not_found(order_id)),
    }
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    OrderId(order_id): OrderId,
) -> Result<Json<OrderView>, ApiError> {
    caller.require(&[Role::Customer, Role::Admin, Role::System])?;
    let order = state
        .store
        .read(move |conn| Ok::<_, ApiError>(orders::find(conn, order_id)?))
        .await?;
    let order = visible(order, order_id, &caller)?;
    Ok(Json(OrderView::from(&order)))
}

/// The query of `GET /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    customer_id: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

#[derive(Debug, Serialize)]
struct OrderPage {
    orders: Vec<OrderView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<Uuid>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<OrderPage>, ApiError> {
    caller.require(&[Role::Customer, Role::Admin, Role::System])?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest {
        code: "invalid_query",
        message: e.body_text(),
    })?;
    let bad = |name: &str, why: String| ApiError::BadRequest {
        code: "invalid_query",
        message: format!("{name}: {why}"),
    };
    let uuid = |name: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| Uuid::parse_str(s).map_err(|_| bad(name, format!("`{s}` is not a UUID"))))
            .transpose()
    };
    let mut customer_id = uuid("customer_id", &q.customer_id)?;
    if caller.role == Role::Customer {
        match customer_id {
            Some(id) if id != caller.user_id => {
                return Err(ApiError::Forbidden(
                    "a customer lists only its own orders".into(),
                ));
            }
            _ => customer_id = Some(caller.user_id),
        }
    }
    let status = q
        .status
        .as_deref()
        .map(|s| Status::parse(s).ok_or_else(|| bad("status", format!("unknown status `{s}`"))))
        .transpose()?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| bad("limit", format!("must be 1 to {MAX_PAGE}, got `{s}`")))?,
    };
    let filter = orders::Filter {
        customer_id,
        status,
        before: uuid("cursor", &q.cursor)?,
        limit: limit + 1,
    };
    let mut found = state
        .store
        .read(move |conn| Ok::<_, ApiError>(orders::list(conn, &filter)?))
        .await?;
    let next_cursor = if found.len() > limit as usize {
        found.truncate(limit as usize);
        found.last().map(|o| o.order_id)
    } else {
        None
    };
    Ok(Json(OrderPage {
        orders: found.iter().map(OrderView::from).collect(),
        next_cursor,
    }))
}

/// The body of `PATCH /orders/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderPatch {
    items: Option<ItemsPatch>,
    shipping_address: Option<Address>,
    reason: Option<Text<500>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemsPatch {
    #[serde(default)]
    add: Vec<Item>,
    #[serde(default)]
    remove: Vec<Uuid>,
    #[serde(default)]
    modify: Vec<QuantityChange>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantityChange {
    product_id: Uuid,
    quantity: Quantity,
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    OrderId(order_id): OrderId,
    AppJson(patch): AppJson<OrderPatch>,
) -> Result<Json<OrderView>, ApiError> {
    caller.require(&[Role::Customer, Role::Admin])?;
    let revision = patch
        .items
        .map_or_else(ItemRevision::default, |p| ItemRevision {
            add: p.add,
            remove: p.remove,
            modify: p
                .modify
                .into_iter()
                .map(|m| (m.product_id, m.quantity))
                .collect(),
        });
    let address = patch.shipping_address;
    if revision.is_empty() && address.is_none() {
        return Err(ApiError::Unprocessable {
            code: "nothing_to_change",
            message: "send items (add, remove, modify) and/or shipping_address".into(),
            details: serde_json::Value::Null,
        });
    }
    let reason = patch.reason.map(|r| r.to_string());
    let ctx = meta.events(&caller);
    let order = state
        .store
        .write(move |tx| {
            let mut order = visible(orders::find(tx, order_id)?, order_id, &caller)?;
            let revised = revise_items(&order, &revision)?;
            check_added_stock(tx, &order, &revised.stock_delta)?;
            for (product_id, delta) in &revised.stock_delta {
                products::adjust(tx, *product_id, -delta, ctx.now)?;
            }
            let old_total = order.total_amount();
            let old_address = order.shipping_address.clone();
            order.items = revised.items;
            if let Some(address) = address {
                order.shipping_address = address;
            }
            order.updated_at = ctx.now;
            orders::save(tx, &order)?;

            let changes = &revised.changes;
            let mut fields = Vec::new();
            let mut old = serde_json::Map::new();
            let mut new = serde_json::Map::new();
            if !revision.is_empty() {
                fields.push("items");
                old.insert("total_amount".into(), json!(old_total));
                new.insert("total_amount".into(), json!(order.total_amount()));
            }
            if order.shipping_address != old_address {
                fields.push("shipping_address");
                old.insert("shipping_address".into(), json!(old_address));
                new.insert("shipping_address".into(), json!(order.shipping_address));
            }
            let reason = reason.unwrap_or_else(|| {
                format!(
                    "{} item(s) added, {} removed, {} modified{}",
                    changes.added.len(),
                    changes.removed.len(),
                    changes.modified.len(),
                    if fields.contains(&"shipping_address") {
                        "; shipping address changed"
                    } else {
                        ""
                    }
                )
            });
            let mut events = Events::new(&ctx);
            events.push(OrderUpdated {
                order_id: order.order_id,
                order_number: order.order_number.clone(),
                customer_id: order.customer_id,
                changes: OrderChanges {
                    items: revised.changes,
                    shipping_address: order.shipping_address.clone(),
                    total_amount: OldNew {
                        old: old_total,
                        new: order.total_amount(),
                    },
                },
                updated_by: caller.user_id,
                reason: reason.clone(),
            });
            events.push(audit(
                &order,
                &ctx,
                "update",
                AuditChange {
                    field: fields.join(","),
                    old_value: serde_json::Value::Object(old).to_string(),
                    new_value: serde_json::Value::Object(new).to_string(),
                },
                &reason,
            ));
            outbox::enqueue(tx, &events.into_vec())?;
            Ok::<_, ApiError>(order)
        })
        .await?;
    Ok(Json(OrderView::from(&order)))
}

/// Fails with 409 when an update asks for more of a tracked product than the stock view has.
fn check_added_stock(
    tx: &Tx<'_>,
    order: &Order,
    delta: &HashMap<Uuid, i64>,
) -> Result<(), ApiError> {
    let wanted: Vec<Uuid> = delta
        .iter()
        .filter(|(_, d)| **d > 0)
        .map(|(id, _)| *id)
        .collect();
    let stock = products::available(tx, wanted.iter().copied())?;
    let short: Vec<Short> = wanted
        .iter()
        .filter_map(|id| {
            let available = *stock.get(id)?;
            let held = order.item(*id).map_or(0, |i| i64::from(i.quantity.get()));
            (delta[id] > available).then(|| Short {
                product_id: *id,
                requested: u32::try_from(held + delta[id]).unwrap_or(u32::MAX),
                available: available + held,
            })
        })
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(insufficient_stock(&short))
    }
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
    match body.status {
        Status::Confirmed => {
            return Err(ApiError::Unprocessable {
                code: "use_confirm",
                message: "confirm an order with POST /api/v1/orders/{id}/confirm, which records payment and stock".into(),
                details: json!({ "field": "status" }),
            });
        }
        Status::Cancelled => {
            return Err(ApiError::Unprocessable {
                code: "use_cancel",
                message:
                    "cancel an order with POST /api/v1/orders/{id}/cancel, which restocks its items"
                        .into(),
                details: json!({ "field": "status" }),
            });
        }
        _ => {}
    }
    let ctx = meta.events(&caller);
    let order = state
        .store
        .write(move |tx| {
            let mut order = visible(orders::find(tx, order_id)?, order_id, &caller)?;
            let from = order.status;
            order.status = from.advance_to(body.status)?;
            order.updated_at = ctx.now;
            orders::save(tx, &order)?;
            let mut events = Events::new(&ctx);
            push_status_events(
                &mut events,
                &order,
                from,
                body.reason.as_str(),
                body.automatic,
                "status_update",
            );
            outbox::enqueue(tx, &events.into_vec())?;
            Ok::<_, ApiError>(order)
        })
        .await?;
    Ok(Json(OrderView::from(&order)))
}

/// `order.status_changed` for a step from `from` to the order's status.
fn status_changed(
    order: &Order,
    from: Status,
    reason: &str,
    by: Uuid,
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
        changed_by: by,
        automatic,
    }
}

/// A plain status step's events: `order.status_changed` then `order.audit`.
fn push_status_events(
    events: &mut Events<'_>,
    order: &Order,
    from: Status,
    reason: &str,
    automatic: bool,
    action: &str,
) {
    let by = events.context().actor.user_id;
    events.push(status_changed(order, from, reason, by, automatic));
    push_status_audit(events, order, from, reason, action);
}

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
    if let Some(date) = body.estimated_fulfillment_date
        && date < ctx.now
    {
        return Err(ApiError::invalid_field(
            "estimated_fulfillment_date",
            "estimated_fulfillment_date is in the past",
        ));
    }
    // Without a date, fulfilment is expected from the start of the next UTC day.
    let fulfillment = body.estimated_fulfillment_date.unwrap_or_else(|| {
        (ctx.now.date_naive() + Days::new(1))
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
    });
    let reason = body.reason.map_or_else(
        || {
            if body.payment_confirmed {
                "Payment confirmed".to_owned()
            } else {
                "Confirmed before payment".to_owned()
            }
        },
        |r| r.to_string(),
    );
    let automatic = caller.role == Role::System;
    let order = state
        .store
        .write(move |tx| {
            let mut order = visible(orders::find(tx, order_id)?, order_id, &caller)?;
            let from = order.status;
            order.status = from.advance_to(Status::Confirmed)?;
            order.payment_confirmed = body.payment_confirmed;
            order.updated_at = ctx.now;
            orders::save(tx, &order)?;
            let mut events = Events::new(&ctx);
            events.push(status_changed(
                &order,
                from,
                &reason,
                caller.user_id,
                automatic,
            ));
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
            push_status_audit(&mut events, &order, from, &reason, "confirm");
            events.push(OrderStatisticsUpdated::after(
                Topic::Confirmed,
                &order,
                ctx.now,
            ));
            outbox::enqueue(tx, &events.into_vec())?;
            Ok::<_, ApiError>(order)
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
    let automatic = caller.role == Role::System;
    let order = state
        .store
        .write(move |tx| {
            let mut order = visible(orders::find(tx, order_id)?, order_id, &caller)?;
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
            order.updated_at = ctx.now;
            orders::save(tx, &order)?;
            for item in &order.items {
                products::adjust(tx, item.product_id, i64::from(item.quantity.get()), ctx.now)?;
            }
            let reason = body.reason.to_string();
            // Money was taken only if payment was confirmed; the caller may say otherwise.
            let refund_required = body.refund_required.unwrap_or(order.payment_confirmed);
            let mut events = Events::new(&ctx);
            events.push(status_changed(
                &order,
                from,
                &reason,
                caller.user_id,
                automatic,
            ));
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
            push_status_audit(&mut events, &order, from, &reason, "cancel");
            events.push(OrderStatisticsUpdated::after(
                Topic::Cancelled,
                &order,
                ctx.now,
            ));
            outbox::enqueue(tx, &events.into_vec())?;
            Ok::<_, ApiError>(order)
        })
        .await?;
    Ok(Json(OrderView::from(&order)))
}

/// The body of `POST /orders/{id}/stock-override`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    reason: Text<500>,
    expected_restock_date: DateTime<Utc>,
    items: Vec<OverrideItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideItem {
    product_id: Uuid,
    override_quantity: Quantity,
}

async fn override_stock(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    OrderId(order_id): OrderId,
    AppJson(body): AppJson<OverrideBody>,
) -> Result<Json<OrderView>, ApiError> {
    caller.require(&[Role::Admin])?;
    if body.items.is_empty() {
        return Err(ApiError::invalid_field("items", "items must not be empty"));
    }
    let ctx = meta.events(&caller);
    let order = state
        .store
        .write(move |tx| {
            let order = visible(orders::find(tx, order_id)?, order_id, &caller)?;
            if !matches!(order.status, Status::Pending | Status::Confirmed) {
                return Err(ApiError::Conflict {
                    code: "invalid_status",
                    message: format!(
                        "stock can be overridden only for pending or confirmed orders; it is `{}`",
                        order.status.as_str()
                    ),
                    details: json!({ "current_status": order.status }),
                });
            }
            let stock = products::available(tx, body.items.iter().map(|i| i.product_id))?;
            let mut short = Vec::new();
            for (n, wanted) in body.items.iter().enumerate() {
                let item = order
                    .item(wanted.product_id)
                    .ok_or(crate::domain::OrderError::UnknownProduct(wanted.product_id))?;
                if wanted.override_quantity > item.quantity {
                    return Err(ApiError::invalid_field(
                        &format!("items[{n}].override_quantity"),
                        format!(
                            "override_quantity {} exceeds the ordered quantity {}",
                            wanted.override_quantity.get(),
                            item.quantity.get()
                        ),
                    ));
                }
                short.push((
                    item,
                    stock.get(&item.product_id).copied(),
                    wanted.override_quantity,
                ));
            }
            let approval = OverrideDetails {
                reason: body.reason.to_string(),
                expected_restock_date: body.expected_restock_date,
                approved_by: caller.user_id,
            };
            let mut overridden = Vec::new();
            for (item, available, quantity) in short {
                let o = StockOverride {
                    order_id,
                    product_id: item.product_id,
                    requested_quantity: item.quantity.get(),
                    available_quantity: available
                        .map_or(0, |a| u32::try_from(a.max(0)).unwrap_or(u32::MAX)),
                    override_quantity: quantity.get(),
                    reason: approval.reason.clone(),
                    expected_restock_date: approval.expected_restock_date,
                    approved_by: caller.user_id,
                };
                products::record_override(tx, &o, ctx.now)?;
                overridden.push(OverriddenItem {
                    product_id: o.product_id,
                    requested_quantity: o.requested_quantity,
                    available_quantity: o.available_quantity,
                    override_quantity: o.override_quantity,
                });
            }
            let summary: Vec<String> = overridden
                .iter()
                .map(|o| format!("{}:{}", o.product_id, o.override_quantity))
                .collect();
            let mut events = Events::new(&ctx);
            events.push(OrderStockOverrideApplied {
                order_id: order.order_id,
                order_number: order.order_number.clone(),
                customer_id: order.customer_id,
                override_details: approval.clone(),
                items_overridden: overridden,
            });
            events.push(audit(
                &order,
                &ctx,
                "stock_override",
                AuditChange {
                    field: "stock_override".into(),
                    old_value: String::new(),
                    new_value: summary.join(","),
                },
                &approval.reason,
            ));
            outbox::enqueue(tx, &events.into_vec())?;
            Ok::<_, ApiError>(order)
        })
        .await?;
    Ok(Json(OrderView::from(&order)))
}
