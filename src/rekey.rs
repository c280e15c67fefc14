//! Rotating keys: [`rekey`] re-seals rows to the configured public key and/or re-derives their HMAC
//! tokens under the configured masking key, in batches of committed work, so it can be stopped and
//! rerun. Each batch locks its rows (`FOR UPDATE SKIP LOCKED`), so two runs share the work. A row that
//! cannot be opened (corrupt, or sealed to a key no `--private-key-file` matches) is skipped and
//! reported by id, never a reason to halt. Every run ends with an append-only `rekey_audit` record
//! and the count of rows per `seal_key_id`, which says when a retired key is no longer needed.
//!
//! Raw values are opened only in memory, one row at a time, and never logged.

use std::collections::BTreeMap;

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::db::DbError;
use crate::mask::Masker;
use crate::schema::user_logins;
use crate::seal::{Opener, SealError, Sealer};

#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("Postgres query failed")]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Most skipped row ids a report lists (the count is always complete).
const MAX_SKIPPED_IDS: usize = 100;

/// What a rekey did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Rekeyed {
    pub resealed: u64,
    pub retokenized: u64,
    /// Rows that needed work but could not be opened: a corrupt sealed value, or sealed to a key
    /// none of the given private keys matches. They are left as they were.
    pub skipped: u64,
    /// Ids (`user_logins.id`) of the first skipped rows.
    pub skipped_ids: Vec<i64>,
    /// Rows per `seal_key_id` when the run ended (`(not sealed)` for rows without sealed values).
    pub rows_per_seal_key: BTreeMap<String, i64>,
    /// Rows that still need work but carry no sealed values (ingested before sealing was on):
    /// their tokens cannot be re-derived because nothing raw is left.
    pub unsealed_rows_left: i64,
}

/// The keys a rekey moves rows to, and the ones it can open rows with.
struct Plan<'a> {
    openers: &'a [Opener],
    sealer: Option<&'a Sealer>,
    masker: Option<&'a Masker>,
    /// Key ids of `openers`: only rows sealed to one of them can be worked on.
    known: Vec<String>,
    new_seal: String,
    new_mask: String,
    batch: i64,
}

/// A row to move: id, create_date (the partition key), sealed ip, sealed device id, seal key id, mask key id.
type SealedRow = (i64, chrono::NaiveDate, Vec<u8>, Vec<u8>, String, String);

/// Where a run has got to: the last row id it looked at, and what it skipped.
#[derive(Default)]
struct Progress {
    after_id: i64,
    done: Rekeyed,
}

/// Moves rows to the current keys, `batch` rows per transaction: re-seals to `sealer` rows sealed
/// to another key (one of `openers`), and with `masker` re-derives tokens of rows made with another
/// HMAC key. Rerunning continues where a stopped run left off.
pub async fn rekey(
    url: &str,
    openers: &[Opener],
    sealer: Option<&Sealer>,
    masker: Option<&Masker>,
    batch: i64,
) -> Result<Rekeyed, RekeyError> {
    let mut conn = connect(url).await?;
    let plan = Plan {
        openers,
        sealer,
        masker,
        known: openers.iter().map(|o| o.key_id().to_owned()).collect(),
        new_seal: sealer.map(|s| s.key_id().to_owned()).unwrap_or_default(),
        new_mask: masker.map(|m| m.key_id().to_owned()).unwrap_or_default(),
        batch,
    };
    let mut progress = Progress::default();
    while conn.transaction(async |conn| rekey_batch(conn, &plan, &mut progress).await).await? {
        let done = &progress.done;
        tracing::info!(
            resealed = done.resealed,
            retokenized = done.retokenized,
            skipped = done.skipped,
            "rekey batch committed"
        );
    }
    let mut done = progress.done;
    if masker.is_some() {
        done.unsealed_rows_left = unsealed_rows_left(&mut conn, &plan).await?;
    }
    done.skipped += unknown_key_rows(&mut conn, &plan).await?;
    done.rows_per_seal_key = rows_per_seal_key(&mut conn).await?;
    audit(&mut conn, &plan, &done).await?;
    Ok(done)
}

/// One transaction: the next batch of rows that need work, each moved or skipped. `false` when none
/// is left.
async fn rekey_batch(
    conn: &mut AsyncPgConnection,
    plan: &Plan<'_>,
    progress: &mut Progress,
) -> Result<bool, RekeyError> {
    let Some(needs_work) = needs_work(plan) else { return Ok(false) };
    let rows: Vec<SealedRow> = user_logins::table
        .select((
            user_logins::id,
            user_logins::create_date,
            user_logins::ip_sealed.assume_not_null(),
            user_logins::device_id_sealed.assume_not_null(),
            user_logins::seal_key_id.assume_not_null(),
            user_logins::mask_key_id,
        ))
        .filter(user_logins::seal_key_id.eq_any(&plan.known))
        .filter(user_logins::ip_sealed.is_not_null().and(user_logins::device_id_sealed.is_not_null()))
        .filter(needs_work)
        .filter(user_logins::id.gt(progress.after_id))
        .order(user_logins::id)
        .limit(plan.batch)
        .for_update()
        .skip_locked()
        .load(conn)
        .await?;
    let Some(last) = rows.last() else { return Ok(false) };
    progress.after_id = last.0;
    for row in rows {
        let id = row.0;
        match rekey_row(conn, plan, row).await {
            Ok((resealed, retokenized)) => {
                progress.done.resealed += u64::from(resealed);
                progress.done.retokenized += u64::from(retokenized);
            }
            Err(RekeyError::Seal(error)) => {
                tracing::warn!(row_id = id, error = %error, "rekey skipped a row it cannot open");
                progress.done.skipped += 1;
                if progress.done.skipped_ids.len() < MAX_SKIPPED_IDS {
                    progress.done.skipped_ids.push(id);
                }
            }
            Err(other) => return Err(other),
        }
    }
    Ok(true)
}

