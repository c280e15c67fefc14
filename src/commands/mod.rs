//! The command line: `pii-ingest [--config FILE] <command>`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use pii_ingest::config::LogFormat;

pub mod stats;

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
    Run {
        /// Exit 0 once the queue has no visible and no in-flight message.
        #[arg(long)]
        until_empty: bool,
        /// Print the final report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply the embedded migrations (the files `diesel migration run` applies).
    Migrate {
        /// Do not create the database when it is missing.
        #[arg(long)]
        no_create_db: bool,
    },
    /// Send messages to the queue, creating it if missing.
    Seed {
        /// Send each non-blank line of a JSONL file as one message.
        #[arg(long, value_name = "F.jsonl", conflicts_with = "generate", required_unless_present = "generate")]
        file: Option<PathBuf>,
        /// Send N synthetic logins shaped like the sample.
        #[arg(long, value_name = "N")]
        generate: Option<usize>,
        /// With --generate: share of malformed messages (0.0 to 1.0).
        #[arg(long, default_value_t = 0.0)]
        bad_share: f64,
        /// With --generate: share of bodies repeating an earlier one (0.0 to 1.0).
        #[arg(long, default_value_t = 0.0)]
        repeat_share: f64,
        /// With --generate: random seed, for reproducible loads.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// With --file: send without idempotency keys (every send then becomes new rows).
        #[arg(long)]
        no_keys: bool,
        /// Concurrent SendMessageBatch calls.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Feed a JSONL file through the write path (backfills, dead-letter dumps). Each line's id is the
    /// file's content hash + its line number: replaying a file twice writes nothing new.
    Replay {
        #[arg(long, value_name = "F.jsonl")]
        file: PathBuf,
        /// Timestamp for every line (RFC 3339); default: the file's modification time.
        #[arg(long)]
        sent_at: Option<chrono::DateTime<chrono::Utc>>,
        /// Rows per transaction (a backfill favours large batches over latency).
        #[arg(long, default_value_t = 5000)]
        batch_rows: usize,
        /// Skip the local ledger: Postgres' unique key still drops lines already loaded. Recording
        /// ids in sled is most of a backfill's CPU; without it a replay is about twice as fast.
        #[arg(long)]
        no_ledger: bool,
        /// Print the final report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rows, date range, quarantined by reason, ledger entries, last ingest time.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write an X25519 key pair for sealing PII: DIR/seal.pub (give it to the ingester as
    /// sealing.public_key_file) and DIR/seal.key (mode 0600; only for people allowed to reveal).
    Keygen {
        #[arg(long, value_name = "DIR", default_value = "var/keys")]
        out: PathBuf,
    },
    /// Print the raw ip and device_id of selected rows; every reveal is audited (reveal_audit).
    Reveal {
        /// The private key file from `keygen`.
        #[arg(long, value_name = "FILE")]
        private_key_file: PathBuf,
        /// Why these values are needed (stored in the audit record).
        #[arg(long)]
        reason: String,
        /// Who is asking (default: $USER).
        #[arg(long)]
        who: Option<String>,
        #[arg(long, group = "selector", required = true)]
        message_id: Option<String>,
        #[arg(long, group = "selector")]
        user_id: Option<String>,
        /// A masked_ip token.
        #[arg(long, group = "selector")]
        masked_ip: Option<String>,
        /// A masked_device_id token.
        #[arg(long, group = "selector")]
        masked_device_id: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Move rows to the current keys in resumable batches: re-seal to sealing.public_key_file, and
    /// with --tokens re-derive masked_ip/masked_device_id under the current masking key.
    Rekey {
        /// Private key(s) of the keys rows are sealed to now (repeatable).
        #[arg(long, value_name = "FILE", required = true)]
        private_key_file: Vec<PathBuf>,
        /// Also re-derive HMAC tokens under the configured masking key.
        #[arg(long)]
        tokens: bool,
        /// Do not re-seal (only with --tokens).
        #[arg(long, requires = "tokens")]
        no_reseal: bool,
        /// Rows per transaction.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
    /// Print the effective configuration, secrets redacted.
    CheckConfig,
}
