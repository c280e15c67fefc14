//! The SQS side: pii-ingest's drain against a bare receive+delete drain, and sent->commit latency.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use pii_ingest::config::SqsConfig;
use pii_ingest::{db, seed, source};

use crate::harness::{
    Usage, fresh_database, fresh_queue, ingest_env, seed_queue, spawn, spawn_reporting, sqs_config, wait_with_peak_rss,
};
use crate::{Args, Row, memory, proxy};

/// At each round-trip time of `args.rtt_ms` (through a [`proxy`]): the bare drain, pii-ingest pinned
/// to the bare drain's concurrency, pii-ingest with default (self-sizing) receivers, then the bare drain
/// again. The emulator's speed drifts over a run (seen here: 2,800 to 3,100 msg/s between fresh
/// queues), so the baseline is the mean of the bare drains before and after.
pub(crate) async fn sqs_side(
    args: &Args,
    ingester: &PathBuf,
    work: &std::path::Path,
    table: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let client = source::sqs::client(&sqs_config(args, "unused")).await;
    let n = args.messages;
    let upstream = upstream(&args.sqs_endpoint).await?;
    let mut auto_at_zero = None;
    let mut rate_at_zero = None;
    for &rtt in &args.rtt_ms {
        let proxy = proxy::start(upstream, Duration::from_millis(rtt)).await?;
        let endpoint = format!("http://{}", proxy.addr);
        let through =
            source::sqs::client(&SqsConfig { endpoint_url: Some(endpoint.clone()), ..sqs_config(args, "unused") })
                .await;
        let before = bare_drain_of_fresh_queue(args, &client, &through, &format!("before, {rtt} ms")).await?;
        let (fixed, usage) = ingest_drain(args, ingester, work, &client, &endpoint, Some(args.receivers)).await?;
        let (auto, _) = ingest_drain(args, ingester, work, &client, &endpoint, None).await?;
        let after = bare_drain_of_fresh_queue(args, &client, &through, &format!("after, {rtt} ms")).await?;
        let bare = (before + after) / 2.0;
        let r = args.receivers;
        table.push(Row {
            measure: format!("SQS drain at {rtt} ms RTT, msg/s ({n} msgs, {r} receivers)"),
            value: format!("{fixed:.0}"),
            baseline: format!("{bare:.0} bare receive+delete, {r} receivers (before {before:.0}, after {after:.0})"),
            ratio: Some(fixed / bare),
            target: ">= 0.90",
        });
        let zero = *auto_at_zero.get_or_insert(auto);
        table.push(Row {
            measure: format!("SQS drain at {rtt} ms RTT, msg/s ({n} msgs, self-sizing receivers, defaults)"),
            value: format!("{auto:.0}"),
            baseline: format!("{zero:.0} the same at {} ms RTT", args.rtt_ms[0]),
            ratio: Some(auto / zero),
            target: if rtt == 20 { ">= 0.90" } else { "report" },
        });
        if rate_at_zero.is_none() {
            rate_at_zero = Some(fixed);
            table.push(Row {
                measure: format!("peak RSS draining {n} msgs, MiB (ingester CPU {:.1} s)", usage.cpu_seconds),
                value: format!("{:.1}", usage.peak_kib as f64 / 1024.0),
                baseline: "100 MiB bound".into(),
                ratio: Some(usage.peak_kib as f64 / 1024.0 / 100.0),
                target: "<= 1.00",
            });
        }
    }
    if let Some(rate) = rate_at_zero.filter(|_| args.latency_seconds > 0) {
        latency(args, ingester, work, &client, rate / 2.0, table).await?;
    }
    if args.backlog > 0 {
        memory::backlog(args, ingester, work, &client, table).await?;
    }
    Ok(())
}

/// `pii-ingest run --until-empty` over a fresh queue of `args.messages`, reaching SQS at `endpoint`,
/// with `receivers` pinned or (None) the default: its msg/s and what it used.
async fn ingest_drain(
    args: &Args,
    ingester: &PathBuf,
    work: &std::path::Path,
    client: &Client,
    endpoint: &str,
    receivers: Option<usize>,
) -> anyhow::Result<(f64, Usage)> {
    let n = args.messages;
    let queue = fresh_queue(client).await?;
    seed_queue(client, &queue.1, n).await?;
    let db_url = fresh_database(&args.postgres, "pii_bench_sqs").await?;
    let mut env = ingest_env(args, &db_url, &queue.0, work, "sqs");
    env.retain(|(k, _)| k != "PII_INGEST__PIPELINE__RECEIVERS" && k != "PII_INGEST__SQS__ENDPOINT_URL");
    env.push(("PII_INGEST__SQS__ENDPOINT_URL".into(), endpoint.into()));
    if let Some(r) = receivers {
        env.push(("PII_INGEST__PIPELINE__RECEIVERS".into(), r.to_string()));
    }
    let label = receivers.map_or("self-sizing receivers".to_owned(), |r| format!("{r} receivers"));
    eprintln!("sqs: pii-ingest run --until-empty via {endpoint}, {label}");
    // A fresh ledger each time: the same tag would carry the last drain's ids.
    let _ = std::fs::remove_dir_all(work.join("ledger-sqs"));
    let started = Instant::now();
    let mut child = spawn_reporting(ingester, &["run", "--until-empty", "--json"], &env)?;
    let report = child.stdout.take();
    let usage = wait_with_peak_rss(child)?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_reader(report.context("stdout is piped")?)?;
    eprintln!("  {rate:.0} msg/s, receivers at most {}", report["receivers_peak"]);
    client.delete_queue().queue_url(&queue.1).send().await?;
    Ok((rate, usage))
}

