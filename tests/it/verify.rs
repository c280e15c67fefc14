//! `pii-ingest verify` through the binary: it passes on a freshly loaded database, and fails naming
//! the check on one corrupted by hand, one corruption per test. It never prints a raw value.

use crate::support::binary::{ok, run as pii_ingest, with};
use crate::support::{TEST_KEY, TestDb, server_url};

const SAMPLE: &str = crate::support::SAMPLE;
/// Every line is loaded as sent at this time (not the file's modification time), so dates are known.
const SENT_AT: &str = "2026-11-20T23:30:00Z";

/// A database loaded with the sample (sealed to a fresh key pair when `sealed`), the binary's
/// environment for it, and the private key file.
struct Loaded {
    db: TestDb,
    env: Vec<(String, String)>,
    private_key: String,
    _dir: tempfile::TempDir,
}

async fn loaded(sealed: bool) -> Loaded {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    ok(pii_ingest(&[], &["keygen", "--out", keys.to_str().unwrap()]));
    let mut env = vec![
        ("PII_INGEST__POSTGRES__URL".to_owned(), db.url.clone()),
        ("PII_INGEST__LEDGER__PATH".to_owned(), dir.path().join("ledger").display().to_string()),
        ("PII_INGEST__MASKING__KEY".to_owned(), TEST_KEY.to_owned()),
        ("PII_INGEST__MASKING__KEY_ID".to_owned(), "test-key".to_owned()),
        ("PII_INGEST__LOG__FILTER".to_owned(), "warn".to_owned()),
    ];
    if sealed {
        env = with(&env, "PII_INGEST__SEALING__PUBLIC_KEY_FILE", keys.join("seal.pub").to_str().unwrap());
    }
    ok(pii_ingest(&env, &["replay", "--file", SAMPLE, "--sent-at", SENT_AT]));
    let private_key = keys.join("seal.key").display().to_string();
    Loaded { db, env, private_key, _dir: dir }
}

/// Runs `verify` with `args`: (exit code, stdout, stderr).
fn verify(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let out = pii_ingest(env, &[&["verify"], args].concat());
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (out.status.code().expect("verify exits"), text(&out.stdout), text(&out.stderr))
}

