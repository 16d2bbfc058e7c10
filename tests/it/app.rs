//! `spawn_app()`: the service on a free loopback port with a fresh database file, and what the
//! tests need to talk to it and look inside its database.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use clap::Parser;
use order_service::auth::{Auth, Role};
use order_service::commands::CataloguePrices;
use order_service::config::{Cli, Config, LogFormat};
use order_service::shutdown::Shutdown;
use order_service::store::Synchronous;
use reqwest::{Method, RequestBuilder, StatusCode};
use rusqlite::Connection;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::nats::NatsServer;

/// The secret the test service signs with.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

static TRACING: Once = Once::new();

/// A running service.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The client, with keep-alive.
    pub client: reqwest::Client,
    /// The database file.
    pub db_path: PathBuf,
    auth: Auth,
    shutdown: Shutdown,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// The service's settings for a test, with its database in `dir`: every default, as the command
/// line gives them, except that the relay is off (tests that relay turn it on with a broker), so
/// is the write limit, and catalogue prices are checked only where set.
pub fn test_config(dir: &std::path::Path) -> Config {
    let db = dir.join("orders.db");
    let mut config = Cli::parse_from([
        "order-service",
        "--http-addr",
        "127.0.0.1:0",
        "--database-path",
        db.to_str().unwrap(),
        "--auth-jwt-secret",
        SECRET,
        "--trusted-proxies",
        "127.0.0.1/32",
        "--event-outbox-enabled",
        "false",
    ])
    .config;
    config.sqlite_synchronous = Synchronous::Full;
    // Load tests drive one caller far faster than a person would; the write limit is tested
    // with its defaults and its own settings in tests/it/api/limits.rs.
    config.write_rate_limit = 0;
    // Most tests order made-up products as customers, and what they test is not the price; the
    // catalogue's prices are tested with the default, `required`, in tests/it/api/prices.rs, and
    // a priced product is checked under either setting.
    config.catalogue_prices = CataloguePrices::WhenSet;
    config
}

/// Starts the service with a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the service with a fresh database and settings changed by `adjust`.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = order_service::telemetry::init(LogFormat::Text, "info");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let db_path = config.database_path.clone();
    // The test mints with what the service is configured with: its secret, or its key pair.
    let auth = order_service::app::auth(&config).expect("the test's token settings");
    let signal = shutdown.signal();
    let server = tokio::spawn(async move {
        order_service::app::run(config, listener, signal)
            .await
            .expect("the service runs");
    });
    let app = TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        db_path,
        auth,
        shutdown,
        server: Some(server),
        _dir: dir,
    };
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    app
}

/// A caller: a role and a subject.
#[derive(Debug, Clone, Copy)]
pub struct User {
    /// The subject.
    pub id: Uuid,
    /// The role.
    pub role: Role,
}

impl User {
    /// A new user in `role`.
    pub fn new(role: Role) -> User {
        User {
            id: Uuid::now_v7(),
            role,
        }
    }
}

impl TestApp {
    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A valid token for `user`.
    pub fn token(&self, user: User) -> String {
        self.auth
            .issue(user.id, user.role, Duration::from_secs(3600))
            .expect("the test app holds its secret")
    }

    /// `/ready` as an admin sees it, with its checks (without a token it says its status only).
    pub async fn readiness(&self) -> Value {
        let response = self
            .request(User::new(Role::Admin), Method::GET, "/ready")
            .send()
            .await
            .unwrap();
        into_json(response).await.1
    }

    /// A request as `user`.
    pub fn request(&self, user: User, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(self.token(user))
    }

