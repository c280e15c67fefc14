//! The `pii-ingest` binary: parse the command line, load configuration, init logging, dispatch to
//! the subcommand (one file each under `commands/`).

mod commands;

use std::process::ExitCode;

use clap::Parser;

use commands::Cli;
use pii_ingest::config::Config;
use pii_ingest::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(code) = cli.command.run_without_config() {
        return code;
    }
    let config = Config::figment(cli.config.as_deref()).and_then(|mut figment| {
        if let Some(format) = cli.log_format {
            figment = figment.merge(("log.format", format));
        }
        Config::from_figment(figment)
    });
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    // Built after the configuration is read: it says how many threads (pipeline.worker_threads). One
    // is a current-thread runtime: no work stealing, no wake-ups across threads.
    let runtime = match config.pipeline.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        telemetry::init(&config.log);
        match Box::pin(cli.command.run(config)).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        }
    })
}
