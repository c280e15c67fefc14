//! In-memory stand-ins for a queue and a database, for unit tests of the pipeline core under paused
//! time (`#[tokio::test(start_paused = true)]`). They keep the contracts the pipeline relies on (a
//! key is claimed once; a claim by another body is a conflict; deletes report failed entries) and
//! can be told to fail. Every claim about real SQS and Postgres behaviour is also checked against
//! the emulator and a real database by the integration tests (`tests/it/`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::sink::{NewLogin, NewQuarantined, Sink, SinkError, StoredClaim, Written};
use crate::source::{Deleted, Delivery, Source, SourceError};

/// A queue in memory: receives hand out what was pushed, in order; nothing is ever redelivered.
#[derive(Default)]
pub(super) struct MemorySource {
    queue: Mutex<VecDeque<Delivery>>,
    /// Receipt handles deleted, in order.
    pub deleted: Mutex<Vec<String>>,
    /// Each `extend` call: the handles and the seconds asked for.
    pub extended: Mutex<Vec<(Vec<String>, u32)>>,
    /// Delete calls still to fail as a whole before deletes succeed.
    pub failing_delete_calls: Mutex<usize>,
    /// Receipt handles a delete reports as failed entries, every time.
    pub undeletable: Mutex<HashSet<String>>,
    /// The queue's visibility timeout; 30 s when zero.
    pub visibility: Duration,
    /// How long each receive takes (a round trip; an empty one is a long poll this long).
    pub receive_delay: Duration,
    /// Receives in progress now, and the most at once.
    pub receiving: AtomicUsize,
    pub most_receiving: AtomicUsize,
}

impl MemorySource {
    pub fn with_visibility(visibility: Duration) -> Self {
        MemorySource { visibility, ..MemorySource::default() }
    }

    /// A queue whose every receive takes `delay` (a round trip; an empty receive, a long poll).
    pub fn with_receive_delay(delay: Duration) -> Self {
        MemorySource { receive_delay: delay, ..MemorySource::default() }
    }

    pub fn push(&self, delivery: Delivery) {
        self.queue.lock().unwrap().push_back(delivery);
    }

    pub fn deleted(&self) -> Vec<String> {
        self.deleted.lock().unwrap().clone()
    }
}

impl Source for MemorySource {
    async fn receive(&self, max_messages: usize) -> Result<Vec<Delivery>, SourceError> {
        if !self.receive_delay.is_zero() {
            let now = self.receiving.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_receiving.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.receive_delay).await;
            self.receiving.fetch_sub(1, Ordering::SeqCst);
        }
        let mut queue = self.queue.lock().unwrap();
        let n = max_messages.min(queue.len());
        Ok(queue.drain(..n).collect())
    }

    async fn delete(&self, receipt_handles: &[String]) -> Result<Deleted, SourceError> {
        assert!(receipt_handles.len() <= Self::MAX_BATCH, "a delete of {} handles", receipt_handles.len());
        {
            let mut failing = self.failing_delete_calls.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                return Err(SourceError::Sqs { operation: "DeleteMessageBatch", source: "unreachable".into() });
            }
        }
        let undeletable = self.undeletable.lock().unwrap();
        let (failed, ok): (Vec<String>, Vec<String>) =
            receipt_handles.iter().cloned().partition(|h| undeletable.contains(h));
        let deleted = Deleted { ok: ok.len(), failed };
        self.deleted.lock().unwrap().extend(ok);
        Ok(deleted)
    }

    async fn is_drained(&self) -> Result<bool, SourceError> {
        Ok(self.queue.lock().unwrap().is_empty())
    }

    async fn extend(&self, receipt_handles: &[String], seconds: u32) -> Result<usize, SourceError> {
        assert!(receipt_handles.len() <= Self::MAX_BATCH, "an extend of {} handles", receipt_handles.len());
        self.extended.lock().unwrap().push((receipt_handles.to_vec(), seconds));
        Ok(receipt_handles.len())
    }

    fn visibility_timeout(&self) -> Duration {
        if self.visibility.is_zero() { Duration::from_secs(30) } else { self.visibility }
    }
}

/// How the in-memory database fails a write whose logins hold a poisoned key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Poison {
    /// Refuses the row for its data (a check violation), every time.
    DataError,
    /// Fails with a retryable error every time, the server answering (a trigger that always fails).
    Retryable,
}

#[derive(Default)]
struct Tables {
    claims: HashMap<String, StoredClaim>,
    logins: Vec<NewLogin>,
    quarantined: Vec<NewQuarantined>,
    /// Failures for the next writes, in order, before anything else is looked at.
    next_failures: VecDeque<SinkError>,
    poisoned: HashMap<String, Poison>,
    unhealthy: bool,
    writes: usize,
}

/// A database in memory: one "transaction" per write, all or nothing.
#[derive(Default)]
pub(super) struct MemorySink {
    tables: Mutex<Tables>,
}

