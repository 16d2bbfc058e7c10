//! The command line: what each subcommand does. `serve` runs the service ([`crate::app`]),
//! `demo` the demo ([`crate::demo`]); the others are one-shot tools.

use async_nats::jetstream;
use tokio::net::TcpListener;

use crate::app::{self, AppError, auth, topics};
use crate::bus;
use crate::config::{Cli, Command, Config, SchemaArgs, StreamsAction, TokenArgs};
use crate::consumer;
use crate::domain::Topic;

/// Runs the command line.
pub fn execute(cli: Cli) -> Result<(), AppError> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime()?.block_on(async {
            let listener = TcpListener::bind(cli.config.http_addr).await?;
            app::run(cli.config, listener, shutdown_signal()).await
        }),
        Command::Token(args) => token(&cli.config, &args),
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
            Ok(runtime()?.block_on(consumer::commands::dead_letters(&cli.config.nats, action))?)
        }
        Command::Demo(args) => runtime()?.block_on(crate::demo::run(cli.config, args)),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
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
