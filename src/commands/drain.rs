//! Running a pipeline to its end for `run` and `replay`: signals, the progress bar, the report.

use std::process::ExitCode;

use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use pii_ingest::pipeline::Pipeline;
use pii_ingest::progress;
use pii_ingest::source::Source;

/// Runs a pipeline until stopped or drained and prints its report.
pub async fn drain<S: Source>(pipeline: Pipeline<S>, json: bool, bar: Option<ProgressBar>) -> anyhow::Result<ExitCode> {
    let stop = CancellationToken::new();
    tokio::spawn(handle_signals(stop.clone()));
    let started = std::time::Instant::now();
    let follower = bar.clone().map(|bar| progress::follow(pipeline.stats.clone(), bar));
    let report = pipeline.run(stop).await;
    if let (Some(follower), Some(bar)) = (follower, bar) {
        follower.abort();
        bar.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
        println!("elapsed             {seconds:>9.2} s ({:.0} msg/s)", report.received as f64 / seconds.max(1e-9));
    }
    if !report.reconciles() {
        anyhow::bail!("the drain does not reconcile: some delivery is not accounted for");
    }
    Ok(ExitCode::SUCCESS)
}

/// First SIGINT/SIGTERM: stop receiving and finish the batch in hand. Second: exit at once (nothing
/// uncommitted was deleted, so SQS redelivers whatever was in hand).
async fn handle_signals(stop: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("signal received: finishing the batch in hand (signal again to exit at once)");
    stop.cancel();
    wait_for_signal().await;
    tracing::warn!("second signal: exiting now; messages in hand will be redelivered");
    std::process::exit(130);
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // Installing a handler only fails if the signal is invalid, which these are not.
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
