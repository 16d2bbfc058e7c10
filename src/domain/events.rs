//! The ten order events of the contract, field for field, and the envelope around them.
//!
//! Each payload type names its topic and the key its subject carries (the order id, or the
//! customer id for `order.statistics_updated`). [`Events`] stamps a request's events with ids,
//! the envelope, the causation chain and the NATS headers, ready for the outbox.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::money::Money;
use super::order::{Address, Item, Order, Status};

/// The envelope's `version`.
pub const EVENT_VERSION: &str = "1.0";
/// The envelope's `source`.
pub const EVENT_SOURCE: &str = "order-service";

/// The contract's topics, one per event.
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
        }
    }

    /// The topic with this name.
    pub fn parse(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.as_str() == name)
    }

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
        }
    }
}

fn envelope_schema<P: Payload>() -> schemars::Schema {
    let mut schema = schemars::schema_for!(Envelope<P, P::Metadata>);
    schema.insert("title".into(), P::TOPIC.as_str().into());
    schema
}

/// The envelope every event travels in.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Envelope<T, M = Metadata> {
    /// Unique id of this event (UUIDv7); also the `Nats-Msg-Id`.
    pub event_id: Uuid,
    /// The topic.
    pub event_type: String,
    /// When the event happened (RFC 3339, UTC).
    pub timestamp: DateTime<Utc>,
    /// The schema version, `1.0`.
    pub version: String,
    /// Always `order-service`.
    pub source: String,
    /// The topic's payload.
    pub data: T,
    /// Correlation and causation.
    pub metadata: M,
}

/// Metadata of events caused by a user.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Links related events across services: the request's `X-Correlation-ID`.
    pub correlation_id: Uuid,
    /// The request id for a request's first event, that event's id for the others.
    pub causation_id: Uuid,
    /// The user who acted: the token's subject.
    pub user_id: Uuid,
}

/// Metadata of derived events that the contract gives no user (`order.statistics_updated`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemMetadata {
    /// Links related events across services.
    pub correlation_id: Uuid,
    /// The event that made the statistics stale.
    pub causation_id: Uuid,
}

/// What the envelope's metadata is built from.
#[derive(Debug, Clone, Copy)]
pub struct MetadataParts {
    /// See [`Metadata::correlation_id`].
    pub correlation_id: Uuid,
    /// See [`Metadata::causation_id`].
    pub causation_id: Uuid,
    /// See [`Metadata::user_id`].
    pub user_id: Uuid,
}

impl From<MetadataParts> for Metadata {
    fn from(p: MetadataParts) -> Metadata {
        Metadata {
            correlation_id: p.correlation_id,
            causation_id: p.causation_id,
            user_id: p.user_id,
        }
    }
}

impl From<MetadataParts> for SystemMetadata {
    fn from(p: MetadataParts) -> SystemMetadata {
        SystemMetadata {
            correlation_id: p.correlation_id,
            causation_id: p.causation_id,
        }
    }
}

/// An event payload: which topic it belongs to and which key its subject carries.
pub trait Payload: Serialize + JsonSchema {
    /// The topic.
    const TOPIC: Topic;
    /// The envelope's metadata type.
    type Metadata: From<MetadataParts> + Serialize + JsonSchema;
    /// The subject key: the order id, or the customer id for statistics.
    fn key(&self) -> Uuid;
}

macro_rules! order_keyed {
    ($($ty:ident => $topic:ident),* $(,)?) => {$(
        impl Payload for $ty {
            const TOPIC: Topic = Topic::$topic;
            type Metadata = Metadata;
            fn key(&self) -> Uuid {
                self.order_id
            }
        }
    )*};
}

order_keyed! {
    OrderCreated => Created,
    OrderUpdated => Updated,
    OrderStatusChanged => StatusChanged,
    OrderConfirmed => Confirmed,
    OrderCancelled => Cancelled,
    OrderStockOverrideApplied => StockOverrideApplied,
    ChatOrderCreated => ChatCreated,
    OrderLinkedToChat => ChatLinked,
    OrderAuditEvent => Audit,
}

