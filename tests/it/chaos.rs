//! A small chaos run against the real binary (the full one is `scripts/chaos.sh`): SIGKILL it mid-drain
//! several times, or SIGTERM it, then drain with `run --until-empty`, and check that each of the 2,000
//! generated messages ended as exactly one row or one quarantine record, as its body deserves.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use pii_ingest::event::{self, Rules};
use pii_ingest::seed::{self, Mix, Outgoing};

use crate::support::{TestDb, TestEnv, TestQueue, binary_env};

const MESSAGES: usize = 2_000;
const PROCESSED: &str = "SELECT (SELECT count(*) FROM user_logins) + (SELECT count(*) FROM quarantined_messages) AS n";

fn start(env: &[(String, String)], args: &[&str]) -> Child {
    crate::support::binary::bare()
        .args(["--config", "/dev/null"])
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        // Static emulator credentials through the standard chain, whatever the config keys are called.
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Waits for `child` to exit, killing it and failing the test after `limit`. Returns the exit status,
/// stdout and stderr.
async fn finish(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String, String) {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            let output = child.wait_with_output().unwrap();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            return (output.status, text(&output.stdout), text(&output.stderr));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("pii-ingest did not exit within {limit:?}; stderr:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until rows + quarantine records reach `want`, failing after 30 s.
async fn wait_processed(db: &TestDb, child: &mut Child, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = db.count(PROCESSED).await;
        if n >= want {
            return n;
        }
        assert!(child.try_wait().unwrap().is_none(), "`run` exited on its own at {n} processed");
        assert!(Instant::now() < deadline, "processed stayed at {n}, waiting for {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `run --until-empty --json`: exits 0, and its report.
async fn drain(env: &[(String, String)]) -> serde_json::Value {
    let (status, stdout, stderr) =
        finish(start(env, &["run", "--until-empty", "--json"]), Duration::from_secs(40)).await;
    assert!(status.success(), "final drain failed ({status}):\n{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("report is not JSON ({e}): {stdout}"))
}

fn quarantined(report: &serde_json::Value) -> u64 {
    report["quarantined"].as_object().map(|o| o.values().filter_map(serde_json::Value::as_u64).sum()).unwrap_or(0)
}

/// The generated load and the user ids of its valid logins (what `user_logins` must hold at the end).
fn load(seed: u64) -> (Vec<Outgoing>, BTreeSet<String>) {
    let messages = seed::generate(MESSAGES, Mix { bad: 0.02, repeat: 0.0 }, seed);
    let valid: BTreeSet<String> = messages
        .iter()
        .filter_map(|m| event::parse(m.body.as_bytes(), &Rules::default()).ok())
        .map(|l| l.user_id)
        .collect();
    assert!(valid.len() < MESSAGES && valid.len() > MESSAGES * 9 / 10, "the load has some bad messages");
    (messages, valid)
}

/// Every message ended exactly once, with the fate its body deserves, and the queue is empty.
async fn assert_exactly_once(db: &TestDb, queue: &TestQueue, valid: &BTreeSet<String>) {
    #[derive(diesel::QueryableByName)]
    struct UserId {
        #[diesel(sql_type = diesel::sql_types::Text)]
        user_id: String,
    }
    let rows = db.rows().await;
    let quarantined = db.count("SELECT count(*) AS n FROM quarantined_messages").await;
    assert_eq!(rows + quarantined, MESSAGES as i64, "rows {rows} + quarantined {quarantined}");
    let ids = "(SELECT message_id FROM user_logins UNION ALL SELECT message_id FROM quarantined_messages) ids";
    assert_eq!(
        db.count(&format!("SELECT count(DISTINCT message_id) AS n FROM {ids}")).await,
        MESSAGES as i64,
        "a message id stored twice"
    );
    assert_eq!(db.count("SELECT count(DISTINCT user_id) AS n FROM user_logins").await, rows, "a login stored twice");
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages WHERE reason = 'db_rejected'").await, 0);
    let stored: Vec<UserId> =
        diesel::sql_query("SELECT user_id FROM user_logins").load(&mut db.conn().await).await.unwrap();
    let stored: BTreeSet<String> = stored.into_iter().map(|r| r.user_id).collect();
    assert!(
        stored == *valid,
        "logins differ from the valid messages: {} missing, {} unexpected",
        valid.difference(&stored).count(),
        stored.difference(valid).count()
    );
    assert_eq!(queue.depth().await, 0, "messages left in the queue");
}

#[tokio::test]
async fn killed_three_times_mid_drain_every_message_lands_exactly_once() {
    let TestEnv { db, queue } = TestEnv::new(2).await;
    let dir = tempfile::tempdir().unwrap();
    let env = binary_env(&db, &queue, dir.path());
    let (messages, valid) = load(11);
    queue.send(messages).await;

    // Staggered: as soon as the first rows land, then a quarter and half-way through (each run
    // picks up where the last one's committed work ends; the killed runs' in-flight messages come
    // back 2 s later).
    let mut kills_mid_drain = 0;
    for target in [1, MESSAGES as i64 / 4, MESSAGES as i64 / 2] {
        let mut child = start(&env, &["run"]);
        let reached = wait_processed(&db, &mut child, target).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if reached < MESSAGES as i64 {
            kills_mid_drain += 1;
        }
    }
    assert!(kills_mid_drain >= 1, "no kill landed before the drain was over");

    let report = drain(&env).await;
    assert_eq!(report["abandoned"], 0, "{report}");
    assert_exactly_once(&db, &queue, &valid).await;
}

#[tokio::test]
async fn sigterm_mid_drain_exits_zero_within_the_visibility_timeout_and_loses_nothing() {
    const VISIBILITY: u32 = 5;
    let TestEnv { db, queue } = TestEnv::new(VISIBILITY).await;
    let dir = tempfile::tempdir().unwrap();
    let env = binary_env(&db, &queue, dir.path());
    let (messages, valid) = load(12);
    queue.send(messages).await;

    let mut child = start(&env, &["run", "--json"]);
    wait_processed(&db, &mut child, 1).await;
    let signalled = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let (status, stdout, stderr) = finish(child, Duration::from_secs(30)).await;
    let took = signalled.elapsed();
    assert!(status.success(), "SIGTERM: exit {status}\n{stdout}\n{stderr}");
    assert!(
        took < Duration::from_secs(VISIBILITY.into()),
        "SIGTERM: took {took:?} to exit, visibility timeout is {VISIBILITY} s"
    );
    let stopped: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("report is not JSON ({e}): {stdout}"));

    let last = drain(&env).await;
    assert_exactly_once(&db, &queue, &valid).await;
    // Nothing was killed, so the two reports account for every row and record.
    let rows = db.rows().await as u64;
    assert_eq!(stopped["written"].as_u64().unwrap() + last["written"].as_u64().unwrap(), rows, "{stopped}\n{last}");
    assert_eq!(quarantined(&stopped) + quarantined(&last), MESSAGES as u64 - rows, "{stopped}\n{last}");
}
