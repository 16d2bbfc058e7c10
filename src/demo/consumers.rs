//! The three example consumers of the spec's integration examples, each keeping its own state in
//! its own SQLite file, each idempotent through the group's processed-events table.
//!
//! - [`Inventory`] (`inventory-service`): reserves stock on `order.created`, commits the
//!   reservation on `order.confirmed`, releases it on `order.cancelled`. On
//!   `order.stock_override_applied` it keeps only what stock there was and emits
//!   `inventory.shortage` for the rest: a handler that publishes (see [`crate::consumer::emit`]),
//!   whose topic is its own, declared in `nats/inventory-topics.json` ([`inventory_topics`]).
//! - [`Notification`] (`notification-service`): one message per status change to confirmed,
//!   shipped or delivered, and a delay notice per `inventory.shortage`.
//! - [`Finance`] (`finance-service`): revenue on `order.confirmed`, a refund on `order.cancelled`.
//!
//! The topics are separate streams, so an order's `order.confirmed` can reach a group before
//! its `order.created` did; a handler that needs the earlier event answers
//! [`Failure::Transient`] and gets the later one again after the backoff.

use std::sync::Arc;

use chrono::Utc;
use rusqlite::{OptionalExtension, params};

use crate::bus::Topics;
use crate::consumer::tail::short;
use crate::consumer::{Delivery, Event, Failure, Handled, Handler, HandlerTx};
use crate::domain::Status;
use crate::domain::events::{Envelope, InventoryShortage, OrderStockOverrideApplied};
use crate::domain::money::Money;

/// What the inventory example emits, from `nats/inventory-topics.json`. `inventory.shortage`:
/// one partition (shortages are rare, and one partition keeps them all in the order they were
/// found, like `order.stock_override_applied` that causes them), replication 2 (survives the
/// loss of one node, like the order topics), retention 30 days (a shortage stays open until the
/// restock, which the override dates weeks ahead at times; the override's own topic keeps 30 days).
pub fn inventory_topics() -> Topics {
    Topics::from_json(include_str!("../../nats/inventory-topics.json"))
        .expect("nats/inventory-topics.json built into the binary is valid")
}

/// Where a consumer's lines go (the demo prints them).
pub type Printer = Arc<dyn Fn(&str, String) + Send + Sync>;

/// `inventory-service`.
pub struct Inventory {
    /// Prints an effect.
    pub print: Printer,
}

/// `notification-service`.
pub struct Notification {
    /// Prints an effect.
    pub print: Printer,
}

/// `finance-service`.
pub struct Finance {
    /// Prints an effect.
    pub print: Printer,
}

/// The group names.
pub const INVENTORY: &str = "inventory-service";
/// See [`Notification`].
pub const NOTIFICATION: &str = "notification-service";
/// See [`Finance`].
pub const FINANCE: &str = "finance-service";

impl Handler for Inventory {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS reservations (
                 order_id     TEXT    NOT NULL,
                 order_number TEXT    NOT NULL,
                 product_id   TEXT    NOT NULL,
                 quantity     INTEGER NOT NULL,
                 state        TEXT    NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
                 PRIMARY KEY (order_id, product_id)
             )",
        )
    }

    async fn handle(&self, event: &Event, _: &Delivery, tx: &mut HandlerTx<'_>) -> Handled {
        match event {
            Event::Created(e) => {
                let lines: Vec<String> = e
                    .data
                    .items
                    .iter()
                    .map(|item| format!("{} × {}", item.quantity, short(item.product_id)))
                    .collect();
                for item in &e.data.items {
                    tx.execute(
                        "INSERT INTO reservations VALUES (?1, ?2, ?3, ?4, 'reserved')",
                        params![
                            e.data.order_id.to_string(),
                            e.data.order_number,
                            item.product_id.to_string(),
                            item.quantity
                        ],
                    )?;
                }
                (self.print)(
                    INVENTORY,
                    format!("reserved {} for {}", lines.join(", "), e.data.order_number),
                );
            }
            Event::Confirmed(e) => {
                let n = self.step(tx, e.data.order_id, "reserved", "committed")?;
                (self.print)(
                    INVENTORY,
                    format!("committed {n} reservation(s) of {}", e.data.order_number),
                );
            }
            Event::StockOverrideApplied(e) => self.shortage(tx, e)?,
            Event::Cancelled(e) => {
                let n = tx.execute(
                    "UPDATE reservations SET state = 'released'
                     WHERE order_id = ?1 AND state IN ('reserved', 'committed')",
                    [e.data.order_id.to_string()],
                )?;
                if n == 0 {
                    return Err(self.not_yet(tx, e.data.order_id)?);
                }
                (self.print)(
                    INVENTORY,
                    format!("released {n} reservation(s) of {}", e.data.order_number),
                );
            }
            _ => {}
        }
        Ok(())
    }
}

