//! Step 3: one batch's rows and quarantine records into Postgres, in one transaction when all is
//! well. Transient failures are retried with backoff (nothing is deleted meanwhile); a batch Postgres
//! refuses for its data is split until the offending row is alone, and that row becomes a
//! `db_rejected` quarantine record while the rest commit.
//!
//! A "retryable" failure that outlasts the retry budget while the server answers is a poison row in
//! disguise (a trigger, a cancelled statement that always recurs, a data error diesel cannot name):
//! the batch is then split the same way, so one row cannot hold a thousand good messages for hours.
//! A server that does not answer is never blamed on rows: that batch is retried for as long as it takes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use tokio_util::sync::CancellationToken;

use crate::counters::Counter;
use crate::event::RejectReason;
use crate::sink::{Disposition, NewLogin, NewQuarantined, Sink, SinkError, Written};
use crate::source::{Delivery, Source};

use super::judge::Rejected;
use super::{Pipeline, backoff};

/// The rows of one batch, and for each delivery which row is its.
#[derive(Default)]
pub(super) struct Batch {
    pub logins: Vec<NewLogin>,
    pub rejects: Vec<NewQuarantined>,
    /// In batch order; `Row::Login(i)` points into `logins`, `Row::Reject(i, _)` into `rejects`.
    pub entries: Vec<Entry>,
}

/// One delivery of a batch.
pub(super) struct Entry {
    pub delivery: Delivery,
    /// Hex HMAC of its body.
    pub fingerprint: String,
    pub row: Row,
}

#[derive(Clone, Copy)]
pub(super) enum Row {
    Login(usize),
    Reject(usize, RejectReason),
}

/// What a failed write calls for ([`Pipeline::next_step`]). `poisoned`: retryable failures outlasted
/// the budget while the server answered, so the rows are blamed although the error does not say so.
enum Step {
    Split { poisoned: bool },
    Blame { poisoned: bool },
    Retry,
}

/// `range` in two halves, the first to be written first (it is popped last-in, first-out).
fn halves(range: Range<usize>, suspect: bool) -> [Pending; 2] {
    let middle = range.start + range.len() / 2;
    [Pending { range: middle..range.end, suspect }, Pending { range: range.start..middle, suspect }]
}

/// The second look at a single refused row.
enum Recheck {
    Refused,
    Written(Written),
    Unhealthy,
}

/// A range of the batch still to write. `suspect`: split from a batch whose retryable failures
/// outlasted the budget, so a failure of its own is blamed on its rows at once (the server answering).
struct Pending {
    range: Range<usize>,
    suspect: bool,
}

/// What a batch's transactions achieved.
#[derive(Default)]
pub(super) struct Committed {
    pub written: Written,
    /// Ids Postgres refused as rows, turned into `db_rejected` records (already counted); `false`
    /// where even that record could not be stored.
    pub refused: HashMap<String, bool>,
}

impl Committed {
    fn absorb(&mut self, written: Written) {
        self.written.logins.extend(written.logins);
        self.written.quarantined.extend(written.quarantined);
        self.written.conflicts.extend(written.conflicts);
    }
}

impl Batch {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a delivery whose verdict is a login row.
    pub fn push_login(&mut self, delivery: Delivery, fingerprint: String, login: NewLogin) {
        self.logins.push(login);
        self.entries.push(Entry { delivery, fingerprint, row: Row::Login(self.logins.len() - 1) });
    }

    /// Adds a delivery whose verdict is a quarantine record.
    pub fn push_reject(
        &mut self,
        delivery: Delivery,
        fingerprint: String,
        record: NewQuarantined,
        reason: RejectReason,
    ) {
        self.rejects.push(record);
        self.entries.push(Entry { delivery, fingerprint, row: Row::Reject(self.rejects.len() - 1, reason) });
    }

    /// The rows of `entries[range]`: borrowed for the whole batch, copied only once it has been split.
    fn rows(&self, range: Range<usize>) -> (Cow<'_, [NewLogin]>, Cow<'_, [NewQuarantined]>) {
        if range.len() == self.len() {
            return (Cow::Borrowed(&self.logins), Cow::Borrowed(&self.rejects));
        }
        let (mut logins, mut rejects) = (Vec::new(), Vec::new());
        for entry in &self.entries[range] {
            match entry.row {
                Row::Login(i) => logins.push(self.logins[i].clone()),
                Row::Reject(i, _) => rejects.push(self.rejects[i].clone()),
            }
        }
        (Cow::Owned(logins), Cow::Owned(rejects))
    }
}

impl<S: Source, K: Sink> Pipeline<S, K> {
    /// Writes the batch. `None` when a stop came while the database was unreachable: then nothing
    /// of it was committed and nothing may be deleted.
    pub(super) async fn commit(&self, batch: &Batch, stop: &CancellationToken) -> Option<Committed> {
        let mut committed = Committed::default();
        let mut pending = vec![Pending { range: 0..batch.len(), suspect: false }];
        let mut failures = 0u32;
        while let Some(Pending { range, suspect }) = pending.pop() {
            if range.is_empty() {
                continue;
            }
            let (logins, rejects) = batch.rows(range.clone());
            let error = match self.sink.write(&logins, &rejects).await {
                Ok(written) => {
                    failures = 0;
                    committed.absorb(written);
                    continue;
                }
                Err(error) => error,
            };
            match self.next_step(&error, range.len(), suspect, &mut failures).await {
                Step::Split { poisoned } => {
                    let why =
                        if poisoned { "retryable failures outlasted the budget" } else { "Postgres refused a batch" };
                    tracing::warn!(batch.size = range.len(), error = %error.summary(), disposition = "split", "{why}; splitting it to isolate the row");
                    pending.extend(halves(range, poisoned || suspect));
                }
                Step::Blame { poisoned } => match self.recheck(&logins, &rejects, poisoned).await {
                    Recheck::Refused => {
                        let entry = &batch.entries[range.start];
                        let stored = self.refuse(entry, &error.summary()).await;
                        committed.refused.insert(entry.delivery.message_id.clone(), stored);
                    }
                    Recheck::Written(written) => committed.absorb(written),
                    // The server is not answering: the failure was not the row's; retry it.
                    Recheck::Unhealthy => pending.push(Pending { range, suspect: false }),
                },
                Step::Retry => {
                    let rows = range.len();
                    pending.push(Pending { range, suspect });
                    if !self.wait_to_retry(&error, rows, batch.len(), failures, stop).await {
                        return None;
                    }
                }
            }
        }
        Some(committed)
    }

