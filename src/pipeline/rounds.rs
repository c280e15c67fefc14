//! One transaction's worth of deliveries, from the writer's hand to the acknowledgements:
//! 1. ledger hits are confirmed by Postgres (one query on `message_claims`); a hit it does not
//!    confirm (a restored database, a wiped table, another body under the key) is judged and written
//!    like any delivery, so a stale ledger costs speed, never a message;
//! 2. a key that repeats inside the batch with the same body is a repeat, deleted only once its first
//!    delivery is settled; with another body it waits for a later round of the same batch (then its
//!    claim finds the first one's and it becomes a key conflict);
//! 3. each round commits ([`super::commit`]); deliveries whose key another body holds become
//!    `key_conflict` records in a second transaction of their own, before anything is deleted;
//! 4. every delivery is counted in exactly one bucket, and the settled ones are handed on to be
//!    recorded in the ledger and deleted.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::counters::Counter;
use crate::event::RejectReason;
use crate::sink::Sink;
use crate::source::Source;

use super::Pipeline;
use super::commit::{Batch, Committed, Row};
use super::judge::{Item, Verdict};

/// How one delivery of a round ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Committed (by this or an earlier transaction): record and delete.
    Done,
    /// Quarantined in dead-letter mode: left in the queue for its redrive policy.
    Left,
    /// Not committed (a stop during an outage, a record that could not be stored): stays in the queue.
    Abandoned,
    /// Its key is held by another body: to be written as a `key_conflict` record.
    Conflict,
}

/// What a batch hands on: ids for the ledger and receipt handles to delete.
#[derive(Default)]
struct Acks {
    ids: Vec<String>,
    handles: Vec<String>,
}

