//! Audit records nobody can rewrite: `reveal_audit`, `rekey_audit`, `erasure_audit` and
//! `retention_audit` refuse UPDATE, DELETE and TRUNCATE to every role (by grants) and even to their
//! owner (by triggers); `reveal` runs as `pii_revealer` and records the login; `rekey` skips what it
//! cannot open, audits itself and reports rows per seal key. Real Postgres, through the binary.

use std::path::Path;

use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::support::binary::{ok, run as pii_ingest, with};
use crate::support::{TestDb, TestEnv, binary_env, server_url};

const SAMPLE: &str = crate::support::SAMPLE;
const USER: &str = "424cdd21-063a-43a7-b91b-7ca1a833afae";
const AUDIT_TABLES: [&str; 4] = ["reveal_audit", "rekey_audit", "erasure_audit", "retention_audit"];

fn keygen(dir: &Path) -> (String, String) {
    ok(pii_ingest(&[], &["keygen", "--out", dir.to_str().unwrap()]));
    (dir.join("seal.pub").display().to_string(), dir.join("seal.key").display().to_string())
}

/// Runs `sql` as `role` (SET ROLE, `None`: as the connecting owner); the error text, or `None` when
/// the statement succeeded.
async fn refusal(url: &str, role: Option<&str>, sql: &str) -> Option<String> {
    use diesel_async::RunQueryDsl;
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    if let Some(role) = role {
        diesel::sql_query(format!("SET ROLE {role}")).execute(&mut conn).await.unwrap();
    }
    diesel::sql_query(sql).execute(&mut conn).await.err().map(|e| e.to_string())
}

/// A LOGIN role that is a member of `member_of` (or of nothing), dropped by [`drop_role`].
async fn login_role(db: &TestDb, member_of: Option<&str>) -> (String, String) {
    let login = format!("pii_it_login_{}", uuid::Uuid::new_v4().simple());
    let membership = member_of.map(|r| format!(" IN ROLE {r}")).unwrap_or_default();
    db.execute(&format!("CREATE ROLE {login} LOGIN{membership}")).await;
    let url = db.url.replace("postgres@", &format!("{login}@"));
    (login, url)
}

async fn drop_role(role: &str) {
    use diesel_async::RunQueryDsl;
    let mut conn = AsyncPgConnection::establish(&format!("{}/postgres", server_url())).await.unwrap();
    diesel::sql_query(format!("DROP ROLE IF EXISTS {role}")).execute(&mut conn).await.unwrap();
}

#[tokio::test]
async fn no_role_can_delete_update_or_truncate_an_audit_record_and_the_owner_is_refused_by_a_trigger() {
    let db = TestDb::new().await;
    db.execute("INSERT INTO reveal_audit (reason, selector, message_ids) VALUES ('r', 's', '{}')").await;
    assert_eq!(
        db.count("SELECT count(*) AS n FROM reveal_audit WHERE who = session_user").await,
        1,
        "who defaults to the login"
    );
    for role in ["pii_revealer", "pii_analyst", "pii_ingester"] {
        for table in AUDIT_TABLES {
            for sql in
                [format!("DELETE FROM {table}"), format!("UPDATE {table} SET who = 'x'"), format!("TRUNCATE {table}")]
            {
                let error = refusal(&db.url, Some(role), &sql).await;
                let error = error.unwrap_or_else(|| panic!("{role} was allowed: {sql}"));
                assert!(error.contains(&format!("permission denied for table {table}")), "{role}: {sql}: {error}");
            }
        }
    }
    // Even a role granted DELETE, and the owner itself, meet the trigger.
    db.execute("GRANT DELETE, UPDATE, TRUNCATE ON reveal_audit TO pii_analyst").await;
    for (role, op, sql) in [
        (Some("pii_analyst"), "DELETE", "DELETE FROM reveal_audit"),
        (None, "DELETE", "DELETE FROM reveal_audit"),
        (None, "UPDATE", "UPDATE reveal_audit SET reason = 'rewritten'"),
        (None, "TRUNCATE", "TRUNCATE reveal_audit"),
    ] {
        let error = refusal(&db.url, role, sql).await.unwrap_or_else(|| panic!("{role:?} was allowed: {sql}"));
        assert!(error.contains(&format!("reveal_audit is append-only: {op} refused")), "{role:?}: {error}");
    }
    assert_eq!(db.count("SELECT count(*) AS n FROM reveal_audit WHERE reason = 'r'").await, 1);
}

