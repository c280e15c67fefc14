//! The INSERT sink: logins and quarantine records of one batch in one durable transaction through
//! diesel-async, written only for the keys the transaction claimed in `message_claims` first
//! ([`super::claims`]); a key claimed before was committed by an earlier delivery or another worker.
//!
//! [`SinkError::disposition`] is the one place that decides whether a failure is worth retrying
//! (the connection, the server, a serialization conflict) or is caused by the rows themselves.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, Date, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::claims::{ClaimRows, INSERT_CLAIMS, SELECT_CLAIMS, StoredClaim, keep_claimed};
use crate::db::PgPool;
use crate::schema::{quarantined_messages, user_logins};

/// Postgres takes at most 65,535 bind parameters per statement; rows per INSERT stay under it.
const MAX_BIND_PARAMS: usize = 65_535;
const LOGIN_COLUMNS: usize = 13;
const QUARANTINE_COLUMNS: usize = 12;

/// A `user_logins` row, PII already masked.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = user_logins)]
pub struct NewLogin {
    pub message_id: String,
    pub user_id: String,
    pub device_type: String,
    pub masked_ip: String,
    pub masked_device_id: String,
    pub locale: Option<String>,
    pub app_version: String,
    /// UTC date of `sent_at`.
    pub create_date: NaiveDate,
    pub sent_at: DateTime<Utc>,
    pub mask_key_id: String,
    /// The raw values sealed to the configured public key, when sealing is on.
    pub ip_sealed: Option<Vec<u8>>,
    pub device_id_sealed: Option<Vec<u8>>,
    pub seal_key_id: Option<String>,
    /// Hex HMAC of the message body under the masking key: claimed with the key (never stored raw).
    #[diesel(skip_insertion)]
    pub body_fingerprint: String,
}

/// A `quarantined_messages` row: why a message was refused, with its body's PII masked.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = quarantined_messages)]
pub struct NewQuarantined {
    pub message_id: String,
    pub reason: String,
    pub field: Option<String>,
    pub detail: String,
    pub masked_body: Option<String>,
    pub body_hmac: String,
    pub body_bytes: i32,
    pub receive_count: i32,
    pub sent_at: DateTime<Utc>,
    pub mask_key_id: String,
    /// The raw body sealed to the sealing public key; `None` without sealing.
    pub body_sealed: Option<Vec<u8>>,
    pub seal_key_id: Option<String>,
}

/// What one transaction did with the keys it was given.
#[derive(Debug, Default)]
pub struct Written {
    /// Keys this transaction claimed and wrote a row for.
    pub logins: HashSet<String>,
    /// Keys this transaction claimed and wrote a quarantine record for.
    pub quarantined: HashSet<String>,
    /// Keys already claimed by another body (a reused producer key): neither written nor duplicates.
    /// Every other key not written was claimed before by the same body: a duplicate.
    pub conflicts: HashSet<String>,
}

