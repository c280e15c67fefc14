//! How much memory and time the ledger takes as it fills: records N random UUID ids (the shape of SQS
//! message ids) in batches of 10, as deliveries commit, looks each one up once, and prints the peak RSS.
//! `cargo run --release --example ledger_rss -- 1000000`

use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = pii_ingest::ledger::Ledger::open(&dir.path().join("ledger"), n).unwrap();
    let started = Instant::now();
    let mut found = 0;
    for _ in 0..n / 10 {
        let batch: Vec<String> = (0..10).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        found += batch.iter().filter(|id| ledger.contains(id)).count();
        ledger.record(batch.iter().map(String::as_str));
    }
    let elapsed = started.elapsed();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak = status.lines().find(|l| l.starts_with("VmHWM")).unwrap();
    println!(
        "{n} ids: ledger entries {}, {:.2} us per id (check + record), false hits {found}, {peak}",
        ledger.len(),
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
}
