//! Database plumbing: the connection pool, the embedded migrations (the same files `diesel migration
//! run` applies), creating the database itself when it is missing, and the session limits every
//! connection of the ingester carries (connect and statement timeouts, TCP keepalives).
//!
//! Every connection to Postgres is opened by [`open`] (through [`connect`], [`connect_client`] and
//! the pool), which speaks TLS as the URL's `sslmode` and `sslrootcert` say ([`tls`]).

use std::time::Duration;

pub mod tls;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_postgres::Client;

use tls::{ConnectError, PgConnection, Target};

/// The migrations under `migrations/`, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type PgPool = Pool<AsyncPgConnection>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to Postgres at {url}")]
    Connect {
        url: String,
        #[source]
        source: ConnectError,
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

/// Limits on every session the ingester opens, carried in its connection string so that each
/// connection (pool, COPY writers, `/readyz`) gets them however it is made. Migrations do not use
/// them: building an index on a large table may rightly take longer than a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// TCP connect (per address tried).
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout`.
    pub statement_timeout: Duration,
    /// Server-side `idle_in_transaction_session_timeout`: a session that holds a transaction open
    /// and goes quiet (a client that died mid-write) releases its locks after this.
    pub idle_in_transaction_timeout: Duration,
    /// Idle time before TCP keepalive probes, so a dead peer is eventually noticed.
    pub keepalive_idle: Duration,
}

/// `url` with `limits` added as connection parameters (libpq names, which tokio-postgres reads). Any
/// `options` already in `url` are kept, ahead of ours.
pub fn with_session_limits(url: &str, limits: &SessionLimits) -> String {
    let settings = format!(
        "-c%20statement_timeout%3D{}%20-c%20idle_in_transaction_session_timeout%3D{}",
        limits.statement_timeout.as_millis(),
        limits.idle_in_transaction_timeout.as_millis()
    );
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<String> = Vec::new();
    let mut had_options = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("options=") {
            Some(existing) => {
                had_options = true;
                params.push(format!("options={existing}%20{settings}"));
            }
            None => params.push(pair.to_owned()),
        }
    }
    if !had_options {
        params.push(format!("options={settings}"));
    }
    params.push(format!("connect_timeout={}", limits.connect_timeout.as_secs().max(1)));
    params.push("keepalives=1".to_owned());
    params.push(format!("keepalives_idle={}", limits.keepalive_idle.as_secs().max(1)));
    format!("{base}?{}", params.join("&"))
}

/// Opens a connection to `target`: the single place where this crate reaches a Postgres server, so
/// transport settings (TLS, per the URL's `sslmode` and `sslrootcert`) are made here and nowhere else.
async fn open(target: &Target) -> Result<(Client, PgConnection), ConnectError> {
    target.connect().await
}

/// `url` parsed, its TLS settings and root certificates loaded.
fn target(url: &str) -> Result<Target, DbError> {
    Target::parse(url).map_err(connect_failed(url))
}

/// A URL fit for logs and errors: `postgres://user:secret@host/db?password=x` ->
/// `postgres://user:[redacted]@host/db?password=[redacted]` (libpq takes a password in either place).
pub fn redact_url_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut shown = match base.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?))) {
        Some((scheme, (userinfo, host))) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:[redacted]@{host}"),
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some(("password", _)) => "password=[redacted]".to_owned(),
                _ => p.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&params.join("&"));
    }
    shown
}

/// Wraps a connection failure with the URL, password redacted.
fn connect_failed(url: &str) -> impl FnOnce(ConnectError) -> DbError + '_ {
    move |source| DbError::Connect { url: redact_url_password(url), source }
}

/// A tokio-postgres client on a new connection to `url`, and the connection task the caller runs.
pub async fn connect_raw(url: &str) -> Result<(Client, PgConnection), DbError> {
    open(&target(url)?).await.map_err(connect_failed(url))
}

/// A tokio-postgres client on a new connection to `url` (pings, queries); the connection runs on a
/// task of its own and ends when the client is dropped or the server goes away.
pub async fn connect_client(url: &str) -> Result<Client, DbError> {
    let (client, connection) = connect_raw(url).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %error, "Postgres connection closed");
        }
    });
    Ok(client)
}

/// A diesel connection to `url`.
pub async fn connect(url: &str) -> Result<AsyncPgConnection, DbError> {
    let (client, connection) = open(&target(url)?).await.map_err(connect_failed(url))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection)
        .await
        .map_err(|source| DbError::Connect { url: redact_url_password(url), source: ConnectError::Setup(source) })
}

/// How the pool opens its connections: through [`open`], like every other connection.
fn establish(target: Target) -> BoxFuture<'static, diesel::ConnectionResult<AsyncPgConnection>> {
    async move {
        // diesel's error type holds only text here (as diesel-async's own `establish` does); the
        // text is ConnectError's one line, which never holds the URL or its password.
        let (client, connection) = open(&target).await.map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }
    .boxed()
}

