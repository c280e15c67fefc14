//! Loading a queue: each line of a JSONL file as one message, or synthetic logins shaped like the
//! sample (with optional shares of malformed messages and of repeated bodies). Used by the demo, the
//! tests and the benchmarks; never by the ingester itself.

use std::path::Path;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use futures::{StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::mask::Masker;
use crate::source::envelope::Envelope;
use crate::source::sqs::MAX_BATCH;
use crate::source::{SourceError, key};

/// One message to send: its body and, optionally, a producer idempotency key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub body: String,
    pub key: Option<String>,
    /// The MessageId a re-driven message had (sent as [`key::ORIGIN_ATTRIBUTE`]), which keys it.
    pub origin: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{path}, line {line}")]
    Envelope {
        path: String,
        line: usize,
        #[source]
        source: crate::source::envelope::EnvelopeError,
    },
    #[error("SQS refused {0} message(s) of a batch")]
    Refused(usize),
}

/// The queue's URL, creating it (with the given visibility timeout, in seconds) if it is missing.
pub async fn ensure_queue(client: &Client, name: &str, visibility_timeout: u32) -> Result<String, SourceError> {
    match crate::source::sqs::queue_url(client, name).await {
        Err(SourceError::QueueNotFound(_)) => {}
        found => return found,
    }
    let output = client
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, visibility_timeout.to_string())
        .send()
        .await
        .map_err(|e| SourceError::Sqs { operation: "CreateQueue", source: Box::new(e) })?;
    Ok(output.queue_url.unwrap_or_default())
}

/// The lines of a JSONL file as messages. A plain line carries, when `masker` is given, the key its
/// `replay` would give it (`line:<HMAC of the line>:<occurrence>`), so sending a file twice, or sending
/// and replaying it, loads it once. An envelope line (as `pii-ingest export` writes) is re-driven: its
/// body, its producer key (attribute `attribute`) and its MessageId as [`key::ORIGIN_ATTRIBUTE`], so
/// it keeps the identity it had. A malformed envelope stops the whole send, naming its line.
pub fn file_messages(path: &Path, masker: Option<&Masker>, attribute: &str) -> Result<Vec<Outgoing>, SeedError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| SeedError::Read { path: path.display().to_string(), source })?;
    let mut occurrences = key::Occurrences::default();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if Envelope::is_envelope(line.as_bytes()) {
            let envelope = Envelope::parse(line.as_bytes()).map_err(|source| SeedError::Envelope {
                path: path.display().to_string(),
                line: i + 1,
                source,
            })?;
            let key = envelope.attributes.get(attribute).cloned();
            let origin = envelope.attributes.get(key::ORIGIN_ATTRIBUTE).cloned().unwrap_or(envelope.message_id);
            out.push(Outgoing { body: envelope.body, key, origin: Some(origin) });
        } else {
            let key = masker.map(|m| occurrences.next_key(m, line.as_bytes()));
            out.push(Outgoing { body: line.to_owned(), key, origin: None });
        }
    }
    Ok(out)
}

/// Shares of odd messages in a generated load, each from 0.0 to 1.0.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mix {
    /// Malformed messages of every kind the validator knows.
    pub bad: f64,
    /// Bodies identical to an earlier one (genuine repeats: separate messages, separate rows).
    pub repeat: f64,
}

/// `n` synthetic logins shaped like the sample, deterministic for a given `seed`.
pub fn generate(n: usize, mix: Mix, seed: u64) -> Vec<Outgoing> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out: Vec<Outgoing> = Vec::with_capacity(n);
    for _ in 0..n {
        let body = if !out.is_empty() && rng.random_bool(mix.repeat.clamp(0.0, 1.0)) {
            out[rng.random_range(0..out.len())].body.clone()
        } else if rng.random_bool(mix.bad.clamp(0.0, 1.0)) {
            bad_body(&mut rng)
        } else {
            login_body(&mut rng)
        };
        out.push(Outgoing { body, ..Outgoing::default() });
    }
    out
}

const VERSIONS: [&str; 8] = ["2.3.0", "0.96", "0.9.6", "2.2.1", "0.2.6", "3.7", "6.88", "1.4"];
const LOCALES: [&str; 8] = ["RU", "PH", "TH", "US", "DE", "BR", "ID", "FR"];

fn login_body(rng: &mut StdRng) -> String {
    let locale = if rng.random_bool(0.29) { None } else { Some(LOCALES[rng.random_range(0..LOCALES.len())]) };
    serde_json::json!({
        "user_id": uuid::Builder::from_random_bytes(rng.random()).into_uuid().to_string(),
        "app_version": VERSIONS[rng.random_range(0..VERSIONS.len())],
        "device_type": if rng.random_bool(0.5) { "android" } else { "ios" },
        "ip": format!("{}.{}.{}.{}", rng.random_range(1..=254), rng.random::<u8>(), rng.random::<u8>(), rng.random_range(1..=254)),
        "locale": locale,
        "device_id": format!("{:03}-{:02}-{:04}", rng.random_range(0..1000), rng.random_range(0..100), rng.random_range(0..10000)),
    })
    .to_string()
}

