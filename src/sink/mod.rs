//! Where rows go. Only Postgres today; the module boundary keeps SQL out of the pipeline.

pub mod postgres;

pub use postgres::{Disposition, NewLogin, NewQuarantined, PgSink, SinkError, Written};

/// Most rows the pipeline puts in one transaction (config `pipeline.batch_max_rows` is capped here).
pub const MAX_ROWS_PER_TRANSACTION: usize = 5000;
