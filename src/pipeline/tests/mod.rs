//! Unit tests of the pipeline core on in-memory fakes ([`fakes`]) under paused time: the splitting,
//! rechecking and refusing in `commit`, the bookkeeping in `process`, `keep_invisible` and
//! `delete_with_retry`, each in virtual seconds (backoffs included), and one whole `run`. The same paths against the emulator and a real
//! database are in `tests/it/` (fates, exactly_once, bounded).

mod fakes;
mod receivers;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::commit::Batch;
use super::judge::Item;
use super::{Pipeline, Settings, delete_with_retry};
use crate::counters::{Report, Stats};
use crate::event::Rules;
use crate::ledger::Ledger;
use crate::mask::Masker;
use crate::source::Delivery;
use fakes::{MemorySink, MemorySource, Poison, data_error, delivery, login_body, retryable_error};

fn settings() -> Settings {
    Settings {
        receivers: super::Receivers::pinned(1),
        batch_max_rows: 100,
        writers: 1,
        flush_interval: Duration::from_millis(20),
        delete_concurrency: 2,
        until_empty: true,
        delete_rejected: true,
        max_inflight_bytes: 16 << 20,
        retry_budget: 2,
    }
}

fn pipeline(source: MemorySource) -> Arc<Pipeline<MemorySource, MemorySink>> {
    Arc::new(unshared(Arc::new(source)))
}

fn unshared(source: Arc<MemorySource>) -> Pipeline<MemorySource, MemorySink> {
    Pipeline {
        source,
        sink: MemorySink::default(),
        ledger: Arc::new(Ledger::temporary()),
        masker: Masker::new(&[7; 32], Some("unit")).expect("a 32-byte key"),
        sealer: None,
        rules: Rules::default(),
        settings: settings(),
        stats: Arc::new(Stats::default()),
    }
}

/// Judges `deliveries` as the receivers would.
fn items(pipeline: &Pipeline<MemorySource, MemorySink>, deliveries: Vec<Delivery>) -> Vec<Item> {
    pipeline.stats.add(crate::counters::Counter::Received, deliveries.len());
    deliveries.into_iter().map(|d| pipeline.triage(d)).collect()
}

/// Runs `process` on `deliveries` and waits for its acknowledgements.
async fn process(pipeline: &Arc<Pipeline<MemorySource, MemorySink>>, deliveries: Vec<Delivery>) -> Report {
    let items = items(pipeline, deliveries);
    let (deletes, permits) = (TaskTracker::new(), Arc::new(Semaphore::new(2)));
    pipeline.process(items, &deletes, &permits, &CancellationToken::new()).await;
    deletes.close();
    deletes.wait().await;
    pipeline.stats.report()
}

