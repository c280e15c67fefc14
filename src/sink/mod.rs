//! Where rows go: Postgres, by multi-row INSERT through diesel-async ([`PgSink`]) or by binary COPY
//! ([`CopySink`]). Both write a batch in one durable transaction that first claims every key in
//! `message_claims` ([`claims`]) and then writes only what it claimed, and report what they wrote and
//! which keys another body holds; the pipeline cannot tell them apart. The module boundary keeps SQL
//! out of the pipeline.
//!
//! Both bound every connect and every write transaction on the client side ([`WriteLimits`]): a
//! connection that stops answering without closing (a dropped network) is abandoned, and so is one
//! that finds the database read-only (a failover left it on a replica), so the next write connects
//! afresh, to whatever primary the address now names.

pub mod claims;
pub mod copy;
pub mod insert;

pub use claims::StoredClaim;
pub use copy::CopySink;
pub use insert::{Disposition, NewLogin, NewQuarantined, PgSink, SinkError, Written};

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

/// One of the two sinks.
pub enum Sink {
    Insert(PgSink),
    Copy(CopySink),
}

impl Sink {
    pub async fn write(&self, logins: &[NewLogin], quarantined: &[NewQuarantined]) -> Result<Written, SinkError> {
        match self {
            Sink::Insert(sink) => sink.write(logins, quarantined).await,
            Sink::Copy(sink) => sink.write(logins, quarantined).await,
        }
    }

    /// What `message_claims` holds for `keys` (one query): how the pipeline confirms ledger hits.
    pub async fn claims(&self, keys: &[String]) -> Result<std::collections::HashMap<String, StoredClaim>, SinkError> {
        match self {
            Sink::Insert(sink) => sink.claims(keys).await,
            Sink::Copy(sink) => sink.claims(keys).await,
        }
    }

    pub async fn ping(&self) -> bool {
        match self {
            Sink::Insert(sink) => sink.ping().await,
            Sink::Copy(sink) => sink.ping().await,
        }
    }
}
