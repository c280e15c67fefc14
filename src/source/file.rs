//! The file source behind `pii-ingest replay`: each non-blank line is one message, in either form:
//! - a plain body: keyed `key:line:<HMAC of the line>:<occurrence among equal lines>`, the same key
//!   `seed --file` attaches, so appending to, reordering or re-exporting an archive writes only what
//!   is new, and replaying a file also sent through SQS writes nothing new;
//! - an envelope (`{"message_id", "sent_timestamp", "body", "attributes"}`, see [`super::envelope`]):
//!   keyed exactly as its SQS delivery was ([`super::key::keys_or_flaw`]), dated by its
//!   `sent_timestamp`, so replaying an export of messages already drained writes nothing new. A
//!   malformed envelope becomes an `invalid_envelope` reject naming the member at fault.
//!
//! Lines go through the same pipeline (dedup, masking, ledger, one transaction per batch); there is
//! nothing to delete.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::envelope::Envelope;
use super::key::{self, Occurrences};
use super::{Deleted, Delivery, Flaw, Source, SourceError};
use crate::event::RejectReason;
use crate::mask::Masker;

/// Lines handed to the pipeline per receive.
const LINES_PER_RECEIVE: usize = 500;

/// How lines are keyed: the masking key (plain lines are keyed by their HMAC) and the message
/// attribute that carries a producer's idempotency key in envelopes (`sqs.idempotency_key_attribute`).
#[derive(Clone)]
pub struct Keying {
    pub masker: Masker,
    pub attribute: String,
}

pub struct FileSource {
    reader: Mutex<Lines>,
    keying: Keying,
    sent_at: DateTime<Utc>,
}

struct Lines {
    reader: BufReader<File>,
    occurrences: Occurrences,
    done: bool,
}

impl FileSource {
    /// Opens `path`; plain lines are stamped `sent_at` (default: the file's modification time, so a
    /// replay lands on the same `create_date` each time), envelopes carry their own time.
    pub fn open(path: &Path, sent_at: Option<DateTime<Utc>>, keying: Keying) -> std::io::Result<FileSource> {
        let file = File::open(path)?;
        let sent_at = match sent_at {
            Some(at) => at,
            None => file.metadata()?.modified()?.into(),
        };
        let lines =
            Lines { reader: BufReader::with_capacity(1 << 20, file), occurrences: Occurrences::default(), done: false };
        Ok(FileSource { reader: Mutex::new(lines), keying, sent_at })
    }

    fn next_chunk(&self) -> std::io::Result<Vec<Delivery>> {
        // A poisoned lock means a reader panicked mid-line; the file position is still sound.
        let mut lines = self.reader.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut chunk = Vec::with_capacity(LINES_PER_RECEIVE);
        let mut buffer = Vec::new();
        while chunk.len() < LINES_PER_RECEIVE && !lines.done {
            buffer.clear();
            if lines.reader.read_until(b'\n', &mut buffer)? == 0 {
                lines.done = true;
                break;
            }
            while buffer.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buffer.pop();
            }
            if buffer.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let line = std::mem::replace(&mut buffer, Vec::with_capacity(256));
            chunk.push(self.delivery(&mut lines.occurrences, line));
        }
        Ok(chunk)
    }

    /// One line as a delivery: an envelope keyed as SQS keyed it, or a plain line keyed by content.
    fn delivery(&self, occurrences: &mut Occurrences, line: Vec<u8>) -> Delivery {
        if Envelope::is_envelope(&line) {
            match Envelope::parse(&line) {
                Ok(envelope) => return self.envelope_delivery(envelope),
                Err(error) => {
                    let flaw = Flaw {
                        reason: RejectReason::BadEnvelope,
                        field: error.field.to_owned(),
                        detail: error.to_string(),
                    };
                    let dedup = format!("key:{}", occurrences.next_key(&self.keying.masker, &line));
                    // Only the envelope's body is kept (masked): the line around it is not a login.
                    let body = error.body.unwrap_or_default().into_bytes();
                    return Delivery {
                        message_id: dedup,
                        conflict_key: None,
                        flaw: Some(flaw),
                        receipt_handle: String::new(),
                        body,
                        sent_at: self.sent_at,
                        receive_count: 1,
                    };
                }
            }
        }
        let dedup = format!("key:{}", occurrences.next_key(&self.keying.masker, &line));
        Delivery {
            message_id: dedup,
            conflict_key: None,
            flaw: None,
            receipt_handle: String::new(),
            body: line,
            sent_at: self.sent_at,
            receive_count: 1,
        }
    }

    fn envelope_delivery(&self, envelope: Envelope) -> Delivery {
        let attribute = self.keying.attribute.as_str();
        let producer = (!attribute.is_empty()).then(|| envelope.attributes.get(attribute)).flatten();
        let origin = envelope.attributes.get(key::ORIGIN_ATTRIBUTE).map(String::as_str);
        let (keys, flaw) = key::keys_or_flaw(&envelope.message_id, origin, producer.map(String::as_str), attribute);
        Delivery {
            message_id: keys.dedup,
            conflict_key: keys.conflict,
            flaw,
            receipt_handle: String::new(),
            sent_at: envelope.sent_at(),
            body: envelope.body.into_bytes(),
            receive_count: 1,
        }
    }
}