/// Which rows still need work, depending on what is being rotated; `None` when nothing is.
fn needs_work(plan: &Plan<'_>) -> Option<Box<dyn BoxableExpression<user_logins::table, Pg, SqlType = Nullable<Bool>>>> {
    let (seal, mask) = (&plan.new_seal, &plan.new_mask);
    match (plan.sealer.is_some(), plan.masker.is_some()) {
        (true, true) => {
            Some(Box::new(user_logins::seal_key_id.ne(seal.clone()).or(user_logins::mask_key_id.ne(mask.clone()))))
        }
        (true, false) => Some(Box::new(user_logins::seal_key_id.ne(seal.clone()))),
        (false, true) => Some(Box::new(user_logins::mask_key_id.ne(mask.clone()).nullable())),
        (false, false) => None,
    }
}

/// Opens one row and writes it back re-sealed and/or re-tokenized; says which of the two it did.
async fn rekey_row(
    conn: &mut AsyncPgConnection,
    plan: &Plan<'_>,
    (id, create_date, ip_sealed, device_sealed, seal_id, mask_id): SealedRow,
) -> Result<(bool, bool), RekeyError> {
    let opener = plan.openers.iter().find(|o| o.key_id() == seal_id).expect("filtered to known keys");
    let ip = opener.open(&ip_sealed, &seal_id)?;
    let device_id = opener.open(&device_sealed, &seal_id)?;
    let row = user_logins::table.filter(user_logins::id.eq(id)).filter(user_logins::create_date.eq(create_date));
    let mut did = (false, false);
    if let Some(sealer) = plan.sealer.filter(|s| s.key_id() != seal_id) {
        diesel::update(row)
            .set((
                user_logins::ip_sealed.eq(sealer.seal(&ip)),
                user_logins::device_id_sealed.eq(sealer.seal(&device_id)),
                user_logins::seal_key_id.eq(sealer.key_id()),
            ))
            .execute(conn)
            .await?;
        did.0 = true;
    }
    if let Some(masker) = plan.masker.filter(|m| m.key_id() != mask_id) {
        diesel::update(row)
            .set((
                user_logins::masked_ip.eq(masker.token(&ip)),
                user_logins::masked_device_id.eq(masker.token(&device_id)),
                user_logins::mask_key_id.eq(masker.key_id()),
            ))
            .execute(conn)
            .await?;
        did.1 = true;
    }
    Ok(did)
}

/// Rows made with another masking key that carry nothing sealed, so cannot be re-tokenized.
async fn unsealed_rows_left(conn: &mut AsyncPgConnection, plan: &Plan<'_>) -> Result<i64, RekeyError> {
    Ok(user_logins::table
        .filter(user_logins::mask_key_id.ne(&plan.new_mask))
        .filter(user_logins::ip_sealed.is_null())
        .count()
        .get_result(conn)
        .await?)
}

/// Rows that need work but are sealed to a key none of the given private keys matches.
async fn unknown_key_rows(conn: &mut AsyncPgConnection, plan: &Plan<'_>) -> Result<u64, RekeyError> {
    let Some(needs_work) = needs_work(plan) else { return Ok(0) };
    let n: i64 = user_logins::table
        .filter(user_logins::seal_key_id.ne_all(&plan.known))
        .filter(user_logins::ip_sealed.is_not_null())
        .filter(needs_work)
        .count()
        .get_result(conn)
        .await?;
    if n > 0 {
        tracing::warn!(rows = n, "rekey skipped rows sealed to a key no --private-key-file matches");
    }
    Ok(n.unsigned_abs())
}

/// How many rows each seal key holds now.
async fn rows_per_seal_key(conn: &mut AsyncPgConnection) -> Result<BTreeMap<String, i64>, RekeyError> {
    let counts: Vec<(Option<String>, i64)> = user_logins::table
        .group_by(user_logins::seal_key_id)
        .select((user_logins::seal_key_id, diesel::dsl::count_star()))
        .load(conn)
        .await?;
    Ok(counts.into_iter().map(|(key, n)| (key.unwrap_or_else(|| "(not sealed)".into()), n)).collect())
}

/// Appends the run's `rekey_audit` record (`who` is the database login).
async fn audit(conn: &mut AsyncPgConnection, plan: &Plan<'_>, done: &Rekeyed) -> Result<(), RekeyError> {
    let per_key = serde_json::to_string(&done.rows_per_seal_key).expect("a map of counts serializes");
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    diesel::sql_query(
        "INSERT INTO rekey_audit (new_seal_key_id, new_mask_key_id, resealed, retokenized, skipped, rows_per_seal_key) \
         VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
    )
    .bind::<Nullable<Text>, _>(some(&plan.new_seal))
    .bind::<Nullable<Text>, _>(some(&plan.new_mask))
    .bind::<BigInt, _>(i64::try_from(done.resealed).unwrap_or(i64::MAX))
    .bind::<BigInt, _>(i64::try_from(done.retokenized).unwrap_or(i64::MAX))
    .bind::<BigInt, _>(i64::try_from(done.skipped).unwrap_or(i64::MAX))
    .bind::<Text, _>(per_key)
    .execute(conn)
    .await?;
    Ok(())
}

async fn connect(url: &str) -> Result<AsyncPgConnection, DbError> {
    crate::db::connect(url).await
}
