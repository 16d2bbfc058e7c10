//! An order as the API answers it, here and in the chat routes.

use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::api::idempotency::{respond, stored_json};
use crate::domain::events::ItemLine;
use crate::domain::{Address, Money, Order, Status};
use crate::store::idempotency::{self, StoredResponse};

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
