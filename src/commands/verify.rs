//! `pii-ingest verify`: post-load checks over what the tables hold (see `pii_ingest::verify`). Exit 0
//! when every check passes, 1 when one fails (one line each on stderr naming it), 2 when the
//! configuration or a key file does not allow the checks to run.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;

use pii_ingest::config::Config;
use pii_ingest::seal::{Opener, Sealer};
use pii_ingest::verify::{self, Options, Rederive, Verdict};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Only rows whose create_date (quarantine records: the UTC date of sent_at) is on or after
    /// DATE (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    since: Option<NaiveDate>,
    /// Private key(s) of the keys rows are sealed to (repeatable): with the masking key, a sample of
    /// rows is opened and their tokens re-derived. Nothing opened is printed.
    #[arg(long, value_name = "FILE")]
    private_key_file: Vec<PathBuf>,
    /// Rows re-derived from their sealed values.
    #[arg(long, default_value_t = 100, value_name = "N")]
    sample: i64,
}

pub async fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let options = match options(&args, config) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(2));
        }
    };
    let report = verify::verify(config.postgres.url.expose(), &options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    for check in report.failed() {
        eprintln!("verify: check {} failed: {}", check.name, check.detail);
    }
    if report.ok {
        let skipped = report.checks.iter().filter(|c| c.verdict == Verdict::Skipped).count();
        eprintln!("verify: ok ({} checks passed, {skipped} skipped)", report.checks.len() - skipped);
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

/// The key ids the tables may hold and the keys for re-deriving tokens; `Err` names the setting
/// or file that stops the checks from running.
fn options(args: &Args, config: &Config) -> Result<Options, String> {
    let masker = pii_ingest::startup::masker(config);
    let current_mask = match (&masker, &config.masking.key_id) {
        (Ok(masker), _) => masker.key_id().to_owned(),
        (Err(_), Some(key_id)) => key_id.clone(),
        (Err(error), None) => return Err(format!("{error} (or masking.key_id: verify needs the current key id)")),
    };
    let mut mask_key_ids = vec![current_mask];
    mask_key_ids.extend(config.masking.retired_key_ids.iter().cloned());
    let mut seal_key_ids = Vec::new();
    if let Some(path) = &config.sealing.public_key_file {
        let sealer =
            Sealer::from_file(path).map_err(|e| format!("configuration key `sealing.public_key_file`: {e}"))?;
        seal_key_ids.push(sealer.key_id().to_owned());
    }
    seal_key_ids.extend(config.sealing.retired_key_ids.iter().cloned());
    let rederive = match args.private_key_file.is_empty() {
        true => None,
        false => {
            let masker =
                masker.map_err(|e| format!("{e} (--private-key-file re-derives tokens with the masking key)"))?;
            let openers = args
                .private_key_file
                .iter()
                .map(|path| Opener::from_file(path).map_err(|e| format!("--private-key-file: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            Some(Rederive { masker, openers, sample: args.sample.max(1) })
        }
    };
    Ok(Options { since: args.since, mask_key_ids, seal_key_ids, rederive })
}
