//! An order as the API answers it, here and in the chat routes.

use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use uuid::Uuid;

use crate::api::idempotency::{respond, stored_json};
use crate::domain::events::ItemLine;
use crate::domain::{Address, Currency, Money, Order, SourceChannel, Status};
use crate::store::idempotency::{self, StoredResponse};

/// An order as the API answers it.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderView {
    /// Its id, a UUIDv7.
    order_id: Uuid,
    /// `ORD-<year>-<sequence>`.
    order_number: String,
    /// Whose order it is.
    customer_id: Uuid,
    /// Where it is in its life cycle.
    status: Status,
    /// The currency of every amount.
    currency: Currency,
    /// The sum of the lines' totals.
    total_amount: Money,
    /// The lines.
    items: Vec<ItemLine>,
    /// Where it goes.
    shipping_address: Address,
    /// Through which channel it came in.
    source_channel: SourceChannel,
    /// When it was placed.
    created_at: DateTime<Utc>,
    /// When it last changed.
    updated_at: DateTime<Utc>,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> OrderView {
        OrderView {
            order_id: o.order_id,
            order_number: o.order_number.clone(),
            customer_id: o.customer_id,
            status: o.status,
            currency: o.currency.clone(),
            total_amount: o.total_amount(),
            items: o.items.iter().map(ItemLine::from).collect(),
            shipping_address: o.shipping_address.clone(),
            source_channel: o.source_channel,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// 201 with the order and where to find it, as stored for an Idempotency-Key.
fn created_answer(order: &Order) -> StoredResponse {
    stored_json(
        StatusCode::CREATED,
        Some(format!("/api/v1/orders/{}", order.order_id)),
        &OrderView::from(order),
    )
}

/// Answers 201 with the order and where to find it.
pub fn created(order: &Order) -> Response {
    respond(created_answer(order))
}

/// Under an Idempotency-Key, the command's order is answered (and stored) as [`created`].
pub fn record_created() {
    idempotency::respond_with(|order: &Order| Some(created_answer(order)));
}

/// Under an Idempotency-Key, the command's order is answered (and stored) as 200 with the order.
pub fn record_ok() {
    idempotency::respond_with(|order: &Order| {
        Some(stored_json(StatusCode::OK, None, &OrderView::from(order)))
    });
}
