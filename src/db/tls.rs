//! TLS on every Postgres connection, with rustls and libpq's two settings, read from the URL's query
//! (`postgres://u:p@host/db?sslmode=verify-full&sslrootcert=/etc/ssl/rds.pem`):
//!
//! | sslmode | TLS | certificate check |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (default) | tried; plaintext if the server refuses it or the handshake fails | none |
//! | `require` | required | none, or as `verify-ca` when `sslrootcert` is given |
//! | `verify-ca` | required | chain to a root in `sslrootcert` (else the system's) |
//! | `verify-full` | required | chain, and the host name in the certificate |
//!
//! `sslrootcert` is a PEM file (a bundle such as RDS' `global-bundle.pem` is fine) or `system`; unset,
//! the system's root certificates are used (libpq would read `~/.postgresql/root.crt`). A connection
//! that fails is one line saying why ([`ConnectError`]); none of them quotes the URL or its password.

mod binding;
mod stream;
mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};

pub use stream::{HandshakeError, MakeRustls, RustlsStream};

/// The connection task tokio-postgres hands back with a client: run it (or give it to diesel-async).
pub type PgConnection = tokio_postgres::Connection<tokio_postgres::Socket, RustlsStream<tokio_postgres::Socket>>;

/// libpq's `sslmode`, the five values that matter for a client without a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    const ALL: [SslMode; 5] =
        [SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull];

    /// The name libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ParamError;

    fn from_str(text: &str) -> Result<SslMode, ParamError> {
        SslMode::ALL.into_iter().find(|mode| mode.as_str() == text).ok_or_else(|| ParamError::SslMode(text.into()))
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// The operating system's store (`sslrootcert=system`, and the default).
    System,
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
}

impl fmt::Display for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCert::System => f.write_str("the system root store"),
            RootCert::File(path) => write!(f, "sslrootcert={}", path.display()),
        }
    }
}

/// The TLS settings of one Postgres URL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsParams {
    pub mode: SslMode,
    /// `None`: the system's roots, when a mode verifies at all.
    pub root_cert: Option<RootCert>,
}

/// What a mode checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndHost,
}

impl TlsParams {
    fn check(&self) -> Check {
        match (self.mode, &self.root_cert) {
            (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => Check::Nothing,
            // libpq verifies the chain whenever it has a root certificate, even under prefer/require.
            (SslMode::Prefer | SslMode::Require, Some(_)) | (SslMode::VerifyCa, _) => Check::Chain,
            (SslMode::VerifyFull, _) => Check::ChainAndHost,
        }
    }

    fn roots(&self) -> RootCert {
        self.root_cert.clone().unwrap_or(RootCert::System)
    }
}

/// A TLS parameter in a URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    SslMode(String),
    #[error("sslrootcert is empty: give a PEM file of CA certificates, or `system`")]
    EmptyRootCert,
}

/// Splits `sslmode` and `sslrootcert` out of a URL's query. Returns the URL without them (the rest
/// is for tokio-postgres) and the settings.
pub fn split_url(url: &str) -> Result<(String, TlsParams), ParamError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params = TlsParams::default();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value).decode_utf8_lossy();
        match key {
            "sslmode" => params.mode = value.parse()?,
            "sslrootcert" if value.is_empty() => return Err(ParamError::EmptyRootCert),
            "sslrootcert" if value == "system" => params.root_cert = Some(RootCert::System),
            "sslrootcert" => params.root_cert = Some(RootCert::File(PathBuf::from(value.as_ref()))),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((rest, params))
}

/// Characters left as they are in a query value: enough for readable paths.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// `url` with `sslmode` and `sslrootcert` added where its query does not set them: the config keys
/// `postgres.sslmode` / `postgres.sslrootcert` are defaults, a parameter in the URL wins (as libpq's
/// connection string wins over `PGSSLMODE`).
pub fn with_defaults(url: &str, sslmode: Option<SslMode>, sslrootcert: Option<&Path>) -> String {
    let query = url.split_once('?').map_or("", |(_, query)| query);
    let has = |key: &str| query.split('&').any(|pair| pair.split('=').next() == Some(key));
    let mut extra = Vec::new();
    if let Some(mode) = sslmode.filter(|_| !has("sslmode")) {
        extra.push(format!("sslmode={mode}"));
    }
    if let Some(path) = sslrootcert.filter(|_| !has("sslrootcert")) {
        extra.push(format!("sslrootcert={}", utf8_percent_encode(&path.to_string_lossy(), QUERY_VALUE)));
    }
    match (extra.is_empty(), url.contains('?')) {
        (true, _) => url.to_owned(),
        (false, true) => format!("{url}&{}", extra.join("&")),
        (false, false) => format!("{url}?{}", extra.join("&")),
    }
}

