//! The exactly-once pipeline: receive -> skip known -> judge -> write -> record -> delete.
//!
//! Receivers long-poll the source in parallel and hand batches of 10 to one writer, which groups them
//! into transactions of up to `batch_max_rows`. Per transaction:
//! 1. deliveries whose id repeats within the batch, or is in the ledger, are duplicates;
//! 2. the rest are judged: a masked login row, or a quarantine record with a reason;
//! 3. both go to Postgres in one transaction, `ON CONFLICT (message_id) DO NOTHING`;
//! 4. committed ids are recorded in the ledger;
//! 5. only then are the deliveries deleted from the source.
//!
//! A crash anywhere leaves each message either uncommitted (redelivered, processed once) or committed
//! (redelivered, skipped by the ledger or the unique column). See `docs/exactly-once.md`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::event::{self, Reject, RejectReason, Rules};
use crate::ledger::Ledger;
use crate::mask::Masker;
use crate::seal::Sealer;
use crate::sink::{Disposition, NewLogin, NewQuarantined, Sink, Written};
use crate::source::{Delivery, Source};
use crate::stats::{Counter, Report, Stats};

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub receivers: usize,
    pub batch_max_rows: usize,
    pub flush_interval: Duration,
    pub delete_concurrency: usize,
    /// Stop once a receive comes back empty and the source reports itself drained.
    pub until_empty: bool,
    /// Delete rejected messages after quarantining them (default). When false, they are left for the
    /// queue's redrive policy to move to a dead-letter queue.
    pub delete_rejected: bool,
}

impl Settings {
    pub fn from_config(config: &crate::config::PipelineConfig, until_empty: bool) -> Self {
        Settings {
            receivers: config.receivers,
            batch_max_rows: config.batch_max_rows,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            delete_concurrency: config.delete_concurrency,
            until_empty,
            delete_rejected: config.delete_rejected,
        }
    }
}

/// Everything a drain needs, wired together.
pub struct Pipeline<S> {
    pub source: Arc<S>,
    pub sink: Sink,
    pub ledger: Arc<Ledger>,
    pub masker: Masker,
    /// Seals raw PII to a public key alongside the tokens, when configured.
    pub sealer: Option<Sealer>,
    pub rules: Rules,
    pub settings: Settings,
    pub stats: Arc<Stats>,
}

/// What a batch's transactions achieved.
struct Committed {
    written: Written,
    /// Ids Postgres refused as rows, turned into `db_rejected` records (already counted); `false`
    /// where even that record could not be stored.
    refused: HashMap<String, bool>,
}

/// A delivery judged, waiting for its transaction.
enum Judged {
    Login(NewLogin),
    Reject(NewQuarantined, RejectReason),
}

impl<S: Source> Pipeline<S> {
    /// Drains until `stop` is cancelled (or, with `until_empty`, until the source is drained), then
    /// finishes the batch in hand, waits for its deletes, flushes the ledger and reports.
    pub async fn run(self, stop: CancellationToken) -> Report {
        let this = Arc::new(self);
        let (tx, rx) = mpsc::channel::<Vec<Delivery>>(this.settings.receivers * 2);
        let drained = CancellationToken::new();
        let receivers = TaskTracker::new();
        for _ in 0..this.settings.receivers {
            let (this, tx, stop, drained) = (this.clone(), tx.clone(), stop.clone(), drained.clone());
            receivers.spawn(async move { this.receive_loop(tx, stop, drained).await });
        }
        receivers.close();
        drop(tx);
        let deletes = TaskTracker::new();
        this.write_loop(rx, &deletes, &stop).await;
        receivers.wait().await;
        deletes.close();
        deletes.wait().await;
        this.ledger.flush().await;
        this.stats.report()
    }

