//! Monthly partitions of `user_logins` (migration 8, docs/partitions.md): no row may fail for want
//! of one. Postgres' `user_logins_ensure_partitions(date[])` creates the partition of every date no
//! partition accepts yet; this file decides when to call it:
//! - ahead of time ([`ensure_ahead`]): this month and the next [`MONTHS_AHEAD`], when `run` and
//!   `replay` start and daily while `run` runs, so a month's partition exists before its first row;
//! - on demand ([`Months::unseen`]): in each write transaction, for the months of its rows this
//!   process has not seen committed yet (an archive replay from years ago brings its own months).
//!
//! Seen months are cached so a batch of known months costs nothing. A cached month whose partition
//! was dropped since (retention, by another process) makes the write fail; every failed write forgets
//! the cache, so the retry (or the split halves) create it again.

use std::collections::HashSet;
use std::sync::Mutex;

use chrono::{Datelike, NaiveDate};
use diesel::sql_types::{Array, Date, Integer};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Months after the current one whose partitions are made ahead of time.
pub const MONTHS_AHEAD: u32 = 2;

/// The call that creates missing partitions; `$1` is a `date[]`, the result how many it created.
pub const ENSURE: &str = "SELECT user_logins_ensure_partitions($1::date[]) AS created";

#[derive(diesel::QueryableByName)]
struct Created {
    #[diesel(sql_type = Integer)]
    created: i32,
}

/// The first day of `date`'s month.
pub fn month_of(date: NaiveDate) -> NaiveDate {
    date.with_day(1).expect("every month has a first day")
}

/// This month's first day and those of the `ahead` months after it.
pub fn months_from(today: NaiveDate, ahead: u32) -> Vec<NaiveDate> {
    (0..=ahead).filter_map(|n| month_of(today).checked_add_months(chrono::Months::new(n))).collect()
}

/// Months whose partition this process has seen in a committed write.
#[derive(Debug, Default)]
pub struct Months {
    seen: Mutex<HashSet<NaiveDate>>,
}

impl Months {
    /// The first days of the months of `dates` not seen yet (empty for a batch of known months),
    /// sorted. Rows of a batch mostly share a month: a run of one month is looked up once.
    pub fn unseen(&self, dates: impl IntoIterator<Item = NaiveDate>) -> Vec<NaiveDate> {
        let seen = self.seen.lock().expect("no code panics holding this lock");
        let (mut months, mut last) = (Vec::new(), None);
        for month in dates.into_iter().map(month_of) {
            if last != Some(month) && !seen.contains(&month) && !months.contains(&month) {
                months.push(month);
            }
            last = Some(month);
        }
        months.sort_unstable();
        months
    }

    /// After a commit: these months have partitions.
    pub fn remember(&self, months: &[NaiveDate]) {
        self.seen.lock().expect("no code panics holding this lock").extend(months.iter().copied());
    }

    /// After a failed write: a partition may have been dropped since it was seen.
    pub fn forget(&self) {
        self.seen.lock().expect("no code panics holding this lock").clear();
    }
}

/// Creates the partitions of `months` that are missing, through `conn` (inside its transaction when
/// it is in one). Returns how many were created.
pub async fn ensure(conn: &mut AsyncPgConnection, months: &[NaiveDate]) -> Result<i32, diesel::result::Error> {
    let rows: Vec<Created> = diesel::sql_query(ENSURE).bind::<Array<Date>, _>(months).load(conn).await?;
    Ok(rows.into_iter().next().map_or(0, |r| r.created))
}

/// This month's partition and the next [`MONTHS_AHEAD`], created now if missing.
pub async fn ensure_ahead(url: &str, today: NaiveDate) -> Result<i32, crate::db::DbError> {
    let mut conn = crate::db::connect(url).await?;
    let created = ensure(&mut conn, &months_from(today, MONTHS_AHEAD))
        .await
        .map_err(|source| crate::db::DbError::Query { what: "create the partitions ahead", source })?;
    if created > 0 {
        tracing::info!(partitions.created = created, "user_logins partitions created ahead of time");
    }
    Ok(created)
}

/// [`ensure_ahead`] once a day for as long as the process runs (what `run` does), so a long-running
/// ingester crosses into a new month with its partition long made. A failure is logged and tried again
/// the next day; the write path still creates any month it meets.
pub fn spawn_daily(url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(24 * 60 * 60)).await;
            if let Err(error) = ensure_ahead(&url, chrono::Utc::now().date_naive()).await {
                tracing::warn!(error = %error, "creating partitions ahead failed; trying again in a day");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::NewLogin;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn months_ahead_cross_the_year_end() {
        assert_eq!(months_from(day(2026, 12, 31), 2), vec![day(2026, 12, 1), day(2027, 1, 1), day(2027, 2, 1)]);
    }

    #[test]
    fn only_months_not_seen_in_a_commit_are_asked_for_and_a_failure_forgets_them() {
        let login = |create_date| NewLogin {
            message_id: "sqs:m".into(),
            user_id: "u".into(),
            device_type: "ios".into(),
            masked_ip: "a".repeat(64),
            masked_device_id: "b".repeat(64),
            locale: None,
            app_version: "1.0".into(),
            create_date,
            sent_at: chrono::Utc::now(),
            mask_key_id: "k".into(),
            ip_sealed: None,
            device_id_sealed: None,
            seal_key_id: None,
            body_fingerprint: "f".into(),
        };
        let (a, b) = (login(day(2024, 3, 9)), login(day(2026, 1, 31)));
        let months = Months::default();
        assert_eq!(months.unseen([&a, &b, &a].map(|l| l.create_date)), vec![day(2024, 3, 1), day(2026, 1, 1)]);
        months.remember(&[day(2024, 3, 1)]);
        assert_eq!(months.unseen([&a, &b].map(|l| l.create_date)), vec![day(2026, 1, 1)]);
        months.forget();
        assert_eq!(months.unseen([&a].map(|l| l.create_date)), vec![day(2024, 3, 1)]);
    }
}
