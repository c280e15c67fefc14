//! `pii-ingest verify`: checks over what the tables already hold, after a load. Each check counts the
//! records it examined and those that fail it, and gives a verdict:
//!
//! | check | fails when |
//! | --- | --- |
//! | `token_format` | a `masked_ip`, `masked_device_id` or quarantine `body_hmac` is not 64 lowercase hex |
//! | `key_ids` | a `mask_key_id` or `seal_key_id` is neither the configured key nor a retired one |
//! | `required_columns` | a required text column is blank, or sealed values and their key id disagree |
//! | `create_date` | `create_date` is not the UTC date of `sent_at` |
//! | `quarantine_reasons` | a quarantine `reason` is not a [`RejectReason`] code |
//! | `daily_quarantine_share` | a day's quarantine share is far above the usual day's |
//! | `sealed_values_rederive` | a sampled row's sealed values (or quarantine record's sealed body) do not re-derive to its tokens |
//!
//! Read-only, and it never returns a value from a row: only counts, dates, codes and key ids the
//! configuration names. Sealed values opened for the re-derivation stay in memory and are dropped.

use chrono::NaiveDate;
use serde::Serialize;
use tokio_postgres::Client;

use crate::event::RejectReason;
use crate::mask::Masker;
use crate::seal::Opener;

/// A day is flagged when its quarantine share is above both this many times the median day's...
const FLAG_TIMES_MEDIAN: f64 = 5.0;
/// ...and the median day's plus this (an absolute share: 0.05 is 5 percentage points)...
const FLAG_ABOVE_MEDIAN: f64 = 0.05;
/// ...and it holds at least this many messages (rows + quarantined).
const FLAG_MIN_MESSAGES: i64 = 20;
/// Fewer days than this give no usual share to compare with.
const MIN_DAYS_FOR_BASELINE: usize = 3;

/// Why the checks could not run (a failing check is a [`Report`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot connect to Postgres at {url}")]
    Connect {
        url: String,
        #[source]
        source: crate::db::tls::ConnectError,
    },
    #[error("Postgres query failed: {what}")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// What to check against.
pub struct Options {
    /// Only rows whose `create_date` (quarantine records: the UTC date of `sent_at`) is on or after it.
    pub since: Option<NaiveDate>,
    /// The current masking key id and the retired ones.
    pub mask_key_ids: Vec<String>,
    /// The current sealing key id (if sealing is configured) and the retired ones.
    pub seal_key_ids: Vec<String>,
    /// The keys for re-deriving tokens from sealed values; `None` skips that check.
    pub rederive: Option<Rederive>,
}

/// The masking key and private keys for `sealed_values_rederive`.
pub struct Rederive {
    pub masker: Masker,
    pub openers: Vec<Opener>,
    /// Rows sampled (at random among those sealed to one of `openers` and masked by `masker`).
    pub sample: i64,
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not run: what it needs was not given (the detail says what).
    Skipped,
}

/// One check: how many records it examined, how many failed it, and a sentence without values.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub checked: i64,
    pub failing: i64,
    pub verdict: Verdict,
    pub detail: String,
}

impl Check {
    fn counted(name: &'static str, checked: i64, failing: i64, problem: &str) -> Check {
        let verdict = if failing == 0 { Verdict::Pass } else { Verdict::Fail };
        let detail = if failing == 0 { "ok".to_owned() } else { format!("{failing} of {checked} {problem}") };
        Check { name, checked, failing, verdict, detail }
    }
}

/// Rows and quarantine records of one day (`create_date`; quarantine: UTC date of `sent_at`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    pub date: NaiveDate,
    pub rows: i64,
    pub quarantined: i64,
    /// quarantined / (rows + quarantined).
    pub share: f64,
    /// Far above the usual day's share (see the `FLAG_*` constants).
    pub flagged: bool,
}

/// Everything `verify` found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub since: Option<NaiveDate>,
    pub checks: Vec<Check>,
    pub days: Vec<Day>,
}

impl Report {
    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.verdict == Verdict::Fail)
    }
}

