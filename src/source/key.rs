//! Dedup keys, derived one way for every road a message takes: an SQS delivery, an envelope line of an
//! archive or dead-letter export, a plain archive line. So the same message always claims the same key,
//! whichever road it came back by (see `docs/exactly-once.md`).
//!
//! Keys are namespaced by origin, so an SQS MessageId can never collide with a producer's key:
//! - `sqs:<MessageId>`: a message without a producer key;
//! - `key:<producer key>`: a message whose attributes carry one (at most [`MAX_PRODUCER_KEY`]
//!   characters, never empty: anything else is a reject, never a silent fallback to the MessageId);
//! - `key:line:<HMAC of the line>:<occurrence>`: a plain archive line, keyed as `seed --file` sends it.
//!
//! A producer key promises content, so a message under one also keeps its `sqs:` key as the *conflict
//! key*: should the producer key be claimed by another body, this delivery is recorded under it.

use super::Flaw;
use crate::event::RejectReason;
use crate::mask::Masker;

/// The message attribute `seed --file` sets when it re-drives an exported envelope: the MessageId the
/// message had before, which then keys it instead of its new one (a re-driven message is the same
/// message).
pub const ORIGIN_ATTRIBUTE: &str = "origin-message-id";

/// Longest producer idempotency key accepted, in bytes.
pub const MAX_PRODUCER_KEY: usize = 128;

/// The keys of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// What the message claims.
    pub dedup: String,
    /// Where a conflicting delivery is recorded instead (its own MessageId), when `dedup` is a producer key.
    pub conflict: Option<String>,
}

/// Why a producer key cannot be used. Never quotes the key (it is the producer's data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the idempotency key is empty")]
    Empty,
    #[error("the idempotency key is {0} bytes long; at most {MAX_PRODUCER_KEY} are accepted")]
    TooLong(usize),
}

/// The keys of the message with SQS `message_id`, carrying `producer_key` if its attributes hold one.
/// The only derivation: SQS delivery and replayed envelopes both call it.
pub fn derive(message_id: &str, producer_key: Option<&str>) -> Result<Keys, KeyError> {
    let sqs = format!("sqs:{message_id}");
    match producer_key {
        None => Ok(Keys { dedup: sqs, conflict: None }),
        Some(key) if key.trim().is_empty() => Err(KeyError::Empty),
        Some(key) if key.len() > MAX_PRODUCER_KEY => Err(KeyError::TooLong(key.len())),
        Some(key) => Ok(Keys { dedup: format!("key:{key}"), conflict: Some(sqs) }),
    }
}

/// The keys of a message as [`derive`] gives them, from its MessageId (or the [`ORIGIN_ATTRIBUTE`] it
/// was re-driven with) and the producer key in its attribute named `attribute`; or, when that key is
/// unusable, its MessageId key and the flaw that makes it an `invalid_key` reject. SQS deliveries and
/// replayed envelopes both come through here.
pub fn keys_or_flaw(
    message_id: &str,
    origin: Option<&str>,
    producer_key: Option<&str>,
    attribute: &str,
) -> (Keys, Option<Flaw>) {
    let message_id = origin.filter(|o| !o.trim().is_empty() && o.len() <= MAX_PRODUCER_KEY).unwrap_or(message_id);
    match derive(message_id, producer_key) {
        Ok(keys) => (keys, None),
        Err(error) => {
            let flaw = Flaw {
                reason: RejectReason::InvalidKey,
                field: attribute.to_owned(),
                detail: format!("{attribute}: {error}"),
            };
            (Keys { dedup: format!("sqs:{message_id}"), conflict: None }, Some(flaw))
        }
    }
}

/// The producer key of the `occurrence`-th (1-based) copy of `line` in an archive: the line's HMAC
/// under the masking key (a plain hash of a login could be reversed by guessing its ip), so appending,
/// reordering or re-exporting the archive keeps every line's key.
pub fn line_key(masker: &Masker, line: &[u8], occurrence: usize) -> String {
    format!("line:{}:{occurrence}", &masker.token_bytes(line)[..32])
}

/// Counts equal lines of one archive, so each copy gets its own occurrence number.
#[derive(Default)]
pub struct Occurrences(std::collections::HashMap<u128, usize>);

impl Occurrences {
    /// The producer key of the next copy of `line` ([`line_key`]).
    pub fn next_key(&mut self, masker: &Masker, line: &[u8]) -> String {
        let token = masker.token_bytes(line);
        // 32 hex digits are 128 bits: as much as the key keeps.
        let id = u128::from_str_radix(&token[..32], 16).expect("a token is hex");
        let n = self.0.entry(id).or_default();
        *n += 1;
        format!("line:{}:{n}", &token[..32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_without_a_producer_key_is_keyed_by_its_message_id() {
        assert_eq!(derive("m-1", None), Ok(Keys { dedup: "sqs:m-1".into(), conflict: None }));
    }

    #[test]
    fn a_producer_key_replaces_the_message_id_which_stays_the_conflict_key() {
        let keys = derive("m-1", Some("order-7")).unwrap();
        assert_eq!((keys.dedup.as_str(), keys.conflict.as_deref()), ("key:order-7", Some("sqs:m-1")));
    }

    #[test]
    fn an_empty_or_over_long_producer_key_is_refused_not_replaced() {
        assert_eq!(derive("m-1", Some(" ")), Err(KeyError::Empty));
        assert_eq!(derive("m-1", Some(&"k".repeat(129))), Err(KeyError::TooLong(129)));
        assert!(derive("m-1", Some(&"k".repeat(128))).is_ok());
        assert!(!KeyError::TooLong(129).to_string().contains("kkk"));
    }

    #[test]
    fn line_keys_depend_on_content_and_occurrence_only() {
        let masker = Masker::new(&[7; 32], None).unwrap();
        assert_eq!(line_key(&masker, b"a", 1), line_key(&masker, b"a", 1));
        assert_ne!(line_key(&masker, b"a", 1), line_key(&masker, b"a", 2));
        assert_ne!(line_key(&masker, b"a", 1), line_key(&masker, b"b", 1));
        assert!(derive("x", Some(&line_key(&masker, b"a", 99999))).is_ok());
    }
}
