//! The local stock view: how many of a product new orders may take; and the catalogue's prices.
//!
//! Inventory (or an admin) sets `available` with `PUT /products/{id}/stock`; accepted orders take
//! their quantities from it and cancellations give them back, so back-to-back orders cannot both
//! take the last unit before inventory's next update. Products without a row are not tracked.
//!
//! Admin and system callers set a product's price with `PUT /products/{id}/price`: what customers
//! and the chat assistant are charged (`commands::prices` checks their lines against it).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use uuid::Uuid;

use super::{StoreError, Tx, parse_timestamp, parse_uuid, timestamp};
use crate::domain::{Currency, Money};

/// Sets a product's available quantity, creating its row when missing.
pub fn set(
    tx: &Tx<'_>,
    product_id: Uuid,
    available: i64,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO product_stock (product_id, available, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (product_id) DO UPDATE SET available = ?2, updated_at = ?3",
        params![product_id.to_string(), available, timestamp(at)],
    )?;
    Ok(())
}

/// The available quantity of each tracked product among `product_ids`.
pub fn available(
    conn: &Connection,
    product_ids: impl IntoIterator<Item = Uuid>,
) -> Result<HashMap<Uuid, i64>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT available FROM product_stock WHERE product_id = ?1")?;
    let mut found = HashMap::new();
    for id in product_ids {
        let mut rows = stmt.query([id.to_string()])?;
        if let Some(row) = rows.next()? {
            found.insert(id, row.get(0)?);
        }
    }
    Ok(found)
}

/// Moves a tracked product's available quantity by `delta` (negative: taken by an order).
/// Untracked products stay untracked.
pub fn adjust(
    tx: &Tx<'_>,
    product_id: Uuid,
    delta: i64,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    if delta != 0 {
        tx.prepare_cached(
            "UPDATE product_stock SET available = available + ?2, updated_at = ?3
             WHERE product_id = ?1",
        )?
        .execute(params![product_id.to_string(), delta, timestamp(at)])?;
    }
    Ok(())
}

/// One product of an order sold beyond its available stock, as approved by an admin.
#[derive(Debug, Clone)]
pub struct StockOverride {
    /// The order.
    pub order_id: Uuid,
    /// The product.
    pub product_id: Uuid,
    /// What the order asks for.
    pub requested_quantity: u32,
    /// What the stock view had (never below zero).
    pub available_quantity: u32,
    /// How many are sold beyond it.
    pub override_quantity: u32,
    /// Why.
    pub reason: String,
    /// When stock is expected back.
    pub expected_restock_date: DateTime<Utc>,
    /// The admin who approved it.
    pub approved_by: Uuid,
}

/// Records an approved stock override.
pub fn record_override(
    tx: &Tx<'_>,
    o: &StockOverride,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO stock_overrides (override_id, order_id, product_id, requested_quantity,
            available_quantity, override_quantity, reason, expected_restock_date, approved_by,
            created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            Uuid::now_v7().to_string(),
            o.order_id.to_string(),
            o.product_id.to_string(),
            o.requested_quantity,
            o.available_quantity,
            o.override_quantity,
            o.reason,
            timestamp(o.expected_restock_date),
            o.approved_by.to_string(),
            timestamp(at),
        ],
    )?;
    Ok(())
}

/// A product's price in the catalogue: one per product, in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CataloguePrice {
    /// The product.
    pub product_id: Uuid,
    /// The price of one.
    pub unit_price: Money,
    /// Its currency.
    pub currency: Currency,
    /// When it was set.
    pub updated_at: DateTime<Utc>,
}

/// Sets a product's catalogue price, replacing the one it had (in any currency).
pub fn set_price(tx: &Tx<'_>, price: &CataloguePrice) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO product_prices (product_id, unit_price_minor, currency, updated_at)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (product_id) DO UPDATE
            SET unit_price_minor = ?2, currency = ?3, updated_at = ?4",
        params![
            price.product_id.to_string(),
            price.unit_price.minor(),
            price.currency.as_str(),
            timestamp(price.updated_at),
        ],
    )?;
    Ok(())
}

/// The catalogue price of each priced product among `product_ids`.
pub fn prices(
    conn: &Connection,
    product_ids: impl IntoIterator<Item = Uuid>,
) -> Result<HashMap<Uuid, CataloguePrice>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT product_id, unit_price_minor, currency, updated_at FROM product_prices
         WHERE product_id = ?1",
    )?;
    let mut found = HashMap::new();
    for id in product_ids {
        let mut rows = stmt.query([id.to_string()])?;
        if let Some(row) = rows.next()? {
            let product_id: String = row.get(0)?;
            let minor: i64 = row.get(1)?;
            let currency: String = row.get(2)?;
            let updated_at: String = row.get(3)?;
            let price = CataloguePrice {
                product_id: parse_uuid("product_prices.product_id", &product_id)?,
                unit_price: Money::from_minor(minor).ok_or(StoreError::Corrupt {
                    column: "product_prices.unit_price_minor",
                    value: minor.to_string(),
                })?,
                currency: Currency::new(&currency).map_err(|_| StoreError::Corrupt {
                    column: "product_prices.currency",
                    value: currency.clone(),
                })?,
                updated_at: parse_timestamp("product_prices.updated_at", &updated_at)?,
            };
            found.insert(id, price);
        }
    }
    Ok(found)
}
