//! Builds everything production builds and runs it until shutdown; tests use the same code.
//!
//! One shutdown reaches everything: the HTTP server stops taking requests and finishes the ones in
//! flight, the relay finishes and records the batch in flight, and [`run`] returns when both are
//! done.

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::api::{self, AppState};
use crate::auth::{Auth, AuthConfigError};
use crate::backoff::Backoff;
use crate::bus::{self, Topics, TopicsError};
use crate::config::Config;
use crate::consumer;
use crate::metrics::Metrics;
use crate::ops::{self, Ops};
use crate::relay::streams::{
    Kept, START_BACKOFF, hold_for_repair, reconcile, reconcile_on_reconnect, repair_at_start,
};
use crate::relay::{self, Relay, RelayConfig, RelayStatus, leaderless};
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreConfig, StoreError};

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
    /// A consumer group's identity could not be made or written.
    #[error(transparent)]
    Identity(#[from] crate::identities::IdentityError),
    /// A check found something wrong, or a repair left something undone; the text says what.
    #[error("{0}")]
    Incomplete(String),
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
        ops: Arc::new(Ops::new(topics(config)?)),
        idempotency_in_flight: Arc::default(),
        write_limit: Arc::new(crate::api::limits::WriteLimit::new(
            config.write_rate_limit,
            config.write_rate_burst,
            config.write_rate_limit_exempt.clone(),
        )),
        request_timeout: config.request_timeout,
        catalogue_prices: config.catalogue_prices,
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
    let stop = Shutdown::new();

    let mut tasks = JoinSet::new();
    if config.event_outbox_enabled {
        tasks.spawn(consumer::lag::run(
            state.consumers.clone(),
            config.nats.clone(),
            topics.clone(),
            state.metrics.clone(),
            config.consumer_lag_interval,
            stop.signal(),
        ));
    }
    if let Some(status) = state.relay.clone() {
        tasks.spawn(publish_outbox(
            config.clone(),
            topics,
            state.store.clone(),
            state.metrics.clone(),
            status,
            stop.signal(),
        ));
    }
    tasks.spawn(ops::run(
        state.ops.clone(),
        state.store.clone(),
        state.metrics.clone(),
        config.event_outbox_enabled.then(|| config.nats.clone()),
        ops::SAMPLE_INTERVAL,
        stop.signal(),
    ));
    tasks.spawn(relay::cleanup::run(
        state.store.clone(),
        config.event_outbox_retention,
        config.event_outbox_cleanup_interval,
        stop.signal(),
    ));
    tasks.spawn(crate::store::idempotency::prune(
        state.store.clone(),
        config.idempotency_key_retention,
        config.event_outbox_cleanup_interval,
        stop.signal(),
    ));

    tracing::info!(
        addr = %listener.local_addr()?,
        database = %config.database_path.display(),
        relay = config.event_outbox_enabled,
        "order-service listening"
    );
    let limits = api::server::ServerLimits {
        header_read_timeout: config.http_header_read_timeout,
        max_header_bytes: config.http_max_header_bytes as usize,
        max_connections: config.http_max_connections as usize,
    };
    api::server::serve(listener, api::router(state), limits, async move {
        shutdown.await;
        stop.trigger();
    })
    .await;
    while tasks.join_next().await.is_some() {}
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
    let started = async {
        let client = connect(&config.nats, &reconnected).await;
        status.set_client(client.clone());
        let js = relay_jetstream(client, &config);
        reconcile(kept(&js, &topics, &config, &status)).await;
        js
    };
    let js = tokio::select! {
        () = &mut shutdown => return,
        js = started => js,
    };

    let relay = Relay::new(
        store,
        js.clone(),
        relay_config(&config, &topics),
        metrics.clone(),
        status.clone(),
    );
    // A broker that lost its store while the service was stopped gets each stream's events back
    // before the relay publishes anything newer to that stream; the other streams go on.
    let held = tokio::select! {
        () = &mut shutdown => return,
        held = hold_for_repair(&relay) => held,
    };
    let relayed = relay.clone().run(shutdown);
    tokio::pin!(relayed);
    let reconciled = async {
        repair_at_start(&relay, held).await;
        reconcile_on_reconnect(
            kept(&js, &topics, &config, &status),
            &reconnected,
            &relay,
            config.event_outbox_verify_interval,
        )
        .await
    };
    let leaderless = async {
        match config.nats_stream_replace_replica_after {
            std::time::Duration::ZERO => std::future::pending().await,
            after => leaderless::watch(&js, &topics, after, &metrics).await,
        }
    };
    // The watcher never ends by itself; the relay ends on shutdown.
    tokio::select! {
        () = &mut relayed => {}
        () = reconciled => {}
        () = leaderless => {}
    }
}