impl Payload for OrderStatisticsUpdated {
    const TOPIC: Topic = Topic::StatisticsUpdated;
    type Metadata = SystemMetadata;
    fn key(&self) -> Uuid {
        self.customer_id
    }
}

/// One order line as events carry it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemLine {
    /// The product.
    pub product_id: Uuid,
    /// How many.
    pub quantity: u32,
    /// Price of one.
    pub unit_price: Money,
    /// `quantity × unit_price`.
    pub total_price: Money,
}

impl From<&Item> for ItemLine {
    fn from(item: &Item) -> ItemLine {
        ItemLine {
            product_id: item.product_id,
            quantity: item.quantity.get(),
            unit_price: item.unit_price,
            total_price: item.total_price(),
        }
    }
}

/// `order.created`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub order_number: String,
    pub customer_id: Uuid,
    pub total_amount: Money,
    pub currency: String,
    pub status: Status,
    pub items: Vec<ItemLine>,
    pub shipping_address: Address,
    pub created_by: Uuid,
    /// web, mobile, chat or admin.
    pub source_channel: String,
}

impl OrderCreated {
    /// The event of a freshly stored order.
    pub fn of(order: &Order) -> OrderCreated {
        OrderCreated {
            order_id: order.order_id,
            order_number: order.order_number.clone(),
            customer_id: order.customer_id,
            total_amount: order.total_amount(),
            currency: order.currency.as_str().to_owned(),
            status: order.status,
            items: order.items.iter().map(ItemLine::from).collect(),
            shipping_address: order.shipping_address.clone(),
            created_by: order.created_by,
            source_channel: order.source_channel.as_str().to_owned(),
        }
    }
}

/// `order.updated`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderUpdated {
    pub order_id: Uuid,
    pub order_number: String,
    pub customer_id: Uuid,
    pub changes: OrderChanges,
    pub updated_by: Uuid,
    pub reason: String,
}

/// What an update changed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderChanges {
    pub items: ItemChanges,
    /// The shipping address after the update (the previous one when it did not change).
    pub shipping_address: Address,
    pub total_amount: OldNew<Money>,
}

/// Items added, removed and modified by an update.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ItemChanges {
    pub added: Vec<ItemLine>,
    pub removed: Vec<ItemLine>,
    pub modified: Vec<ModifiedItem>,
}

/// An item whose quantity changed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModifiedItem {
    pub product_id: Uuid,
    /// The new quantity.
    pub quantity: u32,
    pub previous_quantity: u32,
    pub unit_price: Money,
    /// The new line total.
    pub total_price: Money,
}

/// A value before and after a change.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OldNew<T> {
    pub old: T,
    pub new: T,
}

/// `order.status_changed`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderStatusChanged {
    pub order_id: Uuid,
    pub order_number: String,
    pub customer_id: Uuid,
    pub status_change: StatusChange,
    pub reason: String,
    pub changed_by: Uuid,
    pub automatic: bool,
}

/// A status step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    pub from: Status,
    pub to: Status,
}

/// `order.confirmed`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderConfirmed {
    pub order_id: Uuid,
    pub order_number: String,
    pub customer_id: Uuid,
    pub total_amount: Money,
    pub confirmed_by: Uuid,
    pub payment_confirmed: bool,
    pub inventory_reserved: bool,
    pub estimated_fulfillment_date: DateTime<Utc>,
}

/// `order.cancelled`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub order_number: String,
    pub customer_id: Uuid,
    pub cancellation_reason: String,
    pub cancelled_by: Uuid,
    pub automatic: bool,
    pub refund_required: bool,
    pub items_to_restock: Vec<RestockItem>,
}

/// A product and quantity to put back on the shelf.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockItem {
    pub product_id: Uuid,
    pub quantity: u32,
}

/// `order.stock_override_applied`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderStockOverrideApplied {
    pub order_id: Uuid,
    pub order_number: String,
    pub customer_id: Uuid,
    pub override_details: OverrideDetails,
    pub items_overridden: Vec<OverriddenItem>,
}

/// Why and by whom stock was overridden.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideDetails {
    pub reason: String,
    pub expected_restock_date: DateTime<Utc>,
    pub approved_by: Uuid,
}

