//! The command line: what each subcommand does. `serve` runs the service ([`crate::app`]),
//! `demo` the demo ([`crate::demo`]); the others are one-shot tools, `outbox` among them
//! ([`crate::relay::repair`]).

use async_nats::jetstream;
use tokio::net::TcpListener;

use crate::api::openapi;
use crate::app::{self, AppError, auth, topics};
use crate::bus;
use crate::config::{Cli, Command, Config, OutboxAction, SchemaArgs, StreamsAction, TokenArgs};
use crate::consumer;
use crate::domain::Topic;
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::progress::outbox::OutboxProgress;
use crate::relay::Relay;
use crate::relay::repair::{self, RepairError, Tail};
use chrono::Utc;

/// Runs the command line.
pub fn execute(cli: Cli) -> Result<(), AppError> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime()?.block_on(async {
            let listener = TcpListener::bind(cli.config.http_addr).await?;
            app::run(cli.config, listener, shutdown_signal()).await
        }),
        Command::Token(args) => token(&cli.config, &args),
        Command::Identities { action } => Ok(crate::identities::execute(
            action,
            &topics(&cli.config)?,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )?),
        Command::Schema(args) => schema(&args),
        Command::Streams { action } => runtime()?.block_on(streams(&cli.config, action)),
        Command::Tail(args) => Ok(runtime()?.block_on(consumer::commands::tail(
            &cli.config.nats,
            args,
            shutdown_signal(),
        ))?),
        Command::Consumers { action } => Ok(runtime()?.block_on(consumer::commands::consumers(
            &cli.config.nats,
            &topics(&cli.config)?,
            action,
        ))?),
        Command::Dlq { action } => {
            // Shown once a replay knows how many letters it sends, ended before it prints.
            let mut shown: Option<Progress> = None;
            let replayed = |done: usize, total: usize| {
                if total == 0 {
                    return;
                }
                let progress = shown.get_or_insert_with(|| {
                    Progress::count("dlq replay", "letters", Some(total as u64))
                });
                progress.set_done(done as u64);
                if done == total {
                    progress.finish();
                }
            };
            Ok(runtime()?.block_on(consumer::commands::dead_letters(
                &cli.config.nats,
                action,
                replayed,
            ))?)
        }
        Command::Demo(args) => runtime()?.block_on(crate::demo::run(cli.config, args)),
        Command::Openapi => {
            print!("{}", openapi::render(&openapi::document()));
            Ok(())
        }
        Command::Outbox { action } => runtime()?.block_on(outbox(&cli.config, action)),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn token(config: &Config, args: &TokenArgs) -> Result<(), AppError> {
    let sub = args.sub.unwrap_or_else(uuid::Uuid::now_v7);
    println!("{}", auth(config)?.issue(sub, args.role, args.ttl)?);
    Ok(())
}

fn schema(args: &SchemaArgs) -> Result<(), AppError> {
    let render = |topic: Topic| {
        serde_json::to_string_pretty(&topic.schema()).expect("schemas serialize") + "\n"
    };
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        for topic in Topic::ALL.into_iter().chain(Topic::SUBSCRIBER_OWNED) {
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
    let client = bus::connect(&config.nats).await.map_err(|e| nats(&e))?;
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

/// `outbox verify` and `outbox repair`: the broker-loss check and repair the service runs on every
/// reconnect and every EVENT_OUTBOX_VERIFY_INTERVAL, on demand; the repair reconciles the streams
/// first, as the service does at start-up. It publishes without
/// the service's relay holding back: run it while the service is stopped, or let the service
/// repair by itself.
async fn outbox(config: &Config, action: OutboxAction) -> Result<(), AppError> {
    let topics = topics(config)?;
    let store = crate::store::Store::open(&crate::store::StoreConfig {
        path: config.database_path.clone(),
        synchronous: config.sqlite_synchronous,
        readers: 2,
    })?;
    let client = bus::connect(&config.nats)
        .await
        .map_err(|e| AppError::Nats(e.to_string()))?;
    let js = app::relay_jetstream(client, config);
    let relay = Relay::new(
        store,
        js.clone(),
        app::relay_config(config, &topics),
        std::sync::Arc::new(Metrics::new()),
        std::sync::Arc::default(),
    );
    let since = |args: crate::config::SinceArgs| {
        args.since
            .map(|window| Utc::now() - chrono::Duration::from_std(window).unwrap_or_default())
    };
    let failed = |e: RepairError| match e {
        RepairError::Store(e) => AppError::Store(e),
        other => AppError::Nats(other.to_string()),
    };
    match action {
        OutboxAction::Verify(args) => {
            let progress = std::sync::Arc::new(OutboxProgress::verify());
            let checks = relay
                .observed_by(progress.clone())
                .verify(since(args), Tail::Read)
                .await
                .map_err(AppError::Store)?;
            progress.finish();
            if checks.is_empty() {
                println!("no acknowledged events in the window");
            } else {
                print!("{}", repair::format_checks(&checks));
            }
            let missing: usize = checks.iter().map(|c| c.missing.len()).sum();
            let copies: usize = checks.iter().map(|c| c.copies.len()).sum();
            let unchecked: Vec<&str> = checks
                .iter()
                .filter(|c| c.error.is_some())
                .map(|c| c.stream.as_str())
                .collect();
            if missing > 0 || copies > 0 {
                return Err(AppError::Incomplete(format!(
                    "{missing} acknowledged events are missing from their streams and {copies} \
                     are stored twice; `order-service outbox repair` puts them right"
                )));
            }
            if !unchecked.is_empty() {
                return Err(AppError::Nats(format!(
                    "could not check {}",
                    unchecked.join(", ")
                )));
            }
        }
        OutboxAction::Repair(args) => {
            // A broker that lost its store has lost the streams too: create them first, as the
            // service does at start-up.
            bus::reconcile(&js, &topics, config.nats_duplicate_window)
                .await
                .map_err(|e| AppError::Nats(e.to_string()))?;
            let progress = std::sync::Arc::new(OutboxProgress::repair());
            let repairs = relay
                .observed_by(progress.clone())
                .repair(since(args), Tail::Read)
                .await
                .map_err(failed)?;
            progress.finish();
            if repairs.is_empty() {
                println!("every stream holds what it acknowledged; nothing to repair");
            } else {
                print!("{}", repair::format_repairs(&repairs));
            }
            let failed: usize = repairs
                .iter()
                .map(|r| r.failed + usize::from(r.error.is_some()))
                .sum();
            if failed > 0 {
                return Err(AppError::Incomplete(format!(
                    "{failed} events could not be published again; the log says why"
                )));
            }
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
