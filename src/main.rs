//! The `order-service` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;
use order_service::{cli, config::Cli, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.config.log_format);
    match cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("order-service: {e}");
            ExitCode::FAILURE
        }
    }
}