fn bad_body(rng: &mut StdRng) -> String {
    let mut login: serde_json::Value = serde_json::from_str(&login_body(rng)).expect("generated JSON parses");
    match rng.random_range(0..7) {
        0 => r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#.to_owned(),
        1 => "this is not json".to_owned(),
        2 => "[1, 2, 3]".to_owned(),
        3 => {
            login["ip"] = "not-an-ip".into();
            login.to_string()
        }
        4 => {
            login["device_type"] = "toaster".into();
            login.to_string()
        }
        5 => {
            login["app_version"] = serde_json::json!(2.3);
            login.to_string()
        }
        _ => {
            login.as_object_mut().expect("a login is an object").remove("device_id");
            login.to_string()
        }
    }
}

/// Sends `messages` in batches of 10, `concurrency` batches at a time; `on_sent` sees each batch size.
pub async fn send(
    client: &Client,
    queue_url: &str,
    attribute: Option<&str>,
    messages: Vec<Outgoing>,
    concurrency: usize,
    on_sent: impl Fn(usize),
) -> Result<usize, SeedError> {
    let batches: Vec<Vec<Outgoing>> = messages.chunks(MAX_BATCH).map(<[Outgoing]>::to_vec).collect();
    futures::stream::iter(batches)
        .map(|batch| send_batch(client, queue_url, attribute, batch))
        .buffer_unordered(concurrency.max(1))
        .map_ok(|n| {
            on_sent(n);
            n
        })
        .try_fold(0, |total, n| async move { Ok(total + n) })
        .await
}

async fn send_batch(
    client: &Client,
    queue_url: &str,
    attribute: Option<&str>,
    batch: Vec<Outgoing>,
) -> Result<usize, SeedError> {
    let entries = batch
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let mut entry = SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(m.body);
            let string = |value: String| {
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .expect("data type is set")
            };
            if let (Some(name), Some(key)) = (attribute, m.key) {
                entry = entry.message_attributes(name, string(key));
            }
            if let Some(origin) = m.origin {
                entry = entry.message_attributes(key::ORIGIN_ATTRIBUTE, string(origin));
            }
            entry.build().expect("id and body are set")
        })
        .collect::<Vec<_>>();
    let n = entries.len();
    let output = client
        .send_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| SourceError::Sqs { operation: "SendMessageBatch", source: Box::new(e) })?;
    if !output.failed().is_empty() {
        return Err(SeedError::Refused(output.failed().len()));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Rules, parse};

    #[test]
    fn generated_logins_are_valid_and_deterministic() {
        let a = generate(200, Mix::default(), 7);
        assert_eq!(a, generate(200, Mix::default(), 7));
        assert!(a.iter().all(|m| parse(m.body.as_bytes(), &Rules::default()).is_ok()));
    }

    #[test]
    fn the_bad_share_produces_rejects_of_several_kinds() {
        let messages = generate(2000, Mix { bad: 0.2, repeat: 0.0 }, 1);
        let reasons: std::collections::HashSet<_> = messages
            .iter()
            .filter_map(|m| parse(m.body.as_bytes(), &Rules::default()).err().map(|r| r.reason))
            .collect();
        assert!(reasons.len() >= 6, "{reasons:?}");
        let bad = messages.iter().filter(|m| parse(m.body.as_bytes(), &Rules::default()).is_err()).count();
        assert!((300..500).contains(&bad), "{bad}");
    }

    #[test]
    fn file_lines_get_stable_distinct_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        std::fs::write(&path, "{\"a\":1}\n\n{\"a\":1}\n").unwrap();
        let masker = Masker::new(&[7; 32], None).unwrap();
        let messages = file_messages(&path, Some(&masker), "k").unwrap();
        assert_eq!(messages.len(), 2);
        assert_ne!(messages[0].key, messages[1].key);
        assert_eq!(messages, file_messages(&path, Some(&masker), "k").unwrap());
        assert!(file_messages(&path, None, "k").unwrap().iter().all(|m| m.key.is_none()));
    }

    #[test]
    fn envelopes_are_re_driven_with_their_key_and_message_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        std::fs::write(&path, r#"{"message_id":"m-1","sent_timestamp":1,"body":"b","attributes":{"k":"v"}}"#).unwrap();
        let messages = file_messages(&path, None, "k").unwrap();
        let want = Outgoing { body: "b".into(), key: Some("v".into()), origin: Some("m-1".into()) };
        assert_eq!(messages, [want]);
        std::fs::write(&path, "{\"a\":1}\n{\"message_id\":\"m-1\",\"body\":\"b\"}\n").unwrap();
        let error = file_messages(&path, None, "k").unwrap_err();
        let text = crate::telemetry::chain(&error);
        assert!(text.ends_with("f.jsonl, line 2: envelope member sent_timestamp: missing"), "{text}");
    }
}
