//! Reversible protection: values sealed to a public key, revealed only with the private key and
//! always audited; key rotation; the database roles that keep analysts and the ingester away from
//! ciphertext. All against the real Postgres, through the binary.

use std::path::Path;

use crate::support::binary::{ok, run as pii_ingest, with};
use crate::support::{TestDb, TestEnv, binary_env, server_url};

const SAMPLE: &str = crate::support::SAMPLE;
/// The first sample login.
const USER: &str = "424cdd21-063a-43a7-b91b-7ca1a833afae";
const IP: &str = "199.172.111.135";
const DEVICE: &str = "593-47-5928";

fn keygen(dir: &Path) -> (String, String) {
    ok(pii_ingest(&[], &["keygen", "--out", dir.to_str().unwrap()]));
    (dir.join("seal.pub").display().to_string(), dir.join("seal.key").display().to_string())
}

#[tokio::test]
async fn sealed_values_are_revealed_with_the_private_key_and_every_reveal_is_audited() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let (public, private) = keygen(&dir.path().join("keys"));
    let env = with(&binary_env(&db, &queue, dir.path()), "PII_INGEST__SEALING__PUBLIC_KEY_FILE", &public);
    ok(pii_ingest(&env, &["replay", "--file", SAMPLE]));
    assert_eq!(
        db.count("SELECT count(*) AS n FROM user_logins WHERE ip_sealed IS NOT NULL AND seal_key_id LIKE 'x25519-%'")
            .await,
        99
    );

    let by_user = ok(pii_ingest(
        &env,
        &[
            "reveal",
            "--private-key-file",
            &private,
            "--reason",
            "ticket 42",
            "--who",
            "alice",
            "--user-id",
            USER,
            "--json",
        ],
    ));
    let rows: serde_json::Value = serde_json::from_str(&by_user).unwrap();
    assert_eq!((rows[0]["ip"].as_str(), rows[0]["device_id"].as_str()), (Some(IP), Some(DEVICE)));

    let token = crate::support::masker().token(IP);
    let by_token = ok(pii_ingest(
        &env,
        &["reveal", "--private-key-file", &private, "--reason", "fraud check", "--masked-ip", &token],
    ));
    assert!(by_token.contains(IP) && by_token.contains(DEVICE), "{by_token}");

    assert_eq!(db.count(&format!("SELECT count(*) AS n FROM reveal_audit WHERE who = 'alice' AND reason = 'ticket 42' AND selector = 'user_id={USER}' AND cardinality(message_ids) = 1")).await, 1);
    assert_eq!(db.count("SELECT count(*) AS n FROM reveal_audit").await, 2);
}

#[tokio::test]
async fn the_wrong_private_key_fails_clearly_reveals_nothing_and_leaks_no_key_material() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let (public, _) = keygen(&dir.path().join("a"));
    let (_, other_private) = keygen(&dir.path().join("b"));
    let env = with(&binary_env(&db, &queue, dir.path()), "PII_INGEST__SEALING__PUBLIC_KEY_FILE", &public);
    ok(pii_ingest(&env, &["replay", "--file", SAMPLE]));

    let trace = with(&env, "RUST_LOG", "trace");
    let output =
        pii_ingest(&trace, &["reveal", "--private-key-file", &other_private, "--reason", "r", "--user-id", USER]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not match the key these values were sealed to"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains(IP) && !stderr.contains(IP));
    assert_eq!(db.count("SELECT count(*) AS n FROM reveal_audit").await, 0, "a failed reveal revealed nothing");

    // check-config is given the private key itself: its text as a secret setting, and its file
    // named where the public key belongs (the mistake an operator could make).
    let secret = std::fs::read_to_string(&other_private).unwrap();
    let given = with(&env, "PII_INGEST__MASKING__KEY", secret.trim());
    let config =
        ok(pii_ingest(&with(&given, "PII_INGEST__SEALING__PUBLIC_KEY_FILE", &other_private), &["check-config"]));
    assert!(
        config.contains("[sealing]") && config.contains(&other_private),
        "check-config printed its config: {config}"
    );
    for text in [stdout.as_ref(), stderr.as_ref(), config.as_str()] {
        assert!(!text.contains(secret.trim()), "private key material was printed");
    }
    let blank = pii_ingest(&env, &["reveal", "--private-key-file", &other_private, "--reason", " ", "--user-id", USER]);
    assert!(String::from_utf8_lossy(&blank.stderr).contains("a reason is required"));
}

