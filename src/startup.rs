//! Assembling a pipeline from configuration: build the masker and the validation rules, open the
//! ledger, connect to Postgres and SQS, check the schema. The one place where startup can fail, each
//! way with its own error. Configuration is plain data ([`crate::config`]); the domain objects it
//! describes are made here, so the modules below never read a `Config`.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError, PipelineConfig, Secret};
use crate::counters::Stats;
use crate::db::{self, DbError};
use crate::event::{FieldNames, Limits, Rules};
use crate::ledger::{Ledger, LedgerError};
use crate::mask::{MIN_KEY_BYTES, Masker};
use crate::pipeline::{Pipeline, RETRY_BUDGET, Receivers, Settings};
use crate::seal::Sealer;
use crate::sink::{CopySink, PgSink, Postgres, WriteLimits, WriteMethod};
use crate::source::{Source, SourceError, SqsSource};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("sealing.public_key_file: {0}")]
    Seal(#[from] crate::seal::SealError),
}

/// A pipeline over the configured queue, database and ledger, ready to `run`.
pub async fn pipeline(config: &Config, until_empty: bool) -> Result<Pipeline<SqsSource>, StartError> {
    // Checked before connecting anywhere, so a missing key is the first thing reported.
    masker(config)?;
    let source = SqsSource::connect(&config.sqs).await?;
    tracing::info!(queue = source.queue_url(), "queue found");
    pipeline_over(config, source, settings(&config.pipeline, until_empty)).await
}

/// A pipeline that drains `source` (a queue, or a file for `replay`) into the configured database.
pub async fn pipeline_over<S: Source>(
    config: &Config,
    source: S,
    settings: Settings,
) -> Result<Pipeline<S>, StartError> {
    let masker = masker(config)?;
    let sealer = config.sealing.public_key_file.as_deref().map(Sealer::from_file).transpose()?;
    let url = config.postgres.url.expose();
    db::check_migrated(url).await?;
    // The write path creates any month it meets; making the coming months now keeps that rare.
    crate::sink::partitions::ensure_ahead(url, chrono::Utc::now().date_naive()).await?;
    let session_url = session_url(config);
    let limits = write_limits(config);
    let sink = match config.postgres.write_method {
        WriteMethod::Insert => {
            Postgres::Insert(PgSink::new(db::pool(&session_url, config.postgres.pool_size)?).with_limits(limits))
        }
        WriteMethod::Copy => Postgres::Copy(CopySink::new(&session_url, settings.writers).with_limits(limits)),
    };
    let ledger = open_ledger(config).await?;
    ledger.bind(&db::database_id(url).await?)?;
    tracing::info!(
        mask_key_id = masker.key_id(),
        ledger.entries = ledger.len(),
        receivers.min = settings.receivers.min,
        receivers.max = settings.receivers.max,
        write_method = ?config.postgres.write_method,
        seal_key_id = sealer.as_ref().map(Sealer::key_id),
        "pipeline ready"
    );
    Ok(Pipeline {
        source: Arc::new(source),
        sink,
        ledger: Arc::new(ledger),
        masker,
        sealer,
        rules: rules(config),
        settings,
        stats: Arc::new(Stats::default()),
    })
}

/// The validation rules the configuration sets.
pub fn rules(config: &Config) -> Rules {
    let lists = config.fields.lists().map(|(_, names)| names);
    Rules {
        device_types: config.validation.device_types.clone(),
        fields: FieldNames::new(lists),
        limits: Limits {
            max_body_bytes: config.validation.max_body_bytes,
            max_fields: config.validation.max_fields,
            max_depth: config.validation.max_depth,
        },
        envelope: config.sqs.envelope,
    }
}

/// The masker for the configured key: from `masking.key`, else `masking.key_file`. Refuses a
/// missing or short key, naming the setting.
pub fn masker(config: &Config) -> Result<Masker, ConfigError> {
    let m = &config.masking;
    let key = match (&m.key, &m.key_file) {
        (Some(key), _) => key.clone(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                key: "masking.key_file",
                expected: format!("a readable file holding the key ({}: {e})", path.display()),
            })?;
            Secret(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        (None, None) => {
            return Err(ConfigError::Invalid {
                key: "masking.key",
                expected: format!(
                    "a secret of at least {MIN_KEY_BYTES} bytes: set PII_INGEST__MASKING__KEY or masking.key_file"
                ),
            });
        }
    };
    let key_name = if m.key.is_some() { "masking.key" } else { "masking.key_file" };
    Masker::new(key.expose().as_bytes(), m.key_id.as_deref())
        .map_err(|e| ConfigError::Invalid { key: key_name, expected: e.to_string() })
}

