//! The ledger: a local sled skip-cache of message ids whose row or quarantine record is committed.
//!
//! It saves a database round trip for redeliveries and survives restarts, but it is never the truth:
//! Postgres' unique `message_id` is. So the rules are
//! - record an id only *after* its transaction committed (an id recorded first could mark as done a
//!   message whose row never landed);
//! - any ledger failure (will not open, read or write error, wiped, stale) costs speed only: it is
//!   logged and treated as a miss;
//! - a store that will not open is moved aside and a fresh one created.
//!
//! Keys are message ids (never PII); values are the record time in Unix milliseconds, big-endian, so
//! entries older than the queue's retention can be pruned. No sled type escapes this file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Errors that stop the ledger from being usable at all.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger store at {path} could not be opened, even after moving it aside")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("ledger store failed")]
    Io(#[source] sled::Error),
    #[error("ledger store at {0} is in use by another process (each ingester needs a ledger path of its own)")]
    Locked(PathBuf),
    #[error("could not move the unreadable ledger store {path} aside")]
    MoveAside {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How [`Ledger::open`] found the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The existing store (or a new one where none was).
    Existing,
    /// The store would not open; it now lives at this path and a fresh one took its place.
    MovedAside(PathBuf),
}

/// The skip-cache. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Ledger {
    /// `None` for a disabled ledger: nothing is remembered, Postgres answers every redelivery.
    db: Option<sled::Db>,
}

