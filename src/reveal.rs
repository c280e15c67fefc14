//! Recovering raw PII, for authorised people only, and rotating keys.
//!
//! - [`reveal`] opens the sealed `ip` and `device_id` of selected rows with the private key, and
//!   records who, when, why and which rows in `reveal_audit` in the same transaction, before anything
//!   is returned. A reveal that cannot be audited reveals nothing.
//! - [`rekey`] re-seals rows to the configured public key and/or re-derives their HMAC tokens under
//!   the configured masking key, in batches of committed work, so it can be stopped and rerun.
//!
//! Raw values live only in the returned structs, printed by the CLI for the person who asked; they
//! are never logged.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Nullable};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::db::DbError;
use crate::mask::Masker;
use crate::schema::{reveal_audit, user_logins};
use crate::seal::{Opener, SealError, Sealer};

#[derive(Debug, thiserror::Error)]
pub enum RevealError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("Postgres query failed")]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("a reason is required for every reveal (--reason)")]
    NoReason,
}

/// Which rows to reveal.
#[derive(Debug, Clone)]
pub enum Selector {
    MessageId(String),
    UserId(String),
    MaskedIp(String),
    MaskedDeviceId(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::MessageId(v) => write!(f, "message_id={v}"),
            Selector::UserId(v) => write!(f, "user_id={v}"),
            Selector::MaskedIp(v) => write!(f, "masked_ip={v}"),
            Selector::MaskedDeviceId(v) => write!(f, "masked_device_id={v}"),
        }
    }
}

/// One revealed row. `None` where the row was ingested without sealing.
#[derive(Debug, serde::Serialize)]
pub struct Revealed {
    pub message_id: String,
    pub user_id: String,
    pub ip: Option<String>,
    pub device_id: Option<String>,
}

type SealedRow = (String, String, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>);

/// Opens the selected rows (at most `limit`) and audits the reveal.
pub async fn reveal(
    url: &str,
    opener: &Opener,
    selector: &Selector,
    who: &str,
    reason: &str,
    limit: i64,
) -> Result<Vec<Revealed>, RevealError> {
    if reason.trim().is_empty() {
        return Err(RevealError::NoReason);
    }
    let mut conn = connect(url).await?;
    conn.transaction(async |conn| {
        let mut query = user_logins::table
            .select((
                user_logins::message_id,
                user_logins::user_id,
                user_logins::ip_sealed,
                user_logins::device_id_sealed,
                user_logins::seal_key_id,
            ))
            .order(user_logins::id)
            .limit(limit)
            .into_boxed();
        query = match selector {
            Selector::MessageId(v) => query.filter(user_logins::message_id.eq(v.clone())),
            Selector::UserId(v) => query.filter(user_logins::user_id.eq(v.clone())),
            Selector::MaskedIp(v) => query.filter(user_logins::masked_ip.eq(v.clone())),
            Selector::MaskedDeviceId(v) => query.filter(user_logins::masked_device_id.eq(v.clone())),
        };
        let rows: Vec<SealedRow> = query.load(conn).await?;
        let revealed = rows.into_iter().map(|row| open_row(opener, row)).collect::<Result<Vec<_>, _>>()?;
        diesel::insert_into(reveal_audit::table)
            .values((
                reveal_audit::who.eq(who),
                reveal_audit::reason.eq(reason),
                reveal_audit::selector.eq(selector.to_string()),
                reveal_audit::message_ids.eq(revealed.iter().map(|r| Some(r.message_id.clone())).collect::<Vec<_>>()),
            ))
            .execute(conn)
            .await?;
        Ok(revealed)
    })
    .await
}

