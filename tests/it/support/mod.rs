//! Test harness: a fresh database and a fresh queue per test ([`TestEnv`]), on the real Postgres and
//! the real SQS emulator, so tests run in parallel and never depend on leftover state. Both are
//! removed when dropped, so a failing assertion leaks nothing. Databases are copied from a migrated
//! template, made once per migration set. Missing services fail the test loudly with the command
//! that starts them.

pub mod binary;
pub mod faults;
pub mod proxy;
pub mod tls_server;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use pii_ingest::config::SqsConfig;
use pii_ingest::counters::{Report, Stats};
use pii_ingest::event::Rules;
use pii_ingest::ledger::Ledger;
use pii_ingest::mask::Masker;
use pii_ingest::pipeline::{Pipeline, Settings};
use pii_ingest::seed::{self, Outgoing};
use pii_ingest::sink::{CopySink, PgSink, Postgres};
use pii_ingest::source::{Source, SqsSource};
use pii_ingest::{db, source};
use tokio_util::sync::CancellationToken;

/// The test masking key (tests only; real keys come from a file or the environment).
pub const TEST_KEY: &str = "integration-test-key-0123456789abcdef";

pub fn server_url() -> String {
    std::env::var("PII_INGEST_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn sqs_endpoint() -> String {
    std::env::var("PII_INGEST_TEST_SQS").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

pub fn masker() -> Masker {
    Masker::new(TEST_KEY.as_bytes(), Some("test-key")).unwrap()
}

/// The sample queue content shipped with the repo (99 logins, one malformed message).
pub const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/login-queue-sample.jsonl");

/// A database and a queue of the test's own, both removed when the test ends, however it ends
/// (destructure it: `let TestEnv { db, queue } = TestEnv::new(5).await;`).
pub struct TestEnv {
    pub db: TestDb,
    pub queue: TestQueue,
}

impl TestEnv {
    /// A fresh migrated database and a queue whose messages come back `visibility_secs` after an
    /// undeleted receive.
    pub async fn new(visibility_secs: u32) -> TestEnv {
        let (db, queue) = tokio::join!(TestDb::new(), TestQueue::new(visibility_secs));
        TestEnv { db, queue }
    }
}

/// Runs `cleanup` to completion on a runtime of its own, on a thread of its own: `Drop` may run
/// inside a test's runtime (which cannot block on another future) or while a panic unwinds.
fn clean_up<F: Future<Output = ()> + Send + 'static>(cleanup: F) {
    let done = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(30), cleanup).await })
    })
    .join();
    if !matches!(done, Ok(Ok(()))) {
        eprintln!("test cleanup did not finish: {done:?}");
    }
}

/// A migrated database of its own, copied from [`template`] and dropped (`WITH (FORCE)`) when the
/// value is dropped.
pub struct TestDb {
    pub url: String,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let url = self.url.clone();
        clean_up(async move {
            if let Err(error) = db::drop_database(&url).await {
                eprintln!("could not drop the test database: {error}");
            }
        });
    }
}

/// A connection to the server's `postgres` database, or a failed test saying how to start Postgres.
async fn admin() -> tokio_postgres::Client {
    match db::connect_client(&format!("{}/postgres", server_url())).await {
        Ok(client) => client,
        Err(error) => panic!(
            "Postgres is not reachable at {} ({error}): start it with \
             `pg_ctlcluster $(ls /etc/postgresql) main start`, or set PII_INGEST_TEST_POSTGRES",
            server_url()
        ),
    }
}

/// Hex SHA-256 (first 12 digits) of every file under `migrations/`, names included.
fn migrations_hash() -> String {
    use sha2::{Digest, Sha256};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("migrations/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() { dirs.push(path) } else { files.push(path) }
        }
    }
    files.sort();
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.strip_prefix(&root).unwrap().to_string_lossy().as_bytes());
        hash.update(std::fs::read(&file).expect("a readable migration"));
    }
    hex::encode(hash.finalize())[..12].to_owned()
}

/// Id of the advisory lock under which a template database is made (any constant will do).
const TEMPLATE_LOCK: i64 = 0x7069_695f_6974;