impl<S: Source, K: Sink> Pipeline<S, K> {
    /// One transaction's worth of items: confirm, dedup, commit, then hand the acknowledgements to a task.
    pub(super) async fn process(
        self: &Arc<Self>,
        items: Vec<Item>,
        deletes: &TaskTracker,
        permits: &Arc<Semaphore>,
        stop: &CancellationToken,
    ) {
        let started = Instant::now();
        let size = items.len();
        let pending = self.confirm_known(items).await;
        let acks = self.settle_rounds(pending, stop).await;
        metrics::histogram!("pii_ingest_batch_rows").record(size as f64);
        metrics::histogram!("pii_ingest_commit_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(batch.size = size, duration_ms = started.elapsed().as_millis() as u64, "batch committed");
        self.acknowledge(acks.ids, acks.handles, deletes, permits);
    }

    /// Commits `pending` round by round (a key repeated with another body waits for the next round)
    /// and collects what may be acknowledged. Ends early when a stop finds the database unreachable:
    /// what is left stays in the queue.
    async fn settle_rounds(&self, mut pending: Vec<Item>, stop: &CancellationToken) -> Acks {
        let mut acks = Acks::default();
        while !pending.is_empty() {
            let (batch, repeats, later) = self.gather(pending, &mut acks);
            pending = later;
            let settled = self.round(&batch, &repeats, stop).await;
            let by_key = acknowledge_done(batch, settled, &mut acks);
            self.settle_repeats(repeats, &by_key, &mut acks);
            if stop.is_cancelled() && by_key.values().any(|s| *s == Settled::Abandoned) {
                self.stats.add(Counter::Abandoned, pending.len());
                break;
            }
        }
        acks
    }

    /// Confirms the ledger's hits against `message_claims` in one query. A hit whose key is not
    /// claimed, or claimed by another body, is judged now and written like any delivery; should the
    /// query fail, every hit is (the write will find out what is stored).
    async fn confirm_known(&self, mut items: Vec<Item>) -> Vec<Item> {
        let keys: Vec<String> = items
            .iter()
            .filter(|i| matches!(i.verdict, Verdict::Known))
            .map(|i| i.delivery.message_id.clone())
            .collect();
        if keys.is_empty() {
            return items;
        }
        let stored = match self.sink.claims(&keys).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(error = %error.summary(), count = keys.len(), "could not confirm ledger hits; writing them instead");
                HashMap::new()
            }
        };
        let key_id = self.masker.key_id();
        for item in items.iter_mut().filter(|i| matches!(i.verdict, Verdict::Known)) {
            let confirmed =
                stored.get(&item.delivery.message_id).is_some_and(|c| c.same_body(&item.fingerprint, key_id));
            if confirmed {
                item.delivery.body = Vec::new();
            } else {
                self.stats.add(Counter::LedgerUnconfirmed, 1);
                item.verdict = self.judge(&item.delivery, &item.fingerprint);
            }
        }
        items
    }

    /// Sorts one round: the first delivery of each key into the batch (confirmed ledger hits settled
    /// at once), same-body repeats aside, and other bodies under a key already in the round to `later`.
    fn gather(&self, items: Vec<Item>, acks: &mut Acks) -> (Batch, Vec<(String, String)>, Vec<Item>) {
        let mut seen: HashMap<String, String> = HashMap::with_capacity(items.len());
        let (mut batch, mut repeats, mut later) = (Batch::default(), Vec::new(), Vec::new());
        for item in items {
            match seen.get(&item.delivery.message_id) {
                Some(first) if *first == item.fingerprint => {
                    repeats.push((item.delivery.message_id, item.delivery.receipt_handle));
                    continue;
                }
                Some(_) => {
                    later.push(item);
                    continue;
                }
                None => {
                    seen.insert(item.delivery.message_id.clone(), item.fingerprint.clone());
                }
            }
            let Item { delivery, fingerprint, verdict } = item;
            match verdict {
                Verdict::Known => {
                    self.stats.add(Counter::DuplicateLedger, 1);
                    acks.handles.push(delivery.receipt_handle);
                }
                Verdict::Login(login) => batch.push_login(delivery, fingerprint, login),
                Verdict::Reject(record, reason) => batch.push_reject(delivery, fingerprint, record, reason),
            }
        }
        (batch, repeats, later)
    }

    /// Deletes a repeat only once its first delivery is settled: a repeat is the same message, and
    /// deleting it would delete the message whose row is not yet written.
    fn settle_repeats(&self, repeats: Vec<(String, String)>, by_key: &HashMap<String, Settled>, acks: &mut Acks) {
        for (key, handle) in repeats {
            match by_key.get(&key) {
                Some(Settled::Done) | None => {
                    // `None`: the first delivery was a confirmed ledger hit, settled in `gather`.
                    self.stats.add(Counter::DuplicateInBatch, 1);
                    acks.handles.push(handle);
                }
                Some(Settled::Left) => {
                    self.stats.add(Counter::DuplicateInBatch, 1);
                    self.stats.add(Counter::LeftForRedrive, 1);
                }
                Some(Settled::Abandoned | Settled::Conflict) => self.stats.add(Counter::Abandoned, 1),
            }
        }
    }

    /// Commits one round, then the `key_conflict` records of its conflicting deliveries. Returns
    /// each entry's fate and the id to record in the ledger for it.
    async fn round(
        &self,
        batch: &Batch,
        repeats: &[(String, String)],
        stop: &CancellationToken,
    ) -> Vec<(Settled, String)> {
        if batch.is_empty() {
            return Vec::new();
        }
        let handles: Vec<String> = repeats.iter().map(|(_, h)| h.clone()).collect();
        let outcome = tokio::select! {
            biased;
            outcome = self.commit(batch, stop) => outcome,
            never = self.keep_invisible(batch, &handles) => match never {},
        };
        let Some(committed) = outcome else {
            self.stats.add(Counter::Abandoned, batch.len());
            return batch.entries.iter().map(|e| (Settled::Abandoned, e.delivery.message_id.clone())).collect();
        };
        let mut settled = self.account(batch, &committed);
        let conflicting: Vec<usize> = (0..settled.len()).filter(|i| settled[*i].0 == Settled::Conflict).collect();
        if conflicting.is_empty() {
            return settled;
        }
        let mut conflicts = Batch::default();
        for &i in &conflicting {
            let (delivery, record) = self.conflict_record(batch, &batch.entries[i]);
            let fingerprint = batch.entries[i].fingerprint.clone();
            conflicts.push_reject(delivery, fingerprint, record, RejectReason::KeyConflict);
        }
        let outcome = tokio::select! {
            biased;
            outcome = self.commit(&conflicts, stop) => outcome,
            never = self.keep_invisible(&conflicts, &[]) => match never {},
        };
        let resolved = match outcome {
            Some(committed) => self.account(&conflicts, &committed),
            None => conflicts.entries.iter().map(|e| (Settled::Abandoned, e.delivery.message_id.clone())).collect(),
        };
        for (&i, (state, id)) in conflicting.iter().zip(resolved) {
            settled[i] = match state {
                Settled::Conflict => {
                    // Only a forged envelope can hold a conflict key with another body: keep it queued.
                    tracing::error!(sqs.message_id = %id, "a key conflict's own key is held by another body; the message stays in the queue");
                    self.stats.add(Counter::Abandoned, 1);
                    (Settled::Abandoned, id)
                }
                Settled::Abandoned => {
                    self.stats.add(Counter::Abandoned, 1);
                    (Settled::Abandoned, id)
                }
                other => (other, id),
            };
        }
        settled
    }

    /// Counts each committed delivery's fate (conflicts are counted once their record is written).
    fn account(&self, batch: &Batch, Committed { written, refused }: &Committed) -> Vec<(Settled, String)> {
        let mut settled = Vec::with_capacity(batch.len());
        for entry in &batch.entries {
            let id = entry.delivery.message_id.as_str();
            let (is_reject, state) = match (entry.row, refused.get(id)) {
                // Refused by Postgres and already counted by `commit`; if even its quarantine record
                // failed, the message stays in the queue.
                (_, Some(false)) => {
                    self.stats.add(Counter::Abandoned, 1);
                    (false, Settled::Abandoned)
                }
                (_, Some(true)) => (true, Settled::Done),
                (_, None) if written.conflicts.contains(id) => (false, Settled::Conflict),
                (Row::Login(_), None) if written.logins.contains(id) => {
                    self.stats.add(Counter::Written, 1);
                    (false, Settled::Done)
                }
                (Row::Reject(_, reason), None) if written.quarantined.contains(id) => {
                    self.stats.quarantined(reason);
                    (true, Settled::Done)
                }
                (row, None) => {
                    self.stats.add(Counter::DuplicateDatabase, 1);
                    (matches!(row, Row::Reject(..)), Settled::Done)
                }
            };
            let state = if is_reject && !self.settings.delete_rejected {
                // Left for the redrive policy: not in the ledger either, or a redelivery would be deleted.
                self.stats.add(Counter::LeftForRedrive, 1);
                Settled::Left
            } else {
                state
            };
            settled.push((state, id.to_owned()));
        }
        settled
    }
}

/// Adds the deliveries of a round that are done to `acks`; returns how each key's round ended.
fn acknowledge_done(batch: Batch, settled: Vec<(Settled, String)>, acks: &mut Acks) -> HashMap<String, Settled> {
    let mut by_key = HashMap::with_capacity(batch.len());
    for (entry, (state, id)) in batch.entries.into_iter().zip(settled) {
        if state == Settled::Done {
            acks.ids.push(id);
            acks.handles.push(entry.delivery.receipt_handle);
        }
        by_key.insert(entry.delivery.message_id, state);
    }
    by_key
}
