//! `/chat/orders` and `/orders/{id}/chat-links`: orders from the chat assistant, and links
//! between orders and chat conversations.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::context::RequestMeta;
use super::idempotency::stored_json;
use super::json::AppJson;
use super::order_view::OrderView;
use super::order_view::{created, record_created};
use super::path::OrderId;
use super::spec::Api;
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

/// The routes' operations in the OpenAPI document.
pub fn describe(api: &mut Api) {
    api.post(
        "/api/v1/chat/orders",
        "createChatOrder",
        "Place an order from a chat",
    )
    .description(
        "As POST /api/v1/orders, plus the chat's facts; writes order.chat_created too. \
             source_channel is always chat. The assistant's lines must carry the catalogue's \
             prices, as a customer's.",
    )
    .roles(&[Role::Ai, Role::Admin])
    .body::<ChatOrderBody>()
    .created::<OrderView>("The order.")
    .order_links(201)
    .error(409, &["insufficient_stock"])
    .error(422, super::orders::ITEM_CODES)
    .error(422, super::orders::PRICE_CODES)
    .add();
    api.post(
        "/api/v1/orders/{id}/chat-links",
        "linkOrderToChat",
        "Link an order to a chat conversation",
    )
    .description("Writes order.chat_linked. A customer links only its own orders.")
    .roles(&[Role::Ai, Role::Admin, Role::Customer])
    .order_path()
    .body::<LinkBody>()
    .json::<LinkView>(201, "The link.")
    .error(409, &["too_many_chat_links"])
    .add();
}

/// The body of `POST /chat/orders`: the chat's facts plus the create body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ChatOrderBody {
    /// The conversation.
    chat_id: Uuid,
    /// The assistant's template that produced the order.
    template_used: Text<100>,
    /// How sure the assistant was, 0 to 1.
    #[schemars(range(min = 0.0, max = 1.0))]
    ai_confidence: f64,
    /// What the customer asked for.
    customer_preferences: Preferences,
    /// Whether a person must confirm the order.
    requires_confirmation: bool,
    /// Whose order; required unless the caller is the customer.
    customer_id: Option<Uuid>,
    /// The lines: 1 to 100, each product once.
    #[schemars(length(min = 1, max = crate::domain::order::MAX_ITEMS))]
    items: Vec<Item>,
    /// Where it goes.
    shipping_address: Address,
    /// THB unless given.
    #[serde(default)]
    currency: Currency,
    /// `chat` when given.
    source_channel: Option<SourceChannel>,
    /// Admins only: create the order even where stock is short.
    stock_override: Option<OverrideRequest>,
}

/// How the customer wants delivery and contact.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Preferences {
    /// E.g. `express`.
    delivery_speed: Text<50>,
    /// E.g. `line`.
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
    let order = commands::place(
        &state.store,
        caller,
        ctx,
        order,
        Some(chat),
        state.catalogue_prices,
    )
    .await?;
    Ok(created(&order))
}

/// The body of `POST /orders/{id}/chat-links`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    /// The conversation.
    chat_id: Uuid,
    /// Why they are linked.
    link_type: LinkType,
    /// What the conversation is about.
    context: Text<1000>,
}

/// Why an order and a conversation are linked.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
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

/// A link between an order and a conversation.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LinkView {
    /// Its id.
    link_id: Uuid,
    /// The order.
    order_id: Uuid,
    /// The conversation.
    chat_id: Uuid,
    /// Why they are linked.
    link_type: LinkType,
    /// What the conversation is about.
    context: String,
    /// Who linked them.
    linked_by: Uuid,
    /// When.
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
