//! Counters for one drain, shared by the pipeline's tasks, and the [`Report`] they add up to.
//!
//! Every delivery received ends in exactly one bucket: written, quarantined, a duplicate (by the
//! layer that caught it) or abandoned (in hand when a forced stop came; SQS redelivers it). So
//! `received == written + quarantined + duplicates + abandoned` is checked at the end of every drain.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::event::{EXTRA_FIELD_LABELS, ExtraFields, RejectReason};

/// The things a drain counts. Each is also exported as a Prometheus counter (see [`Counter::emit`]);
/// labels come from fixed sets (layers, causes, reason codes), never from message content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Received,
    Written,
    DuplicateInBatch,
    DuplicateLedger,
    DuplicateDatabase,
    /// Ledger hits Postgres did not confirm (a restored or wiped database): judged and written instead.
    LedgerUnconfirmed,
    /// In hand when a forced stop came; not deleted, so SQS redelivers them.
    Abandoned,
    Deleted,
    DeleteFailed,
    /// Rejects left undeleted for the queue's redrive policy (dead-letter mode).
    LeftForRedrive,
    UnknownFields,
    RetryReceive,
    RetryWrite,
    RetryDelete,
    /// Deliveries whose visibility was extended while their batch was slow to commit.
    VisibilityExtended,
}

const COUNTERS: usize = Counter::VisibilityExtended as usize + 1;

impl Counter {
    /// Every counter, in declaration order.
    pub const ALL: [Counter; COUNTERS] = [
        Counter::Received,
        Counter::Written,
        Counter::DuplicateInBatch,
        Counter::DuplicateLedger,
        Counter::DuplicateDatabase,
        Counter::LedgerUnconfirmed,
        Counter::Abandoned,
        Counter::Deleted,
        Counter::DeleteFailed,
        Counter::LeftForRedrive,
        Counter::UnknownFields,
        Counter::RetryReceive,
        Counter::RetryWrite,
        Counter::RetryDelete,
        Counter::VisibilityExtended,
    ];
}

/// Every counter series' name and its `# HELP` text (Prometheus tooling such as `promtool check
/// metrics` flags a series without one).
const COUNTER_HELP: [(&str, &str); 13] = [
    ("pii_ingest_messages_received_total", "SQS deliveries received (a redelivery counts again)"),
    ("pii_ingest_rows_written_total", "Rows inserted into user_logins"),
    ("pii_ingest_duplicates_total", "Deliveries already written, by the layer that caught them"),
    (
        "pii_ingest_ledger_unconfirmed_total",
        "Ledger hits Postgres did not confirm (a restored database), written instead",
    ),
    ("pii_ingest_abandoned_total", "Deliveries in hand at a forced stop, left for SQS to redeliver"),
    ("pii_ingest_messages_deleted_total", "Messages deleted from SQS after their batch committed"),
    ("pii_ingest_delete_failures_total", "Deletes that failed after retries (the message returns and is skipped)"),
    ("pii_ingest_left_for_redrive_total", "Rejects left undeleted for the queue's redrive policy"),
    ("pii_ingest_unknown_fields_total", "Unknown fields dropped from valid logins"),
    ("pii_ingest_retries_total", "Retried SQS or Postgres calls, by cause"),
    ("pii_ingest_visibility_extended_total", "Deliveries whose visibility was extended during a slow commit"),
    ("pii_ingest_quarantined_total", "Messages quarantined, by reason code"),
    ("pii_ingest_extra_fields_total", "Fields outside the schema dropped from logins, by kind of personal data"),
];

/// Describes every counter and registers each series at zero, so dashboards and `rate()` see them
/// before the first event (a retry counter that appears only on the first outage is hard to alert on).
pub fn register_metrics() {
    for (name, help) in COUNTER_HELP {
        metrics::describe_counter!(name, help);
    }
    for counter in Counter::ALL {
        counter.emit(0);
    }
    for reason in RejectReason::ALL {
        metrics::counter!("pii_ingest_quarantined_total", "reason" => reason.as_str()).increment(0);
    }
    for label in EXTRA_FIELD_LABELS {
        metrics::counter!("pii_ingest_extra_fields_total", "field" => label).increment(0);
    }
}

