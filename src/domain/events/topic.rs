//! The contract's ten topics, and the topics the example subscribers emit: their names, which are
//! also the envelopes' `event_type`.

/// The contract's topics, one per event, and the example subscribers' own topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `order.created`
    Created,
    /// `order.updated`
    Updated,
    /// `order.status_changed`
    StatusChanged,
    /// `order.confirmed`
    Confirmed,
    /// `order.cancelled`
    Cancelled,
    /// `order.stock_override_applied`
    StockOverrideApplied,
    /// `order.chat_created`
    ChatCreated,
    /// `order.chat_linked`
    ChatLinked,
    /// `order.audit`
    Audit,
    /// `order.statistics_updated`
    StatisticsUpdated,
    /// `inventory.shortage`: emitted by the inventory example, not by the service.
    InventoryShortage,
}

impl Topic {
    /// Every topic, in the contract's order.
    pub const ALL: [Topic; 10] = [
        Topic::Created,
        Topic::Updated,
        Topic::StatusChanged,
        Topic::Confirmed,
        Topic::Cancelled,
        Topic::StockOverrideApplied,
        Topic::ChatCreated,
        Topic::ChatLinked,
        Topic::Audit,
        Topic::StatisticsUpdated,
    ];

    /// The topics the example subscribers emit (`nats/inventory-topics.json`): never published
    /// by the service, so not in [`Topic::ALL`].
    pub const SUBSCRIBER_OWNED: [Topic; 1] = [Topic::InventoryShortage];

    /// The topic's name, which is also the envelope's `event_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Created => "order.created",
            Topic::Updated => "order.updated",
            Topic::StatusChanged => "order.status_changed",
            Topic::Confirmed => "order.confirmed",
            Topic::Cancelled => "order.cancelled",
            Topic::StockOverrideApplied => "order.stock_override_applied",
            Topic::ChatCreated => "order.chat_created",
            Topic::ChatLinked => "order.chat_linked",
            Topic::Audit => "order.audit",
            Topic::StatisticsUpdated => "order.statistics_updated",
            Topic::InventoryShortage => "inventory.shortage",
        }
    }

    /// The topic with this name.
    pub fn parse(name: &str) -> Option<Topic> {
        Topic::ALL
            .into_iter()
            .chain(Topic::SUBSCRIBER_OWNED)
            .find(|t| t.as_str() == name)
    }
}
