//! Replay tests: duplicate deliveries injected every way SQS produces them; each ends with exactly one
//! row per message.

use std::sync::Arc;
use std::time::Duration;

use pii_ingest::ledger::Ledger;
use tokio_util::sync::CancellationToken;

use crate::support::faults::{Fault, Faulty};
use crate::support::{self, TestDb, TestEnv, drain, drain_once, pipeline, settings};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_sample_queue_becomes_99_rows_and_one_quarantine_record() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    queue.send_bodies(support::sample()).await;
    let report = drain_once(queue.source().await, &db).await;

    assert_eq!((report.received, report.written, report.quarantined_total()), (100, 99, 1));
    assert_eq!(report.quarantined.get("missing_field"), Some(&1));
    assert!(report.reconciles(), "{report}");
    assert_eq!(db.rows().await, 99);
    assert_eq!(db.count("SELECT count(*) AS n FROM user_logins WHERE locale IS NULL").await, 29);
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages").await, 1);
    assert_eq!(queue.depth().await, 0, "every message is deleted after commit");
}

#[tokio::test]
async fn the_same_message_twice_in_one_batch_writes_one_row() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    queue.send_bodies(support::logins(30)).await;
    let report = drain_once(Faulty::new(queue.source().await, Fault::DoubleDelivery), &db).await;

    assert_eq!(report.received, 60);
    assert_eq!(report.written, 30);
    assert_eq!(report.duplicate_in_batch, 30);
    assert!(report.reconciles(), "{report}");
    assert_eq!(db.rows().await, 30);
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test]
async fn a_failed_delete_is_redelivered_after_the_visibility_timeout_and_skipped_by_the_ledger() {
    let TestEnv { db, queue } = TestEnv::new(1).await;
    queue.send_bodies(support::logins(40)).await;
    let report = drain_once(Faulty::new(queue.source().await, Fault::FailFirstDeletes), &db).await;

    assert_eq!(report.written, 40);
    assert_eq!(report.delete_failed, 40, "every first delete failed");
    assert_eq!(report.duplicate_ledger, 40, "every redelivery was caught by the ledger");
    assert_eq!(report.received, 80);
    assert!(report.reconciles(), "{report}");
    assert_eq!(db.rows().await, 40);
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test]
async fn a_wiped_ledger_falls_back_to_the_database_unique_key() {
    let TestEnv { db, queue } = TestEnv::new(2).await;
    queue.send_bodies(support::logins(50)).await;

    // First consumer commits everything but its deletes never land; it is stopped once all rows exist.
    let first =
        pipeline(Faulty::new(queue.source().await, Fault::NeverDelete), &db, Arc::new(Ledger::temporary()), settings());
    let stop = CancellationToken::new();
    let run = tokio::spawn(first.run(stop.clone()));
    support::wait_for_count(&db, "SELECT count(*) AS n FROM user_logins", 50).await;
    stop.cancel();
    let first_report = run.await.unwrap();
    assert_eq!(first_report.written, 50);

    // Its ledger is gone: the second consumer starts empty and must rely on Postgres.
    let report = drain_once(queue.source().await, &db).await;
    assert_eq!(report.written, 0);
    assert_eq!(report.duplicate_database, 50);
    assert!(report.reconciles(), "{report}");
    assert_eq!(db.rows().await, 50);
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test]
async fn a_ledger_on_disk_survives_a_restart_and_skips_redeliveries() {
    let TestEnv { db, queue } = TestEnv::new(1).await;
    let dir = tempfile::tempdir().unwrap();
    queue.send_bodies(support::logins(20)).await;
    {
        let (ledger, _) = Ledger::open(&dir.path().join("ledger"), pii_ingest::ledger::DEFAULT_MAX_ENTRIES).unwrap();
        let first = pipeline(Faulty::new(queue.source().await, Fault::NeverDelete), &db, Arc::new(ledger), settings());
        let stop = CancellationToken::new();
        let run = tokio::spawn(first.run(stop.clone()));
        support::wait_for_count(&db, "SELECT count(*) AS n FROM user_logins", 20).await;
        stop.cancel();
        run.await.unwrap();
    }
    let (ledger, _) = Ledger::open(&dir.path().join("ledger"), pii_ingest::ledger::DEFAULT_MAX_ENTRIES).unwrap();
    let report = drain(pipeline(queue.source().await, &db, Arc::new(ledger), settings()), LIMIT).await;
    assert_eq!(report.duplicate_ledger, 20, "{report}");
    assert_eq!(db.rows().await, 20);
}

