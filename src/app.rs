//! Builds everything production builds and runs it until shutdown; tests use the same code.
//!
//! One shutdown reaches everything: the HTTP server stops taking requests and finishes the ones in
//! flight, the relay finishes and records the batch in flight, and [`run`] returns when both are
//! done.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::{self, AppState};
use crate::auth::{Auth, AuthConfigError};
use crate::bus::{self, Topics, TopicsError};
use crate::config::{Cli, Command, Config, SchemaArgs, StreamsAction, TokenArgs};
use crate::consumer;
use crate::domain::Topic;
use crate::metrics::Metrics;
use crate::relay::{self, Backoff, Relay, RelayConfig, RelayStatus, StreamsSummary};
use crate::store::{Store, StoreConfig, StoreError};

/// The longest wait between two tries to reach the broker at start-up.
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why the service could not start or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No usable token secret.
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    /// `AUTH_JWT_SECRET` is not set.
    #[error(
        "AUTH_JWT_SECRET is not set; set a secret of at least 32 bytes (`make run` generates a development one)"
    )]
    NoSecret,
    /// The database could not be opened.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The topic table is not usable.
    #[error("topic table: {0}")]
    Topics(#[from] TopicsError),
    /// Talking to NATS failed (commands only; the service itself waits for the broker).
    #[error("NATS: {0}")]
    Nats(String),
    /// Listening or serving failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A command's arguments are wrong.
    #[error("{0}")]
    Usage(String),
    /// A consumer command failed.
    #[error(transparent)]
    Consumer(#[from] crate::consumer::ConsumerError),
}

/// Runs the command line.
pub fn execute(cli: Cli) -> Result<(), AppError> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime()?.block_on(async {
            let listener = TcpListener::bind(cli.config.http_addr).await?;
            run(cli.config, listener, shutdown_signal()).await
        }),
        Command::Token(args) => token(&cli.config, &args),
        Command::Schema(args) => schema(&args),
        Command::Streams { action } => runtime()?.block_on(streams(&cli.config, action)),
        Command::Tail(args) => Ok(runtime()?.block_on(consumer::commands::tail(
            &cli.config.nats_url,
            args,
            shutdown_signal(),
        ))?),
        Command::Consumers { action } => Ok(runtime()?.block_on(consumer::commands::consumers(
            &cli.config.nats_url,
            &topics(&cli.config)?,
            action,
        ))?),
        Command::Dlq { action } => Ok(runtime()?.block_on(consumer::commands::dead_letters(
            &cli.config.nats_url,
            action,
        ))?),
        Command::Demo(args) => runtime()?.block_on(crate::demo::run(cli.config, args)),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Builds the application's state: the token verifier, the opened and migrated database, the
/// metrics and the relay's status.
pub fn build(config: &Config) -> Result<AppState, AppError> {
    let auth = auth(config)?;
    let store = Store::open(&StoreConfig {
        path: config.database_path.clone(),
        synchronous: config.sqlite_synchronous,
        readers: 8,
    })?;
    Ok(AppState {
        store,
        auth: Arc::new(auth),
        trusted_proxies: config.trusted_proxies.clone().into(),
        metrics: Arc::new(Metrics::new()),
        relay: config
            .event_outbox_enabled
            .then(|| Arc::new(RelayStatus::default())),
        consumers: Arc::default(),
    })
}

/// Serves the API on `listener`, and runs the relay and the outbox cleanup, until `shutdown`
/// completes; then lets each finish what it is doing.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let topics = topics(&config)?;
    let state = build(&config)?;
    let (stop, stopping) = watch::channel(false);
    let stopped = move || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    };

    let mut tasks = JoinSet::new();
    if config.event_outbox_enabled {
        tasks.spawn(consumer::lag::run(
            state.consumers.clone(),
            config.nats_url.clone(),
            topics.clone(),
            state.metrics.clone(),
            config.consumer_lag_interval,
            stopped(),
        ));
    }
    if let Some(status) = state.relay.clone() {
        tasks.spawn(publish_outbox(
            config.clone(),
            topics,
            state.store.clone(),
            state.metrics.clone(),
            status,
            stopped(),
        ));
    }
    tasks.spawn(relay::cleanup::run(
        state.store.clone(),
        config.event_outbox_retention,
        config.event_outbox_cleanup_interval,
        stopped(),
    ));

    tracing::info!(
        addr = %listener.local_addr()?,
        database = %config.database_path.display(),
        relay = config.event_outbox_enabled,
        "order-service listening"
    );
    let served = axum::serve(
        listener,
        api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop.send(true);
    })
    .await;
    while tasks.join_next().await.is_some() {}
    served?;
    tracing::info!("order-service stopped");
    Ok(())
}

