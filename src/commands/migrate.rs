//! `pii-ingest migrate`: create the database if it is missing and apply the embedded migrations.

use std::process::ExitCode;

use anyhow::Context;

use pii_ingest::config::Config;
use pii_ingest::db;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Do not create the database when it is missing.
    #[arg(long)]
    no_create_db: bool,
}

pub async fn run(Args { no_create_db }: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let url = config.postgres.url.expose();
    if !no_create_db && db::create_database_if_missing(url).await? {
        println!("created database {}", db::redact_url_password(url));
    }
    let applied = db::migrate(url).await.context("failed to apply migrations")?;
    if applied.is_empty() {
        println!("migrations: up to date");
    } else {
        println!("migrations: applied {}", applied.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
