//! Database plumbing: the connection pool, the embedded migrations (the same files `diesel migration
//! run` applies), and creating the database itself when it is missing.

pub mod tls;

use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

/// The migrations under `migrations/`, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type PgPool = Pool<AsyncPgConnection>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to Postgres at {url}")]
    Connect {
        url: String,
        #[source]
        source: diesel::ConnectionError,
    },
    #[error("could not build the connection pool")]
    Pool(#[source] diesel_async::pooled_connection::deadpool::BuildError),
    #[error("migrations failed")]
    Migrate(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the database has {0} pending migration(s): run `pii-ingest migrate`")]
    Pending(usize),
    #[error("could not create database {name}")]
    Create {
        name: String,
        #[source]
        source: diesel::result::Error,
    },
    #[error("could not {what}")]
    Query {
        what: &'static str,
        #[source]
        source: diesel::result::Error,
    },
    #[error("database name in {0} must be letters, digits and underscores")]
    BadName(String),
}

/// A pool of at most `size` connections to `url`.
pub fn pool(url: &str, size: usize) -> Result<PgPool, DbError> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
    Pool::builder(manager).max_size(size).build().map_err(DbError::Pool)
}

/// Applies pending migrations; returns the versions applied.
pub async fn migrate(url: &str) -> Result<Vec<String>, DbError> {
    let url = url.to_owned();
    let shown = crate::config::redact_url_password(&url);
    // The migration harness is synchronous; it runs over the async connection on a blocking thread.
    tokio::task::spawn_blocking(move || {
        let mut conn = <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)
            .map_err(|source| DbError::Connect { url: shown, source })?;
        let done = conn.run_pending_migrations(MIGRATIONS).map_err(DbError::Migrate)?;
        Ok(done.iter().map(|v| v.to_string()).collect())
    })
    .await
    .expect("the migration task does not panic")
}

/// Fails with [`DbError::Pending`] unless every embedded migration is applied. Reads the migration
/// table only (the harness would try to create it, which the ingester's role may not do).
pub async fn check_migrated(url: &str) -> Result<(), DbError> {
    use diesel::migration::MigrationSource;
    #[derive(diesel::QueryableByName)]
    struct Applied {
        #[diesel(sql_type = diesel::sql_types::Text)]
        version: String,
    }
    let embedded = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS).map_err(DbError::Migrate)?;
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|source| DbError::Connect { url: crate::config::redact_url_password(url), source })?;
    let applied: Vec<Applied> =
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations").load(&mut conn).await.unwrap_or_default(); // no migration table yet: nothing is applied
    let pending =
        embedded.iter().filter(|m| !applied.iter().any(|a| a.version == m.name().version().to_string())).count();
    if pending == 0 { Ok(()) } else { Err(DbError::Pending(pending)) }
}

/// The id of the database (from `ingest_meta`), which the ledger is bound to.
pub async fn database_id(url: &str) -> Result<String, DbError> {
    use crate::schema::ingest_meta;
    use diesel::QueryDsl;
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|source| DbError::Connect { url: crate::config::redact_url_password(url), source })?;
    ingest_meta::table
        .select(ingest_meta::database_id)
        .first(&mut conn)
        .await
        .map_err(|source| DbError::Query { what: "read ingest_meta", source })
}

/// Creates the database named in `url` if it does not exist, connecting to the server's `postgres`
/// database. Returns whether it was created.
pub async fn create_database_if_missing(url: &str) -> Result<bool, DbError> {
    let (server, name) = split_database(url)?;
    let admin_url = format!("{server}/postgres");
    let mut conn = AsyncPgConnection::establish(&admin_url)
        .await
        .map_err(|source| DbError::Connect { url: crate::config::redact_url_password(&admin_url), source })?;
    match diesel::sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await {
        Ok(_) => Ok(true),
        Err(diesel::result::Error::DatabaseError(_, info)) if info.message().contains("already exists") => Ok(false),
        Err(source) => Err(DbError::Create { name, source }),
    }
}

/// Drops the database named in `url` (tests use it to clean up after themselves).
pub async fn drop_database(url: &str) -> Result<(), DbError> {
    let (server, name) = split_database(url)?;
    let admin_url = format!("{server}/postgres");
    let mut conn = AsyncPgConnection::establish(&admin_url)
        .await
        .map_err(|source| DbError::Connect { url: crate::config::redact_url_password(&admin_url), source })?;
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .map_err(|source| DbError::Create { name, source })?;
    Ok(())
}

/// `postgres://u@h:5432/db?x=y` -> (`postgres://u@h:5432`, `db`). The name is checked so it can be
/// quoted into DDL safely.
fn split_database(url: &str) -> Result<(String, String), DbError> {
    let without_query = url.split('?').next().unwrap_or(url);
    let (server, name) = without_query
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("://") && !server.ends_with('/'))
        .ok_or_else(|| DbError::BadName(crate::config::redact_url_password(url)))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DbError::BadName(crate::config::redact_url_password(url)));
    }
    Ok((server.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_split_from_the_url() {
        let (server, name) = split_database("postgres://u:p@h:5432/pii_ingest?sslmode=disable").unwrap();
        assert_eq!((server.as_str(), name.as_str()), ("postgres://u:p@h:5432", "pii_ingest"));
        assert!(split_database("postgres://h/bad\"name").is_err());
        assert!(split_database("postgres://h").is_err());
    }
}
