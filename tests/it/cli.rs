//! The binary as a user runs it: migrate, seed, run --until-empty, twice.

use crate::support::binary::{ok, run as pii_ingest, with};
use crate::support::{TestEnv, binary_env};

#[tokio::test]
async fn seeding_the_sample_twice_and_draining_twice_writes_it_once() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let env = binary_env(&db, &queue, dir.path());
    let sample = crate::support::SAMPLE;

    ok(pii_ingest(&env, &["migrate"]));
    assert!(ok(pii_ingest(&env, &["seed", "--file", sample])).contains("sent 100 messages"));
    let first = ok(pii_ingest(&env, &["run", "--until-empty", "--json"]));
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!((first["written"].as_u64(), first["quarantined"]["missing_field"].as_u64()), (Some(99), Some(1)));

    ok(pii_ingest(&env, &["seed", "--file", sample]));
    let second = ok(pii_ingest(&env, &["run", "--until-empty"]));
    assert!(second.contains("rows written                0"), "{second}");
    assert!(second.contains("duplicates skipped        100"), "{second}");
    assert!(second.contains("reconciliation      ok"), "{second}");
    assert_eq!(db.rows().await, 99);
}

#[tokio::test]
async fn replay_without_the_ledger_never_opens_the_store() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let env = binary_env(&db, &queue, dir.path());
    let sample = crate::support::SAMPLE;
    let report = ok(pii_ingest(&env, &["replay", "--file", sample, "--no-ledger"]));
    assert!(report.contains("rows written               99"), "{report}");
    // Opening sled would have created the store (and taken its lock).
    assert!(!dir.path().join("ledger").exists(), "replay --no-ledger created the ledger store");
}

#[tokio::test]
async fn run_refuses_to_start_without_a_masking_key() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<_> = binary_env(&db, &queue, dir.path()).into_iter().filter(|(k, _)| !k.contains("MASKING")).collect();
    let output = pii_ingest(&env, &["run", "--until-empty"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("masking.key") && stderr.contains("32 bytes"), "{stderr}");
}

#[tokio::test]
async fn a_bad_setting_is_one_line_naming_the_key() {
    let output = pii_ingest(&[("PII_INGEST__SQS__WAIT_TIME_SECONDS".into(), "99".into())], &["check-config"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim(), "error: configuration key `sqs.wait_time_seconds`: a number of seconds from 0 to 20");
}

#[tokio::test]
async fn a_config_file_that_does_not_exist_is_one_line_naming_it() {
    let output = crate::support::binary::bare()
        .args(["--config", "/nonexistent/pii-ingest.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "not silent defaults");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim(),
        "error: configuration file /nonexistent/pii-ingest.toml: No such file or directory (os error 2)"
    );
}

#[tokio::test]
async fn completions_are_printed_for_bash_zsh_and_fish_without_any_configuration() {
    for (shell, marker) in
        [("bash", "complete -F _pii__ingest"), ("zsh", "#compdef pii-ingest"), ("fish", "complete -c pii-ingest")]
    {
        let output = crate::support::binary::bare()
            .args(["--config", "/nonexistent/pii-ingest.toml", "completions", shell])
            .output()
            .unwrap();
        let script = ok(output);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("check-config") && script.contains("until-empty"), "{shell} knows the subcommands");
    }
    assert!(!pii_ingest(&[], &["completions", "tcsh"]).status.success(), "an unknown shell is refused");
}

#[tokio::test]
async fn logs_and_reports_into_a_pipe_carry_no_terminal_escape_codes() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let env = with(&binary_env(&db, &queue, dir.path()), "PII_INGEST__LOG__FILTER", "info");
    let sample = crate::support::SAMPLE;
    let mut printed = Vec::new();
    for args in [&["seed", "--file", sample][..], &["run", "--until-empty"], &["stats"]] {
        let output = pii_ingest(&env, args);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        printed.extend(output.stdout);
        printed.extend(output.stderr);
    }
    let printed = String::from_utf8_lossy(&printed);
    assert!(printed.contains(" INFO "), "the run logged at info: {printed}");
    assert!(!printed.contains('\x1b'), "an escape code reached a pipe: {printed:?}");
}

#[tokio::test]
async fn check_config_never_prints_the_key() {
    let key = "a-very-secret-masking-key-that-is-long-enough";
    let output = pii_ingest(&[("PII_INGEST__MASKING__KEY".into(), key.into())], &["check-config"]);
    let text = ok(output);
    assert!(!text.contains(key), "{text}");
    assert!(text.contains("masking key: ok"), "{text}");
}

