//! Builds everything production builds and runs it until shutdown; tests use the same code.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::auth::{Auth, AuthConfigError};
use crate::config::{Cli, Command, Config, SchemaArgs, TokenArgs};
use crate::domain::Topic;
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
    /// Listening or serving failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A command's arguments are wrong.
    #[error("{0}")]
    Usage(String),
}

/// Runs the command line.
pub fn execute(cli: Cli) -> Result<(), AppError> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let listener = TcpListener::bind(cli.config.http_addr).await?;
                run(cli.config, listener, shutdown_signal()).await
            })
        }
        Command::Token(args) => token(&cli.config, &args),
        Command::Schema(args) => schema(&args),
    }
}

/// Builds the application's state: the token verifier and the opened, migrated database.
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
    })
}

/// Serves the API on `listener` until `shutdown` completes, then finishes the requests in flight.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let state = build(&config)?;
    tracing::info!(addr = %listener.local_addr()?, database = %config.database_path.display(), "order-service listening");
    axum::serve(
        listener,
        api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    tracing::info!("order-service stopped");
    Ok(())
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