/// One product sold beyond its available stock.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverriddenItem {
    pub product_id: Uuid,
    pub requested_quantity: u32,
    pub available_quantity: u32,
    pub override_quantity: u32,
}

/// `order.chat_created`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatOrderCreated {
    pub order_id: Uuid,
    pub order_number: String,
    pub customer_id: Uuid,
    pub chat_id: Uuid,
    pub template_used: String,
    pub ai_confidence: f64,
    pub customer_preferences: CustomerPreferences,
    pub requires_confirmation: bool,
}

/// How the customer wants delivery and contact, as the chat captured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerPreferences {
    pub delivery_speed: String,
    pub communication_method: String,
}

/// `order.chat_linked`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLinkedToChat {
    pub order_id: Uuid,
    pub order_number: String,
    pub chat_id: Uuid,
    /// support, inquiry or complaint.
    pub link_type: String,
    pub linked_by: Uuid,
    pub context: String,
}

/// `order.audit`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderAuditEvent {
    pub order_id: Uuid,
    pub order_number: String,
    /// create, update, status_update, confirm, cancel, stock_override, chat_link.
    pub action: String,
    pub actor: Actor,
    pub changes: AuditChange,
    pub reason: String,
}

/// Who did something, from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    pub user_id: Uuid,
    /// admin, system, customer or ai.
    pub user_type: String,
    pub ip_address: String,
    pub user_agent: String,
}

/// One audited change, values as text.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditChange {
    pub field: String,
    /// The value before; empty when the thing did not exist before.
    pub old_value: String,
    pub new_value: String,
}

/// `order.statistics_updated`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderStatisticsUpdated {
    pub trigger_event: String,
    pub affected_metrics: Vec<String>,
    pub date_range: DateRange,
    pub customer_id: Uuid,
    pub product_ids: Vec<Uuid>,
}

/// A closed time range.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DateRange {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl OrderStatisticsUpdated {
    /// The metrics an order's confirmation or cancellation makes stale, for the UTC day of `at`.
    pub fn after(trigger: Topic, order: &Order, at: DateTime<Utc>) -> OrderStatisticsUpdated {
        let start = at
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc();
        let end = at
            .date_naive()
            .and_hms_opt(23, 59, 59)
            .expect("23:59:59 exists")
            .and_utc();
        OrderStatisticsUpdated {
            trigger_event: trigger.as_str().to_owned(),
            affected_metrics: vec![
                "daily_revenue".to_owned(),
                "customer_lifetime_value".to_owned(),
                "product_sales_count".to_owned(),
            ],
            date_range: DateRange { start, end },
            customer_id: order.customer_id,
            product_ids: order.product_ids(),
        }
    }
}

/// What a request knows about itself that its events carry.
#[derive(Debug, Clone)]
pub struct EventContext {
    /// From `X-Correlation-ID`, or generated.
    pub correlation_id: Uuid,
    /// This request's id: the causation of its first event.
    pub request_id: Uuid,
    /// Who acted and from where.
    pub actor: Actor,
    /// The W3C `traceparent` the request came with, passed on as a header.
    pub traceparent: Option<String>,
    /// When the request was taken: every event of the request carries it.
    pub now: DateTime<Utc>,
}

/// An event ready for the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// The event id, also `Nats-Msg-Id`.
    pub event_id: Uuid,
    /// The topic.
    pub topic: Topic,
    /// The subject key.
    pub key: Uuid,
    /// The JSON message.
    pub payload: String,
    /// The NATS headers, in order.
    pub headers: Vec<(String, String)>,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
}

/// A request's events, in the order they are written.
#[derive(Debug)]
pub struct Events<'a> {
    ctx: &'a EventContext,
    list: Vec<OutboxEvent>,
}

