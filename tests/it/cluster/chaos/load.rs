//! The campaign's load: several clients, each sending every kind of order command over HTTP to
//! the service on loopback, one at a time with a short pause, until told to stop (or a cap on
//! their count), recording each in the [history](super::history). A client remembers the orders
//! it created and what it believes their status is, so most commands are ones the state machine
//! allows; some are not (a 409, a definite failure), and an unknown answer leaves the belief as
//! it was until a 409 tells the status again. Customers and products are shared by all clients,
//! so `order.statistics_updated` (keyed by customer) and stock see every client at once.

use std::time::{Duration, Instant};

use order_service::auth::{Auth, Role};
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use super::history::{Command, Op, Outcome, classify};
use crate::app::SECRET;

/// Most commands one client sends in a campaign.
const MAX_PER_CLIENT: usize = 50_000;
/// The pause between two commands of a client.
const PACE: Duration = Duration::from_millis(20);
/// The pause after an unknown answer (the service may be down: no storm of refused connects).
const AFTER_UNKNOWN: Duration = Duration::from_millis(250);
/// How long a client waits for an answer before it is unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Orders a client remembers (the newest).
const REMEMBERED: usize = 100;

/// The clients, running until [`stop`](Load::stop).
pub struct Load {
    stop: watch::Sender<bool>,
    clients: Vec<tokio::task::JoinHandle<Vec<Op>>>,
}

/// What every client shares: where the service is, who may call it, the customers and products.
#[derive(Clone)]
struct World {
    api: String,
    auth: Auth,
    customers: Vec<Uuid>,
    products: Vec<Uuid>,
    start: Instant,
}

/// An order a client created, and what it believes of it.
struct Known {
    id: String,
    customer: Uuid,
    status: String,
    products: Vec<Uuid>,
}

impl Load {
    /// Starts `clients` clients against `base`; their choices come from `seed`; times in the
    /// history count from `start`.
    pub fn start(base: &str, seed: u64, clients: usize, start: Instant) -> Load {
        let world = World {
            api: format!("{base}/api/v1"),
            auth: Auth::with_default_parties(SECRET).expect("the test secret"),
            customers: (0..4).map(|_| Uuid::now_v7()).collect(),
            products: (0..12).map(|_| Uuid::now_v7()).collect(),
            start,
        };
        let (stop, stopped) = watch::channel(false);
        let clients = (0..clients)
            .map(|n| {
                let (world, stopped) = (world.clone(), stopped.clone());
                let rng = fastrand::Rng::with_seed(seed ^ (0x9e37_79b9 * (n as u64 + 1)));
                tokio::spawn(client(n, world, rng, stopped))
            })
            .collect();
        Load { stop, clients }
    }

    /// Stops the clients after their current command; the whole history, in answer order.
    pub async fn stop(self) -> Vec<Op> {
        let _ = self.stop.send(true);
        let mut ops = Vec::new();
        for client in self.clients {
            ops.extend(client.await.expect("a load client panicked"));
        }
        ops.sort_by_key(|op| op.answered);
        ops
    }
}

