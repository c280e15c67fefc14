//! `pii-bench`: measures pii-ingest against its two limits in one run and prints one table of
//! figures, baselines and ratios (run it through `scripts/bench.sh`, which builds in release mode and
//! starts the services).
//!
//! - SQS side: a bare drain (ReceiveMessage 10 + DeleteMessageBatch, no work, same concurrency) of N
//!   messages, then `pii-ingest run --until-empty` on another N-message queue.
//! - Postgres side: `pii-ingest replay` of M lines (parse, mask, ledger, dedup, one transaction per
//!   batch) against psql's `\copy` of the final rows it leaves, and a bare binary COPY of the M masked
//!   rows; the sink's COPY against `INSERT ... SELECT FROM unnest` at several batch sizes.
//! - Peak RSS of the ingester while it drains, and SentTimestamp-to-commit latency at half of the
//!   measured drain rate.

//!
//! One module per side: [`sqs`] (drain and latency), [`postgres`] (write path), [`memory`] (peak RSS
//! under a backlog and under large bodies); [`harness`] starts processes and makes fresh queues and
//! databases.

mod harness;
mod memory;
mod postgres;
mod proxy;
mod sqs;

use clap::Parser;

#[derive(Parser)]
pub(crate) struct Args {
    /// Passed by `cargo bench`, which runs every bench target with it; ignored.
    #[arg(long, hide = true)]
    pub(crate) bench: bool,
    /// Messages per SQS drain (four drains at each round-trip time).
    #[arg(long, default_value_t = 30_000)]
    pub(crate) messages: usize,
    /// Rows per Postgres measurement.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) rows: usize,
    /// Round-trip times (ms) put between the drains and the emulator by a delaying proxy; the first is
    /// the baseline of the self-sizing receivers.
    #[arg(long, value_delimiter = ',', default_values_t = [0, 20, 50])]
    pub(crate) rtt_ms: Vec<u64>,
    /// Concurrent receivers of the bare drain, and of the ingester when pinned to the same concurrency.
    #[arg(long, default_value_t = 8)]
    pub(crate) receivers: usize,
    /// Rounds of the Postgres measurements (COPY and replays interleaved); the table shows medians.
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: usize,
    /// Seconds of steady load for the latency measurement (0 skips it).
    #[arg(long, default_value_t = 20)]
    pub(crate) latency_seconds: u64,
    /// Also drain a backlog of this many messages and report its peak RSS (0 skips it; the issue's
    /// figure is 1000000, which takes about 8 minutes here).
    #[arg(long, default_value_t = 0)]
    pub(crate) backlog: usize,
    /// The ingester to compare the backlog's CPU with (scripts/bench.sh builds the one from before
    /// this work into target/bench-baseline/).
    #[arg(long)]
    pub(crate) baseline_ingester: Option<std::path::PathBuf>,
    /// Also drain this many bodies of about 1 MiB (each with 4 small logins) and report peak RSS with
    /// default settings and with 5x the batch and 2x the receivers (0 skips it; the figure is
    /// 1500). Fed while the ingester drains, at most 40 large ones queued at a time.
    #[arg(long, default_value_t = 0)]
    pub(crate) large: usize,
    #[arg(long)]
    pub(crate) skip_sqs: bool,
    #[arg(long)]
    pub(crate) skip_postgres: bool,
    #[arg(long, default_value = "http://127.0.0.1:4566")]
    pub(crate) sqs_endpoint: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub(crate) postgres: String,
}

pub(crate) const KEY: &str = "benchmark-key-not-a-secret-0123456789";

pub(crate) struct Row {
    pub(crate) measure: String,
    pub(crate) value: String,
    pub(crate) baseline: String,
    pub(crate) ratio: Option<f64>,
    pub(crate) target: &'static str,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ingester = harness::sibling_binary("pii-ingest")?;
    let mut table = Vec::new();
    let work = tempfile::tempdir()?;
    if !args.skip_postgres {
        postgres::postgres_side(&args, &ingester, work.path(), &mut table).await?;
    }
    if !args.skip_sqs {
        sqs::sqs_side(&args, &ingester, work.path(), &mut table).await?;
    }
    if args.large > 0 {
        memory::large_bodies(&args, &ingester, work.path(), &mut table).await?;
    }
    print_table(&table);
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| measure | pii-ingest | baseline (same run) | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        println!("| {} | {} | {} | {} | {} |", r.measure, r.value, r.baseline, ratio, r.target);
    }
}