/// Connects to NATS (waiting for it as long as it takes), reconciles the streams, then relays
/// the outbox until `shutdown`. Orders are accepted all along: the outbox holds their events.
async fn publish_outbox(
    config: Config,
    topics: Topics,
    store: Store,
    metrics: Arc<Metrics>,
    status: Arc<RelayStatus>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let reconnected = Arc::new(tokio::sync::Notify::new());
    let mut backoff = Duration::from_millis(200);
    let client = loop {
        tokio::select! {
            () = &mut shutdown => return,
            connected = bus::connect_watched(&config.nats_url, reconnected.clone()) => match connected {
                Ok(client) => break client,
                Err(e) => tracing::warn!(url = %config.nats_url, error = %e, retry_in = ?backoff, "NATS unreachable; orders are kept in the outbox"),
            },
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
    };
    status.set_client(client.clone());
    let js = jetstream::new(client);

    let mut backoff = Duration::from_millis(200);
    loop {
        match bus::reconcile(&js, &topics, config.nats_duplicate_window).await {
            Ok(report) => {
                tracing::info!(%report, "streams reconciled");
                status.set_streams(Ok(StreamsSummary::from(&report)));
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "reconciling streams failed");
                status.set_streams(Err(e.to_string()));
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
    }

    let relay = Relay::new(
        store,
        js.clone(),
        relay_config(&config, &topics),
        metrics,
        status.clone(),
    );
    let relayed = relay.run(shutdown);
    tokio::pin!(relayed);
    let reconciled = reconcile_on_reconnect(
        &js,
        &topics,
        config.nats_duplicate_window,
        &status,
        &reconnected,
    );
    // The watcher never ends by itself; the relay ends on shutdown.
    tokio::select! {
        () = &mut relayed => {}
        () = reconciled => {}
    }
}

/// Reconciles the streams again after every reconnect: a broker that comes back without its
/// store (a fresh container, a wiped disk) has no streams, and every publish would otherwise
/// fail for want of one until its row went dead.
async fn reconcile_on_reconnect(
    js: &jetstream::Context,
    topics: &Topics,
    duplicate_window: Duration,
    status: &RelayStatus,
    reconnected: &tokio::sync::Notify,
) {
    loop {
        tokio::select! {
            () = reconnected.notified() => {}
            () = status.heal_requested() => {}
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            // Publishing waits while a stream's subjects or transform may change under it.
            let paused = status.pause_publishing().await;
            let reconciled = bus::reconcile(js, topics, duplicate_window).await;
            drop(paused);
            match reconciled {
                Ok(report) => {
                    if !report.changed_nothing() {
                        tracing::warn!(%report, "streams were missing or changed after a reconnect; reconciled");
                    }
                    status.set_streams(Ok(StreamsSummary::from(&report)));
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconciling streams after a reconnect failed");
                    status.set_streams(Err(e.to_string()));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// The relay's settings from the service's and the topic table.
pub fn relay_config(config: &Config, topics: &Topics) -> RelayConfig {
    RelayConfig {
        batch_size: config.event_outbox_batch_size,
        publish_batch: config.event_outbox_publish_batch as usize,
        table_topics: Arc::new(topics.iter().map(|t| t.name.clone()).collect()),
        polling_interval: config.event_outbox_polling_interval,
        max_retries: config.event_outbox_max_retries,
        retry: Backoff {
            kind: config.event_outbox_retry_backoff,
            base: config.event_outbox_retry_base,
            max: config.event_outbox_retry_max,
        },
        ack_timeout: config.nats_ack_timeout,
        window: config.event_outbox_publish_window as usize,
    }
}

fn topics(config: &Config) -> Result<Topics, AppError> {
    Ok(match &config.topics_file {
        Some(path) => Topics::load(path)?,
        None => Topics::embedded(),
    })
}

fn auth(config: &Config) -> Result<Auth, AppError> {
    let secret = config
        .auth_jwt_secret
        .as_deref()
        .ok_or(AppError::NoSecret)?;
    Ok(Auth::new(
        secret,
        config.auth_jwt_issuer.clone(),
        config.auth_jwt_audience.clone(),
    )?)
}

fn token(config: &Config, args: &TokenArgs) -> Result<(), AppError> {
    let sub = args.sub.unwrap_or_else(uuid::Uuid::now_v7);
    println!("{}", auth(config)?.issue(sub, args.role, args.ttl));
    Ok(())
}

fn schema(args: &SchemaArgs) -> Result<(), AppError> {
    let render = |topic: Topic| {
        serde_json::to_string_pretty(&topic.schema()).expect("schemas serialize") + "\n"
    };
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        for topic in Topic::ALL {
            std::fs::write(dir.join(format!("{}.json", topic.as_str())), render(topic))?;
        }
        return Ok(());
    }
    let name = args.topic.as_deref().unwrap_or_default();
    let topic = Topic::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Topic::ALL.iter().map(|t| t.as_str()).collect();
        AppError::Usage(format!(
            "unknown topic `{name}`; topics: {}",
            known.join(", ")
        ))
    })?;
    print!("{}", render(topic));
    Ok(())
}

async fn streams(config: &Config, action: StreamsAction) -> Result<(), AppError> {
    let topics = topics(config)?;
    let nats = |e: &dyn std::fmt::Display| AppError::Nats(e.to_string());
    let client = bus::connect(&config.nats_url).await.map_err(|e| nats(&e))?;
    let js = jetstream::new(client);
    let window = config.nats_duplicate_window;
    match action {
        StreamsAction::List => {
            let rows = bus::list(&js, &topics).await.map_err(|e| nats(&e))?;
            print!("{}", bus::streams::format_stream_table(&rows));
        }
        StreamsAction::Diff => {
            let cluster = bus::streams::ClusterSize::from_server_info(&js.client().server_info());
            for plan in bus::streams::stream_configs(&topics, window, &cluster) {
                for clamp in plan.clamps {
                    println!("clamped: {clamp}");
                }
            }
            let drifts = bus::diff(&js, &topics, window)
                .await
                .map_err(|e| nats(&e))?;
            if drifts.is_empty() {
                println!("the streams match the topic table");
            } else {
                print!("{}", bus::streams::format_drift_table(&drifts));
            }
        }
        StreamsAction::Apply => {
            let report = bus::reconcile(&js, &topics, window)
                .await
                .map_err(|e| nats(&e))?;
            println!("{report}");
        }
    }
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
}
