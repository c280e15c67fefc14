//! The exactly-once pipeline: receive -> skip known -> judge -> write -> record -> delete.
//!
//! Receivers long-poll the source in parallel, and for each delivery check the ledger and judge the
//! body ([`judge`]): so parsing and hashing run beside the database work. One writer groups their
//! batches into transactions of up to `batch_max_rows`. Per transaction:
//! 1. deliveries whose id repeats within the batch, or is in the ledger, are duplicates;
//! 2. the rest, a masked login row or a quarantine record each, go to Postgres in one transaction,
//!    `ON CONFLICT (message_id) DO NOTHING` ([`commit`]);
//! 3. then, on a task of its own so the writer moves on: committed ids are recorded in the ledger,
//!    and only then are the deliveries deleted from the source.
//!
//! A crash anywhere leaves each message either uncommitted (redelivered, processed once) or committed
//! (redelivered, skipped by the ledger or the unique column). See `docs/exactly-once.md`.

mod budget;
mod commit;
mod judge;
mod receivers;
mod rounds;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::counters::{Counter, Report, Stats};
use crate::event::Rules;
use crate::ledger::Ledger;
use crate::mask::Masker;
use crate::seal::Sealer;
use crate::sink::{Postgres, Sink};
use crate::source::Source;
use budget::Received;
use commit::Batch;
pub use receivers::Receivers;

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bounds on the concurrent receivers ([`receivers`]).
    pub receivers: Receivers,
    pub batch_max_rows: usize,
    /// Concurrent transactions (each on its own connection).
    pub writers: usize,
    pub flush_interval: Duration,
    pub delete_concurrency: usize,
    /// Stop once a receive comes back empty and the source reports itself drained.
    pub until_empty: bool,
    /// Delete rejected messages after quarantining them (default). When false, they are left for the
    /// queue's redrive policy to move to a dead-letter queue.
    pub delete_rejected: bool,
    /// Most bytes of message bodies held at once (see [`budget`]).
    pub max_inflight_bytes: usize,
    /// Retryable write failures in a row, with the server answering, before a batch is split as
    /// if for a data error (see [`commit`]).
    pub retry_budget: u32,
}

/// Default [`Settings::retry_budget`]: about 10 to 20 s of backoff, longer than a lock wait or a
/// failover, far shorter than a poison row could hold a batch.
pub const RETRY_BUDGET: u32 = 8;

/// Everything a drain needs, wired together: a source `S` and a sink `K` ([`Postgres`] but in the
/// unit tests).
pub struct Pipeline<S, K = Postgres> {
    pub source: Arc<S>,
    pub sink: K,
    pub ledger: Arc<Ledger>,
    pub masker: Masker,
    /// Seals raw PII to a public key alongside the tokens, when configured.
    pub sealer: Option<Sealer>,
    pub rules: Rules,
    pub settings: Settings,
    pub stats: Arc<Stats>,
}

impl<S: Source, K: Sink> Pipeline<S, K> {
    /// Drains until `stop` is cancelled (or, with `until_empty`, until the source is drained), then
    /// finishes the batch in hand, waits for its deletes, flushes the ledger and reports.
    pub async fn run(self, stop: CancellationToken) -> Report {
        let this = Arc::new(self);
        let (tx, rx) = mpsc::channel::<Received>(this.settings.receivers.max * 2);
        let budget = budget::budget(this.settings.max_inflight_bytes);
        let drained = CancellationToken::new();
        let crew = this.start_receivers(tx, budget, stop.clone(), drained.clone());
        let watcher = this.settings.until_empty.then(|| {
            let (this, stop, drained) = (this.clone(), stop.clone(), drained.clone());
            tokio::spawn(async move { this.watch_drained(stop, drained).await })
        });
        let deletes = TaskTracker::new();
        // Several writers share the channel: while one commits, the next assembles its batch.
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let permits = Arc::new(Semaphore::new(this.settings.delete_concurrency));
        let writers = TaskTracker::new();
        for _ in 0..this.settings.writers {
            let (this, rx, deletes, permits, stop) =
                (this.clone(), rx.clone(), deletes.clone(), permits.clone(), stop.clone());
            writers.spawn(async move { this.write_loop(&rx, &deletes, &permits, &stop).await });
        }
        writers.close();
        writers.wait().await;
        Self::receivers_done(&crew).await;
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        deletes.close();
        deletes.wait().await;
        this.ledger.flush().await;
        this.stats.report()
    }

