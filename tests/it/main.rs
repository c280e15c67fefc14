//! Integration tests: the real Postgres and the real SQS emulator (`scripts/emulator.sh start`), one
//! fresh database and one fresh queue per test.

mod alerts;
mod audit;
mod bounded;
mod chaos;
mod cli;
mod deploy;
mod erasure;
mod exactly_once;
mod fates;
mod harness;
mod layout;
mod masking;
mod migrations;
mod partitions;
mod pii_corpus;
mod quarantine;
mod retention;
mod sealing;
mod server;
mod support;
mod tls;
mod verify;