/// What to do about a failed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The database or the connection to it failed: retry the whole batch later.
    Retry,
    /// Postgres refused something in the rows: split the batch to find the offender.
    DataError,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("no Postgres connection available")]
    Pool(#[source] diesel_async::pooled_connection::deadpool::PoolError),
    #[error("Postgres refused the write")]
    Query(#[source] DieselError),
    #[error("Postgres refused the COPY write")]
    Copy(#[source] tokio_postgres::Error),
    #[error("no Postgres connection for the COPY writer")]
    Connect(#[source] crate::db::DbError),
    #[error("Postgres did not answer the {what} within {after:?}; the connection is dropped")]
    Timeout { what: &'static str, after: std::time::Duration },
}

impl SinkError {
    /// Retry or split: the single decision point for database failures.
    pub fn disposition(&self) -> Disposition {
        let error = match self {
            SinkError::Pool(_) | SinkError::Connect(_) | SinkError::Timeout { .. } => return Disposition::Retry,
            SinkError::Copy(error) => return copy_disposition(error),
            SinkError::Query(error) => error,
        };
        match error {
            DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation
                | DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::ExclusionViolation,
                _,
            ) => Disposition::DataError,
            // diesel keeps no SQLSTATE for the rest: a value too long (22001) and a cancelled statement
            // (57014) are both `Unknown`. They are retried, never blamed on the rows by their wording
            // (which follows the server's lc_messages); a failure that outlasts the pipeline's retry
            // budget while the server answers is then split like a data error.
            DieselError::DatabaseError(..) => Disposition::Retry,
            DieselError::SerializationError(_) | DieselError::QueryBuilderError(_) => Disposition::DataError,
            _ => Disposition::Retry,
        }
    }

    /// Whether the database refused to write because it is read-only (SQLSTATE 25006: the address
    /// leads to a replica, or `default_transaction_read_only` is on).
    pub fn is_read_only(&self) -> bool {
        match self {
            SinkError::Query(DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _)) => true,
            SinkError::Copy(error) => error.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
            _ => false,
        }
    }

    /// Whether the connection that failed must not be used again: it stopped answering, or it is
    /// bound to a server that is read-only (after a failover, a new connection finds the primary).
    pub fn drops_connection(&self) -> bool {
        matches!(self, SinkError::Timeout { .. }) || self.is_read_only()
    }

    /// A short, value-free description for logs and quarantine details. Postgres' own message is
    /// used only for its kind and column/constraint names, because its detail may quote values.
    pub fn summary(&self) -> String {
        match self {
            SinkError::Pool(e) => format!("no connection: {e}"),
            SinkError::Connect(e) => {
                format!("no connection: {}", std::error::Error::source(e).map_or(String::new(), ToString::to_string))
            }
            SinkError::Timeout { .. } => self.to_string(),
            SinkError::Query(DieselError::DatabaseError(kind, info)) => {
                let mut text = format!("{kind:?}");
                if let Some(c) = info.constraint_name() {
                    text.push_str(&format!(" on constraint {c}"));
                }
                if let Some(c) = info.column_name() {
                    text.push_str(&format!(" in column {c}"));
                }
                text
            }
            SinkError::Query(other) => format!("{other}"),
            SinkError::Copy(error) => match error.as_db_error() {
                Some(db) => {
                    let mut text = format!("SQLSTATE {}", db.code().code());
                    if let Some(c) = db.constraint() {
                        text.push_str(&format!(" on constraint {c}"));
                    }
                    if let Some(c) = db.column() {
                        text.push_str(&format!(" in column {c}"));
                    }
                    text
                }
                None => format!("{error}"),
            },
        }
    }
}

/// SQLSTATEs that mean a row's own value was refused. Anything else, including other class-22 codes
/// such as 22P04 (a malformed COPY stream: our bug, not the row's), is retried rather than blamed on
/// rows, so a systematic failure can never quarantine good messages.
const ROW_DATA_ERRORS: [&str; 12] = [
    "22001", // string_data_right_truncation
    "22003", // numeric_value_out_of_range
    "22007", // invalid_datetime_format
    "22008", // datetime_field_overflow
    "22021", // character_not_in_repertoire
    "22P02", // invalid_text_representation
    "22P05", // untranslatable_character
    "23502", // not_null_violation
    "23503", // foreign_key_violation
    "23505", // unique_violation (a constraint other than the dedup key)
    "23514", // check_violation
    "23P01", // exclusion_violation
];

fn copy_disposition(error: &tokio_postgres::Error) -> Disposition {
    match error.code().map(tokio_postgres::error::SqlState::code) {
        Some(code) if ROW_DATA_ERRORS.contains(&code) => Disposition::DataError,
        _ => Disposition::Retry,
    }
}

/// Writes batches to Postgres through a pool.
#[derive(Clone)]
pub struct PgSink {
    pool: PgPool,
    limits: super::WriteLimits,
}

impl PgSink {
    pub fn new(pool: PgPool) -> Self {
        PgSink { pool, limits: super::WriteLimits::default() }
    }

    /// The same sink with other client-side limits.
    pub fn with_limits(self, limits: super::WriteLimits) -> Self {
        PgSink { limits, ..self }
    }

    /// Claims the keys, then inserts the logins and quarantine records whose key this transaction
    /// claimed, in one durable transaction ([`super::claims`]).
    /// A connection that times out or finds the database read-only is dropped, not returned to the pool.
    pub async fn write(&self, logins: &[NewLogin], quarantined: &[NewQuarantined]) -> Result<Written, SinkError> {
        let mut conn = self.connection().await?;
        let write = conn.transaction(async |conn| insert_all(conn, logins, quarantined).await);
        let result = match tokio::time::timeout(self.limits.write, write).await {
            Ok(result) => result.map_err(SinkError::Query),
            Err(_) => Err(SinkError::Timeout { what: "write transaction", after: self.limits.write }),
        };
        if result.as_ref().is_err_and(SinkError::drops_connection) {
            drop(diesel_async::pooled_connection::deadpool::Object::take(conn));
        }
        result
    }

    /// What is stored about `keys` (one query): the ledger's hits are confirmed here before a
    /// message is skipped.
    pub async fn claims(&self, keys: &[String]) -> Result<HashMap<String, StoredClaim>, SinkError> {
        let mut conn = self.connection().await?;
        let query = stored_claims(&mut conn, keys);
        let result = match tokio::time::timeout(self.limits.write, query).await {
            Ok(result) => result.map_err(SinkError::Query),
            Err(_) => Err(SinkError::Timeout { what: "claims query", after: self.limits.write }),
        };
        if result.as_ref().is_err_and(SinkError::drops_connection) {
            drop(diesel_async::pooled_connection::deadpool::Object::take(conn));
        }
        result
    }

    /// Whether the server answers a trivial query (used before blaming a row for a failure).
    pub async fn ping(&self) -> bool {
        let Ok(mut conn) = self.connection().await else {
            return false;
        };
        let ping = diesel::sql_query("SELECT 1").execute(&mut conn);
        matches!(tokio::time::timeout(self.limits.connect, ping).await, Ok(Ok(_)))
    }

    /// A pooled connection within the connect limit (a pooled one is pinged first, which a dead
    /// network would hang).
    async fn connection(
        &self,
    ) -> Result<diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>, SinkError> {
        match tokio::time::timeout(self.limits.connect, self.pool.get()).await {
            Ok(conn) => conn.map_err(SinkError::Pool),
            Err(_) => Err(SinkError::Timeout { what: "connect", after: self.limits.connect }),
        }
    }
}

#[derive(QueryableByName)]
struct ClaimedKey {
    #[diesel(sql_type = Text)]
    dedup_key: String,
}

#[derive(QueryableByName)]
struct ClaimRow {
    #[diesel(sql_type = Text)]
    dedup_key: String,
    #[diesel(sql_type = Nullable<Text>)]
    body_fingerprint: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    fingerprint_key_id: Option<String>,
}

async fn stored_claims(
    conn: &mut AsyncPgConnection,
    keys: &[String],
) -> Result<HashMap<String, StoredClaim>, DieselError> {
    let rows: Vec<ClaimRow> = diesel::sql_query(SELECT_CLAIMS).bind::<Array<Text>, _>(keys).load(conn).await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.dedup_key, StoredClaim { fingerprint: r.body_fingerprint, key_id: r.fingerprint_key_id }))
        .collect())
}