/// Runs every check on the database at `url`.
pub async fn verify(url: &str, options: &Options) -> Result<Report, VerifyError> {
    let client = connect(url).await?;
    let mut checks = row_checks(&client, options).await?;
    let mut days = daily_counts(&client, options.since).await?;
    checks.push(flag_days(&mut days));
    checks.push(match &options.rederive {
        Some(rederive) => rederive_sample(&client, options.since, rederive).await?,
        None => Check {
            name: "sealed_values_rederive",
            checked: 0,
            failing: 0,
            verdict: Verdict::Skipped,
            detail: "needs the masking key and --private-key-file".into(),
        },
    });
    let ok = checks.iter().all(|c| c.verdict != Verdict::Fail);
    Ok(Report { ok, since: options.since, checks, days })
}

async fn connect(url: &str) -> Result<Client, VerifyError> {
    let failed = |source| VerifyError::Connect { url: crate::db::redact_url_password(url), source };
    let (client, connection) = crate::db::tls::Target::parse(url).map_err(failed)?.connect().await.map_err(failed)?;
    tokio::spawn(connection);
    Ok(client)
}

/// A text column that holds nothing but whitespace (or nothing).
const BLANK: &str = r"~ '^\s*$'";
/// Not a token: 64 lowercase hex characters (`bpchar` trailing blanks are dropped by the cast).
const NOT_TOKEN: &str = "::text !~ '^[0-9a-f]{64}$'";

/// The checks that count failing records in one pass over each table.
async fn row_checks(client: &Client, options: &Options) -> Result<Vec<Check>, VerifyError> {
    let logins = format!(
        "SELECT count(*), \
           count(*) FILTER (WHERE masked_ip{NOT_TOKEN} OR masked_device_id{NOT_TOKEN}), \
           count(*) FILTER (WHERE mask_key_id <> ALL($2) OR (seal_key_id IS NOT NULL AND seal_key_id <> ALL($3))), \
           count(*) FILTER (WHERE message_id {BLANK} OR user_id {BLANK} OR device_type {BLANK} \
             OR app_version {BLANK} OR locale {BLANK} OR mask_key_id {BLANK} \
             OR (seal_key_id IS NULL) <> (ip_sealed IS NULL) OR (seal_key_id IS NULL) <> (device_id_sealed IS NULL)), \
           count(*) FILTER (WHERE create_date <> (sent_at AT TIME ZONE 'UTC')::date) \
         FROM user_logins WHERE $1::date IS NULL OR create_date >= $1"
    );
    let quarantine = format!(
        "SELECT count(*), \
           count(*) FILTER (WHERE body_hmac{NOT_TOKEN}), \
           count(*) FILTER (WHERE mask_key_id <> ALL($2) OR (seal_key_id IS NOT NULL AND seal_key_id <> ALL($4))), \
           count(*) FILTER (WHERE message_id {BLANK} OR reason {BLANK} OR mask_key_id {BLANK} \
             OR (seal_key_id IS NULL) <> (body_sealed IS NULL)), \
           count(*) FILTER (WHERE reason <> ALL($3)) \
         FROM quarantined_messages WHERE $1::date IS NULL OR (sent_at AT TIME ZONE 'UTC')::date >= $1"
    );
    let reasons: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
    let query = |what| move |source| VerifyError::Query { what, source };
    let l = client
        .query_one(&logins, &[&options.since, &options.mask_key_ids, &options.seal_key_ids])
        .await
        .map_err(query("check user_logins"))?;
    let q = client
        .query_one(&quarantine, &[&options.since, &options.mask_key_ids, &reasons, &options.seal_key_ids])
        .await
        .map_err(query("check quarantined_messages"))?;
    let (l, q): (Vec<i64>, Vec<i64>) = ((0..5).map(|i| l.get(i)).collect(), (0..5).map(|i| q.get(i)).collect());
    let records = l[0] + q[0];
    Ok(vec![
        Check::counted("token_format", records, l[1] + q[1], "records hold a token that is not 64 lowercase hex"),
        Check::counted(
            "key_ids",
            records,
            l[2] + q[2],
            "records carry a key id the configuration does not know (current or retired_key_ids)",
        ),
        Check::counted(
            "required_columns",
            records,
            l[3] + q[3],
            "records have a blank required column or sealed values without their key id",
        ),
        Check::counted("create_date", l[0], l[4], "rows have a create_date that is not the UTC date of sent_at"),
        Check::counted("quarantine_reasons", q[0], q[4], "quarantine records have a reason that is not a known code"),
    ])
}

