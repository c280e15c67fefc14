//! The ledger: a local sled skip-cache of message ids whose row or quarantine record is committed.
//!
//! It saves a database write for redeliveries and survives restarts, but it is never the truth:
//! Postgres' `message_claims` is, and the pipeline skips a hit only once Postgres confirms it (so a
//! database restored under a live ledger costs a rewrite, never a message). So the rules are
//! - record an id only *after* its transaction committed (an id recorded first could mark as done a
//!   message whose row never landed);
//! - any ledger failure (will not open, read or write error, wiped, stale, malformed entry) costs speed
//!   only: it is logged and treated as a miss;
//! - a store that will not open is moved aside and a fresh one created.
//!
//! ## Layout
//! sled holds a *journal*: one entry per committed batch (up to [`IDS_PER_ENTRY`] ids), keyed by a
//! sequence number, valued with the record time and the batch's 16-byte id keys. Lookups never touch
//! sled: the keys' 64-bit fingerprints live in an in-memory table ([`fingerprints`]), rebuilt from the
//! journal when the store opens. One sled write per batch instead of one per id is the point: sled
//! 0.34 spends about 6 µs of CPU and 80 bytes of memory per key, which was two thirds of the CPU of a
//! drain. The table costs about 10.7 bytes per id, allocated once for `max_entries`: past it the
//! oldest batches are evicted, which only turns a later redelivery of those ids into a database
//! round trip.
//!
//! An id's key is its 16 UUID bytes when it is a lowercase hyphenated UUID (SQS message ids are), else
//! the first 16 bytes of its SHA-256; keys reveal nothing. Two ids can share a fingerprint, so a hit
//! may be false: that is why the pipeline skips a hit only once Postgres confirms its claim. No sled
//! type escapes this file.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod fingerprints;
mod keys;

use fingerprints::Fingerprints;
use keys::key;

/// Ids per journal entry: a batch of 1,000 rows is one sled write of about 16 KiB.
pub const IDS_PER_ENTRY: usize = 1024;

/// Default cap on the ids held (`ledger.max_entries`): a table of about 10.7 MiB.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

/// The largest `ledger.max_entries` accepted: a table of about 1 GiB.
pub const MAX_ENTRIES_LIMIT: usize = 100_000_000;

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
    store: Option<Store>,
}

struct Store {
    db: sled::Db,
    /// Sequence number (u64, big-endian) -> record time (Unix ms, u64, big-endian) ++ 16-byte keys.
    journal: sled::Tree,
    index: RwLock<Index>,
}

struct Index {
    keys: Fingerprints,
    /// Sequence numbers of the journal entries held, oldest first.
    entries: VecDeque<u64>,
    next_seq: u64,
    max_entries: usize,
}

