//! Operability: the metrics endpoint scraped while `run` works, health and readiness, `stats`.

use std::process::Command;
use std::time::Duration;

use crate::support::binary::{free_port, get, ok, run, scrape_until, serve, with};
use crate::support::{TestEnv, binary_env};

#[tokio::test]
async fn metrics_health_and_readiness_are_served_while_running() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let env = binary_env(&db, &queue, dir.path());
    let sample = crate::support::SAMPLE;
    ok(run(&env, &["seed", "--file", sample]));
    let child = serve(&env, &addr);
    // Deletes follow the commit: wait for both, or a scrape between them sees 99 rows and 99 deletes.
    let metrics = scrape_until(&addr, Duration::from_secs(30), |body| {
        ["pii_ingest_rows_written_total 99", "pii_ingest_messages_deleted_total 100", "pii_ingest_queue_messages"]
            .iter()
            .all(|want| body.contains(want))
    })
    .expect("metrics never showed 99 rows written and 100 messages deleted");
    assert!(metrics.contains(r#"pii_ingest_quarantined_total{reason="missing_field"} 1"#), "{metrics}");
    assert!(metrics.contains("pii_ingest_commit_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("pii_ingest_ledger_entries"), "{metrics}");
    let metrics = scrape_until(&addr, Duration::from_secs(30), |body| body.contains("pii_ingest_dependency_up"))
        .expect("metrics never showed pii_ingest_dependency_up");
    assert!(metrics.contains(r#"pii_ingest_dependency_up{dependency="postgres"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"pii_ingest_dependency_up{dependency="sqs"} 1"#), "{metrics}");
    assert!(metrics.contains("# HELP pii_ingest_dependency_up 1 when the dependency answered"), "{metrics}");
    assert_eq!(get(&addr, "/healthz").map(|r| r.0), Some(200));
    let (status, body) = get(&addr, "/readyz").unwrap();
    assert_eq!((status, body.as_str()), (200, "postgres: ok\nsqs: ok\n"));

    assert!(child.stop().success(), "SIGTERM exits 0");
}

/// The readiness gauge the `PiiIngestNotReady` alert watches follows `/readyz`: a database that
/// goes away shows as `pii_ingest_dependency_up{dependency="postgres"} 0` and a 503 naming it.
#[tokio::test]
async fn a_lost_database_shows_in_readyz_and_the_readiness_gauge() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = serve(&binary_env(&db, &queue, dir.path()), &addr);
    scrape_until(&addr, Duration::from_secs(30), |body| {
        body.contains(r#"pii_ingest_dependency_up{dependency="postgres"} 1"#)
    })
    .expect("the ingester never reported Postgres up");
    // Postgres loses the database under the running ingester.
    drop(db);
    let metrics = scrape_until(&addr, Duration::from_secs(30), |body| {
        body.contains(r#"pii_ingest_dependency_up{dependency="postgres"} 0"#)
    });
    let readyz = get(&addr, "/readyz");
    drop(child);
    let metrics = metrics.expect("the gauge never showed Postgres down after its database was dropped");
    assert!(metrics.contains(r#"pii_ingest_dependency_up{dependency="sqs"} 1"#), "{metrics}");
    assert_eq!(readyz, Some((503, "postgres: unreachable\nsqs: ok\n".to_owned())));
}

#[tokio::test]
async fn health_exits_0_while_an_instance_answers_and_1_once_it_is_gone() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    // The health check finds the instance through the same configuration: a wildcard listen
    // address, as in the container, is asked on loopback.
    let port = free_port();
    let env = with(&binary_env(&db, &queue, dir.path()), "PII_INGEST__METRICS__LISTEN", &format!("0.0.0.0:{port}"));
    ok(run(&env, &["seed", "--generate", "5"]));
    let child = serve(&env, &format!("0.0.0.0:{port}"));
    let addr = format!("127.0.0.1:{port}");
    scrape_until(&addr, Duration::from_secs(30), |body| body.contains("pii_ingest_rows_written_total 5"))
        .expect("the instance never wrote its 5 rows");

    let healthy = ok(run(&env, &["health"]));
    assert_eq!(healthy.trim(), format!("ok: http://{addr}/healthz answered 200 ok"));
    assert!(ok(run(&env, &["health", "--ready"])).contains("/readyz answered 200 postgres: ok"));
    assert!(child.stop().success(), "SIGTERM exits 0");

    let gone = run(&env, &["health"]);
    assert_eq!(gone.status.code(), Some(1), "no instance: exit 1");
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(stderr.starts_with(&format!("error: http://{addr}/healthz: ")) && stderr.contains("refused"), "{stderr}");
}

#[tokio::test]
async fn a_live_scrape_passes_promtool_check_metrics() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let env = binary_env(&db, &queue, dir.path());
    let sample = crate::support::SAMPLE;
    ok(run(&env, &["seed", "--file", sample]));
    let child = serve(&env, &addr);
    let metrics = scrape_until(&addr, Duration::from_secs(30), |body| {
        body.contains("pii_ingest_rows_written_total 99") && body.contains("pii_ingest_commit_seconds_bucket")
    })
    .expect("metrics never showed 99 rows written");
    assert!(child.stop().success(), "SIGTERM exits 0");

    let (passed, lint) = promtool_check_metrics(&metrics);
    assert!(passed && lint.trim().is_empty(), "promtool check metrics:\n{lint}\n--- scraped:\n{metrics}");
    let build_info = format!("pii_ingest_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(metrics.contains(&build_info), "{metrics}");
    for series in ["pii_ingest_rows_written_total", "pii_ingest_queue_messages", "pii_ingest_commit_seconds"] {
        assert!(metrics.contains(&format!("# HELP {series} ")), "no HELP for {series}:\n{metrics}");
    }
}

/// `promtool check metrics` on `exposition`: (exit status 0, everything it printed).
fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is needed (Debian: apt-get install prometheus; scripts/test.sh installs it): {e}")
        });
    promtool.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), printed)
}

#[tokio::test]
async fn stats_reports_rows_quarantine_and_ledger() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let env = binary_env(&db, &queue, dir.path());
    let sample = crate::support::SAMPLE;
    let run = |args: &[&str]| {
        let out = crate::support::binary::bare()
            .args(["--config", "/dev/null"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["replay", "--file", sample]);
    let stats: serde_json::Value = serde_json::from_str(&run(&["stats", "--json"])).unwrap();
    assert_eq!(stats["rows"], 99);
    assert_eq!(stats["quarantined"]["missing_field"], 1);
    assert_eq!(stats["ledger_entries"], 100);
    assert_eq!(stats["mask_key_ids"], serde_json::json!(["test-key"]));
    assert!(stats["first_date"].is_string());
    assert!(run(&["stats"]).contains("rows                          99"));
}
