//! `pii-ingest check-config`: the effective configuration, secrets redacted, and whether the masking
//! key is usable.

use std::process::ExitCode;

use pii_ingest::config::Config;

pub fn run(config: &Config) -> ExitCode {
    print!("{}", config.redacted_toml());
    match pii_ingest::startup::masker(config) {
        Ok(masker) => println!("# masking key: ok (key id {})", masker.key_id()),
        Err(error) => println!("# masking key: {error}"),
    }
    ExitCode::SUCCESS
}
