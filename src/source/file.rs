//! A JSONL file as a source, for backfills (`pii-ingest replay`): each non-blank line is one message
//! whose id is `file:<sha256 of the file>:<line number>`, the same key `seed --file` attaches, so
//! replaying a file twice, or replaying a file that was also sent through SQS, writes nothing new.
//! Lines go through the same pipeline (dedup, masking, ledger, one transaction per batch); there is
//! nothing to delete.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{Deleted, Delivery, Source, SourceError};

/// Lines handed to the pipeline per receive.
const LINES_PER_RECEIVE: usize = 500;

pub struct FileSource {
    reader: Mutex<Lines>,
    digest: String,
    sent_at: DateTime<Utc>,
}

struct Lines {
    reader: BufReader<File>,
    number: usize,
    done: bool,
}

impl FileSource {
    /// Opens `path`; every line is stamped `sent_at` (default: the file's modification time, so a
    /// replay lands on the same `create_date` each time).
    pub fn open(path: &Path, sent_at: Option<DateTime<Utc>>) -> std::io::Result<FileSource> {
        let digest = file_digest(path)?;
        let file = File::open(path)?;
        let sent_at = match sent_at {
            Some(at) => at,
            None => file.metadata()?.modified()?.into(),
        };
        Ok(FileSource {
            reader: Mutex::new(Lines { reader: BufReader::with_capacity(1 << 20, file), number: 0, done: false }),
            digest,
            sent_at,
        })
    }

    /// The key of line `number` (1-based) of a file with this content digest.
    pub fn key(digest: &str, number: usize) -> String {
        format!("file:{}:{number}", &digest[..32])
    }

    fn next_chunk(&self) -> std::io::Result<Vec<Delivery>> {
        // A poisoned lock means a reader panicked mid-line; the file position is still sound.
        let mut lines = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut chunk = Vec::with_capacity(LINES_PER_RECEIVE);
        let mut buffer = Vec::new();
        while chunk.len() < LINES_PER_RECEIVE && !lines.done {
            buffer.clear();
            if lines.reader.read_until(b'\n', &mut buffer)? == 0 {
                lines.done = true;
                break;
            }
            lines.number += 1;
            while buffer.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buffer.pop();
            }
            if buffer.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            chunk.push(Delivery {
                message_id: Self::key(&self.digest, lines.number),
                receipt_handle: String::new(),
                body: std::mem::replace(&mut buffer, Vec::with_capacity(256)),
                sent_at: self.sent_at,
                receive_count: 1,
            });
        }
        Ok(chunk)
    }
}

/// Hex SHA-256 of a file's content.
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
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
        Ok(self.reader.lock().unwrap_or_else(|p| p.into_inner()).done)
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

    #[tokio::test]
    async fn lines_become_deliveries_keyed_by_content_and_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        std::fs::write(&path, "{\"a\":1}\r\n\n  \n\u{ff}bad\n{\"a\":1}").unwrap();
        let source = FileSource::open(&path, None).unwrap();
        let batch = source.receive(10).await.unwrap();
        let ids: Vec<_> = batch.iter().map(|d| d.message_id.rsplit(':').next().unwrap().to_owned()).collect();
        assert_eq!(ids, ["1", "4", "5"]);
        assert_eq!(batch[0].body, b"{\"a\":1}");
        assert!(source.receive(10).await.unwrap().is_empty());
        assert!(source.is_drained().await.unwrap());
        let again = FileSource::open(&path, None).unwrap().receive(10).await.unwrap();
        assert_eq!(again[0].message_id, batch[0].message_id);
        assert_eq!(again[0].sent_at, batch[0].sent_at);
    }

    #[test]
    fn keys_match_what_seed_attaches_to_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        std::fs::write(&path, "x\n\ny\n").unwrap();
        let seeded = crate::seed::file_messages(&path, true).unwrap();
        let digest = file_digest(&path).unwrap();
        assert_eq!(seeded[1].key.as_deref(), Some(FileSource::key(&digest, 3).as_str()));
    }
}