#[tokio::test]
async fn no_raw_pii_reaches_any_output_or_the_ledger_even_at_trace_level() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = binary_env(&db, &queue, dir.path());
    env.retain(|(k, _)| !k.ends_with("LOG__FILTER"));
    env.push(("RUST_LOG".into(), "trace".into()));
    // The sample plus bad messages that carry PII in every position a log could pick it up from.
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/pii-corpus.jsonl");
    let sample = crate::support::SAMPLE;
    let mut raw: Vec<String> = Vec::new();
    for line in std::fs::read_to_string(sample).unwrap().lines().chain(std::fs::read_to_string(corpus).unwrap().lines())
    {
        if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(line) {
            for field in ["ip", "device_id"] {
                match o.get(field) {
                    Some(serde_json::Value::String(s)) => raw.push(s.clone()),
                    Some(other) if !other.is_null() => raw.push(other.to_string()),
                    _ => {}
                }
            }
        }
    }
    raw.push("203.0.113.99".into()); // inside the non-JSON line of the corpus
    raw.push("888-99-0000".into());
    raw.push("198.51.100.13".into());
    assert!(raw.len() > 200);

    let mut output = String::new();
    let mut run = |args: &[&str]| {
        let out = pii_ingest(&env, args);
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{output}");
    };
    run(&["migrate"]);
    run(&["seed", "--file", sample]);
    run(&["seed", "--file", corpus]);
    run(&["run", "--until-empty"]);
    assert!(output.contains("TRACE") || output.contains("DEBUG"), "the run really logged verbosely");

    let mut ledger_bytes = Vec::new();
    for entry in walk(&dir.path().join("ledger")) {
        ledger_bytes.extend(std::fs::read(entry).unwrap());
    }
    let ledger_text = String::from_utf8_lossy(&ledger_bytes);
    for value in &raw {
        assert!(!output.contains(value.as_str()), "raw value {value:?} reached the output");
        assert!(!ledger_text.contains(value.as_str()), "raw value {value:?} reached the ledger");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[tokio::test]
async fn a_ledger_kept_across_a_database_wipe_is_cleared_not_trusted() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let env = binary_env(&db, &queue, dir.path());
    let sample = crate::support::SAMPLE;
    ok(pii_ingest(&env, &["seed", "--file", sample]));
    ok(pii_ingest(&env, &["run", "--until-empty"]));
    assert_eq!(db.rows().await, 99);

    // The database is dropped and recreated; the ledger directory survives with all 100 ids.
    db.execute(
        "DROP TABLE user_logins, quarantined_messages, message_claims, ingest_meta, reveal_audit, rekey_audit, erasure_audit, \
         retention_audit, __diesel_schema_migrations CASCADE",
    )
    .await;
    db.execute("DROP FUNCTION user_logins_ensure_partitions, user_logins_partitions").await;
    ok(pii_ingest(&env, &["migrate"]));
    ok(pii_ingest(&env, &["seed", "--file", sample]));
    let again = ok(pii_ingest(&env, &["run", "--until-empty"]));
    assert!(again.contains("rows written               99"), "{again}");
    assert_eq!(db.rows().await, 99);
}

#[tokio::test]
async fn replaying_a_file_twice_or_after_seeding_it_writes_it_once() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let env = binary_env(&db, &queue, dir.path());
    let sample = crate::support::SAMPLE;

    let first: serde_json::Value =
        serde_json::from_str(&ok(pii_ingest(&env, &["replay", "--file", sample, "--json"]))).unwrap();
    assert_eq!((first["written"].as_u64(), first["quarantined"]["missing_field"].as_u64()), (Some(99), Some(1)));
    let second = ok(pii_ingest(&env, &["replay", "--file", sample, "--no-ledger"]));
    assert!(second.contains("(ledger 0, database 100, same batch 0)"), "{second}");
    assert!(second.contains("rows written                0"), "{second}");

    // The same file sent through SQS carries the same keys: nothing new either, even with the
    // ledger gone (the database answers).
    std::fs::remove_dir_all(dir.path().join("ledger")).unwrap();
    ok(pii_ingest(&env, &["seed", "--file", sample]));
    let third = ok(pii_ingest(&env, &["run", "--until-empty"]));
    assert!(third.contains("rows written                0"), "{third}");
    assert_eq!(db.rows().await, 99);
}