#[tokio::test]
async fn two_consumers_draining_one_queue_write_one_row_per_message() {
    let TestEnv { db, queue } = TestEnv::new(1).await;
    let n = 300;
    let messages = pii_ingest::seed::generate(n, Default::default(), 42);
    queue.send(messages).await;
    // Deletes slower than the visibility timeout: the other consumer receives the same messages too.
    let slow = Duration::from_millis(1500);
    let a = pipeline(
        Faulty::new(queue.source().await, Fault::SlowDelete(slow)),
        &db,
        Arc::new(Ledger::temporary()),
        settings(),
    );
    let b = pipeline(
        Faulty::new(queue.source().await, Fault::SlowDelete(slow)),
        &db,
        Arc::new(Ledger::temporary()),
        settings(),
    );
    let (ra, rb) = tokio::join!(drain(a, LIMIT), drain(b, LIMIT));

    assert!(ra.reconciles() && rb.reconciles(), "{ra}\n{rb}");
    assert_eq!(ra.written + rb.written, n as u64, "each message written by exactly one consumer");
    assert!(ra.duplicates() + rb.duplicates() > 0, "the test did provoke overlapping deliveries");
    assert_eq!(db.rows().await, n as i64);
    assert_eq!(db.count("SELECT count(DISTINCT message_id) AS n FROM user_logins").await, n as i64);
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test]
async fn identical_bodies_sent_twice_are_two_messages_and_two_rows() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let body = support::sample()[0].clone();
    queue.send_bodies([body.clone(), body]).await;
    let report = drain_once(queue.source().await, &db).await;
    assert_eq!(report.written, 2, "the SQS MessageId, not the body, is the dedup key");
}

#[tokio::test]
async fn create_date_is_the_sent_date_so_every_delivery_lands_on_the_same_day() {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    queue.send_bodies(support::logins(5)).await;
    drain_once(queue.source().await, &db).await;
    assert_eq!(
        db.count("SELECT count(*) AS n FROM user_logins WHERE create_date = (sent_at AT TIME ZONE 'UTC')::date AND sent_at <= ingested_at").await,
        5
    );
}

#[tokio::test]
async fn a_batch_slower_than_the_visibility_timeout_is_kept_invisible_not_redelivered() {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    let TestEnv { db, queue } = TestEnv::new(2).await;
    queue.send_bodies(support::logins(30)).await;

    // Hold a lock on the table for 5 s (2.5 visibility timeouts): the writer blocks mid-transaction.
    let mut locker = db.conn().await;
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let hold = tokio::spawn(async move {
        locker
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                diesel::sql_query("LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE").execute(conn).await?;
                let _ = locked_tx.send(());
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await
            .unwrap();
    });
    locked_rx.await.unwrap();
    let report = drain_once(queue.source().await, &db).await;
    hold.await.unwrap();

    assert_eq!(report.written, 30);
    assert_eq!(report.received, 30, "no message was redelivered while its batch was waiting: {report}");
    assert!(report.visibility_extended >= 30, "{report:?}");
}

#[tokio::test]
async fn both_sinks_insert_only_new_ids_when_a_batch_mixes_new_and_stored_ones() {
    use pii_ingest::sink::{NewLogin, Sink};
    let db = TestDb::new().await;
    let row = |i: usize| NewLogin {
        message_id: format!("m-{i}"),
        user_id: format!("u-{i}"),
        device_type: "ios".into(),
        masked_ip: "a".repeat(64),
        masked_device_id: "b".repeat(64),
        locale: None,
        app_version: "1.0".into(),
        create_date: chrono::Utc::now().date_naive(),
        sent_at: chrono::Utc::now(),
        mask_key_id: "k".into(),
        ip_sealed: None,
        device_id_sealed: None,
        seal_key_id: None,
        body_fingerprint: format!("{i:064}"),
    };
    for (sink, offset) in [(db.copy_sink(), 0), (db.insert_sink(), 100)] {
        let first: Vec<_> = (offset..offset + 10).map(row).collect();
        assert_eq!(sink.write(&first, &[]).await.unwrap().logins.len(), 10);
        // 5..15: five already claimed, five new. The COPY sink's direct COPY of the claims is refused
        // by their primary key and falls back to INSERT ... ON CONFLICT.
        let mixed: Vec<_> = (offset + 5..offset + 15).map(row).collect();
        let written = sink.write(&mixed, &[]).await.unwrap();
        let mut ids: Vec<_> = written.logins.into_iter().collect();
        ids.sort();
        let mut want: Vec<_> = (offset + 10..offset + 15).map(|i| format!("m-{i}")).collect();
        want.sort();
        assert_eq!(ids, want);
    }
    assert_eq!(db.rows().await, 30);
}

