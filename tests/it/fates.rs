//! One fate per message through what an operator meets in a year (issue 11): a database restored
//! under a live ledger, a producer key reused for another body, an archive grown, reordered or
//! re-exported, a message judged under two configurations, repeats inside one batch, a database whose
//! default is `synchronous_commit = off`, and a row Postgres keeps refusing with a "retryable" error.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use pii_ingest::event::Rules;
use pii_ingest::ledger::Ledger;
use pii_ingest::seed::Outgoing;
use pii_ingest::source::FileSource;
use tokio_util::sync::CancellationToken;

use crate::support::binary::{ok, run};
use crate::support::faults::{Fault, Faulty};
use crate::support::{self, TestDb, TestEnv, drain, drain_once, pipeline, settings};

const LIMIT: Duration = Duration::from_secs(120);
const PROCESSED: &str = "SELECT (SELECT count(*) FROM user_logins) + (SELECT count(*) FROM quarantined_messages) AS n";
/// Ids that are both a row and a quarantine record: must always be 0.
const TWO_FATES: &str = "SELECT count(*) AS n FROM user_logins u JOIN quarantined_messages q USING (message_id)";

/// The binary's environment for `replay` into `db`, with a ledger on disk under `dir`.
fn replay_env(db: &TestDb, dir: &Path) -> Vec<(String, String)> {
    vec![
        ("PII_INGEST__POSTGRES__URL".into(), db.url.clone()),
        ("PII_INGEST__LEDGER__PATH".into(), dir.join("ledger").display().to_string()),
        ("PII_INGEST__MASKING__KEY".into(), support::TEST_KEY.into()),
        ("PII_INGEST__MASKING__KEY_ID".into(), "test-key".into()),
        ("PII_INGEST__LOG__FILTER".into(), "warn".into()),
        ("PII_INGEST__METRICS__LISTEN".into(), "".into()),
    ]
}

fn pg_dump(db: &TestDb, to: &Path) {
    let status = std::process::Command::new("pg_dump")
        .args(["--format=custom", "--file", to.to_str().unwrap(), &db.url])
        .status()
        .expect("pg_dump runs (apt-get install postgresql-client-15)");
    assert!(status.success(), "pg_dump failed");
}

/// The database as the dump left it. Into a recreated database: `pg_restore --clean` over the live
/// one fails on Postgres 15 once `user_logins` is partitioned (it drops each partition's inherited
/// key constraint on its own, which Postgres refuses), so a restore goes into a fresh database
/// (docs/partitions.md). Same name, same URL: what the ingester sees is the same as with `--clean`.
async fn restore(db: &TestDb, from: &Path) {
    pii_ingest::db::drop_database(&db.url).await.unwrap();
    pii_ingest::db::create_database_if_missing(&db.url).await.unwrap();
    let output = std::process::Command::new("pg_restore")
        .args(["--exit-on-error", "--dbname", &db.url, from.to_str().unwrap()])
        .output()
        .expect("pg_restore runs (apt-get install postgresql-client-15)");
    assert!(output.status.success(), "pg_restore failed: {}", String::from_utf8_lossy(&output.stderr));
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn sent_at() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

#[tokio::test]
async fn a_restore_under_a_live_ledger_writes_again_what_the_restore_took_away() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let env = replay_env(&db, dir.path());
    let sample = support::sample();
    let (f1, f2, dump) = (dir.path().join("f1.jsonl"), dir.path().join("f2.jsonl"), dir.path().join("db.dump"));
    write_lines(&f1, &sample[..50]);
    write_lines(&f2, &sample[50..]);

    ok(run(&env, &["replay", "--file", f1.to_str().unwrap()]));
    pg_dump(&db, &dump);
    ok(run(&env, &["replay", "--file", f2.to_str().unwrap()]));
    assert_eq!(db.count(PROCESSED).await, 100);
    restore(&db, &dump).await;
    assert_eq!(db.count(PROCESSED).await, 50, "the restore took F2 away");

    // The same ledger still holds F2's ids: it must not vouch for rows the database no longer has.
    let again: serde_json::Value =
        serde_json::from_str(&ok(run(&env, &["replay", "--file", f2.to_str().unwrap(), "--json"]))).unwrap();
    assert_eq!(again["duplicate_ledger"].as_u64(), Some(0), "{again}");
    assert_eq!(db.count(PROCESSED).await, 100, "{again}");
    assert_eq!(db.count(TWO_FATES).await, 0);
}