fn open_row(opener: &Opener, (message_id, user_id, ip, device_id, key_id): SealedRow) -> Result<Revealed, RevealError> {
    let open = |sealed: Option<Vec<u8>>| -> Result<Option<String>, SealError> {
        match (sealed, &key_id) {
            (Some(bytes), Some(id)) => opener.open(&bytes, id).map(Some),
            _ => Ok(None),
        }
    };
    Ok(Revealed { message_id, user_id, ip: open(ip)?, device_id: open(device_id)? })
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

/// Moves rows to the current keys, `batch` rows per transaction: re-seals to `sealer` rows sealed
/// to another key (one of `openers`), and with `masker` re-derives tokens of rows made with another
/// HMAC key. Rerunning continues where a stopped run left off.
pub async fn rekey(
    url: &str,
    openers: &[Opener],
    sealer: Option<&Sealer>,
    masker: Option<&Masker>,
    batch: i64,
) -> Result<Rekeyed, RevealError> {
    let mut conn = connect(url).await?;
    let known: Vec<String> = openers.iter().map(|o| o.key_id().to_owned()).collect();
    let new_seal = sealer.map(|s| s.key_id().to_owned()).unwrap_or_default();
    let new_mask = masker.map(|m| m.key_id().to_owned()).unwrap_or_default();
    let mut done = Rekeyed::default();
    loop {
        let step = conn
            .transaction(async |conn| {
                // Which rows still need work, depending on what is being rotated.
                let needs_work: Box<dyn BoxableExpression<user_logins::table, Pg, SqlType = Nullable<Bool>>> =
                    match (sealer.is_some(), masker.is_some()) {
                        (true, true) => {
                            Box::new(user_logins::seal_key_id.ne(&new_seal).or(user_logins::mask_key_id.ne(&new_mask)))
                        }
                        (true, false) => Box::new(user_logins::seal_key_id.ne(&new_seal)),
                        (false, true) => Box::new(user_logins::mask_key_id.ne(&new_mask).nullable()),
                        (false, false) => return Ok::<_, RevealError>(None),
                    };
                let query = user_logins::table
                    .select((
                        user_logins::id,
                        user_logins::ip_sealed.assume_not_null(),
                        user_logins::device_id_sealed.assume_not_null(),
                        user_logins::seal_key_id.assume_not_null(),
                        user_logins::mask_key_id,
                    ))
                    .filter(user_logins::seal_key_id.eq_any(&known))
                    .filter(user_logins::ip_sealed.is_not_null().and(user_logins::device_id_sealed.is_not_null()))
                    .filter(needs_work)
                    .order(user_logins::id)
                    .limit(batch)
                    .for_update()
                    .skip_locked();
                let rows: Vec<(i64, Vec<u8>, Vec<u8>, String, String)> = query.load(conn).await?;
                if rows.is_empty() {
                    return Ok(None);
                }
                let mut step = (0, 0);
                for (id, ip_sealed, device_sealed, seal_id, mask_id) in rows {
                    let opener = openers.iter().find(|o| o.key_id() == seal_id).expect("filtered to known keys");
                    let ip = opener.open(&ip_sealed, &seal_id)?;
                    let device_id = opener.open(&device_sealed, &seal_id)?;
                    let row = user_logins::table.find(id);
                    if let Some(sealer) = sealer.filter(|s| s.key_id() != seal_id) {
                        diesel::update(row)
                            .set((
                                user_logins::ip_sealed.eq(sealer.seal(&ip)),
                                user_logins::device_id_sealed.eq(sealer.seal(&device_id)),
                                user_logins::seal_key_id.eq(sealer.key_id()),
                            ))
                            .execute(conn)
                            .await?;
                        step.0 += 1;
                    }
                    if let Some(masker) = masker.filter(|m| m.key_id() != mask_id) {
                        diesel::update(row)
                            .set((
                                user_logins::masked_ip.eq(masker.token(&ip)),
                                user_logins::masked_device_id.eq(masker.token(&device_id)),
                                user_logins::mask_key_id.eq(masker.key_id()),
                            ))
                            .execute(conn)
                            .await?;
                        step.1 += 1;
                    }
                }
                Ok(Some(step))
            })
            .await?;
        match step {
            Some((resealed, retokenized)) => {
                done.resealed += resealed;
                done.retokenized += retokenized;
                tracing::info!(resealed = done.resealed, retokenized = done.retokenized, "rekey batch committed");
            }
            None => break,
        }
    }
    if masker.is_some() {
        done.unsealed_rows_left = user_logins::table
            .filter(user_logins::mask_key_id.ne(&new_mask))
            .filter(user_logins::ip_sealed.is_null())
            .count()
            .get_result(&mut conn)
            .await?;
    }
    Ok(done)
}

async fn connect(url: &str) -> Result<AsyncPgConnection, DbError> {
    AsyncPgConnection::establish(url)
        .await
        .map_err(|source| DbError::Connect { url: crate::config::redact_url_password(url), source })
}
