//! `pii-ingest keygen`: write an X25519 key pair for sealing raw PII (see docs/keys.md).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, value_name = "DIR", default_value = "var/keys")]
    out: PathBuf,
}

pub fn run(Args { out }: Args) -> anyhow::Result<ExitCode> {
    let key_id = pii_ingest::seal::keygen(&out)?;
    println!("wrote {0}/seal.pub and {0}/seal.key (mode 0600), key id {key_id}", out.display());
    println!("give the ingester only seal.pub: sealing.public_key_file = \"{}/seal.pub\"", out.display());
    Ok(ExitCode::SUCCESS)
}