#[tokio::test]
async fn a_restored_database_makes_ledger_hits_write_again_instead_of_deleting_them() {
    let TestEnv { db, queue } = TestEnv::new(1).await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("empty.dump");
    pg_dump(&db, &dump);
    queue.send_bodies(support::logins(30)).await;

    // First consumer commits all 30 and records them in its ledger, but its deletes never land.
    let ledger = Arc::new(Ledger::temporary());
    let first = pipeline(Faulty::new(queue.source().await, Fault::NeverDelete), &db, ledger.clone(), settings());
    let stop = CancellationToken::new();
    let running = tokio::spawn(first.run(stop.clone()));
    support::wait_for_count(&db, "SELECT count(*) AS n FROM user_logins", 30).await;
    stop.cancel();
    running.await.unwrap();

    // The database goes back to before the drain; the ledger lives on. Every redelivery is a ledger
    // hit that Postgres no longer confirms: it must be written, not deleted.
    restore(&db, &dump).await;
    let report = drain(pipeline(queue.source().await, &db, ledger, settings()), LIMIT).await;
    assert_eq!(report.written, 30, "{report}");
    assert_eq!(report.duplicate_ledger, 0, "{report}");
    assert!(report.reconciles(), "{report}");
    assert_eq!(db.rows().await, 30);
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test]
async fn a_reused_idempotency_key_with_another_body_is_kept_as_a_key_conflict() {
    let TestEnv { db, queue } = TestEnv::new(1).await;
    let bodies = support::logins(4);
    let keyed = |body: &String, key: &str| Outgoing { body: body.clone(), key: Some(key.into()), origin: None };
    queue.send(vec![keyed(&bodies[0], "order-1")]).await;
    drain_once(queue.source().await, &db).await;

    // Later: the producer reuses the key for another login, and retries the first send. In the same
    // send, two more logins share a key of their own (so they likely meet in one batch).
    queue
        .send(vec![
            keyed(&bodies[1], "order-1"),
            keyed(&bodies[0], "order-1"),
            keyed(&bodies[2], "order-2"),
            keyed(&bodies[3], "order-2"),
        ])
        .await;
    // Every first delete fails: the conflicting deliveries come back and must not make a second record.
    let report = drain_once(Faulty::new(queue.source().await, Fault::FailFirstDeletes), &db).await;

    assert!(report.reconciles(), "{report}");
    assert_eq!(report.quarantined.get("key_conflict"), Some(&2), "{report}");
    assert_eq!(db.rows().await, 2, "one row per key");
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages WHERE reason = 'key_conflict'").await, 2);
    assert_eq!(
        db.count("SELECT count(*) AS n FROM quarantined_messages WHERE masked_body LIKE '%\"ip\"%' AND masked_body NOT LIKE '%.%.%.%'").await,
        2,
        "the conflicting body is kept, masked"
    );
    assert_eq!(db.count(TWO_FATES).await, 0);
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test]
async fn an_over_long_idempotency_key_is_quarantined_naming_the_attribute() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let body = support::logins(1).remove(0);
    queue.send(vec![Outgoing { body, key: Some("k".repeat(300)), origin: None }]).await;
    let report = drain_once(queue.source().await, &db).await;

    assert_eq!(report.quarantined.get("invalid_key"), Some(&1), "{report}");
    assert_eq!(db.rows().await, 0, "no silent fallback to the MessageId");
    assert_eq!(
        db.count(
            "SELECT count(*) AS n FROM quarantined_messages WHERE field = 'idempotency-key' AND detail NOT LIKE '%kkk%'"
        )
        .await,
        1
    );
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test]
async fn a_grown_reordered_or_re_exported_archive_writes_only_its_new_lines() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("archive.jsonl");
    let mut lines = support::sample();
    write_lines(&path, &lines);
    let first = drain_once(FileSource::open(&path, Some(sent_at()), support::keying()).unwrap(), &db).await;
    assert_eq!(first.written + first.quarantined_total(), 100, "{first}");

    // Ten new logins appended, and one more copy of an existing line: an equal line is a genuine
    // repeat login (its second occurrence), so it is new too.
    let new = pii_ingest::seed::generate(10, Default::default(), 7);
    lines.extend(new.into_iter().map(|m| m.body));
    lines.push(lines[0].clone());
    write_lines(&path, &lines);
    let grown = drain_once(FileSource::open(&path, Some(sent_at()), support::keying()).unwrap(), &db).await;
    assert_eq!((grown.written, grown.quarantined_total()), (11, 0), "{grown}");

    // Re-exported in another order, with Windows line ends: nothing new.
    lines.reverse();
    std::fs::write(&path, lines.join("\r\n")).unwrap();
    let reordered = drain_once(FileSource::open(&path, Some(sent_at()), support::keying()).unwrap(), &db).await;
    assert_eq!((reordered.written, reordered.quarantined_total()), (0, 0), "{reordered}");
    assert_eq!(db.count(PROCESSED).await, 111);
}

