//! Erasure: `pii-ingest erase` deletes one user's (or device's) rows and the quarantine records that
//! hold the same value, records it in `erasure_audit` with the selector as an HMAC token (never the
//! raw id), counts without deleting under `--dry-run`, and keeps the messages claimed so a replay of
//! the same envelopes brings nothing back. Real Postgres, through the binary.

use crate::support::binary::{ok, run as pii_ingest};
use crate::support::{self, TestDb};

const ERASED_USER: &str = "erase-me-4f1c";

fn envelope(body: &str, minute: u32) -> String {
    use chrono::TimeZone;
    let sent = chrono::Utc.with_ymd_and_hms(2025, 9, 1, 12, minute, 0).unwrap();
    serde_json::json!({
        "message_id": uuid::Uuid::new_v4().to_string(),
        "sent_timestamp": sent.timestamp_millis(),
        "body": body,
    })
    .to_string()
}

/// Three logins of the erased user, two of others, and a rejected body that names the erased user.
fn archive() -> Vec<String> {
    let mut lines = Vec::new();
    for (i, body) in support::logins(5).iter().enumerate() {
        let mut login: serde_json::Value = serde_json::from_str(body).unwrap();
        if i < 3 {
            login["user_id"] = ERASED_USER.into();
        }
        lines.push(envelope(&login.to_string(), i as u32));
    }
    let rejected = serde_json::json!({"user_id": ERASED_USER, "ip": "not an ip", "device_id": "d-1"});
    lines.push(envelope(&rejected.to_string(), 30));
    lines
}

async fn replay(db: &TestDb, path: &std::path::Path) -> pii_ingest::counters::Report {
    let source = pii_ingest::source::FileSource::open(path, None, support::keying()).unwrap();
    support::drain_once(source, db).await
}

fn json(out: String) -> serde_json::Value {
    serde_json::from_str(&out).unwrap()
}

#[tokio::test]
async fn erase_then_a_replay_of_the_same_envelopes_leaves_the_user_with_no_rows_and_the_audit_holds_no_raw_id() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("archive.jsonl");
    std::fs::write(&path, archive().join("\n") + "\n").unwrap();
    let first = replay(&db, &path).await;
    assert_eq!((first.written, first.quarantined_total()), (5, 1), "{first:?}");
    let users_rows = format!("SELECT count(*) AS n FROM user_logins WHERE user_id = '{ERASED_USER}'");
    assert_eq!(db.count(&users_rows).await, 3);

    let env = vec![
        ("PII_INGEST__POSTGRES__URL".to_owned(), db.url.clone()),
        ("PII_INGEST__MASKING__KEY".into(), support::TEST_KEY.into()),
        ("PII_INGEST__MASKING__KEY_ID".into(), "test-key".into()),
    ];
    let erase = ["erase", "--user-id", ERASED_USER, "--reason", "GDPR art. 17 request #123"];
    let dry = json(ok(pii_ingest(&env, &[&erase[..], &["--dry-run"]].concat())));
    assert_eq!((dry["rows_erased"].as_i64(), dry["quarantine_erased"].as_i64()), (Some(3), Some(1)), "{dry}");
    assert_eq!((db.rows().await, db.count("SELECT count(*) AS n FROM erasure_audit").await), (5, 0), "dry");

    let done = json(ok(pii_ingest(&env, &erase)));
    assert_eq!((done["rows_erased"].as_i64(), done["quarantine_erased"].as_i64()), (Some(3), Some(1)), "{done}");
    assert!(!done.to_string().contains(ERASED_USER), "no raw id printed: {done}");
    assert_eq!((db.count(&users_rows).await, db.rows().await), (0, 2), "only the user's rows go");
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages").await, 0);
    let token = support::masker().token(ERASED_USER);
    let audit = format!(
        "SELECT count(*) AS n FROM erasure_audit WHERE who = session_user AND reason = 'GDPR art. 17 request #123' \
         AND selector = 'user_id:{token}' AND rows_erased = 3 AND quarantine_erased = 1 AND mask_key_id = 'test-key' \
         AND strpos(selector, '{ERASED_USER}') = 0"
    );
    assert_eq!(db.count(&audit).await, 1);

    // The erased messages stay claimed: replaying the same envelopes brings none of them back.
    let again = replay(&db, &path).await;
    assert_eq!((again.written, again.quarantined_total()), (0, 0), "{again:?}");
    assert_eq!((db.count(&users_rows).await, db.rows().await), (0, 2));

    // By device: a masked_device_id token erases that device's rows.
    let device = db.count("SELECT count(*) AS n FROM user_logins").await;
    assert_eq!(device, 2);
    let masked: String = {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct T {
            #[diesel(sql_type = diesel::sql_types::Text)]
            t: String,
        }
        let rows: Vec<T> = diesel::sql_query("SELECT min(masked_device_id)::text AS t FROM user_logins")
            .load(&mut db.conn().await)
            .await
            .unwrap();
        rows[0].t.clone()
    };
    let by_device = json(ok(pii_ingest(&env, &["erase", "--masked-device-id", &masked, "--reason", "device request"])));
    assert_eq!(by_device["rows_erased"].as_i64(), Some(1), "{by_device}");
    assert_eq!(db.rows().await, 1);
    let refused = pii_ingest(&env, &["erase", "--masked-ip", "10.0.0.1", "--reason", "r"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--masked-ip must be a 64-character hex HMAC token"));
}
