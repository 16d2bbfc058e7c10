//! `/chat/orders` and `/orders/{id}/chat-links`: orders from the chat assistant, and links
//! between orders and chat conversations.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::context::RequestMeta;
use super::idempotency::stored_json;
use super::json::AppJson;
use super::order_view::{created, record_created};
use super::path::OrderId;
use crate::auth::{Caller, Role};
use crate::commands::{self, ChatLinkRequest, NewOrder, OverrideRequest};
use crate::domain::chat::ChatOrigin;
use crate::domain::events::CustomerPreferences;
use crate::domain::{Address, Currency, Item, SourceChannel, Text};
use crate::error::ApiError;
use crate::store::chat::ChatLink;
use crate::store::idempotency;

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/chat/orders", post(create))
        .route("/orders/{id}/chat-links", post(link))
}

/// The body of `POST /chat/orders`: the chat's facts plus the create body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatOrderBody {
    chat_id: Uuid,
    template_used: Text<100>,
    ai_confidence: f64,
    customer_preferences: Preferences,
    requires_confirmation: bool,
    customer_id: Option<Uuid>,
    items: Vec<Item>,
    shipping_address: Address,
    #[serde(default)]
    currency: Currency,
    source_channel: Option<SourceChannel>,
    stock_override: Option<OverrideRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Preferences {
    delivery_speed: Text<50>,
    communication_method: Text<50>,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    AppJson(body): AppJson<ChatOrderBody>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Ai, Role::Admin])?;
    if !(0.0..=1.0).contains(&body.ai_confidence) {
        return Err(ApiError::invalid_field(
            "ai_confidence",
            format!(
                "ai_confidence must be between 0 and 1, got {}",
                body.ai_confidence
            ),
        ));
    }
    if matches!(body.source_channel, Some(c) if c != SourceChannel::Chat) {
        return Err(ApiError::invalid_field(
            "source_channel",
            "chat orders always have source_channel `chat`",
        ));
    }
    let chat = ChatOrigin {
        chat_id: body.chat_id,
        template_used: body.template_used.to_string(),
        ai_confidence: body.ai_confidence,
        customer_preferences: CustomerPreferences {
            delivery_speed: body.customer_preferences.delivery_speed.to_string(),
            communication_method: body.customer_preferences.communication_method.to_string(),
        },
        requires_confirmation: body.requires_confirmation,
    };
    let order = NewOrder {
        customer_id: body.customer_id,
        items: body.items,
        shipping_address: body.shipping_address,
        currency: body.currency,
        source_channel: Some(SourceChannel::Chat),
        stock_override: body.stock_override,
    };
    let ctx = meta.events(&caller);
    record_created();
    let order = commands::place(&state.store, caller, ctx, order, Some(chat)).await?;
    Ok(created(&order))
}

/// The body of `POST /orders/{id}/chat-links`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    chat_id: Uuid,
    link_type: LinkType,
    context: Text<1000>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum LinkType {
    Support,
    Inquiry,
    Complaint,
}

impl LinkType {
    fn as_str(self) -> &'static str {
        match self {
            LinkType::Support => "support",
            LinkType::Inquiry => "inquiry",
            LinkType::Complaint => "complaint",
        }
    }
}

#[derive(Debug, Serialize)]
struct LinkView {
    link_id: Uuid,
    order_id: Uuid,
    chat_id: Uuid,
    link_type: LinkType,
    context: String,
    linked_by: Uuid,
    created_at: DateTime<Utc>,
}

async fn link(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    OrderId(order_id): OrderId,
    AppJson(body): AppJson<LinkBody>,
) -> Result<(StatusCode, Json<LinkView>), ApiError> {
    caller.require(&[Role::Ai, Role::Admin, Role::Customer])?;
    let ctx = meta.events(&caller);
    let request = ChatLinkRequest {
        chat_id: body.chat_id,
        link_type: body.link_type.as_str(),
        context: body.context.to_string(),
    };
    let link_type = body.link_type;
    idempotency::respond_with(move |stored: &ChatLink| {
        Some(stored_json(
            StatusCode::CREATED,
            None,
            &link_view(stored, link_type),
        ))
    });
    let stored = commands::link_chat(&state.store, caller, ctx, order_id, request).await?;
    Ok((StatusCode::CREATED, Json(link_view(&stored, link_type))))
}

fn link_view(stored: &ChatLink, link_type: LinkType) -> LinkView {
    LinkView {
        link_id: stored.link_id,
        order_id: stored.order_id,
        chat_id: stored.chat_id,
        link_type,
        context: stored.context.clone(),
        linked_by: stored.linked_by,
        created_at: stored.created_at,
    }
}
