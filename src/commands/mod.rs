//! The command line: `pii-ingest [--config FILE] <command>`, one file per subcommand holding its clap
//! arguments and the function that runs it. `main.rs` parses, loads configuration and calls
//! [`Command::run`]; nothing here is reachable from the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pii_ingest::config::{Config, LogFormat};

mod check_config;
mod completions;
mod drain;
mod erase;
mod export;
mod health;
mod keygen;
mod migrate;
mod rekey;
mod replay;
mod retention;
mod reveal;
mod run;
mod seed;
pub mod stats;
mod verify;

#[derive(Debug, Parser)]
#[command(name = "pii-ingest", version, about = "Drain login events from SQS into Postgres exactly once, PII masked")]
pub struct Cli {
    /// Configuration file (default: ./config.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the queue until SIGINT/SIGTERM (the batch in hand is finished first).
    Run(run::Args),
    /// Apply the embedded migrations (the files `diesel migration run` applies).
    Migrate(migrate::Args),
    /// Send messages to the queue, creating it if missing.
    Seed(seed::Args),
    /// Feed a JSONL file through the write path (backfills, dead-letter dumps). A plain line is keyed
    /// by its content and occurrence, an envelope line as its SQS delivery was: replaying a file twice,
    /// grown, reordered or re-exported, writes only what is new.
    Replay(replay::Args),
    /// Remove rows and quarantine records older than retention.days (--older-than-days N), print
    /// what was removed and record it in retention_audit; --dry-run only counts.
    Retention(retention::Args),
    /// Delete the rows of one user (--user-id), device (--masked-device-id) or ip (--masked-ip) and the
    /// quarantine records holding it, for --reason, recorded in erasure_audit; the messages stay claimed
    /// so no redelivery or replay brings them back; --dry-run only counts.
    Erase(erase::Args),
    /// Write a queue (a dead-letter queue, typically) to an envelope JSONL file for `replay` or
    /// `seed --file`; deletes each message once its line is on disk, or leaves them with --peek.
    Export(export::Args),
    /// Rows, date range, quarantined by reason, ledger entries, last ingest time.
    Stats(stats::Args),
    /// Write an X25519 key pair for sealing PII: DIR/seal.pub (give it to the ingester as
    /// sealing.public_key_file) and DIR/seal.key (mode 0600; only for people allowed to reveal).
    Keygen(keygen::Args),
    /// Print the raw ip and device_id of selected rows; every reveal is audited (reveal_audit).
    Reveal(reveal::Args),
    /// Move rows to the current keys in resumable batches: re-seal to sealing.public_key_file, and
    /// with --tokens re-derive masked_ip/masked_device_id under the current masking key.
    Rekey(rekey::Args),
    /// Print the effective configuration, secrets redacted.
    CheckConfig,
    /// Check what the tables hold: token format, known key ids, required columns, create_date
    /// against sent_at, quarantine reason codes, per-day quarantine share, and (with the keys) that
    /// sealed values re-derive to their tokens. Exit 1 naming each failed check; never prints a value.
    Verify(verify::Args),
    /// Ask a running instance's /healthz (or /readyz): exit 0 when it answers 200, else 1. The
    /// container health check (the image has no curl).
    Health(health::Args),
    /// Print a shell completion script: `pii-ingest completions bash > /etc/bash_completion.d/pii-ingest`.
    Completions(completions::Args),
}

impl Command {
    /// Runs a command that needs no configuration (so a broken one cannot stop it), or `None`.
    pub fn run_without_config(&self) -> Option<ExitCode> {
        match self {
            Command::Completions(args) => Some(completions::run(args)),
            _ => None,
        }
    }

    /// Runs the command; the exit code is the process's.
    pub async fn run(self, config: Config) -> anyhow::Result<ExitCode> {
        match self {
            Command::Run(args) => run::run(args, config).await,
            Command::Migrate(args) => migrate::run(args, &config).await,
            Command::Seed(args) => seed::run(args, &config).await,
            Command::Replay(args) => replay::run(args, config).await,
            Command::Retention(args) => retention::run(args, &config).await,
            Command::Erase(args) => erase::run(args, &config).await,
            Command::Export(args) => export::run(args, &config).await,
            Command::Stats(args) => stats::run(args, &config).await,
            Command::Keygen(args) => keygen::run(args),
            Command::Reveal(args) => reveal::run(args, &config).await,
            Command::Rekey(args) => rekey::run(args, &config).await,
            Command::CheckConfig => Ok(check_config::run(&config)),
            Command::Verify(args) => verify::run(args, &config).await,
            Command::Health(args) => health::run(args, &config).await,
            Command::Completions(args) => Ok(completions::run(&args)),
        }
    }
}