/// A login keyed `m-{i}` whose body fingerprint is `body`, sent 2026-03-04T05:06:07.123456Z (a month
/// whose partition the sink creates).
fn login(i: usize, body: usize) -> pii_ingest::sink::NewLogin {
    let sent_at = chrono::DateTime::from_timestamp(1_772_600_767, 123_456_000).unwrap();
    pii_ingest::sink::NewLogin {
        message_id: format!("m-{i}"),
        user_id: format!("u-{i}"),
        device_type: "ios".into(),
        masked_ip: "a".repeat(64),
        masked_device_id: "b".repeat(64),
        locale: i.is_multiple_of(2).then(|| "DE".into()),
        app_version: "1.0".into(),
        create_date: sent_at.date_naive(),
        sent_at,
        mask_key_id: "k".into(),
        ip_sealed: i.is_multiple_of(3).then(|| vec![1, 2, 3]),
        device_id_sealed: None,
        seal_key_id: i.is_multiple_of(3).then(|| "s".into()),
        body_fingerprint: format!("{body:064}"),
    }
}

#[tokio::test]
async fn the_copy_sink_keeps_every_claim_rule_by_copy_and_by_unnest_alike() {
    use pii_ingest::sink::{CopySink, NewQuarantined};
    let db = TestDb::new().await;
    let record = |i: usize| NewQuarantined {
        message_id: format!("m-{i}"),
        reason: "missing_field".into(),
        field: Some("ip".into()),
        detail: "missing".into(),
        masked_body: None,
        body_hmac: format!("{i:064}"),
        body_bytes: 3,
        receive_count: 1,
        sent_at: chrono::Utc::now(),
        mask_key_id: "k".into(),
        body_sealed: None,
        seal_key_id: None,
    };
    let sorted = |set: std::collections::HashSet<String>| {
        let mut v: Vec<_> = set.into_iter().collect();
        v.sort();
        v
    };
    let ids = |range: std::ops::Range<usize>| range.map(|i| format!("m-{i}")).collect::<Vec<_>>();
    // Forced each way: COPY whatever the size, and INSERT ... SELECT FROM unnest whatever the size.
    for (offset, unnest_below) in [(0, 0), (100, usize::MAX)] {
        let sink = CopySink::new(&db.url, 1).with_unnest_below(unnest_below);
        let new: Vec<_> = (offset..offset + 10).map(|i| login(i, i)).collect();
        let written = sink.write(&new, &[record(offset + 10)]).await.unwrap();
        assert_eq!((written.logins.len(), written.quarantined.len()), (10, 1), "unnest below {unnest_below}");
        // 5 stored with their own bodies (duplicates), one stored under another body (a conflict), a
        // record's key as a login (a duplicate: one fate), 4 new of which one twice in the batch.
        let mut mixed: Vec<_> = (offset + 5..offset + 9).map(|i| login(i, i)).collect();
        mixed.push(login(offset + 9, 999));
        mixed.push(login(offset + 10, offset + 10));
        mixed.extend((offset + 11..offset + 15).map(|i| login(i, i)));
        mixed.push(login(offset + 11, offset + 11));
        let written = sink.write(&mixed, &[]).await.unwrap();
        assert_eq!(sorted(written.logins), ids(offset + 11..offset + 15), "unnest below {unnest_below}");
        assert_eq!(sorted(written.conflicts), ids(offset + 9..offset + 10), "unnest below {unnest_below}");
        assert!(written.quarantined.is_empty());
    }
    assert_eq!(db.rows().await, 28);
    assert_eq!(db.count("SELECT count(*) AS n FROM message_claims").await, 30);
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages").await, 2);
    let sealed = "SELECT count(*) AS n FROM user_logins WHERE ip_sealed = '\\x010203' AND seal_key_id = 's'";
    assert_eq!(db.count(sealed).await, 10, "both paths write every column");
    assert_eq!(db.count("SELECT count(*) AS n FROM user_logins WHERE locale = 'DE'").await, 14);
    let dated = "SELECT count(*) AS n FROM user_logins_2026_03 \
                 WHERE sent_at = '2026-03-04 05:06:07.123456+00' AND create_date = '2026-03-04'";
    assert_eq!(db.count(dated).await, 28, "both paths write dates and times alike");
}

