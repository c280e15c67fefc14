//! The SQS implementation of [`Source`]: long-poll receives of 10 with the system attributes the
//! pipeline needs, batch deletes and visibility changes whose every entry is checked, and the queue
//! attributes that tell whether it is drained.
//!
//! Every call has an attempt and an operation timeout (`sqs.attempt_timeout_seconds`,
//! `sqs.operation_timeout_seconds`; a receive gets its long-poll wait on top), so a connection that
//! stops answering fails the call instead of hanging it. FIFO queues are refused at connect: the
//! pipeline's parallel receivers and writers do not keep a message group's order.

use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError;
use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
    QueueAttributeName,
};
use chrono::{DateTime, Utc};

use super::{Deleted, Delivery, MAX_BODY_BYTES, Source, SourceError, key};
use crate::config::SqsConfig;

/// SQS returns at most this many messages per receive, and deletes at most this many per batch.
pub const MAX_BATCH: usize = 10;

/// A connected queue.
#[derive(Clone)]
pub struct SqsSource {
    client: Client,
    /// The same client with the long-poll wait added to its timeouts, for receives. Built once: a
    /// per-call config override rebuilds the client's runtime components on every receive.
    receive_client: Client,
    queue_url: String,
    wait_time_seconds: i32,
    /// Message attribute that carries a producer's idempotency key, if the config names one.
    idempotency_attribute: Option<String>,
    /// The queue's VisibilityTimeout, read at connect.
    visibility_timeout: Duration,
    /// The queue's MaximumMessageSize, read at connect (1 MiB if unreadable).
    max_body_bytes: usize,
}

impl SqsSource {
    /// Resolves the queue named by `config` (its URL, or its name looked up) and checks it exists.
    pub async fn connect(config: &SqsConfig) -> Result<SqsSource, SourceError> {
        let sdk = sdk_config(config).await;
        let client = Client::new(&sdk);
        let wait = Duration::from_secs(config.wait_time_seconds.into());
        let receive_client =
            Client::from_conf(aws_sdk_sqs::config::Builder::from(&sdk).timeout_config(timeouts(config, wait)).build());
        let queue_url = match &config.queue_url {
            Some(url) => url.clone(),
            None => queue_url(&client, &config.queue_name).await?,
        };
        if is_fifo(&queue_url) {
            return Err(SourceError::FifoUnsupported(queue_url));
        }
        let (visibility_timeout, max_body_bytes) = read_queue_limits(&client, &queue_url).await?;
        Ok(SqsSource {
            client,
            receive_client,
            queue_url,
            visibility_timeout,
            max_body_bytes,
            wait_time_seconds: config.wait_time_seconds as i32,
            idempotency_attribute: config.idempotency_key_attribute.clone().filter(|a| !a.is_empty()),
        })
    }

    /// The queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The underlying client (seeding and tests use it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn to_delivery(&self, message: aws_sdk_sqs::types::Message) -> Option<Delivery> {
        let attributes = message.attributes();
        let system = |name: MessageSystemAttributeName| attributes.and_then(|a| a.get(&name)).map(String::as_str);
        let sent_ms = system(MessageSystemAttributeName::SentTimestamp).and_then(|s| s.parse::<i64>().ok());
        let receive_count =
            system(MessageSystemAttributeName::ApproximateReceiveCount).and_then(|s| s.parse().ok()).unwrap_or(1);
        let message_id = message.message_id()?;
        let producer_key = self.idempotency_attribute.as_ref().and_then(|name| {
            // Present but not a string (a binary attribute) is an unusable key too, not "no key".
            Some(message.message_attributes()?.get(name)?.string_value().unwrap_or_default())
        });
        let attribute = self.idempotency_attribute.as_deref().unwrap_or_default();
        let origin =
            message.message_attributes().and_then(|a| a.get(key::ORIGIN_ATTRIBUTE)).and_then(|v| v.string_value());
        let (keys, flaw) = key::keys_or_flaw(message_id, origin, producer_key, attribute);
        Some(Delivery {
            message_id: keys.dedup,
            conflict_key: keys.conflict,
            flaw,
            receipt_handle: message.receipt_handle()?.to_owned(),
            sent_at: sent_ms.and_then(DateTime::from_timestamp_millis).unwrap_or_else(Utc::now),
            receive_count,
            body: message.body.unwrap_or_default().into_bytes(),
        })
    }
}

/// The queue's approximate message counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

impl Depth {
    pub fn total(&self) -> u64 {
        self.visible + self.in_flight + self.delayed
    }
}

