//! `pii-ingest run`: drain the configured queue until a signal (or, with `--until-empty`, until it is
//! empty), serving `/metrics`, `/healthz` and `/readyz` meanwhile.

use std::process::ExitCode;

use anyhow::Context;

use pii_ingest::config::Config;
use pii_ingest::{progress, server, startup};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Exit 0 once the queue has no visible and no in-flight message.
    #[arg(long)]
    until_empty: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(Args { until_empty, json }: Args, config: Config) -> anyhow::Result<ExitCode> {
    let recorder = match config.metrics.listen.is_empty() {
        true => None,
        false => Some(server::install_recorder().context("cannot install the metrics recorder")?),
    };
    let pipeline = startup::pipeline(&config, until_empty).await?;
    let bar = match until_empty {
        true => Some(progress::bar(pipeline.source.depth().await.map(|d| d.total()).unwrap_or(0), "draining")),
        false => None,
    };
    if let Some(handle) = recorder {
        // validate() checked that the address parses.
        let listen = config.metrics.listen.parse().expect("metrics.listen was validated");
        let served = server::Served {
            metrics: handle,
            source: (*pipeline.source).clone(),
            ledger: pipeline.ledger.clone(),
            postgres_url: startup::session_url(&config),
            stats: pipeline.stats.clone(),
            stall: std::time::Duration::from_secs(config.pipeline.stall_seconds),
        };
        // A second ingester on the same host finds the port taken: it runs on, without /metrics,
        // rather than refusing to drain.
        if let Err(error) = server::serve(listen, served).await {
            tracing::warn!(listen = %listen, error = %error, "metrics.listen is unavailable; running without /metrics, /healthz, /readyz");
        }
    }
    let retention = config
        .retention
        .days
        .map(|days| pii_ingest::retention::spawn_daily(config.postgres.url.expose().to_owned(), days));
    let partitions = pii_ingest::sink::partitions::spawn_daily(config.postgres.url.expose().to_owned());
    let outcome = super::drain::drain(pipeline, json, bar).await;
    if let Some(task) = retention {
        task.abort();
    }
    partitions.abort();
    outcome
}
