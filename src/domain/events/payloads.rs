//! The ten payloads of the contract, field for field, and the parts they are made of; and the
//! payload the inventory example emits, `inventory.shortage`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::envelope::{Metadata, Payload, SystemMetadata};
use super::topic::Topic;
use crate::domain::money::Money;
use crate::domain::order::{Address, Item, Order, Status};

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
    InventoryShortage => InventoryShortage,
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

/// `inventory.shortage`: the inventory example could not reserve all of an order's line, because
/// the order was let through beyond stock (a stock override). One event per product short.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryShortage {
    pub order_id: Uuid,
    pub order_number: String,
    pub product_id: Uuid,
    /// What the order asked for.
    pub requested_quantity: u32,
    /// What the service's stock view had when the order was placed.
    pub available_quantity: u32,
    /// What the inventory has reserved for this line so far.
    pub reserved_quantity: u32,
    /// When the inventory found the shortage.
    pub detected_at: DateTime<Utc>,
}
