//! How a sink fails, and the one place that decides what a failure means:
//! [`SinkError::disposition`] says whether it is worth retrying (the connection, the server, a
//! serialization conflict) or is caused by the rows themselves, for both sinks: diesel's error
//! kinds for INSERT, the SQLSTATE for COPY ([`ROW_DATA_ERRORS`]).

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// What to do about a failed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The database or the connection to it failed: retry the whole batch later.
    Retry,
    /// Postgres refused something in the rows: split the batch to find the offender.
    DataError,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("no Postgres connection available")]
    Pool(#[source] diesel_async::pooled_connection::deadpool::PoolError),
    #[error("Postgres refused the write")]
    Query(#[source] DieselError),
    #[error("Postgres refused the COPY write")]
    Copy(#[source] tokio_postgres::Error),
    #[error("no Postgres connection for the COPY writer")]
    Connect(#[source] crate::db::DbError),
    #[error("Postgres did not answer the {what} within {after:?}; the connection is dropped")]
    Timeout { what: &'static str, after: std::time::Duration },
}

impl SinkError {
    /// Retry or split: the single decision point for database failures.
    pub fn disposition(&self) -> Disposition {
        let error = match self {
            SinkError::Pool(_) | SinkError::Connect(_) | SinkError::Timeout { .. } => return Disposition::Retry,
            SinkError::Copy(error) => return sqlstate_disposition(error),
            SinkError::Query(error) => error,
        };
        match error {
            DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation
                | DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::ExclusionViolation,
                _,
            ) => Disposition::DataError,
            // diesel keeps no SQLSTATE for the rest: a value too long (22001) and a cancelled statement
            // (57014) are both `Unknown`. They are retried, never blamed on the rows by their wording
            // (which follows the server's lc_messages); a failure that outlasts the pipeline's retry
            // budget while the server answers is then split like a data error.
            DieselError::DatabaseError(..) => Disposition::Retry,
            DieselError::SerializationError(_) | DieselError::QueryBuilderError(_) => Disposition::DataError,
            _ => Disposition::Retry,
        }
    }

    /// Whether the database refused to write because it is read-only (SQLSTATE 25006: the address
    /// leads to a replica, or `default_transaction_read_only` is on).
    pub fn is_read_only(&self) -> bool {
        match self {
            SinkError::Query(DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _)) => true,
            SinkError::Copy(error) => error.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
            _ => false,
        }
    }

    /// Whether the connection that failed must not be used again: it stopped answering, it is bound
    /// to a server that is read-only (after a failover, a new connection finds the primary), or it is
    /// the COPY sink's and failed for any reason but the rows. That sink prepares its statements once
    /// per connection, and a prepared statement can fail on every later use: a migration changed a
    /// type it returns (0A000, "cached plan must not change result type"), or a pooler in transaction
    /// mode lost it (26000). A new connection prepares them again; keeping the old one would retry the
    /// same failure until the batch was split and wrongly refused.
    pub fn drops_connection(&self) -> bool {
        match self {
            SinkError::Timeout { .. } => true,
            SinkError::Copy(error) => sqlstate_disposition(error) == Disposition::Retry,
            _ => self.is_read_only(),
        }
    }

    /// A short, value-free description for logs and quarantine details. Postgres' own message is
    /// used only for its kind and column/constraint names, because its detail may quote values.
    pub fn summary(&self) -> String {
        match self {
            SinkError::Pool(e) => format!("no connection: {e}"),
            SinkError::Connect(e) => {
                format!("no connection: {}", std::error::Error::source(e).map_or(String::new(), ToString::to_string))
            }
            SinkError::Timeout { .. } => self.to_string(),
            SinkError::Query(DieselError::DatabaseError(kind, info)) => {
                let mut text = format!("{kind:?}");
                if let Some(c) = info.constraint_name() {
                    text.push_str(&format!(" on constraint {c}"));
                }
                if let Some(c) = info.column_name() {
                    text.push_str(&format!(" in column {c}"));
                }
                text
            }
            SinkError::Query(other) => format!("{other}"),
            SinkError::Copy(error) => match error.as_db_error() {
                Some(db) => {
                    let mut text = format!("SQLSTATE {}", db.code().code());
                    if let Some(c) = db.constraint() {
                        text.push_str(&format!(" on constraint {c}"));
                    }
                    if let Some(c) = db.column() {
                        text.push_str(&format!(" in column {c}"));
                    }
                    text
                }
                None => format!("{error}"),
            },
        }
    }
}

/// SQLSTATEs that mean a row's own value was refused. Anything else, including other class-22 codes
/// such as 22P04 (a malformed COPY stream: our bug, not the row's), is retried rather than blamed on
/// rows, so a systematic failure can never quarantine good messages.
const ROW_DATA_ERRORS: [&str; 12] = [
    "22001", // string_data_right_truncation
    "22003", // numeric_value_out_of_range
    "22007", // invalid_datetime_format
    "22008", // datetime_field_overflow
    "22021", // character_not_in_repertoire
    "22P02", // invalid_text_representation
    "22P05", // untranslatable_character
    "23502", // not_null_violation
    "23503", // foreign_key_violation
    "23505", // unique_violation (a constraint other than the dedup key)
    "23514", // check_violation
    "23P01", // exclusion_violation
];

fn sqlstate_disposition(error: &tokio_postgres::Error) -> Disposition {
    match error.code().map(tokio_postgres::error::SqlState::code) {
        Some(code) if ROW_DATA_ERRORS.contains(&code) => Disposition::DataError,
        _ => Disposition::Retry,
    }
}
