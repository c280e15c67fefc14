//! The COPY sink: the same contract as [`super::PgSink`] (claim the keys, write only what
//! this transaction claimed, one durable transaction), at near-COPY speed. Per batch:
//! 1. `SET LOCAL synchronous_commit = on`, and the partitions of months this process has not
//!    written yet ([`super::partitions`]), in one round trip;
//! 2. claim the keys ([`super::claims`]) with a binary COPY into `message_claims` inside a savepoint.
//!    Most batches hold only new keys (the ledger filtered redeliveries out), and this is all it takes;
//!    if the primary key refuses one (a redelivery the ledger missed, another worker's message), the
//!    savepoint is rolled back and the keys are claimed with `INSERT ... ON CONFLICT DO NOTHING
//!    RETURNING`, then the keys not claimed are compared with what claimed them;
//! 3. binary COPY of the claimed logins straight into `user_logins`;
//! 4. quarantine records (rare) with ordinary parameterized inserts.
//!
//! diesel-async has no COPY, so this sink keeps tokio-postgres connections of its own, one per
//! concurrent writer, reconnecting after a failure. diesel still owns the schema and the
//! migrations; the column lists here follow `src/schema.rs`.

use std::pin::pin;

use std::collections::{HashMap, HashSet};

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::claims::{CLAIM_COLUMNS, ClaimRows, INSERT_CLAIMS, SELECT_CLAIMS, StoredClaim, keep_claimed};
use super::partitions::Months;
use super::{NewLogin, NewQuarantined, SinkError, WriteLimits, Written};

const LOGIN_COLUMNS: &str = "message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, \
     create_date, sent_at, mask_key_id, ip_sealed, device_id_sealed, seal_key_id";

/// The column types of `user_logins` itself, for the direct COPY.
const TABLE_TYPES: [Type; 13] = [
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::BPCHAR,
    Type::BPCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::DATE,
    Type::TIMESTAMPTZ,
    Type::VARCHAR,
    Type::BYTEA,
    Type::BYTEA,
    Type::VARCHAR,
];

/// The column types of `message_claims`, for the optimistic COPY.
const CLAIM_TYPES: [Type; 5] = [Type::VARCHAR, Type::BPCHAR, Type::VARCHAR, Type::VARCHAR, Type::DATE];

