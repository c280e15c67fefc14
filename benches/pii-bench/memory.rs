//! Peak memory: draining large bodies under the byte budget, and a large backlog.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use aws_sdk_sqs::Client;
use pii_ingest::{db, seed, source};

use crate::harness::{
    cpu_seconds, fresh_database, fresh_queue, ingest_env, seed_queue, spawn, sqs_config, wait_with_peak_rss,
};
use crate::{Args, Row};

/// Peak RSS while draining `args.large` bodies of about 1 MiB (half logins with a large extra field,
/// half not JSON) mixed with 4 small logins each: with defaults, then with batch settings that would
/// multiply the peak if counts, not bytes, bounded it.
pub(crate) async fn large_bodies(
    args: &Args,
    ingester: &PathBuf,
    work: &std::path::Path,
    table: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let client = source::sqs::client(&sqs_config(args, "unused")).await;
    let variants: [(&str, &[(&str, &str)]); 2] = [
        ("default settings", &[]),
        (
            "batch_max_rows 5000, receivers 16",
            &[("PII_INGEST__PIPELINE__BATCH_MAX_ROWS", "5000"), ("PII_INGEST__PIPELINE__RECEIVERS", "16")],
        ),
    ];
    for (label, extra) in variants {
        let n = args.large;
        let queue = fresh_queue(&client).await?;
        let db_url = fresh_database(&args.postgres, "pii_bench_large").await?;
        let mut env = ingest_env(args, &db_url, &queue.0, work, "large");
        env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        eprintln!("large: {n} bodies of ~1 MiB + {} small, {label}", 4 * n);
        let child = spawn(ingester, &["run"], &env)?;
        let pid = child.id();
        let watcher = tokio::task::spawn_blocking(move || wait_with_peak_rss(child));
        let started = Instant::now();
        feed_large(&client, &queue.1, n).await?;
        let pg = db::connect_client(&db_url).await?;
        let sql = "SELECT (SELECT count(*) FROM user_logins) + (SELECT count(*) FROM quarantined_messages)";
        while (pg.query_one(sql, &[]).await?.get::<_, i64>(0) as usize) < 5 * n {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        let usage = watcher.await??;
        client.delete_queue().queue_url(&queue.1).send().await?;
        table.push(Row {
            measure: format!(
                "peak RSS draining {n} bodies of ~1 MiB + {} small, {label}, MiB ({seconds:.0} s, ingester CPU {:.0} s)",
                4 * n,
                usage.cpu_seconds
            ),
            value: format!("{:.1}", usage.peak_kib as f64 / 1024.0),
            baseline: "160 MiB (pipeline.max_inflight_bytes, the default)".into(),
            ratio: Some(usage.peak_kib as f64 / 1024.0 / 160.0),
            target: "<= 1.00",
        });
    }
    Ok(())
}

/// Sends `n` large bodies, each followed by 4 small logins, keeping at most 40 large ones queued.
pub(crate) async fn feed_large(client: &Client, url: &str, n: usize) -> anyhow::Result<()> {
    let padding = "x".repeat(1_000_000);
    let small = seed::generate(4 * n, seed::Mix { bad: 0.0, repeat: 0.0 }, 7);
    for i in 0..n {
        while i % 10 == 0 && queued(client, url).await? > 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let body = if i % 2 == 0 {
            format!(
                "{{\"user_id\": \"u{i}\", \"device_type\": \"ios\", \"ip\": \"10.0.0.1\", \"device_id\": \"123-45-6789\", \"locale\": \"RU\", \"app_version\": \"2.3.0\", \"padding\": \"{padding}\"}}"
            )
        } else {
            format!("{i} {padding}")
        };
        client.send_message().queue_url(url).message_body(body).send().await?;
        seed::send(client, url, None, small[4 * i..4 * i + 4].to_vec(), 1, |_| {}).await?;
    }
    Ok(())
}

/// Visible + in-flight messages.
pub(crate) async fn queued(client: &Client, url: &str) -> anyhow::Result<u64> {
    use aws_sdk_sqs::types::QueueAttributeName::{ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible};
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(ApproximateNumberOfMessages)
        .attribute_names(ApproximateNumberOfMessagesNotVisible)
        .send()
        .await?;
    let attributes = out.attributes().cloned().unwrap_or_default();
    Ok(attributes.values().filter_map(|v| v.parse::<u64>().ok()).sum())
}

/// The bound on peak RSS draining a 1,000,000-message backlog with default settings.
const BACKLOG_RSS_MIB: f64 = 64.0;

/// Peak RSS and CPU of `pii-ingest run --until-empty` over a backlog of `args.backlog` messages, with
/// default settings (self-sizing receivers, the ledger on), and the same of `--baseline-ingester` (the
/// ingester before this work, built by scripts/bench.sh) over a backlog of its own.
pub(crate) async fn backlog(
    args: &Args,
    ingester: &PathBuf,
    work: &std::path::Path,
    client: &Client,
    table: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let n = args.backlog;
    let baseline = match &args.baseline_ingester {
        Some(binary) => Some(drain_backlog(args, binary, work, client, "baseline").await?),
        None => None,
    };
    let now = drain_backlog(args, ingester, work, client, "pii-ingest").await?;
    let per_million = |d: &Drained| d.usage.cpu_seconds * 1e6 / n as f64;
    let mib = |d: &Drained| d.usage.peak_kib as f64 / 1024.0;
    table.push(Row {
        measure: format!("peak RSS draining a {n}-message backlog, default settings, MiB ({:.0} msg/s)", now.rate),
        value: format!("{:.1}", mib(&now)),
        baseline: match &baseline {
            Some(b) => format!("{BACKLOG_RSS_MIB:.0} MiB bound (before: {:.1} MiB at {:.0} msg/s)", mib(b), b.rate),
            None => format!("{BACKLOG_RSS_MIB:.0} MiB bound"),
        },
        ratio: Some(mib(&now) / BACKLOG_RSS_MIB),
        target: "<= 1.00",
    });
    match &baseline {
        Some(b) => table.push(Row {
            measure: format!("ingester CPU per million messages, s ({n}-message backlog)"),
            value: format!("{:.1}", per_million(&now)),
            baseline: format!("{:.1} the ingester before (--baseline-ingester), same backlog", per_million(b)),
            ratio: Some(per_million(&now) / per_million(b)),
            target: "<= 0.50",
        }),
        None => table.push(Row {
            measure: format!("ingester CPU per million messages, s ({n}-message backlog)"),
            value: format!("{:.1}", per_million(&now)),
            baseline: "none: pass --baseline-ingester (scripts/bench.sh does)".into(),
            ratio: None,
            target: "<= 0.50",
        }),
    }
    let floor = bare_drain_cpu_per_million(args, client).await?;
    table.push(Row {
        measure: format!("ingester CPU per million messages vs the SDK's floor, s ({n}-message backlog)"),
        value: format!("{:.1}", per_million(&now)),
        baseline: format!(
            "{floor:.1} a bare receive+delete drain through the same SDK, no work ({} msgs, {} receivers, one thread)",
            args.messages, args.receivers
        ),
        ratio: Some(per_million(&now) / floor),
        target: "(report)",
    });
    Ok(())
}

/// CPU seconds per million messages of a bare receive-10-then-delete drain (the SDK's own cost, the
/// floor under any ingester built on it), on a current-thread runtime of its own thread, as that thread's
/// CPU time: no proxy, no work, nothing else on the thread.
async fn bare_drain_cpu_per_million(args: &Args, client: &Client) -> anyhow::Result<f64> {
    let n = args.messages;
    eprintln!("backlog: seeding {n} messages for the SDK's floor");
    let (_, url) = fresh_queue(client).await?;
    seed_queue(client, &url, n).await?;
    let config = sqs_config(args, "unused");
    let receivers = args.receivers;
    let drain_url = url.clone();
    let seconds = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let client = source::sqs::client(&config).await;
            let before = cpu_seconds("/proc/thread-self/stat")?;
            crate::sqs::bare_drain(&client, &drain_url, n, receivers).await?;
            Ok(cpu_seconds("/proc/thread-self/stat")? - before)
        })
    })
    .await??;
    client.delete_queue().queue_url(&url).send().await?;
    eprintln!("backlog: bare drain of {n}: {seconds:.2} s of CPU");
    Ok(seconds * 1e6 / n as f64)
}

