//! The local stock view: how many of a product new orders may take.
//!
//! Inventory (or an admin) sets `available` with `PUT /products/{id}/stock`; accepted orders take
//! their quantities from it and cancellations give them back, so back-to-back orders cannot both
//! take the last unit before inventory's next update. Products without a row are not tracked.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use uuid::Uuid;

use super::{StoreError, Tx, timestamp};

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
