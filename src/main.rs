//! The `order-service` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;
use order_service::{
    cli,
    config::{Cli, Command},
    telemetry,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A one-shot command prints its output, not the service's start-up chatter.
    let level = match cli.command {
        None | Some(Command::Serve) => "info",
        Some(_) => "warn",
    };
    // Held to the end: its drop sends the last spans.
    let _telemetry = telemetry::init(cli.config.log_format, level);
    match cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("order-service: {e}");
            ExitCode::FAILURE
        }
    }
}
