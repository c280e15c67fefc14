//! Counters for one drain, shared by the pipeline's tasks, and the [`Report`] they add up to.
//!
//! Every delivery received ends in exactly one bucket: written, quarantined, a duplicate (by the
//! layer that caught it) or abandoned (in hand when a forced stop came; SQS redelivers it). So
//! `received == written + quarantined + duplicates + abandoned` is checked at the end of every drain.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::event::RejectReason;

/// Live counters. Cheap to bump from any task.
#[derive(Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub written: AtomicU64,
    pub duplicate_in_batch: AtomicU64,
    pub duplicate_ledger: AtomicU64,
    pub duplicate_database: AtomicU64,
    pub abandoned: AtomicU64,
    pub deleted: AtomicU64,
    pub delete_failed: AtomicU64,
    /// Rejects left undeleted for the queue's redrive policy (dead-letter mode).
    pub left_for_redrive: AtomicU64,
    pub unknown_fields: AtomicU64,
    pub retries: AtomicU64,
    /// Deliveries whose visibility was extended while their batch was slow to commit.
    pub visibility_extended: AtomicU64,
    quarantined: [AtomicU64; RejectReason::ALL.len()],
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }

    pub fn quarantined(&self, reason: RejectReason) {
        self.quarantined[reason.index()].fetch_add(1, Relaxed);
    }

    /// A consistent-enough snapshot (counters are read one by one).
    pub fn report(&self) -> Report {
        let get = |c: &AtomicU64| c.load(Relaxed);
        Report {
            received: get(&self.received),
            written: get(&self.written),
            duplicate_in_batch: get(&self.duplicate_in_batch),
            duplicate_ledger: get(&self.duplicate_ledger),
            duplicate_database: get(&self.duplicate_database),
            abandoned: get(&self.abandoned),
            deleted: get(&self.deleted),
            delete_failed: get(&self.delete_failed),
            left_for_redrive: get(&self.left_for_redrive),
            unknown_fields: get(&self.unknown_fields),
            retries: get(&self.retries),
            visibility_extended: get(&self.visibility_extended),
            quarantined: RejectReason::ALL
                .iter()
                .map(|r| (r.as_str(), get(&self.quarantined[r.index()])))
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
    pub abandoned: u64,
    pub deleted: u64,
    pub delete_failed: u64,
    pub left_for_redrive: u64,
    pub unknown_fields: u64,
    pub retries: u64,
    pub visibility_extended: u64,
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
        Stats::add(&stats.received, 5);
        Stats::add(&stats.written, 2);
        Stats::add(&stats.duplicate_ledger, 1);
        stats.quarantined(RejectReason::NotJson);
        assert!(!stats.report().reconciles());
        Stats::add(&stats.duplicate_database, 1);
        let report = stats.report();
        assert!(report.reconciles());
        assert_eq!(report.quarantined.get("not_json"), Some(&1));
        assert!(report.to_string().contains("reconciliation      ok"));
    }
}