#[tokio::test]
async fn the_copy_sink_keeps_writing_after_a_migration_changes_the_claims_key_type() {
    use pii_ingest::sink::CopySink;
    let db = TestDb::new().await;
    let admin = pii_ingest::db::connect_client(&db.url).await.unwrap();
    // One connection each, so the second write reuses the statements the first one prepared.
    for (offset, unnest_below) in [(0, 0), (100, usize::MAX)] {
        admin.batch_execute("ALTER TABLE message_claims ALTER COLUMN dedup_key TYPE varchar(256)").await.unwrap();
        let sink = CopySink::new(&db.url, 1).with_unnest_below(unnest_below);
        let first: Vec<_> = (offset..offset + 5).map(|i| login(i, i)).collect();
        assert_eq!(sink.write(&first, &[]).await.unwrap().logins.len(), 5);
        // A later migration widens the key: what the prepared claim statement returns changes type.
        admin.batch_execute("ALTER TABLE message_claims ALTER COLUMN dedup_key TYPE text").await.unwrap();
        let mut second: Vec<_> = (offset + 3..offset + 10).map(|i| login(i, i)).collect();
        second.push(login(offset + 2, 999));
        let written = sink.write(&second, &[]).await.expect("the write right after the migration");
        assert_eq!(written.logins.len(), 5, "unnest below {unnest_below}: 3 duplicates, 5 new");
        assert_eq!(written.conflicts.len(), 1, "unnest below {unnest_below}");
        let keys: Vec<String> = (offset..offset + 10).map(|i| format!("m-{i}")).collect();
        assert_eq!(sink.claims(&keys).await.unwrap().len(), 10, "unnest below {unnest_below}");
    }
    assert_eq!(db.rows().await, 20);
}

#[tokio::test]
async fn statements_cancelled_mid_write_are_retried_never_quarantined_on_either_sink() {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    for insert in [false, true] {
        let TestEnv { db, queue } = TestEnv::new(30).await;
        queue.send_bodies(support::logins(40)).await;
        // Lock the table, and cancel every statement that waits on the lock, as statement_timeout or
        // lock_timeout would. The writes fail with "canceling statement", which is not the rows' fault.
        let mut locker = db.conn().await;
        let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
        let name = db.url.rsplit('/').next().unwrap().to_owned();
        let canceller_url = db.url.clone();
        let hold = tokio::spawn(async move {
            let mut canceller = diesel_async::AsyncPgConnection::establish(&canceller_url).await.unwrap();
            locker
                .transaction::<_, diesel::result::Error, _>(async |conn| {
                    diesel::sql_query("LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE").execute(conn).await?;
                    let _ = locked_tx.send(());
                    for _ in 0..30 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let cancel = format!(
                            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
                             WHERE datname = '{name}' AND wait_event_type = 'Lock'"
                        );
                        diesel::sql_query(cancel).execute(&mut canceller).await?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
        });
        locked_rx.await.unwrap();
        let sink = if insert { db.insert_sink() } else { db.copy_sink() };
        let mut p = pipeline(queue.source().await, &db, Arc::new(Ledger::temporary()), settings());
        p.sink = sink;
        let report = drain(p, LIMIT).await;
        hold.await.unwrap();

        assert_eq!(report.written, 40, "insert sink: {insert}: {report}");
        assert_eq!(report.quarantined_total(), 0, "insert sink: {insert}: {report}");
        assert!(report.retries > 0, "the cancellations did happen: {report:?}");
    }
}