/// Why a connection could not be made. Each variant is one line that names the problem; none quotes
/// the URL (the caller adds it, redacted) or a password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error("postgres.url: {0}")]
    Url(tokio_postgres::Error),
    #[error("{roots}: {problem}")]
    RootCert { roots: RootCert, problem: String },
    #[error("TLS: the server certificate is not signed by the CA in {roots}")]
    UnknownIssuer { roots: RootCert },
    #[error("TLS: the server certificate is not valid for host {host}{names}")]
    WrongHost { host: String, names: String },
    #[error("TLS: the server certificate {problem}")]
    BadCertificate { problem: String },
    // The rustls / io error is rendered into `detail`: it is the whole message, and a source chain
    // would print it twice (tokio-postgres' errors already print their cause).
    #[error("TLS: the handshake with {host} failed: {detail}")]
    Handshake { host: String, detail: String },
    #[error("TLS: the server does not accept TLS connections, and sslmode={0} requires TLS")]
    TlsRefused(SslMode),
    #[error("the server refused the connection: {message}{hint}")]
    Refused { message: String, hint: &'static str },
    #[error("{0}")]
    Postgres(tokio_postgres::Error),
    #[error("the connection was made but not set up: {0}")]
    Setup(diesel::ConnectionError),
}

/// A parsed Postgres URL with its TLS configuration built: connect to it as often as needed.
#[derive(Clone)]
pub struct Target {
    pg: tokio_postgres::Config,
    params: TlsParams,
    tls: MakeRustls,
}

