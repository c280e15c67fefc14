//! The ledger's 16-byte keys (see the parent module's docs).

use sha2::{Digest, Sha256};

/// The 16-byte key of an id (see the module docs).
pub(super) fn key(id: &str) -> u128 {
    let canonical_uuid = id.len() == 36 && !id.bytes().any(|b| b.is_ascii_uppercase());
    if canonical_uuid && let Ok(uuid) = uuid::Uuid::try_parse(id) {
        return uuid.as_u128();
    }
    let digest = Sha256::digest(id.as_bytes());
    u128::from_be_bytes(digest[..16].try_into().expect("SHA-256 has 32 bytes"))
}
