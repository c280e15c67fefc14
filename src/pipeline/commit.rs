//! Step 3: one batch's rows and quarantine records into Postgres, in one transaction when all is
//! well. Transient failures are retried with backoff (nothing is deleted meanwhile); a batch Postgres
//! refuses for its data is split until the offending row is alone, and that row becomes a
//! `db_rejected` quarantine record while the rest commit.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use crate::counters::Counter;
use crate::event::{Reject, RejectReason};
use crate::sink::{Disposition, NewLogin, NewQuarantined, Written};
use crate::source::{Delivery, Source};

use super::{Pipeline, backoff};

/// The rows of one batch, and for each delivery which row is its.
#[derive(Default)]
pub(super) struct Batch {
    pub logins: Vec<NewLogin>,
    pub rejects: Vec<NewQuarantined>,
    /// In batch order; `Row::Login(i)` points into `logins`, `Row::Reject(i, _)` into `rejects`.
    pub entries: Vec<(Delivery, Row)>,
}

#[derive(Clone, Copy)]
pub(super) enum Row {
    Login(usize),
    Reject(usize, RejectReason),
}

/// The second look at a single refused row.
enum Recheck {
    Refused,
    Written(Written),
    Unhealthy,
}

/// What a batch's transactions achieved.
pub(super) struct Committed {
    pub written: Written,
    /// Ids Postgres refused as rows, turned into `db_rejected` records (already counted); `false`
    /// where even that record could not be stored.
    pub refused: HashMap<String, bool>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Copies of the rows of `entries[range]` (only needed once a batch has to be split).
    fn rows(&self, range: std::ops::Range<usize>) -> (Vec<NewLogin>, Vec<NewQuarantined>) {
        let (mut logins, mut rejects) = (Vec::new(), Vec::new());
        for (_, row) in &self.entries[range] {
            match *row {
                Row::Login(i) => logins.push(self.logins[i].clone()),
                Row::Reject(i, _) => rejects.push(self.rejects[i].clone()),
            }
        }
        (logins, rejects)
    }
}

impl<S: Source> Pipeline<S> {
    /// Writes the batch. `None` when a stop came while the database was unreachable: then nothing
    /// of it was committed and nothing may be deleted.
    pub(super) async fn commit(&self, batch: &Batch, stop: &CancellationToken) -> Option<Committed> {
        let mut committed = Committed { written: Written::default(), refused: HashMap::new() };
        // Index ranges still to write; a range that fails for its data is split in two.
        let mut pending = vec![0..batch.len()];
        let mut failures = 0u32;
        while let Some(range) = pending.pop() {
            if range.is_empty() {
                continue;
            }
            let whole = range.len() == batch.len();
            let split_rows;
            let (logins, rejects) = if whole {
                (&batch.logins[..], &batch.rejects[..])
            } else {
                split_rows = batch.rows(range.clone());
                (&split_rows.0[..], &split_rows.1[..])
            };
            match self.sink.write(logins, rejects).await {
                Ok(w) => {
                    failures = 0;
                    committed.written.logins.extend(w.logins);
                    committed.written.quarantined.extend(w.quarantined);
                }
                Err(error) if error.disposition() == Disposition::DataError && range.len() > 1 => {
                    tracing::warn!(batch.size = range.len(), error = %error.summary(), disposition = "split", "Postgres refused a batch; splitting it to isolate the row");
                    let middle = range.start + range.len() / 2;
                    pending.push(middle..range.end);
                    pending.push(range.start..middle);
                }
                Err(error) if error.disposition() == Disposition::DataError => {
                    match self.recheck(logins, rejects).await {
                        Recheck::Refused => {
                            let (delivery, _) = &batch.entries[range.start];
                            let stored = self.refuse(delivery, &error.summary()).await;
                            committed.refused.insert(delivery.message_id.clone(), stored);
                        }
                        Recheck::Written(w) => {
                            committed.written.logins.extend(w.logins);
                            committed.written.quarantined.extend(w.quarantined);
                        }
                        // The server is not answering: the failure was not the row's; retry it.
                        Recheck::Unhealthy => pending.push(range),
                    }
                }
                Err(error) => {
                    failures += 1;
                    self.stats.add(Counter::RetryWrite, 1);
                    let delay = backoff(failures);
                    tracing::warn!(batch.size = range.len(), error = %crate::telemetry::chain(&error), disposition = "retry", delay_ms = delay.as_millis() as u64, "write failed; retrying");
                    pending.push(range);
                    tokio::select! {
                        _ = stop.cancelled() => {
                            tracing::warn!(batch.size = batch.len(), "stopping while Postgres is unavailable; the batch stays in the queue");
                            return None;
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        Some(committed)
    }

    /// Decides whether a single row that failed for its data really is to blame: the server must
    /// answer, and writing the row once more, a moment later, must fail again. A transient failure
    /// dressed as a data error (a statement cancelled mid-write) passes the second time.
    async fn recheck(&self, logins: &[NewLogin], rejects: &[NewQuarantined]) -> Recheck {
        if !self.sink.ping().await {
            tokio::time::sleep(backoff(3)).await;
            return Recheck::Unhealthy;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        match self.sink.write(logins, rejects).await {
            Ok(written) => Recheck::Written(written),
            Err(error) if error.disposition() == Disposition::DataError => Recheck::Refused,
            Err(_) => Recheck::Unhealthy,
        }
    }

    /// Quarantines a row Postgres refused although the server is healthy. Returns whether the
    /// record is stored (counted here).
    async fn refuse(&self, delivery: &Delivery, why: &str) -> bool {
        let reject = Reject {
            reason: RejectReason::DbRejected,
            field: None,
            detail: format!("Postgres refused the row: {why}"),
        };
        let record = self.quarantine_record(delivery, reject);
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
                tracing::error!(sqs.message_id = %delivery.message_id, error = %e.summary(), "could not quarantine a refused row; it stays in the queue");
                false
            }
        }
    }
}
