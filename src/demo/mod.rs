//! `make demo`: the service, the three example consumers of the spec's integration examples, and
//! a driver that takes a few orders through their whole life cycle over the HTTP API.
//!
//! `make demo` starts a throw-away nats-server and runs `order-service demo`, which starts the
//! service in-process on a free port with its database under `--dir`, the consumer groups of
//! [`consumers`] with their own SQLite files there, and one `tail` per topic; then it drives the
//! orders, printing each request, the events it caused and each consumer's effect, waits after
//! every step until every group has caught up, prints a summary, shows that re-reading every
//! event changes nothing, and stops everything.
//!
//! One consumer publishes too: the inventory group emits `inventory.shortage` when an order was
//! let through beyond stock, through its own outbox ([`crate::consumer::emit`]), and the
//! notification group tells the customer of the delay.

pub mod consumers;
mod driver;
pub mod http;
mod summary;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::app::AppError;
use crate::bus::{self, Topics};
use crate::config::{Config, DemoArgs, Secret};
use crate::consumer::tail::{TailArgs, follow, summary};
use crate::consumer::{Emits, Group, GroupConfig, GroupStats, Handler, lag};
use crate::domain::Topic;
use crate::shutdown::Shutdown;
use consumers::{
    FINANCE, Finance, INVENTORY, Inventory, NOTIFICATION, Notification, Printer, inventory_topics,
};
use driver::{Driver, Log};
use http::Api;
use summary::{indent, summary_of, summary_of_finance};

/// How long the demo waits for anything before it gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// The databases the demo writes under `--dir`.
const DATABASES: [&str; 4] = [
    "order-service.db",
    "inventory.db",
    "notification.db",
    "finance.db",
];

fn failed(why: impl std::fmt::Display) -> AppError {
    AppError::Usage(format!("demo: {why}"))
}

/// Runs the demo against the NATS server at `config.nats`.
pub async fn run(config: Config, args: DemoArgs) -> Result<(), AppError> {
    let dir = args.dir;
    empty_databases(&dir)?;
    let js = jetstream::new(connect(&config.nats).await?);
    let shutdown = Shutdown::new();
    let config = demo_config(config, &dir);
    let (api, service) = start_service(&config, &shutdown).await?;
    println!("order-service demo");
    println!(
        "  NATS {} · service http://{} · databases in {}",
        config.nats.masked_url(),
        api.addr,
        dir.display()
    );

    // What the consumers and the tails print waits until the step has settled, so each step
    // reads as request, events, effects.
    let log = Log::default();
    let configs = group_configs(&dir);
    let groups = Groups::start(&js, &configs, &log, &shutdown)?;
    subscribed(&js, &configs).await?;
    let tails = start_tails(&js, &log, &shutdown);
    let topics = every_topic();
    let driver = Driver {
        api,
        auth: crate::app::auth(&config).map_err(failed)?,
        admin: Uuid::now_v7(),
        js: js.clone(),
        topics: topics.clone(),
        inventory_db: configs[0].database.clone(),
        log,
    };
    // Consumers and tails are subscribed before the first order.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let outcome = driver.scenario().await;
    if let Err(e) = &outcome {
        println!("the demo stopped early: {e}");
    }
    print_summary(&dir, &groups.stats, &js, &topics).await;

    shutdown.trigger();
    for handle in groups.handles {
        let _ = handle.await;
    }
    let finance = &groups.stats[2].1;
    let expected = finance.snapshot().processed + finance.snapshot().duplicates;
    replay_finance(&js, &configs[2], &dir, expected).await?;

    for tail in tails {
        let _ = tail.await;
    }
    let _ = service.await;
    println!();
    println!("stopped the consumers and the service");
    outcome
}