/// The emulator's socket address, from its endpoint URL.
async fn upstream(endpoint: &str) -> anyhow::Result<std::net::SocketAddr> {
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    tokio::net::lookup_host(host).await?.next().with_context(|| format!("{endpoint} names no address"))
}

/// Seeds a fresh queue with `args.messages` and returns the bare drain's rate.
/// The queue is made and seeded through `client`, drained through `through` (the proxy).
pub(crate) async fn bare_drain_of_fresh_queue(
    args: &Args,
    client: &Client,
    through: &Client,
    when: &str,
) -> anyhow::Result<f64> {
    let n = args.messages;
    eprintln!("sqs: seeding {n} messages for the bare drain ({when})");
    let (_, url) = fresh_queue(client).await?;
    seed_queue(client, &url, n).await?;
    eprintln!("sqs: bare drain, {when} (receive 10 + delete batch, {} receivers)", args.receivers);
    let rate = bare_drain(through, &url, n, args.receivers).await?;
    client.delete_queue().queue_url(&url).send().await?;
    Ok(rate)
}

/// Messages/s of receive-10-then-delete with `receivers` concurrent loops, until `n` are deleted.
pub(crate) async fn bare_drain(client: &Client, url: &str, n: usize, receivers: usize) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..receivers {
        let (client, url, done) = (client.clone(), url.to_owned(), done.clone());
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < n {
                let out = client
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await?;
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() {
                    continue;
                }
                let entries = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                            .expect("id and handle set")
                    })
                    .collect();
                let out = client.delete_message_batch().queue_url(&url).set_entries(Some(entries)).send().await?;
                done.fetch_add(out.successful().len(), Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Sends at `rate` msg/s for the configured seconds while `pii-ingest run` drains, then reads the
/// SentTimestamp-to-commit latency of every row from the database.
pub(crate) async fn latency(
    args: &Args,
    ingester: &PathBuf,
    work: &std::path::Path,
    client: &Client,
    rate: f64,
    table: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let queue = fresh_queue(client).await?;
    let db_url = fresh_database(&args.postgres, "pii_bench_latency").await?;
    let env = ingest_env(args, &db_url, &queue.0, work, "latency");
    let mut child = spawn(ingester, &["run"], &env)?;
    let total = (rate * args.latency_seconds as f64) as usize;
    eprintln!("latency: {total} messages at {rate:.0} msg/s while pii-ingest runs");
    let started = Instant::now();
    let mut sent = 0;
    let tick = Duration::from_millis(100);
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
        if due > sent {
            let batch = seed::generate(due - sent, seed::Mix::default(), sent as u64);
            seed::send(client, &queue.1, None, batch, 8, |_| {}).await?;
            sent = due;
        }
        tokio::time::sleep(tick).await;
    }
    let mut pg = db::connect_client(&db_url).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: i64 = pg.query_one("SELECT count(*) FROM user_logins", &[]).await?.get(0);
        if n as usize >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    child.wait()?;
    let row = pg
        .query_one(
            "SELECT (percentile_cont(0.5) WITHIN GROUP (ORDER BY ms))::float8, \
                    (percentile_cont(0.99) WITHIN GROUP (ORDER BY ms))::float8 \
             FROM (SELECT extract(epoch FROM ingested_at - sent_at) * 1000 AS ms FROM user_logins) t",
            &[],
        )
        .await?;
    let _ = &mut pg;
    let (p50, p99): (f64, f64) = (row.get(0), row.get(1));
    client.delete_queue().queue_url(&queue.1).send().await?;
    table.push(Row {
        measure: format!("latency sent->commit at {rate:.0} msg/s, p50 / p99 ms"),
        value: format!("{p50:.0} / {p99:.0}"),
        baseline: "-".into(),
        ratio: None,
        target: "report",
    });
    Ok(())
}
