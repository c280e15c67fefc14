//! TLS to Postgres against a TLS-only server of the tests' own (`support::tls_server`, as RDS with
//! `rds.force_ssl`): the binary migrates and drains into it with `verify-full`, serves `/readyz` and
//! `stats` over it; each failure is one line that says why and never shows the password.

use std::time::{Duration, Instant};

use pii_ingest::db;

use crate::support::binary::{self, Running, free_port, get, ok, run as pii_ingest, with};
use crate::support::tls_server::{PASSWORD, TlsServer, plain_server, tls_server};
use crate::support::{TestDb, TestQueue, binary_env};

/// A database name of its own on the TLS-only server (the cluster is thrown away after the run).
fn database_name() -> String {
    format!("pii_it_{}", uuid::Uuid::new_v4().simple())
}

/// The binary's environment for `database` on the TLS-only server, TLS given as the config keys.
fn tls_env(server: &TlsServer, database: &str, queue: &TestQueue, dir: &std::path::Path) -> Vec<(String, String)> {
    let db = TestDb { url: server.url("localhost", database, "") };
    let env = binary_env(&db, queue, dir);
    let env = with(&env, "PII_INGEST__POSTGRES__SSLMODE", "verify-full");
    with(&env, "PII_INGEST__POSTGRES__SSLROOTCERT", &server.ca.display().to_string())
}

/// Runs `pii-ingest migrate` expecting it to fail: its stderr, checked to be one line without the
/// password.
fn migrate_fails(env: &[(String, String)]) -> String {
    let output = pii_ingest(env, &["migrate"]);
    let stderr = String::from_utf8_lossy(&output.stderr).trim_end().to_owned();
    assert!(!output.status.success(), "migrate succeeded: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line:\n{stderr}");
    assert!(!stderr.contains(PASSWORD), "the password leaked: {stderr}");
    assert!(stderr.contains("postgres://pii_tls:[redacted]@"), "{stderr}");
    stderr
}

#[tokio::test]
async fn verify_full_migrates_and_drains_the_sample_into_a_tls_only_server() {
    let (server, queue, dir) = (tls_server(), TestQueue::new(5).await, tempfile::tempdir().unwrap());
    let database = database_name();
    let env = tls_env(server, &database, &queue, dir.path());
    let sample = crate::support::SAMPLE;

    ok(pii_ingest(&env, &["migrate"]));
    ok(pii_ingest(&env, &["seed", "--file", sample]));
    let report: serde_json::Value =
        serde_json::from_str(&ok(pii_ingest(&env, &["run", "--until-empty", "--json"]))).unwrap();
    assert_eq!((report["written"].as_u64(), report["quarantined"]["missing_field"].as_u64()), (Some(99), Some(1)));
    assert!(ok(pii_ingest(&env, &["stats"])).contains("99"));

    let db = TestDb { url: server.url("localhost", &database, &server.verify_full()) };
    assert_eq!(db.rows().await, 99);
}