impl SqsSource {
    /// Visible, in-flight and delayed message counts (GetQueueAttributes).
    pub async fn depth(&self) -> Result<Depth, SourceError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| sqs_error("GetQueueAttributes", e))?;
        let attributes = output.attributes();
        let get = |name: QueueAttributeName| {
            attributes.and_then(|a| a.get(&name)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        Ok(Depth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}

impl Source for SqsSource {
    const MAX_BATCH: usize = MAX_BATCH;

    async fn receive(&self, max_messages: usize) -> Result<Vec<Delivery>, SourceError> {
        let mut request = self
            .receive_client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max_messages.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(self.wait_time_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount);
        if let Some(name) = &self.idempotency_attribute {
            request = request.message_attribute_names(name);
        }
        request = request.message_attribute_names(key::ORIGIN_ATTRIBUTE);
        let output = request.send().await.map_err(|e| sqs_error("ReceiveMessage", e))?;
        Ok(output.messages.unwrap_or_default().into_iter().filter_map(|m| self.to_delivery(m)).collect())
    }

    async fn delete(&self, receipt_handles: &[String]) -> Result<Deleted, SourceError> {
        let entries = receipt_handles
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .build()
                    .expect("id and receipt handle are both set")
            })
            .collect();
        let output = self
            .client
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sqs_error("DeleteMessageBatch", e))?;
        let failed = output
            .failed()
            .iter()
            .filter_map(|f| f.id().parse::<usize>().ok())
            .filter_map(|i| receipt_handles.get(i).cloned())
            .collect();
        Ok(Deleted { ok: output.successful().len(), failed })
    }

    async fn extend(&self, receipt_handles: &[String], seconds: u32) -> Result<usize, SourceError> {
        let entries = receipt_handles
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .visibility_timeout(seconds as i32)
                    .build()
                    .expect("id and receipt handle are both set")
            })
            .collect();
        let output = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sqs_error("ChangeMessageVisibilityBatch", e))?;
        // Only entries SQS lists as successful count; a failed entry (a stale receipt handle, a
        // message already deleted) keeps its old timeout.
        Ok(output.successful().len())
    }

    fn visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }

    fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    async fn is_drained(&self) -> Result<bool, SourceError> {
        Ok(self.depth().await?.total() == 0)
    }
}

/// The queue's visibility timeout (30 s if unreadable) and its largest body, `MaximumMessageSize`
/// (1 MiB if unreadable; SQS's floor is 1 KiB).
async fn read_queue_limits(client: &Client, queue_url: &str) -> Result<(Duration, usize), SourceError> {
    let output = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .attribute_names(QueueAttributeName::MaximumMessageSize)
        .send()
        .await
        .map_err(|e| sqs_error("GetQueueAttributes", e))?;
    let get = |name: &QueueAttributeName| output.attributes().and_then(|a| a.get(name)).and_then(|v| v.parse().ok());
    let seconds = get(&QueueAttributeName::VisibilityTimeout).unwrap_or(30);
    let max_body = get(&QueueAttributeName::MaximumMessageSize).map_or(MAX_BODY_BYTES, |b| b as usize);
    Ok((Duration::from_secs(seconds), max_body.clamp(1024, MAX_BODY_BYTES)))
}

/// Whether a queue URL (or name) names a FIFO queue: SQS requires their names to end in `.fifo`.
pub fn is_fifo(queue: &str) -> bool {
    queue.trim_end_matches('/').ends_with(".fifo")
}

/// The configured attempt and operation timeouts, each with `extra` on top (a receive's long poll).
fn timeouts(config: &SqsConfig, extra: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_secs(config.attempt_timeout_seconds) + extra)
        .operation_timeout(Duration::from_secs(config.operation_timeout_seconds) + extra)
        .build()
}

/// An SQS client for `config`: its endpoint (an emulator) if set, and static credentials if set,
/// else the standard AWS credential chain. Every call is bounded by the configured timeouts.
pub async fn client(config: &SqsConfig) -> Client {
    Client::new(&sdk_config(config).await)
}

/// The SDK configuration of [`client`]. Stalled-stream protection is off: it arms a timer on every
/// poll of every response body, and the attempt timeout already bounds a call that stops answering.
async fn sdk_config(config: &SqsConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(config.region.clone()))
        .stalled_stream_protection(aws_config::stalled_stream_protection::StalledStreamProtectionConfig::disabled())
        .timeout_config(timeouts(config, Duration::ZERO));
    if let Some(endpoint) = &config.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            id.clone(),
            secret.expose().to_owned(),
            None,
            None,
            "pii-ingest-config",
        ));
    }
    loader.load().await
}

/// The URL of the queue called `name`.
pub async fn queue_url(client: &Client, name: &str) -> Result<String, SourceError> {
    match client.get_queue_url().queue_name(name).send().await {
        Ok(output) => Ok(output.queue_url.unwrap_or_default()),
        Err(e) if e.as_service_error().is_some_and(GetQueueUrlError::is_queue_does_not_exist) => {
            Err(SourceError::QueueNotFound(name.to_owned()))
        }
        Err(e) => Err(sqs_error("GetQueueUrl", e)),
    }
}

fn sqs_error<E>(operation: &'static str, error: E) -> SourceError
where
    E: std::error::Error + Send + Sync + 'static,
{
    SourceError::Sqs { operation, source: Box::new(error) }
}
