//! Sources that wrap the real SQS source to inject the faults SQS produces in production: duplicate
//! deliveries, deletes that fail, consumers slow enough for visibility to expire.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use pii_ingest::source::{Deleted, Delivery, Source, SourceError, SqsSource};

/// Delivers every message twice in the same batch (same id, two receipt handles).
pub struct DoubleDelivery(pub SqsSource);

impl Source for DoubleDelivery {
    async fn receive(&self) -> Result<Vec<Delivery>, SourceError> {
        let batch = self.0.receive().await?;
        Ok(batch.iter().cloned().chain(batch.iter().cloned()).collect())
    }
    async fn delete(&self, handles: &[String]) -> Result<Deleted, SourceError> {
        self.0.delete(handles).await
    }
    async fn extend(&self, handles: &[String], seconds: u32) -> Result<(), SourceError> {
        self.0.extend(handles, seconds).await
    }
    fn visibility_timeout(&self) -> Duration {
        self.0.visibility_timeout()
    }
    async fn is_drained(&self) -> Result<bool, SourceError> {
        self.0.is_drained().await
    }
}

/// Fails every delete of a first delivery (`ApproximateReceiveCount` 1), as SQS does with a stale
/// receipt handle; later deliveries delete normally.
pub struct FailFirstDeletes {
    inner: SqsSource,
    first: Mutex<HashSet<String>>,
}

impl FailFirstDeletes {
    pub fn new(inner: SqsSource) -> Self {
        FailFirstDeletes { inner, first: Mutex::default() }
    }
    fn inner(&self) -> &SqsSource {
        &self.inner
    }
}

impl Source for FailFirstDeletes {
    async fn receive(&self) -> Result<Vec<Delivery>, SourceError> {
        let batch = self.inner().receive().await?;
        let mut first = self.first.lock().unwrap();
        first.extend(batch.iter().filter(|d| d.receive_count == 1).map(|d| d.receipt_handle.clone()));
        Ok(batch)
    }
    async fn delete(&self, handles: &[String]) -> Result<Deleted, SourceError> {
        let (fail, pass): (Vec<String>, Vec<String>) = {
            let first = self.first.lock().unwrap();
            handles.iter().cloned().partition(|h| first.contains(h))
        };
        let mut outcome = if pass.is_empty() { Deleted::default() } else { self.inner().delete(&pass).await? };
        outcome.failed.extend(fail);
        Ok(outcome)
    }
    async fn extend(&self, handles: &[String], seconds: u32) -> Result<(), SourceError> {
        self.inner().extend(handles, seconds).await
    }
    fn visibility_timeout(&self) -> Duration {
        self.inner().visibility_timeout()
    }
    async fn is_drained(&self) -> Result<bool, SourceError> {
        self.inner().is_drained().await
    }
}

/// Never deletes anything: every message comes back after its visibility timeout.
pub struct NeverDelete(pub SqsSource);

impl Source for NeverDelete {
    async fn receive(&self) -> Result<Vec<Delivery>, SourceError> {
        self.0.receive().await
    }
    async fn delete(&self, handles: &[String]) -> Result<Deleted, SourceError> {
        Ok(Deleted { ok: 0, failed: handles.to_vec() })
    }
    async fn extend(&self, handles: &[String], seconds: u32) -> Result<(), SourceError> {
        self.0.extend(handles, seconds).await
    }
    fn visibility_timeout(&self) -> Duration {
        self.0.visibility_timeout()
    }
    async fn is_drained(&self) -> Result<bool, SourceError> {
        self.0.is_drained().await
    }
}

/// Waits before every delete, long enough for the visibility timeout to expire and another consumer
/// to receive the same message.
pub struct SlowDelete(pub SqsSource, pub Duration);

impl Source for SlowDelete {
    async fn receive(&self) -> Result<Vec<Delivery>, SourceError> {
        self.0.receive().await
    }
    async fn delete(&self, handles: &[String]) -> Result<Deleted, SourceError> {
        tokio::time::sleep(self.1).await;
        self.0.delete(handles).await
    }
    async fn extend(&self, handles: &[String], seconds: u32) -> Result<(), SourceError> {
        self.0.extend(handles, seconds).await
    }
    fn visibility_timeout(&self) -> Duration {
        self.0.visibility_timeout()
    }
    async fn is_drained(&self) -> Result<bool, SourceError> {
        self.0.is_drained().await
    }
}
