//! No raw PII, whatever shape a message arrives in (issue 12): a corpus of shapes (SNS and
//! EventBridge envelopes, camelCase, nesting, arrays, numbers, JSON inside strings, extra PII fields,
//! PII in keys) and a real SNS -> SQS subscription, drained by the binary at `RUST_LOG=trace`. Each
//! message has exactly one fate, wrapped logins become rows with the inner values' tokens, and no
//! planted value appears in a full `pg_dump`, any output line or the ledger.

use std::path::Path;

use aws_sdk_sqs::types::QueueAttributeName;
use pii_ingest::{seed, source};

use crate::support::binary::{ok, run as pii_ingest, with};
use crate::support::{TestDb, TestEnv, TestQueue, binary_env, masker, server_url, sqs_config};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/pii-corpus.jsonl");

/// Values planted in the corpus: each must be found there, and never anywhere after the drain.
const PLANTED: &[&str] = &[
    "198.51.100.7",
    "111-22-3333",
    "198.51.100.8",
    "222-33-4444",
    "198.51.100.9",
    "333-44-5555",
    "198.51.100.10",
    "444556666",
    "198.51.100.11",
    "555-66-7777",
    "198.51.100.12",
    "666-77-8888",
    "2001:db8::77",
    "777-88-9999",
    "203.0.113.99",
    "888-99-0000",
    "198.51.100.13",
    "999-00-1111",
    "198.51.100.14",
    "000-11-2222",
    "203.0.113.21",
    "921-00-0001",
    "203.0.113.22",
    "922-00-0002",
    "203.0.113.23",
    "923-00-0003",
    "203.0.113.24",
    "924-00-0004",
    "203.0.113.25",
    "925-00-0005",
    "203.0.113.26",
    "2001:db8::26",
    "926-00-0006",
    "203.0.113.27",
    "927000007",
    "203.0.113.28",
    "928-00-0008",
    "203.0.113.29",
    "929-00-0009",
    "alice.corpus@example.com",
    "+1-555-0100-2929",
    "203.0.113.129",
    "alice.key@example.com",
    "203.0.113.30",
    "930-00-0010",
    "203.0.113.31",
    "931-00-0011",
    "203.0.113.32",
    "932-00-0012",
    "2001:DB8:0:0:0:0:0:33",
    "933-00-0013",
    "203.0.113.34",
    "934-00-0014",
];

/// Wrapped or renamed logins of the corpus and the raw values their row's tokens must come from.
const WRAPPED: &[(&str, &str, &str)] = &[
    ("u-sns", "203.0.113.21", "921-00-0001"),
    ("u-eb", "203.0.113.22", "922-00-0002"),
    ("u-sns-eb", "203.0.113.23", "923-00-0003"),
    ("u-camel", "203.0.113.24", "924-00-0004"),
    ("u-extra", "203.0.113.29", "929-00-0009"),
    ("u-v6", "2001:db8::33", "933-00-0013"),
];

/// The camelCase producer's names, accepted through `[fields]`.
fn camel_case_fields(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    for (key, camel) in [
        ("USER_ID", "userId"),
        ("APP_VERSION", "appVersion"),
        ("DEVICE_TYPE", "deviceType"),
        ("IP", "ipAddress"),
        ("DEVICE_ID", "deviceId"),
    ] {
        let names = format!("[\"{}\", \"{camel}\"]", key.to_lowercase());
        env = with(&env, &format!("PII_INGEST__FIELDS__{key}"), &names);
    }
    env
}

