//! Bounded and never hung: a Postgres connection blackholed by a proxy, a database that turns
//! read-only and back (both write methods), a FIFO queue refused at startup. Each runs the real
//! binary against the real Postgres and emulator; waits are generous and nothing asserts on speed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::support::binary::{self, free_port, serve, with};
use crate::support::proxy::Proxy;
use crate::support::{TestDb, TestEnv, TestQueue, binary_env, logins, server_url};

/// `GET addr/path` off the runtime's threads (the proxy under test runs on them).
async fn http(addr: &str, path: &str) -> Option<(u16, String)> {
    let (addr, path) = (addr.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || binary::get(&addr, &path)).await.unwrap()
}

/// Polls `addr/path` until `want` holds for (status, body); fails the test after `limit`.
async fn wait_http(addr: &str, path: &str, limit: Duration, want: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        last = http(addr, path).await;
        if let Some((status, body)) = &last
            && want(*status, body)
        {
            return body.clone();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{path} never reached the expected state within {limit:?}; last answer: {last:?}");
}

/// Polls until `probe` returns `want`; fails the test after `limit`.
async fn wait_until<F: Future<Output = i64>>(what: &str, limit: Duration, want: i64, probe: impl Fn() -> F) {
    let deadline = Instant::now() + limit;
    loop {
        let got = probe().await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what} stayed at {got}, expected {want}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The Postgres server's address, from a database URL `postgres://user@host:port/db`.
async fn postgres_addr(url: &str) -> SocketAddr {
    let authority = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    tokio::net::lookup_host(host_port).await.unwrap().next().unwrap()
}

/// `url` with its host:port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
    format!("{scheme}://{user}{addr}/{path}")
}

/// Runs `sql` on the server's `postgres` database (ALTER DATABASE cannot run in a read-only one).
async fn admin(sql: &str) {
    let mut conn = AsyncPgConnection::establish(&format!("{}/postgres", server_url())).await.unwrap();
    diesel::sql_query(sql).execute(&mut conn).await.unwrap();
}

/// Short limits, so a stall is noticed within seconds rather than the production minutes.
fn short_limits(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    for (key, value) in [
        ("PII_INGEST__POSTGRES__CONNECT_TIMEOUT_SECONDS", "3"),
        ("PII_INGEST__POSTGRES__STATEMENT_TIMEOUT_SECONDS", "3"),
        ("PII_INGEST__POSTGRES__WRITE_TIMEOUT_SECONDS", "5"),
        ("PII_INGEST__PIPELINE__STALL_SECONDS", "8"),
    ] {
        env = with(&env, key, value);
    }
    env
}

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_connection_blackholed_for_20_s_stalls_readiness_then_the_drain_finishes() {
    let TestEnv { db, queue } = TestEnv::new(10).await;
    let proxy = Proxy::start(postgres_addr(&db.url).await).await;
    let dir = tempfile::tempdir().unwrap();
    let env = short_limits(&binary_env(&db, &queue, dir.path()));
    let env = with(&env, "PII_INGEST__POSTGRES__URL", &via(&db.url, proxy.addr));
    let addr = format!("127.0.0.1:{}", free_port());
    let child = serve(&env, &addr);
    queue.send_bodies(logins(50)).await;
    wait_until("rows", LONG, 50, || db.rows()).await;

    proxy.blackhole(true);
    let blackholed_at = Instant::now();
    queue.send_bodies(logins(50)).await;
    let ready = wait_http(&addr, "/readyz", LONG, |s, b| s == 503 && b.contains("postgres: unreachable")).await;
    assert!(ready.contains("sqs: ok"), "{ready}");
    let health = wait_http(&addr, "/healthz", LONG, |s, _| s == 503).await;
    assert!(health.contains("no progress"), "{health}");
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(blackholed_at.elapsed())).await;
    assert_eq!(db.rows().await, 50, "nothing can be written through the blackhole");
    assert_eq!(queue.depth().await, 50, "nothing is deleted before its commit");
    assert_eq!(http(&addr, "/readyz").await.map(|r| r.0), Some(503), "still unready after 20 s");

    proxy.blackhole(false);
    wait_until("rows", LONG, 100, || db.rows()).await;
    wait_until("queue depth", LONG, 0, || async { queue.depth().await as i64 }).await;
    wait_http(&addr, "/readyz", LONG, |s, _| s == 200).await;
    wait_http(&addr, "/healthz", LONG, |s, _| s == 200).await;
    assert!(child.stop().success(), "SIGTERM exits 0");
    assert_eq!(db.rows().await, 100);
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages").await, 0);
    drop(proxy);
}