#[tokio::test]
async fn a_message_judged_twice_under_two_validation_configs_keeps_its_first_fate() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.jsonl");
    write_lines(&path, &support::sample());
    let strict = Rules { device_types: vec!["android".into()], ..Rules::default() };
    let mut first = pipeline(
        FileSource::open(&path, Some(sent_at()), support::keying()).unwrap(),
        &db,
        Arc::new(Ledger::temporary()),
        settings(),
    );
    first.rules = strict;
    let report = drain(first, LIMIT).await;
    let refused = report.quarantined.get("unknown_device_type").copied().unwrap_or(0);
    assert!(refused > 10, "the strict config refused the iOS logins: {report}");

    // Judged again under the default rules (which accept iOS): still quarantined, never also a row.
    let second = drain_once(FileSource::open(&path, Some(sent_at()), support::keying()).unwrap(), &db).await;
    assert_eq!((second.written, second.quarantined_total()), (0, 0), "{second}");
    assert_eq!(db.count(PROCESSED).await, 100);
    assert_eq!(db.count(TWO_FATES).await, 0);
}

#[tokio::test]
async fn a_repeat_inside_a_batch_is_not_deleted_while_its_first_delivery_stays_in_the_queue() {
    let TestEnv { db, queue } = TestEnv::new(30).await;
    queue.send_bodies(support::logins(10)).await;
    queue.send_bodies((0..10).map(|i| format!("not json {i}"))).await;
    // Dead-letter mode: rejects are quarantined but left in the queue for its redrive policy. Each
    // message arrives twice in one batch; deleting the repeat would delete the message itself.
    let mut s = settings();
    s.delete_rejected = false;
    s.until_empty = false;
    let p = pipeline(Faulty::new(queue.source().await, Fault::DoubleDelivery), &db, Arc::new(Ledger::temporary()), s);
    let stop = CancellationToken::new();
    let running = tokio::spawn(p.run(stop.clone()));
    support::wait_for_count(&db, PROCESSED, 20).await;
    support::wait_for_count_at_most(&queue, 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let report = running.await.unwrap();

    assert!(report.reconciles(), "{report}");
    assert_eq!(queue.depth().await, 10, "the ten rejects stay in the queue for the redrive policy: {report}");
}

/// A trigger that records `synchronous_commit` as the write transaction sees it.
const RECORD_SYNC: &str = "
    CREATE TABLE seen_sync (setting text);
    CREATE FUNCTION record_sync() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO seen_sync VALUES (current_setting('synchronous_commit')); RETURN NULL; END $$;
    CREATE TRIGGER record_sync AFTER INSERT ON user_logins FOR EACH STATEMENT EXECUTE FUNCTION record_sync();
    CREATE TRIGGER record_sync AFTER INSERT ON quarantined_messages FOR EACH STATEMENT EXECUTE FUNCTION record_sync();";

#[tokio::test]
async fn both_sinks_commit_durably_even_where_the_database_default_is_asynchronous() {
    for insert in [false, true] {
        let db = TestDb::new().await;
        let name = db.url.rsplit('/').next().unwrap().to_owned();
        db.execute(&format!("ALTER DATABASE {name} SET synchronous_commit = off")).await;
        for statement in RECORD_SYNC.split_inclusive("$$;").flat_map(|s| s.split_terminator(";\n")) {
            if !statement.trim().is_empty() {
                db.execute(statement).await;
            }
        }
        assert_eq!(
            db.count("SELECT count(*) AS n FROM pg_settings WHERE name = 'synchronous_commit' AND setting = 'off'")
                .await,
            1
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.jsonl");
        write_lines(&path, &support::sample());
        let mut p = pipeline(
            FileSource::open(&path, None, support::keying()).unwrap(),
            &db,
            Arc::new(Ledger::temporary()),
            settings(),
        );
        p.sink = if insert { db.insert_sink() } else { db.copy_sink() };
        drain(p, LIMIT).await;

        assert!(db.count("SELECT count(*) AS n FROM seen_sync").await >= 2, "insert sink: {insert}");
        assert_eq!(
            db.count("SELECT count(*) AS n FROM seen_sync WHERE setting <> 'on'").await,
            0,
            "insert sink: {insert}"
        );
    }
}

/// One login is refused on every attempt with SQLSTATE 40001 (normally "retry"), another with 22001
/// worded in no known language: neither may hold the rest of their batch back for ever.
const POISON: &str = "
    CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.user_id = '{retry}' THEN RAISE EXCEPTION 'immer wieder' USING ERRCODE = '40001'; END IF;
        IF NEW.user_id = '{value}' THEN RAISE EXCEPTION 'Wert zu lang' USING ERRCODE = '22001'; END IF;
        RETURN NEW;
    END $$";

#[tokio::test]
async fn a_poison_row_is_isolated_after_a_retry_budget_on_both_sinks_whatever_the_server_language() {
    for insert in [false, true] {
        let TestEnv { db, queue } = TestEnv::new(30).await;
        let logins = support::logins(40);
        let user = |line: &str| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["user_id"].as_str().unwrap().to_owned()
        };
        db.execute(&POISON.replace("{retry}", &user(&logins[3])).replace("{value}", &user(&logins[20]))).await;
        db.execute("CREATE TRIGGER poison BEFORE INSERT ON user_logins FOR EACH ROW EXECUTE FUNCTION poison()").await;
        queue.send_bodies(logins).await;
        let mut s = settings();
        s.batch_max_rows = 1000;
        s.flush_interval = Duration::from_millis(500);
        let mut p = pipeline(queue.source().await, &db, Arc::new(Ledger::temporary()), s);
        p.sink = if insert { db.insert_sink() } else { db.copy_sink() };
        let report = drain(p, LIMIT).await;

        assert_eq!(report.written, 38, "insert sink: {insert}: {report}");
        assert_eq!(report.quarantined.get("db_rejected"), Some(&2), "insert sink: {insert}: {report}");
        assert!(report.reconciles(), "{report}");
        assert_eq!(queue.depth().await, 0);
    }
}

#[tokio::test]
async fn an_exported_queue_replayed_or_re_driven_after_its_drain_writes_nothing_twice() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let env = support::binary_env(&db, &queue, dir.path());
    let dump = dir.path().join("dump.jsonl");
    let sample = support::sample();
    let mut messages: Vec<Outgoing> =
        sample[..8].iter().map(|b| Outgoing { body: b.clone(), ..Outgoing::default() }).collect();
    messages[0].key = Some("order-1".into());
    queue.send(messages).await;

    // A peek leaves every message in the queue; the drain then writes them.
    let peeked = ok(run(&env, &["export", "--out", dump.to_str().unwrap(), "--peek"]));
    assert!(peeked.contains("exported 8 message(s)"), "{peeked}");
    assert_eq!(queue.depth().await, 8);
    let drained = drain_once(queue.source().await, &db).await;
    assert_eq!(drained.written + drained.quarantined_total(), 8, "{drained}");

    // The dump replayed: every envelope is keyed as its SQS delivery was, and dated by it.
    let replayed = drain_once(FileSource::open(&dump, None, support::keying()).unwrap(), &db).await;
    assert_eq!((replayed.written, replayed.quarantined_total(), replayed.duplicates()), (0, 0, 8), "{replayed}");
    // Re-driven to the queue: the same messages again, under their old ids.
    ok(run(&env, &["seed", "--file", dump.to_str().unwrap()]));
    let redriven = drain_once(queue.source().await, &db).await;
    assert_eq!((redriven.written, redriven.quarantined_total(), redriven.duplicates()), (0, 0, 8), "{redriven}");
    assert_eq!(db.count(PROCESSED).await, 8);
    assert_eq!(db.count("SELECT count(*) AS n FROM user_logins WHERE message_id = 'key:order-1'").await, 1);

    // A draining export deletes what it wrote, and only that. (First the drain's last long poll, 1 s,
    // must be over: one abandoned server-side would take the new messages in flight.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    queue.send_bodies(support::logins(3)).await;
    let out = dir.path().join("dlq.jsonl");
    let exported = ok(run(&env, &["export", "--out", out.to_str().unwrap()]));
    assert_eq!(queue.depth().await, 0, "{exported}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 3);
    let written = drain_once(FileSource::open(&out, None, support::keying()).unwrap(), &db).await;
    assert_eq!(written.written, 3, "{written}");
    assert_eq!(
        db.count("SELECT count(*) AS n FROM user_logins WHERE create_date <> (sent_at AT TIME ZONE 'UTC')::date").await,
        0
    );
    assert_eq!(db.count(PROCESSED).await, 11);
}
