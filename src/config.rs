//! Configuration, layered with figment: built-in defaults < `config.toml` (or `--config FILE`) <
//! environment `PII_INGEST__<SECTION>__<KEY>` < command-line flags. [`Config::validate`] turns every
//! wrong or missing setting into one line naming the key and what was expected.
//!
//! Secrets (`masking.key`, a password in `postgres.url`) are wrapped so that `Debug`, logs and
//! `check-config` never print them.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub sqs: SqsConfig,
    pub postgres: PostgresConfig,
    pub ledger: LedgerConfig,
    pub masking: MaskingConfig,
    pub pipeline: PipelineConfig,
    pub validation: ValidationConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub sealing: SealingConfig,
    pub fields: FieldsConfig,
    pub retention: RetentionConfig,
}

/// How long rows and quarantine records are kept (`[retention]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Rows and quarantine records whose date is older than this many days are removed by
    /// `pii-ingest retention`; unset: kept forever.
    pub days: Option<u32>,
}

/// The names a producer may give each login field (`[fields]`); a body may use any one of them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldsConfig {
    pub user_id: Vec<String>,
    pub app_version: Vec<String>,
    pub device_type: Vec<String>,
    pub ip: Vec<String>,
    pub device_id: Vec<String>,
    pub locale: Vec<String>,
}

impl Default for FieldsConfig {
    fn default() -> Self {
        let one = |name: &str| vec![name.to_owned()];
        FieldsConfig {
            user_id: one("user_id"),
            app_version: one("app_version"),
            device_type: one("device_type"),
            ip: one("ip"),
            device_id: one("device_id"),
            locale: one("locale"),
        }
    }
}

