//! Where rows go: Postgres, by multi-row INSERT through diesel-async ([`PgSink`]) or by binary COPY
//! ([`CopySink`], which writes small batches by `INSERT ... SELECT FROM unnest` instead: [`unnest`]).
//! The rows, what a write reports and how it fails ([`SinkError`]) are shared here, so neither sink
//! imports the other. Both write a batch in one durable transaction that first claims every key in
//! `message_claims` ([`claims`]) and then writes only what it claimed (into monthly partitions of
//! `user_logins` that it creates when missing: [`partitions`]), and report what they wrote and
//! which keys another body holds; the pipeline cannot tell them apart. The module boundary keeps SQL
//! out of the pipeline.
//!
//! Both bound every connect and every write transaction on the client side ([`WriteLimits`]): a
//! connection that stops answering without closing (a dropped network) is abandoned, and so is one
//! that finds the database read-only (a failover left it on a replica), so the next write connects
//! afresh, to whatever primary the address now names.

mod binary;
pub mod claims;
pub mod copy;
mod error;
pub mod insert;
pub mod partitions;
mod statements;
mod unnest;

use std::collections::{HashMap, HashSet};
use std::future::Future;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::Insertable;

pub use claims::StoredClaim;
pub use copy::CopySink;
pub use error::{Disposition, SinkError};
pub use insert::PgSink;

use crate::schema::{quarantined_messages, user_logins};

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

/// Most rows the pipeline puts in one transaction (config `pipeline.batch_max_rows` is capped here).
pub const MAX_ROWS_PER_TRANSACTION: usize = 5000;

/// Client-side bounds on a sink's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    /// A new connection, handshake included.
    pub connect: std::time::Duration,
    /// One write transaction, from BEGIN to COMMIT's answer.
    pub write: std::time::Duration,
}

impl Default for WriteLimits {
    fn default() -> Self {
        WriteLimits { connect: std::time::Duration::from_secs(10), write: std::time::Duration::from_secs(60) }
    }
}

/// How rows are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMethod {
    /// Binary COPY of the claims (falling back to INSERT ... ON CONFLICT) and of the rows.
    #[default]
    Copy,
    /// Multi-row INSERTs through diesel-async.
    Insert,
}

/// Where the pipeline writes: one durable transaction per `write` that claims every key first and
/// writes only what it claimed. [`Postgres`] in production; an in-memory fake in the pipeline's unit
/// tests.
pub trait Sink: Send + Sync + 'static {
    /// Claims the keys of `logins` and `quarantined`, then writes the rows whose key this call
    /// claimed, in one transaction: all of it commits, or none.
    fn write(
        &self,
        logins: &[NewLogin],
        quarantined: &[NewQuarantined],
    ) -> impl Future<Output = Result<Written, SinkError>> + Send;

    /// What `message_claims` holds for `keys` (one query): how the pipeline confirms ledger hits.
    fn claims(&self, keys: &[String]) -> impl Future<Output = Result<HashMap<String, StoredClaim>, SinkError>> + Send;

    /// Whether the server answers a trivial query (asked before a failure is blamed on a row).
    fn ping(&self) -> impl Future<Output = bool> + Send;
}

/// The configured Postgres sink: either write method, chosen at startup.
pub enum Postgres {
    Insert(PgSink),
    Copy(CopySink),
}

impl Sink for Postgres {
    async fn write(&self, logins: &[NewLogin], quarantined: &[NewQuarantined]) -> Result<Written, SinkError> {
        match self {
            Postgres::Insert(sink) => sink.write(logins, quarantined).await,
            Postgres::Copy(sink) => sink.write(logins, quarantined).await,
        }
    }

    async fn claims(&self, keys: &[String]) -> Result<HashMap<String, StoredClaim>, SinkError> {
        match self {
            Postgres::Insert(sink) => sink.claims(keys).await,
            Postgres::Copy(sink) => sink.claims(keys).await,
        }
    }

    async fn ping(&self) -> bool {
        match self {
            Postgres::Insert(sink) => sink.ping().await,
            Postgres::Copy(sink) => sink.ping().await,
        }
    }
}