async fn client(
    n: usize,
    world: World,
    mut rng: fastrand::Rng,
    stopped: watch::Receiver<bool>,
) -> Vec<Op> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let mut known: Vec<Known> = Vec::new();
    let mut ops = Vec::new();
    while !*stopped.borrow() && ops.len() < MAX_PER_CLIENT {
        let command = choose(&mut rng, !known.is_empty());
        let order = (!command.creates() && command != Command::SetStock)
            .then(|| pick_order(&mut rng, &known, command));
        let (role, sub, method, path, body, target) =
            request(&world, &mut rng, command, order.map(|i| &known[i]));
        let correlation = Uuid::now_v7().to_string();
        let token = world
            .auth
            .issue(sub, role, Duration::from_secs(24 * 3600))
            .expect("the test secret");
        let sent = world.start.elapsed();
        let answer = http
            .request(method, format!("{}{path}", world.api))
            .bearer_auth(token)
            .header("X-Correlation-ID", &correlation)
            .json(&body)
            .send()
            .await;
        let (outcome, answered_body) = match answer {
            Err(error) => (Outcome::Unknown(short(&error)), Value::Null),
            Ok(response) => {
                let outcome = classify(response.status().as_u16());
                (outcome, response.json().await.unwrap_or(Value::Null))
            }
        };
        let answered = world.start.elapsed();
        let mut target = target;
        match (&outcome, order) {
            (Outcome::Ok(_), None) if command.creates() => {
                let id = answered_body["order_id"].as_str().unwrap_or_default();
                target = Some(id.to_string());
                known.push(Known {
                    id: id.to_string(),
                    customer: body["customer_id"]
                        .as_str()
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(sub),
                    status: "pending".into(),
                    products: products_of(&body),
                });
                if known.len() > REMEMBERED {
                    known.remove(0);
                }
            }
            (Outcome::Ok(_), Some(i)) => match command {
                Command::Confirm => known[i].status = "confirmed".into(),
                Command::Cancel => known[i].status = "cancelled".into(),
                Command::Status => known[i].status = body["status"].as_str().unwrap().into(),
                _ => {}
            },
            (Outcome::Failed(409), Some(i)) => {
                if let Some(status) = answered_body["details"]["current_status"].as_str() {
                    known[i].status = status.into();
                }
            }
            _ => {}
        }
        let unknown = matches!(outcome, Outcome::Unknown(_));
        ops.push(Op {
            client: n,
            command,
            target,
            correlation,
            sent,
            answered,
            outcome,
        });
        let pause = if unknown { AFTER_UNKNOWN } else { PACE };
        tokio::time::sleep(pause).await;
    }
    ops
}

/// A command, weighted; only creates until the client knows an order.
fn choose(rng: &mut fastrand::Rng, knows_orders: bool) -> Command {
    const WEIGHTS: [(Command, u32); 10] = [
        (Command::Create, 18),
        (Command::AdminCreate, 6),
        (Command::ChatCreate, 6),
        (Command::Update, 10),
        (Command::Status, 14),
        (Command::Confirm, 14),
        (Command::Cancel, 8),
        (Command::StockOverride, 6),
        (Command::ChatLink, 8),
        (Command::SetStock, 6),
    ];
    if !knows_orders && rng.bool() {
        return Command::Create;
    }
    let total: u32 = WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut roll = rng.u32(..total);
    for (command, weight) in WEIGHTS {
        if roll < weight {
            if !knows_orders && !command.creates() && command != Command::SetStock {
                return Command::Create;
            }
            return command;
        }
        roll -= weight;
    }
    unreachable!()
}

/// A remembered order for `command`: mostly one whose believed status allows it.
fn pick_order(rng: &mut fastrand::Rng, known: &[Known], command: Command) -> usize {
    let fits = |status: &str| match command {
        Command::Update => status == "pending",
        Command::Confirm => status == "pending",
        Command::Status => ["confirmed", "processing", "shipped"].contains(&status),
        Command::Cancel | Command::StockOverride => ["pending", "confirmed"].contains(&status),
        _ => true,
    };
    let fitting: Vec<usize> = (0..known.len())
        .filter(|&i| fits(&known[i].status))
        .collect();
    if !fitting.is_empty() && rng.u8(..10) < 9 {
        fitting[rng.usize(..fitting.len())]
    } else {
        rng.usize(..known.len())
    }
}