/// How the pipeline runs, from its configuration section.
pub fn settings(config: &PipelineConfig, until_empty: bool) -> Settings {
    Settings {
        receivers: match config.receivers {
            Some(n) => Receivers::pinned(n),
            None => Receivers { min: config.min_receivers, max: config.max_receivers },
        },
        batch_max_rows: config.batch_max_rows,
        writers: config.writers,
        flush_interval: Duration::from_millis(config.flush_interval_ms),
        delete_concurrency: config.delete_concurrency,
        until_empty,
        delete_rejected: config.delete_rejected,
        max_inflight_bytes: config.max_inflight_bytes,
        retry_budget: RETRY_BUDGET,
    }
}

/// The Postgres URL with the configured session limits: what the ingester's own connections use.
pub fn session_url(config: &Config) -> String {
    let p = &config.postgres;
    let limits = db::SessionLimits {
        connect_timeout: Duration::from_secs(p.connect_timeout_seconds),
        statement_timeout: Duration::from_secs(p.statement_timeout_seconds),
        idle_in_transaction_timeout: Duration::from_secs(p.idle_in_transaction_timeout_seconds),
        keepalive_idle: Duration::from_secs(p.keepalive_idle_seconds),
    };
    db::with_session_limits(p.url.expose(), &limits)
}

/// The sinks' client-side limits from the configuration.
pub fn write_limits(config: &Config) -> WriteLimits {
    WriteLimits {
        connect: Duration::from_secs(config.postgres.connect_timeout_seconds),
        write: Duration::from_secs(config.postgres.write_timeout_seconds),
    }
}

/// Opens (or moves aside and recreates) the ledger, then prunes entries past retention.
async fn open_ledger(config: &Config) -> Result<Ledger, LedgerError> {
    if !config.ledger.enabled {
        return Ok(Ledger::disabled());
    }
    let path = config.ledger.path.clone();
    let retention = Duration::from_secs(config.ledger.retention_hours * 3600);
    let max_entries = config.ledger.max_entries;
    // sled's open and a full scan are blocking disk work.
    tokio::task::spawn_blocking(move || {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(parent);
        }
        let ledger = match Ledger::open(&path, max_entries) {
            Ok((ledger, _)) => ledger,
            Err(error @ LedgerError::Locked(_)) => {
                // Correctness does not depend on the ledger: run on an in-memory one, slower on
                // redeliveries, rather than fight over a store another process uses.
                tracing::warn!(error = %error, "using an in-memory ledger for this run");
                Ledger::temporary().with_max_entries(max_entries)
            }
            Err(error) => return Err(error),
        };
        let pruned = ledger.prune(retention);
        if pruned > 0 {
            tracing::info!(ledger.pruned = pruned, "pruned ledger entries older than retention");
        }
        Ok(ledger)
    })
    .await
    .expect("ledger open does not panic")
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment::Jail's closures must return figment::Error, a type this crate does not choose"
)]
mod tests {
    use figment::Jail;

    use super::*;

    #[test]
    fn masker_needs_a_long_enough_key() {
        let mut config = Config::default();
        assert!(masker(&config).unwrap_err().to_string().contains("masking.key"));
        config.masking.key = Some(Secret("short".into()));
        assert!(masker(&config).unwrap_err().to_string().contains("at least 32"));
        config.masking.key = Some(Secret("k".repeat(32)));
        assert!(masker(&config).is_ok());
    }

    #[test]
    fn the_key_file_is_read_without_its_newline() {
        Jail::expect_with(|jail| {
            jail.create_file("key", &format!("{}\n", "z".repeat(40)))?;
            let mut config = Config::default();
            config.masking.key_file = Some("key".into());
            let from_file = masker(&config).unwrap();
            let direct = Masker::new("z".repeat(40).as_bytes(), None).unwrap();
            assert_eq!(from_file.token("v"), direct.token("v"));
            Ok(())
        });
    }
}