impl Counter {
    fn emit(self, n: u64) {
        use metrics::counter;
        match self {
            Counter::Received => counter!("pii_ingest_messages_received_total").increment(n),
            Counter::Written => counter!("pii_ingest_rows_written_total").increment(n),
            Counter::DuplicateInBatch => counter!("pii_ingest_duplicates_total", "layer" => "batch").increment(n),
            Counter::DuplicateLedger => counter!("pii_ingest_duplicates_total", "layer" => "ledger").increment(n),
            Counter::DuplicateDatabase => counter!("pii_ingest_duplicates_total", "layer" => "database").increment(n),
            Counter::LedgerUnconfirmed => counter!("pii_ingest_ledger_unconfirmed_total").increment(n),
            Counter::Abandoned => counter!("pii_ingest_abandoned_total").increment(n),
            Counter::Deleted => counter!("pii_ingest_messages_deleted_total").increment(n),
            Counter::DeleteFailed => counter!("pii_ingest_delete_failures_total").increment(n),
            Counter::LeftForRedrive => counter!("pii_ingest_left_for_redrive_total").increment(n),
            Counter::UnknownFields => counter!("pii_ingest_unknown_fields_total").increment(n),
            Counter::RetryReceive => counter!("pii_ingest_retries_total", "cause" => "receive").increment(n),
            Counter::RetryWrite => counter!("pii_ingest_retries_total", "cause" => "write").increment(n),
            Counter::RetryDelete => counter!("pii_ingest_retries_total", "cause" => "delete").increment(n),
            Counter::VisibilityExtended => counter!("pii_ingest_visibility_extended_total").increment(n),
        }
    }
}

/// Live counters. Cheap to bump from any task.
#[derive(Default)]
pub struct Stats {
    counts: [AtomicU64; COUNTERS],
    quarantined: [AtomicU64; RejectReason::ALL.len()],
    /// Receivers running now, and the most that ran at once (they size themselves).
    receivers: AtomicU64,
    receivers_peak: AtomicU64,
}

impl Stats {
    /// Notes that `n` receivers run now (and sets the `pii_ingest_receivers` gauge).
    pub fn note_receivers(&self, n: usize) {
        self.receivers.store(n as u64, Relaxed);
        self.receivers_peak.fetch_max(n as u64, Relaxed);
        metrics::gauge!("pii_ingest_receivers").set(n as f64);
    }

    /// Receivers running now.
    pub fn receivers(&self) -> u64 {
        self.receivers.load(Relaxed)
    }

    /// Adds `n` to a counter (and to its Prometheus twin).
    pub fn add(&self, counter: Counter, n: usize) {
        self.counts[counter as usize].fetch_add(n as u64, Relaxed);
        counter.emit(n as u64);
    }

    /// Counts the extra fields of a valid login (dropped, never stored): in total, and per label of
    /// a fixed set (`email`, `phone`, ..., `other`), never per producer-chosen name.
    pub fn extra_fields(&self, extra: &ExtraFields) {
        self.add(Counter::UnknownFields, extra.total());
        for (label, n) in extra.by_label() {
            metrics::counter!("pii_ingest_extra_fields_total", "field" => label).increment(n as u64);
        }
    }

    /// Counts one quarantined message.
    pub fn quarantined(&self, reason: RejectReason) {
        self.quarantined[reason.index()].fetch_add(1, Relaxed);
        metrics::counter!("pii_ingest_quarantined_total", "reason" => reason.as_str()).increment(1);
    }

    /// Deliveries received and not yet settled (deleted, failed to delete, left for redrive or
    /// abandoned): what this process still holds invisible in the queue.
    pub fn in_flight(&self) -> u64 {
        use Counter::*;
        let settled = self.get(Deleted) + self.get(DeleteFailed) + self.get(LeftForRedrive) + self.get(Abandoned);
        self.get(Received).saturating_sub(settled)
    }

    /// A number that grows whenever a delivery reaches a fate (written, quarantined, found a
    /// duplicate, deleted): the watchdog's sign of progress.
    pub fn progress(&self) -> u64 {
        use Counter::*;
        let fates: u64 = self.quarantined.iter().map(|q| q.load(Relaxed)).sum();
        fates
            + [Written, DuplicateInBatch, DuplicateLedger, DuplicateDatabase, Deleted, LeftForRedrive]
                .iter()
                .map(|&c| self.get(c))
                .sum::<u64>()
    }

    fn get(&self, counter: Counter) -> u64 {
        self.counts[counter as usize].load(Relaxed)
    }