impl Source for FileSource {
    /// A chunk of lines, whatever `max_messages` says: a local file has no per-call cost to bound,
    /// and the pipeline counts the bytes it actually gets.
    async fn receive(&self, _max_messages: usize) -> Result<Vec<Delivery>, SourceError> {
        self.next_chunk().map_err(|e| SourceError::File(Box::new(e)))
    }

    async fn delete(&self, _: &[String]) -> Result<Deleted, SourceError> {
        Ok(Deleted::default())
    }

    async fn is_drained(&self) -> Result<bool, SourceError> {
        Ok(self.reader.lock().unwrap_or_else(std::sync::PoisonError::into_inner).done)
    }

    async fn extend(&self, handles: &[String], _: u32) -> Result<usize, SourceError> {
        // Nothing expires in a file: every entry stays "invisible".
        Ok(handles.len())
    }

    fn visibility_timeout(&self) -> Duration {
        // Nothing expires in a file; the pipeline's keep-alive then effectively never fires.
        Duration::from_secs(24 * 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keying() -> Keying {
        Keying { masker: Masker::new(&[7; 32], Some("k")).unwrap(), attribute: "idempotency-key".into() }
    }

    #[tokio::test]
    async fn lines_become_deliveries_keyed_by_content_and_occurrence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        std::fs::write(&path, "{\"a\":1}\r\n\n  \n\u{ff}bad\n{\"a\":1}").unwrap();
        let source = FileSource::open(&path, None, keying()).unwrap();
        let batch = source.receive(10).await.unwrap();
        let ids: Vec<_> = batch.iter().map(|d| d.message_id.rsplit(':').next().unwrap().to_owned()).collect();
        assert_eq!(ids, ["1", "1", "2"]);
        assert_eq!(
            batch[0].message_id[..batch[0].message_id.len() - 1],
            batch[2].message_id[..batch[2].message_id.len() - 1]
        );
        assert_eq!(batch[0].body, b"{\"a\":1}");
        assert!(source.receive(10).await.unwrap().is_empty());
        assert!(source.is_drained().await.unwrap());

        // Reordered, the same lines keep their keys.
        std::fs::write(&path, "\u{ff}bad\n{\"a\":1}\n{\"a\":1}\n").unwrap();
        let again = FileSource::open(&path, None, keying()).unwrap().receive(10).await.unwrap();
        let mut before: Vec<_> = batch.iter().map(|d| d.message_id.clone()).collect();
        let mut after: Vec<_> = again.iter().map(|d| d.message_id.clone()).collect();
        before.sort();
        after.sort();
        assert_eq!(before, after);
    }

    #[tokio::test]
    async fn an_envelope_is_keyed_and_dated_as_its_sqs_delivery_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        let lines = [
            r#"{"message_id":"m-1","sent_timestamp":1700000000000,"body":"{\"a\":1}"}"#,
            r#"{"message_id":"m-2","sent_timestamp":1700000000000,"body":"x","attributes":{"idempotency-key":"k-9"}}"#,
            r#"{"message_id":"m-3","sent_timestamp":"later","body":"x"}"#,
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let batch = FileSource::open(&path, None, keying()).unwrap().receive(10).await.unwrap();
        assert_eq!((batch[0].message_id.as_str(), batch[0].body.as_slice()), ("sqs:m-1", b"{\"a\":1}".as_slice()));
        assert_eq!(batch[0].sent_at, DateTime::from_timestamp_millis(1_700_000_000_000).unwrap());
        let sqs = key::keys_or_flaw("m-2", None, Some("k-9"), "idempotency-key").0;
        assert_eq!((batch[1].message_id.clone(), batch[1].conflict_key.clone()), (sqs.dedup, sqs.conflict));
        let flaw = batch[2].flaw.as_ref().unwrap();
        assert_eq!((flaw.reason, flaw.field.as_str()), (RejectReason::BadEnvelope, "sent_timestamp"));
        assert_eq!(batch[2].body, b"x");
    }
}
