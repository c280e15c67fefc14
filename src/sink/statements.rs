//! The COPY sink's statements, prepared once per connection ([`Statements`]): a statement given as
//! text is prepared again on every use, one more round trip each. Also the two that are not part of a
//! batch's COPY or unnest: the quarantine record's insert, and the lookup of stored claims.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

use super::NewQuarantined;
use super::claims::{COPY_CLAIMS, INSERT_CLAIMS, SELECT_CLAIMS, StoredClaim};
use super::copy::COPY_LOGINS;
use super::unnest::INSERT_LOGINS;

const INSERT_QUARANTINED: &str = "INSERT INTO quarantined_messages
    (message_id, reason, field, detail, masked_body, body_hmac, body_bytes, receive_count, sent_at, mask_key_id,
     body_sealed, seal_key_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// The statements of a writer.
pub(super) struct Statements {
    pub copy_claims: Statement,
    pub copy_logins: Statement,
    pub insert_claims: Statement,
    pub insert_logins: Statement,
    pub select_claims: Statement,
    pub insert_quarantined: Statement,
}

impl Statements {
    /// All of them, in one round trip.
    pub async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        let (copy_claims, copy_logins, insert_claims, insert_logins, select_claims, insert_quarantined) = futures::try_join!(
            client.prepare(COPY_CLAIMS),
            client.prepare(COPY_LOGINS),
            client.prepare(INSERT_CLAIMS),
            client.prepare(INSERT_LOGINS),
            client.prepare(SELECT_CLAIMS),
            client.prepare(INSERT_QUARANTINED),
        )?;
        Ok(Statements { copy_claims, copy_logins, insert_claims, insert_logins, select_claims, insert_quarantined })
    }
}

pub(super) async fn insert_quarantined(
    tx: &Transaction<'_>,
    statement: &Statement,
    q: &NewQuarantined,
) -> Result<u64, tokio_postgres::Error> {
    let params: [&(dyn ToSql + Sync); 12] = [
        &q.message_id,
        &q.reason,
        &q.field,
        &q.detail,
        &q.masked_body,
        &q.body_hmac,
        &q.body_bytes,
        &q.receive_count,
        &q.sent_at,
        &q.mask_key_id,
        &q.body_sealed,
        &q.seal_key_id,
    ];
    tx.execute(statement, &params).await
}

pub(super) async fn stored_claims(
    client: &Client,
    statement: &Statement,
    keys: &[String],
) -> Result<HashMap<String, StoredClaim>, tokio_postgres::Error> {
    Ok(client.query(statement, &[&keys]).await?.iter().map(stored_claim).collect())
}

pub(super) async fn stored_claims_in(
    tx: &Transaction<'_>,
    statements: &Statements,
    keys: &[&str],
) -> Result<HashMap<String, StoredClaim>, tokio_postgres::Error> {
    Ok(tx.query(&statements.select_claims, &[&keys]).await?.iter().map(stored_claim).collect())
}

fn stored_claim(row: &tokio_postgres::Row) -> (String, StoredClaim) {
    (row.get(0), StoredClaim { fingerprint: row.get(1), key_id: row.get(2) })
}