impl Ledger {
    /// Opens the store at `path`, moving an unreadable one aside, and loads its journal into a table
    /// for `max_entries` ids (`ledger.max_entries`; the oldest batches past it are evicted).
    pub fn open(path: &Path, max_entries: usize) -> Result<(Ledger, Opened), LedgerError> {
        let (db, opened) = match open_sled(path) {
            Ok(db) => (db, Opened::Existing),
            // Another live process holds it: it is not broken, and moving it aside would pull it
            // from under that process.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                return Err(LedgerError::Locked(path.to_owned()));
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
                (db, Opened::MovedAside(aside))
            }
        };
        Ok((Ledger { store: Some(Store::load(db, Some(max_entries))?) }, opened))
    }

    /// Opens an existing store without repairing, moving or evicting anything (for read-only reports).
    pub fn open_existing(path: &Path) -> Result<Ledger, LedgerError> {
        let db = open_sled(path).map_err(|source| LedgerError::Open { path: path.to_owned(), source })?;
        Ok(Ledger { store: Some(Store::load(db, None)?) })
    }

    /// A ledger that lives in memory only (for replays and tests that want no local state).
    pub fn temporary() -> Ledger {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(CACHE_BYTES)
            .open()
            .expect("a temporary sled store needs no disk");
        Ledger { store: Some(Store::load(db, Some(DEFAULT_MAX_ENTRIES)).expect("an empty temporary store loads")) }
    }

    /// A ledger that remembers nothing (`replay --no-ledger`): correct, since Postgres decides, and
    /// it saves the ledger's own cost where redeliveries are rare.
    pub fn disabled() -> Ledger {
        Ledger { store: None }
    }

    /// Caps the ids held, evicting the oldest batches now if there are more, and sizes the table for
    /// the cap.
    pub fn with_max_entries(self, max_entries: usize) -> Ledger {
        if let Some(store) = &self.store {
            let mut index = store.write();
            index.max_entries = max_entries.max(1);
            store.evict(&mut index, 0);
            if index.keys.limit() != index.max_entries {
                index.keys = index.keys.resized(index.max_entries);
            }
        }
        self
    }

    /// A ledger whose ids all share one fingerprint: once it holds one id, every lookup is a hit, all
    /// but one of them false. For tests of what collisions cost.
    #[cfg(test)]
    pub(crate) fn colliding() -> Ledger {
        let ledger = Ledger::temporary();
        if let Some(store) = &ledger.store {
            store.write().keys = Fingerprints::colliding(DEFAULT_MAX_ENTRIES);
        }
        ledger
    }

    /// Whether `id` was recorded as committed.
    pub fn contains(&self, id: &str) -> bool {
        let Some(store) = &self.store else { return false };
        let key = key(id);
        store.index.read().unwrap_or_else(std::sync::PoisonError::into_inner).keys.contains(key)
    }

    /// Records ids whose transaction has committed. A write error is logged and ignored: the database
    /// will answer for these ids on redelivery.
    pub fn record<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let Some(store) = &self.store else { return };
        let keys: Vec<u128> = ids.into_iter().map(key).collect();
        for chunk in keys.chunks(IDS_PER_ENTRY) {
            store.append(chunk);
        }
    }

    /// Removes the batches recorded longer ago than `retention` (no message older than the queue's
    /// retention can be redelivered). Returns how many ids were removed.
    pub fn prune(&self, retention: Duration) -> usize {
        let Some(store) = &self.store else { return 0 };
        let cutoff = now_millis().saturating_sub(retention.as_millis() as u64);
        let mut index = store.write();
        let before = index.keys.len();
        while let Some(&seq) = index.entries.front() {
            match store.journal.get(seq.to_be_bytes()) {
                Ok(Some(value)) if stamp(&value) >= cutoff => break,
                _ => store.remove_oldest(&mut index),
            }
        }
        before - index.keys.len()
    }

    /// Ties the ledger to the database it caches. A ledger bound to another database (wiped,
    /// recreated, another URL) holds ids that were never committed there: trusting it would delete
    /// messages without rows, so it is cleared. Returns whether it was cleared.
    pub fn bind(&self, database_id: &str) -> Result<bool, LedgerError> {
        let Some(store) = &self.store else { return Ok(false) };
        let meta = store.db.open_tree("meta").map_err(LedgerError::Io)?;
        let bound = meta.get("database_id").map_err(LedgerError::Io)?;
        if bound.as_deref() == Some(database_id.as_bytes()) {
            return Ok(false);
        }
        let mut index = store.write();
        let stale = !index.keys.is_empty() || !store.journal.is_empty();
        if stale {
            tracing::warn!(ledger.entries = index.keys.len(), "ledger belongs to another database; clearing it");
            store.journal.clear().map_err(LedgerError::Io)?;
            index.keys.clear();
            index.entries.clear();
        }
        meta.insert("database_id", database_id.as_bytes()).map_err(LedgerError::Io)?;
        store.db.flush().map_err(LedgerError::Io)?;
        Ok(stale)
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.store.as_ref().map_or(0, Store::read_len)
    }

    /// Whether the ledger holds no id.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes buffered entries to disk. Failure is logged: it only makes the next restart slower.
    pub async fn flush(&self) {
        let Some(store) = &self.store else { return };
        if let Err(error) = store.db.flush_async().await {
            tracing::warn!(error = %error, "ledger flush failed");
        }
    }
}

