//! Masking against the real Postgres: tokens equal pgcrypto's `encode(hmac(value, key, 'sha256'), 'hex')`,
//! and no raw PII is stored anywhere.

use crate::support::{self, TEST_KEY, TestEnv, drain_once};

#[tokio::test]
async fn stored_tokens_equal_what_postgres_hmac_computes_with_the_key() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    queue.send_bodies(support::logins(10)).await;
    drain_once(queue.source().await, &db).await;

    db.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto").await;
    // The first sample login: ip 199.172.111.135, device_id 593-47-5928.
    let sql = format!(
        "SELECT count(*) AS n FROM user_logins \
         WHERE masked_ip = encode(hmac('199.172.111.135', '{TEST_KEY}', 'sha256'), 'hex') \
         AND masked_device_id = encode(hmac('593-47-5928', '{TEST_KEY}', 'sha256'), 'hex') \
         AND mask_key_id = 'test-key'"
    );
    assert_eq!(db.count(&sql).await, 1);
}

#[tokio::test]
async fn no_raw_ip_or_device_id_is_stored_in_any_table() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let sample = support::sample();
    // A malformed message that still carries PII must be quarantined with it masked.
    let bad = r#"{"ip":"10.20.30.40","device_id":"999-88-7777","device_type":"toaster"}"#.to_owned();
    queue.send_bodies(sample.iter().cloned().chain([bad])).await;
    drain_once(queue.source().await, &db).await;

    let mut raw: Vec<String> = vec!["10.20.30.40".into(), "999-88-7777".into()];
    for line in &sample {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in ["ip", "device_id"] {
            if let Some(s) = v[field].as_str() {
                raw.push(s.to_owned());
            }
        }
    }
    for value in raw {
        let sql = format!(
            "SELECT (SELECT count(*) FROM user_logins t WHERE t::text LIKE '%{value}%') \
                  + (SELECT count(*) FROM quarantined_messages q WHERE q::text LIKE '%{value}%') AS n"
        );
        assert_eq!(db.count(&sql).await, 0, "a raw value reached a table");
    }
    let token = support::masker().token("10.20.30.40");
    let sql = format!(
        "SELECT count(*) AS n FROM quarantined_messages WHERE reason = 'missing_field' AND masked_body LIKE '%{token}%'"
    );
    assert_eq!(db.count(&sql).await, 1, "the quarantined body keeps the ip as its token");
}
