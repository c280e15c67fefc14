//! The sections of the configuration file that shape the work (`[pipeline]`, `[validation]`,
//! `[fields]`, `[ledger]`, ...): their keys, defaults and the checks each section can make on its
//! own; the two services' sections are in [`super::services`]. Plain data: what they describe is built elsewhere
//! ([`crate::startup`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, invalid};

/// How long rows and quarantine records are kept (`[retention]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Rows and quarantine records whose date is older than this many days are removed by
    /// `pii-ingest retention`; unset: kept forever.
    pub days: Option<u32>,
}

/// The names a producer may give each login field (`[fields]`); a body may use any one of them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldsConfig {
    pub user_id: Vec<String>,
    pub app_version: Vec<String>,
    pub device_type: Vec<String>,
    pub ip: Vec<String>,
    pub device_id: Vec<String>,
    pub locale: Vec<String>,
}

impl Default for FieldsConfig {
    fn default() -> Self {
        let one = |name: &str| vec![name.to_owned()];
        FieldsConfig {
            user_id: one("user_id"),
            app_version: one("app_version"),
            device_type: one("device_type"),
            ip: one("ip"),
            device_id: one("device_id"),
            locale: one("locale"),
        }
    }
}

impl FieldsConfig {
    /// `(config key, names)` per field, in [`crate::event::Field::ALL`] order.
    pub fn lists(&self) -> [(&'static str, &[String]); 6] {
        [
            ("fields.user_id", &self.user_id),
            ("fields.app_version", &self.app_version),
            ("fields.device_type", &self.device_type),
            ("fields.ip", &self.ip),
            ("fields.device_id", &self.device_id),
            ("fields.locale", &self.locale),
        ]
    }

    /// Every field has at least one non-blank name, and no name belongs to two fields.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mut owner: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        for (key, names) in self.lists() {
            if names.is_empty() {
                return Err(invalid(key, "at least one field name"));
            }
            for name in names {
                if name.trim().is_empty() || name.len() > 64 {
                    return Err(invalid(key, "names of 1 to 64 bytes, not blank"));
                }
                if let Some(first) = owner.insert(name, key).filter(|first| *first != key) {
                    return Err(invalid(key, format!("the name {name:?} is already a name of {first}")));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SealingConfig {
    /// Public key file from `pii-ingest keygen`. When set, raw ip and device_id are also stored
    /// sealed to it (recoverable only with the private key, which the ingester never holds).
    pub public_key_file: Option<PathBuf>,
    /// Ids (`x25519-...`) of earlier public keys whose sealed values may still be in the tables
    /// (before a `rekey`). `verify` accepts rows sealed to these or the current key, no other.
    pub retired_key_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address for `/metrics`, `/healthz` and `/readyz` while `run` works; empty disables them.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: "127.0.0.1:9898".into() }
    }
}

impl MetricsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid("metrics.listen", "an address such as 127.0.0.1:9898, or \"\" to disable"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Keep the local skip-cache at all. Off, every redelivery is answered by Postgres' unique key:
    /// still exactly once, a round trip slower per redelivery.
    pub enabled: bool,
    /// Directory of the sled store.
    pub path: PathBuf,
    /// Entries older than this are pruned; keep it >= the queue's message retention (max 14 days).
    pub retention_hours: u64,
    /// Most ids held (a table of about 10.7 bytes each, allocated for the cap); past it the oldest
    /// batches are forgotten, which costs a database round trip if one of them is redelivered.
    pub max_entries: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            enabled: true,
            path: "var/ledger".into(),
            retention_hours: 14 * 24,
            max_entries: crate::ledger::DEFAULT_MAX_ENTRIES,
        }
    }
}

