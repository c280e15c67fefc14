//! pii-ingest: drain JSON login events from SQS, mask their PII with a keyed HMAC and load one row per
//! message into PostgreSQL, exactly once.
//!
//! A message flows one way through the crate:
//!
//! ```text
//! source::sqs ──► pipeline ──► event (parse, validate) ──► mask ──► sink::postgres ──► ledger ──► source (delete)
//!   receive 10     batches       login or reject              HMAC     one tx, ON CONFLICT   record    after commit
//! ```
//!
//! | module | role | may touch |
//! | --- | --- | --- |
//! | [`app`] | assemble a pipeline from config; every startup failure | all services |
//! | [`config`] | figment layering (defaults < file < env < flags) and validation | files, env |
//! | [`event`] | the login event: parse, validate, reason codes for rejects | nothing (pure) |
//! | [`mask`] | keyed HMAC-SHA256 tokens, masked bodies for quarantine | nothing (pure) |
//! | [`reveal`] | audited reveal of sealed PII; rekey and token re-derivation | Postgres |
//! | [`seal`] | X25519 sealed boxes: seal with the public key, open with the private | key files |
//! | [`ledger`] | sled skip-cache of committed message ids | its sled directory |
//! | [`source`] | receive / delete / drained? behind the [`source::Source`] trait; SQS impl | SQS |
//! | [`sink`] | one Postgres transaction per batch, `ON CONFLICT (message_id) DO NOTHING` | Postgres |
//! | [`db`] | pool, embedded migrations, database creation | Postgres |
//! | [`pipeline`] | receive -> skip known -> judge -> write -> record -> delete | all of the above |
//! | [`ops`] | `/metrics`, `/healthz`, `/readyz`; polled gauges | SQS, Postgres, ledger |
//! | [`progress`] | progress bars on a terminal, silent elsewhere | stderr |
//! | [`seed`] | load a queue from a JSONL file or with synthetic logins | SQS |
//! | [`summary`] | `pii-ingest stats`: what the database and ledger hold | Postgres, ledger |
//! | [`stats`] | counters for one drain and the reconciliation report | nothing |
//!
//! The invariants (see `docs/exactly-once.md`): Postgres is the source of truth; the ledger is written
//! only after commit and losing it costs speed, never correctness; a message is deleted from SQS only
//! after its row or quarantine record is committed; no raw PII reaches a table, log line, error, the
//! ledger or a metric label.

pub mod app;
pub mod cli;
pub mod config;
pub mod db;
pub mod event;
pub mod ledger;
pub mod mask;
pub mod ops;
pub mod pipeline;
pub mod progress;
pub mod reveal;
pub mod schema;
pub mod seal;
pub mod seed;
pub mod sink;
pub mod source;
pub mod stats;
pub mod summary;
pub mod telemetry;
