//! Keyed, deterministic masking of PII: lowercase hex HMAC-SHA256 of the raw value's UTF-8 bytes, keyed
//! by the secret's UTF-8 bytes. It is the token Postgres gives for
//! `encode(hmac(value, key, 'sha256'), 'hex')`, so whoever holds the key can look up a known device or
//! IP, while equal values still give equal tokens (duplicates stay visible to analysts).
//!
//! Pure functions, no I/O. The key never leaves a [`Masker`]: its `Debug` is redacted. Quarantined
//! bodies are masked default-deny ([`Masker::mask_body`], rule in `docs/pii.md`).

mod quarantine;

pub use quarantine::MAX_LEAVES;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted key, in bytes: below this a key is guessable or a placeholder.
pub const MIN_KEY_BYTES: usize = 32;

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

    /// A quarantined body with every string and number leaf replaced by its token, keeping its shape
    /// (see [`quarantine`]). `None` when nothing of it can be kept: not UTF-8 JSON, over the body cap,
    /// nested past serde_json's 128 levels, or more than [`MAX_LEAVES`] leaves.
    pub fn mask_body(&self, body: &[u8], rules: &crate::event::Rules) -> Option<String> {
        quarantine::mask(self, body, rules)
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
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::event::{Envelope, Rules};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// Values that are personal by any reading: addresses, e-mails, SSN-like and long digit runs.
    fn planted() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
            "[a-z]{3,8}@[a-z]{3,8}\\.(com|org)",
            "[0-9]{3}-[0-9]{2}-[0-9]{4}",
            "[1-9][0-9]{8,12}",
        ]
    }

    /// Random JSON: objects with identifier-like or login-field keys, arrays, every scalar.
    fn document() -> impl Strategy<Value = Value> {
        let key =
            prop_oneof!["[a-z_]{1,10}", Just("ip".to_owned()), Just("locale".to_owned()), Just("Message".to_owned())];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-zA-Z .]{0,12}".prop_map(Value::from)
        ];
        leaf.prop_recursive(5, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Plants each value somewhere in `doc`: as a leaf, a key, a number, inside a string that holds
    /// JSON, or in an SNS or EventBridge envelope around the document; `seed` picks where.
    fn plant(doc: Value, planted: &[String], seed: u64) -> Value {
        let mut doc = json!({"user_id": "u", "body": doc});
        for (i, value) in planted.iter().enumerate() {
            let choice = (seed >> (i * 3)) % 8;
            let target = descend(&mut doc, seed.rotate_left(i as u32 * 7));
            let placed = match choice {
                0 => Value::Object([(value.clone(), Value::from(1))].into_iter().collect()),
                1 => json!([value]),
                2 => json!({"ip": value, "device_id": value, "locale": value, "app_version": value}),
                3 => Value::String(json!({"deep": [value]}).to_string()),
                4 => value.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::from(value.clone())),
                _ => Value::from(value.clone()),
            };
            *target = json!([target.take(), placed]);
        }
        match seed % 4 {
            0 => json!({"Type": "Notification", "Message": doc.to_string()}),
            1 => json!({"detail-type": "t", "source": "s", "detail": doc}),
            _ => doc,
        }
    }

    /// A pseudo-random node of `doc`, chosen by the bits of `path`.
    fn descend(doc: &mut Value, mut path: u64) -> &mut Value {
        let mut node = doc;
        loop {
            let n = match &*node {
                Value::Array(a) => a.len(),
                Value::Object(o) => o.len(),
                _ => 0,
            };
            if n == 0 || path.is_multiple_of(3) {
                return node;
            }
            let i = (path as usize / 3) % n;
            path /= 7;
            node = match node {
                Value::Array(a) => &mut a[i],
                Value::Object(o) => o.values_mut().nth(i).expect("i < len"),
                _ => unreachable!("only containers have children"),
            };
        }
    }

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
        fn a_masked_body_never_shows_a_planted_value(doc in document(), planted in proptest::collection::vec(planted(), 1..6), seed in any::<u64>()) {
            let masker = Masker::new(&[9; 32], None).unwrap();
            let body = plant(doc, &planted, seed).to_string();
            for rules in [Rules::default(), Rules { envelope: Envelope::None, ..Rules::default() }] {
                let masked = masker.mask_body(body.as_bytes(), &rules).unwrap();
                for value in &planted {
                    prop_assert!(!masked.contains(value.as_str()), "{} shows {}", masked, value);
                }
            }
        }
    }
}
