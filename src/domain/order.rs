//! The order: its items, address, status machine and the rules every change must keep.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::money::Money;
use super::text::Text;

/// The most items one order may hold.
pub const MAX_ITEMS: usize = 100;

/// The largest quantity of one product in one order.
pub const MAX_QUANTITY: u32 = 100_000;

/// Where an order lives in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, waiting for payment and stock; the only status in which items may change.
    Pending,
    /// Paid and reserved, ready for fulfilment.
    Confirmed,
    /// Being picked and packed.
    Processing,
    /// Handed to the carrier.
    Shipped,
    /// Received by the customer; final.
    Delivered,
    /// Cancelled; final.
    Cancelled,
}

impl Status {
    /// Every status, in life-cycle order.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Confirmed,
        Status::Processing,
        Status::Shipped,
        Status::Delivered,
        Status::Cancelled,
    ];

    /// The name used in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Confirmed => "confirmed",
            Status::Processing => "processing",
            Status::Shipped => "shipped",
            Status::Delivered => "delivered",
            Status::Cancelled => "cancelled",
        }
    }

    /// The status with this name.
    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The one status a forward step leads to, if any.
    pub fn next(self) -> Option<Status> {
        match self {
            Status::Pending => Some(Status::Confirmed),
            Status::Confirmed => Some(Status::Processing),
            Status::Processing => Some(Status::Shipped),
            Status::Shipped => Some(Status::Delivered),
            Status::Delivered | Status::Cancelled => None,
        }
    }

    /// Checks a forward step `self → to`.
    pub fn advance_to(self, to: Status) -> Result<Status, OrderError> {
        if self.next() == Some(to) {
            Ok(to)
        } else {
            Err(OrderError::InvalidTransition { from: self, to })
        }
    }

    /// Checks that an order in this status may be cancelled.
    pub fn cancel(self) -> Result<Status, OrderError> {
        match self {
            Status::Pending | Status::Confirmed | Status::Processing => Ok(Status::Cancelled),
            _ => Err(OrderError::InvalidTransition {
                from: self,
                to: Status::Cancelled,
            }),
        }
    }
}

/// Through which channel an order came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum SourceChannel {
    /// The web shop.
    #[default]
    Web,
    /// The mobile app.
    Mobile,
    /// The chat assistant.
    Chat,
    /// Entered by staff.
    Admin,
}

impl SourceChannel {
    /// The name used in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceChannel::Web => "web",
            SourceChannel::Mobile => "mobile",
            SourceChannel::Chat => "chat",
            SourceChannel::Admin => "admin",
        }
    }

    /// The channel with this name.
    pub fn parse(name: &str) -> Option<SourceChannel> {
        [
            SourceChannel::Web,
            SourceChannel::Mobile,
            SourceChannel::Chat,
            SourceChannel::Admin,
        ]
        .into_iter()
        .find(|c| c.as_str() == name)
    }
}

/// A quantity of one product: 1 to [`MAX_QUANTITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Quantity(#[schemars(range(min = 1, max = 100_000))] u32);

impl Quantity {
    /// A quantity, or why it is not one.
    pub fn new(value: i64) -> Result<Quantity, String> {
        match u32::try_from(value) {
            Ok(q) if (1..=MAX_QUANTITY).contains(&q) => Ok(Quantity(q)),
            _ if value < 1 => Err(format!("quantity must be at least 1, got {value}")),
            _ => Err(format!(
                "quantity must be at most {MAX_QUANTITY}, got {value}"
            )),
        }
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Quantity, D::Error> {
        Quantity::new(whole_number(d)?).map_err(serde::de::Error::custom)
    }
}

/// Reads any JSON number with an integer value: JSON Schema's `integer`, which the API's
/// document promises, counts `2.0` as one. Values beyond `i64` saturate, so that range checks
/// refuse them as too large.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(WholeNumber)
}

struct WholeNumber;

impl serde::de::Visitor<'_> for WholeNumber {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
        Ok(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(E::invalid_type(serde::de::Unexpected::Float(v), &self));
        }
        Ok(v as i64)
    }
}

/// A three-letter ISO 4217 currency code such as `THB`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Currency(#[schemars(regex(pattern = r"^[A-Z]{3}$"))] String);

impl Currency {
    /// The code, or why it is not one.
    pub fn new(code: &str) -> Result<Currency, String> {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(code.to_owned()))
        } else {
            Err(format!(
                "currency must be a three-letter upper-case ISO 4217 code, got `{code}`"
            ))
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Currency {
    fn default() -> Currency {
        Currency("THB".to_owned())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Currency, D::Error> {
        let code = String::deserialize(d)?;
        Currency::new(&code).map_err(serde::de::Error::custom)
    }
}

/// A shipping address; every part is required and non-blank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Street and house number.
    pub street: Text<200>,
    /// City.
    pub city: Text<100>,
    /// Postal code.
    pub postal_code: Text<20>,
    /// Country.
    pub country: Text<100>,
}

/// One line of an order: a product, how many, at what unit price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The product.
    pub product_id: Uuid,
    /// How many.
    pub quantity: Quantity,
    /// Price of one.
    pub unit_price: Money,
}

