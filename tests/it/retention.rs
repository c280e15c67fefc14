//! Retention: `pii-ingest retention` removes exactly the rows and quarantine records dated before the
//! cutoff, counts without removing under `--dry-run`, and appends what it removed to
//! `retention_audit`; on partitions it drops whole expired months, deletes the rows of the month
//! straddling the cutoff, and keeps the claims so a replay brings nothing back. Real Postgres.

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
}

/// An envelope line (the `export` format) for `body`, sent at `sent`.
fn envelope(body: &str, sent: chrono::DateTime<chrono::Utc>) -> String {
    serde_json::json!({
        "message_id": uuid::Uuid::new_v4().to_string(),
        "sent_timestamp": sent.timestamp_millis(),
        "body": body,
    })
    .to_string()
}

async fn replay(db: &TestDb, path: &std::path::Path) -> pii_ingest::counters::Report {
    let source = pii_ingest::source::FileSource::open(path, None, crate::support::keying()).unwrap();
    crate::support::drain_once(source, db).await
}

#[tokio::test]
async fn retention_drops_expired_months_deletes_the_straddling_rows_and_keeps_every_claim() {
    use chrono::{NaiveDate, TimeZone, Utc};
    let db = TestDb::new().await;
    let at = |y, m, d, h, min, s| Utc.with_ymd_and_hms(y, m, d, h, min, s).unwrap();
    let logins = crate::support::logins(5);
    let mut lines: Vec<String> = [
        at(2025, 4, 10, 9, 0, 0),
        at(2025, 5, 31, 23, 59, 59),
        at(2025, 6, 14, 12, 0, 0),
        at(2025, 6, 15, 0, 0, 0),
        at(2025, 7, 1, 0, 0, 0),
    ]
    .into_iter()
    .zip(&logins)
    .map(|(sent, body)| envelope(body, sent))
    .collect();
    lines.push(envelope("not json at all", at(2025, 6, 14, 23, 59, 59)));
    lines.push(envelope("not json either", at(2025, 6, 15, 0, 0, 0)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("archive.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let first = replay(&db, &path).await;
    assert_eq!((first.written, first.quarantined_total()), (5, 2), "{first:?}");

    let cutoff = NaiveDate::from_ymd_opt(2025, 6, 15).unwrap();
    let dry = pii_ingest::retention::apply(&db.url, cutoff, true).await.unwrap();
    assert_eq!(dry.partitions_dropped, ["user_logins_2025_04", "user_logins_2025_05"]);
    assert_eq!((dry.rows_deleted, dry.quarantine_deleted), (3, 1));
    assert_eq!((db.rows().await, db.count("SELECT count(*) AS n FROM retention_audit").await), (5, 0), "dry");

    let done = pii_ingest::retention::apply(&db.url, cutoff, false).await.unwrap();
    assert_eq!(done.partitions_dropped, ["user_logins_2025_04", "user_logins_2025_05"]);
    assert_eq!((done.rows_deleted, done.quarantine_deleted), (3, 1));
    let kept = "SELECT count(*) AS n FROM user_logins WHERE create_date >= '2025-06-15'";
    assert_eq!((db.rows().await, db.count(kept).await), (2, 2), "exactly the rows before the cutoff go");
    let months = "SELECT count(*) AS n FROM user_logins_partitions() WHERE from_date < '2025-08-01'";
    assert_eq!(db.count(months).await, 2, "June (straddling, kept) and July");
    let records = "SELECT count(*) AS n FROM quarantined_messages WHERE sent_at >= '2025-06-15T00:00:00Z'";
    assert_eq!((db.count("SELECT count(*) AS n FROM quarantined_messages").await, db.count(records).await), (1, 1));
    let audit = "SELECT count(*) AS n FROM retention_audit WHERE cutoff = '2025-06-15' AND rows_deleted = 3 \
        AND quarantine_deleted = 1 AND partitions_dropped = '{user_logins_2025_04,user_logins_2025_05}'";
    assert_eq!(db.count(audit).await, 1);
    assert_eq!(db.count("SELECT count(*) AS n FROM message_claims").await, 7, "claims are kept");

    // The kept claims stop a replay of the same archive from bringing expired data back.
    let again = replay(&db, &path).await;
    assert_eq!((again.written, again.quarantined_total(), db.rows().await), (0, 0, 2), "{again:?}");
}
