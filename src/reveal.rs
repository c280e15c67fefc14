//! Recovering raw PII, for authorised people only: [`reveal`] opens the sealed `ip` and `device_id`
//! of selected rows with the private key, and records who, when, why and which rows in
//! `reveal_audit` in the same transaction, before anything is returned. A reveal that cannot be
//! audited reveals nothing. (Key rotation is `rekey.rs`.) [`reveal_quarantined`] does the same for
//! the sealed raw body of a quarantined message. Both transactions run as the `pii_revealer` role
//! (`SET LOCAL ROLE`), so they can read sealed values and append to the audit, nothing more; the
//! audit's `who` is the login (`session_user`) unless a person is named.
//!
//! Raw values live only in the returned structs, printed by the CLI for the person who asked; they
//! are never logged.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::db::DbError;
use crate::schema::{quarantined_messages, reveal_audit, user_logins};
use crate::seal::{Opener, SealError};

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
    #[error("this login may not reveal: it must be a member of pii_revealer (GRANT pii_revealer TO <login>)")]
    NotRevealer,
    #[error("no quarantined message has message_id {0}")]
    NotQuarantined(String),
    #[error("quarantined message {0} was quarantined without sealing: nothing raw was kept")]
    NotSealed(String),
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
    who: Option<&str>,
    reason: &str,
    limit: i64,
) -> Result<Vec<Revealed>, RevealError> {
    if reason.trim().is_empty() {
        return Err(RevealError::NoReason);
    }
    let mut conn = connect(url).await?;
    conn.transaction(async |conn| {
        become_revealer(conn).await?;
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
                who.map(|who| reveal_audit::who.eq(who)),
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

/// Switches this transaction to the `pii_revealer` role, or says the login may not.
async fn become_revealer(conn: &mut AsyncPgConnection) -> Result<(), RevealError> {
    diesel::define_sql_function!(fn pg_has_role(user: diesel::sql_types::Text, role: diesel::sql_types::Text, privilege: diesel::sql_types::Text) -> diesel::sql_types::Bool);
    let member: bool = diesel::select(pg_has_role(diesel::dsl::sql("session_user"), "pii_revealer", "MEMBER"))
        .get_result(conn)
        .await?;
    if !member {
        return Err(RevealError::NotRevealer);
    }
    diesel::sql_query("SET LOCAL ROLE pii_revealer").execute(conn).await?;
    Ok(())
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

/// The raw body of a quarantined message, as the producer sent it.
pub struct RevealedBody {
    pub message_id: String,
    /// The quarantine reason code.
    pub reason: String,
    pub body: Vec<u8>,
}

/// Opens the sealed body of the quarantined message `message_id` and audits the reveal (selector
/// `quarantined:message_id=...`) in the same transaction, before anything is returned.
pub async fn reveal_quarantined(
    url: &str,
    opener: &Opener,
    message_id: &str,
    who: Option<&str>,
    reason: &str,
) -> Result<RevealedBody, RevealError> {
    if reason.trim().is_empty() {
        return Err(RevealError::NoReason);
    }
    let mut conn = connect(url).await?;
    conn.transaction(async |conn| {
        become_revealer(conn).await?;
        let row: Option<(String, Option<Vec<u8>>, Option<String>)> = quarantined_messages::table
            .filter(quarantined_messages::message_id.eq(message_id))
            .select((
                quarantined_messages::reason,
                quarantined_messages::body_sealed,
                quarantined_messages::seal_key_id,
            ))
            .first(conn)
            .await
            .optional()?;
        let (quarantine_reason, sealed, key_id) = row.ok_or_else(|| RevealError::NotQuarantined(message_id.into()))?;
        let (Some(sealed), Some(key_id)) = (sealed, key_id) else {
            return Err(RevealError::NotSealed(message_id.into()));
        };
        let body = opener.open_bytes(&sealed, &key_id)?;
        diesel::insert_into(reveal_audit::table)
            .values((
                who.map(|who| reveal_audit::who.eq(who)),
                reveal_audit::reason.eq(reason),
                reveal_audit::selector.eq(format!("quarantined:message_id={message_id}")),
                reveal_audit::message_ids.eq(vec![Some(message_id.to_owned())]),
            ))
            .execute(conn)
            .await?;
        Ok(RevealedBody { message_id: message_id.to_owned(), reason: quarantine_reason, body })
    })
    .await
}

async fn connect(url: &str) -> Result<AsyncPgConnection, DbError> {
    crate::db::connect(url).await
}