impl<'a> Events<'a> {
    /// No events yet.
    pub fn new(ctx: &'a EventContext) -> Events<'a> {
        Events {
            ctx,
            list: Vec::new(),
        }
    }

    /// Adds an event: a new id, the envelope, and the causation chain (the request for the first
    /// event, the first event for every later one).
    pub fn push<P: Payload>(&mut self, data: P) -> Uuid {
        let event_id = Uuid::now_v7();
        let causation_id = self
            .list
            .first()
            .map_or(self.ctx.request_id, |first| first.event_id);
        let key = data.key();
        let envelope = Envelope {
            event_id,
            event_type: P::TOPIC.as_str().to_owned(),
            timestamp: self.ctx.now,
            version: EVENT_VERSION.to_owned(),
            source: EVENT_SOURCE.to_owned(),
            data,
            metadata: P::Metadata::from(MetadataParts {
                correlation_id: self.ctx.correlation_id,
                causation_id,
                user_id: self.ctx.actor.user_id,
            }),
        };
        let payload = serde_json::to_string(&envelope).expect("event payloads always serialize");
        let mut headers = vec![
            ("Nats-Msg-Id".to_owned(), event_id.to_string()),
            ("Event-Type".to_owned(), P::TOPIC.as_str().to_owned()),
            ("Event-Version".to_owned(), EVENT_VERSION.to_owned()),
            ("Content-Type".to_owned(), "application/json".to_owned()),
            (
                "Correlation-Id".to_owned(),
                self.ctx.correlation_id.to_string(),
            ),
        ];
        if let Some(traceparent) = &self.ctx.traceparent {
            headers.push(("traceparent".to_owned(), traceparent.clone()));
        }
        self.list.push(OutboxEvent {
            event_id,
            topic: P::TOPIC,
            key,
            payload,
            headers,
            created_at: self.ctx.now,
        });
        event_id
    }

    /// The request's context the events are stamped with.
    pub fn context(&self) -> &EventContext {
        self.ctx
    }

    /// The events, in the order they were added.
    pub fn into_vec(self) -> Vec<OutboxEvent> {
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> EventContext {
        EventContext {
            correlation_id: Uuid::now_v7(),
            request_id: Uuid::now_v7(),
            actor: Actor {
                user_id: Uuid::now_v7(),
                user_type: "admin".into(),
                ip_address: "127.0.0.1".into(),
                user_agent: "test".into(),
            },
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            now: "2025-06-29T10:15:00Z".parse().unwrap(),
        }
    }

    fn link(order_id: Uuid) -> OrderLinkedToChat {
        OrderLinkedToChat {
            order_id,
            order_number: "ORD-2025-000001".into(),
            chat_id: Uuid::now_v7(),
            link_type: "support".into(),
            linked_by: Uuid::now_v7(),
            context: "delivery".into(),
        }
    }

    #[test]
    fn causation_runs_from_the_request_through_the_first_event() {
        let ctx = ctx();
        let mut events = Events::new(&ctx);
        let order_id = Uuid::now_v7();
        let first = events.push(link(order_id));
        events.push(link(order_id));
        let list = events.into_vec();
        let meta = |i: usize| -> serde_json::Value {
            serde_json::from_str::<serde_json::Value>(&list[i].payload).unwrap()["metadata"].clone()
        };
        assert_eq!(meta(0)["causation_id"], ctx.request_id.to_string());
        assert_eq!(meta(1)["causation_id"], first.to_string());
        assert_eq!(meta(1)["correlation_id"], ctx.correlation_id.to_string());
        assert_eq!(list[0].key, order_id);
        assert_eq!(
            list[0].headers[0],
            ("Nats-Msg-Id".into(), first.to_string())
        );
        assert!(list[0].headers.iter().any(|(k, _)| k == "traceparent"));
    }

    #[test]
    fn envelope_is_the_contracts() {
        let ctx = ctx();
        let mut events = Events::new(&ctx);
        events.push(link(Uuid::now_v7()));
        let json: serde_json::Value = serde_json::from_str(&events.into_vec()[0].payload).unwrap();
        assert_eq!(json["event_type"], "order.chat_linked");
        assert_eq!(json["version"], "1.0");
        assert_eq!(json["source"], "order-service");
        assert_eq!(json["timestamp"], "2025-06-29T10:15:00Z");
    }

    #[test]
    fn every_topic_has_a_schema_titled_with_its_name() {
        for topic in Topic::ALL {
            let schema = topic.schema();
            assert_eq!(schema.get("title").unwrap(), topic.as_str());
            assert_eq!(Topic::parse(topic.as_str()), Some(topic));
        }
    }
}
