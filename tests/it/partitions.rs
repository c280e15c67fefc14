//! Monthly partitions of `user_logins` (migration 8): a fresh migrate makes the table partitioned with
//! the coming months made; replayed envelopes land in the partition of their `sent_timestamp`'s month,
//! created on demand by both sinks, however far in the past; the ingester role needs no more than
//! its grants for that; a partition dropped behind a sink's back is made again. Real Postgres and the
//! real emulator.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use pii_ingest::ledger::Ledger;
use pii_ingest::sink::{CopySink, NewLogin, PgSink, Postgres, Sink};
use pii_ingest::source::FileSource;

use crate::support::binary::{ok, run as pii_ingest};
use crate::support::{self, TestDb, TestQueue, drain, pipeline, settings};

/// Rows not in the partition named after their month.
const MISPLACED: &str = "SELECT count(*) AS n FROM user_logins \
    WHERE tableoid::regclass::text <> 'user_logins_' || to_char(create_date, 'YYYY_MM')";

/// An envelope line (the `export` format) for `body`, sent at `sent`.
fn envelope(body: &str, sent: DateTime<Utc>) -> String {
    serde_json::json!({
        "message_id": uuid::Uuid::new_v4().to_string(),
        "sent_timestamp": sent.timestamp_millis(),
        "body": body,
    })
    .to_string()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Five envelopes in each month from July to December 2024, on the first and last instants of
/// each month among them (a row must not slip into the neighbouring partition).
fn six_months() -> Vec<String> {
    let bodies = support::logins(30);
    let mut lines = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let month = 7 + (i / 5) as u32;
        let sent = match i % 5 {
            0 => Utc.with_ymd_and_hms(2024, month, 1, 0, 0, 0).unwrap(),
            1 => {
                let next = if month == 12 { (2025, 1) } else { (2024, month + 1) };
                Utc.with_ymd_and_hms(next.0, next.1, 1, 0, 0, 0).unwrap() - chrono::Duration::milliseconds(1)
            }
            n => Utc.with_ymd_and_hms(2024, month, 5 * n as u32, 12, 0, 0).unwrap(),
        };
        lines.push(envelope(body, sent));
    }
    lines
}

async fn replay(db: &TestDb, path: &Path, sink: Postgres) -> pii_ingest::counters::Report {
    let mut p = pipeline(
        FileSource::open(path, None, support::keying()).unwrap(),
        db,
        Arc::new(Ledger::temporary()),
        settings(),
    );
    p.sink = sink;
    drain(p, Duration::from_secs(120)).await
}

#[tokio::test]
async fn a_fresh_migrate_makes_user_logins_partitioned_by_month_with_the_coming_months_made() {
    let db = TestDb::new().await;
    let partitioned = "SELECT count(*) AS n FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid \
        WHERE c.relname = 'user_logins' AND c.relkind = 'p' AND p.partstrat = 'r'";
    assert_eq!(db.count(partitioned).await, 1, "user_logins is range-partitioned");
    let coming = "SELECT count(*) AS n FROM user_logins_partitions() \
        WHERE from_date >= date_trunc('month', current_date) AND to_date <= date_trunc('month', current_date) + interval '3 months'";
    assert_eq!(db.count(coming).await, 3, "this month and the next two");
    let dedup_key = "SELECT count(*) AS n FROM pg_indexes WHERE tablename = 'user_logins' \
        AND indexdef LIKE 'CREATE UNIQUE INDEX % ON ONLY public.user_logins USING btree (message_id, create_date)'";
    assert_eq!(db.count(dedup_key).await, 1);
    let default = "SELECT count(*) AS n FROM user_logins_partitions() WHERE from_date IS NULL";
    assert_eq!(db.count(default).await, 0, "no DEFAULT partition");
}

#[tokio::test]
async fn replaying_envelopes_spanning_six_months_fills_six_partitions_through_both_sinks() {
    for insert in [false, true] {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("six-months.jsonl");
        write_lines(&path, &six_months());
        let sink = |db: &TestDb| if insert { db.insert_sink() } else { db.copy_sink() };

        let report = replay(&db, &path, sink(&db)).await;
        assert_eq!((report.written, db.rows().await), (30, 30), "insert sink: {insert}: {report:?}");
        let filled = "SELECT count(DISTINCT tableoid) AS n FROM user_logins";
        assert_eq!(db.count(filled).await, 6, "insert sink: {insert}");
        assert_eq!(db.count(MISPLACED).await, 0, "insert sink: {insert}");
        let made =
            "SELECT count(*) AS n FROM user_logins_partitions() WHERE from_date BETWEEN '2024-07-01' AND '2024-12-01'";
        assert_eq!(db.count(made).await, 6, "one partition a month, insert sink: {insert}");

        // The one fate per message holds across partitions: a second replay writes nothing.
        let again = replay(&db, &path, sink(&db)).await;
        assert_eq!((again.written, db.rows().await), (0, 30), "insert sink: {insert}: {again:?}");
    }
}

