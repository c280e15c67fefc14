//! Rotating keys: [`rekey`] re-seals rows to the configured public key and/or re-derives their HMAC
//! tokens under the configured masking key, in batches of committed work, so it can be stopped and
//! rerun. Each batch locks its rows (`FOR UPDATE SKIP LOCKED`), so two runs share the work.
//!
//! Raw values are opened only in memory, one row at a time, and never logged.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Nullable};
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

/// What a rekey did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Rekeyed {
    pub resealed: u64,
    pub retokenized: u64,
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

/// A row to move: id, sealed ip, sealed device id, seal key id, mask key id.
type SealedRow = (i64, Vec<u8>, Vec<u8>, String, String);

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
    let mut done = Rekeyed::default();
    while let Some((resealed, retokenized)) = conn.transaction(async |conn| rekey_batch(conn, &plan).await).await? {
        done.resealed += resealed;
        done.retokenized += retokenized;
        tracing::info!(resealed = done.resealed, retokenized = done.retokenized, "rekey batch committed");
    }
    if masker.is_some() {
        done.unsealed_rows_left = unsealed_rows_left(&mut conn, &plan).await?;
    }
    Ok(done)
}

/// One transaction: the next batch of rows that need work, each moved. `None` when none is left.
async fn rekey_batch(conn: &mut AsyncPgConnection, plan: &Plan<'_>) -> Result<Option<(u64, u64)>, RekeyError> {
    let Some(needs_work) = needs_work(plan) else { return Ok(None) };
    let rows: Vec<SealedRow> = user_logins::table
        .select((
            user_logins::id,
            user_logins::ip_sealed.assume_not_null(),
            user_logins::device_id_sealed.assume_not_null(),
            user_logins::seal_key_id.assume_not_null(),
            user_logins::mask_key_id,
        ))
        .filter(user_logins::seal_key_id.eq_any(&plan.known))
        .filter(user_logins::ip_sealed.is_not_null().and(user_logins::device_id_sealed.is_not_null()))
        .filter(needs_work)
        .order(user_logins::id)
        .limit(plan.batch)
        .for_update()
        .skip_locked()
        .load(conn)
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut step = (0, 0);
    for row in rows {
        let (resealed, retokenized) = rekey_row(conn, plan, row).await?;
        step.0 += u64::from(resealed);
        step.1 += u64::from(retokenized);
    }
    Ok(Some(step))
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
    (id, ip_sealed, device_sealed, seal_id, mask_id): SealedRow,
) -> Result<(bool, bool), RekeyError> {
    let opener = plan.openers.iter().find(|o| o.key_id() == seal_id).expect("filtered to known keys");
    let ip = opener.open(&ip_sealed, &seal_id)?;
    let device_id = opener.open(&device_sealed, &seal_id)?;
    let row = user_logins::table.find(id);
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

async fn connect(url: &str) -> Result<AsyncPgConnection, DbError> {
    AsyncPgConnection::establish(url)
        .await
        .map_err(|source| DbError::Connect { url: crate::config::redact_url_password(url), source })
}
