//! The INSERT sink: logins and quarantine records of one batch in one durable transaction through
//! diesel-async, written only for the keys the transaction claimed in `message_claims` first
//! ([`super::claims`]); a key claimed before was committed by an earlier delivery or another worker.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, Date, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::claims::{ClaimRows, Claimed, INSERT_CLAIMS, SELECT_CLAIMS, StoredClaim, keep_claimed};
use super::partitions::Months;
use super::{NewLogin, NewQuarantined, SinkError, WriteLimits, Written};
use crate::db::PgPool;
use crate::schema::{quarantined_messages, user_logins};

/// Postgres takes at most 65,535 bind parameters per statement; rows per INSERT stay under it.
const MAX_BIND_PARAMS: usize = 65_535;
const LOGIN_COLUMNS: usize = 13;
const QUARANTINE_COLUMNS: usize = 12;

/// Writes batches to Postgres through a pool.
#[derive(Clone)]
pub struct PgSink {
    pool: PgPool,
    limits: WriteLimits,
    /// Months whose `user_logins` partition a committed write has seen (shared by clones).
    months: std::sync::Arc<Months>,
}

impl PgSink {
    pub fn new(pool: PgPool) -> Self {
        PgSink { pool, limits: WriteLimits::default(), months: Default::default() }
    }

    /// The same sink with other client-side limits.
    pub fn with_limits(self, limits: WriteLimits) -> Self {
        PgSink { limits, ..self }
    }

    /// Claims the keys, then inserts the logins and quarantine records whose key this transaction
    /// claimed, in one durable transaction ([`super::claims`]).
    /// A connection that times out or finds the database read-only is dropped, not returned to the pool.
    pub async fn write(&self, logins: &[NewLogin], quarantined: &[NewQuarantined]) -> Result<Written, SinkError> {
        let mut conn = self.connection().await?;
        let months = self.months.unseen(logins.iter().map(|l| l.create_date));
        let write = conn.transaction(async |conn| insert_all(conn, &months, logins, quarantined).await);
        let result = match tokio::time::timeout(self.limits.write, write).await {
            Ok(result) => result.map_err(SinkError::Query),
            Err(_) => Err(SinkError::Timeout { what: "write transaction", after: self.limits.write }),
        };
        match &result {
            Ok(_) => self.months.remember(&months),
            Err(_) => self.months.forget(),
        }
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

async fn stored_claims<K: AsRef<str>>(
    conn: &mut AsyncPgConnection,
    keys: &[K],
) -> Result<HashMap<String, StoredClaim>, DieselError> {
    let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    let rows: Vec<ClaimRow> = diesel::sql_query(SELECT_CLAIMS).bind::<Array<Text>, _>(&keys).load(conn).await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.dedup_key, StoredClaim { fingerprint: r.body_fingerprint, key_id: r.fingerprint_key_id }))
        .collect())
}

/// Claims the batch's keys; returns those claimed here and those held by another body.
async fn claim(conn: &mut AsyncPgConnection, rows: &ClaimRows<'_>) -> Result<(Claimed, HashSet<String>), DieselError> {
    let returned: Vec<ClaimedKey> = diesel::sql_query(INSERT_CLAIMS)
        .bind::<Array<Text>, _>(&rows.keys)
        .bind::<Array<Text>, _>(&rows.fingerprints)
        .bind::<Array<Text>, _>(&rows.key_ids)
        .bind::<Array<Text>, _>(&rows.fates)
        .bind::<Array<Date>, _>(&rows.dates)
        .load(conn)
        .await?;
    let claimed = rows.claimed_of(returned.into_iter().map(|k| k.dedup_key).collect());
    let others = rows.others(&claimed);
    if others.is_empty() {
        return Ok((claimed, HashSet::new()));
    }
    let conflicts = rows.conflicts(&stored_claims(conn, &others).await?);
    Ok((claimed, conflicts))
}

async fn insert_all(
    conn: &mut AsyncPgConnection,
    months: &[chrono::NaiveDate],
    logins: &[NewLogin],
    quarantined: &[NewQuarantined],
) -> Result<Written, DieselError> {
    // A role or database default of `off` would let a commit be lost after its messages were deleted.
    diesel::sql_query("SET LOCAL synchronous_commit = on").execute(conn).await?;
    // Partitions come before any claim: creating one waits for other writers' transactions, which
    // must not be waiting for a claim this one holds.
    if !months.is_empty() {
        super::partitions::ensure(conn, months).await?;
    }
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
