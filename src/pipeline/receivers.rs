//! Step 1, the receivers: concurrent long-poll loops that fetch deliveries, judge them ([`judge`]) and
//! hand them to the writers. How many run sizes itself between [`Receivers`]' bounds:
//!
//! - **grow**: a receive that came back full (as many messages as the source hands out at once)
//!   while the pipeline had room for more (the writers' channel had a free slot and the byte budget
//!   room for another full receive) starts one more receiver, up to `max`. Each full round trip can
//!   double the count, so a backlog behind a 50 ms round trip reaches its concurrency in a few
//!   hundred milliseconds.
//! - **shrink**: a receive that came back empty (a whole long poll without a message) ends its
//!   receiver, down to `min`. An idle queue is watched by `min` long polls.
//!
//! Without this, a fixed count either starves at real SQS latency (each loop waits a round trip per
//! 10 messages) or holds dozens of idle long polls on a quiet queue. Full receives with no room
//! downstream do not grow the crew: then Postgres or the byte budget is the limit, and more
//! receives would only wait.
//!
//! [`judge`]: super::judge

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::budget::{self, Received};
use super::{Pipeline, backoff};
use crate::counters::Counter;
use crate::sink::Sink;
use crate::source::Source;

/// Bounds on the number of concurrent receivers; pinned when `min == max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receivers {
    pub min: usize,
    pub max: usize,
}

impl Receivers {
    /// Exactly `n` receivers, never more or fewer.
    pub fn pinned(n: usize) -> Receivers {
        Receivers { min: n.max(1), max: n.max(1) }
    }
}

/// What the receive loops share.
/// Each receiver holds its own sender of the writers' channel (a new one gets a clone of its
/// spawner's), so the channel closes once the last receiver ends.
pub(super) struct Crew {
    budget: Arc<Semaphore>,
    stop: CancellationToken,
    drained: CancellationToken,
    tracker: TaskTracker,
    /// Receivers running now.
    active: AtomicUsize,
}

/// What a receive that returned `got` messages (having asked for `asked`, of at most `max_batch`) says
/// about the crew's size: `Some(true)` grow, `Some(false)` shrink, `None` stay.
fn verdict(got: usize, asked: usize, max_batch: usize, room: bool) -> Option<bool> {
    match got {
        0 => Some(false),
        _ if got >= asked && asked >= max_batch && room => Some(true),
        _ => None,
    }
}

impl<S: Source, K: Sink> Pipeline<S, K> {
    /// Starts `settings.receivers.min` receivers feeding `tx`; the crew grows and shrinks from there.
    /// Its tracker is closed: waiting on it returns once every receiver (spawned later too) has ended.
    pub(super) fn start_receivers(
        self: &Arc<Self>,
        tx: mpsc::Sender<Received>,
        budget: Arc<Semaphore>,
        stop: CancellationToken,
        drained: CancellationToken,
    ) -> Arc<Crew> {
        let crew = Arc::new(Crew { budget, stop, drained, tracker: TaskTracker::new(), active: AtomicUsize::new(0) });
        for _ in 0..self.settings.receivers.min {
            self.try_add_receiver(&crew, &tx);
        }
        crew.tracker.close();
        crew
    }

    /// Waits for every receiver to end.
    pub(super) async fn receivers_done(crew: &Crew) {
        crew.tracker.wait().await;
    }

    /// Starts one more receiver, sending to `tx`, if fewer than `max` run.
    fn try_add_receiver(self: &Arc<Self>, crew: &Arc<Crew>, tx: &mpsc::Sender<Received>) {
        let cap = self.settings.receivers.max;
        let grown = crew.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1));
        let Ok(before) = grown else { return };
        self.stats.note_receivers(before + 1);
        let (this, crew2, tx) = (self.clone(), crew.clone(), tx.clone());
        crew.tracker.spawn(async move { this.receive_loop(&crew2, tx).await });
    }

    /// Ends the calling receiver if more than `min` run: true if it should return.
    fn try_retire_receiver(&self, crew: &Crew) -> bool {
        let min = self.settings.receivers.min;
        let shrunk = crew.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n > min).then(|| n - 1));
        if let Ok(before) = shrunk {
            self.stats.note_receivers(before - 1);
        }
        shrunk.is_ok()
    }

    /// Whether the pipeline could take another full receive now.
    fn has_room(&self, crew: &Crew, tx: &mpsc::Sender<Received>) -> bool {
        tx.capacity() > 0 && crew.budget.available_permits() >= S::MAX_BATCH * self.source.max_body_bytes()
    }

    /// Receives while the byte budget has room, judges each batch and hands it to the writers.
    async fn receive_loop(self: Arc<Self>, crew: &Arc<Crew>, tx: mpsc::Sender<Received>) {
        let (stop, drained) = (&crew.stop, &crew.drained);
        let mut failures = 0u32;
        loop {
            let (want, reserved) = tokio::select! {
                _ = stop.cancelled() => break,
                _ = drained.cancelled() => break,
                reserved = budget::reserve(&crew.budget, S::MAX_BATCH, self.source.max_body_bytes()) => reserved,
            };
            let result = tokio::select! {
                _ = stop.cancelled() => break,
                _ = drained.cancelled() => break,
                result = self.source.receive(want) => result,
            };
            let batch = match result {
                Ok(batch) => batch,
                Err(error) => {
                    failures += 1;
                    self.stats.add(Counter::RetryReceive, 1);
                    let delay = backoff(failures);
                    tracing::warn!(
                        error = %crate::telemetry::chain(&error), disposition = "retry", delay_ms = delay.as_millis() as u64,
                        "receive failed; backing off"
                    );
                    tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(delay) => {} }
                    continue;
                }
            };
            failures = 0;
            match verdict(batch.len(), want, S::MAX_BATCH, self.has_room(crew, &tx)) {
                Some(true) => self.try_add_receiver(crew, &tx),
                Some(false) if self.try_retire_receiver(crew) => return,
                _ => {}
            }
            if batch.is_empty() {
                if self.settings.until_empty && self.source.is_drained().await.unwrap_or(false) {
                    drained.cancel();
                    break;
                }
                continue;
            }
            self.stats.add(Counter::Received, batch.len());
            let received = self.judge_batch(batch, reserved).await;
            if tx.send(received).await.is_err() {
                break;
            }
        }
        crew.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::verdict;

    #[test]
    fn a_full_receive_with_room_grows_the_crew() {
        assert_eq!(verdict(10, 10, 10, true), Some(true));
    }

    #[test]
    fn a_full_receive_without_room_or_a_short_one_keeps_it() {
        assert_eq!(verdict(10, 10, 10, false), None, "no room downstream: more receives would only wait");
        assert_eq!(verdict(4, 4, 10, true), None, "asked for 4 (the budget was tight): not a sign of backlog");
        assert_eq!(verdict(7, 10, 10, true), None);
    }

    #[test]
    fn an_empty_receive_shrinks_it() {
        assert_eq!(verdict(0, 10, 10, true), Some(false));
        assert_eq!(verdict(0, 3, 10, false), Some(false));
    }
}