/// The migrated template database every test database is copied from, made once per migration set:
/// its name carries the migrations' hash, so a changed migration gets a template of its own. Made
/// under an advisory lock, as test binaries run in parallel, and marked a template only once it is
/// fully migrated (a half-made one, its maker killed, is made again).
async fn template() -> &'static str {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            let name = format!("pii_it_template_{}", migrations_hash());
            let admin = admin().await;
            admin.query("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK]).await.expect("the template lock");
            let row = admin.query_opt("SELECT datistemplate FROM pg_database WHERE datname = $1", &[&name]).await;
            let made = row.expect("pg_database is readable").map(|r| r.get::<_, bool>(0));
            if made != Some(true) {
                let quoted = format!("\"{name}\"");
                admin.batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")).await.unwrap();
                admin.batch_execute(&format!("CREATE DATABASE {quoted}")).await.unwrap();
                let url = format!("{}/{name}", server_url());
                db::migrate(&url).await.expect("migrations apply to a fresh database");
                admin.batch_execute(&format!("ALTER DATABASE {quoted} WITH IS_TEMPLATE true")).await.unwrap();
            }
            admin.query("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK]).await.expect("the template lock");
            name
        })
        .await
}

impl TestDb {
    pub async fn new() -> TestDb {
        let template = template().await;
        let name = format!("pii_it_{}", uuid::Uuid::new_v4().simple());
        let create = format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"");
        admin().await.batch_execute(&create).await.expect("a database copied from the migrated template");
        TestDb { url: format!("{}/{name}", server_url()) }
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        db::connect(&self.url).await.expect("test database accepts connections")
    }

    /// The sink named by `PII_INGEST_TEST_SINK` (`copy`, the default, or `insert`), so the whole
    /// suite can be run against either write method.
    pub fn sink(&self) -> Postgres {
        match std::env::var("PII_INGEST_TEST_SINK").as_deref() {
            Ok("insert") => self.insert_sink(),
            _ => self.copy_sink(),
        }
    }

    pub fn insert_sink(&self) -> Postgres {
        Postgres::Insert(PgSink::new(db::pool(&self.url, 4).unwrap()))
    }

    pub fn copy_sink(&self) -> Postgres {
        Postgres::Copy(CopySink::new(&self.url, 2))
    }

    /// One number from a query such as `SELECT count(*) AS n FROM user_logins`.
    pub async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let rows: Vec<N> = diesel::sql_query(sql).load(&mut self.conn().await).await.unwrap();
        rows[0].n
    }

    /// Rows in `user_logins`.
    pub async fn rows(&self) -> i64 {
        self.count("SELECT count(*) AS n FROM user_logins").await
    }

    pub async fn execute(&self, sql: &str) {
        diesel::sql_query(sql).execute(&mut self.conn().await).await.unwrap();
    }
}

/// A queue of its own on the emulator, deleted when the value is dropped.
pub struct TestQueue {
    pub client: Client,
    pub name: String,
    pub url: String,
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        let url = self.url.clone();
        // A client of the cleanup's own: the test's client belongs to the test's runtime.
        clean_up(async move {
            let client = source::sqs::client(&sqs_config("unused")).await;
            let _ = client.delete_queue().queue_url(url).send().await;
        });
    }
}

impl TestQueue {
    /// A queue whose messages come back `visibility_secs` after an undeleted receive.
    pub async fn new(visibility_secs: u32) -> TestQueue {
        let config = sqs_config("unused");
        let client = source::sqs::client(&config).await;
        let name = format!("it-{}", uuid::Uuid::new_v4().simple());
        let url =
            match tokio::time::timeout(Duration::from_secs(10), seed::ensure_queue(&client, &name, visibility_secs))
                .await
            {
                Ok(Ok(url)) => url,
                outcome => panic!(
                    "the SQS emulator is not reachable at {} ({outcome:?}): start it with \
                 `scripts/emulator.sh start`, or set PII_INGEST_TEST_SQS",
                    sqs_endpoint()
                ),
            };
        TestQueue { client, name, url }
    }

    pub async fn send(&self, messages: Vec<Outgoing>) {
        seed::send(&self.client, &self.url, Some("idempotency-key"), messages, 8, |_| {}).await.unwrap();
    }

    pub async fn send_bodies<S: Into<String>>(&self, bodies: impl IntoIterator<Item = S>) {
        self.send(bodies.into_iter().map(|b| Outgoing { body: b.into(), ..Outgoing::default() }).collect()).await;
    }

