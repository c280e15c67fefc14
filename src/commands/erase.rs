//! `pii-ingest erase`: delete the rows of one user, device or ip on request (the right to erasure),
//! print what was removed and record it in `erasure_audit`; the erased messages stay claimed, so no
//! redelivery or replay brings them back.

use std::process::ExitCode;

use pii_ingest::config::Config;
use pii_ingest::erasure::Selector;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Erase this user's rows (the raw user id, as sent).
    #[arg(long, group = "selector", required = true)]
    user_id: Option<String>,
    /// Erase the rows of this device: a masked_device_id token.
    #[arg(long, group = "selector")]
    masked_device_id: Option<String>,
    /// Erase the rows of this ip: a masked_ip token.
    #[arg(long, group = "selector")]
    masked_ip: Option<String>,
    /// Why (stored in the audit record).
    #[arg(long)]
    reason: String,
    /// Only count what would be erased; erase nothing, record nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let selector = match (args.user_id, args.masked_device_id, args.masked_ip) {
        (Some(v), ..) => Selector::UserId(v),
        (_, Some(v), _) => Selector::MaskedDeviceId(v),
        (.., Some(v)) => Selector::MaskedIp(v),
        _ => unreachable!("clap requires one selector"),
    };
    let masker = pii_ingest::startup::masker(config)?;
    let url = config.postgres.url.expose();
    let erased = pii_ingest::erasure::erase(url, &masker, &selector, &args.reason, args.dry_run).await?;
    println!("{}", serde_json::to_string_pretty(&erased)?);
    Ok(ExitCode::SUCCESS)
}
