//! Loading a queue: each line of a JSONL file as one message, or synthetic logins shaped like the
//! sample (with optional shares of malformed messages and of repeated bodies). Used by the demo, the
//! tests and the benchmarks; never by the ingester itself.

use std::path::Path;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use futures::{StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::source::SourceError;
use crate::source::sqs::MAX_BATCH;

/// One message to send: its body and, optionally, a producer idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub body: String,
    pub key: Option<String>,
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

/// The lines of a JSONL file as messages. Each carries the key `file:<content hash>:<line number>`
/// when `keyed`, so sending the same file twice cannot load it twice. Blank lines are skipped.
pub fn file_messages(path: &Path, keyed: bool) -> Result<Vec<Outgoing>, SeedError> {
    let bytes = std::fs::read(path).map_err(|source| SeedError::Read { path: path.display().to_string(), source })?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let text = String::from_utf8_lossy(&bytes);
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| Outgoing {
            body: line.to_owned(),
            key: keyed.then(|| crate::source::FileSource::key(&digest, i + 1)),
        })
        .collect())
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
        out.push(Outgoing { body, key: None });
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
            if let (Some(name), Some(key)) = (attribute, m.key) {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(key)
                    .build()
                    .expect("data type is set");
                entry = entry.message_attributes(name, value);
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
        let messages = file_messages(&path, true).unwrap();
        assert_eq!(messages.len(), 2);
        assert_ne!(messages[0].key, messages[1].key);
        assert_eq!(messages, file_messages(&path, true).unwrap());
        assert!(file_messages(&path, false).unwrap().iter().all(|m| m.key.is_none()));
    }
}
