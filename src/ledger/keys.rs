//! The ledger's 16-byte keys and the hasher of its in-memory set (see the parent module's docs).

use sha2::{Digest, Sha256};

/// Hashes the set's keys, which are already uniform (SHA-256 output or random UUIDs): a seeded fold and
/// one multiply instead of SipHash over 16 bytes. The seed is per process, so nobody can aim ids at
/// one bucket.
#[derive(Clone)]
pub(super) struct KeyHasher(u64);

impl KeyHasher {
    pub(super) fn new() -> KeyHasher {
        KeyHasher(rand::random::<u64>() | 1)
    }
}

impl std::hash::BuildHasher for KeyHasher {
    type Hasher = FoldHasher;
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher { seed: self.0, hash: 0 }
    }
}

pub(super) struct FoldHasher {
    seed: u64,
    hash: u64,
}

impl std::hash::Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u128 input, which the set never hashes; kept correct anyway.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.hash = (self.hash ^ word ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }

    fn write_u128(&mut self, key: u128) {
        self.write_u64(key as u64 ^ (key >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.hash ^ (self.hash >> 32)
    }
}

/// The 16-byte key of an id (see the module docs).
pub(super) fn key(id: &str) -> u128 {
    let canonical_uuid = id.len() == 36 && !id.bytes().any(|b| b.is_ascii_uppercase());
    if canonical_uuid && let Ok(uuid) = uuid::Uuid::try_parse(id) {
        return uuid.as_u128();
    }
    let digest = Sha256::digest(id.as_bytes());
    u128::from_be_bytes(digest[..16].try_into().expect("SHA-256 has 32 bytes"))
}
