//! The sections that say how to reach the two services, `[sqs]` and `[postgres]`: their keys,
//! defaults and the checks each can make on its own. Plain data: the connections are made by
//! [`crate::source::sqs`] and [`crate::db`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, invalid};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqsConfig {
    /// Endpoint of an SQS emulator (LocalStack); unset for real AWS.
    pub endpoint_url: Option<String>,
    pub region: String,
    /// Looked up with GetQueueUrl unless `queue_url` is set.
    pub queue_name: String,
    pub queue_url: Option<String>,
    /// Long-poll wait per receive, 0..=20 seconds.
    pub wait_time_seconds: u32,
    /// Visibility timeout given to queues that `seed` creates, in seconds.
    pub visibility_timeout_seconds: u32,
    /// Static credentials, for an emulator (LocalStack takes any). Unset: the standard AWS chain
    /// (environment, profile, SSO, container or instance role).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// Message attribute a producer may set to an idempotency key; when present it is the dedup key
    /// instead of the SQS MessageId (so a re-sent file is not loaded twice). Empty disables it.
    pub idempotency_key_attribute: Option<String>,
    /// `auto` unwraps SNS notifications and EventBridge events to the login inside; `none` judges
    /// every body as it is.
    pub envelope: crate::event::Envelope,
    /// Longest one HTTP attempt of an SQS call may take, in seconds; a receive gets its long-poll
    /// wait on top. A connection that stops answering is abandoned and the call retried.
    pub attempt_timeout_seconds: u64,
    /// Longest an SQS call may take with all its retries, in seconds; a receive gets its long-poll
    /// wait on top.
    pub operation_timeout_seconds: u64,
}

impl Default for SqsConfig {
    fn default() -> Self {
        SqsConfig {
            endpoint_url: None,
            region: "us-east-1".into(),
            queue_name: "login-queue".into(),
            queue_url: None,
            wait_time_seconds: 20,
            visibility_timeout_seconds: 30,
            access_key_id: None,
            secret_access_key: None,
            idempotency_key_attribute: Some("idempotency-key".into()),
            envelope: crate::event::Envelope::Auto,
            attempt_timeout_seconds: 10,
            operation_timeout_seconds: 30,
        }
    }
}

impl SqsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.wait_time_seconds > 20 {
            return Err(invalid("sqs.wait_time_seconds", "a number of seconds from 0 to 20"));
        }
        if !(1..=43_200).contains(&self.visibility_timeout_seconds) {
            return Err(invalid("sqs.visibility_timeout_seconds", "a number of seconds from 1 to 43200"));
        }
        if self.queue_url.is_none() && self.queue_name.trim().is_empty() {
            return Err(invalid("sqs.queue_name", "a queue name (or set sqs.queue_url)"));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(invalid(
                "sqs.secret_access_key",
                "both sqs.access_key_id and sqs.secret_access_key, or neither",
            ));
        }
        if self.attempt_timeout_seconds == 0 {
            return Err(invalid("sqs.attempt_timeout_seconds", "at least 1 second"));
        }
        if self.operation_timeout_seconds < self.attempt_timeout_seconds {
            return Err(invalid("sqs.operation_timeout_seconds", "at least sqs.attempt_timeout_seconds"));
        }
        if self.region.trim().is_empty() {
            return Err(invalid("sqs.region", "an AWS region such as us-east-1"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    pub url: Secret,
    /// Connections in the pool (the INSERT write method and queries).
    pub pool_size: usize,
    /// `copy` (COPY into a staging table, the fast default) or `insert` (multi-row INSERT).
    pub write_method: crate::sink::WriteMethod,
    /// Longest a new connection may take, handshake included, in seconds.
    pub connect_timeout_seconds: u64,
    /// Server-side `statement_timeout` of the ingester's sessions, in seconds.
    pub statement_timeout_seconds: u64,
    /// Server-side `idle_in_transaction_session_timeout` of the ingester's sessions, in seconds.
    pub idle_in_transaction_timeout_seconds: u64,
    /// Client-side limit on one write transaction, in seconds: a connection that stops answering
    /// (a network that drops packets without closing) is dropped after it and the batch retried.
    pub write_timeout_seconds: u64,
    /// Idle time before TCP keepalive probes start on a Postgres connection, in seconds.
    pub keepalive_idle_seconds: u64,
    /// libpq's `sslmode` for every connection, when `url` has no `sslmode` parameter (the URL wins).
    /// Unset and absent from the URL: `prefer`.
    pub sslmode: Option<crate::db::tls::SslMode>,
    /// CA certificates (a PEM file or bundle, or `system`) when `url` has no `sslrootcert` (the URL
    /// wins). Unset: the system's root certificates.
    pub sslrootcert: Option<PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: Secret("postgres://postgres@127.0.0.1:5432/pii_ingest".into()),
            pool_size: 4,
            write_method: crate::sink::WriteMethod::default(),
            connect_timeout_seconds: 10,
            statement_timeout_seconds: 30,
            idle_in_transaction_timeout_seconds: 60,
            write_timeout_seconds: 60,
            keepalive_idle_seconds: 30,
            sslmode: None,
            sslrootcert: None,
        }
    }
}

impl PostgresConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let url = self.url.expose();
        if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(invalid("postgres.url", "a URL starting with postgres://"));
        }
        if let Err(problem) = crate::db::tls::split_url(url) {
            return Err(invalid("postgres.url", problem.to_string()));
        }
        if self.pool_size == 0 {
            return Err(invalid("postgres.pool_size", "at least 1"));
        }
        self.validate_timeouts()
    }

    fn validate_timeouts(&self) -> Result<(), ConfigError> {
        let positive = [
            ("postgres.connect_timeout_seconds", self.connect_timeout_seconds),
            ("postgres.statement_timeout_seconds", self.statement_timeout_seconds),
            ("postgres.idle_in_transaction_timeout_seconds", self.idle_in_transaction_timeout_seconds),
            ("postgres.keepalive_idle_seconds", self.keepalive_idle_seconds),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(key, "at least 1 second"));
        }
        if self.write_timeout_seconds < self.statement_timeout_seconds {
            return Err(invalid(
                "postgres.write_timeout_seconds",
                "at least postgres.statement_timeout_seconds (the server cancels a slow statement first)",
            ));
        }
        Ok(())
    }
}