impl Target {
    /// Parses `url` (with `sslmode` / `sslrootcert` in its query) and loads the root certificates.
    pub fn parse(url: &str) -> Result<Target, ConnectError> {
        let (rest, params) = split_url(url)?;
        let mut pg: tokio_postgres::Config = rest.parse().map_err(ConnectError::Url)?;
        pg.ssl_mode(match params.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        let tls = MakeRustls { config: client_config(&params)? };
        Ok(Target { pg, params, tls })
    }

    /// The TLS settings in force.
    pub fn params(&self) -> &TlsParams {
        &self.params
    }

    /// The same server and settings, another database (to create or drop one from `postgres`).
    pub fn with_database(&self, name: &str) -> Target {
        let mut other = self.clone();
        other.pg.dbname(name);
        other
    }

    /// Opens a connection. The returned [`PgConnection`] must be polled (spawned) for the client to work.
    pub async fn connect(&self) -> Result<(tokio_postgres::Client, PgConnection), ConnectError> {
        match self.pg.connect(self.tls.clone()).await {
            Err(error) if self.params.mode == SslMode::Prefer && handshake(&error).is_some() => {
                // As libpq: under `prefer` a failed handshake is retried without TLS. If that fails
                // too, the TLS reason is the more useful one.
                let mut plain = self.pg.clone();
                plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
                plain.connect(self.tls.clone()).await.map_err(|_| self.describe(error))
            }
            result => result.map_err(|error| self.describe(error)),
        }
    }

    /// A diesel-async connection over [`Target::connect`].
    pub async fn establish(&self) -> Result<diesel_async::AsyncPgConnection, ConnectError> {
        let (client, connection) = self.connect().await?;
        diesel_async::AsyncPgConnection::try_from_client_and_connection(client, connection)
            .await
            .map_err(ConnectError::Setup)
    }

    /// One line for a failed connection.
    fn describe(&self, error: tokio_postgres::Error) -> ConnectError {
        if let Some(db) = error.as_db_error() {
            let hint = if db.message().ends_with("no encryption") {
                " (the server takes TLS connections only: use sslmode=require or stricter)"
            } else {
                ""
            };
            return ConnectError::Refused { message: format!("{}: {}", db.severity(), db.message()), hint };
        }
        if let Some(failed) = handshake(&error) {
            return describe_handshake(failed, self.params.roots());
        }
        if std::error::Error::source(&error).is_some_and(|cause| cause.to_string() == "server does not support TLS") {
            return ConnectError::TlsRefused(self.params.mode);
        }
        ConnectError::Postgres(error)
    }
}

/// The handshake failure inside a tokio-postgres error, if that is what it is.
fn handshake(error: &tokio_postgres::Error) -> Option<&HandshakeError> {
    std::error::Error::source(error)?.downcast_ref::<HandshakeError>()
}

fn describe_handshake(failed: &HandshakeError, roots: RootCert) -> ConnectError {
    let host = failed.host.clone();
    let Some(rustls::Error::InvalidCertificate(problem)) = failed.rustls() else {
        let detail = failed.rustls().map_or_else(|| failed.source.to_string(), ToString::to_string);
        return ConnectError::Handshake { host, detail };
    };
    match problem {
        CertificateError::UnknownIssuer => ConnectError::UnknownIssuer { roots },
        CertificateError::NotValidForName => ConnectError::WrongHost { host, names: String::new() },
        CertificateError::NotValidForNameContext { presented, .. } => {
            let names: Vec<&str> = presented.iter().map(|name| unquote(name)).collect();
            ConnectError::WrongHost { host, names: format!(" (it names {})", names.join(", ")) }
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            ConnectError::BadCertificate { problem: "has expired".into() }
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            ConnectError::BadCertificate { problem: "is not valid yet".into() }
        }
        other => ConnectError::BadCertificate { problem: format!("was rejected: {other:?}") },
    }
}

/// `DnsName("db.example")` (how rustls lists a certificate's names) -> `db.example`.
fn unquote(name: &str) -> &str {
    name.split_once("(\"").and_then(|(_, rest)| rest.strip_suffix("\")")).unwrap_or(name)
}

/// The rustls configuration for `params`: which certificates are accepted, over the aws-lc-rs
/// provider the AWS SDK already uses.
fn client_config(params: &TlsParams) -> Result<Arc<ClientConfig>, ConnectError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match params.check() {
        Check::Nothing => Arc::new(verify::AnyCertificate(provider.clone())),
        Check::Chain => Arc::new(verify::ChainOnly(webpki(params.roots(), &provider)?)),
        Check::ChainAndHost => webpki(params.roots(), &provider)?,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs default provider supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // What libpq 17 sends; servers before 17 ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

fn webpki(
    roots: RootCert,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, ConnectError> {
    let store = root_store(&roots)?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| ConnectError::RootCert { roots, problem: e.to_string() })
}

fn root_store(roots: &RootCert) -> Result<RootCertStore, ConnectError> {
    let problem = |problem: String| ConnectError::RootCert { roots: roots.clone(), problem };
    let certs: Vec<CertificateDer<'static>> = match roots {
        RootCert::File(path) => CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect)
            .map_err(|e| problem(format!("not a readable PEM file of CA certificates ({e})")))?,
        // Unreadable entries are skipped (as rustls-native-certs advises) as long as some load.
        RootCert::System => rustls_native_certs::load_native_certs().certs,
    };
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(problem(match roots {
            RootCert::File(_) => "holds no usable CA certificate".into(),
            RootCert::System => "holds no certificate: install ca-certificates, or give the CA with sslrootcert".into(),
        }));
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(url: &str) -> TlsParams {
        split_url(url).unwrap().1
    }

    #[test]
    fn sslmode_defaults_to_prefer_and_parses_every_libpq_name() {
        assert_eq!(params("postgres://h/db").mode, SslMode::Prefer);
        for mode in SslMode::ALL {
            assert_eq!(params(&format!("postgres://h/db?sslmode={mode}")).mode, mode);
        }
    }

