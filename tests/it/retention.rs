//! Retention: `pii-ingest retention` removes exactly the rows and quarantine records dated before the
//! cutoff, counts without removing under `--dry-run`, and appends what it removed to
//! `retention_audit`. Real Postgres, through the binary.

use crate::support::TestDb;
use crate::support::binary::{ok, run as pii_ingest};

/// One login row dated `days_ago` days before today, and one quarantine record sent then.
async fn row_and_record(db: &TestDb, days_ago: u32) {
    let token = "a".repeat(64);
    db.execute(&format!("SELECT user_logins_ensure_partitions(ARRAY[current_date - {days_ago}])")).await;
    db.execute(&format!(
        "INSERT INTO user_logins (message_id, user_id, device_type, masked_ip, masked_device_id, app_version, \
         create_date, sent_at, mask_key_id) \
         VALUES ('m-{days_ago}', 'u', 'ios', '{token}', '{token}', '1.0', current_date - {days_ago}, \
         (current_date - {days_ago})::timestamp AT TIME ZONE 'UTC', 'k')"
    ))
    .await;
    db.execute(&format!(
        "INSERT INTO quarantined_messages (message_id, reason, detail, body_hmac, body_bytes, receive_count, sent_at, \
         mask_key_id) VALUES ('q-{days_ago}', 'not_json', 'd', '{token}', 1, 1, \
         (current_date - {days_ago})::timestamp AT TIME ZONE 'UTC', 'k')"
    ))
    .await;
}

#[tokio::test]
async fn retention_removes_exactly_the_rows_and_quarantine_records_dated_before_the_cutoff_and_audits_it() {
    let db = TestDb::new().await;
    for days_ago in [400, 100, 31, 30, 29, 0] {
        row_and_record(&db, days_ago).await;
    }
    let env = vec![("PII_INGEST__POSTGRES__URL".to_owned(), db.url.clone())];

    let dry: serde_json::Value =
        serde_json::from_str(&ok(pii_ingest(&env, &["retention", "--older-than-days", "30", "--dry-run"]))).unwrap();
    assert_eq!((dry["rows_deleted"].as_i64(), dry["quarantine_deleted"].as_i64()), (Some(3), Some(3)), "{dry}");
    assert_eq!(
        (db.rows().await, db.count("SELECT count(*) AS n FROM retention_audit").await),
        (6, 0),
        "dry removes nothing"
    );

    let done: serde_json::Value =
        serde_json::from_str(&ok(pii_ingest(&env, &["retention", "--older-than-days", "30"]))).unwrap();
    assert_eq!((done["rows_deleted"].as_i64(), done["quarantine_deleted"].as_i64()), (Some(3), Some(3)), "{done}");
    let kept = "SELECT count(*) AS n FROM user_logins WHERE message_id IN ('m-30', 'm-29', 'm-0')";
    assert_eq!((db.rows().await, db.count(kept).await), (3, 3), "the 30th day back is kept, older rows are not");
    let kept = "SELECT count(*) AS n FROM quarantined_messages WHERE message_id IN ('q-30', 'q-29', 'q-0')";
    assert_eq!(db.count(kept).await, 3);
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages").await, 3);
    let audit = "SELECT count(*) AS n FROM retention_audit WHERE who = session_user AND cutoff = current_date - 30 \
                 AND rows_deleted = 3 AND quarantine_deleted = 3";
    assert_eq!(db.count(audit).await, 1);

    let again: serde_json::Value =
        serde_json::from_str(&ok(pii_ingest(&env, &["retention", "--older-than-days", "30"]))).unwrap();
    assert_eq!(again["rows_deleted"].as_i64(), Some(0), "{again}");
    let missing = pii_ingest(&env, &["retention"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("set retention.days or pass --older-than-days"));
    db.drop().await;
}