#[tokio::test]
async fn readyz_answers_over_tls_and_the_insert_writer_uses_it_too() {
    let (server, queue, dir) = (tls_server(), TestQueue::new(5).await, tempfile::tempdir().unwrap());
    let database = database_name();
    let listen = format!("127.0.0.1:{}", free_port());
    let env = with(&tls_env(server, &database, &queue, dir.path()), "PII_INGEST__METRICS__LISTEN", &listen);
    let env = with(&env, "PII_INGEST__POSTGRES__WRITE_METHOD", "insert");
    ok(pii_ingest(&env, &["migrate"]));
    queue.send_bodies(crate::support::logins(5)).await;

    let running = Running(binary::command(&env, &["run"]).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let db = TestDb { url: server.url("localhost", &database, &server.verify_full()) };
    while get(&listen, "/readyz").map(|(status, _)| status) != Some(200) || db.rows().await < 5 {
        assert!(Instant::now() < deadline, "not ready, or the rows never came: {:?}", get(&listen, "/readyz"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(running.stop().success());
}

#[tokio::test]
async fn a_wrong_ca_fails_with_one_line_that_says_so() {
    let (server, queue, dir) = (tls_server(), TestQueue::new(5).await, tempfile::tempdir().unwrap());
    let env = tls_env(server, &database_name(), &queue, dir.path());
    let env = with(&env, "PII_INGEST__POSTGRES__SSLROOTCERT", &server.other_ca.display().to_string());
    let line = migrate_fails(&env);
    let want =
        format!("TLS: the server certificate is not signed by the CA in sslrootcert={}", server.other_ca.display());
    assert!(line.starts_with("error: cannot connect to Postgres at ") && line.ends_with(&want), "{line}");
}

#[tokio::test]
async fn a_wrong_host_name_fails_with_one_line_that_says_so() {
    let (server, queue, dir) = (tls_server(), TestQueue::new(5).await, tempfile::tempdir().unwrap());
    let database = database_name();
    let env = tls_env(server, &database, &queue, dir.path());
    let env = with(&env, "PII_INGEST__POSTGRES__URL", &server.url("127.0.0.1", &database, ""));
    let line = migrate_fails(&env);
    assert!(
        line.ends_with("TLS: the server certificate is not valid for host 127.0.0.1 (it names localhost)"),
        "{line}"
    );
}

#[tokio::test]
async fn sslmode_disable_gets_the_servers_refusal_in_one_line() {
    let (server, queue, dir) = (tls_server(), TestQueue::new(5).await, tempfile::tempdir().unwrap());
    let env = tls_env(server, &database_name(), &queue, dir.path());
    // The URL's parameter wins over the config key (verify-full in tls_env).
    let env = with(&env, "PII_INGEST__POSTGRES__URL", &server.url("localhost", "pii_x", "sslmode=disable"));
    let line = migrate_fails(&env);
    assert!(line.contains("the server refused the connection: FATAL: no pg_hba.conf entry for host"), "{line}");
    assert!(line.contains("no encryption (the server takes TLS connections only"), "{line}");
}

/// Whether the session of a new connection to `url` is encrypted (from `pg_stat_ssl`).
async fn encrypted(url: &str) -> bool {
    let client = db::connect_client(url).await.unwrap_or_else(|e| panic!("{:#}", anyhow::Error::new(e)));
    let rows = client.simple_query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await.unwrap();
    let ssl = rows.iter().find_map(|message| match message {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    ssl.expect("pg_stat_ssl has a row for this backend") == "true"
}

#[tokio::test]
async fn prefer_encrypts_where_it_can_and_falls_back_to_plaintext_where_it_cannot() {
    assert!(encrypted(&tls_server().url("localhost", "postgres", "")).await);
    assert!(!encrypted(&plain_server().url("localhost", "postgres", "sslmode=prefer")).await);
    // The main test server (Debian's ssl = on with its snakeoil certificate) still works unchanged.
    encrypted(&format!("{}/postgres", crate::support::server_url())).await;
}

#[tokio::test]
async fn require_encrypts_without_a_ca_and_fails_in_one_line_against_a_server_without_tls() {
    assert!(encrypted(&tls_server().url("127.0.0.1", "postgres", "sslmode=require")).await);
    let url = plain_server().url("localhost", "postgres", "sslmode=require");
    let error = db::connect_client(&url).await.expect_err("the plain server has ssl off");
    let error = format!("{:#}", anyhow::Error::new(error)); // as the binary prints it
    assert!(
        error.ends_with("TLS: the server does not accept TLS connections, and sslmode=require requires TLS"),
        "{error}"
    );
    assert!(!error.contains(PASSWORD) && !error.contains('\n'), "{error}");
}

#[tokio::test]
async fn scram_is_bound_to_the_tls_session() {
    // channel_binding=require makes tokio-postgres refuse SCRAM without SCRAM-SHA-256-PLUS.
    let server = tls_server();
    for query in
        [format!("{}&channel_binding=require", server.verify_full()), "sslmode=require&channel_binding=require".into()]
    {
        let client = db::connect_client(&server.url("localhost", "postgres", &query))
            .await
            .unwrap_or_else(|e| panic!("{:#}", anyhow::Error::new(e)));
        client.simple_query("SELECT 1").await.unwrap();
    }
}