/// Everything a drain leaves behind: a plain-text `pg_dump` of the whole database and the ledger's bytes.
fn leftovers(db: &TestDb, ledger_dir: &Path) -> String {
    let name = db.url.rsplit('/').next().unwrap();
    let dump = std::process::Command::new("pg_dump")
        .args(["--dbname", &format!("{}/{name}", server_url()), "--no-owner"])
        .output()
        .expect("pg_dump runs (apt-get install postgresql-client)");
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let mut text = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(text.contains("COPY public.user_logins"), "the dump holds the tables");
    for file in walk(ledger_dir) {
        text.push_str(&String::from_utf8_lossy(&std::fs::read(file).unwrap()));
    }
    text
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

fn assert_nothing_planted(what: &str, text: &str, planted: &[&str]) {
    for value in planted {
        assert!(!text.contains(value), "planted value {value:?} reached {what}");
    }
}

/// Rows whose tokens are those of `ip` and `device_id`.
async fn rows_with_tokens(db: &TestDb, user_id: &str, ip: &str, device_id: &str) -> i64 {
    let m = masker();
    let sql = format!(
        "SELECT count(*) AS n FROM user_logins WHERE user_id = '{user_id}' AND masked_ip = '{}' \
         AND masked_device_id = '{}'",
        m.token(ip),
        m.token(device_id)
    );
    db.count(&sql).await
}

/// Messages that ended as both a row and a quarantine record (must be none).
const BOTH_FATES: &str =
    "SELECT count(*) AS n FROM user_logins u JOIN quarantined_messages q ON q.message_id = u.message_id";

#[tokio::test]
async fn a_corpus_of_shapes_drained_at_trace_has_one_fate_each_and_leaks_no_planted_value() {
    let corpus = std::fs::read_to_string(CORPUS).unwrap();
    for value in PLANTED {
        assert!(corpus.contains(value), "{value} is planted in the corpus");
    }
    let TestEnv { db, queue } = TestEnv::new(5).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = camel_case_fields(&binary_env(&db, &queue, dir.path()));
    env.retain(|(k, _)| !k.ends_with("LOG__FILTER"));
    env.push(("RUST_LOG".into(), "trace".into()));
    let mut output = String::new();
    for args in [&["seed", "--file", CORPUS][..], &["run", "--until-empty", "--json"]] {
        let out = pii_ingest(&env, args);
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{output}");
    }
    assert!(output.contains("TRACE"), "the run really logged at trace level");

    let lines = corpus.lines().count() as i64;
    assert_eq!(db.rows().await, 8);
    assert_eq!(db.count("SELECT count(*) AS n FROM quarantined_messages").await, lines - 8);
    assert_eq!(db.count(BOTH_FATES).await, 0, "one fate per message");
    for (reason, n) in [("bad_envelope", 2), ("missing_field", 4), ("wrong_type", 4), ("invalid_ip", 2)] {
        let sql = format!("SELECT count(*) AS n FROM quarantined_messages WHERE reason = '{reason}'");
        assert_eq!(db.count(&sql).await, n, "{reason}");
    }
    for (user_id, ip, device_id) in WRAPPED {
        assert_eq!(rows_with_tokens(&db, user_id, ip, device_id).await, 1, "{user_id}");
    }
    // The masked bodies still show their shape: the nested login's keys, with tokens for values.
    let shape =
        "SELECT count(*) AS n FROM quarantined_messages WHERE masked_body LIKE '%\"device\":{%\"id\":\"str:11:%'";
    assert_eq!(db.count(shape).await, 1);

    assert_nothing_planted("the output", &output, PLANTED);
    assert_nothing_planted("the database or the ledger", &leftovers(&db, dir.path()), PLANTED);
    assert_nothing_planted("the database (canonical form)", &leftovers(&db, dir.path()), &["2001:db8::33"]);
    assert_eq!(queue.depth().await, 0);
}

/// The emulator that runs SNS (`PII_INGEST_TEST_SNS`, default: the SQS emulator's address).
fn sns_endpoint() -> String {
    std::env::var("PII_INGEST_TEST_SNS").unwrap_or_else(|_| crate::support::sqs_endpoint())
}

/// A topic with `queue` subscribed (notification envelopes: no raw message delivery).
async fn subscribed_topic(endpoint: &str, queue: &TestQueue) -> (aws_sdk_sns::Client, String) {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sns::config::Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await;
    let sns = aws_sdk_sns::Client::new(&config);
    let topic = match sns.create_topic().name(format!("it-{}", uuid::Uuid::new_v4().simple())).send().await {
        Ok(out) => out.topic_arn.unwrap(),
        Err(error) => panic!(
            "no SNS at {endpoint} ({error:?}): start an emulator with SNS \
             (`PII_INGEST_EMULATOR_PORT=4576 scripts/emulator.sh start`, SERVICES default sqs,sns) and set \
             PII_INGEST_TEST_SNS=http://127.0.0.1:4576, or run scripts/test.sh, which does both"
        ),
    };
    let attributes =
        queue.client.get_queue_attributes().queue_url(&queue.url).attribute_names(QueueAttributeName::QueueArn);
    let out = attributes.send().await.unwrap();
    let arn = out.attributes().unwrap()[&QueueAttributeName::QueueArn].clone();
    sns.subscribe().topic_arn(&topic).protocol("sqs").endpoint(arn).send().await.unwrap();
    (sns, topic)
}

#[tokio::test]
async fn a_login_published_through_a_real_sns_subscription_becomes_the_same_row_as_the_bare_login() {
    let endpoint = sns_endpoint();
    let mut config = sqs_config("unused");
    config.endpoint_url = Some(endpoint.clone());
    let client = source::sqs::client(&config).await;
    let name = format!("it-{}", uuid::Uuid::new_v4().simple());
    let url = seed::ensure_queue(&client, &name, 5).await.expect("the SNS emulator also runs SQS");
    let queue = TestQueue { client, name, url };
    let (sns, topic) = subscribed_topic(&endpoint, &queue).await;

    let login = r#"{"user_id":"u-real-sns","app_version":"2.3.0","device_type":"ios","ip":"2001:DB8::41","locale":null,"device_id":"941-00-0001"}"#;
    let not_a_login = r#"{"device":{"ip":"203.0.113.42","device_id":"942-00-0002"}}"#;
    for message in [login, not_a_login, "plain text from 203.0.113.43"] {
        sns.publish().topic_arn(&topic).message(message).send().await.unwrap();
    }
    queue.send_bodies([login]).await; // the same login, bare
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = with(&binary_env(&db, &queue, dir.path()), "PII_INGEST__SQS__ENDPOINT_URL", &endpoint);
    env.retain(|(k, _)| !k.ends_with("LOG__FILTER"));
    env.push(("RUST_LOG".into(), "trace".into()));
    let output = pii_ingest(&env, &["run", "--until-empty"]);
    let output = format!("{}{}", ok(output.clone()), String::from_utf8_lossy(&output.stderr));

    assert_eq!(rows_with_tokens(&db, "u-real-sns", "2001:db8::41", "941-00-0001").await, 2, "wrapped = bare");
    let fates = "SELECT count(*) AS n FROM quarantined_messages WHERE reason IN ('missing_field', 'bad_envelope')";
    assert_eq!(db.count(fates).await, 2);
    assert_eq!(db.count(BOTH_FATES).await, 0);
    assert_eq!(
        db.count("SELECT count(*) AS n FROM quarantined_messages WHERE masked_body LIKE '%\"TopicArn\":\"str:%'").await,
        2,
        "the real envelope's shape is kept"
    );
    let planted = ["2001:DB8::41", "2001:db8::41", "941-00-0001", "203.0.113.42", "942-00-0002", "203.0.113.43"];
    assert_nothing_planted("the output", &output, &planted);
    assert_nothing_planted("the database or the ledger", &leftovers(&db, dir.path()), &planted);
    assert_eq!(queue.depth().await, 0);
    let _ = sns.delete_topic().topic_arn(&topic).send().await;
}
