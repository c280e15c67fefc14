//! Keeping personal data no longer than needed: [`apply`] removes `user_logins` rows whose
//! `create_date` is before a cutoff and quarantine records sent before it, and appends what it
//! removed to the append-only `retention_audit`, all in one transaction. A monthly partition wholly
//! before the cutoff is dropped (no row-by-row delete); only the partition straddling the cutoff has
//! rows deleted. Claims stay, so expired messages are never written again.
//!
//! Only dates, counts and partition names are reported: nothing a row holds.

use chrono::NaiveDate;
use diesel::sql_types::{Array, BigInt, Date, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("Postgres query failed while applying retention")]
    Query(#[from] diesel::result::Error),
}

/// What one retention run removed (or, dry, would remove).
#[derive(Debug, Default, serde::Serialize)]
pub struct Removed {
    /// Rows and records dated before this day are removed.
    pub cutoff: NaiveDate,
    pub dry_run: bool,
    /// Partitions of `user_logins` dropped whole.
    pub partitions_dropped: Vec<String>,
    /// Rows removed, those of dropped partitions included.
    pub rows_deleted: i64,
    pub quarantine_deleted: i64,
}

/// A partition of `user_logins` that accepts only dates before the cutoff.
#[derive(diesel::QueryableByName)]
struct Expired {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Partitions that accept only dates before the cutoff (`user_logins_partitions()`, migration 8).
const EXPIRED_PARTITIONS: &str = "SELECT name FROM user_logins_partitions() WHERE to_date <= $1 ORDER BY from_date";
const EXPIRED_ROWS: &str = "user_logins WHERE create_date < $1";
const EXPIRED_RECORDS: &str = "quarantined_messages WHERE sent_at < $1::timestamp AT TIME ZONE 'UTC'";

/// Removes everything dated before `cutoff` (nothing when `dry_run`, which only counts).
///
/// Claims (`message_claims`) are kept: a replay of an old archive or a very late redelivery finds
/// the claim and writes nothing, instead of bringing expired data back (docs/partitions.md).
pub async fn apply(url: &str, cutoff: NaiveDate, dry_run: bool) -> Result<Removed, RetentionError> {
    let mut conn = crate::db::connect(url).await?;
    conn.transaction(async |conn| {
        let expired: Vec<Expired> = diesel::sql_query(EXPIRED_PARTITIONS).bind::<Date, _>(cutoff).load(conn).await?;
        let removed = Removed {
            cutoff,
            dry_run,
            partitions_dropped: expired.into_iter().map(|p| p.name).collect(),
            rows_deleted: count(conn, EXPIRED_ROWS, cutoff).await?,
            quarantine_deleted: count(conn, EXPIRED_RECORDS, cutoff).await?,
        };
        if dry_run {
            return Ok(removed);
        }
        // Whole months go without a row-by-row delete; only the month straddling the cutoff is
        // left for the DELETE, which partition pruning confines to it.
        for name in &removed.partitions_dropped {
            diesel::sql_query(format!("DROP TABLE \"{name}\"")).execute(conn).await?;
        }
        diesel::sql_query(format!("DELETE FROM {EXPIRED_ROWS}")).bind::<Date, _>(cutoff).execute(conn).await?;
        diesel::sql_query(format!("DELETE FROM {EXPIRED_RECORDS}")).bind::<Date, _>(cutoff).execute(conn).await?;
        audit(conn, &removed).await?;
        Ok(removed)
    })
    .await
}

/// `SELECT count(*) FROM <what>`, `$1` being the cutoff.
async fn count(conn: &mut AsyncPgConnection, what: &str, cutoff: NaiveDate) -> Result<i64, RetentionError> {
    let sql = format!("SELECT count(*) AS n FROM {what}");
    let rows: Vec<Count> = diesel::sql_query(sql).bind::<Date, _>(cutoff).load(conn).await?;
    Ok(rows.into_iter().next().map_or(0, |c| c.n))
}

/// Appends the run to `retention_audit` (`who` is the database login).
async fn audit(conn: &mut AsyncPgConnection, removed: &Removed) -> Result<(), RetentionError> {
    diesel::sql_query(
        "INSERT INTO retention_audit (cutoff, partitions_dropped, rows_deleted, quarantine_deleted) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind::<Date, _>(removed.cutoff)
    .bind::<Array<Text>, _>(&removed.partitions_dropped)
    .bind::<BigInt, _>(removed.rows_deleted)
    .bind::<BigInt, _>(removed.quarantine_deleted)
    .execute(conn)
    .await?;
    Ok(())
}

/// Applies retention now and then once a day in the background, for as long as the process runs (what
/// `run` does when `retention.days` is set). A failure is logged and tried again the next day.
pub fn spawn_daily(url: String, days: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match apply(&url, cutoff(chrono::Utc::now().date_naive(), days), false).await {
                Ok(removed) => tracing::info!(
                    cutoff = %removed.cutoff,
                    rows_deleted = removed.rows_deleted,
                    quarantine_deleted = removed.quarantine_deleted,
                    partitions_dropped = removed.partitions_dropped.len(),
                    "retention applied"
                ),
                Err(error) => tracing::warn!(error = %error, "retention failed; trying again in a day"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(24 * 60 * 60)).await;
        }
    })
}

/// The cutoff for keeping `days` days up to `today`: rows dated before it are removed.
pub fn cutoff(today: NaiveDate, days: u32) -> NaiveDate {
    today - chrono::Days::new(u64::from(days))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeping_thirty_days_removes_what_is_dated_before_the_thirtieth_day_back() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        assert_eq!(cutoff(today, 30), NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
        assert_eq!(cutoff(today, 0), today);
    }
}