impl Ledger {
    /// Opens the store at `path`, moving an unreadable one aside.
    pub fn open(path: &Path) -> Result<(Ledger, Opened), LedgerError> {
        match open_sled(path) {
            Ok(db) => Ok((Ledger { db: Some(db) }, Opened::Existing)),
            // Another live process holds it: it is not broken, and moving it aside would pull it
            // from under that process.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                Err(LedgerError::Locked(path.to_owned()))
            }
            Err(error) => {
                let aside = aside_path(path);
                tracing::warn!(
                    ledger.path = %path.display(), ledger.moved_to = %aside.display(), error = %error,
                    "ledger store will not open; moving it aside and starting an empty one (costs speed, not correctness)"
                );
                std::fs::rename(path, &aside)
                    .map_err(|source| LedgerError::MoveAside { path: path.to_owned(), source })?;
                let db = open_sled(path).map_err(|source| LedgerError::Open { path: path.to_owned(), source })?;
                Ok((Ledger { db: Some(db) }, Opened::MovedAside(aside)))
            }
        }
    }

    /// Opens an existing store without repairing or moving anything (for read-only reports).
    pub fn open_existing(path: &Path) -> Result<Ledger, LedgerError> {
        let db = open_sled(path).map_err(|source| LedgerError::Open { path: path.to_owned(), source })?;
        Ok(Ledger { db: Some(db) })
    }

    /// A ledger that lives in memory only (for replays and tests that want no local state).
    pub fn temporary() -> Ledger {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(CACHE_BYTES)
            .open()
            .expect("a temporary sled store needs no disk");
        Ledger { db: Some(db) }
    }

    /// A ledger that remembers nothing (`replay --no-ledger`): correct, since Postgres decides, and
    /// it saves the ledger's own cost where redeliveries are rare.
    pub fn disabled() -> Ledger {
        Ledger { db: None }
    }

    /// Whether `id` was recorded as committed. A read error counts as a miss.
    pub fn contains(&self, id: &str) -> bool {
        let Some(db) = &self.db else { return false };
        match db.contains_key(id.as_bytes()) {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(sqs.message_id = id, error = %error, "ledger read failed; treating as not seen");
                false
            }
        }
    }

    /// Records ids whose transaction has committed. A write error is logged and ignored: the database
    /// will answer for these ids on redelivery.
    pub fn record<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let Some(db) = &self.db else { return };
        let stamp = now_millis().to_be_bytes();
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.insert(id.as_bytes(), &stamp);
        }
        if let Err(error) = db.apply_batch(batch) {
            tracing::warn!(error = %error, "ledger write failed; redeliveries will be checked by the database");
        }
    }

    /// Removes entries recorded longer ago than `retention` (no message older than the queue's
    /// retention can be redelivered). Returns how many were removed.
    pub fn prune(&self, retention: Duration) -> usize {
        let cutoff = now_millis().saturating_sub(retention.as_millis() as u64);
        let Some(db) = &self.db else { return 0 };
        let mut removed = 0;
        for entry in db.iter() {
            let Ok((key, value)) = entry else { continue };
            let stamp = value.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if stamp < cutoff && db.remove(&key).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Ties the ledger to the database it caches. A ledger bound to another database (wiped,
    /// recreated, another URL) holds ids that were never committed there: trusting it would delete
    /// messages without rows, so it is cleared. Returns whether it was cleared.
    pub fn bind(&self, database_id: &str) -> Result<bool, LedgerError> {
        let Some(db) = &self.db else { return Ok(false) };
        let meta = db.open_tree("meta").map_err(LedgerError::Io)?;
        let bound = meta.get("database_id").map_err(LedgerError::Io)?;
        if bound.as_deref() == Some(database_id.as_bytes()) {
            return Ok(false);
        }
        let stale = !db.is_empty();
        if stale {
            tracing::warn!(ledger.entries = db.len(), "ledger belongs to another database; clearing it");
            db.clear().map_err(LedgerError::Io)?;
        }
        meta.insert("database_id", database_id.as_bytes()).map_err(LedgerError::Io)?;
        db.flush().map_err(LedgerError::Io)?;
        Ok(stale)
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.db.as_ref().map_or(0, |db| db.len())
    }

    /// Whether the ledger holds no id.
    pub fn is_empty(&self) -> bool {
        self.db.as_ref().is_none_or(|db| db.is_empty())
    }

    /// Writes buffered entries to disk. Failure is logged: it only makes the next restart slower.
    pub async fn flush(&self) {
        let Some(db) = &self.db else { return };
        if let Err(error) = db.flush_async().await {
            tracing::warn!(error = %error, "ledger flush failed");
        }
    }
}

/// sled's page cache, in bytes. Its default (1 GiB) lets a process grow with every id it records; the
/// ledger is looked up by recent ids, so a small cache costs little.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    sled::Config::new().path(path).cache_capacity(CACHE_BYTES).mode(sled::Mode::HighThroughput).open()
}

fn aside_path(path: &Path) -> PathBuf {
    let stamp = now_millis();
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".unreadable-{stamp}"));
    path.with_file_name(name)
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_ids_are_found_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        {
            let (ledger, opened) = Ledger::open(&path).unwrap();
            assert_eq!(opened, Opened::Existing);
            ledger.record(["a", "b"]);
            assert!(ledger.contains("a") && !ledger.contains("c"));
            ledger.db.as_ref().unwrap().flush().unwrap();
        }
        let (ledger, _) = Ledger::open(&path).unwrap();
        assert!(ledger.contains("b"));
        assert_eq!(ledger.len(), 2);
    }

    #[test]
    fn a_store_that_will_not_open_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        // A plain file where sled expects a directory: sled cannot open it.
        std::fs::write(&path, b"garbage").unwrap();
        let (ledger, opened) = Ledger::open(&path).unwrap();
        let Opened::MovedAside(aside) = opened else { panic!("expected the store to be moved aside") };
        assert_eq!(std::fs::read(&aside).unwrap(), b"garbage");
        assert!(ledger.is_empty());
        ledger.record(["x"]);
        assert!(ledger.contains("x"));
    }

    #[test]
    fn a_ledger_meeting_another_database_is_cleared() {
        let ledger = Ledger::temporary();
        assert!(!ledger.bind("db-1").unwrap(), "a new ledger has nothing to clear");
        ledger.record(["a"]);
        assert!(!ledger.bind("db-1").unwrap());
        assert!(ledger.contains("a"));
        assert!(ledger.bind("db-2").unwrap());
        assert!(!ledger.contains("a") && ledger.is_empty());
    }

    #[test]
    fn a_store_locked_by_another_opener_is_reported_not_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let (held, _) = Ledger::open(&path).unwrap();
        held.record(["a"]);
        assert!(matches!(Ledger::open(&path), Err(LedgerError::Locked(_))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing was moved aside");
        assert!(held.contains("a"));
    }

    #[test]
    fn prune_removes_only_entries_older_than_retention() {
        let ledger = Ledger::temporary();
        ledger.db.as_ref().unwrap().insert("old", &1_000u64.to_be_bytes()).unwrap();
        ledger.record(["new"]);
        assert_eq!(ledger.prune(Duration::from_secs(3600)), 1);
        assert!(!ledger.contains("old") && ledger.contains("new"));
    }
}