/// A failover seen from the ingester: the database turns read-only and its sessions are cut; the
/// sessions it opens meanwhile are read-only for their whole life, so only dropping them recovers.
async fn read_only_then_writable_again(write_method: &str) {
    let TestEnv { db, queue } = TestEnv::new(10).await;
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let env = short_limits(&binary_env(&db, &queue, dir.path()));
    let env = with(&env, "PII_INGEST__POSTGRES__WRITE_METHOD", write_method);
    let addr = format!("127.0.0.1:{}", free_port());
    let child = serve(&env, &addr);
    queue.send_bodies(logins(30)).await;
    wait_until("rows", LONG, 30, || db.rows()).await;

    admin(&format!("ALTER DATABASE {name} SET default_transaction_read_only = on")).await;
    admin(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")).await;
    queue.send_bodies(logins(30)).await;
    let ready = wait_http(&addr, "/readyz", LONG, |s, b| s == 503 && b.contains("postgres: read-only")).await;
    assert!(ready.contains("transaction_read_only"), "{ready}");
    // Long enough for the ingester to have received the new messages and failed to write them.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(db.rows().await, 30, "nothing is written to a read-only database");
    assert_eq!(queue.depth().await, 30, "nothing is deleted before its commit");

    admin(&format!("ALTER DATABASE {name} SET default_transaction_read_only = off")).await;
    wait_until("rows", LONG, 60, || db.rows()).await;
    wait_until("queue depth", LONG, 0, || async { queue.depth().await as i64 }).await;
    wait_http(&addr, "/readyz", LONG, |s, _| s == 200).await;
    assert!(child.stop().success(), "SIGTERM exits 0");
    assert_eq!(db.rows().await, 60);
}

#[tokio::test]
async fn a_read_only_database_is_waited_out_and_nothing_is_lost_with_copy() {
    read_only_then_writable_again("copy").await;
}

#[tokio::test]
async fn a_read_only_database_is_waited_out_and_nothing_is_lost_with_insert() {
    read_only_then_writable_again("insert").await;
}

#[tokio::test]
async fn a_fifo_queue_is_refused_with_one_line_naming_it() {
    let db = TestDb::new().await;
    let client = TestQueue::new(5).await;
    let name = format!("it-{}.fifo", uuid::Uuid::new_v4().simple());
    let created = client
        .client
        .create_queue()
        .queue_name(&name)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap();
    let fifo = TestQueue { client: client.client.clone(), name: name.clone(), url: created.queue_url.unwrap() };
    let dir = tempfile::tempdir().unwrap();
    let output = binary::run(&binary_env(&db, &fifo, dir.path()), &["run", "--until-empty"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(&name) && errors[0].contains("FIFO"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_bodies_drain_under_a_two_mib_budget_and_each_meets_its_fate() {
    use std::sync::Arc;

    use crate::support::{drain, pipeline, settings};
    let TestEnv { db, queue } = TestEnv::new(30).await;
    let padding = "x".repeat(1_000_000);
    let big_logins: Vec<String> = logins(6)
        .iter()
        .map(|l| format!("{}, \"padding\": \"{padding}\"}}", l.trim_end().trim_end_matches('}')))
        .collect();
    let big_garbage: Vec<String> = (0..3).map(|i| format!("{i}{}", "z".repeat(1_000_000))).collect();
    let mut bodies: Vec<String> = logins(20);
    bodies.extend(big_logins);
    bodies.extend(big_garbage);
    // One by one: a batch send is capped at 1 MiB in total.
    for body in bodies {
        queue.client.send_message().queue_url(&queue.url).message_body(body).send().await.unwrap();
    }
    let mut settings = settings();
    settings.max_inflight_bytes = 2 << 20;
    let ledger = Arc::new(pii_ingest::ledger::Ledger::temporary());
    let report = drain(pipeline(queue.source().await, &db, ledger, settings), Duration::from_secs(300)).await;
    assert!(report.reconciles(), "{report}");
    assert_eq!((report.received, report.written, report.quarantined_total()), (29, 26, 3), "{report}");
    assert_eq!(report.quarantined.get("not_json"), Some(&3), "{report}");
    assert_eq!(db.rows().await, 26);
    let padded = db.count("SELECT count(*) AS n FROM quarantined_messages WHERE body_bytes > 1000000").await;
    assert_eq!(padded, 3, "each 1 MiB reject is recorded with its length");
    assert_eq!(queue.depth().await, 0, "every message deleted after its commit");
}

#[tokio::test]
async fn a_visibility_change_counts_only_the_entries_sqs_confirmed() {
    use pii_ingest::source::Source;
    let queue = TestQueue::new(30).await;
    queue.send_bodies(logins(1)).await;
    let source = queue.source().await;
    let mut received = Vec::new();
    for _ in 0..10 {
        received.extend(source.receive(10).await.unwrap());
        if !received.is_empty() {
            break;
        }
    }
    assert_eq!(received.len(), 1, "the message is received");
    let handles = vec![received[0].receipt_handle.clone(), "not-a-receipt-handle".to_owned()];
    assert_eq!(source.extend(&handles, 60).await.unwrap(), 1, "the bogus entry is not counted");
    assert_eq!(source.delete(&handles[..1]).await.unwrap().ok, 1);
}