/// Rows and quarantine records per day, oldest first.
async fn daily_counts(client: &Client, since: Option<NaiveDate>) -> Result<Vec<Day>, VerifyError> {
    let sql = "SELECT day, sum(rows)::int8, sum(quarantined)::int8 FROM ( \
          SELECT create_date AS day, count(*) AS rows, 0::int8 AS quarantined FROM user_logins \
            WHERE $1::date IS NULL OR create_date >= $1 GROUP BY 1 \
          UNION ALL \
          SELECT (sent_at AT TIME ZONE 'UTC')::date, 0, count(*) FROM quarantined_messages \
            WHERE $1::date IS NULL OR (sent_at AT TIME ZONE 'UTC')::date >= $1 GROUP BY 1 \
        ) per_table GROUP BY day ORDER BY day";
    let rows = client
        .query(sql, &[&since])
        .await
        .map_err(|source| VerifyError::Query { what: "count records per day", source })?;
    Ok(rows
        .iter()
        .map(|row| {
            let (rows, quarantined): (i64, i64) = (row.get(1), row.get(2));
            let share = quarantined as f64 / (rows + quarantined).max(1) as f64;
            Day { date: row.get(0), rows, quarantined, share, flagged: false }
        })
        .collect())
}

/// Flags the days whose quarantine share is far above the median day's, and judges them.
pub fn flag_days(days: &mut [Day]) -> Check {
    let name = "daily_quarantine_share";
    let checked = days.len() as i64;
    if days.len() < MIN_DAYS_FOR_BASELINE {
        let detail = format!("{checked} day(s): fewer than {MIN_DAYS_FOR_BASELINE}, no usual share to compare with");
        return Check { name, checked, failing: 0, verdict: Verdict::Pass, detail };
    }
    let mut shares: Vec<f64> = days.iter().map(|d| d.share).collect();
    shares.sort_by(f64::total_cmp);
    let median = shares[shares.len() / 2];
    let limit = (median * FLAG_TIMES_MEDIAN).max(median + FLAG_ABOVE_MEDIAN);
    for day in days.iter_mut() {
        day.flagged = day.share > limit && day.rows + day.quarantined >= FLAG_MIN_MESSAGES;
    }
    let failing = days.iter().filter(|d| d.flagged).count() as i64;
    let problem = format!(
        "days quarantined more than {:.1}% of their messages (the median day: {:.1}%)",
        limit * 100.0,
        median * 100.0
    );
    Check::counted(name, checked, failing, &problem)
}

/// Re-derives the tokens of a random sample of sealed rows, and the body HMAC of a random sample of
/// sealed quarantine records, from their opened values.
async fn rederive_sample(client: &Client, since: Option<NaiveDate>, keys: &Rederive) -> Result<Check, VerifyError> {
    let name = "sealed_values_rederive";
    let seal_ids: Vec<&str> = keys.openers.iter().map(Opener::key_id).collect();
    let (rows, rows_failing) = sample_logins(client, since, keys, &seal_ids).await?;
    let (records, records_failing) = sample_quarantine(client, since, keys, &seal_ids).await?;
    if rows + records == 0 {
        let detail =
            format!("nothing sealed to {} and masked with {} to sample", seal_ids.join(" or "), keys.masker.key_id());
        return Ok(Check { name, checked: 0, failing: 0, verdict: Verdict::Skipped, detail });
    }
    let problem = "sampled records have sealed values that do not open or do not re-derive to their tokens";
    Ok(Check::counted(name, rows + records, rows_failing + records_failing, problem))
}

/// Whether `sealed` opens with one of the keys and its HMAC is `token`.
fn rederives(keys: &Rederive, sealed: &[u8], seal_id: &str, token: &str) -> bool {
    let Some(opener) = keys.openers.iter().find(|o| o.key_id() == seal_id) else { return false };
    opener.open_bytes(sealed, seal_id).is_ok_and(|value| keys.masker.token_bytes(&value) == token)
}

/// (rows sampled, rows whose ip or device_id token does not re-derive).
async fn sample_logins(
    client: &Client,
    since: Option<NaiveDate>,
    keys: &Rederive,
    seal_ids: &[&str],
) -> Result<(i64, i64), VerifyError> {
    let sql = "SELECT masked_ip::text, masked_device_id::text, ip_sealed, device_id_sealed, seal_key_id \
               FROM user_logins WHERE mask_key_id = $2 AND seal_key_id = ANY($3) \
                 AND ip_sealed IS NOT NULL AND device_id_sealed IS NOT NULL \
                 AND ($1::date IS NULL OR create_date >= $1) \
               ORDER BY random() LIMIT $4";
    let rows = client
        .query(sql, &[&since, &keys.masker.key_id(), &seal_ids, &keys.sample])
        .await
        .map_err(|source| VerifyError::Query { what: "sample sealed rows", source })?;
    let failing = rows
        .iter()
        .filter(|row| {
            let seal_id: &str = row.get(4);
            !(rederives(keys, row.get(2), seal_id, row.get(0)) && rederives(keys, row.get(3), seal_id, row.get(1)))
        })
        .count();
    Ok((rows.len() as i64, failing as i64))
}

