//! What an operator sees while `run` works: Prometheus `/metrics`, `/healthz` (the process is alive)
//! and `/readyz` (Postgres and SQS answer), on `metrics.listen` (default 127.0.0.1:9898).
//!
//! Counters are bumped where they happen (`stats.rs`); this module installs the recorder, serves
//! it, and polls the gauges that nothing else updates: queue depth, ledger size, and whether each
//! dependency answers (`pii_ingest_dependency_up`, what `/readyz` reports, so an alert can watch
//! it). No label ever carries message content: layers, causes, reason codes and dependency names
//! come from fixed sets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::ledger::Ledger;
use crate::source::SqsSource;
use crate::source::sqs::Depth;

/// How often gauges are refreshed.
const POLL_EVERY: Duration = Duration::from_secs(5);

/// How long a dependency may take to answer before it counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Installs the global Prometheus recorder. Histogram buckets: batch sizes in rows, commit latency
/// in seconds.
pub fn install_recorder() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("pii_ingest_batch_rows".into()),
            &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full("pii_ingest_commit_seconds".into()),
            &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0],
        )?
        .install_recorder()?;
    crate::counters::register_metrics();
    metrics::describe_gauge!(
        "pii_ingest_dependency_up",
        "1 when the dependency answered the last readiness check within 2 s, else 0 (what /readyz reports)"
    );
    Ok(handle)
}

#[derive(Clone)]
struct Ops {
    metrics: PrometheusHandle,
    source: SqsSource,
    postgres_url: String,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listen` until the process exits, and polls the
/// gauges. Returns the bound address (useful with port 0).
pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    source: SqsSource,
    ledger: Arc<Ledger>,
    postgres_url: String,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let ops = Ops { metrics, source, postgres_url };
    tokio::spawn(poll_gauges(ops.clone(), ledger));
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(ops);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(error = %error, "metrics server stopped");
        }
    });
    tracing::info!(listen = %bound, "serving /metrics, /healthz, /readyz");
    Ok(bound)
}

async fn render(State(ops): State<Ops>) -> String {
    ops.metrics.render()
}

/// 200 when Postgres and SQS both answer within 2 s; 503 naming what does not.
async fn ready(State(ops): State<Ops>) -> (StatusCode, String) {
    let (postgres, depth) = check(&ops).await;
    let sqs = depth.is_some();
    let body = format!("postgres: {}\nsqs: {}\n", up(postgres), up(sqs));
    let status = if postgres && sqs { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, body)
}

/// Asks Postgres and SQS whether they answer (within [`CHECK_TIMEOUT`] each, concurrently), records
/// the answers as `pii_ingest_dependency_up{dependency}` (1 or 0), and returns Postgres' answer with
/// the queue depth SQS gave (`None`: SQS did not answer).
async fn check(ops: &Ops) -> (bool, Option<Depth>) {
    let (postgres, depth) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, postgres_answers(&ops.postgres_url)),
        tokio::time::timeout(CHECK_TIMEOUT, ops.source.depth()),
    );
    let postgres = postgres.unwrap_or(false);
    let depth = depth.ok().and_then(Result::ok);
    let gauge = |ok: bool| if ok { 1.0 } else { 0.0 };
    metrics::gauge!("pii_ingest_dependency_up", "dependency" => "postgres").set(gauge(postgres));
    metrics::gauge!("pii_ingest_dependency_up", "dependency" => "sqs").set(gauge(depth.is_some()));
    (postgres, depth)
}

fn up(ok: bool) -> &'static str {
    if ok { "ok" } else { "unreachable" }
}

async fn postgres_answers(url: &str) -> bool {
    let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else { return false };
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.is_ok()
}

async fn poll_gauges(ops: Ops, ledger: Arc<Ledger>) {
    loop {
        if let (_, Some(depth)) = check(&ops).await {
            metrics::gauge!("pii_ingest_queue_messages", "state" => "visible").set(depth.visible as f64);
            metrics::gauge!("pii_ingest_queue_messages", "state" => "in_flight").set(depth.in_flight as f64);
            metrics::gauge!("pii_ingest_queue_messages", "state" => "delayed").set(depth.delayed as f64);
        }
        metrics::gauge!("pii_ingest_ledger_entries").set(ledger.len() as f64);
        // Histograms are kept as buckets; draining the exporter's upkeep keeps memory flat.
        ops.metrics.run_upkeep();
        tokio::time::sleep(POLL_EVERY).await;
    }
}