#[tokio::test]
async fn reveal_runs_as_pii_revealer_records_the_login_and_is_refused_to_a_login_outside_that_role() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let (public, private) = keygen(&dir.path().join("keys"));
    let env = with(&binary_env(&db, &queue, dir.path()), "PII_INGEST__SEALING__PUBLIC_KEY_FILE", &public);
    ok(pii_ingest(&env, &["replay", "--file", SAMPLE]));
    let (revealer, revealer_url) = login_role(&db, Some("pii_revealer")).await;
    let (outsider, outsider_url) = login_role(&db, None).await;

    let reveal = |url: &str| {
        let args = ["reveal", "--private-key-file", &private, "--reason", "ticket 7", "--user-id", USER, "--json"];
        pii_ingest(&with(&env, "PII_INGEST__POSTGRES__URL", url), &args)
    };
    let rows: serde_json::Value = serde_json::from_str(&ok(reveal(&revealer_url))).unwrap();
    assert_eq!(rows[0]["ip"], "199.172.111.135");
    let sql = format!("SELECT count(*) AS n FROM reveal_audit WHERE who = '{revealer}' AND reason = 'ticket 7'");
    assert_eq!(db.count(&sql).await, 1, "the audit names the login, not $USER");

    let refused = reveal(&outsider_url);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("must be a member of pii_revealer"), "{stderr}");
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("199.172.111.135"));
    assert_eq!(db.count("SELECT count(*) AS n FROM reveal_audit").await, 1);
    // Before its roles: a role is not dropped while a database still grants it anything.
    drop(db);
    drop_role(&revealer).await;
    drop_role(&outsider).await;
}

#[tokio::test]
async fn rekey_skips_and_reports_rows_it_cannot_open_audits_itself_and_counts_rows_per_seal_key() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let (old_public, old_private) = keygen(&dir.path().join("old"));
    let (lost_public, _) = keygen(&dir.path().join("lost"));
    let (new_public, _) = keygen(&dir.path().join("new"));
    let base = binary_env(&db, &queue, dir.path());
    let lines: Vec<String> = std::fs::read_to_string(SAMPLE).unwrap().lines().map(str::to_owned).collect();
    let (first, second) = (dir.path().join("first.jsonl"), dir.path().join("second.jsonl"));
    std::fs::write(&first, lines[..60].join("\n")).unwrap();
    std::fs::write(&second, lines[60..].join("\n")).unwrap();
    ok(pii_ingest(
        &with(&base, "PII_INGEST__SEALING__PUBLIC_KEY_FILE", &old_public),
        &["replay", "--file", first.to_str().unwrap()],
    ));
    ok(pii_ingest(
        &with(&base, "PII_INGEST__SEALING__PUBLIC_KEY_FILE", &lost_public),
        &["replay", "--file", second.to_str().unwrap()],
    ));
    let old_key = "(SELECT seal_key_id FROM user_logins ORDER BY id LIMIT 1)";
    let sealed_old = db.count(&format!("SELECT count(*) AS n FROM user_logins WHERE seal_key_id = {old_key}")).await;
    let sealed_lost = db.rows().await - sealed_old;
    assert!(sealed_old > 2 && sealed_lost > 0, "{sealed_old} {sealed_lost}");
    // Two rows sealed to the old key are damaged: their boxes no longer open.
    db.execute(
        "UPDATE user_logins SET ip_sealed = '\\x00ff' WHERE id IN (SELECT id FROM user_logins ORDER BY id LIMIT 2)",
    )
    .await;

    let new = with(&base, "PII_INGEST__SEALING__PUBLIC_KEY_FILE", &new_public);
    let report: serde_json::Value =
        serde_json::from_str(&ok(pii_ingest(&new, &["rekey", "--private-key-file", &old_private, "--batch", "7"])))
            .unwrap();
    assert_eq!(report["resealed"].as_i64(), Some(sealed_old - 2), "{report}");
    assert_eq!(report["skipped"].as_i64(), Some(2 + sealed_lost), "corrupt rows and rows of the lost key: {report}");
    assert_eq!(report["skipped_ids"].as_array().map(Vec::len), Some(2), "{report}");
    let per_key = report["rows_per_seal_key"].as_object().unwrap();
    assert_eq!(per_key.len(), 3, "{report}");
    assert_eq!(per_key.values().filter_map(serde_json::Value::as_i64).sum::<i64>(), db.rows().await);
    let audit = format!(
        "SELECT count(*) AS n FROM rekey_audit WHERE who = session_user AND skipped = {} AND resealed = {}",
        2 + sealed_lost,
        sealed_old - 2
    );
    assert_eq!(db.count(&audit).await, 1);
    assert_eq!(
        db.count("SELECT count(*) AS n FROM rekey_audit WHERE jsonb_typeof(rows_per_seal_key) = 'object'").await,
        1
    );
}
