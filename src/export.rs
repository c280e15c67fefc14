//! `pii-ingest export`: a queue (a dead-letter queue, typically) written to an envelope JSONL file
//! ([`crate::source::envelope`]), one message a line, keeping what identifies it: its MessageId, its
//! `SentTimestamp`, its string attributes (a producer key among them). `replay` of the file then keys
//! each message exactly as its SQS delivery would, and `seed --file` sends it back under its old id.
//!
//! Draining deletes a message only after its line is written and the file `fsync`ed: a crash loses
//! no message, it may at most leave one both in the file and in the queue (and then the file's
//! replay and the queue's drain are one message, by its key). `--peek` deletes nothing and makes the
//! messages visible again at the end; each peek still counts as a receive towards a redrive policy.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName,
    QueueAttributeName,
};

use crate::source::SourceError;
use crate::source::envelope::Envelope;
use crate::source::sqs::MAX_BATCH;

/// Errors of an export. Nothing is deleted once one happened for the batch at hand.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("SQS did not delete {0} exported message(s); they stay in the queue (and in the file)")]
    NotDeleted(usize),
}

/// What an export did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Exported {
    pub written: usize,
    pub deleted: usize,
}

/// Writes the messages of the queue at `queue_url` to `out` (created, or appended to), up to `max`;
/// deletes each batch once it is on disk unless `peek`.
pub async fn export(
    client: &Client,
    queue_url: &str,
    out: &Path,
    peek: bool,
    max: usize,
) -> Result<Exported, ExportError> {
    let write_error = |source| ExportError::Write { path: out.display().to_string(), source };
    let mut file = File::options().create(true).append(true).open(out).map_err(write_error)?;
    let mut done = Exported::default();
    let mut peeked = Vec::new();
    let mut empty = 0;
    while done.written < max {
        let messages = receive(client, queue_url, (max - done.written).min(MAX_BATCH)).await?;
        if messages.is_empty() {
            // One empty receive is a sample, not proof (SQS answers from a subset of its servers):
            // the export ends when the queue also reports nothing visible, or after a few tries.
            empty += 1;
            if empty >= EMPTY_RECEIVES || visible(client, queue_url).await? == 0 {
                break;
            }
            continue;
        }
        empty = 0;
        let mut lines = Vec::new();
        let mut handles = Vec::new();
        for message in messages {
            let Some((envelope, handle)) = envelope(message) else { continue };
            serde_json::to_writer(&mut lines, &envelope).expect("an envelope serializes");
            lines.push(b'\n');
            handles.push(handle);
        }
        file.write_all(&lines).map_err(write_error)?;
        // On disk before anything is deleted: a crash here leaves the batch in the queue as well.
        file.sync_data().map_err(write_error)?;
        done.written += handles.len();
        if peek {
            peeked.extend(handles);
        } else {
            done.deleted += delete(client, queue_url, &handles).await?;
        }
    }
    for chunk in peeked.chunks(MAX_BATCH) {
        release(client, queue_url, chunk).await?;
    }
    Ok(done)
}

/// Empty receives in a row after which an export ends even if the queue still reports messages
/// (delayed ones, or in flight with another consumer).
const EMPTY_RECEIVES: u32 = 5;

/// Messages the queue reports visible.
async fn visible(client: &Client, queue_url: &str) -> Result<u64, SourceError> {
    let output = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(|e| SourceError::Sqs { operation: "GetQueueAttributes", source: Box::new(e) })?;
    let count = output.attributes().and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages));
    Ok(count.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Up to `n` messages with their MessageId, SentTimestamp and every message attribute, held
/// invisible for the export (long enough for a slow disk; a peek releases them at the end).
async fn receive(client: &Client, queue_url: &str, n: usize) -> Result<Vec<Message>, SourceError> {
    let output = client
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(n as i32)
        .wait_time_seconds(1)
        .visibility_timeout(300)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .message_attribute_names("All")
        .send()
        .await
        .map_err(|e| SourceError::Sqs { operation: "ReceiveMessage", source: Box::new(e) })?;
    Ok(output.messages.unwrap_or_default())
}

/// The envelope of a message and its receipt handle; `None` for a message SQS sent without an id or
/// a handle (never seen; it is left in the queue).
fn envelope(message: Message) -> Option<(Envelope, String)> {
    let sent = message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_default();
    let attributes: BTreeMap<String, String> = message
        .message_attributes()
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| Some((name.clone(), value.string_value()?.to_owned())))
        .collect();
    let envelope = Envelope {
        message_id: message.message_id()?.to_owned(),
        sent_timestamp: sent,
        body: message.body().unwrap_or_default().to_owned(),
        attributes,
    };
    Some((envelope, message.receipt_handle()?.to_owned()))
}

async fn delete(client: &Client, queue_url: &str, handles: &[String]) -> Result<usize, ExportError> {
    let entries = handles
        .iter()
        .enumerate()
        .map(|(i, h)| DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(h).build())
        .collect::<Result<Vec<_>, _>>()
        .expect("id and receipt handle are both set");
    let output = client
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| SourceError::Sqs { operation: "DeleteMessageBatch", source: Box::new(e) })?;
    match output.failed().len() {
        0 => Ok(output.successful().len()),
        n => Err(ExportError::NotDeleted(n)),
    }
}

/// Makes peeked messages visible again at once.
async fn release(client: &Client, queue_url: &str, handles: &[String]) -> Result<(), SourceError> {
    let entries = handles
        .iter()
        .enumerate()
        .map(|(i, h)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(h)
                .visibility_timeout(0)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()
        .expect("id and receipt handle are both set");
    client
        .change_message_visibility_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| SourceError::Sqs { operation: "ChangeMessageVisibilityBatch", source: Box::new(e) })?;
    Ok(())
}