/// The request for `command`: who sends it, method, path, body, and the target it names.
fn request(
    world: &World,
    rng: &mut fastrand::Rng,
    command: Command,
    order: Option<&Known>,
) -> (Role, Uuid, reqwest::Method, String, Value, Option<String>) {
    use reqwest::Method;
    let admin = Uuid::from_u128(1);
    let customer = world.customers[rng.usize(..world.customers.len())];
    let id = order.map(|o| o.id.clone()).unwrap_or_default();
    let post = |path: String, body: Value| (Method::POST, path, body);
    let (role, sub, (method, path, body)) = match command {
        Command::Create => (
            Role::Customer,
            customer,
            post("/orders".into(), new_order(world, rng, None)),
        ),
        Command::AdminCreate => {
            let mut body = new_order(world, rng, Some(customer));
            body["source_channel"] = json!("admin");
            body["stock_override"] = json!({"reason": "chaos campaign", "expected_restock_date": "2030-07-01T00:00:00Z"});
            (Role::Admin, admin, post("/orders".into(), body))
        }
        Command::ChatCreate => {
            let mut body = new_order(world, rng, Some(customer));
            body.as_object_mut().unwrap().remove("source_channel");
            body["chat_id"] = json!(Uuid::now_v7());
            body["template_used"] = json!("quick_order");
            body["ai_confidence"] = json!(0.9);
            body["requires_confirmation"] = json!(false);
            (Role::Ai, admin, post("/chat/orders".into(), body))
        }
        Command::Update => (
            Role::Customer,
            order.map_or(customer, |o| o.customer),
            (
                Method::PATCH,
                format!("/orders/{id}"),
                json!({"shipping_address": address(rng), "reason": "moved"}),
            ),
        ),
        Command::Status => {
            let next = match order.map(|o| o.status.as_str()) {
                Some("confirmed") => "processing",
                Some("processing") => "shipped",
                Some("shipped") => "delivered",
                _ => ["processing", "shipped", "delivered"][rng.usize(..3)],
            };
            let body = json!({"status": next, "reason": "chaos", "automatic": false});
            (
                Role::Admin,
                admin,
                post(format!("/orders/{id}/status"), body),
            )
        }
        Command::Confirm => {
            let body = json!({"payment_confirmed": true, "inventory_reserved": true});
            (
                Role::System,
                admin,
                post(format!("/orders/{id}/confirm"), body),
            )
        }
        Command::Cancel => {
            let body = json!({"reason": "chaos", "refund_required": rng.bool()});
            (
                Role::Admin,
                admin,
                post(format!("/orders/{id}/cancel"), body),
            )
        }
        Command::StockOverride => {
            let product = order.and_then(|o| o.products.first()).copied();
            let body = json!({
                "reason": "supplier delay", "expected_restock_date": "2030-07-01T00:00:00Z",
                "items": [{"product_id": product.unwrap_or(world.products[0]), "override_quantity": 1}]
            });
            (
                Role::Admin,
                admin,
                post(format!("/orders/{id}/stock-override"), body),
            )
        }
        Command::ChatLink => {
            let body =
                json!({"chat_id": Uuid::now_v7(), "link_type": "support", "context": "chaos"});
            (
                Role::Ai,
                admin,
                post(format!("/orders/{id}/chat-links"), body),
            )
        }
        Command::SetStock => {
            let product = world.products[rng.usize(..world.products.len())];
            let body = json!({"available": rng.u32(0..=40)});
            let path = format!("/products/{product}/stock");
            return (
                Role::Admin,
                admin,
                Method::PUT,
                path,
                body,
                Some(product.to_string()),
            );
        }
    };
    let target = order.map(|o| o.id.clone());
    (role, sub, method, path, body, target)
}

/// A create body: one to three of the shared products, one to three each.
fn new_order(world: &World, rng: &mut fastrand::Rng, customer: Option<Uuid>) -> Value {
    let mut products = world.products.clone();
    rng.shuffle(&mut products);
    let items: Vec<Value> = products[..rng.usize(1..=3)]
        .iter()
        .map(|p| json!({"product_id": p, "quantity": rng.u32(1..=3), "unit_price": 25.50}))
        .collect();
    let mut body = json!({
        "items": items, "shipping_address": address(rng), "currency": "THB", "source_channel": "web"
    });
    if let Some(customer) = customer {
        body["customer_id"] = json!(customer);
    }
    body
}

fn address(rng: &mut fastrand::Rng) -> Value {
    json!({"street": format!("{} Main St", rng.u32(1..10_000)), "city": "Bangkok",
           "postal_code": "10100", "country": "Thailand"})
}

fn products_of(body: &Value) -> Vec<Uuid> {
    body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["product_id"].as_str()?.parse().ok())
        .collect()
}

/// A transport error in a few words (reqwest's Display hides the cause).
fn short(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        "connect".into()
    } else {
        "connection lost".into()
    }
}