    /// With `until_empty`, notices the end of a drain without waiting for a receiver's long poll to
    /// come back empty (a whole `wait_time_seconds` at the end of every drain): every 200 ms, once this
    /// process holds no delivery, it asks the source whether it is drained. The empty-receive check in
    /// the receivers stays the rule for sources whose deliveries are never deleted (files).
    async fn watch_drained(&self, stop: CancellationToken, drained: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = drained.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if self.stats.in_flight() == 0 && self.source.is_drained().await.unwrap_or(false) {
                drained.cancel();
                return;
            }
        }
    }

    /// Groups received batches into transactions until every receiver has stopped. The channel is
    /// held only while a batch is gathered, so another writer can gather while this one commits.
    async fn write_loop(
        self: &Arc<Self>,
        rx: &tokio::sync::Mutex<mpsc::Receiver<Received>>,
        deletes: &TaskTracker,
        permits: &Arc<Semaphore>,
        stop: &CancellationToken,
    ) {
        loop {
            // `held`: the batch's share of the byte budget, released once it is committed or abandoned.
            let (batch, held) = {
                let mut rx = rx.lock().await;
                let Some(Received { items: mut batch, bytes }) = rx.recv().await else { return };
                let mut held = vec![bytes];
                let deadline = Instant::now() + self.settings.flush_interval;
                while batch.len() < self.settings.batch_max_rows {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(more)) => {
                            batch.extend(more.items);
                            held.push(more.bytes);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                (batch, held)
            };
            self.process(batch, deletes, permits, stop).await;
            drop(held);
        }
    }

    /// After a commit, on a task of its own: record the ids in the ledger, then delete the
    /// deliveries in batches of 10 (each retried). The writer does not wait for either.
    fn acknowledge(&self, ids: Vec<String>, handles: Vec<String>, deletes: &TaskTracker, permits: &Arc<Semaphore>) {
        let (source, stats, ledger, permits) =
            (self.source.clone(), self.stats.clone(), self.ledger.clone(), permits.clone());
        deletes.spawn(async move {
            ledger.record(ids.iter().map(String::as_str));
            // A file source has nothing to delete: its deliveries carry no receipt handle.
            let handles: Vec<String> = handles.into_iter().filter(|h| !h.is_empty()).collect();
            let mut chunks = tokio::task::JoinSet::new();
            for chunk in handles.chunks(S::MAX_BATCH) {
                let (source, stats, permits, chunk) = (source.clone(), stats.clone(), permits.clone(), chunk.to_vec());
                chunks.spawn(async move {
                    // The semaphore is never closed, so acquiring cannot fail.
                    let _permit = permits.acquire_owned().await.expect("semaphore is never closed");
                    delete_with_retry(&*source, chunk, &stats).await;
                });
            }
            chunks.join_all().await;
        });
    }

    /// While a batch is being written, renews its deliveries' invisibility every half visibility
    /// timeout, so a slow or unreachable database does not cause a storm of redeliveries. Never
    /// returns: it is dropped when the write finishes. The handles are gathered only if the timer
    /// fires, which a healthy batch never lets it do.
    async fn keep_invisible(&self, batch: &Batch, repeats: &[String]) -> std::convert::Infallible {
        let timeout = self.source.visibility_timeout().max(Duration::from_secs(1));
        let started = Instant::now();
        tokio::time::sleep(timeout / 2).await;
        let handles: Vec<String> =
            batch.entries.iter().map(|e| e.delivery.receipt_handle.clone()).chain(repeats.iter().cloned()).collect();
        loop {
            let Some(seconds) = next_extension(timeout, started.elapsed()) else {
                tracing::warn!(
                    batch.size = handles.len(),
                    "visibility is at SQS's 12-hour cap; the batch may be redelivered (and then skipped)"
                );
                return std::future::pending().await;
            };
            for chunk in handles.chunks(S::MAX_BATCH) {
                match self.source.extend(chunk, seconds).await {
                    Ok(extended) => {
                        self.stats.add(Counter::VisibilityExtended, extended);
                        if extended < chunk.len() {
                            tracing::warn!(
                                failed = chunk.len() - extended,
                                "SQS did not extend every entry; those may be redelivered (and then skipped)"
                            );
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %crate::telemetry::chain(&error), disposition = "retry", "could not extend visibility; the batch may be redelivered (and then skipped)");
                    }
                }
            }
            tokio::time::sleep(timeout / 2).await;
        }
    }
}