impl LedgerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(invalid("ledger.path", "a directory for the ledger store"));
        }
        if self.max_entries == 0 {
            return Err(invalid("ledger.max_entries", "at least 1 (set ledger.enabled = false for no ledger)"));
        }
        if self.max_entries > crate::ledger::MAX_ENTRIES_LIMIT {
            return Err(invalid(
                "ledger.max_entries",
                format!(
                    "at most {} (its table takes about 10.7 bytes an id, allocated up front)",
                    crate::ledger::MAX_ENTRIES_LIMIT
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskingConfig {
    /// The HMAC key itself (prefer `key_file`, or the env var `PII_INGEST__MASKING__KEY`).
    pub key: Option<Secret>,
    /// A file holding the key (trailing newline ignored).
    pub key_file: Option<PathBuf>,
    /// Name recorded with every row; derived from the key when unset.
    pub key_id: Option<String>,
    /// Ids of earlier masking keys whose rows may still be in the tables (before a `rekey
    /// --tokens`). `verify` accepts rows made with these or the current key, no other.
    pub retired_key_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Concurrent long-poll receivers, pinned. Unset (the default), their number sizes itself
    /// between `min_receivers` and `max_receivers`: it grows while receives come back full and the
    /// pipeline has room, and shrinks when they come back empty.
    pub receivers: Option<usize>,
    /// Fewest receivers when self-sizing: the long polls that watch an idle queue.
    pub min_receivers: usize,
    /// Most receivers when self-sizing.
    pub max_receivers: usize,
    /// Most rows written in one transaction.
    pub batch_max_rows: usize,
    /// Concurrent writer transactions, each on its own connection: while one commits, the next
    /// batch is gathered.
    pub writers: usize,
    /// Longest a received message waits for its batch to fill, in milliseconds.
    pub flush_interval_ms: u64,
    /// Concurrent DeleteMessageBatch calls.
    pub delete_concurrency: usize,
    /// Delete rejected messages once quarantined. Set false to leave them for the queue's redrive
    /// policy (a dead-letter queue); the quarantine record is written either way.
    pub delete_rejected: bool,
    /// `/healthz` turns 503 when no message has reached its fate for this many seconds while
    /// work is waiting (messages in hand, or visible in the queue).
    pub stall_seconds: u64,
    /// Most bytes of message bodies held at once (received, judged, not yet committed).
    /// Receives pause while it is full.
    pub max_inflight_bytes: usize,
    /// Threads of the async runtime. One is the default: the work between SQS and Postgres is mostly
    /// waiting, and a second thread mostly adds wake-ups across threads (a third more CPU per message,
    /// measured, docs/scaling.md). Large batches are judged on blocking threads either way.
    pub worker_threads: usize,
}

/// The default `pipeline.max_inflight_bytes`: 160 MiB. Receives reserve the largest bodies the queue
/// allows (1 MiB each by default), so this is also what caps the receives in flight: 16 of 10
/// messages. At 96 MiB (9 receives) a 20 ms round trip held the drain to 0.77 of its rate at 0 ms
/// (docs/scaling.md); the bytes actually held are the bodies received, a few MiB for small events.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 160 << 20;

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            receivers: None,
            min_receivers: 1,
            max_receivers: 32,
            batch_max_rows: 1000,
            writers: 2,
            flush_interval_ms: 50,
            delete_concurrency: 32,
            delete_rejected: true,
            stall_seconds: 300,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            worker_threads: 1,
        }
    }
}

impl PipelineConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.receivers == Some(0) {
            return Err(invalid("pipeline.receivers", "at least 1 (or unset, to size itself)"));
        }
        if !(1..=256).contains(&self.max_receivers) {
            return Err(invalid("pipeline.max_receivers", "from 1 to 256"));
        }
        if !(1..=self.max_receivers).contains(&self.min_receivers) {
            return Err(invalid("pipeline.min_receivers", "from 1 to pipeline.max_receivers"));
        }
        if !(1..=crate::sink::MAX_ROWS_PER_TRANSACTION).contains(&self.batch_max_rows) {
            return Err(invalid(
                "pipeline.batch_max_rows",
                format!("from 1 to {}", crate::sink::MAX_ROWS_PER_TRANSACTION),
            ));
        }
        if !(1..=16).contains(&self.writers) {
            return Err(invalid("pipeline.writers", "from 1 to 16"));
        }
        if self.delete_concurrency == 0 {
            return Err(invalid("pipeline.delete_concurrency", "at least 1"));
        }
        if self.max_inflight_bytes < crate::source::MAX_BODY_BYTES {
            return Err(invalid("pipeline.max_inflight_bytes", "at least 1048576 (one SQS message of 1 MiB)"));
        }
        if self.stall_seconds == 0 {
            return Err(invalid("pipeline.stall_seconds", "at least 1 second"));
        }
        if !(1..=64).contains(&self.worker_threads) {
            return Err(invalid("pipeline.worker_threads", "from 1 to 64"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Accepted `device_type` values; an empty list accepts any.
    pub device_types: Vec<String>,
    /// Largest body judged, in bytes; a larger one is quarantined as `too_large`.
    pub max_body_bytes: usize,
    /// Most object fields in one body, at any depth; more is `too_many_fields`.
    pub max_fields: usize,
    /// Deepest nesting of objects and arrays; deeper is `too_deep`.
    pub max_depth: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        let limits = crate::event::Limits::default();
        ValidationConfig {
            device_types: crate::event::Rules::default().device_types,
            max_body_bytes: limits.max_body_bytes,
            max_fields: limits.max_fields,
            max_depth: limits.max_depth,
        }
    }
}

impl ValidationConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let limits = self;
        if !(1024..=16 * 1024 * 1024).contains(&limits.max_body_bytes) {
            return Err(invalid("validation.max_body_bytes", "from 1024 to 16777216 bytes"));
        }
        if limits.max_fields < 8 {
            return Err(invalid("validation.max_fields", "at least 8 (a login alone has 6)"));
        }
        if !(2..=crate::event::MAX_DEPTH_LIMIT).contains(&limits.max_depth) {
            return Err(invalid("validation.max_depth", format!("from 2 to {}", crate::event::MAX_DEPTH_LIMIT)));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter; the `RUST_LOG` variable wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, filter: "info".into() }
    }
}
