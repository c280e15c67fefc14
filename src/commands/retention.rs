//! `pii-ingest retention`: remove rows and quarantine records older than `retention.days` (or
//! `--older-than-days`), print what was removed and record it in `retention_audit`.

use std::process::ExitCode;

use pii_ingest::config::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep this many days (default: retention.days).
    #[arg(long, value_name = "N")]
    older_than_days: Option<u32>,
    /// Only count what would be removed; remove nothing, record nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let Some(days) = args.older_than_days.or(config.retention.days) else {
        anyhow::bail!("no retention period: set retention.days or pass --older-than-days N");
    };
    let cutoff = pii_ingest::retention::cutoff(chrono::Utc::now().date_naive(), days);
    let removed = pii_ingest::retention::apply(config.postgres.url.expose(), cutoff, args.dry_run).await?;
    println!("{}", serde_json::to_string_pretty(&removed)?);
    Ok(ExitCode::SUCCESS)
}