/// Connects to NATS, trying again as long as it takes; `reconnected` is notified after every
/// reconnect of the client.
async fn connect(
    nats: &bus::NatsSettings,
    reconnected: &Arc<tokio::sync::Notify>,
) -> async_nats::Client {
    let mut waits = START_BACKOFF.waits();
    loop {
        match bus::connect_watched(nats, reconnected.clone()).await {
            Ok(client) => return client,
            Err(e) => {
                let retry_in = waits.next_wait();
                tracing::warn!(url = %nats.masked_url(), error = %e, ?retry_in, "NATS unreachable; orders are kept in the outbox");
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// The JetStream context the relay publishes with. Its timeout is `NATS_ACK_TIMEOUT`: with
/// `jetstream::new` the context's 5 s default gives up on a PubAck first, whatever is configured.
pub fn relay_jetstream(client: async_nats::Client, config: &Config) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(config.nats_ack_timeout)
        .build(client)
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
        duplicate_window: config.nats_duplicate_window,
        window: config.event_outbox_publish_window as usize,
    }
}

/// The topic table: the configured file, or the built-in copy.
pub(crate) fn topics(config: &Config) -> Result<Topics, AppError> {
    Ok(match &config.topics_file {
        Some(path) => Topics::load(path)?,
        None => Topics::embedded(),
    })
}

/// The token verifier of the configured secret or public key (and private key, to mint): the
/// service's, its `token` command's, and what its tests and demo mint with.
pub fn auth(config: &Config) -> Result<Auth, AppError> {
    let Some(public) = &config.auth_jwt_public_key_file else {
        let secret = config
            .auth_jwt_secret
            .as_ref()
            .ok_or(AppError::NoSecret)?
            .expose();
        return Ok(Auth::new(
            secret,
            config.token_issuer(),
            config.token_audience(),
        )?);
    };
    if config.auth_jwt_secret.is_some() {
        // Two ways to verify, one of them a shared secret: the key pair would protect nothing.
        return Err(AuthConfigError::Key(
            "AUTH_JWT_SECRET and AUTH_JWT_PUBLIC_KEY_FILE are both set; set one".into(),
        )
        .into());
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            AuthConfigError::Key(format!("cannot read the key file {}: {e}", path.display()))
        })
    };
    let private = config
        .auth_jwt_private_key_file
        .as_deref()
        .map(read)
        .transpose()?;
    Ok(Auth::with_public_key(
        &read(public)?,
        private.as_deref(),
        config.token_issuer(),
        config.token_audience(),
    )?)
}

/// The service's streams: the topic table's, and the consumer groups' infrastructure.
fn kept<'a>(
    js: &'a jetstream::Context,
    topics: &'a Topics,
    config: &Config,
    status: &'a RelayStatus,
) -> Kept<'a> {
    Kept {
        js,
        topics,
        duplicate_window: config.nats_duplicate_window,
        status,
        also: Some(consumer_infrastructure),
    }
}

/// Creates the consumer groups' dead-letter streams and their leases' bucket when missing: the
/// subscribers' identity may not create streams (nats/identities.conf), so their groups wait for
/// the service to. Run after every reconcile of the table's streams.
fn consumer_infrastructure(js: jetstream::Context) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        if let Err(e) = consumer::dlq::ensure_streams(&js).await {
            tracing::warn!(error = %e, "creating the dead-letter streams failed; consumer groups wait for them");
        }
        if let Err(e) = consumer::ensure_bucket(&js).await {
            tracing::warn!(error = %e, "creating the consumer leases' bucket failed; consumer groups wait for them");
        }
    })
}