/// Claims the batch's keys; returns those claimed here and those held by another body.
async fn claim(
    conn: &mut AsyncPgConnection,
    rows: &ClaimRows,
) -> Result<(HashSet<String>, HashSet<String>), DieselError> {
    let claimed: Vec<ClaimedKey> = diesel::sql_query(INSERT_CLAIMS)
        .bind::<Array<Text>, _>(&rows.keys)
        .bind::<Array<Text>, _>(&rows.fingerprints)
        .bind::<Array<Text>, _>(&rows.key_ids)
        .bind::<Array<Text>, _>(&rows.fates)
        .bind::<Array<Date>, _>(&rows.dates)
        .load(conn)
        .await?;
    let claimed: HashSet<String> = claimed.into_iter().map(|k| k.dedup_key).collect();
    if claimed.len() == rows.keys.len() {
        return Ok((claimed, HashSet::new()));
    }
    let others: Vec<String> = rows.keys.iter().filter(|k| !claimed.contains(*k)).cloned().collect();
    let conflicts = rows.conflicts(&stored_claims(conn, &others).await?);
    Ok((claimed, conflicts))
}

async fn insert_all(
    conn: &mut AsyncPgConnection,
    logins: &[NewLogin],
    quarantined: &[NewQuarantined],
) -> Result<Written, DieselError> {
    // A role or database default of `off` would let a commit be lost after its messages were deleted.
    diesel::sql_query("SET LOCAL synchronous_commit = on").execute(conn).await?;
    let (mut claimed, conflicts) = claim(conn, &ClaimRows::of(logins, quarantined)).await?;
    let logins = keep_claimed(logins, |l| &l.message_id, &mut claimed);
    let quarantined = keep_claimed(quarantined, |q| &q.message_id, &mut claimed);
    let mut written = Written { conflicts, ..Written::default() };
    for chunk in logins.chunks(MAX_BIND_PARAMS / LOGIN_COLUMNS) {
        diesel::insert_into(user_logins::table).values(chunk.to_vec()).execute(conn).await?;
        written.logins.extend(chunk.iter().map(|l| l.message_id.clone()));
    }
    for chunk in quarantined.chunks(MAX_BIND_PARAMS / QUARANTINE_COLUMNS) {
        diesel::insert_into(quarantined_messages::table).values(chunk.to_vec()).execute(conn).await?;
        written.quarantined.extend(chunk.iter().map(|q| q.message_id.clone()));
    }
    Ok(written)
}
