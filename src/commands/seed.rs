//! `pii-ingest seed`: send a JSONL file (one message per line: a plain line with the idempotency key
//! its `replay` would give it, an envelope re-driven as the message it was) or N synthetic logins to
//! the queue, creating the queue if it is missing.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use pii_ingest::config::Config;
use pii_ingest::{progress, seed};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Send each non-blank line of a JSONL file as one message; envelope lines (`pii-ingest export`)
    /// are re-driven with the MessageId and idempotency key they had.
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
    /// With --file: send plain lines without idempotency keys (every send then becomes new rows).
    #[arg(long)]
    no_keys: bool,
    /// Concurrent SendMessageBatch calls.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

pub async fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let messages = match (&args.file, args.generate) {
        (Some(path), _) => {
            // Plain lines are keyed by their HMAC, as `replay` keys them: that takes the masking key.
            let masker = match args.no_keys {
                true => None,
                false => Some(
                    pii_ingest::startup::masker(config)
                        .context("seed --file keys each line with the masking key (or pass --no-keys)")?,
                ),
            };
            let attribute = config.sqs.idempotency_key_attribute.as_deref().unwrap_or_default();
            seed::file_messages(path, masker.as_ref(), attribute)?
        }
        (None, Some(n)) => seed::generate(n, seed::Mix { bad: args.bad_share, repeat: args.repeat_share }, args.seed),
        (None, None) => unreachable!("clap requires --file or --generate"),
    };
    let client = pii_ingest::source::sqs::client(&config.sqs).await;
    let url = match &config.sqs.queue_url {
        Some(url) => url.clone(),
        None => seed::ensure_queue(&client, &config.sqs.queue_name, config.sqs.visibility_timeout_seconds)
            .await
            .context("failed to create or find the queue")?,
    };
    let started = std::time::Instant::now();
    let attribute = config.sqs.idempotency_key_attribute.as_deref().filter(|a| !a.is_empty());
    let bar = progress::bar(messages.len() as u64, "sending");
    let sent = seed::send(&client, &url, attribute, messages, args.concurrency, |n| bar.inc(n as u64)).await?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!("sent {sent} messages to {url} in {seconds:.2} s ({:.0} msg/s)", sent as f64 / seconds.max(1e-9));
    Ok(ExitCode::SUCCESS)
}
