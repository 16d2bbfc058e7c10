//! The demo's driver: takes a few orders through their life cycle over the HTTP API, printing
//! each request, then the events and effects it caused once every consumer group has caught up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{Value, json};
use uuid::Uuid;

use super::consumers::{FINANCE, INVENTORY, NOTIFICATION};
use super::http::Api;
use super::{PATIENCE, failed};
use crate::app::AppError;
use crate::auth::{Auth, Role};
use crate::bus::Topics;
use crate::consumer::lag;
use crate::consumer::tail::short;
use crate::store::outbox;

/// The demo's products.
struct Products {
    widget: Uuid,
    gadget: Uuid,
    rare: Uuid,
}

fn address() -> Value {
    json!({"street": "123 Main St", "city": "Bangkok", "postal_code": "10100", "country": "Thailand"})
}

fn item(product: Uuid, quantity: u32, price: f64) -> Value {
    json!({"product_id": product, "quantity": quantity, "unit_price": price})
}

/// The id of an order the API answered.
fn order_id(order: &Value) -> String {
    order["order_id"].as_str().unwrap_or_default().to_owned()
}

/// Drives the orders.
pub(super) struct Driver {
    pub(super) api: Api,
    pub(super) auth: Auth,
    pub(super) admin: Uuid,
    pub(super) js: jetstream::Context,
    pub(super) topics: Topics,
    /// The inventory group's database: its outbox is drained too before a step has settled.
    pub(super) inventory_db: PathBuf,
    pub(super) log: Log,
}

/// Lines printed by the tails and the consumers while a step settles.
#[derive(Clone, Default)]
pub(super) struct Log {
    events: Arc<std::sync::Mutex<Vec<String>>>,
    effects: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Log {
    pub(super) fn event(&self, line: String) {
        self.events.lock().expect("log lock").push(line);
    }

    pub(super) fn effect(&self, line: String) {
        self.effects.lock().expect("log lock").push(line);
    }

    /// Prints what arrived since the last flush: the events, then the consumers' effects.
    fn flush(&self) {
        for list in [&self.events, &self.effects] {
            for line in list.lock().expect("log lock").drain(..) {
                println!("{line}");
            }
        }
    }
}

impl Driver {
    fn token(&self, role: Role) -> String {
        self.auth
            .issue(self.admin, role, Duration::from_secs(3600))
            .expect("the demo holds its HS256 secret")
    }

