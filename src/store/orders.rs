//! Orders and their items in SQLite.

use chrono::{DateTime, Datelike, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::{StoreError, Tx, parse_timestamp, parse_uuid, timestamp};
use crate::domain::order::{Address, Currency, Item, Order, Quantity, SourceChannel, Status};
use crate::domain::{Money, Text};

/// Hands out the next order number of `at`'s year, `ORD-<year>-<6+ digit sequence>`.
pub fn next_order_number(tx: &Tx<'_>, at: DateTime<Utc>) -> Result<String, StoreError> {
    let year = at.year();
    let seq: i64 = tx
        .prepare_cached(
            "INSERT INTO order_number_counters (year, last) VALUES (?1, 1)
             ON CONFLICT (year) DO UPDATE SET last = last + 1
             RETURNING last",
        )?
        .query_row([year], |r| r.get(0))?;
    Ok(format!("ORD-{year}-{seq:06}"))
}

/// Stores a new order and its items.
pub fn insert(tx: &Tx<'_>, order: &Order) -> Result<(), StoreError> {
    let a = &order.shipping_address;
    tx.prepare_cached(
        "INSERT INTO orders (order_id, order_number, customer_id, status, currency, street, city,
            postal_code, country, source_channel, created_by, payment_confirmed, created_at,
            updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        order.order_id.to_string(),
        order.order_number,
        order.customer_id.to_string(),
        order.status.as_str(),
        order.currency.as_str(),
        a.street.as_str(),
        a.city.as_str(),
        a.postal_code.as_str(),
        a.country.as_str(),
        order.source_channel.as_str(),
        order.created_by.to_string(),
        order.payment_confirmed,
        timestamp(order.created_at),
        timestamp(order.updated_at),
    ])?;
    insert_items(tx, order.order_id, &order.items)
}

fn insert_items(tx: &Tx<'_>, order_id: Uuid, items: &[Item]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO order_items (order_id, position, product_id, quantity, unit_price_minor)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (position, item) in items.iter().enumerate() {
        stmt.execute(params![
            order_id.to_string(),
            position as i64,
            item.product_id.to_string(),
            item.quantity.get(),
            item.unit_price.minor(),
        ])?;
    }
    Ok(())
}

/// Writes back an order's mutable parts: status, items, address, payment flag, `updated_at`.
pub fn save(tx: &Tx<'_>, order: &Order) -> Result<(), StoreError> {
    let a = &order.shipping_address;
    tx.execute(
        "UPDATE orders SET status = ?2, street = ?3, city = ?4, postal_code = ?5, country = ?6,
            payment_confirmed = ?7, updated_at = ?8
         WHERE order_id = ?1",
        params![
            order.order_id.to_string(),
            order.status.as_str(),
            a.street.as_str(),
            a.city.as_str(),
            a.postal_code.as_str(),
            a.country.as_str(),
            order.payment_confirmed,
            timestamp(order.updated_at),
        ],
    )?;
    tx.execute(
        "DELETE FROM order_items WHERE order_id = ?1",
        [order.order_id.to_string()],
    )?;
    insert_items(tx, order.order_id, &order.items)
}

/// The order with this id, with its items.
pub fn find(conn: &Connection, order_id: Uuid) -> Result<Option<Order>, StoreError> {
    let row = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM orders WHERE order_id = ?1"),
            [order_id.to_string()],
            OrderRow::read,
        )
        .optional()?;
    row.map(|row| row.into_order(conn)).transpose()
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this customer's orders.
    pub customer_id: Option<Uuid>,
    /// Only orders in this status.
    pub status: Option<Status>,
    /// Only orders older than this one (the cursor: ids are time-ordered).
    pub before: Option<Uuid>,
    /// At most this many.
    pub limit: u32,
}

