//! Bad input: every message ends as a row or a quarantine record with its reason; a bad message never
//! takes good ones down with it.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use pii_ingest::ledger::Ledger;

use crate::support::{self, TestDb, TestEnv, TestQueue, drain, drain_once, pipeline, settings};

const LIMIT: Duration = Duration::from_secs(60);

fn corpus() -> Vec<(String, &'static str)> {
    let good = &support::sample()[0];
    let with = |field: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_str(good).unwrap();
        v[field] = value;
        v.to_string()
    };
    vec![
        ("not json at all".into(), "not_json"),
        ("[\"199.172.111.135\"]".into(), "not_object"),
        (r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#.into(), "missing_field"),
        (with("ip", serde_json::Value::Null), "null_field"),
        (with("user_id", "".into()), "empty_field"),
        (with("app_version", serde_json::json!(2.3)), "wrong_type"),
        (with("locale", "x".repeat(33).into()), "too_long"),
        (with("ip", "300.1.2.3".into()), "invalid_ip"),
        (with("device_type", "fridge".into()), "unknown_device_type"),
    ]
}

#[tokio::test]
async fn every_bad_message_is_quarantined_with_its_reason_and_the_good_ones_are_written() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let bad = corpus();
    let good: Vec<String> = support::logins(40);
    // Interleave so that every batch mixes good and bad messages.
    let mut bodies = Vec::new();
    for (i, line) in good.iter().enumerate() {
        bodies.push(line.clone());
        if let Some((b, _)) = bad.get(i) {
            bodies.push(b.clone());
        }
    }
    queue.send_bodies(bodies).await;
    let report = drain_once(queue.source().await, &db).await;

    assert_eq!(report.written, 40);
    assert_eq!(report.quarantined_total(), bad.len() as u64);
    assert!(report.reconciles(), "{report}");
    for (_, reason) in &bad {
        let n = db.count(&format!("SELECT count(*) AS n FROM quarantined_messages WHERE reason = '{reason}'")).await;
        assert_eq!(n, 1, "reason {reason}");
    }
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages WHERE reason = 'not_json' AND masked_body IS NULL AND body_bytes = 15").await, 1);
    assert_eq!(queue.depth().await, 0, "bad messages never block the queue");
}

#[tokio::test]
async fn a_row_postgres_refuses_is_isolated_and_quarantined_while_its_batch_commits() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    // A rule only the database knows, so validation cannot catch it before the write.
    db.execute("ALTER TABLE user_logins ADD CONSTRAINT no_poison CHECK (user_id <> 'poison')").await;
    let mut bodies: Vec<String> = support::logins(30);
    let mut poison: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    poison["user_id"] = "poison".into();
    bodies.insert(15, poison.to_string());
    queue.send_bodies(bodies).await;
    let mut s = settings();
    s.receivers = pii_ingest::pipeline::Receivers::pinned(1);
    s.flush_interval = Duration::from_millis(500); // one transaction for all 31
    let report = drain(pipeline(queue.source().await, &db, Arc::new(Ledger::temporary()), s), LIMIT).await;

    assert_eq!(report.written, 30);
    assert_eq!(report.quarantined.get("db_rejected"), Some(&1), "{report}");
    assert!(report.reconciles(), "{report}");
    let detail = db
        .count(
            "SELECT count(*) AS n FROM quarantined_messages WHERE reason = 'db_rejected' AND detail LIKE '%no_poison%'",
        )
        .await;
    assert_eq!(detail, 1, "the detail names the constraint");
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test]
async fn dead_letter_mode_leaves_rejects_for_the_redrive_policy_and_still_records_them() {
    let db = TestDb::new().await;
    let dlq = TestQueue::new(5).await;
    let queue = TestQueue::new(1).await;
    let arn = dlq
        .client
        .get_queue_attributes()
        .queue_url(&dlq.url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": "2"}).to_string();
    queue
        .client
        .set_queue_attributes()
        .queue_url(&queue.url)
        .attributes(QueueAttributeName::RedrivePolicy, policy)
        .send()
        .await
        .unwrap();
    queue.send_bodies(support::logins(20).into_iter().chain(["not json".to_owned(), "[]".to_owned()])).await;
    let mut s = settings();
    s.delete_rejected = false;
    let report = drain(pipeline(queue.source().await, &db, Arc::new(Ledger::temporary()), s), LIMIT).await;

    assert_eq!(report.written, 20);
    assert_eq!(report.quarantined_total(), 2);
    assert!(report.left_for_redrive >= 2, "{report}");
    assert!(report.reconciles(), "{report}");
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages").await, 2);
    assert_eq!(queue.depth().await, 0);
    assert_eq!(dlq.depth().await, 2, "both rejects reached the dead-letter queue");
}

#[tokio::test]
async fn bodies_near_the_sqs_size_limit_are_handled() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let mut big_login: serde_json::Value = serde_json::from_str(&support::logins(1)[0]).unwrap();
    big_login["padding"] = "p".repeat(250 * 1024).into();
    let big_garbage = format!("<{}>", "g".repeat(250 * 1024));
    let unicode: serde_json::Value = {
        let mut v: serde_json::Value = serde_json::from_str(&support::logins(2)[1]).unwrap();
        v["user_id"] = "Zoë \"O'Brien\"; DROP TABLE user_logins; -- 🙂".into();
        v
    };
    queue.send_bodies([big_login.to_string(), big_garbage, unicode.to_string()]).await;
    let report = drain_once(queue.source().await, &db).await;

    assert_eq!(report.written, 2, "{report}");
    assert_eq!(report.unknown_fields, 1, "the padding field was counted and dropped");
    assert_eq!(report.quarantined.get("not_json"), Some(&1));
    assert_eq!(
        db.count("SELECT count(*) AS n FROM user_logins WHERE user_id LIKE 'Zoë \"O''Brien\"; DROP TABLE%🙂'").await,
        1
    );
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages WHERE body_bytes > 250 * 1024").await, 1);
}
