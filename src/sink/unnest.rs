//! The COPY sink's statements for small batches: one `INSERT ... SELECT FROM unnest($1::text[], ...)`
//! per table, the columns sent as arrays, so a batch costs one statement (one round trip, a plan
//! prepared once per connection) whatever its size, where a COPY costs two round trips of its own
//! (start and finish) and a fixed setup on the server. Which batches take this path:
//! [`super::copy::UNNEST_BELOW`].
//!
//! The claims are the same `INSERT ... ON CONFLICT DO NOTHING RETURNING` as ever
//! ([`super::claims::INSERT_CLAIMS`]); the rows are inserted only for the keys claimed, with no
//! `ON CONFLICT` of their own, as the COPY of rows does: a row that collides is a data error, never
//! silently dropped.

use std::collections::HashSet;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Statement, Transaction};

use super::NewLogin;
use super::claims::{ClaimRows, Claimed};

/// The rows, one array per column of `user_logins` (the column list of the COPY).
pub(super) const INSERT_LOGINS: &str = "INSERT INTO user_logins
    (message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date, sent_at,
     mask_key_id, ip_sealed, device_id_sealed, seal_key_id)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::date[], $9::timestamptz[], $10::text[], $11::bytea[], $12::bytea[], $13::text[])";

/// Claims the keys with the prepared [`super::claims::INSERT_CLAIMS`], in the same round trip as
/// `prelude` (the transaction's settings and partitions, which run first).
pub(super) async fn claim(
    tx: &Transaction<'_>,
    insert_claims: &Statement,
    prelude: &str,
    rows: &ClaimRows<'_>,
) -> Result<Claimed, Error> {
    let params: [&(dyn ToSql + Sync); 5] = [&rows.keys, &rows.fingerprints, &rows.key_ids, &rows.fates, &rows.dates];
    let (_, returned) = futures::try_join!(tx.batch_execute(prelude), tx.query(insert_claims, &params))?;
    let returned: HashSet<String> = returned.iter().map(|r| r.get(0)).collect();
    Ok(rows.claimed_of(returned))
}

/// Inserts `logins` with the prepared [`INSERT_LOGINS`]: one statement, no string copied.
pub(super) async fn insert_logins(
    tx: &Transaction<'_>,
    statement: &Statement,
    logins: &[&NewLogin],
) -> Result<u64, Error> {
    let text = |column: fn(&NewLogin) -> &str| logins.iter().map(|l| column(l)).collect::<Vec<&str>>();
    let optional = |column: fn(&NewLogin) -> Option<&str>| logins.iter().map(|l| column(l)).collect::<Vec<_>>();
    let bytes = |column: fn(&NewLogin) -> Option<&[u8]>| logins.iter().map(|l| column(l)).collect::<Vec<_>>();
    let (message_id, user_id, device_type) = (text(|l| &l.message_id), text(|l| &l.user_id), text(|l| &l.device_type));
    let (masked_ip, masked_device_id) = (text(|l| &l.masked_ip), text(|l| &l.masked_device_id));
    let (locale, app_version) = (optional(|l| l.locale.as_deref()), text(|l| &l.app_version));
    let create_date: Vec<_> = logins.iter().map(|l| l.create_date).collect();
    let sent_at: Vec<_> = logins.iter().map(|l| l.sent_at).collect();
    let mask_key_id = text(|l| &l.mask_key_id);
    let (ip_sealed, device_id_sealed) = (bytes(|l| l.ip_sealed.as_deref()), bytes(|l| l.device_id_sealed.as_deref()));
    let seal_key_id = optional(|l| l.seal_key_id.as_deref());
    let params: [&(dyn ToSql + Sync); 13] = [
        &message_id,
        &user_id,
        &device_type,
        &masked_ip,
        &masked_device_id,
        &locale,
        &app_version,
        &create_date,
        &sent_at,
        &mask_key_id,
        &ip_sealed,
        &device_id_sealed,
        &seal_key_id,
    ];
    tx.execute(statement, &params).await
}