    /// Visible + in flight + delayed.
    pub async fn depth(&self) -> u64 {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let attributes = out.attributes().unwrap();
        [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ]
        .iter()
        .map(|k| attributes.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
        .sum()
    }

    pub async fn source(&self) -> SqsSource {
        let mut config = sqs_config(&self.name);
        config.queue_url = Some(self.url.clone());
        SqsSource::connect(&config).await.unwrap()
    }
}

pub fn sqs_config(queue: &str) -> SqsConfig {
    SqsConfig {
        endpoint_url: Some(sqs_endpoint()),
        access_key_id: Some("test".into()),
        secret_access_key: Some(pii_ingest::config::Secret("test".into())),
        queue_name: queue.into(),
        wait_time_seconds: 1,
        ..SqsConfig::default()
    }
}

/// Settings for a short test drain.
pub fn settings() -> Settings {
    Settings {
        receivers: pii_ingest::pipeline::Receivers::pinned(4),
        batch_max_rows: 200,
        writers: 2,
        flush_interval: Duration::from_millis(20),
        delete_concurrency: 4,
        until_empty: true,
        delete_rejected: true,
        max_inflight_bytes: pii_ingest::config::DEFAULT_MAX_INFLIGHT_BYTES,
        retry_budget: pii_ingest::pipeline::RETRY_BUDGET,
    }
}

/// How test replays key their lines: the test masking key, the default attribute.
pub fn keying() -> source::file::Keying {
    source::file::Keying { masker: masker(), attribute: "idempotency-key".into() }
}

pub fn pipeline<S: Source>(source: S, db: &TestDb, ledger: Arc<Ledger>, settings: Settings) -> Pipeline<S> {
    Pipeline {
        source: Arc::new(source),
        sink: db.sink(),
        ledger,
        masker: masker(),
        sealer: None,
        rules: Rules::default(),
        settings,
        stats: Arc::new(Stats::default()),
    }
}

/// Drains `source` into `db` with a fresh in-memory ledger and the test settings (60 s at most).
pub async fn drain_once<S: Source>(source: S, db: &TestDb) -> Report {
    drain(pipeline(source, db, Arc::new(Ledger::temporary()), settings()), Duration::from_secs(60)).await
}

/// Runs a pipeline until the queue is empty, failing the test if it takes longer than `limit`.
pub async fn drain<S: Source>(pipeline: Pipeline<S>, limit: Duration) -> Report {
    tokio::time::timeout(limit, pipeline.run(CancellationToken::new())).await.expect("the drain finished in time")
}

/// The lines of [`SAMPLE`].
pub fn sample() -> Vec<String> {
    std::fs::read_to_string(SAMPLE).unwrap().lines().map(str::to_owned).collect()
}

/// The first `n` valid logins of the sample.
pub fn logins(n: usize) -> Vec<String> {
    sample().into_iter().filter(|l| l.contains("user_id")).take(n).collect()
}

/// Polls `sql` (a count) until it reaches `want`, failing the test after 30 s.
pub async fn wait_for_count(db: &TestDb, sql: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = db.count(sql).await;
        if n >= want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sql} stayed at {n}, expected {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A config for the binary, pointing at this test's database and queue.
pub fn binary_env(db: &TestDb, queue: &TestQueue, ledger_dir: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("PII_INGEST__POSTGRES__URL".into(), db.url.clone()),
        ("PII_INGEST__SQS__ENDPOINT_URL".into(), sqs_endpoint()),
        ("PII_INGEST__SQS__ACCESS_KEY_ID".into(), "test".into()),
        ("PII_INGEST__SQS__SECRET_ACCESS_KEY".into(), "test".into()),
        ("PII_INGEST__SQS__QUEUE_NAME".into(), queue.name.clone()),
        ("PII_INGEST__SQS__WAIT_TIME_SECONDS".into(), "1".into()),
        ("PII_INGEST__LEDGER__PATH".into(), ledger_dir.join("ledger").display().to_string()),
        ("PII_INGEST__MASKING__KEY".into(), TEST_KEY.into()),
        ("PII_INGEST__MASKING__KEY_ID".into(), "test-key".into()),
        ("PII_INGEST__LOG__FILTER".into(), "warn".into()),
        // Tests run in parallel: each process serves its metrics on a port of its own.
        ("PII_INGEST__METRICS__LISTEN".into(), "127.0.0.1:0".into()),
    ]
}

/// Polls the queue until it holds at most `want` messages (visible, in flight or delayed), failing
/// the test after 30 s.
pub async fn wait_for_count_at_most(queue: &TestQueue, want: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = queue.depth().await;
        if n <= want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the queue stayed at {n}, expected at most {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