    /// One request, printed with its answer; then waits until every group has caught up.
    async fn step(
        &self,
        role: Role,
        method: &str,
        path: &str,
        what: &str,
        body: Value,
    ) -> Result<Value, AppError> {
        let token = self.token(role);
        let (status, answer) = self
            .api
            .call(method, &format!("/api/v1{path}"), Some(&token), Some(&body))
            .await?;
        let label = answer["order_number"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_default();
        println!();
        println!("▶ {method} {path}  {what}  → {status} {label}");
        if !(200..300).contains(&status) {
            return Err(failed(format!(
                "{method} {path} answered {status}: {answer}"
            )));
        }
        self.settle().await?;
        self.log.flush();
        Ok(answer)
    }

    /// Waits until the outbox is drained and no group has anything pending.
    async fn settle(&self) -> Result<(), AppError> {
        let start = Instant::now();
        loop {
            let (_, ready) = self
                .api
                .call("GET", "/ready", Some(&self.token(Role::Admin)), None)
                .await?;
            let drained = ready["checks"]["outbox"]["pending"] == 0 && self.emits_drained();
            let rows = lag::rows(&self.js, &self.topics, None)
                .await
                .map_err(failed)?;
            let caught_up = rows
                .iter()
                .filter(|r| [INVENTORY, NOTIFICATION, FINANCE].contains(&r.group.as_str()))
                .all(|r| r.lag_messages() == 0);
            if drained && caught_up {
                // Let the tails print what arrived.
                tokio::time::sleep(Duration::from_millis(150)).await;
                return Ok(());
            }
            if start.elapsed() > PATIENCE {
                return Err(failed("the consumers did not catch up"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the inventory group has published everything it emitted.
    fn emits_drained(&self) -> bool {
        rusqlite::Connection::open(&self.inventory_db)
            .ok()
            .and_then(|conn| outbox::stats(&conn).ok())
            .is_some_and(|counts| counts.pending == 0)
    }

    /// The four stories, one after the other.
    pub(super) async fn scenario(&self) -> Result<(), AppError> {
        let products = self.stock_products().await?;
        let (alice, bob, chai) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        self.web_order(&products, alice).await?;
        self.refunded_order(&products, bob).await?;
        self.override_order(&products, bob).await?;
        self.chat_order(&products, chai).await
    }

    /// Three products in the catalogue: widget (100.00 THB, stock 10), gadget (250.00 THB,
    /// stock 5), rare (80.00 THB, stock 1). The assistant's chat order is held to these prices.
    async fn stock_products(&self) -> Result<Products, AppError> {
        let products = Products {
            widget: Uuid::now_v7(),
            gadget: Uuid::now_v7(),
            rare: Uuid::now_v7(),
        };
        println!();
        println!(
            "products: widget {} (100.00 THB, stock 10), gadget {} (250.00 THB, stock 5), rare {} (80.00 THB, stock 1)",
            short(products.widget),
            short(products.gadget),
            short(products.rare)
        );
        for (product, available, price) in [
            (products.widget, 10, 100.0),
            (products.gadget, 5, 250.0),
            (products.rare, 1, 80.0),
        ] {
            for (what, body) in [
                ("stock", json!({ "available": available })),
                ("price", json!({ "unit_price": price, "currency": "THB" })),
            ] {
                let (status, answer) = self
                    .api
                    .call(
                        "PUT",
                        &format!("/api/v1/products/{product}/{what}"),
                        Some(&self.token(Role::Admin)),
                        Some(&body),
                    )
                    .await?;
                if status != 200 {
                    return Err(failed(format!(
                        "setting {what} answered {status}: {answer}"
                    )));
                }
            }
        }
        Ok(products)
    }

    async fn web_order(&self, p: &Products, alice: Uuid) -> Result<(), AppError> {
        println!();
        println!("── 1. a web order, confirmed, shipped and delivered");
        let order = self
            .step(
                Role::Admin,
                "POST",
                "/orders",
                "web order for alice: 2 widgets, 1 gadget",
                json!({
                    "customer_id": alice, "items": [item(p.widget, 2, 100.0), item(p.gadget, 1, 250.0)],
                    "shipping_address": address(), "currency": "THB", "source_channel": "web"
                }),
            )
            .await?;
        self.life_cycle(&order_id(&order), true).await
    }

    async fn refunded_order(&self, p: &Products, bob: Uuid) -> Result<(), AppError> {
        println!();
        println!("── 2. a mobile order, confirmed, then cancelled with a refund");
        let order = self
            .step(
                Role::Admin,
                "POST",
                "/orders",
                "mobile order for bob: 1 gadget",
                json!({
                    "customer_id": bob, "items": [item(p.gadget, 1, 250.0)],
                    "shipping_address": address(), "currency": "THB", "source_channel": "mobile"
                }),
            )
            .await?;
        let id = order_id(&order);
        self.confirm(&id).await?;
        self.step(
            Role::Admin,
            "POST",
            &format!("/orders/{id}/cancel"),
            "customer changed their mind",
            json!({
                "reason": "Customer request", "refund_required": true
            }),
        )
        .await
        .map(drop)
    }

    async fn override_order(&self, p: &Products, bob: Uuid) -> Result<(), AppError> {
        println!();
        println!(
            "── 3. an order beyond stock, let through by a stock override: the inventory keeps what \
             there is and emits inventory.shortage for the rest, the customer hears of the delay; \
             then cancelled unpaid"
        );
        let order = self
            .step(Role::Admin, "POST", "/orders", "admin order for bob: 3 rare (1 in stock), with override", json!({
                "customer_id": bob, "items": [item(p.rare, 3, 80.0)],
                "shipping_address": address(), "currency": "THB", "source_channel": "admin",
                "stock_override": {"reason": "VIP customer special request", "expected_restock_date": "2030-07-01T00:00:00Z"}
            }))
            .await?;
        let id = order_id(&order);
        self.step(
            Role::Admin,
            "POST",
            &format!("/orders/{id}/cancel"),
            "supplier cannot deliver",
            json!({
                "reason": "Supplier cannot restock"
            }),
        )
        .await
        .map(drop)
    }

    async fn chat_order(&self, p: &Products, chai: Uuid) -> Result<(), AppError> {
        println!();
        println!("── 4. a chat order, confirmed, shipped and delivered");
        let order = self
            .step(Role::Ai, "POST", "/chat/orders", "the assistant orders 1 widget for chai", json!({
                "chat_id": Uuid::now_v7(), "template_used": "quick_order", "ai_confidence": 0.95,
                "requires_confirmation": true,
                "customer_preferences": {"delivery_speed": "standard", "communication_method": "sms"},
                "customer_id": chai, "items": [item(p.widget, 1, 100.0)], "shipping_address": address()
            }))
            .await?;
        self.life_cycle(&order_id(&order), true).await
    }

    async fn confirm(&self, id: &str) -> Result<(), AppError> {
        self.step(
            Role::System,
            "POST",
            &format!("/orders/{id}/confirm"),
            "payment confirmed",
            json!({
                "payment_confirmed": true, "inventory_reserved": true
            }),
        )
        .await
        .map(drop)
    }

    async fn life_cycle(&self, id: &str, confirm: bool) -> Result<(), AppError> {
        if confirm {
            self.confirm(id).await?;
        }
        for (to, why) in [
            ("processing", "picking started"),
            ("shipped", "handed to the carrier"),
            ("delivered", "signed for"),
        ] {
            self.step(
                Role::System,
                "POST",
                &format!("/orders/{id}/status"),
                why,
                json!({
                    "status": to, "reason": why
                }),
            )
            .await?;
        }
        Ok(())
    }
}