impl Store {
    /// Rebuilds the in-memory index from the journal, in a table for `max_entries` ids (evicting the
    /// oldest batches past it), or with `None` for all the journal holds. Malformed entries (a torn or
    /// foreign write) are dropped with a warning; a read error ends the load with what was read so far.
    fn load(db: sled::Db, max_entries: Option<usize>) -> Result<Store, LedgerError> {
        // Stores written before the journal held one sled key per id in the default tree.
        if !db.is_empty() {
            tracing::info!(ledger.legacy_entries = db.len(), "dropping the ledger's per-id entries of an older layout");
            db.clear().map_err(LedgerError::Io)?;
        }
        let journal = db.open_tree("journal").map_err(LedgerError::Io)?;
        // Without a cap (a read-only report), room for every id the journal's entries can hold.
        let max_entries = max_entries.unwrap_or_else(|| journal.len().saturating_mul(IDS_PER_ENTRY)).max(1);
        let mut index = Index {
            keys: Fingerprints::with_capacity(max_entries),
            entries: VecDeque::new(),
            next_seq: 0,
            max_entries,
        };
        // First the entries' sizes, then the newest entries that fit under the cap: a journal written
        // under a larger cap loses its oldest batches, never its newest.
        let mut malformed = Vec::new();
        let mut sizes = Vec::new();
        for entry in journal.iter() {
            let (seq, value) = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    tracing::warn!(error = %error, "ledger journal read failed; keeping what was read");
                    break;
                }
            };
            match (seq.as_ref().try_into().ok().map(u64::from_be_bytes), keys_of(&value).map(Iterator::count)) {
                (Some(seq), Some(ids)) => sizes.push((seq, ids)),
                _ => malformed.push(seq),
            }
        }
        if !malformed.is_empty() {
            tracing::warn!(ledger.malformed = malformed.len(), "dropping malformed ledger journal entries");
            for seq in malformed {
                let _ = journal.remove(seq);
            }
        }
        let (mut first, mut ids) = (sizes.len(), 0);
        while first > 0 && ids + sizes[first - 1].1 <= max_entries {
            first -= 1;
            ids += sizes[first].1;
        }
        for &(seq, _) in &sizes[..first] {
            let _ = journal.remove(seq.to_be_bytes());
        }
        index.next_seq = sizes.last().map_or(0, |&(seq, _)| seq + 1);
        for &(seq, _) in &sizes[first..] {
            let Ok(Some(value)) = journal.get(seq.to_be_bytes()) else { continue };
            for key in keys_of(&value).into_iter().flatten() {
                index.keys.insert(key);
            }
            index.entries.push_back(seq);
        }
        Ok(Store { db, journal, index: RwLock::new(index) })
    }

    fn append(&self, keys: &[u128]) {
        let mut value = Vec::with_capacity(8 + keys.len() * 16);
        value.extend_from_slice(&now_millis().to_be_bytes());
        for key in keys {
            value.extend_from_slice(&key.to_be_bytes());
        }
        let mut index = self.write();
        self.evict(&mut index, keys.len());
        let seq = index.next_seq;
        index.next_seq += 1;
        // Written under the lock so that journal order is sequence order and eviction never races an
        // append; one sled insert per batch is cheap enough to hold it.
        if let Err(error) = self.journal.insert(seq.to_be_bytes(), value) {
            tracing::warn!(error = %error, "ledger write failed; redeliveries will be checked by the database");
            return;
        }
        for &key in keys {
            // Refused only when one batch alone exceeds the cap: those ids are misses later.
            index.keys.insert(key);
        }
        index.entries.push_back(seq);
    }

    /// Evicts the oldest batches until `room` more ids fit under the cap.
    fn evict(&self, index: &mut RwLockWriteGuard<'_, Index>, room: usize) {
        while index.keys.len() + room > index.max_entries && !index.entries.is_empty() {
            self.remove_oldest(index);
        }
    }

    /// Removes the oldest journal entry and its keys. A key also recorded by a later batch is removed
    /// too: a miss, which costs one database round trip on redelivery.
    fn remove_oldest(&self, index: &mut RwLockWriteGuard<'_, Index>) {
        let Some(seq) = index.entries.pop_front() else { return };
        match self.journal.remove(seq.to_be_bytes()) {
            Ok(Some(value)) => {
                for key in keys_of(&value).into_iter().flatten() {
                    index.keys.remove(key);
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(error = %error, "ledger eviction failed"),
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read_len(&self) -> usize {
        self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner).keys.len()
    }
}

/// The keys of a journal value, or `None` if it is not a stamp followed by whole keys.
fn keys_of(value: &[u8]) -> Option<impl Iterator<Item = u128> + '_> {
    let keys = value.get(8..).filter(|keys| keys.len() % 16 == 0)?;
    Some(keys.chunks_exact(16).map(|k| u128::from_be_bytes(k.try_into().expect("chunks of 16"))))
}

fn stamp(value: &[u8]) -> u64 {
    value.get(..8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_be_bytes)
}

/// sled's page cache, in bytes. Its default (1 GiB) lets a process grow with every entry it writes;
/// lookups never read sled and a journal entry is written once, so a small cache costs nothing.
const CACHE_BYTES: u64 = 2 * 1024 * 1024;

fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    sled::Config::new().path(path).cache_capacity(CACHE_BYTES).mode(sled::Mode::HighThroughput).open()
}

