//! The COPY sink: the same one-transaction, `ON CONFLICT (message_id) DO NOTHING` contract as
//! [`super::postgres::PgSink`], at near-COPY speed. Per batch, in one transaction:
//! 1. binary `COPY` the login rows into a temporary staging table (`ON COMMIT DELETE ROWS`);
//! 2. `INSERT INTO user_logins ... SELECT ... FROM staging ON CONFLICT (message_id) DO NOTHING
//!    RETURNING message_id` (the unique check happens here, so exactly-once is unchanged);
//! 3. quarantine records (rare) with ordinary parameterized inserts.
//!
//! diesel-async has no COPY, so this sink keeps one tokio-postgres connection of its own (the
//! pipeline has a single writer), reconnecting after a failure. diesel still owns the schema and the
//! migrations; the column lists here follow `src/schema.rs`.

use std::pin::pin;

use tokio::sync::Mutex;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::postgres::{NewLogin, NewQuarantined, SinkError, Written};

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

const INSERT_QUARANTINED: &str = "INSERT INTO quarantined_messages
    (message_id, reason, field, detail, masked_body, body_hmac, body_bytes, receive_count, sent_at, mask_key_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (message_id) DO NOTHING RETURNING message_id";

/// Writes batches through COPY on one connection.
pub struct CopySink {
    url: String,
    client: Mutex<Option<Client>>,
}

impl CopySink {
    /// A sink for `url`; it connects on first use.
    pub fn new(url: &str) -> Self {
        CopySink { url: url.to_owned(), client: Mutex::new(None) }
    }

    /// Inserts logins and quarantine records in one transaction; returns the ids actually inserted.
    pub async fn write(&self, logins: &[NewLogin], quarantined: &[NewQuarantined]) -> Result<Written, SinkError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.connect().await?);
        }
        let client = slot.as_mut().expect("connected just above");
        let result = write_batch(client, logins, quarantined).await;
        if result.is_err() && client.is_closed() {
            *slot = None;
        }
        result.map_err(SinkError::Copy)
    }

    /// Whether the server answers a trivial query.
    pub async fn ping(&self) -> bool {
        match tokio_postgres::connect(&self.url, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                client.simple_query("SELECT 1").await.is_ok()
            }
            Err(_) => false,
        }
    }

    async fn connect(&self) -> Result<Client, SinkError> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await.map_err(SinkError::Copy)?;
        // The connection task ends when the client is dropped or the server goes away; the next
        // write then sees a closed client and reconnects.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "COPY sink connection closed");
            }
        });
        client.batch_execute(CREATE_STAGING).await.map_err(SinkError::Copy)?;
        Ok(client)
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
        let sink = tx.copy_in(&format!("COPY pii_ingest_staging ({LOGIN_COLUMNS}) FROM STDIN BINARY")).await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &STAGING_TYPES));
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
        let insert = format!(
            "INSERT INTO user_logins ({LOGIN_COLUMNS}) SELECT {LOGIN_COLUMNS} FROM pii_ingest_staging \
             ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
        );
        for row in tx.query(&insert, &[]).await? {
            written.logins.insert(row.get(0));
        }
    }
    if !quarantined.is_empty() {
        let statement = tx.prepare(INSERT_QUARANTINED).await?;
        for q in quarantined {
            let params: [&(dyn ToSql + Sync); 10] = [
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
            ];
            if let Some(row) = tx.query_opt(&statement, &params).await? {
                written.quarantined.insert(row.get(0));
            }
        }
    }
    tx.commit().await?;
    Ok(written)
}