    /// A consistent-enough snapshot (counters are read one by one).
    pub fn report(&self) -> Report {
        use Counter::*;
        Report {
            received: self.get(Received),
            written: self.get(Written),
            duplicate_in_batch: self.get(DuplicateInBatch),
            duplicate_ledger: self.get(DuplicateLedger),
            duplicate_database: self.get(DuplicateDatabase),
            ledger_unconfirmed: self.get(LedgerUnconfirmed),
            abandoned: self.get(Abandoned),
            deleted: self.get(Deleted),
            delete_failed: self.get(DeleteFailed),
            left_for_redrive: self.get(LeftForRedrive),
            unknown_fields: self.get(UnknownFields),
            retries: self.get(RetryReceive) + self.get(RetryWrite) + self.get(RetryDelete),
            visibility_extended: self.get(VisibilityExtended),
            receivers_peak: self.receivers_peak.load(Relaxed),
            quarantined: RejectReason::ALL
                .iter()
                .map(|r| (r.as_str(), self.quarantined[r.index()].load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub received: u64,
    pub written: u64,
    pub duplicate_in_batch: u64,
    pub duplicate_ledger: u64,
    pub duplicate_database: u64,
    /// Ledger hits Postgres did not confirm, judged and written instead (not a bucket of their own).
    pub ledger_unconfirmed: u64,
    pub abandoned: u64,
    pub deleted: u64,
    pub delete_failed: u64,
    pub left_for_redrive: u64,
    pub unknown_fields: u64,
    pub retries: u64,
    pub visibility_extended: u64,
    /// Most receivers that ran at once.
    pub receivers_peak: u64,
    /// Quarantined messages by reason code.
    pub quarantined: BTreeMap<&'static str, u64>,
}

impl Report {
    pub fn duplicates(&self) -> u64 {
        self.duplicate_in_batch + self.duplicate_ledger + self.duplicate_database
    }

    pub fn quarantined_total(&self) -> u64 {
        self.quarantined.values().sum()
    }

    /// Whether every received delivery is accounted for.
    pub fn reconciles(&self) -> bool {
        self.received == self.written + self.quarantined_total() + self.duplicates() + self.abandoned
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "received            {:>9}", self.received)?;
        writeln!(f, "rows written        {:>9}", self.written)?;
        writeln!(
            f,
            "duplicates skipped  {:>9}   (ledger {}, database {}, same batch {})",
            self.duplicates(),
            self.duplicate_ledger,
            self.duplicate_database,
            self.duplicate_in_batch
        )?;
        if self.ledger_unconfirmed > 0 {
            writeln!(f, "ledger not confirmed{:>9}   (stale ledger: written after all)", self.ledger_unconfirmed)?;
        }
        writeln!(f, "quarantined         {:>9}", self.quarantined_total())?;
        for (reason, n) in &self.quarantined {
            writeln!(f, "  {reason:<18}{n:>9}")?;
        }
        if self.abandoned > 0 {
            writeln!(f, "abandoned at stop   {:>9}   (not deleted: SQS redelivers them)", self.abandoned)?;
        }
        writeln!(f, "deleted from SQS    {:>9}", self.deleted)?;
        if self.delete_failed > 0 {
            writeln!(f, "deletes failed      {:>9}   (harmless: redelivered, then skipped)", self.delete_failed)?;
        }
        if self.left_for_redrive > 0 {
            writeln!(f, "left for redrive    {:>9}   (dead-letter mode)", self.left_for_redrive)?;
        }
        if self.unknown_fields > 0 {
            writeln!(f, "unknown fields      {:>9}   (dropped, not stored)", self.unknown_fields)?;
        }
        let verdict = if self.reconciles() { "ok" } else { "MISMATCH" };
        write!(
            f,
            "reconciliation      {verdict}: received {} = written {} + duplicates {} + quarantined {} + abandoned {}",
            self.received,
            self.written,
            self.duplicates(),
            self.quarantined_total(),
            self.abandoned
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reconciles_only_when_every_delivery_is_counted() {
        let stats = Stats::default();
        stats.add(Counter::Received, 5);
        stats.add(Counter::Written, 2);
        stats.add(Counter::DuplicateLedger, 1);
        stats.quarantined(RejectReason::NotJson);
        assert!(!stats.report().reconciles());
        stats.add(Counter::DuplicateDatabase, 1);
        let report = stats.report();
        assert!(report.reconciles());
        assert_eq!(report.quarantined.get("not_json"), Some(&1));
        assert!(report.to_string().contains("reconciliation      ok"));
    }
}