const INSERT_QUARANTINED: &str = "INSERT INTO quarantined_messages
    (message_id, reason, field, detail, masked_body, body_hmac, body_bytes, receive_count, sent_at, mask_key_id,
     body_sealed, seal_key_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// Binary COPY of login rows into `table`, a table shaped like `user_logins` (also the bare-COPY
/// baseline of `pii-bench`, so both copy exactly the same bytes).
pub async fn copy_logins(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    logins: &[NewLogin],
) -> Result<(), tokio_postgres::Error> {
    let rows: Vec<&NewLogin> = logins.iter().collect();
    copy_rows(tx, table, &rows).await
}

/// Binary COPY of login rows into `table`.
async fn copy_rows(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    logins: &[&NewLogin],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(&format!("COPY {table} ({LOGIN_COLUMNS}) FROM STDIN BINARY")).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &TABLE_TYPES));
    for row in logins {
        let values: [&(dyn ToSql + Sync); 13] = [
            &row.message_id,
            &row.user_id,
            &row.device_type,
            &row.masked_ip,
            &row.masked_device_id,
            &row.locale,
            &row.app_version,
            &row.create_date,
            &row.sent_at,
            &row.mask_key_id,
            &row.ip_sealed,
            &row.device_id_sealed,
            &row.seal_key_id,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// One COPY connection: the client, and the task that drives its socket (aborted when the
/// connection is given up, so a connection stuck on a dead network does not linger).
struct Connection {
    client: Client,
    driver: tokio::task::AbortHandle,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Writes batches through COPY on one connection.
pub struct CopySink {
    url: String,
    /// One connection per concurrent writer; a writer takes a free one.
    clients: Vec<Mutex<Option<Connection>>>,
    limits: WriteLimits,
    /// Months whose `user_logins` partition a committed write has seen.
    months: Months,
}

impl CopySink {
    /// A sink for `url` with up to `connections` concurrent writes; it connects on first use.
    pub fn new(url: &str, connections: usize) -> Self {
        CopySink {
            url: url.to_owned(),
            clients: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            limits: WriteLimits::default(),
            months: Months::default(),
        }
    }

    /// The same sink with other client-side limits.
    pub fn with_limits(self, limits: WriteLimits) -> Self {
        CopySink { limits, ..self }
    }

    /// Claims the keys, then writes the logins and quarantine records whose key this transaction
    /// claimed, in one durable transaction.
    /// A connection that fails, times out or finds the database read-only is dropped; the next
    /// write connects afresh.
    pub async fn write(&self, logins: &[NewLogin], quarantined: &[NewQuarantined]) -> Result<Written, SinkError> {
        let mut slot = self.connection().await?;
        let connection = slot.as_mut().expect("connection() connects");
        let months = self.months.unseen(&logins.iter().collect::<Vec<_>>());
        let write = write_batch(&mut connection.client, &months, logins, quarantined);
        let result = match tokio::time::timeout(self.limits.write, write).await {
            Ok(result) => result.map_err(SinkError::Copy),
            Err(_) => Err(SinkError::Timeout { what: "write transaction", after: self.limits.write }),
        };
        match &result {
            Ok(_) => self.months.remember(&months),
            Err(_) => self.months.forget(),
        }
        if result.as_ref().is_err_and(SinkError::drops_connection) || connection.client.is_closed() {
            *slot = None;
        }
        result
    }

    /// What is stored about `keys` (one query), within the write limit.
    pub async fn claims(&self, keys: &[String]) -> Result<HashMap<String, StoredClaim>, SinkError> {
        let mut slot = self.connection().await?;
        let connection = slot.as_mut().expect("connection() connects");
        let query = stored_claims(&connection.client, keys);
        let result = match tokio::time::timeout(self.limits.write, query).await {
            Ok(result) => result.map_err(SinkError::Copy),
            Err(_) => Err(SinkError::Timeout { what: "claims query", after: self.limits.write }),
        };
        if result.as_ref().is_err_and(SinkError::drops_connection) || connection.client.is_closed() {
            *slot = None;
        }
        result
    }

    /// A free connection (or the first, once free), connected.
    async fn connection(&self) -> Result<MutexGuard<'_, Option<Connection>>, SinkError> {
        let mut slot = match self.clients.iter().find_map(|c| c.try_lock().ok()) {
            Some(slot) => slot,
            None => self.clients[0].lock().await,
        };
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            *slot = Some(self.connect().await?);
        }
        Ok(slot)
    }

    /// Whether the server answers a trivial query.
    pub async fn ping(&self) -> bool {
        let ping = async {
            let connection = self.connect_plain().await.ok()?;
            connection.client.simple_query("SELECT 1").await.ok()
        };
        matches!(tokio::time::timeout(self.limits.connect, ping).await, Ok(Some(_)))
    }

    async fn connect(&self) -> Result<Connection, SinkError> {
        match tokio::time::timeout(self.limits.connect, self.connect_plain()).await {
            Ok(connection) => connection,
            Err(_) => Err(SinkError::Timeout { what: "connect", after: self.limits.connect }),
        }
    }

    /// A connection through the crate's one connect helper (TLS as the URL says), without the
    /// staging table.
    async fn connect_plain(&self) -> Result<Connection, SinkError> {
        let (client, connection) = crate::db::connect_raw(&self.url).await.map_err(SinkError::Connect)?;
        // The connection task ends when the client is dropped or the server goes away; the next
        // write then sees a closed client and reconnects.
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "COPY sink connection closed");
            }
        });
        Ok(Connection { client, driver: driver.abort_handle() })
    }
}

