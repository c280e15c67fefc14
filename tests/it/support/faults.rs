//! A source that wraps the real SQS source to inject the faults SQS produces in production: duplicate
//! deliveries, deletes that fail, consumers slow enough for visibility to expire. Everything else is
//! passed through to the emulator unchanged.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use pii_ingest::source::{Deleted, Delivery, Source, SourceError, SqsSource};

/// Which fault to inject.
pub enum Fault {
    /// Every message delivered twice in the same batch (same id, two receipt handles).
    DoubleDelivery,
    /// Every delete of a first delivery (`ApproximateReceiveCount` 1) fails, as SQS does with a stale
    /// receipt handle; later deliveries delete normally.
    FailFirstDeletes,
    /// No delete ever succeeds: every message comes back after its visibility timeout.
    NeverDelete,
    /// Every delete waits this long first, so another consumer can receive the same message.
    SlowDelete(Duration),
}

pub struct Faulty {
    inner: SqsSource,
    fault: Fault,
    /// Receipt handles of first deliveries (for `FailFirstDeletes`).
    first: Mutex<HashSet<String>>,
}

impl Faulty {
    pub fn new(inner: SqsSource, fault: Fault) -> Self {
        Faulty { inner, fault, first: Mutex::default() }
    }
}

impl Source for Faulty {
    async fn receive(&self, max_messages: usize) -> Result<Vec<Delivery>, SourceError> {
        let batch = self.inner.receive(max_messages).await?;
        Ok(match self.fault {
            Fault::DoubleDelivery => batch.iter().cloned().chain(batch.iter().cloned()).collect(),
            Fault::FailFirstDeletes => {
                let firsts = batch.iter().filter(|d| d.receive_count == 1).map(|d| d.receipt_handle.clone());
                self.first.lock().unwrap().extend(firsts);
                batch
            }
            _ => batch,
        })
    }

    async fn delete(&self, handles: &[String]) -> Result<Deleted, SourceError> {
        match self.fault {
            Fault::NeverDelete => Ok(Deleted { ok: 0, failed: handles.to_vec() }),
            Fault::SlowDelete(delay) => {
                tokio::time::sleep(delay).await;
                self.inner.delete(handles).await
            }
            Fault::FailFirstDeletes => {
                let (fail, pass): (Vec<String>, Vec<String>) = {
                    let first = self.first.lock().unwrap();
                    handles.iter().cloned().partition(|h| first.contains(h))
                };
                let mut outcome = if pass.is_empty() { Deleted::default() } else { self.inner.delete(&pass).await? };
                outcome.failed.extend(fail);
                Ok(outcome)
            }
            Fault::DoubleDelivery => self.inner.delete(handles).await,
        }
    }

    async fn extend(&self, handles: &[String], seconds: u32) -> Result<usize, SourceError> {
        self.inner.extend(handles, seconds).await
    }

    fn visibility_timeout(&self) -> Duration {
        self.inner.visibility_timeout()
    }

    async fn is_drained(&self) -> Result<bool, SourceError> {
        self.inner.is_drained().await
    }
}
