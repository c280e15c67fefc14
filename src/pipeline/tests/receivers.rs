//! The receivers size themselves: they grow while receives come back full and the pipeline has
//! room, shrink back to `min` once receives come back empty, and stay put when pinned. Real time
//! (see `run_drains_the_queue_until_empty_and_accounts_for_every_delivery`), with a fake round trip.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::fakes::MemorySource;
use super::{logins, unshared};
use crate::pipeline::Receivers;

/// Room in the byte budget for 25 receives of 10 messages of 1 MiB: never the limit here.
const ROOMY: usize = 250 << 20;

/// A queue of `n` logins whose every receive takes `delay`.
fn backlog(n: u32, delay: Duration) -> Arc<MemorySource> {
    let source = Arc::new(MemorySource::with_receive_delay(delay));
    for delivery in logins(0..n) {
        source.push(delivery);
    }
    source
}

#[tokio::test]
async fn a_backlog_behind_a_slow_round_trip_grows_the_receivers_up_to_max() {
    let source = backlog(3000, Duration::from_millis(20));
    let mut pipeline = unshared(source.clone());
    pipeline.settings.receivers = Receivers { min: 1, max: 12 };
    pipeline.settings.max_inflight_bytes = ROOMY;
    pipeline.settings.batch_max_rows = 1000;
    let report = tokio::time::timeout(Duration::from_secs(30), pipeline.run(CancellationToken::new()))
        .await
        .expect("the drain ends");
    assert_eq!((report.received, report.written), (3000, 3000), "{report}");
    assert_eq!(report.receivers_peak, 12, "full receives with room grow the crew to max: {report}");
    let most = source.most_receiving.load(Ordering::SeqCst);
    assert!((9..=12).contains(&most), "receives in flight at once: {most}");
}

#[tokio::test]
async fn the_default_budget_lets_sixteen_receives_of_1_mib_messages_be_in_flight() {
    // The defaults' margin at a 20 ms round trip (docs/scaling.md): a budget that held fewer receives
    // (96 MiB: 9) kept the drain at 0.77 of its 0 ms rate.
    let source = backlog(4000, Duration::from_millis(20));
    let mut pipeline = unshared(source.clone());
    let defaults = crate::config::PipelineConfig::default();
    pipeline.settings.receivers = Receivers { min: defaults.min_receivers, max: defaults.max_receivers };
    pipeline.settings.max_inflight_bytes = defaults.max_inflight_bytes;
    pipeline.settings.batch_max_rows = defaults.batch_max_rows;
    let report = tokio::time::timeout(Duration::from_secs(30), pipeline.run(CancellationToken::new()))
        .await
        .expect("the drain ends");
    assert_eq!(report.written, 4000, "{report}");
    let most = source.most_receiving.load(Ordering::SeqCst);
    assert!(most >= 16, "receives of 1 MiB messages in flight at once under the default budget: {most}");
}

#[tokio::test]
async fn pinned_receivers_neither_grow_nor_shrink() {
    let source = backlog(600, Duration::from_millis(5));
    let mut pipeline = unshared(source.clone());
    pipeline.settings.receivers = Receivers::pinned(3);
    pipeline.settings.max_inflight_bytes = ROOMY;
    let report = tokio::time::timeout(Duration::from_secs(30), pipeline.run(CancellationToken::new()))
        .await
        .expect("the drain ends");
    assert_eq!((report.written, report.receivers_peak), (600, 3), "{report}");
    assert_eq!(source.most_receiving.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_budget_without_room_for_another_full_receive_stops_the_growth() {
    let source = backlog(2000, Duration::from_millis(20));
    let mut pipeline = unshared(source.clone());
    pipeline.settings.receivers = Receivers { min: 1, max: 32 };
    // Room for 4 receives of 10 messages of at most 1 MiB: growth stops there.
    pipeline.settings.max_inflight_bytes = 40 << 20;
    let report = tokio::time::timeout(Duration::from_secs(30), pipeline.run(CancellationToken::new()))
        .await
        .expect("the drain ends");
    assert_eq!(report.written, 2000, "{report}");
    assert!(report.receivers_peak <= 5, "no growth without room: {report}");
    assert!(source.most_receiving.load(Ordering::SeqCst) <= 4);
}

#[tokio::test]
async fn empty_receives_shrink_the_receivers_back_to_min() {
    let source = backlog(2000, Duration::from_millis(10));
    let mut pipeline = unshared(source.clone());
    pipeline.settings.receivers = Receivers { min: 2, max: 16 };
    pipeline.settings.max_inflight_bytes = ROOMY;
    pipeline.settings.until_empty = false;
    let stats = pipeline.stats.clone();
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stats.report().written < 2000 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stats.report().receivers_peak > 2, "it grew while the backlog lasted: {}", stats.report());
    // Now every receive comes back empty: one long poll each and the extra receivers are gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stats.receivers(), 2, "back to min once the queue is empty");
    stop.cancel();
    let report = run.await.unwrap();
    assert_eq!(report.written, 2000, "{report}");
}
