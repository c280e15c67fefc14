//! Keyed, deterministic masking of PII: lowercase hex HMAC-SHA256 of the raw value's UTF-8 bytes, keyed
//! by the secret's UTF-8 bytes. It is the token Postgres gives for
//! `encode(hmac(value, key, 'sha256'), 'hex')`, so whoever holds the key can look up a known device or
//! IP, while equal values still give equal tokens (duplicates stay visible to analysts).
//!
//! Pure functions, no I/O. The key never leaves a [`Masker`]: its `Debug` is redacted.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted key, in bytes: below this a key is guessable or a placeholder.
pub const MIN_KEY_BYTES: usize = 32;

/// Fields of a login body that hold PII and are replaced by tokens wherever a body is kept.
pub const PII_FIELDS: [&str; 2] = ["ip", "device_id"];

/// Why a key was refused. Never carries the key itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("masking key is {0} bytes; at least {MIN_KEY_BYTES} are required")]
    TooShort(usize),
}

/// Turns raw values into tokens under one secret key.
#[derive(Clone)]
pub struct Masker {
    /// The HMAC state after absorbing the key; cloned per token so the key pads are hashed once.
    mac: HmacSha256,
    key_id: String,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker").field("key", &"[redacted]").field("key_id", &self.key_id).finish()
    }
}

impl Masker {
    /// A masker for `key`. `key_id` names the key in every row it masks; without one, an id is
    /// derived from the key itself (an HMAC of a fixed label, which reveals nothing about the key).
    pub fn new(key: &[u8], key_id: Option<&str>) -> Result<Self, KeyError> {
        if key.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort(key.len()));
        }
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        let mut masker = Masker { mac, key_id: String::new() };
        masker.key_id = match key_id {
            Some(id) => id.to_owned(),
            None => format!("hmac-{}", &masker.token("pii-ingest/key-id")[..12]),
        };
        Ok(masker)
    }

    /// The id recorded with every row masked by this key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The token of a text value.
    pub fn token(&self, value: &str) -> String {
        self.token_bytes(value.as_bytes())
    }

    /// The token of raw bytes (used for whole bodies that cannot be parsed).
    pub fn token_bytes(&self, value: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(value);
        // Through a stack buffer: `hex::encode` builds the String a char at a time, which was 8% of a replay.
        let mut hex = [0u8; 64];
        hex::encode_to_slice(mac.finalize().into_bytes(), &mut hex).expect("32 bytes are 64 hex digits");
        String::from_utf8(hex.to_vec()).expect("hex digits are ASCII")
    }

    /// A JSON body with every [`PII_FIELDS`] value replaced by its token, for quarantine. `None` when
    /// the body is not a JSON object: then nobody can say where its PII is, so none of it is kept.
    /// Non-string PII values are masked by the token of their JSON text.
    pub fn mask_body(&self, body: &[u8]) -> Option<String> {
        let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
        for field in PII_FIELDS {
            if let Some(value) = object.get_mut(field) {
                let token = match &*value {
                    serde_json::Value::String(s) => self.token(s),
                    other => self.token(&other.to_string()),
                };
                *value = serde_json::Value::String(token);
            }
        }
        // Serializing a Map of Values cannot fail (string keys only).
        Some(serde_json::to_string(&object).expect("a JSON map always serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hmac_hex(key: &[u8], data: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(key).unwrap();
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn hmac_matches_rfc_4231_vectors() {
        // Test case 2 (short key) and test case 6 (key longer than the block size).
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hmac_hex(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First"),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn masker_token_is_the_hmac_of_the_value_under_the_key() {
        let key = "k".repeat(32);
        let masker = Masker::new(key.as_bytes(), Some("k1")).unwrap();
        assert_eq!(masker.token("10.0.0.1"), hmac_hex(key.as_bytes(), b"10.0.0.1"));
        assert_eq!(masker.token("10.0.0.1"), masker.token("10.0.0.1"));
        assert_ne!(masker.token("10.0.0.1"), masker.token("10.0.0.2"));
        assert_eq!(masker.token("x").len(), 64);
    }

    #[test]
    fn different_keys_give_different_tokens_and_ids() {
        let a = Masker::new(&[1; 32], None).unwrap();
        let b = Masker::new(&[2; 32], None).unwrap();
        assert_ne!(a.token("593-47-5928"), b.token("593-47-5928"));
        assert_ne!(a.key_id(), b.key_id());
        assert!(a.key_id().starts_with("hmac-"));
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(Masker::new(b"short", None).unwrap_err(), KeyError::TooShort(5));
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let masker = Masker::new(b"super-secret-key-material-0123456789", None).unwrap();
        assert!(!format!("{masker:?}").contains("super-secret"));
    }

    #[test]
    fn masked_body_replaces_pii_and_keeps_the_rest() {
        let masker = Masker::new(&[7; 32], None).unwrap();
        let body = br#"{"ip":"1.2.3.4","device_id":123456789,"locale":"RU"}"#;
        let masked = masker.mask_body(body).unwrap();
        assert!(!masked.contains("1.2.3.4") && !masked.contains("123456789"));
        assert!(masked.contains(&masker.token("1.2.3.4")));
        assert!(masked.contains(&masker.token("123456789")));
        assert!(masked.contains(r#""locale":"RU""#));
        assert_eq!(masker.mask_body(b"not json 1.2.3.4"), None);
        assert_eq!(masker.mask_body(br#"["1.2.3.4"]"#), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn tokens_are_deterministic_64_hex_and_key_dependent(value in ".*", key in proptest::collection::vec(any::<u8>(), 32..64)) {
            let masker = Masker::new(&key, None).unwrap();
            let token = masker.token(&value);
            prop_assert_eq!(token.len(), 64);
            prop_assert!(token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            prop_assert_eq!(&token, &masker.token(&value));
            let mut other_key = key.clone();
            other_key[0] ^= 1;
            prop_assert_ne!(token, Masker::new(&other_key, None).unwrap().token(&value));
        }

        #[test]
        fn a_masked_body_never_contains_the_raw_pii(ip in "[0-9.:g-z]{8,40}", device_id in "[0-9-g-z]{8,40}", rest in "[a-z ]{0,20}") {
            let masker = Masker::new(&[9; 32], None).unwrap();
            let body = serde_json::json!({"ip": ip, "device_id": device_id, "note": rest}).to_string();
            let masked = masker.mask_body(body.as_bytes()).unwrap();
            prop_assert!(!masked.contains(&ip));
            prop_assert!(!masked.contains(&device_id));
        }
    }
}
