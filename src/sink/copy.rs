//! The COPY sink: the same one-transaction, `ON CONFLICT (message_id) DO NOTHING` contract as
//! [`super::postgres::PgSink`], at near-COPY speed. Per batch, in one transaction:
//! 1. binary `COPY` the login rows straight into `user_logins` inside a savepoint. Most batches hold
//!    no id that is already stored (the ledger filtered redeliveries out), and this is all it takes;
//! 2. if the unique index refuses one (a redelivery the ledger missed, or another worker's row), roll
//!    back to the savepoint, COPY the rows into a temporary staging table (`ON COMMIT DELETE ROWS`)
//!    and `INSERT INTO user_logins ... SELECT ... FROM staging ON CONFLICT (message_id) DO NOTHING
//!    RETURNING message_id`;
//! 3. quarantine records (rare) with ordinary parameterized inserts.
//! The unique index decides in both paths, so exactly-once does not depend on which one ran.
//!
//! diesel-async has no COPY, so this sink keeps tokio-postgres connections of its own, one per
//! concurrent writer, reconnecting after a failure. diesel still owns the schema and the
//! migrations; the column lists here follow `src/schema.rs`.

use std::pin::pin;

use tokio::sync::Mutex;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::WriteLimits;
use super::insert::{NewLogin, NewQuarantined, SinkError, Written};

/// Staging columns are unbounded `text`, so COPY itself never fails on a length; the INSERT applies
/// the real column types and reports a data error there.
const CREATE_STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS pii_ingest_staging (
    message_id text, user_id text, device_type text, masked_ip text, masked_device_id text,
    locale text, app_version text, create_date date, sent_at timestamptz, mask_key_id text,
    ip_sealed bytea, device_id_sealed bytea, seal_key_id text
) ON COMMIT DELETE ROWS";

const LOGIN_COLUMNS: &str = "message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, \
     create_date, sent_at, mask_key_id, ip_sealed, device_id_sealed, seal_key_id";

const STAGING_TYPES: [Type; 13] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::DATE,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::BYTEA,
    Type::BYTEA,
    Type::TEXT,
];

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

const INSERT_QUARANTINED: &str = "INSERT INTO quarantined_messages
    (message_id, reason, field, detail, masked_body, body_hmac, body_bytes, receive_count, sent_at, mask_key_id,
     body_sealed, seal_key_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (message_id) DO NOTHING RETURNING message_id";

/// Binary COPY of login rows into `table`, a table shaped like `user_logins` (also the bare-COPY
/// baseline of `pii-bench`, so both copy exactly the same bytes).
pub async fn copy_logins(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    logins: &[NewLogin],
) -> Result<(), tokio_postgres::Error> {
    copy_rows(tx, table, &TABLE_TYPES, logins).await
}

/// Binary COPY of login rows into `table`, whose column types are `types`.
async fn copy_rows(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    types: &[Type],
    logins: &[NewLogin],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(&format!("COPY {table} ({LOGIN_COLUMNS}) FROM STDIN BINARY")).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, types));
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
}

impl CopySink {
    /// A sink for `url` with up to `connections` concurrent writes; it connects on first use.
    pub fn new(url: &str, connections: usize) -> Self {
        CopySink {
            url: url.to_owned(),
            clients: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            limits: WriteLimits::default(),
        }
    }

    /// The same sink with other client-side limits.
    pub fn with_limits(self, limits: WriteLimits) -> Self {
        CopySink { limits, ..self }
    }

    /// Inserts logins and quarantine records in one transaction; returns the ids actually inserted.
    /// A connection that fails, times out or finds the database read-only is dropped; the next write
    /// connects afresh.
    pub async fn write(&self, logins: &[NewLogin], quarantined: &[NewQuarantined]) -> Result<Written, SinkError> {
        let mut slot = match self.clients.iter().find_map(|c| c.try_lock().ok()) {
            Some(slot) => slot,
            None => self.clients[0].lock().await,
        };
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            *slot = Some(self.connect().await?);
        }
        let connection = slot.as_mut().expect("connected just above");
        let write = write_batch(&mut connection.client, logins, quarantined);
        let result = match tokio::time::timeout(self.limits.write, write).await {
            Ok(result) => result.map_err(SinkError::Copy),
            Err(_) => Err(SinkError::Timeout { what: "write transaction", after: self.limits.write }),
        };
        if result.as_ref().is_err_and(|e| e.drops_connection()) || connection.client.is_closed() {
            *slot = None;
        }
        result
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
        let connect = async {
            let connection = self.connect_plain().await?;
            connection.client.batch_execute(CREATE_STAGING).await.map_err(SinkError::Copy)?;
            Ok(connection)
        };
        match tokio::time::timeout(self.limits.connect, connect).await {
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
    logins: &[NewLogin],
    quarantined: &[NewQuarantined],
) -> Result<Written, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut written = Written::default();
    if !logins.is_empty() {
        // Optimistic: COPY straight into the table. A redelivered id makes the unique index refuse
        // the COPY; then the savepoint undoes it and the batch goes the staging way, where
        // ON CONFLICT sorts new rows from old. Either way the unique index decides.
        tx.batch_execute("SAVEPOINT direct_copy").await?;
        match copy_logins(&tx, "user_logins", logins).await {
            Ok(()) => {
                tx.batch_execute("RELEASE SAVEPOINT direct_copy").await?;
                written.logins.reserve(logins.len());
                written.logins.extend(logins.iter().map(|l| l.message_id.clone()));
            }
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT direct_copy").await?;
                copy_rows(&tx, "pii_ingest_staging", &STAGING_TYPES, logins).await?;
                let insert = format!(
                    "INSERT INTO user_logins ({LOGIN_COLUMNS}) SELECT {LOGIN_COLUMNS} FROM pii_ingest_staging \
                     ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
                );
                for row in tx.query(&insert, &[]).await? {
                    written.logins.insert(row.get(0));
                }
            }
            Err(error) => return Err(error),
        }
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
            if let Some(row) = tx.query_opt(&statement, &params).await? {
                written.quarantined.insert(row.get(0));
            }
        }
    }
    tx.commit().await?;
    Ok(written)
}