async fn write_batch(
    client: &mut Client,
    months: &[chrono::NaiveDate],
    logins: &[NewLogin],
    quarantined: &[NewQuarantined],
) -> Result<Written, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // A role or database default of `off` would let a commit be lost after its messages were deleted.
    // Partitions come before any claim: creating one waits for other writers' transactions, which
    // must not be waiting for a claim this one holds.
    let mut prelude = String::from("SET LOCAL synchronous_commit = on");
    if !months.is_empty() {
        // Dates print as digits and dashes only: nothing to escape.
        let list: Vec<String> = months.iter().map(ToString::to_string).collect();
        prelude.push_str(&format!("; SELECT user_logins_ensure_partitions('{{{}}}'::date[])", list.join(",")));
    }
    tx.batch_execute(&prelude).await?;
    let (mut claimed, conflicts) = claim(&tx, &ClaimRows::of(logins, quarantined)).await?;
    let logins = keep_claimed(logins, |l| &l.message_id, &mut claimed);
    let quarantined = keep_claimed(quarantined, |q| &q.message_id, &mut claimed);
    let mut written = Written { conflicts, ..Written::default() };
    if !logins.is_empty() {
        copy_rows(&tx, "user_logins", &logins).await?;
        written.logins.extend(logins.iter().map(|l| l.message_id.clone()));
    }
    if !quarantined.is_empty() {
        let statement = tx.prepare(INSERT_QUARANTINED).await?;
        for q in quarantined {
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
            tx.execute(&statement, &params).await?;
            written.quarantined.insert(q.message_id.clone());
        }
    }
    tx.commit().await?;
    Ok(written)
}

/// Claims the batch's keys: optimistically by COPY; if a key is taken, by `INSERT ... ON CONFLICT`.
/// Returns the keys claimed here and those held by another body.
async fn claim(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &ClaimRows,
) -> Result<(HashSet<String>, HashSet<String>), tokio_postgres::Error> {
    if rows.keys.is_empty() {
        return Ok(Default::default());
    }
    tx.batch_execute("SAVEPOINT claims").await?;
    match copy_claims(tx, rows).await {
        Ok(()) => {
            tx.batch_execute("RELEASE SAVEPOINT claims").await?;
            return Ok((rows.keys.iter().cloned().collect(), HashSet::new()));
        }
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT claims").await?;
        }
        Err(error) => return Err(error),
    }
    let params: [&(dyn ToSql + Sync); 5] = [&rows.keys, &rows.fingerprints, &rows.key_ids, &rows.fates, &rows.dates];
    let claimed: HashSet<String> = tx.query(INSERT_CLAIMS, &params).await?.iter().map(|r| r.get(0)).collect();
    let others: Vec<&String> = rows.keys.iter().filter(|k| !claimed.contains(*k)).collect();
    let stored = stored_claims_in(tx, &others).await?;
    Ok((claimed, rows.conflicts(&stored)))
}

async fn copy_claims(tx: &tokio_postgres::Transaction<'_>, rows: &ClaimRows) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(&format!("COPY message_claims ({CLAIM_COLUMNS}) FROM STDIN BINARY")).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &CLAIM_TYPES));
    for i in 0..rows.keys.len() {
        let values: [&(dyn ToSql + Sync); 5] =
            [&rows.keys[i], &rows.fingerprints[i], &rows.key_ids[i], &rows.fates[i], &rows.dates[i]];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    Ok(())
}

async fn stored_claims(
    client: &Client,
    keys: &[String],
) -> Result<HashMap<String, StoredClaim>, tokio_postgres::Error> {
    Ok(client.query(SELECT_CLAIMS, &[&keys]).await?.iter().map(stored_claim).collect())
}

async fn stored_claims_in(
    tx: &tokio_postgres::Transaction<'_>,
    keys: &[&String],
) -> Result<HashMap<String, StoredClaim>, tokio_postgres::Error> {
    Ok(tx.query(SELECT_CLAIMS, &[&keys]).await?.iter().map(stored_claim).collect())
}

fn stored_claim(row: &tokio_postgres::Row) -> (String, StoredClaim) {
    (row.get(0), StoredClaim { fingerprint: row.get(1), key_id: row.get(2) })
}
