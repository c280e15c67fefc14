//! The right to erasure: [`erase`] deletes the `user_logins` rows of one person or device (their
//! sealed raw values go with them) and the quarantine records whose masked body holds the same
//! value, and appends to the append-only `erasure_audit` who (`session_user`), when, why, how many,
//! and the selector as an HMAC token, all in one transaction.
//!
//! The claims of erased messages stay in `message_claims`, so a redelivery, a replay of an archive
//! or a re-drive of a dead-letter queue finds the claim and writes nothing: an erased row never comes
//! back. Nothing raw is logged, printed or stored in the audit.

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::db::DbError;
use crate::mask::Masker;

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("Postgres query failed while erasing")]
    Query(#[from] diesel::result::Error),
    #[error("a reason is required for every erasure (--reason)")]
    NoReason,
    #[error("--{field} must be a 64-character hex HMAC token (as in the masked columns)")]
    NotAToken { field: &'static str },
}

/// Whose rows to erase.
#[derive(Debug, Clone)]
pub enum Selector {
    /// A raw user id (the column is stored as sent).
    UserId(String),
    /// A `masked_device_id` token.
    MaskedDeviceId(String),
    /// A `masked_ip` token.
    MaskedIp(String),
}

impl Selector {
    /// The column it matches, the value for that column, and the HMAC token that stands for the
    /// value in masked quarantine bodies and in the audit.
    fn parts(&self, masker: &Masker) -> Result<(&'static str, String, String), ErasureError> {
        let token = |field: &'static str, t: &str| {
            let ok = t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit());
            if ok { Ok(t.to_ascii_lowercase()) } else { Err(ErasureError::NotAToken { field }) }
        };
        Ok(match self {
            Selector::UserId(id) => ("user_id", id.clone(), masker.token(id)),
            Selector::MaskedDeviceId(t) => {
                let t = token("masked-device-id", t)?;
                ("masked_device_id", t.clone(), t)
            }
            Selector::MaskedIp(t) => {
                let t = token("masked-ip", t)?;
                ("masked_ip", t.clone(), t)
            }
        })
    }
}

/// What one erasure removed (or, dry, would remove).
#[derive(Debug, serde::Serialize)]
pub struct Erased {
    /// `<column>:<HMAC token>`, as recorded in `erasure_audit`.
    pub selector: String,
    pub dry_run: bool,
    pub rows_erased: i64,
    pub quarantine_erased: i64,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Quarantine records whose masked body holds the token as a string leaf (`"str:<chars>:<token>"`,
/// at any depth and under any key, as `src/mask/quarantine.rs` writes it).
const RECORDS: &str = "quarantined_messages WHERE strpos(masked_body, ':' || $1 || '\"') > 0";

/// Erases the rows matching `selector` for `reason` (counts only when `dry_run`).
pub async fn erase(
    url: &str,
    masker: &Masker,
    selector: &Selector,
    reason: &str,
    dry_run: bool,
) -> Result<Erased, ErasureError> {
    if reason.trim().is_empty() {
        return Err(ErasureError::NoReason);
    }
    let (column, value, token) = selector.parts(masker)?;
    // The masked columns are CHAR(64): compared as such, so their indexes serve the match.
    let cast = if column == "user_id" { "" } else { "::bpchar" };
    let rows = format!("user_logins WHERE {column} = $1{cast}");
    let mut conn = crate::db::connect(url).await?;
    conn.transaction(async |conn| {
        let erased = Erased {
            selector: format!("{column}:{token}"),
            dry_run,
            rows_erased: count(conn, &rows, &value).await?,
            quarantine_erased: count(conn, RECORDS, &token).await?,
        };
        if !dry_run {
            diesel::sql_query(format!("DELETE FROM {rows}")).bind::<Text, _>(&value).execute(conn).await?;
            diesel::sql_query(format!("DELETE FROM {RECORDS}")).bind::<Text, _>(&token).execute(conn).await?;
            audit(conn, &erased, reason, masker.key_id()).await?;
        }
        Ok(erased)
    })
    .await
}

async fn count(conn: &mut AsyncPgConnection, what: &str, value: &str) -> Result<i64, ErasureError> {
    let sql = format!("SELECT count(*) AS n FROM {what}");
    let rows: Vec<Count> = diesel::sql_query(sql).bind::<Text, _>(value).load(conn).await?;
    Ok(rows.into_iter().next().map_or(0, |c| c.n))
}

/// Appends the erasure to `erasure_audit` (`who` is the database login).
async fn audit(conn: &mut AsyncPgConnection, erased: &Erased, reason: &str, key_id: &str) -> Result<(), ErasureError> {
    diesel::sql_query(
        "INSERT INTO erasure_audit (reason, selector, rows_erased, quarantine_erased, mask_key_id) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind::<Text, _>(reason)
    .bind::<Text, _>(&erased.selector)
    .bind::<BigInt, _>(erased.rows_erased)
    .bind::<BigInt, _>(erased.quarantine_erased)
    .bind::<Nullable<Text>, _>(Some(key_id))
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_id_is_audited_as_its_token_and_a_masked_selector_must_be_a_token() {
        let masker = Masker::new(b"erasure-test-key-0123456789abcdef", Some("k1")).unwrap();
        let (column, value, token) = Selector::UserId("alice@example.com".into()).parts(&masker).unwrap();
        assert_eq!((column, value.as_str()), ("user_id", "alice@example.com"));
        assert_eq!(token, masker.token("alice@example.com"));
        assert!(!token.contains("alice"));
        let upper = "AB".repeat(32);
        let (_, value, _) = Selector::MaskedIp(upper).parts(&masker).unwrap();
        assert_eq!(value, "ab".repeat(32));
        let error = Selector::MaskedDeviceId("593-47-5928".into()).parts(&masker).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--masked-device-id must be a 64-character hex HMAC token (as in the masked columns)"
        );
    }
}
