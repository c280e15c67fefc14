//! The ledger's in-memory set: 64-bit keyed fingerprints of its 16-byte keys in one open-addressed
//! table (linear probing, backward-shift deletion), sized once for the ledger's cap.
//!
//! A fingerprint can collide: another id's fingerprint makes `contains` answer yes for an id never
//! recorded. That is safe because the pipeline skips a ledger hit only once Postgres confirms the
//! claim; a false hit costs one lookup, never a message. With a million ids held, the chance that a
//! given new id collides is about 2^-44. The fingerprint is keyed with a per-process secret, so nobody
//! can aim ids at one another's fingerprints or at one run of slots.
//!
//! Memory: 8 bytes a slot, 4/3 slots an id (load at most 0.75), about 10.7 bytes an id, against 17 to
//! 34 for a `HashSet<u128>` (and twice that while it grows). The table is zero-allocated, so pages
//! nobody wrote take no memory.

/// Slots per id the table is sized for: a load of at most 3/4 keeps probes short.
const SLOTS_PER_ID: (usize, usize) = (4, 3);

/// A set of fingerprints. `0` marks an empty slot; a fingerprint that would be 0 is stored as 1.
pub(super) struct Fingerprints {
    slots: Vec<u64>,
    len: usize,
    /// Most fingerprints the table takes: its size times 3/4.
    limit: usize,
    seed: (u64, u64),
    /// The fingerprint's bits: all of them, except in tests of what collisions cost.
    mask: u64,
}

impl Fingerprints {
    /// A table for up to `ids` fingerprints.
    pub(super) fn with_capacity(ids: usize) -> Fingerprints {
        Fingerprints::seeded(ids, (rand::random::<u64>() | 1, rand::random::<u64>() | 1))
    }

    fn seeded(ids: usize, seed: (u64, u64)) -> Fingerprints {
        // `ledger.max_entries` is validated far below where this could overflow.
        let ids = ids.clamp(1, usize::MAX / SLOTS_PER_ID.0);
        let size = ids * SLOTS_PER_ID.0 / SLOTS_PER_ID.1 + 1;
        Fingerprints { slots: vec![0; size], len: 0, limit: ids, seed, mask: u64::MAX }
    }

    /// The same fingerprints in a table for up to `ids` (at most `ids` of them kept).
    pub(super) fn resized(&self, ids: usize) -> Fingerprints {
        let mut table = Fingerprints { mask: self.mask, ..Fingerprints::seeded(ids, self.seed) };
        for &fp in self.slots.iter().filter(|&&fp| fp != 0) {
            if !table.insert_fingerprint(fp) {
                break;
            }
        }
        table
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most fingerprints the table takes.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    pub(super) fn contains(&self, key: u128) -> bool {
        self.find(self.fingerprint(key)).is_ok()
    }

    /// Adds `key`'s fingerprint. `false` when the table is full (the caller evicts first, so that is
    /// a miss later, never a wrong answer).
    pub(super) fn insert(&mut self, key: u128) -> bool {
        self.insert_fingerprint(self.fingerprint(key))
    }

    /// Removes `key`'s fingerprint (and with it any other key's that shares it: a later miss).
    pub(super) fn remove(&mut self, key: u128) {
        let Ok(mut hole) = self.find(self.fingerprint(key)) else { return };
        self.len -= 1;
        // Backward-shift deletion: pull back each later fingerprint of the run whose home slot is not
        // between the hole and where it sits, so that every probe still reaches what it looks for.
        let n = self.slots.len();
        let mut next = (hole + 1) % n;
        while self.slots[next] != 0 {
            let home = self.home(self.slots[next]);
            let displaced_past_hole =
                if hole <= next { home <= hole || home > next } else { home <= hole && home > next };
            if displaced_past_hole {
                self.slots[hole] = self.slots[next];
                hole = next;
            }
            next = (next + 1) % n;
        }
        self.slots[hole] = 0;
    }

    /// Forgets every fingerprint (a fresh zeroed table: writing zeros would make all of it resident).
    pub(super) fn clear(&mut self) {
        *self = Fingerprints { mask: self.mask, ..Fingerprints::seeded(self.limit, self.seed) };
    }

    fn insert_fingerprint(&mut self, fp: u64) -> bool {
        match self.find(fp) {
            Ok(_) => true,
            Err(_) if self.len >= self.limit => false,
            Err(empty) => {
                self.slots[empty] = fp;
                self.len += 1;
                true
            }
        }
    }

    /// The slot holding `fp`, or the empty slot that ends its probe.
    fn find(&self, fp: u64) -> Result<usize, usize> {
        let n = self.slots.len();
        let mut i = self.home(fp);
        loop {
            match self.slots[i] {
                0 => return Err(i),
                slot if slot == fp => return Ok(i),
                _ => i = (i + 1) % n,
            }
        }
    }

    /// The slot a fingerprint's probe starts at (the table need not be a power of two in size).
    fn home(&self, fp: u64) -> usize {
        ((u128::from(fp) * self.slots.len() as u128) >> 64) as usize
    }

    fn fingerprint(&self, key: u128) -> u64 {
        let (lo, hi) = (key as u64, (key >> 64) as u64);
        let a = (lo ^ self.seed.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let b = (hi ^ self.seed.1).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        let mut h = a ^ b.rotate_left(31);
        h ^= h >> 29;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 32;
        (h & self.mask).max(1)
    }

    /// A table whose every key has the same fingerprint: every lookup of a table holding anything is
    /// a (mostly false) hit. For tests of what a collision costs.
    #[cfg(test)]
    pub(super) fn colliding(ids: usize) -> Fingerprints {
        Fingerprints { mask: 0, ..Fingerprints::with_capacity(ids) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_keys_are_found_and_removed_ones_are_not_across_wraps_and_runs() {
        // A small table so that probe runs wrap around its end and deletions shift across it.
        let mut table = Fingerprints::with_capacity(300);
        let keys: Vec<u128> = (0..300u128).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).collect();
        assert!(keys.iter().all(|&k| table.insert(k)));
        assert_eq!(table.len(), 300);
        assert!(!table.insert(12_345), "a full table refuses, never loops");
        for (i, &k) in keys.iter().enumerate() {
            if i % 3 == 0 {
                table.remove(k);
            }
        }
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(table.contains(k), i % 3 != 0, "key {i}");
        }
        assert_eq!(table.len(), 200);
        let bigger = table.resized(1000);
        assert!(keys.iter().enumerate().all(|(i, &k)| bigger.contains(k) == (i % 3 != 0)));
        let smaller = table.resized(10);
        assert_eq!(smaller.len(), 10);
    }

    #[test]
    fn a_random_workload_matches_a_hash_set() {
        use std::collections::HashSet;
        let mut table = Fingerprints::with_capacity(2_000);
        let mut model = HashSet::new();
        for step in 0..50_000u64 {
            let key = u128::from(rand::random::<u16>() % 4_000);
            if step % 3 == 0 {
                table.remove(key);
                model.remove(&key);
            } else if model.len() < 2_000 {
                assert!(table.insert(key));
                model.insert(key);
            }
            assert_eq!(table.len(), model.len());
        }
        assert!((0..4_000u128).all(|k| table.contains(k) == model.contains(&k)));
    }
}