/// SQS's cap on a message's visibility timeout, counted from its receive: 12 hours.
const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// Room kept under the cap for the time a delivery waited before its batch began (gathering it).
const CAP_MARGIN: Duration = Duration::from_secs(300);

/// The visibility to ask for `elapsed` after a batch began: the queue's timeout, cut so that the
/// total stays under SQS's 12-hour cap (with a margin); `None` once there is nothing left to ask.
fn next_extension(timeout: Duration, elapsed: Duration) -> Option<u32> {
    let left = MAX_VISIBILITY.checked_sub(CAP_MARGIN + elapsed)?;
    let seconds = timeout.min(left).as_secs() as u32;
    (seconds > 0).then_some(seconds)
}

const DELETE_ATTEMPTS: u32 = 3;

async fn delete_with_retry<S: Source>(source: &S, mut handles: Vec<String>, stats: &Stats) {
    for attempt in 1..=DELETE_ATTEMPTS {
        match source.delete(&handles).await {
            Ok(outcome) => {
                stats.add(Counter::Deleted, outcome.ok);
                if outcome.failed.is_empty() {
                    return;
                }
                handles = outcome.failed;
            }
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::chain(&error), disposition = "retry", attempt, "delete failed");
            }
        }
        if attempt < DELETE_ATTEMPTS {
            stats.add(Counter::RetryDelete, 1);
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
    stats.add(Counter::DeleteFailed, handles.len());
    tracing::warn!(
        count = handles.len(),
        "deletes still failing; those messages will be redelivered and skipped as duplicates"
    );
}

/// Exponential backoff with full jitter: up to 100 ms x 2^(n-1), capped at 10 s.
pub fn backoff(failures: u32) -> Duration {
    let ceiling = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(7)).min(10_000);
    Duration::from_millis(rand::random_range(ceiling / 2..=ceiling))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn visibility_is_never_asked_past_the_12_hour_cap() {
        let timeout = Duration::from_secs(600);
        assert_eq!(next_extension(timeout, Duration::from_secs(300)), Some(600));
        let near = MAX_VISIBILITY - CAP_MARGIN - Duration::from_secs(100);
        assert_eq!(next_extension(timeout, near), Some(100));
        assert_eq!(next_extension(timeout, MAX_VISIBILITY - CAP_MARGIN), None);
        assert_eq!(next_extension(timeout, MAX_VISIBILITY * 2), None);
        for minutes in 0..800 {
            let elapsed = Duration::from_secs(minutes * 60);
            if let Some(s) = next_extension(timeout, elapsed) {
                assert!(elapsed + Duration::from_secs(s.into()) <= MAX_VISIBILITY);
            }
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(100));
        assert!(backoff(4) >= Duration::from_millis(400));
        for n in 1..40 {
            assert!(backoff(n) <= Duration::from_secs(10));
        }
    }
}