    async fn receive_loop(&self, tx: mpsc::Sender<Vec<Delivery>>, stop: CancellationToken, drained: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                _ = drained.cancelled() => return,
                result = self.source.receive() => result,
            };
            match result {
                Ok(batch) if batch.is_empty() => {
                    failures = 0;
                    if self.settings.until_empty && self.source.is_drained().await.unwrap_or(false) {
                        drained.cancel();
                        return;
                    }
                }
                Ok(batch) => {
                    failures = 0;
                    self.stats.add(Counter::Received, batch.len());
                    if tx.send(batch).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    failures += 1;
                    self.stats.add(Counter::RetryReceive, 1);
                    let delay = backoff(failures);
                    tracing::warn!(
                        error = %crate::telemetry::chain(&error), disposition = "retry", delay_ms = delay.as_millis() as u64,
                        "receive failed; backing off"
                    );
                    tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(delay) => {} }
                }
            }
        }
    }

    /// Groups received batches into transactions until every receiver has stopped.
    async fn write_loop(
        self: &Arc<Self>,
        mut rx: mpsc::Receiver<Vec<Delivery>>,
        deletes: &TaskTracker,
        stop: &CancellationToken,
    ) {
        let permits = Arc::new(Semaphore::new(self.settings.delete_concurrency));
        while let Some(mut batch) = rx.recv().await {
            let deadline = Instant::now() + self.settings.flush_interval;
            while batch.len() < self.settings.batch_max_rows {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(more)) => batch.extend(more),
                    Ok(None) | Err(_) => break,
                }
            }
            self.process(batch, deletes, &permits, stop).await;
        }
    }

    /// Steps 1 to 5 for one batch.
    async fn process(
        self: &Arc<Self>,
        batch: Vec<Delivery>,
        deletes: &TaskTracker,
        permits: &Arc<Semaphore>,
        stop: &CancellationToken,
    ) {
        let started = Instant::now();
        let size = batch.len();
        let mut seen = HashSet::with_capacity(size);
        let mut skipped = Vec::new(); // receipt handles of ledger hits: deletable at once
        let mut in_batch = Vec::new(); // repeats of an id in this batch: deletable once it commits
        let mut judged = Vec::with_capacity(size);
        for delivery in batch {
            if !seen.insert(delivery.message_id.clone()) {
                self.stats.add(Counter::DuplicateInBatch, 1);
                in_batch.push(delivery.receipt_handle);
            } else if self.ledger.contains(&delivery.message_id) {
                self.stats.add(Counter::DuplicateLedger, 1);
                skipped.push(delivery.receipt_handle);
            } else {
                let verdict = self.judge(&delivery);
                judged.push((delivery, verdict));
            }
        }
        let in_hand: Vec<String> =
            judged.iter().map(|(d, _)| d.receipt_handle.clone()).chain(in_batch.iter().cloned()).collect();
        let committing = self.commit(&judged, stop);
        let outcome = tokio::select! {
            biased;
            outcome = committing => outcome,
            never = self.keep_invisible(&in_hand) => match never {},
        };
        let Some(Committed { written, refused }) = outcome else {
            self.stats.add(Counter::Abandoned, judged.len() + in_batch.len());
            self.delete(skipped, deletes, permits);
            return;
        };
        let mut committed: Vec<&str> = Vec::with_capacity(judged.len());
        let mut to_delete = skipped;
        to_delete.append(&mut in_batch);
        for (delivery, verdict) in &judged {
            let id = delivery.message_id.as_str();
            let is_reject = match (verdict, refused.get(id)) {
                // Refused by Postgres and already counted by `commit`; if even its quarantine record
                // failed, the message stays in the queue.
                (_, Some(false)) => {
                    self.stats.add(Counter::Abandoned, 1);
                    continue;
                }
                (_, Some(true)) => true,
                (Judged::Login(_), None) if written.logins.contains(id) => {
                    self.stats.add(Counter::Written, 1);
                    false
                }
                (Judged::Reject(_, reason), None) if written.quarantined.contains(id) => {
                    self.stats.quarantined(*reason);
                    true
                }
                (verdict, None) => {
                    self.stats.add(Counter::DuplicateDatabase, 1);
                    matches!(verdict, Judged::Reject(..))
                }
            };
            if is_reject && !self.settings.delete_rejected {
                // Left for the redrive policy: not in the ledger either, or a redelivery would be deleted.
                self.stats.add(Counter::LeftForRedrive, 1);
                continue;
            }
            committed.push(id);
            to_delete.push(delivery.receipt_handle.clone());
        }
        self.ledger.record(committed);
        metrics::histogram!("pii_ingest_batch_rows").record(size as f64);
        metrics::histogram!("pii_ingest_commit_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(batch.size = size, duration_ms = started.elapsed().as_millis() as u64, "batch committed");
        self.delete(to_delete, deletes, permits);
    }

    /// While a batch is being written, renews its deliveries' invisibility every half visibility
    /// timeout, so a slow or unreachable database does not cause a storm of redeliveries. Never
    /// returns: it is dropped when the write finishes.
    async fn keep_invisible(&self, handles: &[String]) -> std::convert::Infallible {
        let timeout = self.source.visibility_timeout().max(Duration::from_secs(1));
        let seconds = timeout.as_secs() as u32;
        loop {
            tokio::time::sleep(timeout / 2).await;
            for chunk in handles.chunks(crate::source::sqs::MAX_BATCH) {
                match self.source.extend(chunk, seconds).await {
                    Ok(()) => self.stats.add(Counter::VisibilityExtended, chunk.len()),
                    Err(error) => {
                        tracing::warn!(error = %crate::telemetry::chain(&error), disposition = "retry", "could not extend visibility; the batch may be redelivered (and then skipped)")
                    }
                }
            }
        }
    }

    /// Parses, validates and masks one delivery.
    fn judge(&self, delivery: &Delivery) -> Judged {
        match event::parse(&delivery.body, &self.rules) {
            Ok(login) => {
                self.stats.add(Counter::UnknownFields, login.unknown_fields);
                Judged::Login(NewLogin {
                    message_id: delivery.message_id.clone(),
                    masked_ip: self.masker.token(&login.ip),
                    masked_device_id: self.masker.token(&login.device_id),
                    user_id: login.user_id,
                    device_type: login.device_type,
                    locale: login.locale,
                    app_version: login.app_version,
                    create_date: delivery.sent_at.date_naive(),
                    sent_at: delivery.sent_at,
                    mask_key_id: self.masker.key_id().to_owned(),
                    ip_sealed: self.sealer.as_ref().map(|s| s.seal(&login.ip)),
                    device_id_sealed: self.sealer.as_ref().map(|s| s.seal(&login.device_id)),
                    seal_key_id: self.sealer.as_ref().map(|s| s.key_id().to_owned()),
                })
            }
            Err(reject) => self.quarantine(delivery, reject),
        }
    }

    fn quarantine(&self, delivery: &Delivery, reject: Reject) -> Judged {
        tracing::info!(
            sqs.message_id = %delivery.message_id, reason = %reject.reason, field = reject.field,
            disposition = "reject", "message quarantined: {}", reject.detail
        );
        let record = NewQuarantined {
            message_id: delivery.message_id.clone(),
            reason: reject.reason.as_str().to_owned(),
            field: reject.field.map(str::to_owned),
            detail: reject.detail,
            masked_body: self.masker.mask_body(&delivery.body),
            body_hmac: self.masker.token_bytes(&delivery.body),
            body_bytes: delivery.body.len() as i32,
            receive_count: delivery.receive_count,
            sent_at: delivery.sent_at,
            mask_key_id: self.masker.key_id().to_owned(),
        };
        Judged::Reject(record, reject.reason)
    }

    /// Writes the judged rows, retrying transient failures with backoff and isolating rows Postgres
    /// refuses. `None` when a stop came while the database was unreachable: nothing was committed.
    async fn commit(&self, judged: &[(Delivery, Judged)], stop: &CancellationToken) -> Option<Committed> {
        let mut written = Written::default();
        let mut refused = HashMap::new();
        // A stack of slices still to write; a slice that fails for its data is split in two.
        let mut pending: Vec<&[(Delivery, Judged)]> = vec![judged];
        let mut failures = 0u32;
        while let Some(part) = pending.pop() {
            if part.is_empty() {
                continue;
            }
            let (logins, rejects) = rows(part.iter().map(|(_, j)| j));
            match self.sink.write(&logins, &rejects).await {
                Ok(w) => {
                    failures = 0;
                    written.logins.extend(w.logins);
                    written.quarantined.extend(w.quarantined);
                }
                Err(error) if error.disposition() == Disposition::DataError && part.len() > 1 => {
                    tracing::warn!(batch.size = part.len(), error = %error.summary(), disposition = "split", "Postgres refused a batch; splitting it to isolate the row");
                    let (left, right) = part.split_at(part.len() / 2);
                    pending.push(right);
                    pending.push(left);
                }
                Err(error) if error.disposition() == Disposition::DataError && self.sink.ping().await => {
                    let (delivery, _) = &part[0];
                    let reject = Reject {
                        reason: RejectReason::DbRejected,
                        field: None,
                        detail: format!("Postgres refused the row: {}", error.summary()),
                    };
                    let Judged::Reject(record, reason) = self.quarantine(delivery, reject) else { unreachable!() };
                    let stored = match self.sink.write(&[], std::slice::from_ref(&record)).await {
                        Ok(w) if w.quarantined.is_empty() => {
                            self.stats.add(Counter::DuplicateDatabase, 1);
                            true
                        }
                        Ok(_) => {
                            self.stats.quarantined(reason);
                            true
                        }
                        Err(e) => {
                            tracing::error!(sqs.message_id = %delivery.message_id, error = %e.summary(), "could not quarantine a refused row; it stays in the queue");
                            false
                        }
                    };
                    refused.insert(delivery.message_id.clone(), stored);
                }
                Err(error) => {
                    failures += 1;
                    self.stats.add(Counter::RetryWrite, 1);
                    let delay = backoff(failures);
                    tracing::warn!(batch.size = part.len(), error = %crate::telemetry::chain(&error), disposition = "retry", delay_ms = delay.as_millis() as u64, "write failed; retrying");
                    pending.push(part);
                    tokio::select! {
                        _ = stop.cancelled() => {
                            tracing::warn!(batch.size = judged.len(), "stopping while Postgres is unavailable; the batch stays in the queue");
                            return None;
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        Some(Committed { written, refused })
    }

    /// Deletes receipt handles in batches of 10 on the delete tasks, retrying failed entries.
    fn delete(&self, handles: Vec<String>, deletes: &TaskTracker, permits: &Arc<Semaphore>) {
        for chunk in handles.chunks(crate::source::sqs::MAX_BATCH) {
            let (source, stats, permits, chunk) =
                (self.source.clone(), self.stats.clone(), permits.clone(), chunk.to_vec());
            deletes.spawn(async move {
                // The semaphore is never closed, so acquiring cannot fail.
                let _permit = permits.acquire_owned().await.expect("semaphore is never closed");
                delete_with_retry(&*source, chunk, &stats).await;
            });
        }
    }
}

/// Login rows and quarantine records of a slice of judged deliveries.
fn rows<'a>(judged: impl Iterator<Item = &'a Judged>) -> (Vec<NewLogin>, Vec<NewQuarantined>) {
    let (mut logins, mut rejects) = (Vec::new(), Vec::new());
    for j in judged {
        match j {
            Judged::Login(row) => logins.push(row.clone()),
            Judged::Reject(row, _) => rejects.push(row.clone()),
        }
    }
    (logins, rejects)
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
                tracing::warn!(error = %crate::telemetry::chain(&error), disposition = "retry", attempt, "delete failed")
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
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(100));
        assert!(backoff(4) >= Duration::from_millis(400));
        for n in 1..40 {
            assert!(backoff(n) <= Duration::from_secs(10));
        }
    }
}