/// (quarantine records sampled, records whose sealed body's HMAC is not their `body_hmac`).
async fn sample_quarantine(
    client: &Client,
    since: Option<NaiveDate>,
    keys: &Rederive,
    seal_ids: &[&str],
) -> Result<(i64, i64), VerifyError> {
    let sql = "SELECT body_hmac::text, body_sealed, seal_key_id FROM quarantined_messages \
               WHERE mask_key_id = $2 AND seal_key_id = ANY($3) AND body_sealed IS NOT NULL \
                 AND ($1::date IS NULL OR (sent_at AT TIME ZONE 'UTC')::date >= $1) \
               ORDER BY random() LIMIT $4";
    let records = client
        .query(sql, &[&since, &keys.masker.key_id(), &seal_ids, &keys.sample])
        .await
        .map_err(|source| VerifyError::Query { what: "sample sealed quarantine records", source })?;
    let failing = records.iter().filter(|r| !rederives(keys, r.get(1), r.get(2), r.get(0))).count();
    Ok((records.len() as i64, failing as i64))
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<24} {:>10} {:>10}  verdict", "check", "checked", "failing")?;
        for c in &self.checks {
            let verdict = match c.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "FAIL",
                Verdict::Skipped => "skipped",
            };
            writeln!(f, "{:<24} {:>10} {:>10}  {verdict}: {}", c.name, c.checked, c.failing, c.detail)?;
        }
        writeln!(f, "\n{:<12} {:>10} {:>12} {:>8}", "day", "rows", "quarantined", "share")?;
        for d in &self.days {
            let flag = if d.flagged { "  <- far above the usual share" } else { "" };
            writeln!(f, "{:<12} {:>10} {:>12} {:>7.1}%{flag}", d.date, d.rows, d.quarantined, d.share * 100.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: u32, rows: i64, quarantined: i64) -> Day {
        let share = quarantined as f64 / (rows + quarantined) as f64;
        let date = NaiveDate::from_ymd_opt(2026, 11, n).unwrap();
        Day { date, rows, quarantined, share, flagged: false }
    }

    #[test]
    fn a_day_far_above_the_usual_quarantine_share_is_flagged() {
        let mut days = vec![day(1, 990, 10), day(2, 980, 20), day(3, 700, 300), day(4, 985, 15)];
        let check = flag_days(&mut days);
        assert_eq!((check.verdict, check.checked, check.failing), (Verdict::Fail, 4, 1));
        assert_eq!(days.iter().filter(|d| d.flagged).map(|d| d.date.to_string()).collect::<Vec<_>>(), ["2026-11-03"]);
        assert!(check.detail.contains("1 of 4 days"), "{}", check.detail);
    }

    #[test]
    fn ordinary_variation_and_tiny_days_are_not_flagged() {
        // 3% against a 1.5% median is within both margins; 5 of 10 is too small a day to judge.
        let mut days = vec![day(1, 990, 10), day(2, 985, 15), day(3, 970, 30), day(4, 5, 5)];
        let check = flag_days(&mut days);
        assert_eq!((check.verdict, check.failing), (Verdict::Pass, 0));
        assert!(days.iter().all(|d| !d.flagged));
    }

    #[test]
    fn fewer_than_three_days_give_no_baseline_and_pass() {
        let mut days = vec![day(1, 1, 99), day(2, 99, 1)];
        let check = flag_days(&mut days);
        assert_eq!((check.verdict, check.checked), (Verdict::Pass, 2));
        assert!(check.detail.contains("no usual share"), "{}", check.detail);
    }

    #[test]
    fn a_counted_check_fails_only_with_failing_records() {
        assert_eq!(Check::counted("x", 10, 0, "bad").verdict, Verdict::Pass);
        let failed = Check::counted("x", 10, 2, "records are bad");
        assert_eq!((failed.verdict, failed.detail.as_str()), (Verdict::Fail, "2 of 10 records are bad"));
    }
}
