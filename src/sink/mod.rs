//! Where rows go: Postgres, by multi-row INSERT through diesel-async ([`PgSink`]) or by COPY into a
//! staging table ([`CopySink`]). Both write a batch in one transaction with
//! `ON CONFLICT (message_id) DO NOTHING` and return the ids they inserted; the pipeline cannot tell
//! them apart. The module boundary keeps SQL out of the pipeline.

pub mod copy;
pub mod insert;

pub use copy::CopySink;
pub use insert::{Disposition, NewLogin, NewQuarantined, PgSink, SinkError, Written};

/// Most rows the pipeline puts in one transaction (config `pipeline.batch_max_rows` is capped here).
pub const MAX_ROWS_PER_TRANSACTION: usize = 5000;

/// How rows are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMethod {
    /// COPY into a staging table, then INSERT ... SELECT ... ON CONFLICT DO NOTHING.
    #[default]
    Copy,
    /// Multi-row INSERT ... ON CONFLICT DO NOTHING through diesel-async.
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

    pub async fn ping(&self) -> bool {
        match self {
            Sink::Insert(sink) => sink.ping().await,
            Sink::Copy(sink) => sink.ping().await,
        }
    }
}