    /// What a failed write of `rows` rows calls for. A data error, or retryable failures past the
    /// budget (at once for a `suspect` range) while the server answers, are blamed on the rows: a
    /// range is split, a single row rechecked. Anything else is retried; `failures` counts those in
    /// a row and starts again once rows are blamed.
    async fn next_step(&self, error: &SinkError, rows: usize, suspect: bool, failures: &mut u32) -> Step {
        let data_error = error.disposition() == Disposition::DataError;
        if !data_error {
            *failures += 1;
            self.stats.add(Counter::RetryWrite, 1);
        }
        let poisoned = !data_error && (suspect || *failures > self.settings.retry_budget) && self.sink.ping().await;
        if !data_error && !poisoned {
            return Step::Retry;
        }
        *failures = 0;
        if rows > 1 { Step::Split { poisoned } } else { Step::Blame { poisoned } }
    }

    /// Backs off before a retry of `rows` rows. `false` when a stop came meanwhile: the batch stays
    /// in the queue.
    async fn wait_to_retry(
        &self,
        error: &SinkError,
        rows: usize,
        batch: usize,
        failures: u32,
        stop: &CancellationToken,
    ) -> bool {
        let delay = backoff(failures);
        tracing::warn!(batch.size = rows, error = %crate::telemetry::chain(error), disposition = "retry", delay_ms = delay.as_millis() as u64, "write failed; retrying");
        tokio::select! {
            _ = stop.cancelled() => {
                tracing::warn!(batch.size = batch, "stopping while Postgres is unavailable; the batch stays in the queue");
                false
            }
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Decides whether a single row that failed is really to blame: the server must answer, and
    /// writing the row once more, a moment later, must fail again: for its data, or (`any_error`, a
    /// row whose retryable failures outlasted the budget) for any reason while the server answers. A
    /// transient failure dressed as a data error (a statement cancelled mid-write) passes the second time.
    async fn recheck(&self, logins: &[NewLogin], rejects: &[NewQuarantined], any_error: bool) -> Recheck {
        if !self.sink.ping().await {
            tokio::time::sleep(backoff(3)).await;
            return Recheck::Unhealthy;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        match self.sink.write(logins, rejects).await {
            Ok(written) => Recheck::Written(written),
            Err(error) if error.disposition() == Disposition::DataError => Recheck::Refused,
            Err(_) if any_error && self.sink.ping().await => Recheck::Refused,
            Err(_) => Recheck::Unhealthy,
        }
    }

    /// Quarantines a row Postgres refused although the server is healthy. Returns whether the
    /// record is stored (counted here).
    async fn refuse(&self, entry: &Entry, why: &str) -> bool {
        let reject = Rejected {
            reason: RejectReason::DbRejected,
            field: None,
            detail: format!("Postgres refused the row: {why}"),
        };
        let record = self.quarantine_record(&entry.delivery, &entry.fingerprint, reject);
        match self.sink.write(&[], std::slice::from_ref(&record)).await {
            Ok(w) if w.quarantined.is_empty() => {
                self.stats.add(Counter::DuplicateDatabase, 1);
                true
            }
            Ok(_) => {
                self.stats.quarantined(RejectReason::DbRejected);
                true
            }
            Err(e) => {
                tracing::error!(sqs.message_id = %entry.delivery.message_id, error = %e.summary(), "could not quarantine a refused row; it stays in the queue");
                false
            }
        }
    }

    /// The `key_conflict` record of a delivery whose key another body holds, under the delivery's own
    /// conflict key (its `sqs:` MessageId key; for a key that is no producer key, one derived from the
    /// body's fingerprint), so its redeliveries are duplicates of this record.
    pub(super) fn conflict_record(&self, batch: &Batch, entry: &Entry) -> (Delivery, NewQuarantined) {
        let mut delivery = entry.delivery.clone();
        let key = delivery
            .conflict_key
            .take()
            .unwrap_or_else(|| format!("conflict:{}:{}", &entry.fingerprint[..32], delivery.message_id));
        tracing::warn!(
            sqs.message_id = %delivery.message_id, conflict_key = %key, reason = "key_conflict", disposition = "reject",
            "message quarantined: its idempotency key was already claimed by another body"
        );
        let detail = "the idempotency key was already claimed by a message with another body".to_owned();
        let reason = RejectReason::KeyConflict.as_str().to_owned();
        let record = match entry.row {
            Row::Reject(i, _) => {
                NewQuarantined { message_id: key.clone(), reason, field: None, detail, ..batch.rejects[i].clone() }
            }
            Row::Login(_) => {
                let reject = Rejected { reason: RejectReason::KeyConflict, field: None, detail };
                NewQuarantined { message_id: key.clone(), ..self.record_of(&delivery, &entry.fingerprint, reject) }
            }
        };
        delivery.message_id = key;
        (delivery, record)
    }
}