/// The check lines of a failed verify's stderr.
fn failed_checks(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("verify: check "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

/// Every ip and device_id of the sample: none may appear in verify's output.
fn raw_values() -> Vec<String> {
    std::fs::read_to_string(SAMPLE)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .flat_map(|v| ["ip", "device_id"].map(|k| v[k].as_str().map(str::to_owned)))
        .flatten()
        .collect()
}

#[tokio::test]
async fn verify_passes_on_a_freshly_loaded_database_and_rederives_sealed_values() {
    let loaded = loaded(true).await;
    let (code, stdout, stderr) = verify(&loaded.env, &["--json", "--private-key-file", &loaded.private_key]);
    let (text_code, text, _) = verify(&loaded.env, &["--private-key-file", &loaded.private_key]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "token_format",
            "key_ids",
            "required_columns",
            "create_date",
            "quarantine_reasons",
            "daily_quarantine_share",
            "sealed_values_rederive"
        ]
    );
    assert!(checks.iter().all(|c| c["verdict"] == "pass" && c["failing"] == 0), "{stdout}");
    let by_name = |name: &str| checks.iter().find(|c| c["name"] == name).unwrap();
    assert_eq!(by_name("token_format")["checked"], 100, "99 rows and 1 quarantine record");
    assert_eq!(by_name("create_date")["checked"], 99);
    assert_eq!(by_name("quarantine_reasons")["checked"], 1);
    assert_eq!(
        by_name("sealed_values_rederive")["checked"],
        100,
        "every sealed row (99) and quarantine record (1) fits in the samples of 100"
    );
    assert_eq!(report["days"].as_array().unwrap().len(), 1);
    assert_eq!(report["days"][0]["date"], "2026-11-20", "the UTC date of sent_at");
    assert_eq!((report["days"][0]["rows"].as_i64(), report["days"][0]["quarantined"].as_i64()), (Some(99), Some(1)));
    assert_eq!(text_code, 0);
    assert!(text.contains("sealed_values_rederive") && text.contains("pass"), "{text}");
    for value in raw_values() {
        assert!(
            !stdout.contains(&value) && !stderr.contains(&value) && !text.contains(&value),
            "verify printed a raw value"
        );
    }
}

#[tokio::test]
async fn verify_fails_naming_token_format_when_a_token_is_not_lowercase_hex() {
    let loaded = loaded(false).await;
    loaded
        .db
        .execute("UPDATE user_logins SET masked_ip = upper(masked_ip) WHERE id = (SELECT min(id) FROM user_logins)")
        .await;
    let (code, stdout, stderr) = verify(&loaded.env, &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert_eq!(failed_checks(&stderr), ["token_format"], "{stderr}");
    assert!(stderr.contains("verify: check token_format failed: 1 of 100 records"), "{stderr}");
}

#[tokio::test]
async fn verify_fails_naming_key_ids_when_a_row_has_an_unknown_key_id_and_accepts_a_retired_one() {
    let loaded = loaded(false).await;
    loaded
        .db
        .execute("UPDATE user_logins SET mask_key_id = 'old-key' WHERE id = (SELECT min(id) FROM user_logins)")
        .await;
    let (code, stdout, stderr) = verify(&loaded.env, &[]);
    let retired = with(&loaded.env, "PII_INGEST__MASKING__RETIRED_KEY_IDS", r#"["old-key"]"#);
    let (retired_code, _, retired_stderr) = verify(&retired, &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert_eq!(failed_checks(&stderr), ["key_ids"], "{stderr}");
    assert!(!stdout.contains("old-key") && !stderr.contains("old-key"), "an unknown key id is not printed");
    assert_eq!(retired_code, 0, "masking.retired_key_ids names old-key: {retired_stderr}");
}

#[tokio::test]
async fn verify_fails_naming_create_date_when_it_disagrees_with_sent_at() {
    let loaded = loaded(false).await;
    loaded
        .db
        .execute("UPDATE user_logins SET create_date = create_date - 1 WHERE id = (SELECT min(id) FROM user_logins)")
        .await;
    let (code, stdout, stderr) = verify(&loaded.env, &[]);
    // --since the load's date leaves the corrupted row (now dated the day before) out.
    let (since_code, since_stdout, _) = verify(&loaded.env, &["--since", "2026-11-20", "--json"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert_eq!(failed_checks(&stderr), ["create_date"], "{stderr}");
    assert!(stderr.contains("1 of 99 rows have a create_date that is not the UTC date of sent_at"), "{stderr}");
    assert_eq!(since_code, 0, "{since_stdout}");
    let report: serde_json::Value = serde_json::from_str(&since_stdout).unwrap();
    assert_eq!(report["checks"][3]["checked"], 98, "{since_stdout}");
}

#[tokio::test]
async fn verify_fails_naming_the_rederivation_when_tokens_do_not_match_the_sealed_values() {
    let loaded = loaded(true).await;
    // Two rows swap their (well-formed) ip tokens: only opening the sealed values can tell.
    loaded
        .db
        .execute(
            "WITH two AS (SELECT id, masked_ip FROM user_logins ORDER BY id LIMIT 2), \
             swapped AS (SELECT a.id, b.masked_ip FROM two a JOIN two b ON a.id <> b.id) \
             UPDATE user_logins u SET masked_ip = s.masked_ip FROM swapped s WHERE u.id = s.id",
        )
        .await;
    let (code, stdout, stderr) = verify(&loaded.env, &["--private-key-file", &loaded.private_key]);
    let (without_key, _, _) = verify(&loaded.env, &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert_eq!(failed_checks(&stderr), ["sealed_values_rederive"], "{stderr}");
    assert!(stderr.contains("2 of 100 sampled records"), "{stderr}");
    assert_eq!(without_key, 0, "without the private key the swap is invisible: the check is skipped");
    for value in raw_values() {
        assert!(!stdout.contains(&value) && !stderr.contains(&value), "verify printed a raw value");
    }
}

#[tokio::test]
async fn verify_fails_naming_the_rederivation_when_a_sealed_quarantined_body_does_not_match_its_hmac() {
    let loaded = loaded(true).await;
    assert_eq!(
        loaded.db.count("SELECT count(*) AS n FROM quarantined_messages WHERE body_sealed IS NOT NULL").await,
        1
    );
    // A well-formed token, but not the HMAC of the sealed body.
    loaded.db.execute("UPDATE quarantined_messages SET body_hmac = (SELECT min(masked_ip) FROM user_logins)").await;
    let (code, stdout, stderr) = verify(&loaded.env, &["--private-key-file", &loaded.private_key]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert_eq!(failed_checks(&stderr), ["sealed_values_rederive"], "{stderr}");
    assert!(stderr.contains("1 of 100 sampled records"), "{stderr}");
}

#[test]
fn verify_without_a_known_key_id_is_a_configuration_error() {
    let env = vec![
        ("PII_INGEST__POSTGRES__URL".to_owned(), format!("{}/pii_it_never_created", server_url())),
        ("PII_INGEST__LOG__FILTER".to_owned(), "warn".to_owned()),
    ];
    let (code, _, stderr) = verify(&env, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("masking.key") && stderr.contains("masking.key_id"), "{stderr}");
}