    /// Sends `body` as JSON with `method` to `path` as `user`; returns status and JSON body.
    pub async fn send(
        &self,
        user: User,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.request(user, method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        into_json(req.send().await.unwrap()).await
    }

    /// POST as `user`.
    pub async fn post(&self, user: User, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(user, Method::POST, path, Some(body)).await
    }

    /// GET as `user`.
    pub async fn get(&self, user: User, path: &str) -> (StatusCode, Value) {
        self.send(user, Method::GET, path, None).await
    }

    /// Creates an order for `customer` as `user` (the customer itself when the same) and returns
    /// the answered order.
    pub async fn create_order(&self, user: User, body: Value) -> Value {
        let (status, order) = self.post(user, "/api/v1/orders", body).await;
        assert_eq!(status, StatusCode::CREATED, "create answered {order}");
        order
    }

    /// Sets a product's available stock as an admin.
    pub async fn set_stock(&self, product: Uuid, available: u32) {
        let (status, body) = self
            .send(
                User::new(Role::Admin),
                Method::PUT,
                &format!("/api/v1/products/{product}/stock"),
                Some(json!({ "available": available })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "set stock: {body}");
    }

    /// Sets a product's catalogue price as an admin.
    pub async fn set_price(&self, product: Uuid, unit_price: f64, currency: &str) {
        let (status, body) = self
            .send(
                User::new(Role::Admin),
                Method::PUT,
                &format!("/api/v1/products/{product}/price"),
                Some(json!({ "unit_price": unit_price, "currency": currency })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "set price: {body}");
    }

    /// A read-only connection to the service's database file.
    pub fn db(&self) -> Connection {
        let conn =
            Connection::open_with_flags(&self.db_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    /// How many rows `table` holds.
    pub fn count(&self, table: &str) -> i64 {
        self.db()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Row counts of every table a rejected request must leave alone.
    pub fn footprint(&self) -> Vec<(String, i64)> {
        [
            "orders",
            "order_items",
            "order_events_outbox",
            "product_stock",
            "product_prices",
            "chat_orders",
            "order_chat_links",
            "stock_overrides",
            "order_number_counters",
        ]
        .iter()
        .map(|t| (t.to_string(), self.count(t)))
        .collect()
    }

    /// The outbox rows, in commit order: (topic, subject_key, payload, headers).
    pub fn outbox(&self) -> Vec<OutboxRow> {
        let conn = self.db();
        let mut stmt = conn
            .prepare(
                "SELECT id, event_id, topic, subject_key, payload, headers, status
                 FROM order_events_outbox ORDER BY id",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok(OutboxRow {
                id: r.get(0)?,
                event_id: r.get(1)?,
                topic: r.get(2)?,
                key: r.get(3)?,
                payload: serde_json::from_str(&r.get::<_, String>(4)?).unwrap(),
                raw: r.get(4)?,
                headers: serde_json::from_str(&r.get::<_, String>(5)?).unwrap(),
                status: r.get(6)?,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// The outbox rows of one order (by `data.order_id`), in commit order.
    pub fn events_of(&self, order_id: &str) -> Vec<OutboxRow> {
        self.outbox()
            .into_iter()
            .filter(|r| r.payload["data"]["order_id"] == order_id || r.key == order_id)
            .collect()
    }

    /// Stops the service and waits until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The configuration `name` has on the broker now.
pub async fn stream_config(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> async_nats::jetstream::stream::Config {
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().config.clone()
}

/// How many messages stream `name` holds.
pub async fn stream_messages(js: &async_nats::jetstream::Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// An outbox row as tests look at it.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Commit order.
    pub id: i64,
    /// The event id.
    pub event_id: String,
    /// The topic.
    pub topic: String,
    /// The subject key.
    pub key: String,
    /// The whole message.
    pub payload: Value,
    /// The message as stored, byte for byte.
    pub raw: String,
    /// The NATS headers.
    pub headers: Value,
    /// pending, published or dead.
    pub status: String,
}

/// Status and JSON body of a response; a body that is not JSON fails the test.
pub async fn into_json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: body is not JSON: {text}"))
    };
    (status, body)
}

/// A valid create body for `n` products at 100.00 each, quantity 2.
pub fn order_body(products: &[Uuid]) -> Value {
    json!({
        "items": products.iter().map(|p| json!({
            "product_id": p, "quantity": 2, "unit_price": 100.00
        })).collect::<Vec<_>>(),
        "shipping_address": {
            "street": "123 Main St", "city": "Bangkok", "postal_code": "10100", "country": "Thailand"
        },
        "currency": "THB",
        "source_channel": "web"
    })
}

/// A valid `POST /chat/orders` body for `customer` and `chat_id`, with one new product.
pub fn chat_order(customer: Uuid, chat_id: Uuid) -> Value {
    let mut body = simple_order();
    body.as_object_mut().unwrap().remove("source_channel");
    body["customer_id"] = json!(customer);
    body["chat_id"] = json!(chat_id);
    body["template_used"] = json!("quick_order");
    body["ai_confidence"] = json!(0.95);
    body["customer_preferences"] =
        json!({"delivery_speed": "standard", "communication_method": "sms"});
    body["requires_confirmation"] = json!(true);
    body
}

/// The value of one series in `/metrics` text, e.g. `outbox_dead` or
/// `outbox_publish_failures_total{topic="order.audit",kind="permanent"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

impl TestApp {
    /// The service's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `outbox_publish_failures_total` of `topic`'s permanent failures.
    pub async fn permanent_publish_failures(&self, topic: &str) -> f64 {
        let series =
            format!(r#"outbox_publish_failures_total{{topic="{topic}",kind="permanent"}}"#);
        metric(&self.metrics().await, &series).unwrap()
    }
}

/// A valid create body with one new product.
pub fn simple_order() -> Value {
    order_body(&[Uuid::now_v7()])
}

/// The topics of `rows`, in order.
pub fn topics(rows: &[OutboxRow]) -> Vec<&str> {
    rows.iter().map(|r| r.topic.as_str()).collect()
}

/// How long any wait for the relay or a consumer may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Waits until `done` holds, asking every 50 ms; fails the test with `what` after [`PATIENCE`].
pub async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done().await {
        assert!(start.elapsed() < PATIENCE, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The service with its relay on, publishing to `nats`, retrying quickly, once `/ready` says
/// ready (the streams are reconciled and the relay runs).
pub async fn relaying_app(nats: &NatsServer, adjust: impl FnOnce(&mut Config)) -> TestApp {
    relaying_app_at(nats.settings(), adjust).await
}

/// [`relaying_app`] connecting with `nats` (e.g. a cluster's server list and identity).
pub async fn relaying_app_at(
    nats: order_service::bus::NatsSettings,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    let app = spawn_app_with(move |c| {
        c.event_outbox_enabled = true;
        c.nats = nats;
        c.event_outbox_retry_base = Duration::from_millis(20);
        c.event_outbox_retry_max = Duration::from_millis(200);
        c.nats_ack_timeout = Duration::from_secs(2);
        adjust(c);
    })
    .await;
    ready(&app).await;
    app
}

/// Waits until `/ready` says ready; returns it.
pub async fn ready(app: &TestApp) -> Value {
    let start = std::time::Instant::now();
    loop {
        let ready = app.readiness().await;
        if ready["status"] == "ready" {
            return ready;
        }
        assert!(start.elapsed() < PATIENCE, "never ready: {ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the `order-service` binary with `args` against `nats`; returns what it printed.
pub fn run_cli(nats: &NatsServer, args: &[&str]) -> String {
    run_cli_at(&nats.settings(), args)
}

/// [`run_cli`] connecting with `nats` (`NATS_URL`, and `NATS_USER`/`NATS_PASSWORD` when set).
pub fn run_cli_at(nats: &order_service::bus::NatsSettings, args: &[&str]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_order-service"));
    command
        .args(args)
        .env("NATS_URL", &nats.url)
        .env("RUST_LOG", "error");
    if let (Some(user), Some(password)) = (&nats.user, &nats.password) {
        command
            .env("NATS_USER", user)
            .env("NATS_PASSWORD", password.expose());
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The topic table without `order.chat_linked`: no stream takes those events, a permanent failure.
pub fn table_without_chat_links(dir: &std::path::Path) -> std::path::PathBuf {
    let table = dir.join("topics.json");
    let all: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nats/topics.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let without: Vec<&Value> = all
        .iter()
        .filter(|t| t["topic"] != "order.chat_linked")
        .collect();
    std::fs::write(&table, serde_json::to_string(&without).unwrap()).unwrap();
    table
}