fn aside_path(path: &Path) -> PathBuf {
    let stamp = now_millis();
    let mut name = path.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(format!(".unreadable-{stamp}"));
    path.with_file_name(name)
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flush(ledger: &Ledger) {
        ledger.store.as_ref().unwrap().db.flush().unwrap();
    }

    #[test]
    fn recorded_ids_are_found_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let uuid = uuid::Uuid::new_v4().to_string();
        {
            let (ledger, opened) = Ledger::open(&path, DEFAULT_MAX_ENTRIES).unwrap();
            assert_eq!(opened, Opened::Existing);
            ledger.record(["a", "b", uuid.as_str()]);
            assert!(ledger.contains("a") && ledger.contains(&uuid) && !ledger.contains("c"));
            flush(&ledger);
        }
        let (ledger, _) = Ledger::open(&path, DEFAULT_MAX_ENTRIES).unwrap();
        assert!(ledger.contains("b") && ledger.contains(&uuid));
        assert_eq!(ledger.len(), 3);
    }

    #[test]
    fn ids_that_differ_only_in_form_are_different_keys() {
        let uuid = uuid::Uuid::new_v4();
        let forms =
            [uuid.hyphenated().to_string(), uuid.hyphenated().to_string().to_uppercase(), uuid.simple().to_string()];
        let keys: std::collections::HashSet<u128> = forms.iter().map(|f| key(f)).collect();
        assert_eq!(keys.len(), 3, "only the canonical form maps to the UUID's own bytes");
        assert_eq!(key(&forms[0]), uuid.as_u128());
    }

    #[test]
    fn a_store_that_will_not_open_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        // A plain file where sled expects a directory: sled cannot open it.
        std::fs::write(&path, b"garbage").unwrap();
        let (ledger, opened) = Ledger::open(&path, DEFAULT_MAX_ENTRIES).unwrap();
        let Opened::MovedAside(aside) = opened else { panic!("expected the store to be moved aside") };
        assert_eq!(std::fs::read(&aside).unwrap(), b"garbage");
        assert!(ledger.is_empty());
        ledger.record(["x"]);
        assert!(ledger.contains("x"));
    }

    #[test]
    fn malformed_journal_entries_are_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        {
            let (ledger, _) = Ledger::open(&path, DEFAULT_MAX_ENTRIES).unwrap();
            ledger.record(["kept"]);
            let journal = &ledger.store.as_ref().unwrap().journal;
            journal.insert(7u64.to_be_bytes(), &b"torn: not a stamp and whole keys"[..]).unwrap();
            journal.insert(b"odd key", &[0u8; 24][..]).unwrap();
            flush(&ledger);
        }
        let (ledger, _) = Ledger::open(&path, DEFAULT_MAX_ENTRIES).unwrap();
        assert!(ledger.contains("kept"));
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger.store.as_ref().unwrap().journal.len(), 1, "malformed entries were removed");
        ledger.record(["after"]);
        assert!(ledger.contains("after"), "appends continue after the highest sequence read");
    }

    #[test]
    fn past_the_cap_the_oldest_batches_are_evicted() {
        let ledger = Ledger::temporary().with_max_entries(4);
        ledger.record(["a", "b"]);
        ledger.record(["c", "d"]);
        ledger.record(["e"]);
        assert!(!ledger.contains("a") && !ledger.contains("b"), "the oldest batch went");
        assert!(["c", "d", "e"].iter().all(|id| ledger.contains(id)));
        assert_eq!(ledger.len(), 3);
        let ledger = ledger.with_max_entries(1);
        assert!(ledger.contains("e") && ledger.len() == 1);
    }

    #[test]
    fn a_journal_written_under_a_larger_cap_keeps_its_newest_batches_and_a_report_evicts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        {
            let (ledger, _) = Ledger::open(&path, 10).unwrap();
            for batch in [["a", "b"], ["c", "d"], ["e", "f"]] {
                ledger.record(batch);
            }
            flush(&ledger);
        }
        assert_eq!(Ledger::open_existing(&path).unwrap().len(), 6, "a read-only open keeps everything");
        let (ledger, _) = Ledger::open(&path, 5).unwrap();
        assert!(!ledger.contains("a") && !ledger.contains("b"), "the oldest batch went");
        assert!(["c", "d", "e", "f"].iter().all(|id| ledger.contains(id)));
        ledger.record(["g"]);
        assert!(ledger.contains("g") && ledger.len() == 5, "appends continue after the highest sequence");
    }

    #[test]
    fn a_large_batch_is_split_into_journal_entries() {
        let ledger = Ledger::temporary();
        let ids: Vec<String> = (0..IDS_PER_ENTRY * 2 + 1).map(|i| format!("id-{i}")).collect();
        ledger.record(ids.iter().map(String::as_str));
        assert_eq!(ledger.store.as_ref().unwrap().journal.len(), 3);
        assert!(ids.iter().all(|id| ledger.contains(id)));
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
    fn a_store_of_the_older_per_id_layout_is_emptied_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        {
            let db = open_sled(&path).unwrap();
            db.insert("old-id", &1_000u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let (ledger, _) = Ledger::open(&path, DEFAULT_MAX_ENTRIES).unwrap();
        assert!(ledger.is_empty() && !ledger.contains("old-id"));
    }

    #[test]
    fn a_store_locked_by_another_opener_is_reported_not_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let (held, _) = Ledger::open(&path, DEFAULT_MAX_ENTRIES).unwrap();
        held.record(["a"]);
        assert!(matches!(Ledger::open(&path, DEFAULT_MAX_ENTRIES), Err(LedgerError::Locked(_))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing was moved aside");
        assert!(held.contains("a"));
    }

    #[test]
    fn prune_removes_only_batches_older_than_retention() {
        let ledger = Ledger::temporary();
        let store = ledger.store.as_ref().unwrap();
        let mut old = 1_000u64.to_be_bytes().to_vec();
        old.extend_from_slice(&key("old").to_be_bytes());
        store.journal.insert(0u64.to_be_bytes(), old).unwrap();
        {
            let mut index = store.write();
            index.keys.insert(key("old"));
            index.entries.push_back(0);
            index.next_seq = 1;
        }
        ledger.record(["new"]);
        assert_eq!(ledger.prune(Duration::from_secs(3600)), 1);
        assert!(!ledger.contains("old") && ledger.contains("new"));
    }
}