/// Removes the databases of an earlier run, so every run starts from nothing.
fn empty_databases(dir: &Path) -> Result<(), AppError> {
    for name in DATABASES {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("{name}{suffix}")));
        }
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// The service's settings for the demo: its database under `dir`, the relay on and quick, and a
/// throw-away secret unless one is configured.
fn demo_config(mut config: Config, dir: &Path) -> Config {
    if config.auth_jwt_secret.is_none() {
        let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        config.auth_jwt_secret = Some(Secret::from(secret));
    }
    config.database_path = dir.join("order-service.db");
    config.event_outbox_enabled = true;
    config.event_outbox_batch_size = 100;
    config.consumer_lag_interval = Duration::from_secs(1);
    config
}

/// Starts the service in-process on a free port and waits until it is ready.
async fn start_service(
    config: &Config,
    shutdown: &Shutdown,
) -> Result<(Api, JoinHandle<Result<(), AppError>>), AppError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let service = tokio::spawn(crate::app::run(config.clone(), listener, shutdown.signal()));
    let api = Api { addr };
    wait_ready(&api).await?;
    Ok((api, service))
}

/// The three groups' settings: quick retries, their databases under `dir`.
fn group_configs(dir: &Path) -> [GroupConfig; 3] {
    let quick = |group: &str, topics: &[Topic], file: &str| {
        let mut c = GroupConfig::new(group, topics, dir.join(file));
        c.backoff = vec![Duration::from_millis(200), Duration::from_millis(500)];
        c.max_deliver = 20;
        c.synchronous_full = false;
        c
    };
    [
        quick(
            INVENTORY,
            &[
                Topic::Created,
                Topic::StockOverrideApplied,
                Topic::Confirmed,
                Topic::Cancelled,
            ],
            "inventory.db",
        ),
        quick(
            NOTIFICATION,
            &[
                Topic::Created,
                Topic::StatusChanged,
                Topic::InventoryShortage,
            ],
            "notification.db",
        ),
        quick(FINANCE, &[Topic::Confirmed, Topic::Cancelled], "finance.db"),
    ]
}

