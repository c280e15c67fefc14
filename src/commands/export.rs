//! `pii-ingest export --out F.jsonl`: write the configured queue (or `--queue-name`, a dead-letter
//! queue typically) to an envelope file that `replay` and `seed --file` read.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use pii_ingest::config::Config;
use pii_ingest::export;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The envelope JSONL file to write (appended to if it exists).
    #[arg(long, value_name = "F.jsonl")]
    out: PathBuf,
    /// The queue to export, instead of sqs.queue_name (e.g. the dead-letter queue).
    #[arg(long, value_name = "NAME")]
    queue_name: Option<String>,
    /// Leave the messages in the queue (made visible again at the end). Each peek still counts as a
    /// receive towards the queue's redrive policy.
    #[arg(long)]
    peek: bool,
    /// Export at most N messages.
    #[arg(long, value_name = "N", default_value_t = usize::MAX)]
    max: usize,
}

pub async fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let client = pii_ingest::source::sqs::client(&config.sqs).await;
    let url = match (&args.queue_name, &config.sqs.queue_url) {
        (Some(name), _) => pii_ingest::source::sqs::queue_url(&client, name).await?,
        (None, Some(url)) => url.clone(),
        (None, None) => pii_ingest::source::sqs::queue_url(&client, &config.sqs.queue_name).await?,
    };
    let done = export::export(&client, &url, &args.out, args.peek, args.max)
        .await
        .with_context(|| format!("export of {url} stopped"))?;
    let verb = if args.peek { "left in the queue" } else { "deleted from the queue" };
    println!(
        "exported {} message(s) to {}; {} {verb}",
        done.written,
        args.out.display(),
        if args.peek { done.written } else { done.deleted }
    );
    Ok(ExitCode::SUCCESS)
}
