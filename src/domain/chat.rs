//! Orders that come from the chat assistant: how such an order came about.

use uuid::Uuid;

use super::events::CustomerPreferences;

/// How a chat-created order came about.
#[derive(Debug, Clone)]
pub struct ChatOrigin {
    /// The conversation.
    pub chat_id: Uuid,
    /// The order template the assistant used.
    pub template_used: String,
    /// The assistant's confidence, 0 to 1.
    pub ai_confidence: f64,
    /// Delivery and contact preferences captured in the chat.
    pub customer_preferences: CustomerPreferences,
    /// Whether the customer still has to confirm.
    pub requires_confirmation: bool,
}
