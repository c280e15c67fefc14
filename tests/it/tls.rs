//! TLS to Postgres against a TLS-only server of the tests' own (`support::tls_server`): what each
//! sslmode does, and the one line each failure prints.

use pii_ingest::db::tls::Target;

use crate::support::tls_server::{PASSWORD, tls_server};

async fn connect_line(url: &str) -> Result<(), String> {
    let target = Target::parse(url).map_err(|e| e.to_string())?;
    let (client, connection) = target.connect().await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test]
async fn verify_full_with_the_right_ca_connects_to_the_tls_only_server() {
    let server = tls_server();
    connect_line(&server.url("localhost", "postgres", &server.verify_full())).await.unwrap();
}

#[tokio::test]
async fn a_wrong_ca_fails_with_one_line_that_says_so() {
    let server = tls_server();
    let query = format!("sslmode=verify-full&sslrootcert={}", server.other_ca.display());
    let line = connect_line(&server.url("localhost", "postgres", &query)).await.unwrap_err();
    assert_eq!(
        line,
        format!("TLS: the server certificate is not signed by the CA in sslrootcert={}", server.other_ca.display())
    );
    assert!(!line.contains(PASSWORD));
}

#[tokio::test]
async fn a_wrong_host_name_fails_with_one_line_that_says_so() {
    let server = tls_server();
    let line = connect_line(&server.url("127.0.0.1", "postgres", &server.verify_full())).await.unwrap_err();
    assert_eq!(line, "TLS: the server certificate is not valid for host 127.0.0.1 (it names localhost)");
}

#[tokio::test]
async fn sslmode_disable_gets_the_servers_refusal() {
    let server = tls_server();
    let line = connect_line(&server.url("localhost", "postgres", "sslmode=disable")).await.unwrap_err();
    assert!(line.starts_with("the server refused the connection: FATAL: no pg_hba.conf entry"), "{line}");
}

#[tokio::test]
async fn prefer_works_against_the_tls_only_server_and_the_plaintext_one() {
    let server = tls_server();
    connect_line(&server.url("localhost", "postgres", "")).await.unwrap();
    connect_line(&format!("{}/postgres", crate::support::server_url())).await.unwrap();
}

#[tokio::test]
async fn scram_is_bound_to_the_tls_session() {
    // channel_binding=require makes tokio-postgres refuse SCRAM without SCRAM-SHA-256-PLUS.
    let server = tls_server();
    let query = format!("{}&channel_binding=require", server.verify_full());
    connect_line(&server.url("localhost", "postgres", &query)).await.unwrap();
    connect_line(&server.url("localhost", "postgres", "sslmode=require&channel_binding=require")).await.unwrap();
}