    #[test]
    fn an_unknown_sslmode_is_an_error_that_lists_the_choices() {
        let error = split_url("postgres://u:pw@h/db?sslmode=allow").unwrap_err();
        assert_eq!(
            error.to_string(),
            "sslmode=\"allow\" is not one of disable, prefer, require, verify-ca, verify-full"
        );
    }

    #[test]
    fn tls_parameters_are_taken_out_and_the_rest_of_the_query_is_kept() {
        let url = "postgres://u:pw@h:5432/db?connect_timeout=5&sslmode=verify-full&sslrootcert=%2Fetc%2Frds%20ca.pem&application_name=x";
        let (rest, params) = split_url(url).unwrap();
        assert_eq!(rest, "postgres://u:pw@h:5432/db?connect_timeout=5&application_name=x");
        assert_eq!(params.mode, SslMode::VerifyFull);
        assert_eq!(params.root_cert, Some(RootCert::File("/etc/rds ca.pem".into())));
        assert_eq!(split_url("postgres://h/db?sslmode=disable").unwrap().0, "postgres://h/db");
    }

    #[test]
    fn sslrootcert_system_means_the_system_store_and_empty_is_refused() {
        assert_eq!(params("postgres://h/db?sslrootcert=system").root_cert, Some(RootCert::System));
        assert_eq!(split_url("postgres://h/db?sslrootcert=").unwrap_err(), ParamError::EmptyRootCert);
    }

    #[test]
    fn each_mode_checks_what_libpq_checks() {
        let check = |url: &str| params(url).check();
        assert_eq!(check("postgres://h/db?sslmode=disable"), Check::Nothing);
        assert_eq!(check("postgres://h/db"), Check::Nothing);
        assert_eq!(check("postgres://h/db?sslmode=require"), Check::Nothing);
        assert_eq!(check("postgres://h/db?sslmode=require&sslrootcert=/ca.pem"), Check::Chain);
        assert_eq!(check("postgres://h/db?sslmode=verify-ca"), Check::Chain);
        assert_eq!(check("postgres://h/db?sslmode=verify-full"), Check::ChainAndHost);
    }

    #[test]
    fn config_keys_fill_in_what_the_url_leaves_out_and_the_url_wins() {
        let root = Path::new("/etc/ssl/rds bundle.pem");
        assert_eq!(
            with_defaults("postgres://h/db", Some(SslMode::VerifyFull), Some(root)),
            "postgres://h/db?sslmode=verify-full&sslrootcert=/etc/ssl/rds%20bundle.pem"
        );
        assert_eq!(
            with_defaults("postgres://h/db?sslmode=disable", Some(SslMode::VerifyFull), None),
            "postgres://h/db?sslmode=disable"
        );
        assert_eq!(
            with_defaults("postgres://h/db?x=1", None, Some(root)),
            "postgres://h/db?x=1&sslrootcert=/etc/ssl/rds%20bundle.pem"
        );
        assert_eq!(with_defaults("postgres://h/db", None, None), "postgres://h/db");
        let round_trip = params(&with_defaults("postgres://h/db", Some(SslMode::Require), Some(root)));
        assert_eq!(round_trip.root_cert, Some(RootCert::File(root.into())));
    }

    #[test]
    fn certificate_names_are_shown_without_their_rustls_wrapping() {
        assert_eq!(unquote("DnsName(\"db.example\")"), "db.example");
        assert_eq!(unquote("IpAddress(10.0.0.1)"), "IpAddress(10.0.0.1)");
    }

    #[test]
    fn a_missing_root_certificate_file_fails_naming_it() {
        let Err(error) = Target::parse("postgres://u:hunter2@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
        else {
            panic!("a missing sslrootcert must fail");
        };
        let line = error.to_string();
        assert!(line.starts_with("sslrootcert=/nonexistent/ca.pem: not a readable PEM file"), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
    }

    #[test]
    fn modes_that_verify_nothing_build_without_reading_any_root() {
        let target = Target::parse("postgres://h/db?sslmode=require").unwrap();
        assert_eq!(target.params().mode, SslMode::Require);
        assert!(Target::parse("postgres://h/db?sslmode=bogus").is_err());
        assert!(matches!(Target::parse("postgres://h/db?nonsense=1"), Err(ConnectError::Url(_))));
    }
}
