//! `make demo`: the service, the three example consumers of the spec's integration examples, and
//! a driver that takes a few orders through their whole life cycle over the HTTP API.
//!
//! `make demo` starts a throw-away nats-server and runs `order-service demo`, which starts the
//! service in-process on a free port with its database under `--dir`, the consumer groups of
//! [`consumers`] with their own SQLite files there, and one `tail` per topic; then it drives the
//! orders, printing each request, the events it caused and each consumer's effect, waits after
//! every step until every group has caught up, prints a summary, shows that re-reading every
//! event changes nothing, and stops everything.

pub mod consumers;
pub mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use clap::Args;
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use crate::app::AppError;
use crate::auth::{Auth, Role};
use crate::bus::{self, Topics};
use crate::config::Config;
use crate::consumer::tail::{TailArgs, follow, short, summary};
use crate::consumer::{Group, GroupConfig, GroupStats, Handler, lag};
use crate::domain::Topic;
use consumers::{
    FINANCE, Finance, INVENTORY, Inventory, NOTIFICATION, Notification, Printer, money,
};
use http::Api;

/// How long the demo waits for anything before it gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// Arguments of `demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Folder for the service's and the consumers' databases (emptied first).
    #[arg(long, default_value = "./data/demo")]
    pub dir: PathBuf,
}

fn failed(why: impl std::fmt::Display) -> AppError {
    AppError::Usage(format!("demo: {why}"))
}