#[tokio::test]
async fn rotating_both_keys_keeps_every_row_readable_and_findable() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let (old_public, old_private) = keygen(&dir.path().join("old"));
    let (new_public, new_private) = keygen(&dir.path().join("new"));
    let base = binary_env(&db, &queue, dir.path());
    let old = with(&base, "PII_INGEST__SEALING__PUBLIC_KEY_FILE", &old_public);
    let half: String = std::fs::read_to_string(SAMPLE).unwrap().lines().take(50).map(|l| format!("{l}\n")).collect();
    let first_half = dir.path().join("half.jsonl");
    std::fs::write(&first_half, half).unwrap();
    ok(pii_ingest(&old, &["replay", "--file", first_half.to_str().unwrap()]));

    // New rows use the new keys (no downtime: only config changes); old rows stay readable.
    let new_hmac = "a-brand-new-masking-key-for-the-rotation-test";
    let new =
        with(&with(&base, "PII_INGEST__SEALING__PUBLIC_KEY_FILE", &new_public), "PII_INGEST__MASKING__KEY", new_hmac);
    let new = with(&new, "PII_INGEST__MASKING__KEY_ID", "hmac-2");
    let rest: String = std::fs::read_to_string(SAMPLE).unwrap().lines().skip(50).map(|l| format!("{l}\n")).collect();
    let second_half = dir.path().join("rest.jsonl");
    std::fs::write(&second_half, rest).unwrap();
    ok(pii_ingest(&new, &["replay", "--file", second_half.to_str().unwrap()]));
    assert_eq!(db.count("SELECT count(DISTINCT seal_key_id) AS n FROM user_logins").await, 2);

    let done: serde_json::Value = serde_json::from_str(&ok(pii_ingest(
        &new,
        &["rekey", "--private-key-file", &old_private, "--private-key-file", &new_private, "--tokens", "--batch", "7"],
    )))
    .unwrap();
    assert_eq!(done["resealed"], 49, "{done}");
    assert_eq!(done["retokenized"], 49, "{done}");
    assert_eq!(db.count("SELECT count(DISTINCT seal_key_id) AS n FROM user_logins").await, 1);
    assert_eq!(db.count("SELECT count(*) AS n FROM user_logins WHERE mask_key_id = 'hmac-2'").await, 99);
    // Rerunning finds nothing left to do.
    let again: serde_json::Value =
        serde_json::from_str(&ok(pii_ingest(&new, &["rekey", "--private-key-file", &new_private, "--tokens"])))
            .unwrap();
    assert_eq!((again["resealed"].as_u64(), again["retokenized"].as_u64()), (Some(0), Some(0)));

    let all: serde_json::Value = serde_json::from_str(&ok(pii_ingest(
        &new,
        &["reveal", "--private-key-file", &new_private, "--reason", "rotation check", "--user-id", USER, "--json"],
    )))
    .unwrap();
    assert_eq!(all[0]["ip"], IP);
    db.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto").await;
    let sql = format!(
        "SELECT count(*) AS n FROM user_logins WHERE masked_ip = encode(hmac('{IP}', '{new_hmac}', 'sha256'), 'hex')"
    );
    assert_eq!(db.count(&sql).await, 1, "tokens re-derived under the new key find the known IP");
}

#[tokio::test]
async fn the_analyst_role_sees_masked_columns_only_and_the_ingester_role_cannot_read_ciphertext() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let (public, _) = keygen(&dir.path().join("keys"));
    // A login user that is only a member of pii_ingester runs the whole ingestion.
    let login = format!("pii_it_ingester_{}", uuid::Uuid::new_v4().simple());
    db.execute(&format!("CREATE ROLE {login} LOGIN IN ROLE pii_ingester")).await;
    let as_ingester = db.url.replace("postgres@", &format!("{login}@"));
    assert!(as_ingester.contains(&login), "{as_ingester}");
    let env = with(&binary_env(&db, &queue, dir.path()), "PII_INGEST__SEALING__PUBLIC_KEY_FILE", &public);
    let env = with(&env, "PII_INGEST__POSTGRES__URL", &as_ingester);
    ok(pii_ingest(&env, &["seed", "--file", SAMPLE]));
    ok(pii_ingest(&env, &["run", "--until-empty"]));
    ok(pii_ingest(&with(&env, "PII_INGEST__POSTGRES__WRITE_METHOD", "insert"), &["replay", "--file", SAMPLE]));
    assert_eq!(db.rows().await, 99);

    let denied = |role: &'static str, sql: &'static str| {
        let url = db.url.clone();
        async move {
            use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
            let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
            diesel::sql_query(format!("SET ROLE {role}")).execute(&mut conn).await.unwrap();
            // Denied means Postgres said so (SQLSTATE 42501, "permission denied for ..."); any
            // other failure (a typo, a missing table) fails the test instead of passing as denied.
            match diesel::sql_query(sql).execute(&mut conn).await {
                Ok(_) => false,
                Err(e) => {
                    let error = e.to_string();
                    assert!(error.starts_with("permission denied for "), "{role}: {sql}: failed otherwise: {error}");
                    true
                }
            }
        }
    };
    assert!(!denied("pii_analyst", "SELECT masked_ip, user_id FROM user_logins_masked").await);
    assert!(denied("pii_analyst", "SELECT ip_sealed FROM user_logins").await);
    assert!(denied("pii_analyst", "SELECT masked_ip FROM user_logins").await);
    assert!(denied("pii_analyst", "SELECT * FROM reveal_audit").await);
    assert!(denied("pii_ingester", "SELECT ip_sealed FROM user_logins").await);
    assert!(denied("pii_ingester", "SELECT masked_ip FROM user_logins").await);
    assert!(!denied("pii_ingester", "SELECT message_id FROM user_logins").await);
    // Before its roles: a role is not dropped while a database still grants it anything.
    drop(db);
    db_drop_role(&login).await;
}

