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

mod sections;
mod services;

pub use sections::{
    DEFAULT_MAX_INFLIGHT_BYTES, FieldsConfig, LedgerConfig, LogConfig, LogFormat, MaskingConfig, MetricsConfig,
    PipelineConfig, RetentionConfig, SealingConfig, ValidationConfig,
};
pub use services::{PostgresConfig, SqsConfig};

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

    /// Checks ranges and shapes the types alone cannot express, section by section. The masking
    /// key is checked by [`crate::startup::masker`], because only `run` needs it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.sqs.validate()?;
        self.postgres.validate()?;
        self.pipeline.validate()?;
        self.metrics.validate()?;
        self.ledger.validate()?;
        self.validation.validate()?;
        self.fields.validate()
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
        let mut config = Config::default();
        config.ledger.max_entries = usize::MAX;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.starts_with("configuration key `ledger.max_entries`: at most 100000000"), "{error}");
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
