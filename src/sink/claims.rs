//! One fate per message: the `message_claims` table. A write transaction first claims the dedup keys
//! of its rows and records (`INSERT ... ON CONFLICT DO NOTHING RETURNING`), then writes a row or a
//! record only for the keys its own claim inserted. A key claimed earlier is a duplicate when the
//! stored body fingerprint matches (or cannot be compared), and a *key conflict* when it does not: the
//! same producer key on another body, which the pipeline keeps as a `key_conflict` record.
//!
//! Claims are inserted in key order, so two writers claiming overlapping keys wait for each other
//! instead of deadlocking. Both sinks share this file's SQL and its comparison.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;

use super::{NewLogin, NewQuarantined};

/// The reason code whose record claims with fate `key_conflict`.
const KEY_CONFLICT: &str = "key_conflict";

/// Claims from arrays: one statement whatever the batch size.
pub(super) const INSERT_CLAIMS: &str = "INSERT INTO message_claims
    (dedup_key, body_fingerprint, fingerprint_key_id, fate, create_date)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::date[])
    ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key::text";

/// The optimistic binary COPY of the claims (most batches claim only new keys).
pub(super) const COPY_CLAIMS: &str =
    "COPY message_claims (dedup_key, body_fingerprint, fingerprint_key_id, fate, create_date) FROM STDIN BINARY";

/// What stored claims say about keys.
pub(super) const SELECT_CLAIMS: &str = "SELECT dedup_key::text, body_fingerprint::text, fingerprint_key_id::text FROM message_claims WHERE dedup_key = ANY($1)";

/// The claims of one batch, sorted by key, as parallel columns borrowed from the rows (no string is
/// copied: the columns go to Postgres as they are).
#[derive(Default)]
pub(super) struct ClaimRows<'a> {
    pub keys: Vec<&'a str>,
    pub fingerprints: Vec<&'a str>,
    pub key_ids: Vec<&'a str>,
    pub fates: Vec<&'static str>,
    pub dates: Vec<NaiveDate>,
}

impl<'a> ClaimRows<'a> {
    /// A claim for each login (fate `row`) and each record (`quarantined` or `key_conflict`).
    pub fn of(logins: &'a [NewLogin], quarantined: &'a [NewQuarantined]) -> ClaimRows<'a> {
        let mut all: Vec<(&str, &str, &str, &'static str, NaiveDate)> = logins
            .iter()
            .map(|l| (l.message_id.as_str(), l.body_fingerprint.as_str(), l.mask_key_id.as_str(), "row", l.create_date))
            .chain(quarantined.iter().map(|q| {
                let fate = if q.reason == KEY_CONFLICT { KEY_CONFLICT } else { "quarantined" };
                (q.message_id.as_str(), q.body_hmac.as_str(), q.mask_key_id.as_str(), fate, q.sent_at.date_naive())
            }))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let n = all.len();
        let mut rows = ClaimRows {
            keys: Vec::with_capacity(n),
            fingerprints: Vec::with_capacity(n),
            key_ids: Vec::with_capacity(n),
            fates: Vec::with_capacity(n),
            dates: Vec::with_capacity(n),
        };
        for (key, fingerprint, key_id, fate, date) in all {
            rows.keys.push(key);
            rows.fingerprints.push(fingerprint);
            rows.key_ids.push(key_id);
            rows.fates.push(fate);
            rows.dates.push(date);
        }
        rows
    }

    /// Of the keys not claimed by this transaction, those whose stored claim holds another body.
    pub fn conflicts(&self, stored: &HashMap<String, StoredClaim>) -> HashSet<String> {
        let mut conflicts = HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            if let Some(claim) = stored.get(*key)
                && !claim.same_body(self.fingerprints[i], self.key_ids[i])
            {
                conflicts.insert((*key).to_owned());
            }
        }
        conflicts
    }

    /// What `INSERT ... ON CONFLICT DO NOTHING RETURNING dedup_key` answered, as a [`Claimed`].
    pub fn claimed_of(&self, returned: HashSet<String>) -> Claimed {
        // As many keys back as sent: the keys are distinct (a repeated one comes back once) and all new.
        if returned.len() == self.keys.len() { Claimed::All } else { Claimed::Only(returned) }
    }

    /// The keys not among `claimed`, to ask what claimed them.
    pub fn others(&self, claimed: &Claimed) -> Vec<&'a str> {
        match claimed {
            Claimed::All => Vec::new(),
            Claimed::Only(set) => self.keys.iter().copied().filter(|k| !set.contains(*k)).collect(),
        }
    }
}

/// Which of a batch's keys this transaction claimed.
#[derive(Debug)]
pub(super) enum Claimed {
    /// Every key, each once (the keys are distinct): no set is built, every row is kept.
    All,
    /// These keys (as Postgres returned them); a repeated key is kept for its first row only.
    Only(HashSet<String>),
}

impl Claimed {
    /// Whether the row or record keyed `key` is written (at most once per key).
    fn keeps(&mut self, key: &str) -> bool {
        match self {
            Claimed::All => true,
            Claimed::Only(set) => set.remove(key),
        }
    }
}

/// A claim as stored: the fingerprint of the body that claimed the key, and the key it was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredClaim {
    pub fingerprint: Option<String>,
    pub key_id: Option<String>,
}

impl StoredClaim {
    /// Whether a body with `fingerprint` (under masking key `key_id`) is the one that claimed the key.
    /// A claim without a fingerprint (backfilled from rows older than fingerprints) or made under
    /// another masking key cannot be compared: it counts as the same body, a duplicate, as before.
    pub fn same_body(&self, fingerprint: &str, key_id: &str) -> bool {
        match (&self.fingerprint, &self.key_id) {
            (Some(stored), Some(stored_key)) if stored_key == key_id => stored.trim_end() == fingerprint,
            _ => true,
        }
    }
}

/// The rows and records of a batch that this transaction may write: those whose key it claimed (the
/// first of each, should a key repeat).
pub(super) fn keep_claimed<'a, T>(items: &'a [T], key: impl Fn(&T) -> &str, claimed: &mut Claimed) -> Vec<&'a T> {
    items.iter().filter(|item| claimed.keeps(key(item))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_claim_is_the_same_body_only_when_comparable_and_equal() {
        let stored = StoredClaim { fingerprint: Some("f".into()), key_id: Some("k1".into()) };
        assert!(stored.same_body("f", "k1"));
        assert!(!stored.same_body("g", "k1"));
        assert!(stored.same_body("g", "k2"), "another masking key cannot be compared");
        assert!(StoredClaim { fingerprint: None, key_id: None }.same_body("g", "k1"), "backfilled");
    }
}
