//! The chat side of orders: the event of an order placed from a chat, and links between orders
//! and chat conversations.

use uuid::Uuid;

use super::{CommandError, audit, change_order_with};
use crate::auth::Caller;
use crate::domain::chat::ChatOrigin;
use crate::domain::events::{AuditChange, ChatOrderCreated, OrderLinkedToChat};
use crate::domain::{EventContext, Events, Order};
use crate::store::chat::{ChatLink, insert_link, links_of};
use crate::store::{Store, Tx};

/// `order.chat_created` for an order placed from `chat`.
pub(super) fn created_event(order: &Order, chat: &ChatOrigin) -> ChatOrderCreated {
    ChatOrderCreated {
        order_id: order.order_id,
        order_number: order.order_number.clone(),
        customer_id: order.customer_id,
        chat_id: chat.chat_id,
        template_used: chat.template_used.clone(),
        ai_confidence: chat.ai_confidence,
        customer_preferences: chat.customer_preferences.clone(),
        requires_confirmation: chat.requires_confirmation,
    }
}

/// The most chat links one order takes: each writes two events, and links are the caller's to
/// make, so without a bound one token could grow an order's history without end.
pub const MAX_CHAT_LINKS_PER_ORDER: usize = 100;

/// A link to make between an order and a chat conversation.
#[derive(Debug, Clone)]
pub struct ChatLinkRequest {
    /// The conversation.
    pub chat_id: Uuid,
    /// support, inquiry or complaint.
    pub link_type: &'static str,
    /// What the conversation is about.
    pub context: String,
}

/// Links `order_id` to a chat: records the link and writes `order.chat_linked` and its
/// `order.audit`. Answers the stored link.
pub async fn link_chat(
    store: &Store,
    caller: Caller,
    ctx: EventContext,
    order_id: Uuid,
    request: ChatLinkRequest,
) -> Result<ChatLink, CommandError> {
    let link = ChatLink {
        link_id: Uuid::now_v7(),
        order_id,
        chat_id: request.chat_id,
        link_type: request.link_type.to_owned(),
        context: request.context,
        linked_by: caller.user_id,
        created_at: ctx.now,
    };
    let stored = link.clone();
    let change = move |tx: &Tx<'_>, order: &mut Order, events: &mut Events<'_>| {
        if links_of(tx, order_id)? >= MAX_CHAT_LINKS_PER_ORDER {
            return Err(CommandError::TooManyChatLinks {
                limit: MAX_CHAT_LINKS_PER_ORDER,
            });
        }
        insert_link(tx, &link)?;
        events.push(OrderLinkedToChat {
            order_id,
            order_number: order.order_number.clone(),
            chat_id: link.chat_id,
            link_type: link.link_type.clone(),
            linked_by: link.linked_by,
            context: link.context.clone(),
        });
        let event = audit(
            order,
            events.context(),
            "chat_link",
            AuditChange {
                field: "chat_id".into(),
                old_value: String::new(),
                new_value: link.chat_id.to_string(),
            },
            &link.context,
        );
        events.push(event);
        Ok(())
    };
    change_order_with(store, caller, ctx, order_id, change, move |_| stored).await
}
