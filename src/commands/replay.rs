//! `pii-ingest replay --file F.jsonl`: a backfill through the same write path as `run`. A plain
//! line's key is its HMAC and its occurrence among equal lines, an envelope's the key its SQS delivery
//! had, so replaying a file twice, grown, reordered or re-exported, writes only what is new.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use pii_ingest::config::Config;
use pii_ingest::pipeline::Receivers;
use pii_ingest::source::FileSource;
use pii_ingest::source::file::Keying;
use pii_ingest::{progress, startup};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, value_name = "F.jsonl")]
    file: PathBuf,
    /// Timestamp for every plain line (RFC 3339); default: the file's modification time. Envelopes
    /// carry their own.
    #[arg(long)]
    sent_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Rows per transaction (a backfill favours large batches over latency).
    #[arg(long, default_value_t = 5000)]
    batch_rows: usize,
    /// Skip the local ledger: Postgres' claims still drop lines already loaded. Recording
    /// ids in sled is most of a backfill's CPU; without it a replay is about twice as fast.
    #[arg(long)]
    no_ledger: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args, mut config: Config) -> anyhow::Result<ExitCode> {
    let file = &args.file;
    let keying = Keying {
        masker: startup::masker(&config)?,
        attribute: config.sqs.idempotency_key_attribute.clone().unwrap_or_default(),
    };
    let source =
        FileSource::open(file, args.sent_at, keying).with_context(|| format!("cannot read {}", file.display()))?;
    // The bar's length costs a pass over the file: only worth it where a bar is drawn.
    use std::io::IsTerminal;
    let lines = if std::io::stderr().is_terminal() { count_lines(file).unwrap_or(0) } else { 0 };
    let mut settings = startup::settings(&config.pipeline, true);
    settings.batch_max_rows = args.batch_rows.clamp(1, pii_ingest::sink::MAX_ROWS_PER_TRANSACTION);
    // Readers take turns on the file and judge their chunks in parallel; the writer batches them.
    let parallelism = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    settings.receivers = Receivers::pinned(parallelism.min(settings.receivers.max));
    if args.no_ledger {
        // Never opened: the store stays untouched (and unlocked for a `run` beside this replay).
        config.ledger.enabled = false;
    }
    let pipeline = startup::pipeline_over(&config, source, settings).await?;
    super::drain::drain(pipeline, args.json, Some(progress::bar(lines, "replaying"))).await
}

/// Lines in a file, for the progress bar, read in chunks (a backfill file may be larger than memory).
fn count_lines(path: &Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0; 1 << 20];
    let mut lines = 0;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buffer[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
}
