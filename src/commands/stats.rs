//! `pii-ingest stats`: what the database and the ledger hold, for an operator who wants numbers
//! without writing SQL. Read-only.

use std::collections::BTreeMap;
use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::dsl::{count_star, max, min};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;

use pii_ingest::config::Config;
use pii_ingest::ledger::Ledger;

use pii_ingest::db::DbError;
use pii_ingest::schema::{quarantined_messages, user_logins};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(Args { json }: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let mut summary = read(config.postgres.url.expose()).await?;
    if config.ledger.path.exists() {
        // Opening the store takes its lock: this fails while `run` holds the same ledger.
        summary.ledger_entries = match Ledger::open_existing(&config.ledger.path) {
            Ok(ledger) => Some(ledger.len()),
            Err(error) => {
                tracing::warn!(error = %error, "ledger not readable (in use by a running ingester?)");
                None
            }
        };
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The numbers `stats` prints.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub rows: i64,
    pub first_date: Option<NaiveDate>,
    pub last_date: Option<NaiveDate>,
    pub last_ingest: Option<DateTime<Utc>>,
    pub distinct_devices: i64,
    pub mask_key_ids: Vec<String>,
    pub quarantined: BTreeMap<String, i64>,
    /// Ids in the local ledger; `None` when no ledger store exists at the configured path.
    pub ledger_entries: Option<usize>,
}

/// Reads the summary from the database at `url`.
pub async fn read(url: &str) -> Result<Summary, DbError> {
    let mut conn = pii_ingest::db::connect(url).await?;
    let query = |source| DbError::Query { what: "read the summary", source };
    let (rows, first_date, last_date, last_ingest) = user_logins::table
        .select((
            count_star(),
            min(user_logins::create_date),
            max(user_logins::create_date),
            max(user_logins::ingested_at),
        ))
        .first::<(i64, Option<NaiveDate>, Option<NaiveDate>, Option<DateTime<Utc>>)>(&mut conn)
        .await
        .map_err(query)?;
    let distinct_devices = user_logins::table
        .select(diesel::dsl::count(user_logins::masked_device_id).aggregate_distinct())
        .first(&mut conn)
        .await
        .map_err(query)?;
    let mask_key_ids = user_logins::table
        .select(user_logins::mask_key_id)
        .distinct()
        .order(user_logins::mask_key_id)
        .load(&mut conn)
        .await
        .map_err(query)?;
    let quarantined = quarantined_messages::table
        .group_by(quarantined_messages::reason)
        .select((quarantined_messages::reason, count_star()))
        .load::<(String, i64)>(&mut conn)
        .await
        .map_err(query)?
        .into_iter()
        .collect();
    Ok(Summary {
        rows,
        first_date,
        last_date,
        last_ingest,
        distinct_devices,
        mask_key_ids,
        quarantined,
        ledger_entries: None,
    })
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |d: Option<String>| d.unwrap_or_else(|| "-".into());
        writeln!(f, "rows                {:>12}", self.rows)?;
        writeln!(
            f,
            "create_date range   {} .. {}",
            show(self.first_date.map(|d| d.to_string())),
            show(self.last_date.map(|d| d.to_string()))
        )?;
        writeln!(f, "last ingest         {}", show(self.last_ingest.map(|t| t.to_rfc3339())))?;
        writeln!(f, "distinct devices    {:>12}", self.distinct_devices)?;
        writeln!(
            f,
            "mask key ids        {}",
            if self.mask_key_ids.is_empty() { "-".into() } else { self.mask_key_ids.join(", ") }
        )?;
        writeln!(f, "quarantined         {:>12}", self.quarantined.values().sum::<i64>())?;
        for (reason, n) in &self.quarantined {
            writeln!(f, "  {reason:<18}{n:>12}")?;
        }
        match self.ledger_entries {
            Some(n) => write!(f, "ledger entries      {n:>12}"),
            None => write!(f, "ledger entries      (no ledger at the configured path)"),
        }
    }
}
