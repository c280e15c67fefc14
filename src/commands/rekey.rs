//! `pii-ingest rekey`: move rows to the current keys in resumable batches (see docs/keys.md).

use std::path::PathBuf;
use std::process::ExitCode;

use pii_ingest::config::Config;
use pii_ingest::seal::{Opener, Sealer};

#[derive(Debug, clap::Args)]
pub struct Args {
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
}

pub async fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let openers = args.private_key_file.iter().map(|path| Opener::from_file(path)).collect::<Result<Vec<_>, _>>()?;
    let sealer = match (args.no_reseal, &config.sealing.public_key_file) {
        (true, _) => None,
        (false, Some(path)) => Some(Sealer::from_file(path)?),
        (false, None) => anyhow::bail!("re-sealing needs sealing.public_key_file (or pass --tokens --no-reseal)"),
    };
    let masker = if args.tokens { Some(pii_ingest::startup::masker(config)?) } else { None };
    let done = pii_ingest::rekey::rekey(
        config.postgres.url.expose(),
        &openers,
        sealer.as_ref(),
        masker.as_ref(),
        args.batch.max(1),
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&done)?);
    Ok(ExitCode::SUCCESS)
}