fn logins(ids: std::ops::Range<u32>) -> Vec<Delivery> {
    ids.map(|i| delivery(&format!("m{i}"), 1, &login_body(&format!("u{i}")))).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn process_writes_each_message_once_records_it_and_deletes_every_delivery() {
    let p = pipeline(MemorySource::default());
    let mut deliveries = logins(0..3);
    deliveries.push(delivery("m1", 2, &login_body("u1"))); // a redelivery in the same batch
    deliveries.push(delivery("bad", 1, r#"{"foo": "oops_wrong_msg_type"}"#));
    let report = process(&p, deliveries).await;
    assert_eq!(sorted(p.sink.login_ids()), ["sqs:m0", "sqs:m1", "sqs:m2"]);
    assert_eq!(p.sink.quarantined(), [("sqs:bad".to_owned(), "missing_field".to_owned())]);
    assert_eq!(sorted(p.source.deleted()), ["h-bad-1", "h-m0-1", "h-m1-1", "h-m1-2", "h-m2-1"]);
    assert!(["sqs:m0", "sqs:m1", "sqs:m2", "sqs:bad"].iter().all(|id| p.ledger.contains(id)));
    assert_eq!((report.written, report.duplicate_in_batch, report.quarantined_total()), (3, 1, 1), "{report}");
    assert!(report.reconciles(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn process_skips_a_confirmed_ledger_hit_and_writes_an_unconfirmed_one() {
    let p = pipeline(MemorySource::default());
    process(&p, logins(0..1)).await;
    // Both ids in the ledger; only m0 is claimed in the database (m1's claim was "lost").
    p.ledger.record(["sqs:m1"]);
    let report = process(&p, vec![delivery("m0", 2, &login_body("u0")), delivery("m1", 1, &login_body("u1"))]).await;
    assert_eq!(sorted(p.sink.login_ids()), ["sqs:m0", "sqs:m1"]);
    assert_eq!((report.duplicate_ledger, report.ledger_unconfirmed, report.written), (1, 1, 2), "{report}");
    assert!(p.source.deleted().contains(&"h-m0-2".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn a_ledger_whose_every_lookup_collides_costs_lookups_never_a_message() {
    let mut p = unshared(Arc::new(MemorySource::default()));
    p.ledger = Arc::new(Ledger::colliding());
    let p = Arc::new(p);
    process(&p, logins(0..1)).await;
    // Every id now shares m0's fingerprint: each lookup is a hit that only Postgres can refute.
    assert!(p.ledger.contains("sqs:never-recorded"));
    let mut deliveries = logins(1..40);
    deliveries.push(delivery("m0", 2, &login_body("u0")));
    let report = process(&p, deliveries).await;
    assert_eq!(p.sink.login_ids().len(), 40, "every message has its row");
    assert_eq!((report.duplicate_ledger, report.ledger_unconfirmed, report.written), (1, 39, 40), "{report}");
    assert_eq!(p.source.deleted().len(), 41);
    assert!(report.reconciles(), "{report}");
}

// Real time: `run` ends by flushing the ledger on sled's own threads, which paused time would not
// wait for (the clock would jump to the timeout while they work).
#[tokio::test]
async fn run_drains_the_queue_until_empty_and_accounts_for_every_delivery() {
    let source = Arc::new(MemorySource::default());
    for delivery in logins(0..25) {
        source.push(delivery);
    }
    source.push(delivery("m3", 2, &login_body("u3")));
    let report = tokio::time::timeout(Duration::from_secs(20), unshared(source.clone()).run(CancellationToken::new()))
        .await
        .expect("the drain ends once the queue is empty");
    assert_eq!((report.received, report.written, report.duplicates(), report.deleted), (26, 25, 1, 26), "{report}");
    assert_eq!(source.deleted().len(), 26);
    assert!(report.reconciles(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn commit_splits_a_refused_batch_and_quarantines_only_the_offending_row() {
    let p = pipeline(MemorySource::default());
    p.sink.poison("sqs:m5", Poison::DataError);
    let report = process(&p, logins(0..8)).await;
    assert_eq!(p.sink.login_ids().len(), 7);
    assert!(!p.sink.login_ids().contains(&"sqs:m5".to_owned()));
    assert_eq!(p.sink.quarantined(), [("sqs:m5".to_owned(), "db_rejected".to_owned())]);
    assert_eq!(p.source.deleted().len(), 8, "the refused message is settled by its record");
    assert_eq!((report.written, report.quarantined.get("db_rejected")), (7, Some(&1)), "{report}");
    assert!(report.reconciles(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_row_refused_once_and_accepted_on_the_recheck_is_written_not_quarantined() {
    let p = pipeline(MemorySource::default());
    p.sink.fail_next([data_error()]);
    let report = process(&p, logins(0..1)).await;
    assert_eq!(p.sink.login_ids(), ["sqs:m0"]);
    assert!(p.sink.quarantined().is_empty());
    assert_eq!((report.written, report.quarantined_total()), (1, 0), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_row_refused_while_the_server_does_not_answer_is_retried_never_quarantined() {
    let p = pipeline(MemorySource::default());
    p.sink.fail_next([data_error(), data_error()]);
    p.sink.set_healthy(false);
    let report = process(&p, logins(0..1)).await;
    assert_eq!(p.sink.login_ids(), ["sqs:m0"]);
    assert!(p.sink.quarantined().is_empty(), "{:?}", p.sink.quarantined());
    assert_eq!(report.quarantined_total(), 0, "{report}");
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_past_the_budget_with_the_server_answering_isolate_the_row() {
    let p = pipeline(MemorySource::default());
    p.sink.poison("sqs:m2", Poison::Retryable);
    let report = process(&p, logins(0..4)).await;
    assert_eq!(sorted(p.sink.login_ids()), ["sqs:m0", "sqs:m1", "sqs:m3"]);
    assert_eq!(p.sink.quarantined(), [("sqs:m2".to_owned(), "db_rejected".to_owned())]);
    // The whole batch was retried past the budget (2) before it was split.
    assert!(report.retries >= 3, "{report}");
    assert!(report.reconciles(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_with_the_server_silent_are_retried_until_a_stop_and_nothing_is_deleted() {
    let p = pipeline(MemorySource::default());
    p.sink.fail_next((0..1000).map(|_| retryable_error()));
    p.sink.set_healthy(false);
    let stop = CancellationToken::new();
    let canceller = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(600)).await;
        canceller.cancel();
    });
    let items = items(&p, logins(0..5));
    let (deletes, permits) = (TaskTracker::new(), Arc::new(Semaphore::new(2)));
    p.process(items, &deletes, &permits, &stop).await;
    deletes.close();
    deletes.wait().await;
    let report = p.stats.report();
    assert!(p.sink.login_ids().is_empty() && p.sink.quarantined().is_empty());
    assert!(p.source.deleted().is_empty(), "{:?}", p.source.deleted());
    assert_eq!(report.abandoned, 5, "{report}");
    assert!(p.sink.writes() > 10, "retried for ten virtual minutes: {} writes", p.sink.writes());
    assert!(report.reconciles(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn keep_invisible_renews_every_half_timeout_in_chunks_of_the_source_batch() {
    let p = pipeline(MemorySource::with_visibility(Duration::from_secs(30)));
    let mut batch = Batch::default();
    for item in items(&p, logins(0..12)) {
        let super::judge::Verdict::Login(login) = item.verdict else { panic!("a valid login") };
        batch.push_login(item.delivery, item.fingerprint, login);
    }
    let repeats = vec!["h-m0-2".to_owned()];
    let started = tokio::time::Instant::now();
    let never = tokio::time::timeout(Duration::from_secs(50), p.keep_invisible(&batch, &repeats)).await;
    assert!(never.is_err(), "keep_invisible never returns");
    let extended = p.source.extended.lock().unwrap().clone();
    // At 15, 30 and 45 s: 13 handles each time, in chunks of at most 10, each asking for 30 s more.
    assert_eq!(extended.iter().map(|(h, _)| h.len()).collect::<Vec<_>>(), [10, 3, 10, 3, 10, 3]);
    assert!(extended.iter().all(|(_, seconds)| *seconds == 30));
    assert!(extended[1].0.contains(&"h-m0-2".to_owned()), "repeats are kept invisible too");
    assert_eq!(p.stats.report().visibility_extended, 39);
    assert_eq!(started.elapsed(), Duration::from_secs(50));
}

#[tokio::test(start_paused = true)]
async fn a_healthy_batch_never_asks_for_more_visibility() {
    let p = pipeline(MemorySource::with_visibility(Duration::from_secs(30)));
    process(&p, logins(0..3)).await;
    assert!(p.source.extended.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn delete_with_retry_retries_failed_calls_and_then_succeeds() {
    let source = MemorySource::default();
    *source.failing_delete_calls.lock().unwrap() = 2;
    let stats = Stats::default();
    let handles: Vec<String> = (0..4).map(|i| format!("h{i}")).collect();
    delete_with_retry(&source, handles.clone(), &stats).await;
    assert_eq!(source.deleted(), handles);
    let report = stats.report();
    assert_eq!((report.deleted, report.retries, report.delete_failed), (4, 2, 0), "{report}");
}

#[tokio::test(start_paused = true)]
async fn delete_with_retry_retries_only_failed_entries_and_counts_those_that_never_go() {
    let source = MemorySource::default();
    source.undeletable.lock().unwrap().insert("h1".to_owned());
    let stats = Stats::default();
    let started = tokio::time::Instant::now();
    delete_with_retry(&source, (0..3).map(|i| format!("h{i}")).collect(), &stats).await;
    assert_eq!(source.deleted(), ["h0", "h2"]);
    let report = stats.report();
    assert_eq!((report.deleted, report.retries, report.delete_failed), (2, 2, 1), "{report}");
    assert!(started.elapsed() < Duration::from_secs(1), "two short backoffs: {:?}", started.elapsed());
}
