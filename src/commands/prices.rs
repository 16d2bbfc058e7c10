//! Prices from the catalogue: who may set an order line's price, and the check of the lines of
//! those who may not.
//!
//! A customer or the chat assistant is charged the catalogue's price (`PUT /products/{id}/price`),
//! never one it chose: each of its lines must carry exactly the catalogue's unit price in the
//! order's currency, or the command is refused (`price_mismatch`, `unpriced_product`) and nothing
//! is stored. It is refused rather than silently repriced because the caller showed a price to a
//! person: charging another one without saying so is worse than asking the client to fetch the
//! price again. Admin and system callers set prices themselves (back-office imports, agreed
//! prices), so their lines are taken as sent.

use std::collections::HashMap;

use rusqlite::Connection;
use uuid::Uuid;

use super::CommandError;
use crate::auth::Role;
use crate::domain::{Currency, Item, Money};
use crate::store::products::{self, CataloguePrice};

/// Which products of a customer's or the assistant's order must have a catalogue price
/// (`CATALOGUE_PRICES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CataloguePrices {
    /// Every product: a line whose product has no catalogue price is refused.
    #[default]
    Required,
    /// Only products that have a catalogue price are checked; a line of another product keeps
    /// the price sent. For a catalogue still being filled in, and for tests and tools that order
    /// made-up products.
    WhenSet,
}

/// A line whose unit price is not its product's catalogue price in the order's currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrongPrice {
    /// Where it is in the request, e.g. `items[0].unit_price`.
    pub field: String,
    /// The product.
    pub product_id: Uuid,
    /// The unit price sent.
    pub unit_price: Money,
    /// The order's currency.
    pub currency: Currency,
    /// The catalogue's unit price.
    pub catalogue_unit_price: Money,
    /// The catalogue's currency.
    pub catalogue_currency: Currency,
}

/// A line whose product has no catalogue price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpricedItem {
    /// Where it is in the request, e.g. `items[0].product_id`.
    pub field: String,
    /// The product.
    pub product_id: Uuid,
}

/// Whether `role` may send its own prices. A match with no catch-all: a new role must decide.
pub(super) fn sets_prices(role: Role) -> bool {
    match role {
        Role::Admin | Role::System => true,
        Role::Customer | Role::Ai => false,
    }
}

/// Refuses `items` unless each is at its product's catalogue price in `currency`; `items` is the
/// request's field the lines came from (`items`, `items.add`), for the answer to name them.
/// Products without a price are refused too under [`CataloguePrices::Required`].
pub(super) fn check(
    conn: &Connection,
    mode: CataloguePrices,
    items: &[Item],
    currency: &Currency,
    field: &str,
) -> Result<(), CommandError> {
    let catalogue: HashMap<Uuid, CataloguePrice> =
        products::prices(conn, items.iter().map(|i| i.product_id))?;
    let mut unpriced = Vec::new();
    let mut wrong = Vec::new();
    for (n, item) in items.iter().enumerate() {
        match catalogue.get(&item.product_id) {
            None if mode == CataloguePrices::Required => unpriced.push(UnpricedItem {
                field: format!("{field}[{n}].product_id"),
                product_id: item.product_id,
            }),
            None => {}
            Some(price) if price.unit_price == item.unit_price && price.currency == *currency => {}
            Some(price) => wrong.push(WrongPrice {
                field: format!("{field}[{n}].unit_price"),
                product_id: item.product_id,
                unit_price: item.unit_price,
                currency: currency.clone(),
                catalogue_unit_price: price.unit_price,
                catalogue_currency: price.currency.clone(),
            }),
        }
    }
    // A product that is not for sale cannot be fixed by sending another price: say that first.
    if !unpriced.is_empty() {
        return Err(CommandError::UnpricedProducts(unpriced));
    }
    if !wrong.is_empty() {
        return Err(CommandError::WrongPrices(wrong));
    }
    Ok(())
}
