//! How much memory the sled ledger takes as it fills: records N random UUID ids in batches of 10
//! (as SQS deliveries arrive) and prints the peak RSS. `cargo run --release --example ledger_rss -- 1000000`

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = pii_ingest::ledger::Ledger::open(&dir.path().join("ledger")).unwrap();
    let ids: Vec<String> = (0..1000).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for round in 0..n / 1000 {
        let batch: Vec<String> = ids.iter().map(|id| format!("{id}-{round}")).collect();
        for chunk in batch.chunks(10) {
            ledger.record(chunk.iter().map(String::as_str));
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak = status.lines().find(|l| l.starts_with("VmHWM")).unwrap();
    println!("{n} ids: ledger entries {}, {peak}", ledger.len());
}