/// A pool of at most `size` connections to `url`. The URL and its root certificates are read once,
/// here, so a bad `sslrootcert` fails at startup rather than at the first checkout.
pub fn pool(url: &str, size: usize) -> Result<PgPool, DbError> {
    let target = target(url)?;
    let mut config = ManagerConfig::default();
    config.custom_setup = Box::new(move |_url| establish(target.clone()));
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    Pool::builder(manager).max_size(size).build().map_err(DbError::Pool)
}

/// Applies pending migrations; returns the versions applied.
pub async fn migrate(url: &str) -> Result<Vec<String>, DbError> {
    let conn = connect(url).await?;
    // The migration harness is synchronous; it runs over the async connection on a blocking thread.
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        let done = conn.run_pending_migrations(MIGRATIONS).map_err(DbError::Migrate)?;
        Ok(done.iter().map(ToString::to_string).collect())
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
    let mut conn = connect(url).await?;
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
    let mut conn = connect(url).await?;
    ingest_meta::table
        .select(ingest_meta::database_id)
        .first(&mut conn)
        .await
        .map_err(|source| DbError::Query { what: "read ingest_meta", source })
}

/// Creates the database named in `url` if it does not exist, connecting to the server's `postgres`
/// database. Returns whether it was created.
pub async fn create_database_if_missing(url: &str) -> Result<bool, DbError> {
    #[derive(diesel::QueryableByName)]
    struct Present {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        present: bool,
    }
    let (admin_url, name) = split_database(url)?;
    let mut conn = connect(&admin_url).await?;
    // Looked up first: compose's `migrate` runs on every `up`, and a failed CREATE would put an ERROR
    // line in the server's log each time.
    let found: Present = diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS present")
        .bind::<diesel::sql_types::Text, _>(&name)
        .get_result(&mut conn)
        .await
        .map_err(|source| DbError::Query { what: "look up the database in pg_database", source })?;
    if found.present {
        return Ok(false);
    }
    // Another process may create it between the two statements.
    match diesel::sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await {
        Ok(_) => Ok(true),
        Err(diesel::result::Error::DatabaseError(_, info)) if info.message().contains("already exists") => Ok(false),
        Err(source) => Err(DbError::Create { name, source }),
    }
}

/// Drops the database named in `url` (tests use it to clean up after themselves).
pub async fn drop_database(url: &str) -> Result<(), DbError> {
    let (admin_url, name) = split_database(url)?;
    let mut conn = connect(&admin_url).await?;
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .map_err(|source| DbError::Create { name, source })?;
    Ok(())
}

/// `postgres://u@h:5432/db?x=y` -> (`postgres://u@h:5432/postgres?x=y`, `db`): the same server with
/// the same settings (TLS among them), and the database name, checked so it can be quoted into DDL.
fn split_database(url: &str) -> Result<(String, String), DbError> {
    let (without_query, query) = url.split_once('?').map_or((url, String::new()), |(u, q)| (u, format!("?{q}")));
    let (server, name) = without_query
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("://") && !server.ends_with('/'))
        .ok_or_else(|| DbError::BadName(redact_url_password(url)))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DbError::BadName(redact_url_password(url)));
    }
    Ok((format!("{server}/postgres{query}"), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password_wherever_it_is() {
        assert_eq!(redact_url_password("postgres://app:s3cret@db:5432/x"), "postgres://app:[redacted]@db:5432/x");
        assert_eq!(
            redact_url_password("postgres://app@db/x?sslmode=require&password=s3cret"),
            "postgres://app@db/x?sslmode=require&password=[redacted]"
        );
        assert_eq!(redact_url_password("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact_url_password("postgres://a:b@c@db/x"), "postgres://a:[redacted]@db/x");
        assert!(!redact_url_password("postgres://u:pw1@h/d?password=pw2").contains("pw"));
    }

    fn limits() -> SessionLimits {
        SessionLimits {
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(60),
            keepalive_idle: Duration::from_secs(30),
        }
    }

    #[test]
    fn session_limits_are_added_to_the_url_and_parse() {
        let url = with_session_limits("postgres://u@h:5432/db", &limits());
        let config: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(
            config.get_options(),
            Some("-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000")
        );
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(config.get_dbname(), Some("db"));
    }

    #[test]
    fn session_limits_keep_options_and_parameters_already_in_the_url() {
        let url = with_session_limits("postgres://u@h/db?sslmode=disable&options=-c%20search_path%3Dx", &limits());
        let config: tokio_postgres::Config = url.parse().unwrap();
        let options = config.get_options().unwrap();
        assert!(options.starts_with("-c search_path=x -c statement_timeout=30000"), "{options}");
        assert_eq!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn the_admin_url_keeps_the_servers_settings_and_the_name_is_checked() {
        let (admin, name) = split_database("postgres://u:p@h:5432/pii_ingest?sslmode=verify-full").unwrap();
        assert_eq!(
            (admin.as_str(), name.as_str()),
            ("postgres://u:p@h:5432/postgres?sslmode=verify-full", "pii_ingest")
        );
        let (admin, _) = split_database("postgres://h/pii_ingest").unwrap();
        assert_eq!(admin, "postgres://h/postgres");
        assert!(split_database("postgres://h/bad\"name").is_err());
        assert!(split_database("postgres://h").is_err());
    }
}
