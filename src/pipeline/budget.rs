//! The byte budget (`pipeline.max_inflight_bytes`): message bodies held by the pipeline, from the
//! receive that fetched them to the end of their batch, never exceed it.
//!
//! Before each receive a receiver reserves room for the largest bodies SQS may hand it (the queue's
//! `MaximumMessageSize`, at most 1 MiB, per message asked for: [`Source::max_body_bytes`]) and asks
//! for only as many messages as it could reserve, so receives pause while the budget is full. Once the batch is judged, bodies that are no longer needed (rejects,
//! ledger hits) are dropped and their share released; what a login keeps (its body, should Postgres
//! refuse the row and a quarantine record need it) stays counted until its batch is committed or
//! abandoned. Heavy judging (a large batch) runs on a blocking thread, never on the runtime's.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::sink::Sink;
use crate::source::{Delivery, MAX_BODY_BYTES, Source};

use super::Pipeline;
use super::judge::Item;

/// Batches whose bodies add up to more than this are judged on a blocking thread; smaller ones
/// cost less than the hand-over.
const INLINE_JUDGE_BYTES: usize = 64 * 1024;

/// Judged deliveries from one receive, with the share of the byte budget they still hold.
pub(super) struct Received {
    pub items: Vec<Item>,
    /// Released when dropped, with the batch the items end up in.
    pub bytes: OwnedSemaphorePermit,
}

/// A budget of `bytes`, at least one largest message (or no receive could ever reserve room).
pub(super) fn budget(bytes: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(bytes.clamp(MAX_BODY_BYTES, Semaphore::MAX_PERMITS)))
}

/// Waits for room for at least one largest message (`per_message` bytes, at most 1 MiB); returns how
/// many messages to ask for (at most `max_receive`, the source's [`Source::MAX_BATCH`]) and the room
/// reserved for them.
pub(super) async fn reserve(
    budget: &Arc<Semaphore>,
    max_receive: usize,
    per_message: usize,
) -> (usize, OwnedSemaphorePermit) {
    let per_message = per_message.clamp(1, MAX_BODY_BYTES);
    let want = (budget.available_permits() / per_message).clamp(1, max_receive);
    // At most MAX_BATCH (10) MiB: fits a u32. The semaphore is never closed, so acquiring cannot fail.
    let permit = budget.clone().acquire_many_owned((want * per_message) as u32).await.expect("never closed");
    (want, permit)
}

impl<S: Source, K: Sink> Pipeline<S, K> {
    /// Judges a received batch (off the runtime's threads when it is large) and keeps only the
    /// budget its items still need. A body larger than was reserved for it (a file line over 1 MiB, or
    /// an SQS queue whose `MaximumMessageSize` was raised after connect) is counted up to what was reserved.
    pub(super) async fn judge_batch(
        self: &Arc<Self>,
        batch: Vec<Delivery>,
        mut held: OwnedSemaphorePermit,
    ) -> Received {
        let bytes: usize = batch.iter().map(|d| d.body.len()).sum();
        let items: Vec<Item> = if bytes > INLINE_JUDGE_BYTES {
            let this = self.clone();
            tokio::task::spawn_blocking(move || batch.into_iter().map(|d| this.triage(d)).collect())
                .await
                .expect("judging does not panic")
        } else {
            batch.into_iter().map(|d| self.triage(d)).collect()
        };
        let kept: usize = items.iter().map(|i| i.delivery.body.len()).sum();
        drop(held.split(held.num_permits().saturating_sub(kept)));
        Received { items, bytes: held }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_receive_asks_for_no_more_messages_than_the_budget_has_room_for() {
        let budget = budget(25 * MAX_BODY_BYTES);
        let (want, first) = reserve(&budget, 10, MAX_BODY_BYTES).await;
        assert_eq!((want, first.num_permits()), (10, 10 * MAX_BODY_BYTES));
        let (want, _second) = reserve(&budget, 10, MAX_BODY_BYTES).await;
        assert_eq!(want, 10);
        let (want, third) = reserve(&budget, 10, MAX_BODY_BYTES).await;
        assert_eq!((want, third.num_permits()), (5, 5 * MAX_BODY_BYTES));
        assert_eq!(budget.available_permits(), 0);
        drop(first);
        assert_eq!(budget.available_permits(), 10 * MAX_BODY_BYTES);
    }

    #[tokio::test]
    async fn a_full_budget_pauses_receives_until_a_batch_releases_its_share() {
        let budget = budget(MAX_BODY_BYTES);
        let (_, held) = reserve(&budget, 10, MAX_BODY_BYTES).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { reserve(&budget, 10, MAX_BODY_BYTES).await.0 }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a receive waits while the budget is full");
        drop(held);
        assert_eq!(waiting.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_queue_with_smaller_messages_lets_more_receives_share_the_budget() {
        let budget = budget(MAX_BODY_BYTES);
        let (want, first) = reserve(&budget, 10, 64 * 1024).await;
        assert_eq!((want, first.num_permits()), (10, 640 * 1024));
        let (want, second) = reserve(&budget, 10, 64 * 1024).await;
        assert_eq!((want, second.num_permits()), (6, 384 * 1024), "the rest of the 1 MiB: 6 of 64 KiB");
    }

    #[test]
    fn a_budget_below_one_message_is_raised_to_one() {
        assert_eq!(budget(10).available_permits(), MAX_BODY_BYTES);
    }
}