struct Drained {
    usage: crate::harness::Usage,
    rate: f64,
}

/// Seeds a fresh queue with `args.backlog` messages and drains it with `binary` at default settings
/// into a fresh database; fails unless every message ends as a row or a quarantine record.
async fn drain_backlog(
    args: &Args,
    binary: &PathBuf,
    work: &std::path::Path,
    client: &Client,
    label: &str,
) -> anyhow::Result<Drained> {
    let n = args.backlog;
    eprintln!("backlog ({label}): seeding {n} messages");
    let queue = fresh_queue(client).await?;
    seed_queue(client, &queue.1, n).await?;
    let db_url = fresh_database(&args.postgres, "pii_bench_backlog").await?;
    eprintln!("backlog ({label}): {} run --until-empty", binary.display());
    let mut env = ingest_env(args, &db_url, &queue.0, work, &format!("backlog-{label}"));
    // Default settings: the receivers size themselves.
    env.retain(|(k, _)| k != "PII_INGEST__PIPELINE__RECEIVERS");
    let started = Instant::now();
    let usage = wait_with_peak_rss(spawn(binary, &["run", "--until-empty", "--json"], &env)?)?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let pg = db::connect_client(&db_url).await?;
    let rows: i64 = pg.query_one("SELECT count(*) FROM user_logins", &[]).await?.get(0);
    let quarantined: i64 = pg.query_one("SELECT count(*) FROM quarantined_messages", &[]).await?.get(0);
    if (rows + quarantined) as usize != n {
        bail!("backlog of {n} ended as {rows} rows + {quarantined} quarantined ({label})");
    }
    client.delete_queue().queue_url(&queue.1).send().await?;
    eprintln!(
        "backlog ({label}): {:.1} MiB peak, {:.1} s CPU, {rate:.0} msg/s",
        usage.peak_kib as f64 / 1024.0,
        usage.cpu_seconds
    );
    Ok(Drained { usage, rate })
}