/// A failure the pipeline must blame on the rows (split, recheck, refuse).
pub(super) fn data_error() -> SinkError {
    SinkError::Query(DieselError::DatabaseError(DatabaseErrorKind::CheckViolation, Box::new("check".to_owned())))
}

/// A failure the pipeline must retry (the connection, the server).
pub(super) fn retryable_error() -> SinkError {
    SinkError::Timeout { what: "write transaction", after: Duration::from_secs(60) }
}

impl MemorySink {
    /// The next writes fail with these errors, in order.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = SinkError>) {
        self.tables.lock().unwrap().next_failures.extend(errors);
    }

    /// Every write holding `key` fails as `poison` says.
    pub fn poison(&self, key: &str, poison: Poison) {
        self.tables.lock().unwrap().poisoned.insert(key.to_owned(), poison);
    }

    /// Whether `ping` answers.
    pub fn set_healthy(&self, healthy: bool) {
        self.tables.lock().unwrap().unhealthy = !healthy;
    }

    pub fn login_ids(&self) -> Vec<String> {
        self.tables.lock().unwrap().logins.iter().map(|l| l.message_id.clone()).collect()
    }

    /// `(key, reason)` of each quarantine record.
    pub fn quarantined(&self) -> Vec<(String, String)> {
        self.tables.lock().unwrap().quarantined.iter().map(|q| (q.message_id.clone(), q.reason.clone())).collect()
    }

    pub fn writes(&self) -> usize {
        self.tables.lock().unwrap().writes
    }
}

impl Tables {
    fn poisoned_by(&self, keys: &[&str]) -> Option<Poison> {
        keys.iter().filter_map(|k| self.poisoned.get(*k)).max_by_key(|p| **p == Poison::DataError).copied()
    }

    /// Claims `key` for `fingerprint`: `Some(true)` claimed now, `Some(false)` held by the same body,
    /// `None` held by another body.
    fn claim(&mut self, key: &str, fingerprint: &str, key_id: &str) -> Option<bool> {
        match self.claims.get(key) {
            Some(claim) if claim.same_body(fingerprint, key_id) => Some(false),
            Some(_) => None,
            None => {
                let claim = StoredClaim { fingerprint: Some(fingerprint.to_owned()), key_id: Some(key_id.to_owned()) };
                self.claims.insert(key.to_owned(), claim);
                Some(true)
            }
        }
    }
}

impl Sink for MemorySink {
    async fn write(&self, logins: &[NewLogin], quarantined: &[NewQuarantined]) -> Result<Written, SinkError> {
        let mut tables = self.tables.lock().unwrap();
        tables.writes += 1;
        if let Some(error) = tables.next_failures.pop_front() {
            return Err(error);
        }
        // Only a login row can be poisoned: the quarantine record that replaces it is accepted.
        let keys: Vec<&str> = logins.iter().map(|l| l.message_id.as_str()).collect();
        match tables.poisoned_by(&keys) {
            Some(Poison::DataError) => return Err(data_error()),
            Some(Poison::Retryable) => return Err(retryable_error()),
            None => {}
        }
        let mut written = Written::default();
        for login in logins {
            match tables.claim(&login.message_id, &login.body_fingerprint, &login.mask_key_id) {
                Some(true) => {
                    tables.logins.push(login.clone());
                    written.logins.insert(login.message_id.clone());
                }
                Some(false) => {}
                None => {
                    written.conflicts.insert(login.message_id.clone());
                }
            }
        }
        for record in quarantined {
            match tables.claim(&record.message_id, &record.body_hmac, &record.mask_key_id) {
                Some(true) => {
                    tables.quarantined.push(record.clone());
                    written.quarantined.insert(record.message_id.clone());
                }
                Some(false) => {}
                None => {
                    written.conflicts.insert(record.message_id.clone());
                }
            }
        }
        Ok(written)
    }

    async fn claims(&self, keys: &[String]) -> Result<HashMap<String, StoredClaim>, SinkError> {
        let tables = self.tables.lock().unwrap();
        Ok(keys.iter().filter_map(|k| Some((k.clone(), tables.claims.get(k)?.clone()))).collect())
    }

    async fn ping(&self) -> bool {
        !self.tables.lock().unwrap().unhealthy
    }
}

/// A delivery of `body` under the key `sqs:<id>`, its receipt handle `h-<id>-<n>`.
pub(super) fn delivery(id: &str, n: u32, body: &str) -> Delivery {
    Delivery {
        message_id: format!("sqs:{id}"),
        conflict_key: None,
        flaw: None,
        receipt_handle: format!("h-{id}-{n}"),
        body: body.as_bytes().to_vec(),
        sent_at: DateTime::<Utc>::from_timestamp(1_764_547_200, 0).expect("a valid timestamp"),
        receive_count: 1,
    }
}

/// A valid login body whose user is `user`.
pub(super) fn login_body(user: &str) -> String {
    format!(
        r#"{{"user_id":"{user}","app_version":"2.3.0","device_type":"android","ip":"199.172.111.135","locale":"RU","device_id":"593-47-5928"}}"#
    )
}
