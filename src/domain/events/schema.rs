//! The JSON Schema of each topic's whole message, envelope included, as the `schema` command
//! prints it and the checked-in copies under `nats/schemas/` must match.

use super::envelope::{Envelope, Payload};
use super::payloads::{
    ChatOrderCreated, InventoryShortage, OrderAuditEvent, OrderCancelled, OrderConfirmed,
    OrderCreated, OrderLinkedToChat, OrderStatisticsUpdated, OrderStatusChanged,
    OrderStockOverrideApplied, OrderUpdated,
};
use super::topic::Topic;

impl Topic {
    /// The JSON Schema of this topic's whole message, envelope included.
    pub fn schema(self) -> schemars::Schema {
        match self {
            Topic::Created => envelope_schema::<OrderCreated>(),
            Topic::Updated => envelope_schema::<OrderUpdated>(),
            Topic::StatusChanged => envelope_schema::<OrderStatusChanged>(),
            Topic::Confirmed => envelope_schema::<OrderConfirmed>(),
            Topic::Cancelled => envelope_schema::<OrderCancelled>(),
            Topic::StockOverrideApplied => envelope_schema::<OrderStockOverrideApplied>(),
            Topic::ChatCreated => envelope_schema::<ChatOrderCreated>(),
            Topic::ChatLinked => envelope_schema::<OrderLinkedToChat>(),
            Topic::Audit => envelope_schema::<OrderAuditEvent>(),
            Topic::StatisticsUpdated => envelope_schema::<OrderStatisticsUpdated>(),
            Topic::InventoryShortage => envelope_schema::<InventoryShortage>(),
        }
    }
}

fn envelope_schema<P: Payload>() -> schemars::Schema {
    let mut schema = schemars::schema_for!(Envelope<P, P::Metadata>);
    schema.insert("title".into(), P::TOPIC.as_str().into());
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_has_a_schema_titled_with_its_name() {
        for topic in Topic::ALL.into_iter().chain(Topic::SUBSCRIBER_OWNED) {
            let schema = topic.schema();
            assert_eq!(schema.get("title").unwrap(), topic.as_str());
            assert_eq!(Topic::parse(topic.as_str()), Some(topic));
        }
    }
}