impl Item {
    /// `quantity × unit_price`.
    pub fn total_price(&self) -> Money {
        // Both factors are bounded so that this cannot leave the range; see `Money`.
        self.unit_price
            .times(self.quantity.get())
            .unwrap_or(Money::ZERO)
    }
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The order's id (UUIDv7).
    pub order_id: Uuid,
    /// The human-facing number, `ORD-<year>-<sequence>`.
    pub order_number: String,
    /// Whose order it is.
    pub customer_id: Uuid,
    /// Where it is in its life cycle.
    pub status: Status,
    /// The currency of every amount in it.
    pub currency: Currency,
    /// Its lines, at least one, product ids unique.
    pub items: Vec<Item>,
    /// Where it goes.
    pub shipping_address: Address,
    /// How it came in.
    pub source_channel: SourceChannel,
    /// Who created it.
    pub created_by: Uuid,
    /// Whether payment was confirmed when it was confirmed.
    pub payment_confirmed: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl Order {
    /// The sum of the item totals.
    pub fn total_amount(&self) -> Money {
        total_of(&self.items).unwrap_or(Money::ZERO)
    }

    /// The item for a product, if the order has it.
    pub fn item(&self, product_id: Uuid) -> Option<&Item> {
        self.items.iter().find(|i| i.product_id == product_id)
    }

    /// The product ids of the items, in item order.
    pub fn product_ids(&self) -> Vec<Uuid> {
        self.items.iter().map(|i| i.product_id).collect()
    }
}

/// The sum of the item totals, `None` if it leaves the accepted range.
pub fn total_of(items: &[Item]) -> Option<Money> {
    items
        .iter()
        .try_fold(Money::ZERO, |sum, item| sum.plus(item.total_price()))
}

/// Checks what every order's items must be: 1 to [`MAX_ITEMS`], each product once, a total in range.
pub fn check_items(items: &[Item]) -> Result<Money, OrderError> {
    if items.is_empty() {
        return Err(OrderError::NoItems);
    }
    if items.len() > MAX_ITEMS {
        return Err(OrderError::TooManyItems(items.len()));
    }
    let mut seen = HashSet::new();
    for item in items {
        if !seen.insert(item.product_id) {
            return Err(OrderError::DuplicateProduct(item.product_id));
        }
    }
    total_of(items).ok_or(OrderError::TotalTooLarge)
}

/// A rule an order change broke.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OrderError {
    /// An order needs at least one item.
    #[error("an order needs at least one item")]
    NoItems,
    /// More items than [`MAX_ITEMS`].
    #[error("an order holds at most {MAX_ITEMS} items, got {0}")]
    TooManyItems(usize),
    /// The same product twice.
    #[error("product {0} appears more than once; change its quantity instead")]
    DuplicateProduct(Uuid),
    /// The total is past the accepted range.
    #[error("the order total is too large")]
    TotalTooLarge,
    /// The status machine does not allow this step.
    #[error("an order in status `{}` cannot move to `{}`", from.as_str(), to.as_str())]
    InvalidTransition {
        /// The order's current status.
        from: Status,
        /// The status asked for.
        to: Status,
    },
    /// Items and address change only while pending.
    #[error("an order can be changed only while pending; it is `{}`", .0.as_str())]
    NotPending(Status),
    /// A change names a product the order does not have.
    #[error("the order has no item for product {0}")]
    UnknownProduct(Uuid),
    /// An added product is already in the order.
    #[error("product {0} is already in the order; modify its quantity instead")]
    ProductAlreadyInOrder(Uuid),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(q: u32, price: &str) -> Item {
        Item {
            product_id: Uuid::now_v7(),
            quantity: Quantity::new(q.into()).unwrap(),
            unit_price: Money::parse(price).unwrap(),
        }
    }

    #[test]
    fn forward_steps_follow_the_life_cycle() {
        assert_eq!(
            Status::Pending.advance_to(Status::Confirmed),
            Ok(Status::Confirmed)
        );
        assert_eq!(
            Status::Shipped.advance_to(Status::Delivered),
            Ok(Status::Delivered)
        );
        assert!(Status::Pending.advance_to(Status::Shipped).is_err());
        assert!(Status::Delivered.advance_to(Status::Pending).is_err());
        assert!(Status::Processing.cancel().is_ok());
        assert!(Status::Shipped.cancel().is_err());
        assert!(Status::Cancelled.cancel().is_err());
    }

    #[test]
    fn items_must_be_few_unique_and_present() {
        assert_eq!(check_items(&[]), Err(OrderError::NoItems));
        let one = item(2, "100.00");
        assert_eq!(
            check_items(std::slice::from_ref(&one)).unwrap().minor(),
            20000
        );
        assert!(matches!(
            check_items(&[one.clone(), one]),
            Err(OrderError::DuplicateProduct(_))
        ));
        let many: Vec<Item> = (0..=MAX_ITEMS).map(|_| item(1, "1")).collect();
        assert_eq!(check_items(&many), Err(OrderError::TooManyItems(101)));
    }

    #[test]
    fn quantities_are_positive_and_bounded() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(-3).is_err());
        assert!(Quantity::new(i64::from(MAX_QUANTITY) + 1).is_err());
        assert_eq!(Quantity::new(5).unwrap().get(), 5);
    }

    #[test]
    fn a_quantity_is_any_json_number_with_an_integer_value() {
        let read = |json: &str| serde_json::from_str::<Quantity>(json).map(Quantity::get);
        assert_eq!(read("2").unwrap(), 2);
        assert_eq!(read("2.0").unwrap(), 2);
        assert!(read("2.5").is_err());
        assert!(read("0.0").is_err());
        assert!(read("1e300").is_err());
        assert!(read("\"2\"").is_err());
    }
}
