//! What an operator sees while `run` works: Prometheus `/metrics`, `/healthz` and `/readyz`, on
//! `metrics.listen` (default 127.0.0.1:9898).
//!
//! `/healthz` is a watchdog: 503 when work is waiting (deliveries in hand, or messages visible in the
//! queue) and no delivery has reached its fate for `pipeline.stall_seconds`; an orchestrator then
//! restarts the process. `/readyz` is 503 while Postgres is unreachable or read-only (in recovery, or
//! `transaction_read_only` on) or SQS does not answer, with one line per check saying why.
//!
//! Counters are bumped where they happen (`counters.rs`); this module installs the recorder, describes
//! the gauges and histograms, serves them, and polls the gauges that nothing else updates: queue
//! depth, ledger size, and whether each dependency answers (`pii_ingest_dependency_up`, what
//! `/readyz` reports, so an alert can watch it). No label ever carries message content: layers,
//! causes, reason codes and dependency names come from fixed sets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::counters::Stats;
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
    register_metrics();
    Ok(handle)
}

/// Describes the gauges and histograms (the counters are `counters.rs`'s) and sets the build-info
/// gauge: `pii_ingest_build_info{version="..."} 1`, so a dashboard can tell which release runs.
fn register_metrics() {
    use metrics::{Unit, describe_gauge, describe_histogram};
    describe_gauge!("pii_ingest_build_info", "Always 1; the running release in its version label");
    describe_gauge!("pii_ingest_queue_messages", "Approximate messages in the queue, by state");
    describe_gauge!("pii_ingest_ledger_entries", "Message ids held by the local ledger (skip-cache)");
    describe_gauge!("pii_ingest_receivers", "Concurrent long-poll receivers now (they size themselves)");
    describe_gauge!(
        "pii_ingest_dependency_up",
        "1 when the dependency answered the last readiness check within 2 s, else 0 (what /readyz reports)"
    );
    describe_histogram!("pii_ingest_batch_rows", "Deliveries per committed batch");
    describe_histogram!("pii_ingest_commit_seconds", Unit::Seconds, "Time to commit one batch");
    metrics::gauge!("pii_ingest_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// What the endpoints look at.
pub struct Served {
    pub metrics: PrometheusHandle,
    pub source: SqsSource,
    pub ledger: Arc<Ledger>,
    /// The ingester's own Postgres URL (with its session limits).
    pub postgres_url: String,
    /// The drain's counters, for the watchdog.
    pub stats: Arc<Stats>,
    /// `pipeline.stall_seconds`.
    pub stall: Duration,
}

#[derive(Clone)]
struct Ops {
    metrics: PrometheusHandle,
    source: SqsSource,
    postgres_url: String,
    stats: Arc<Stats>,
    watchdog: Arc<Watchdog>,
    /// Messages visible in the queue at the last gauge poll.
    visible: Arc<AtomicU64>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listen` until the process exits, and polls the
/// gauges. Returns the bound address (useful with port 0).
pub async fn serve(listen: SocketAddr, served: Served) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let ops = Ops {
        metrics: served.metrics,
        source: served.source,
        postgres_url: served.postgres_url,
        stats: served.stats,
        watchdog: Arc::new(Watchdog::new(served.stall, Instant::now())),
        visible: Arc::new(AtomicU64::new(0)),
    };
    tokio::spawn(poll_gauges(ops.clone(), served.ledger));
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(health))
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

/// 200 unless work waits and nothing has moved for `stall_seconds`.
async fn health(State(ops): State<Ops>) -> (StatusCode, String) {
    let waiting = ops.stats.in_flight() > 0 || ops.visible.load(Relaxed) > 0;
    match ops.watchdog.check(ops.stats.progress(), waiting, Instant::now()) {
        None => (StatusCode::OK, "ok\n".into()),
        Some(stalled) => {
            tracing::warn!(stalled_s = stalled.as_secs(), "no progress while work is waiting; /healthz answers 503");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("stalled: no progress for {} s while work is waiting\n", stalled.as_secs()),
            )
        }
    }
}

/// 200 when Postgres is writable and SQS answers, each within 2 s; 503 otherwise, one line per check
/// saying why.
async fn ready(State(ops): State<Ops>) -> (StatusCode, String) {
    let (postgres, depth) = check(&ops).await;
    let sqs = if depth.is_some() { "ok" } else { "unreachable" };
    let body = format!("postgres: {postgres}\nsqs: {sqs}\n");
    let status = if postgres == "ok" && depth.is_some() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, body)
}

/// Asks Postgres and SQS whether they answer (within [`CHECK_TIMEOUT`] each, concurrently), records
/// the answers as `pii_ingest_dependency_up{dependency}` (1 or 0; a read-only Postgres counts as
/// down), and returns Postgres' state with the queue depth SQS gave (`None`: SQS did not answer).
async fn check(ops: &Ops) -> (&'static str, Option<Depth>) {
    let (postgres, depth) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, postgres_state(&ops.postgres_url)),
        tokio::time::timeout(CHECK_TIMEOUT, ops.source.depth()),
    );
    let postgres = postgres.unwrap_or("unreachable");
    let depth = depth.ok().and_then(Result::ok);
    let gauge = |ok: bool| if ok { 1.0 } else { 0.0 };
    metrics::gauge!("pii_ingest_dependency_up", "dependency" => "postgres").set(gauge(postgres == "ok"));
    metrics::gauge!("pii_ingest_dependency_up", "dependency" => "sqs").set(gauge(depth.is_some()));
    (postgres, depth)
}

/// `ok`, or why the ingester cannot write there: unreachable, or read-only (a standby in recovery,
/// or `default_transaction_read_only` on).
async fn postgres_state(url: &str) -> &'static str {
    let Ok((client, connection)) = crate::db::connect_raw(url).await else {
        return "unreachable";
    };
    let driver = tokio::spawn(connection);
    let sql = "SELECT pg_is_in_recovery()::text, current_setting('transaction_read_only')";
    let answer = client.simple_query(sql).await.ok().and_then(|messages| {
        messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some((row.get(0) == Some("true"), row.get(1) == Some("on")))
            }
            _ => None,
        })
    });
    driver.abort();
    match answer {
        Some((true, _)) => "read-only (in recovery: a standby)",
        Some((false, true)) => "read-only (transaction_read_only is on)",
        Some((false, false)) => "ok",
        None => "unreachable",
    }
}

/// The `/healthz` decision: progress is a counter that grows as deliveries reach their fate.
#[derive(Debug)]
pub struct Watchdog {
    stall: Duration,
    /// The progress last seen and since when it has not moved (or nothing was waiting).
    last: Mutex<(u64, Instant)>,
}

impl Watchdog {
    pub fn new(stall: Duration, now: Instant) -> Self {
        Watchdog { stall, last: Mutex::new((0, now)) }
    }

    /// `None` when healthy; else how long work has waited without progress.
    pub fn check(&self, progress: u64, waiting: bool, now: Instant) -> Option<Duration> {
        // A panic while holding this lock cannot leave the pair inconsistent; keep using it.
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if progress != last.0 || !waiting {
            *last = (progress, now);
            return None;
        }
        let stalled = now.saturating_duration_since(last.1);
        (stalled >= self.stall).then_some(stalled)
    }
}

async fn poll_gauges(ops: Ops, ledger: Arc<Ledger>) {
    loop {
        if let (_, Some(depth)) = check(&ops).await {
            ops.visible.store(depth.visible, Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_barks_only_when_work_waits_without_progress() {
        let start = Instant::now();
        let dog = Watchdog::new(Duration::from_secs(60), start);
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(dog.check(0, true, at(30)), None);
        assert_eq!(dog.check(0, true, at(61)), Some(Duration::from_secs(61)));
        assert_eq!(dog.check(5, true, at(62)), None, "progress resets it");
        assert_eq!(dog.check(5, true, at(100)), None);
        assert_eq!(dog.check(5, true, at(122)), Some(Duration::from_secs(60)));
        assert_eq!(dog.check(5, false, at(500)), None, "nothing waiting is healthy");
        assert_eq!(dog.check(5, true, at(530)), None);
    }
}