impl FieldsConfig {
    /// `(config key, names)` per field, in [`crate::event::Field::ALL`] order.
    pub fn lists(&self) -> [(&'static str, &[String]); 6] {
        [
            ("fields.user_id", &self.user_id),
            ("fields.app_version", &self.app_version),
            ("fields.device_type", &self.device_type),
            ("fields.ip", &self.ip),
            ("fields.device_id", &self.device_id),
            ("fields.locale", &self.locale),
        ]
    }

    /// Every field has at least one non-blank name, and no name belongs to two fields.
    fn validate(&self) -> Result<(), ConfigError> {
        let mut owner: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        for (key, names) in self.lists() {
            if names.is_empty() {
                return Err(invalid(key, "at least one field name"));
            }
            for name in names {
                if name.trim().is_empty() || name.len() > 64 {
                    return Err(invalid(key, "names of 1 to 64 bytes, not blank"));
                }
                if let Some(first) = owner.insert(name, key).filter(|first| *first != key) {
                    return Err(invalid(key, format!("the name {name:?} is already a name of {first}")));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SealingConfig {
    /// Public key file from `pii-ingest keygen`. When set, raw ip and device_id are also stored
    /// sealed to it (recoverable only with the private key, which the ingester never holds).
    pub public_key_file: Option<PathBuf>,
    /// Ids (`x25519-...`) of earlier public keys whose sealed values may still be in the tables
    /// (before a `rekey`). `verify` accepts rows sealed to these or the current key, no other.
    pub retired_key_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address for `/metrics`, `/healthz` and `/readyz` while `run` works; empty disables them.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: "127.0.0.1:9898".into() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqsConfig {
    /// Endpoint of an SQS emulator (LocalStack); unset for real AWS.
    pub endpoint_url: Option<String>,
    pub region: String,
    /// Looked up with GetQueueUrl unless `queue_url` is set.
    pub queue_name: String,
    pub queue_url: Option<String>,
    /// Long-poll wait per receive, 0..=20 seconds.
    pub wait_time_seconds: u32,
    /// Visibility timeout given to queues that `seed` creates, in seconds.
    pub visibility_timeout_seconds: u32,
    /// Static credentials, for an emulator (LocalStack takes any). Unset: the standard AWS chain
    /// (environment, profile, SSO, container or instance role).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// Message attribute a producer may set to an idempotency key; when present it is the dedup key
    /// instead of the SQS MessageId (so a re-sent file is not loaded twice). Empty disables it.
    pub idempotency_key_attribute: Option<String>,
    /// `auto` unwraps SNS notifications and EventBridge events to the login inside; `none` judges
    /// every body as it is.
    pub envelope: crate::event::Envelope,
    /// Longest one HTTP attempt of an SQS call may take, in seconds; a receive gets its long-poll
    /// wait on top. A connection that stops answering is abandoned and the call retried.
    pub attempt_timeout_seconds: u64,
    /// Longest an SQS call may take with all its retries, in seconds; a receive gets its long-poll
    /// wait on top.
    pub operation_timeout_seconds: u64,
}

impl Default for SqsConfig {
    fn default() -> Self {
        SqsConfig {
            endpoint_url: None,
            region: "us-east-1".into(),
            queue_name: "login-queue".into(),
            queue_url: None,
            wait_time_seconds: 20,
            visibility_timeout_seconds: 30,
            access_key_id: None,
            secret_access_key: None,
            idempotency_key_attribute: Some("idempotency-key".into()),
            envelope: crate::event::Envelope::Auto,
            attempt_timeout_seconds: 10,
            operation_timeout_seconds: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    pub url: Secret,
    /// Connections in the pool (the INSERT write method and queries).
    pub pool_size: usize,
    /// `copy` (COPY into a staging table, the fast default) or `insert` (multi-row INSERT).
    pub write_method: crate::sink::WriteMethod,
    /// Longest a new connection may take, handshake included, in seconds.
    pub connect_timeout_seconds: u64,
    /// Server-side `statement_timeout` of the ingester's sessions, in seconds.
    pub statement_timeout_seconds: u64,
    /// Server-side `idle_in_transaction_session_timeout` of the ingester's sessions, in seconds.
    pub idle_in_transaction_timeout_seconds: u64,
    /// Client-side limit on one write transaction, in seconds: a connection that stops answering
    /// (a network that drops packets without closing) is dropped after it and the batch retried.
    pub write_timeout_seconds: u64,
    /// Idle time before TCP keepalive probes start on a Postgres connection, in seconds.
    pub keepalive_idle_seconds: u64,
    /// libpq's `sslmode` for every connection, when `url` has no `sslmode` parameter (the URL wins).
    /// Unset and absent from the URL: `prefer`.
    pub sslmode: Option<crate::db::tls::SslMode>,
    /// CA certificates (a PEM file or bundle, or `system`) when `url` has no `sslrootcert` (the URL
    /// wins). Unset: the system's root certificates.
    pub sslrootcert: Option<PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: Secret("postgres://postgres@127.0.0.1:5432/pii_ingest".into()),
            pool_size: 4,
            write_method: crate::sink::WriteMethod::default(),
            connect_timeout_seconds: 10,
            statement_timeout_seconds: 30,
            idle_in_transaction_timeout_seconds: 60,
            write_timeout_seconds: 60,
            keepalive_idle_seconds: 30,
            sslmode: None,
            sslrootcert: None,
        }
    }
}

impl PostgresConfig {
    fn validate_timeouts(&self) -> Result<(), ConfigError> {
        let positive = [
            ("postgres.connect_timeout_seconds", self.connect_timeout_seconds),
            ("postgres.statement_timeout_seconds", self.statement_timeout_seconds),
            ("postgres.idle_in_transaction_timeout_seconds", self.idle_in_transaction_timeout_seconds),
            ("postgres.keepalive_idle_seconds", self.keepalive_idle_seconds),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(key, "at least 1 second"));
        }
        if self.write_timeout_seconds < self.statement_timeout_seconds {
            return Err(invalid(
                "postgres.write_timeout_seconds",
                "at least postgres.statement_timeout_seconds (the server cancels a slow statement first)",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Keep the local skip-cache at all. Off, every redelivery is answered by Postgres' unique key:
    /// still exactly once, a round trip slower per redelivery.
    pub enabled: bool,
    /// Directory of the sled store.
    pub path: PathBuf,
    /// Entries older than this are pruned; keep it >= the queue's message retention (max 14 days).
    pub retention_hours: u64,
    /// Most ids held (17-34 bytes of memory each); past it the oldest batches are forgotten, which
    /// costs a database round trip if one of them is redelivered.
    pub max_entries: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            enabled: true,
            path: "var/ledger".into(),
            retention_hours: 14 * 24,
            max_entries: crate::ledger::DEFAULT_MAX_ENTRIES,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskingConfig {
    /// The HMAC key itself (prefer `key_file`, or the env var `PII_INGEST__MASKING__KEY`).
    pub key: Option<Secret>,
    /// A file holding the key (trailing newline ignored).
    pub key_file: Option<PathBuf>,
    /// Name recorded with every row; derived from the key when unset.
    pub key_id: Option<String>,
    /// Ids of earlier masking keys whose rows may still be in the tables (before a `rekey
    /// --tokens`). `verify` accepts rows made with these or the current key, no other.
    pub retired_key_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Concurrent long-poll receivers.
    pub receivers: usize,
    /// Most rows written in one transaction.
    pub batch_max_rows: usize,
    /// Concurrent writer transactions, each on its own connection: while one commits, the next
    /// batch is gathered.
    pub writers: usize,
    /// Longest a received message waits for its batch to fill, in milliseconds.
    pub flush_interval_ms: u64,
    /// Concurrent DeleteMessageBatch calls.
    pub delete_concurrency: usize,
    /// Delete rejected messages once quarantined. Set false to leave them for the queue's redrive
    /// policy (a dead-letter queue); the quarantine record is written either way.
    pub delete_rejected: bool,
    /// `/healthz` turns 503 when no message has reached its fate for this many seconds while
    /// work is waiting (messages in hand, or visible in the queue).
    pub stall_seconds: u64,
    /// Most bytes of message bodies held at once (received, judged, not yet committed).
    /// Receives pause while it is full.
    pub max_inflight_bytes: usize,
}

/// The default `pipeline.max_inflight_bytes`: 64 MiB, for a small container.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 64 << 20;

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            receivers: 8,
            batch_max_rows: 1000,
            writers: 2,
            flush_interval_ms: 50,
            delete_concurrency: 8,
            delete_rejected: true,
            stall_seconds: 300,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Accepted `device_type` values; an empty list accepts any.
    pub device_types: Vec<String>,
    /// Largest body judged, in bytes; a larger one is quarantined as `too_large`.
    pub max_body_bytes: usize,
    /// Most object fields in one body, at any depth; more is `too_many_fields`.
    pub max_fields: usize,
    /// Deepest nesting of objects and arrays; deeper is `too_deep`.
    pub max_depth: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        let limits = crate::event::Limits::default();
        ValidationConfig {
            device_types: crate::event::Rules::default().device_types,
            max_body_bytes: limits.max_body_bytes,
            max_fields: limits.max_fields,
            max_depth: limits.max_depth,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter; the `RUST_LOG` variable wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, filter: "info".into() }
    }
}

/// A string that never prints: `Debug` and `Serialize` show `[redacted]`.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// A setting that is wrong or missing: names the key and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration file {}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error("configuration key `{key}`: {expected}")]
    Invalid { key: &'static str, expected: String },
}

fn invalid(key: &'static str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, expected: expected.into() }
}

impl Config {
    /// The figment for `file` with env on top. A file named explicitly (`--config`) must exist:
    /// a typo must not silently fall back to defaults. Without one, `config.toml` is used when
    /// present (in the working directory or a parent).
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let toml = match file {
            Some(file) => {
                std::fs::metadata(file).map_err(|source| ConfigError::File { path: file.to_owned(), source })?;
                Toml::file_exact(file)
            }
            None => Toml::file("config.toml"),
        };
        // No `Serialized::defaults`: every struct is `#[serde(default)]`, and serializing would
        // redact the secrets' defaults.
        Ok(Figment::new().merge(toml).merge(Env::prefixed("PII_INGEST__").split("__")))
    }

    /// Extracts and validates a config from a figment (with any flag overrides already merged).
    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let mut config: Config = figment.extract().map_err(Box::new)?;
        // Every connection reads its TLS settings from the URL: the keys go there as defaults.
        let postgres = &mut config.postgres;
        let url =
            crate::db::tls::with_defaults(postgres.url.expose(), postgres.sslmode, postgres.sslrootcert.as_deref());
        postgres.url = Secret(url);
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and shapes the types alone cannot express. The masking key is checked by
    /// [`crate::startup::masker`], because only `run` needs it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sqs = &self.sqs;
        if sqs.wait_time_seconds > 20 {
            return Err(invalid("sqs.wait_time_seconds", "a number of seconds from 0 to 20"));
        }
        if !(1..=43_200).contains(&sqs.visibility_timeout_seconds) {
            return Err(invalid("sqs.visibility_timeout_seconds", "a number of seconds from 1 to 43200"));
        }
        if sqs.queue_url.is_none() && sqs.queue_name.trim().is_empty() {
            return Err(invalid("sqs.queue_name", "a queue name (or set sqs.queue_url)"));
        }
        if sqs.access_key_id.is_some() != sqs.secret_access_key.is_some() {
            return Err(invalid(
                "sqs.secret_access_key",
                "both sqs.access_key_id and sqs.secret_access_key, or neither",
            ));
        }
        if sqs.attempt_timeout_seconds == 0 {
            return Err(invalid("sqs.attempt_timeout_seconds", "at least 1 second"));
        }
        if sqs.operation_timeout_seconds < sqs.attempt_timeout_seconds {
            return Err(invalid("sqs.operation_timeout_seconds", "at least sqs.attempt_timeout_seconds"));
        }
        if sqs.region.trim().is_empty() {
            return Err(invalid("sqs.region", "an AWS region such as us-east-1"));
        }
        if !self.postgres.url.expose().starts_with("postgres://")
            && !self.postgres.url.expose().starts_with("postgresql://")
        {
            return Err(invalid("postgres.url", "a URL starting with postgres://"));
        }
        if let Err(problem) = crate::db::tls::split_url(self.postgres.url.expose()) {
            return Err(invalid("postgres.url", problem.to_string()));
        }
        if self.postgres.pool_size == 0 {
            return Err(invalid("postgres.pool_size", "at least 1"));
        }
        self.postgres.validate_timeouts()?;
        let p = &self.pipeline;
        if p.receivers == 0 {
            return Err(invalid("pipeline.receivers", "at least 1"));
        }
        if !(1..=crate::sink::MAX_ROWS_PER_TRANSACTION).contains(&p.batch_max_rows) {
            return Err(invalid(
                "pipeline.batch_max_rows",
                format!("from 1 to {}", crate::sink::MAX_ROWS_PER_TRANSACTION),
            ));
        }
        if !(1..=16).contains(&p.writers) {
            return Err(invalid("pipeline.writers", "from 1 to 16"));
        }
        if p.delete_concurrency == 0 {
            return Err(invalid("pipeline.delete_concurrency", "at least 1"));
        }
        if p.max_inflight_bytes < crate::source::MAX_BODY_BYTES {
            return Err(invalid("pipeline.max_inflight_bytes", "at least 1048576 (one SQS message of 1 MiB)"));
        }
        if p.stall_seconds == 0 {
            return Err(invalid("pipeline.stall_seconds", "at least 1 second"));
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid("metrics.listen", "an address such as 127.0.0.1:9898, or \"\" to disable"));
        }
        if self.ledger.path.as_os_str().is_empty() {
            return Err(invalid("ledger.path", "a directory for the ledger store"));
        }
        if self.ledger.max_entries == 0 {
            return Err(invalid("ledger.max_entries", "at least 1 (set ledger.enabled = false for no ledger)"));
        }
        self.validate_limits()?;
        self.fields.validate()
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.validation;
        if !(1024..=16 * 1024 * 1024).contains(&limits.max_body_bytes) {
            return Err(invalid("validation.max_body_bytes", "from 1024 to 16777216 bytes"));
        }
        if limits.max_fields < 8 {
            return Err(invalid("validation.max_fields", "at least 8 (a login alone has 6)"));
        }
        if !(2..=crate::event::MAX_DEPTH_LIMIT).contains(&limits.max_depth) {
            return Err(invalid("validation.max_depth", format!("from 2 to {}", crate::event::MAX_DEPTH_LIMIT)));
        }
        Ok(())
    }

    /// The configuration as TOML with every secret redacted (for `check-config`).
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        // The URL is shown with its password, if any, blanked; the rest of it helps debugging.
        shown.postgres.url = Secret(crate::db::redact_url_password(self.postgres.url.expose()));
        let mut text = toml::to_string_pretty(&RedactedView(&shown)).expect("config serializes to TOML");
        if self.masking.key.is_some() {
            text.push_str("\n# masking.key is set (redacted)\n");
        }
        text
    }
}

/// Serializes a config, showing `postgres.url` (already redacted) instead of `[redacted]`.
struct RedactedView<'a>(&'a Config);

impl Serialize for RedactedView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut value = serde_json::to_value(self.0).map_err(serde::ser::Error::custom)?;
        value["postgres"]["url"] = serde_json::Value::String(self.0.postgres.url.0.clone());
        strip_nulls(&mut value);
        value.serialize(s)
    }
}

/// TOML has no null: unset options are left out.
fn strip_nulls(value: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(strip_nulls);
    }
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment::Jail's closures must return figment::Error, a type this crate does not choose"
)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_then_env_override_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file("config.toml", "[sqs]\nqueue_name = \"from-file\"\nwait_time_seconds = 5\n")?;
            jail.set_env("PII_INGEST__SQS__WAIT_TIME_SECONDS", "2");
            let config = Config::from_figment(Config::figment(None).unwrap()).unwrap();
            assert_eq!(config.sqs.queue_name, "from-file");
            assert_eq!(config.sqs.wait_time_seconds, 2);
            assert_eq!(config.sqs.region, "us-east-1");
            Ok(())
        });
    }

    #[test]
    fn a_config_file_that_does_not_exist_is_an_error_naming_it() {
        Jail::expect_with(|jail| {
            jail.create_file("config.toml", "[sqs]\nqueue_name = \"not-this-one\"\n")?;
            let error = Config::figment(Some(Path::new("typo.toml"))).unwrap_err().to_string();
            assert_eq!(error, "configuration file typo.toml: No such file or directory (os error 2)");
            Ok(())
        });
    }

    #[test]
    fn a_config_file_named_explicitly_is_read() {
        Jail::expect_with(|jail| {
            jail.create_file("other.toml", "[sqs]\nqueue_name = \"from-other\"\n")?;
            let config = Config::from_figment(Config::figment(Some(Path::new("other.toml"))).unwrap()).unwrap();
            assert_eq!(config.sqs.queue_name, "from-other");
            Ok(())
        });
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("PII_INGEST__SQS__WAIT_TIME_SECONDS", "soon");
            let error = Config::from_figment(Config::figment(None).unwrap()).unwrap_err().to_string();
            assert!(error.to_lowercase().contains("sqs.wait_time_seconds"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("config.toml", "[sqs]\nqueue = \"typo\"\n")?;
            let error = Config::from_figment(Config::figment(None).unwrap()).unwrap_err().to_string();
            assert!(error.contains("queue"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn out_of_range_values_name_the_key_and_range() {
        let mut config = Config::default();
        config.sqs.wait_time_seconds = 21;
        let error = config.validate().unwrap_err().to_string();
        assert_eq!(error, "configuration key `sqs.wait_time_seconds`: a number of seconds from 0 to 20");
    }

    #[test]
    fn field_names_come_from_the_fields_table_and_bad_tables_name_the_key() {
        Jail::expect_with(|jail| {
            jail.create_file("config.toml", "[fields]\nip = [\"ip\", \"ipAddress\"]\n[sqs]\nenvelope = \"none\"\n")?;
            let config = Config::from_figment(Config::figment(None).unwrap()).unwrap();
            let rules = crate::startup::rules(&config);
            assert_eq!(rules.fields.lookup("ipAddress").map(|(f, _)| f), Some(crate::event::Field::Ip));
            assert_eq!(rules.fields.lookup("user_id").map(|(f, _)| f), Some(crate::event::Field::UserId));
            assert_eq!(rules.envelope, crate::event::Envelope::None);
            Ok(())
        });
        let mut config = Config::default();
        config.fields.device_id = vec![];
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "configuration key `fields.device_id`: at least one field name"
        );
        let mut config = Config::default();
        config.fields.device_id = vec!["device_id".into(), "ip".into()];
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("`fields.device_id`") && error.contains("fields.ip"), "{error}");
    }

    #[test]
    fn caps_are_read_from_the_validation_table_and_checked() {
        Jail::expect_with(|jail| {
            jail.create_file("config.toml", "[validation]\nmax_fields = 50\nmax_depth = 8\n")?;
            let config = Config::from_figment(Config::figment(None).unwrap()).unwrap();
            assert_eq!(
                (crate::startup::rules(&config).limits.max_fields, crate::startup::rules(&config).limits.max_depth),
                (50, 8)
            );
            assert_eq!(crate::startup::rules(&config).limits.max_body_bytes, 1024 * 1024);
            Ok(())
        });
        let mut config = Config::default();
        config.validation.max_depth = 500;
        assert!(config.validate().unwrap_err().to_string().contains("validation.max_depth"));
    }

    #[test]
    fn tls_keys_are_defaults_for_the_url_and_a_url_parameter_wins() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "config.toml",
                "[postgres]\nsslmode = \"verify-full\"\nsslrootcert = \"/etc/ssl/rds.pem\"\n",
            )?;
            jail.set_env("PII_INGEST__POSTGRES__URL", "postgres://app:pw@db/x?sslmode=require");
            let config = Config::from_figment(Config::figment(None).unwrap()).unwrap();
            assert_eq!(
                config.postgres.url.expose(),
                "postgres://app:pw@db/x?sslmode=require&sslrootcert=/etc/ssl/rds.pem"
            );
            jail.set_env("PII_INGEST__POSTGRES__URL", "postgres://app:pw@db/x");
            let config = Config::from_figment(Config::figment(None).unwrap()).unwrap();
            assert_eq!(
                config.postgres.url.expose(),
                "postgres://app:pw@db/x?sslmode=verify-full&sslrootcert=/etc/ssl/rds.pem"
            );
            Ok(())
        });
    }

    #[test]
    fn a_bad_sslmode_names_the_key_it_came_from() {
        Jail::expect_with(|jail| {
            jail.set_env("PII_INGEST__POSTGRES__URL", "postgres://app:hunter2@db/x?sslmode=verify");
            let error = Config::from_figment(Config::figment(None).unwrap()).unwrap_err().to_string();
            assert_eq!(
                error,
                "configuration key `postgres.url`: sslmode=\"verify\" is not one of disable, prefer, require, verify-ca, verify-full"
            );
            jail.set_env("PII_INGEST__POSTGRES__URL", "postgres://db/x");
            jail.set_env("PII_INGEST__POSTGRES__SSLMODE", "verify");
            let error = Config::from_figment(Config::figment(None).unwrap()).unwrap_err().to_string();
            assert!(error.to_lowercase().contains("postgres.sslmode") && error.contains("verify-full"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn check_config_output_redacts_secrets() {
        let mut config = Config::default();
        config.masking.key = Some(Secret("TOPSECRET-0123456789-0123456789-xx".into()));
        config.postgres.url = Secret("postgres://app:hunter2@db:5432/x".into());
        let text = config.redacted_toml();
        assert!(!text.contains("TOPSECRET") && !text.contains("hunter2"), "{text}");
        assert!(text.contains("postgres://app:[redacted]@db:5432/x"), "{text}");
        assert!(!format!("{config:?}").contains("TOPSECRET"));
    }
}
