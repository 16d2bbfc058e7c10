//! Chat origins of orders and links between orders and chat conversations.

use chrono::{DateTime, Utc};
use rusqlite::params;
use uuid::Uuid;

use super::{StoreError, Tx, timestamp};
use crate::domain::chat::ChatOrigin;

/// Records that `order_id` was created from a chat.
pub fn insert_origin(tx: &Tx<'_>, order_id: Uuid, chat: &ChatOrigin) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO chat_orders (order_id, chat_id, template_used, ai_confidence, delivery_speed,
            communication_method, requires_confirmation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            order_id.to_string(),
            chat.chat_id.to_string(),
            chat.template_used,
            chat.ai_confidence,
            chat.customer_preferences.delivery_speed,
            chat.customer_preferences.communication_method,
            chat.requires_confirmation,
        ],
    )?;
    Ok(())
}

/// A link between an order and a chat conversation.
#[derive(Debug, Clone)]
pub struct ChatLink {
    /// The link's id.
    pub link_id: Uuid,
    /// The order.
    pub order_id: Uuid,
    /// The conversation.
    pub chat_id: Uuid,
    /// support, inquiry or complaint.
    pub link_type: String,
    /// What the conversation is about.
    pub context: String,
    /// Who linked them.
    pub linked_by: Uuid,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// How many chat links `order_id` has.
pub fn links_of(tx: &Tx<'_>, order_id: Uuid) -> Result<usize, StoreError> {
    let count: i64 = tx.query_row(
        "SELECT count(*) FROM order_chat_links WHERE order_id = ?1",
        params![order_id.to_string()],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(count).unwrap_or(usize::MAX))
}

/// Records a chat link.
pub fn insert_link(tx: &Tx<'_>, link: &ChatLink) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO order_chat_links (link_id, order_id, chat_id, link_type, context, linked_by,
            created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            link.link_id.to_string(),
            link.order_id.to_string(),
            link.chat_id.to_string(),
            link.link_type,
            link.context,
            link.linked_by.to_string(),
            timestamp(link.created_at),
        ],
    )?;
    Ok(())
}
