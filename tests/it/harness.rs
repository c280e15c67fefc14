//! The harness keeps its promise: what a test makes is removed however the test ends.

use pii_ingest::{db, source};

use crate::support::{TestEnv, server_url, sqs_config};

#[tokio::test]
async fn a_test_database_and_queue_are_removed_even_when_the_test_panics() {
    let (sent, made) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let TestEnv { db, queue } = TestEnv::new(5).await;
            sent.send((db.url.clone(), queue.url.clone())).unwrap();
            panic!("a failing assertion");
        })
    })
    .join();
    assert!(test.is_err(), "the test panicked");
    let (url, queue_url) = made.recv().unwrap();
    let name = url.rsplit('/').next().unwrap().to_owned();
    let admin = db::connect_client(&format!("{}/postgres", server_url())).await.unwrap();
    let left = admin.query("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await.unwrap();
    assert!(left.is_empty(), "{name} outlived its test");
    let client = source::sqs::client(&sqs_config("unused")).await;
    let queue = client.get_queue_attributes().queue_url(&queue_url).send().await;
    assert!(queue.is_err(), "{queue_url} outlived its test");
}