/// The three running consumer groups.
struct Groups {
    handles: Vec<JoinHandle<()>>,
    stats: [(&'static str, Arc<GroupStats>); 3],
}

impl Groups {
    /// Starts inventory, notification and finance (in the order of `configs`), their effects
    /// printed through `log`.
    fn start(
        js: &jetstream::Context,
        configs: &[GroupConfig; 3],
        log: &Log,
        shutdown: &Shutdown,
    ) -> Result<Groups, AppError> {
        for c in configs {
            println!(
                "  consumer group {:<21} on {}{}",
                c.group,
                c.topics
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if c.group == INVENTORY {
                    "; emits inventory.shortage"
                } else {
                    ""
                }
            );
        }
        let print: Printer = {
            let log = log.clone();
            Arc::new(move |group: &str, line: String| {
                log.effect(format!("      → {group:<21} {line}"));
            })
        };
        let [inventory, notification, finance] = configs.clone();
        let inventory = spawn(
            js,
            inventory,
            Inventory {
                print: print.clone(),
            },
            Some(Emits::new(inventory_topics())),
            shutdown,
        )?;
        let notification = spawn(
            js,
            notification,
            Notification {
                print: print.clone(),
            },
            None,
            shutdown,
        )?;
        let finance = spawn(js, finance, Finance { print }, None, shutdown)?;
        Ok(Groups {
            handles: vec![inventory.0, notification.0, finance.0],
            stats: [
                (INVENTORY, inventory.1),
                (NOTIFICATION, notification.1),
                (FINANCE, finance.1),
            ],
        })
    }
}

/// The service's topics and the inventory's: what the demo tails and counts lag on.
fn every_topic() -> Topics {
    let all = Topics::embedded()
        .iter()
        .chain(inventory_topics().iter())
        .cloned()
        .collect();
    Topics::new(all).expect("the two tables have no topic in common")
}

/// Waits until every group's consumers are on the broker: a group reading a topic that another
/// group emits waits for that group to create its stream first.
async fn subscribed(js: &jetstream::Context, configs: &[GroupConfig; 3]) -> Result<(), AppError> {
    let start = Instant::now();
    for c in configs {
        for topic in &c.topics {
            loop {
                let found = match js.get_stream(bus::stream_name(topic.as_str())).await {
                    Ok(stream) => stream.consumer_info(c.consumer_name()).await.is_ok(),
                    Err(_) => false,
                };
                if found {
                    break;
                }
                if start.elapsed() > PATIENCE {
                    return Err(failed(format!(
                        "{} never subscribed to {}",
                        c.group,
                        topic.as_str()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(())
}

/// One `tail` per topic, each event line printed through `log`.
fn start_tails(js: &jetstream::Context, log: &Log, shutdown: &Shutdown) -> Vec<JoinHandle<()>> {
    let mut tails = Vec::new();
    for topic in Topic::ALL.into_iter().chain(Topic::SUBSCRIBER_OWNED) {
        let js = js.clone();
        let shutdown = shutdown.signal();
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
                        event.topic_name(),
                        event.order_number().unwrap_or("-"),
                        summary(event)
                    ));
                }
                true
            })
            .await;
        }));
    }
    tails
}

/// The consumers' state, each group's counts, and the lag table.
async fn print_summary(
    dir: &Path,
    stats: &[(&str, Arc<GroupStats>); 3],
    js: &jetstream::Context,
    topics: &Topics,
) {
    println!();
    println!("summary");
    summary_of(dir, stats);
    println!();
    print!(
        "{}",
        indent(&lag::format_table(
            &lag::rows(js, topics, None).await.unwrap_or_default()
        ))
    );
}

/// Idempotency: finance re-reads every event from the start, its consumers deleted and created
/// again, and its revenue and refunds stay as they were.
async fn replay_finance(
    js: &jetstream::Context,
    config: &GroupConfig,
    dir: &Path,
    expected: u64,
) -> Result<(), AppError> {
    println!();
    println!(
        "finance-service re-reads every event from the start (its consumers deleted and created again):"
    );
    for topic in &config.topics {
        if let Ok(stream) = js.get_stream(bus::stream_name(topic.as_str())).await {
            let _ = stream.delete_consumer(FINANCE).await;
        }
    }
    let shutdown = Shutdown::new();
    let quiet: Printer = Arc::new(|_: &str, _: String| {});
    let group = Group::new(js.clone(), config.clone(), Finance { print: quiet }).map_err(failed)?;
    let again = group.stats();
    let handle = tokio::spawn(group.run(shutdown.signal()));
    let start = Instant::now();
    while again.snapshot().deliveries < expected && start.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.trigger();
    let _ = handle.await;
    let s = again.snapshot();
    println!(
        "  {} deliveries, {} already processed, {} processed anew: the revenue and refunds above are unchanged",
        s.deliveries, s.duplicates, s.processed
    );
    summary_of_finance(dir);
    Ok(())
}

async fn connect(nats: &bus::NatsSettings) -> Result<async_nats::Client, AppError> {
    let start = Instant::now();
    loop {
        match bus::connect(nats).await {
            Ok(client) => return Ok(client),
            Err(e) if start.elapsed() > Duration::from_secs(10) => {
                return Err(failed(format!(
                    "no NATS at {} ({e}); `make demo` starts one",
                    nats.masked_url()
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
    emits: Option<Emits>,
    shutdown: &Shutdown,
) -> Result<Running, AppError> {
    let mut group = Group::new(js.clone(), config, handler).map_err(failed)?;
    if let Some(emits) = emits {
        group = group.emitting(emits);
    }
    let stats = group.stats();
    let signal = shutdown.signal();
    let handle = tokio::spawn(async move {
        if let Err(e) = group.run(signal).await {
            println!("a consumer group failed: {e}");
        }
    });
    Ok((handle, stats))
}