impl Inventory {
    /// Keeps of each overridden line only what was in stock, and emits `inventory.shortage` for
    /// the rest, in the same transaction.
    fn shortage(
        &self,
        tx: &mut HandlerTx<'_>,
        e: &Envelope<OrderStockOverrideApplied>,
    ) -> Result<(), Failure> {
        let d = &e.data;
        for item in &d.items_overridden {
            let reserved = item.requested_quantity.min(item.available_quantity);
            let n = tx.execute(
                "UPDATE reservations SET quantity = ?3
                 WHERE order_id = ?1 AND product_id = ?2 AND state = 'reserved'",
                params![
                    d.order_id.to_string(),
                    item.product_id.to_string(),
                    reserved
                ],
            )?;
            if n == 0 {
                return Err(self.not_yet(tx, d.order_id)?);
            }
            tx.emit_event(
                &InventoryShortage {
                    order_id: d.order_id,
                    order_number: d.order_number.clone(),
                    product_id: item.product_id,
                    requested_quantity: item.requested_quantity,
                    available_quantity: item.available_quantity,
                    reserved_quantity: reserved,
                    detected_at: Utc::now(),
                },
                &[],
            )?;
            (self.print)(
                INVENTORY,
                format!(
                    "kept {reserved} of {} × {} reserved for {}, {} short: emits inventory.shortage",
                    item.requested_quantity,
                    short(item.product_id),
                    d.order_number,
                    item.requested_quantity - reserved
                ),
            );
        }
        Ok(())
    }

    fn step(
        &self,
        tx: &mut HandlerTx<'_>,
        order_id: uuid::Uuid,
        from: &str,
        to: &str,
    ) -> Result<usize, Failure> {
        let n = tx.execute(
            "UPDATE reservations SET state = ?3 WHERE order_id = ?1 AND state = ?2",
            params![order_id.to_string(), from, to],
        )?;
        if n == 0 {
            return Err(self.not_yet(tx, order_id)?);
        }
        Ok(n)
    }

    /// Nothing to change: the order's `order.created` has not been processed yet (transient),
    /// or its reservations are past this step (permanent).
    fn not_yet(&self, tx: &mut HandlerTx<'_>, order_id: uuid::Uuid) -> Result<Failure, Failure> {
        let known: Option<i64> = tx
            .conn()
            .query_row(
                "SELECT count(*) FROM reservations WHERE order_id = ?1 HAVING count(*) > 0",
                [order_id.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match known {
            None => Failure::transient(format!("no reservation of order {order_id} yet")),
            Some(_) => Failure::permanent(format!(
                "the reservations of order {order_id} cannot take this step"
            )),
        })
    }
}

impl Handler for Notification {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS notifications (
                 event_id    TEXT PRIMARY KEY,
                 order_id    TEXT NOT NULL,
                 customer_id TEXT NOT NULL,
                 kind        TEXT NOT NULL,
                 text        TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS customers (
                 order_id    TEXT PRIMARY KEY,
                 customer_id TEXT NOT NULL
             )",
        )
    }