/// Orders matching `filter`, newest first.
pub fn list(conn: &Connection, filter: &Filter) -> Result<Vec<Order>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM orders
         WHERE (?1 IS NULL OR customer_id = ?1)
           AND (?2 IS NULL OR status = ?2)
           AND (?3 IS NULL OR order_id < ?3)
         ORDER BY order_id DESC
         LIMIT ?4"
    ))?;
    let rows = stmt
        .query_map(
            params![
                filter.customer_id.map(|c| c.to_string()),
                filter.status.map(Status::as_str),
                filter.before.map(|b| b.to_string()),
                filter.limit,
            ],
            OrderRow::read,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(|row| row.into_order(conn)).collect()
}

const COLUMNS: &str = "order_id, order_number, customer_id, status, currency, street, city, \
     postal_code, country, source_channel, created_by, payment_confirmed, created_at, updated_at";

/// An `orders` row as SQLite hands it over, before it is checked.
struct OrderRow {
    order_id: String,
    order_number: String,
    customer_id: String,
    status: String,
    currency: String,
    address: [String; 4],
    source_channel: String,
    created_by: String,
    payment_confirmed: bool,
    created_at: String,
    updated_at: String,
}

impl OrderRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<OrderRow> {
        Ok(OrderRow {
            order_id: r.get(0)?,
            order_number: r.get(1)?,
            customer_id: r.get(2)?,
            status: r.get(3)?,
            currency: r.get(4)?,
            address: [r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?],
            source_channel: r.get(9)?,
            created_by: r.get(10)?,
            payment_confirmed: r.get(11)?,
            created_at: r.get(12)?,
            updated_at: r.get(13)?,
        })
    }

    fn into_order(self, conn: &Connection) -> Result<Order, StoreError> {
        let corrupt = |column: &'static str, value: &str| StoreError::Corrupt {
            column,
            value: value.to_owned(),
        };
        let order_id = parse_uuid("orders.order_id", &self.order_id)?;
        let [street, city, postal_code, country] = self.address;
        Ok(Order {
            order_id,
            order_number: self.order_number,
            customer_id: parse_uuid("orders.customer_id", &self.customer_id)?,
            status: Status::parse(&self.status).ok_or_else(|| corrupt("status", &self.status))?,
            currency: Currency::new(&self.currency)
                .map_err(|_| corrupt("currency", &self.currency))?,
            shipping_address: Address {
                street: stored_text("orders.street", &street)?,
                city: stored_text("orders.city", &city)?,
                postal_code: stored_text("orders.postal_code", &postal_code)?,
                country: stored_text("orders.country", &country)?,
            },
            source_channel: SourceChannel::parse(&self.source_channel)
                .ok_or_else(|| corrupt("source_channel", &self.source_channel))?,
            created_by: parse_uuid("orders.created_by", &self.created_by)?,
            payment_confirmed: self.payment_confirmed,
            created_at: parse_timestamp("orders.created_at", &self.created_at)?,
            updated_at: parse_timestamp("orders.updated_at", &self.updated_at)?,
            items: items_of(conn, order_id)?,
        })
    }
}

fn stored_text<const MAX: usize>(
    column: &'static str,
    value: &str,
) -> Result<Text<MAX>, StoreError> {
    Text::new(value).map_err(|_| StoreError::Corrupt {
        column,
        value: value.to_owned(),
    })
}

fn items_of(conn: &Connection, order_id: Uuid) -> Result<Vec<Item>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT product_id, quantity, unit_price_minor FROM order_items
         WHERE order_id = ?1 ORDER BY position",
    )?;
    let rows = stmt
        .query_map([order_id.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(product_id, quantity, price)| {
            Ok(Item {
                product_id: parse_uuid("order_items.product_id", &product_id)?,
                quantity: Quantity::new(quantity).map_err(|_| StoreError::Corrupt {
                    column: "order_items.quantity",
                    value: quantity.to_string(),
                })?,
                unit_price: Money::from_minor(price).ok_or(StoreError::Corrupt {
                    column: "order_items.unit_price_minor",
                    value: price.to_string(),
                })?,
            })
        })
        .collect()
}