/// Runs the demo against the NATS server at `config.nats_url`.
pub async fn run(mut config: Config, args: DemoArgs) -> Result<(), AppError> {
    let dir = args.dir;
    for name in [
        "order-service.db",
        "inventory.db",
        "notification.db",
        "finance.db",
    ] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("{name}{suffix}")));
        }
    }
    std::fs::create_dir_all(&dir)?;
    let client = connect(&config.nats_url).await?;
    let js = jetstream::new(client);

    // The service, in-process, on a free port.
    let secret = config
        .auth_jwt_secret
        .clone()
        .unwrap_or_else(|| format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()));
    config.auth_jwt_secret = Some(secret.clone());
    config.database_path = dir.join("order-service.db");
    config.event_outbox_enabled = true;
    config.event_outbox_batch_size = 100;
    config.consumer_lag_interval = Duration::from_secs(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let (stop, stopping) = watch::channel(false);
    let stopped = move || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    };
    let service = tokio::spawn(crate::app::run(config.clone(), listener, stopped()));
    let api = Api { addr };
    wait_ready(&api).await?;
    println!("order-service demo");
    println!(
        "  NATS {} · service http://{addr} · databases in {}",
        config.nats_url,
        dir.display()
    );

    // The consumers and the tails; what they print waits until the step has settled, so each
    // step reads as request, events, effects.
    let log = Log::default();
    let print: Printer = {
        let log = log.clone();
        Arc::new(move |group: &str, line: String| {
            log.effect(format!("      → {group:<21} {line}"));
        })
    };
    let quick = |group: &str, topics: &[Topic], file: &str| {
        let mut c = GroupConfig::new(group, topics, dir.join(file));
        c.backoff = vec![Duration::from_millis(200), Duration::from_millis(500)];
        c.max_deliver = 20;
        c.synchronous_full = false;
        c
    };
    let inventory_config = quick(
        INVENTORY,
        &[Topic::Created, Topic::Confirmed, Topic::Cancelled],
        "inventory.db",
    );
    let notification_config = quick(NOTIFICATION, &[Topic::StatusChanged], "notification.db");
    let finance_config = quick(FINANCE, &[Topic::Confirmed, Topic::Cancelled], "finance.db");
    for c in [&inventory_config, &notification_config, &finance_config] {
        println!(
            "  consumer group {:<21} on {}",
            c.group,
            c.topics
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut groups = Vec::new();
    let inventory = spawn(
        &js,
        inventory_config,
        Inventory {
            print: print.clone(),
        },
        stopped(),
    )?;
    groups.push(inventory.0);
    let notification = spawn(
        &js,
        notification_config,
        Notification {
            print: print.clone(),
        },
        stopped(),
    )?;
    groups.push(notification.0);
    let finance = spawn(
        &js,
        finance_config.clone(),
        Finance {
            print: print.clone(),
        },
        stopped(),
    )?;
    groups.push(finance.0);
    let stats = [
        (INVENTORY, inventory.1),
        (NOTIFICATION, notification.1),
        (FINANCE, finance.1),
    ];
    let mut tails = Vec::new();
    for topic in Topic::ALL {
        let js = js.clone();
        let shutdown = stopped();
        let log = log.clone();
        let args = TailArgs {
            topic: topic.as_str().to_owned(),
            partition: None,
            order: None,
            since: None,
            all: false,
            json: false,
            limit: None,
        };
        tails.push(tokio::spawn(async move {
            let _ = follow(&js, &args, shutdown, |t| {
                if let Ok(event) = &t.event {
                    log.event(format!(
                        "    event {:<28} {:<16} {}",
                        event.topic().as_str(),
                        event.order_number().unwrap_or("-"),
                        summary(event)
                    ));
                }
                true
            })
            .await;
        }));
    }
    let topics = Topics::embedded();
    let driver = Driver {
        api,
        auth: Auth::new(
            &secret,
            config.auth_jwt_issuer.clone(),
            config.auth_jwt_audience.clone(),
        )
        .map_err(failed)?,
        admin: Uuid::now_v7(),
        js: js.clone(),
        topics: topics.clone(),
        log,
    };
    // Consumers and tails are subscribed before the first order.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let outcome = driver.scenario().await;
    if let Err(e) = &outcome {
        println!("the demo stopped early: {e}");
    }

    println!();
    println!("summary");
    summary_of(&dir, &stats);
    println!();
    print!(
        "{}",
        indent(&lag::format_table(
            &lag::rows(&js, &topics, None).await.unwrap_or_default()
        ))
    );

    // Idempotency: finance re-reads every event from the start.
    println!();
    println!(
        "finance-service re-reads every event from the start (its consumers deleted and created again):"
    );
    let _ = stop.send(true);
    for handle in groups.drain(..) {
        let _ = handle.await;
    }
    for topic in &finance_config.topics {
        if let Ok(stream) = js.get_stream(bus::stream_name(topic.as_str())).await {
            let _ = stream.delete_consumer(FINANCE).await;
        }
    }
    let (again_stop, again_stopping) = watch::channel(false);
    let quiet: Printer = Arc::new(|_: &str, _: String| {});
    let group =
        Group::new(js.clone(), finance_config.clone(), Finance { print: quiet }).map_err(failed)?;
    let again = group.stats();
    let handle = tokio::spawn(group.run(async move {
        let mut s = again_stopping;
        let _ = s.wait_for(|s| *s).await;
    }));
    let expected = stats[2].1.snapshot().processed + stats[2].1.snapshot().duplicates;
    let start = Instant::now();
    while again.snapshot().deliveries < expected && start.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = again_stop.send(true);
    let _ = handle.await;
    let s = again.snapshot();
    println!(
        "  {} deliveries, {} already processed, {} processed anew: the revenue and refunds above are unchanged",
        s.deliveries, s.duplicates, s.processed
    );
    summary_of_finance(&dir);

    for tail in tails {
        let _ = tail.await;
    }
    let _ = service.await;
    println!();
    println!("stopped the consumers and the service");
    outcome
}

async fn connect(url: &str) -> Result<async_nats::Client, AppError> {
    let start = Instant::now();
    loop {
        match bus::connect(url).await {
            Ok(client) => return Ok(client),
            Err(e) if start.elapsed() > Duration::from_secs(10) => {
                return Err(failed(format!(
                    "no NATS at {url} ({e}); `make demo` starts one"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn wait_ready(api: &Api) -> Result<(), AppError> {
    let start = Instant::now();
    loop {
        if let Ok((200, ready)) = api.call("GET", "/ready", None, None).await
            && ready["status"] == "ready"
        {
            return Ok(());
        }
        if start.elapsed() > PATIENCE {
            return Err(failed("the service did not become ready"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Running = (tokio::task::JoinHandle<()>, Arc<GroupStats>);

fn spawn<H: Handler>(
    js: &jetstream::Context,
    config: GroupConfig,
    handler: H,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, AppError> {
    let group = Group::new(js.clone(), config, handler).map_err(failed)?;
    let stats = group.stats();
    let handle = tokio::spawn(async move {
        if let Err(e) = group.run(shutdown).await {
            println!("a consumer group failed: {e}");
        }
    });
    Ok((handle, stats))
}

/// Drives the orders.
struct Driver {
    api: Api,
    auth: Auth,
    admin: Uuid,
    js: jetstream::Context,
    topics: Topics,
    log: Log,
}

/// Lines printed by the tails and the consumers while a step settles.
#[derive(Clone, Default)]
struct Log {
    events: Arc<std::sync::Mutex<Vec<String>>>,
    effects: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Log {
    fn event(&self, line: String) {
        self.events.lock().expect("log lock").push(line);
    }

    fn effect(&self, line: String) {
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
        self.auth.issue(self.admin, role, Duration::from_secs(3600))
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
            let (_, ready) = self.api.call("GET", "/ready", None, None).await?;
            let drained = ready["checks"]["outbox"]["pending"] == 0;
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

    async fn scenario(&self) -> Result<(), AppError> {
        let (widget, gadget, rare) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (alice, bob, chai) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        println!();
        println!(
            "products: widget {} (stock 10), gadget {} (stock 5), rare {} (stock 0)",
            short(widget),
            short(gadget),
            short(rare)
        );
        for (product, available) in [(widget, 10), (gadget, 5), (rare, 0)] {
            let (status, answer) = self
                .api
                .call(
                    "PUT",
                    &format!("/api/v1/products/{product}/stock"),
                    Some(&self.token(Role::Admin)),
                    Some(&json!({ "available": available })),
                )
                .await?;
            if status != 200 {
                return Err(failed(format!("setting stock answered {status}: {answer}")));
            }
        }
        let address = json!({"street": "123 Main St", "city": "Bangkok", "postal_code": "10100", "country": "Thailand"});
        let item = |product: Uuid, quantity: u32, price: f64| json!({"product_id": product, "quantity": quantity, "unit_price": price});

        println!();
        println!("── 1. a web order, confirmed, shipped and delivered");
        let order = self
            .step(
                Role::Admin,
                "POST",
                "/orders",
                "web order for alice: 2 widgets, 1 gadget",
                json!({
                    "customer_id": alice, "items": [item(widget, 2, 100.0), item(gadget, 1, 250.0)],
                    "shipping_address": address, "currency": "THB", "source_channel": "web"
                }),
            )
            .await?;
        let id = order["order_id"].as_str().unwrap_or_default().to_owned();
        self.life_cycle(&id, true).await?;

        println!();
        println!("── 2. a mobile order, confirmed, then cancelled with a refund");
        let order = self
            .step(
                Role::Admin,
                "POST",
                "/orders",
                "mobile order for bob: 1 gadget",
                json!({
                    "customer_id": bob, "items": [item(gadget, 1, 250.0)],
                    "shipping_address": address, "currency": "THB", "source_channel": "mobile"
                }),
            )
            .await?;
        let id = order["order_id"].as_str().unwrap_or_default().to_owned();
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
        .await?;

        println!();
        println!(
            "── 3. an order beyond stock, let through by a stock override, then cancelled unpaid"
        );
        let order = self
            .step(Role::Admin, "POST", "/orders", "admin order for bob: 3 rare (0 in stock), with override", json!({
                "customer_id": bob, "items": [item(rare, 3, 80.0)],
                "shipping_address": address, "currency": "THB", "source_channel": "admin",
                "stock_override": {"reason": "VIP customer special request", "expected_restock_date": "2030-07-01T00:00:00Z"}
            }))
            .await?;
        let id = order["order_id"].as_str().unwrap_or_default().to_owned();
        self.step(
            Role::Admin,
            "POST",
            &format!("/orders/{id}/cancel"),
            "supplier cannot deliver",
            json!({
                "reason": "Supplier cannot restock"
            }),
        )
        .await?;

        println!();
        println!("── 4. a chat order, confirmed, shipped and delivered");
        let order = self
            .step(Role::Ai, "POST", "/chat/orders", "the assistant orders 1 widget for chai", json!({
                "chat_id": Uuid::now_v7(), "template_used": "quick_order", "ai_confidence": 0.95,
                "requires_confirmation": true,
                "customer_preferences": {"delivery_speed": "standard", "communication_method": "sms"},
                "customer_id": chai, "items": [item(widget, 1, 100.0)], "shipping_address": address
            }))
            .await?;
        let id = order["order_id"].as_str().unwrap_or_default().to_owned();
        self.life_cycle(&id, true).await?;
        Ok(())
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

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn summary_of(dir: &std::path::Path, stats: &[(&str, Arc<GroupStats>); 3]) {
    let open = |file: &str| rusqlite::Connection::open(dir.join(file)).ok();
    if let Some(db) = open("inventory.db") {
        let mut lines = Vec::new();
        if let Ok(mut stmt) = db.prepare(
            "SELECT state, count(*), sum(quantity) FROM reservations GROUP BY state ORDER BY state",
        ) {
            let rows = stmt.query_map([], |r| {
                Ok(format!(
                    "{} {} line(s), {} unit(s)",
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?
                ))
            });
            if let Ok(rows) = rows {
                lines.extend(rows.flatten());
            }
        }
        println!("  {:<21} reservations: {}", INVENTORY, lines.join("; "));
    }
    if let Some(db) = open("notification.db") {
        let n: i64 = db
            .query_row("SELECT count(*) FROM notifications", [], |r| r.get(0))
            .unwrap_or(0);
        println!("  {:<21} {n} notification(s) sent", NOTIFICATION);
    }
    summary_of_finance(dir);
    println!();
    println!(
        "  {:<21} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "group", "delivered", "processed", "duplicate", "retried", "dead letters"
    );
    for (name, stats) in stats {
        let s = stats.snapshot();
        println!(
            "  {:<21} {:>10} {:>10} {:>10} {:>10} {:>12}",
            name, s.deliveries, s.processed, s.duplicates, s.retried, s.dead_lettered
        );
    }
}

fn summary_of_finance(dir: &std::path::Path) {
    let Ok(db) = rusqlite::Connection::open(dir.join("finance.db")) else {
        return;
    };
    let (orders, revenue): (i64, i64) = db
        .query_row(
            "SELECT count(*), coalesce(sum(amount_minor), 0) FROM revenue",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or((0, 0));
    let (refunds, refunded): (i64, i64) = db
        .query_row(
            "SELECT count(*), coalesce(sum(amount_minor), 0) FROM refunds",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or((0, 0));
    println!(
        "  {:<21} revenue {} THB from {orders} order(s), {refunds} refund(s) of {} THB, net {} THB",
        FINANCE,
        money(revenue),
        money(refunded),
        money(revenue - refunded)
    );
}