    async fn handle(&self, event: &Event, _: &Delivery, tx: &mut HandlerTx<'_>) -> Handled {
        match event {
            // Who to tell: a shortage names the order, not its customer.
            Event::Created(e) => {
                tx.execute(
                    "INSERT INTO customers VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![e.data.order_id.to_string(), e.data.customer_id.to_string()],
                )?;
                Ok(())
            }
            Event::StatusChanged(e) => {
                let d = &e.data;
                let text = match d.status_change.to {
                    Status::Confirmed => format!("Your order {} is confirmed.", d.order_number),
                    Status::Shipped => format!("Your order {} is on its way.", d.order_number),
                    Status::Delivered => {
                        format!("Your order {} has been delivered.", d.order_number)
                    }
                    _ => return Ok(()),
                };
                self.send(
                    tx,
                    e.event_id,
                    d.order_id,
                    d.customer_id,
                    d.status_change.to.as_str(),
                    text,
                )
            }
            Event::InventoryShortage(e) => {
                let d = &e.data;
                let customer: Option<String> = tx
                    .conn()
                    .query_row(
                        "SELECT customer_id FROM customers WHERE order_id = ?1",
                        [d.order_id.to_string()],
                        |r| r.get(0),
                    )
                    .optional()?;
                let customer = customer
                    .and_then(|c| uuid::Uuid::parse_str(&c).ok())
                    .ok_or_else(|| {
                        Failure::transient(format!("no order.created of {} yet", d.order_number))
                    })?;
                let text = format!(
                    "Your order {} is delayed: {} of {} × {} await a restock.",
                    d.order_number,
                    d.requested_quantity - d.reserved_quantity,
                    d.requested_quantity,
                    short(d.product_id)
                );
                self.send(tx, e.event_id, d.order_id, customer, "delay", text)
            }
            _ => Ok(()),
        }
    }
}

impl Notification {
    /// Records a message to a customer and prints it.
    fn send(
        &self,
        tx: &mut HandlerTx<'_>,
        event_id: uuid::Uuid,
        order_id: uuid::Uuid,
        customer_id: uuid::Uuid,
        kind: &str,
        text: String,
    ) -> Handled {
        tx.execute(
            "INSERT INTO notifications VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                event_id.to_string(),
                order_id.to_string(),
                customer_id.to_string(),
                kind,
                text
            ],
        )?;
        (self.print)(
            NOTIFICATION,
            format!("to customer {}: \"{text}\"", short(customer_id)),
        );
        Ok(())
    }
}

impl Handler for Finance {
    type Prepared = ();

    fn migrate(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS revenue (
                 order_id     TEXT PRIMARY KEY,
                 order_number TEXT    NOT NULL,
                 customer_id  TEXT    NOT NULL,
                 amount_minor INTEGER NOT NULL,
                 currency     TEXT    NOT NULL
             );
             CREATE TABLE IF NOT EXISTS refunds (
                 order_id     TEXT PRIMARY KEY REFERENCES revenue (order_id),
                 amount_minor INTEGER NOT NULL
             )",
        )
    }

    async fn handle(&self, event: &Event, _: &Delivery, tx: &mut HandlerTx<'_>) -> Handled {
        match event {
            Event::Confirmed(e) => {
                let d = &e.data;
                tx.execute(
                    "INSERT INTO revenue VALUES (?1, ?2, ?3, ?4, 'THB')",
                    params![
                        d.order_id.to_string(),
                        d.order_number,
                        d.customer_id.to_string(),
                        d.total_amount.minor()
                    ],
                )?;
                (self.print)(
                    FINANCE,
                    format!("revenue +{} THB for {}", d.total_amount, d.order_number),
                );
            }
            Event::Cancelled(e) if e.data.refund_required => {
                let d = &e.data;
                let charged: Option<i64> = tx
                    .conn()
                    .query_row(
                        "SELECT amount_minor FROM revenue WHERE order_id = ?1",
                        [d.order_id.to_string()],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(amount) = charged else {
                    return Err(Failure::transient(format!(
                        "no revenue of order {} yet to refund",
                        d.order_number
                    )));
                };
                tx.execute(
                    "INSERT INTO refunds VALUES (?1, ?2)",
                    params![d.order_id.to_string(), amount],
                )?;
                (self.print)(
                    FINANCE,
                    format!("refund -{} THB for {}", money(amount), d.order_number),
                );
            }
            Event::Cancelled(e) => {
                (self.print)(
                    FINANCE,
                    format!(
                        "nothing to refund for {} (never charged)",
                        e.data.order_number
                    ),
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// Minor units as the API writes money.
pub fn money(minor: i64) -> String {
    Money::from_minor(minor).map_or_else(|| minor.to_string(), |m| m.to_string())
}