async fn db_drop_role(role: &str) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut conn = AsyncPgConnection::establish(&format!("{}/postgres", server_url())).await.unwrap();
    diesel::sql_query(format!("DROP ROLE IF EXISTS {role}")).execute(&mut conn).await.unwrap();
}

/// The one `message_id` of `quarantined_messages`.
async fn quarantined_id(db: &TestDb) -> String {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Text)]
        message_id: String,
    }
    use diesel_async::RunQueryDsl;
    let ids: Vec<Id> =
        diesel::sql_query("SELECT message_id FROM quarantined_messages").load(&mut db.conn().await).await.unwrap();
    assert_eq!(ids.len(), 1);
    ids.into_iter().next().unwrap().message_id
}

#[tokio::test]
async fn a_quarantined_body_is_sealed_revealed_with_an_audit_and_replayed_once_its_names_are_configured() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let (public, private) = keygen(&dir.path().join("keys"));
    let env = with(&binary_env(&db, &queue, dir.path()), "PII_INGEST__SEALING__PUBLIC_KEY_FILE", &public);
    // A camelCase producer: quarantined under the default field names.
    let camel = r#"{"userId":"u-camel","appVersion":"1.0","deviceType":"ios","ipAddress":"203.0.113.77","deviceId":"777-66-5555"}"#;
    queue.send_bodies([camel]).await;
    ok(pii_ingest(&env, &["run", "--until-empty"]));
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages WHERE reason = 'missing_field' AND body_sealed IS NOT NULL AND seal_key_id LIKE 'x25519-%' AND position('203.0.113.77' in masked_body) = 0").await, 1);
    let id = quarantined_id(&db).await;

    let args = ["reveal", "--private-key-file", &private, "--reason", "INC-77", "--who", "bob", "--quarantined"];
    let revealed = ok(pii_ingest(&env, &[&args[..], &["--message-id", &id]].concat()));
    assert_eq!(revealed, format!("{camel}\n"), "the body exactly as the producer sent it");
    let audited = format!(
        "SELECT count(*) AS n FROM reveal_audit WHERE who = 'bob' AND reason = 'INC-77' AND selector = 'quarantined:message_id={id}' AND message_ids = ARRAY['{id}']"
    );
    assert_eq!(db.count(&audited).await, 1);

    // The fix: accept the camelCase names, then replay what was revealed.
    let mut fixed = env.clone();
    for (field, camel) in [
        ("USER_ID", "userId"),
        ("APP_VERSION", "appVersion"),
        ("DEVICE_TYPE", "deviceType"),
        ("IP", "ipAddress"),
        ("DEVICE_ID", "deviceId"),
    ] {
        fixed = with(
            &fixed,
            &format!("PII_INGEST__FIELDS__{field}"),
            &format!("[\"{}\", \"{camel}\"]", field.to_lowercase()),
        );
    }
    let recovered = dir.path().join("recovered.jsonl");
    std::fs::write(&recovered, revealed).unwrap();
    ok(pii_ingest(&fixed, &["replay", "--file", recovered.to_str().unwrap()]));
    let token = crate::support::masker().token("203.0.113.77");
    assert_eq!(
        db.count(&format!("SELECT count(*) AS n FROM user_logins WHERE user_id = 'u-camel' AND masked_ip = '{token}'"))
            .await,
        1
    );
}

#[tokio::test]
async fn without_sealing_a_quarantined_body_keeps_nothing_raw_and_reveal_says_so() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, private) = keygen(&dir.path().join("keys"));
    let env = binary_env(&db, &queue, dir.path());
    queue.send_bodies(["not json 203.0.113.78"]).await;
    ok(pii_ingest(&env, &["run", "--until-empty"]));
    assert_eq!(
        db.count("SELECT count(*) AS n FROM quarantined_messages WHERE body_sealed IS NULL AND masked_body IS NULL")
            .await,
        1
    );
    let id = quarantined_id(&db).await;
    let output = pii_ingest(
        &env,
        &["reveal", "--private-key-file", &private, "--reason", "r", "--quarantined", "--message-id", &id],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("without sealing: nothing raw was kept"));
    assert_eq!(db.count("SELECT count(*) AS n FROM reveal_audit").await, 0);
}
