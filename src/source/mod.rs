//! Where messages come from, behind a narrow trait: receive a batch, delete a batch, tell whether the
//! queue is drained. The pipeline knows nothing else about SQS, so tests can wrap the real source to
//! inject faults (duplicate deliveries, failed deletes) while still talking to the emulator.

pub mod envelope;
pub mod file;
pub mod key;
pub mod sqs;

use std::future::Future;

use chrono::{DateTime, Utc};

pub use file::FileSource;
pub use sqs::SqsSource;

/// The largest body SQS delivers (1 MiB, `MaximumMessageSize`'s ceiling): what the pipeline's byte
/// budget reserves per message it asks for, unless the source knows a smaller bound
/// ([`Source::max_body_bytes`]).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// One delivery of one message. A redelivery is a new `Delivery` with the same `message_id` and a new
/// receipt handle.
#[derive(Clone)]
pub struct Delivery {
    /// The dedup key, namespaced by origin ([`key`]): `key:<producer key>` when the message carries
    /// one, else `sqs:<MessageId>`; `key:line:...` for a plain archive line.
    pub message_id: String,
    /// Where this delivery is recorded as a `key_conflict` should its producer key already be claimed
    /// by another body: its own `sqs:<MessageId>` key. `None` when `message_id` is no producer key.
    pub conflict_key: Option<String>,
    /// A fault the source found before the body was judged (an unusable key, a malformed envelope):
    /// the delivery is quarantined for it, whatever its body.
    pub flaw: Option<Flaw>,
    /// What deletes this delivery.
    pub receipt_handle: String,
    /// The raw body. May hold PII: never log it.
    pub body: Vec<u8>,
    /// When the message was first sent (SQS `SentTimestamp`): the same for every redelivery.
    pub sent_at: DateTime<Utc>,
    /// SQS `ApproximateReceiveCount`: 1 on first delivery.
    pub receive_count: i32,
}

/// Why a delivery is refused before its body is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flaw {
    pub reason: crate::event::RejectReason,
    /// The attribute or envelope member to blame.
    pub field: String,
    /// The problem, never quoting a value.
    pub detail: String,
}

/// What a batch delete achieved. Failed entries are harmless: the message comes back and is skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub ok: usize,
    /// Receipt handles that SQS did not delete.
    pub failed: Vec<String>,
}

/// Errors talking to the queue. All are transient from the pipeline's point of view (it backs off and
/// retries), except where a command must report them (a queue that does not exist at start).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("queue {0} does not exist (create it with `pii-ingest seed` or your infrastructure)")]
    QueueNotFound(String),
    #[error("reading the replay file failed")]
    File(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "queue {0} is a FIFO queue, which pii-ingest does not consume: its parallel writers would not keep \
         a message group's order (use a standard queue; see docs/fifo.md)"
    )]
    FifoUnsupported(String),
    #[error("SQS {operation} failed")]
    Sqs {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A queue the pipeline can drain.
pub trait Source: Send + Sync + 'static {
    /// Most deliveries one receive returns, and most receipt handles one delete or extend takes.
    /// SQS's limit (10) is the default: the pipeline sizes its receives and chunks its deletes by it.
    const MAX_BATCH: usize = 10;

    /// Up to `max_messages` (1 to [`Source::MAX_BATCH`]) deliveries; an empty batch after the long-poll wait means
    /// nothing is visible. The pipeline asks for as many as its byte budget has room for.
    fn receive(&self, max_messages: usize) -> impl Future<Output = Result<Vec<Delivery>, SourceError>> + Send;

    /// Deletes up to [`Source::MAX_BATCH`] deliveries by receipt handle and reports each entry's fate.
    fn delete(&self, receipt_handles: &[String]) -> impl Future<Output = Result<Deleted, SourceError>> + Send;

    /// True when the queue holds no visible, in-flight or delayed message.
    fn is_drained(&self) -> impl Future<Output = Result<bool, SourceError>> + Send;

    /// Keeps up to [`Source::MAX_BATCH`] deliveries invisible for another `seconds`, while their batch is still being
    /// worked on. Failures are reported but harmless (the message may be redelivered and skipped).
    /// Returns how many entries the queue confirmed; the others were not extended.
    fn extend(
        &self,
        receipt_handles: &[String],
        seconds: u32,
    ) -> impl Future<Output = Result<usize, SourceError>> + Send;

    /// How long a received message stays invisible (the queue's visibility timeout).
    fn visibility_timeout(&self) -> std::time::Duration;

    /// The largest body this source can deliver: the byte budget reserves this much per message a
    /// receive asks for. SQS enforces a queue's `MaximumMessageSize` on every send, so a queue set
    /// below 1 MiB lets more receives run at once in the same budget.
    fn max_body_bytes(&self) -> usize {
        MAX_BODY_BYTES
    }
}
