//! Assembling a pipeline from configuration: open the ledger, connect to Postgres and SQS, check the
//! schema. The one place where startup can fail, each way with its own error.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::counters::Stats;
use crate::db::{self, DbError};
use crate::ledger::{Ledger, LedgerError};
use crate::pipeline::{Pipeline, Settings};
use crate::seal::Sealer;
use crate::sink::{CopySink, PgSink, Sink, WriteLimits, WriteMethod};
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
    config.masker()?;
    let source = SqsSource::connect(&config.sqs).await?;
    tracing::info!(queue = source.queue_url(), "queue found");
    pipeline_over(config, source, Settings::from_config(&config.pipeline, until_empty)).await
}

/// A pipeline that drains `source` (a queue, or a file for `replay`) into the configured database.
pub async fn pipeline_over<S: Source>(
    config: &Config,
    source: S,
    settings: Settings,
) -> Result<Pipeline<S>, StartError> {
    let masker = config.masker()?;
    let sealer = config.sealing.public_key_file.as_deref().map(Sealer::from_file).transpose()?;
    let url = config.postgres.url.expose();
    db::check_migrated(url).await?;
    let session_url = session_url(config);
    let limits = write_limits(config);
    let sink = match config.postgres.write_method {
        WriteMethod::Insert => {
            Sink::Insert(PgSink::new(db::pool(&session_url, config.postgres.pool_size)?).with_limits(limits))
        }
        WriteMethod::Copy => Sink::Copy(CopySink::new(&session_url, settings.writers).with_limits(limits)),
    };
    let ledger = open_ledger(config).await?;
    ledger.bind(&db::database_id(url).await?)?;
    tracing::info!(
        mask_key_id = masker.key_id(),
        ledger.entries = ledger.len(),
        receivers = settings.receivers,
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
        rules: config.rules(),
        settings,
        stats: Arc::new(Stats::default()),
    })
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
        let ledger = match Ledger::open(&path) {
            Ok((ledger, _)) => ledger,
            Err(error @ LedgerError::Locked(_)) => {
                // Correctness does not depend on the ledger: run on an in-memory one, slower on
                // redeliveries, rather than fight over a store another process uses.
                tracing::warn!(error = %error, "using an in-memory ledger for this run");
                Ledger::temporary()
            }
            Err(error) => return Err(error),
        };
        let ledger = ledger.with_max_entries(max_entries);
        let pruned = ledger.prune(retention);
        if pruned > 0 {
            tracing::info!(ledger.pruned = pruned, "pruned ledger entries older than retention");
        }
        Ok(ledger)
    })
    .await
    .expect("ledger open does not panic")
}