#[tokio::test]
async fn an_envelope_dated_far_in_the_past_gets_its_partition_through_replay() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("archive.jsonl");
    let old = Utc.with_ymd_and_hms(1999, 2, 14, 8, 30, 0).unwrap();
    write_lines(&path, &[envelope(&support::logins(1)[0], old)]);
    let env = vec![
        ("PII_INGEST__POSTGRES__URL".to_owned(), db.url.clone()),
        ("PII_INGEST__MASKING__KEY".into(), support::TEST_KEY.into()),
        ("PII_INGEST__MASKING__KEY_ID".into(), "test-key".into()),
        ("PII_INGEST__LEDGER__ENABLED".into(), "false".into()),
        ("PII_INGEST__METRICS__LISTEN".into(), "".into()),
    ];
    ok(pii_ingest(&env, &["replay", "--file", path.to_str().unwrap()]));
    let placed = "SELECT count(*) AS n FROM user_logins_1999_02 WHERE create_date = '1999-02-14'";
    assert_eq!((db.rows().await, db.count(placed).await), (1, 1));
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages").await, 0, "nothing refused");
}

#[tokio::test]
async fn messages_drained_from_the_queue_land_in_this_months_partition() {
    let db = TestDb::new().await;
    let queue = TestQueue::new(30).await;
    queue.send_bodies(support::logins(12)).await;
    let report =
        drain(pipeline(queue.source().await, &db, Arc::new(Ledger::temporary()), settings()), Duration::from_secs(60))
            .await;
    assert_eq!(report.written, 12, "{report:?}");
    let this_month = "SELECT count(*) AS n FROM user_logins \
        WHERE tableoid::regclass::text = 'user_logins_' || to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')";
    assert_eq!(db.count(this_month).await, 12);
}

fn login(i: usize, date: chrono::NaiveDate) -> NewLogin {
    NewLogin {
        message_id: format!("sqs:m-{i}"),
        user_id: format!("u-{i}"),
        device_type: "ios".into(),
        masked_ip: "a".repeat(64),
        masked_device_id: "b".repeat(64),
        locale: None,
        app_version: "1.0".into(),
        create_date: date,
        sent_at: date.and_hms_opt(12, 0, 0).unwrap().and_utc(),
        mask_key_id: "k".into(),
        ip_sealed: None,
        device_id_sealed: None,
        seal_key_id: None,
        body_fingerprint: format!("{i:064}"),
    }
}

#[tokio::test]
async fn a_login_with_only_the_ingester_role_writes_into_a_month_without_a_partition_on_both_sinks() {
    let db = TestDb::new().await;
    let login_name = format!("pii_it_login_{}", uuid::Uuid::new_v4().simple());
    db.execute(&format!("CREATE ROLE {login_name} LOGIN IN ROLE pii_ingester")).await;
    let url = db.url.replace("postgres@", &format!("{login_name}@"));
    let day = chrono::NaiveDate::from_ymd_opt(2019, 1, 5).unwrap();
    let copy = Postgres::Copy(CopySink::new(&url, 1));
    let insert = Postgres::Insert(PgSink::new(pii_ingest::db::pool(&url, 1).unwrap()));
    let copied = copy.write(&[login(1, day)], &[]).await;
    let inserted = insert.write(&[login(2, day + chrono::Days::new(40))], &[]).await;
    drop((copy, insert));
    db.execute(&format!("DROP OWNED BY {login_name}")).await;
    db.execute(&format!("DROP ROLE {login_name}")).await;
    assert_eq!(copied.unwrap().logins.len(), 1);
    assert_eq!(inserted.unwrap().logins.len(), 1);
    let placed = "SELECT (SELECT count(*) FROM user_logins_2019_01) + (SELECT count(*) FROM user_logins_2019_02) AS n";
    assert_eq!(db.count(placed).await, 2);
}

#[tokio::test]
async fn a_partition_dropped_behind_a_sinks_back_is_made_again_by_its_next_write() {
    let db = TestDb::new().await;
    let day = chrono::NaiveDate::from_ymd_opt(2023, 5, 17).unwrap();
    for (offset, sink) in [(0, db.copy_sink()), (100, db.insert_sink())] {
        sink.write(&[login(offset, day)], &[]).await.unwrap();
        db.execute("DROP TABLE user_logins_2023_05").await;
        // The sink saw May 2023 committed: the first write after the drop fails, and forgets it.
        let first = sink.write(&[login(offset + 1, day)], &[]).await;
        assert!(first.is_err(), "the partition was gone");
        let again = sink.write(&[login(offset + 2, day)], &[]).await.unwrap();
        assert_eq!(again.logins.len(), 1);
    }
    assert_eq!(db.count("SELECT count(*) AS n FROM user_logins_2023_05").await, 1);
}
