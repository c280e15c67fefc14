//! `pii-bench`: measures pii-ingest against its two limits in one run and prints one table of
//! figures, baselines and ratios (run it through `scripts/bench.sh`, which builds in release mode and
//! starts the services).
//!
//! - SQS side: a bare drain (ReceiveMessage 10 + DeleteMessageBatch, no work, same concurrency) of N
//!   messages, then `pii-ingest run --until-empty` on another N-message queue.
//! - Postgres side: a bare binary COPY of M masked rows into a copy of `user_logins`, then
//!   `pii-ingest replay` of the same M lines (parse, mask, ledger, dedup, one transaction per batch).
//! - Peak RSS of the ingester while it drains, and SentTimestamp-to-commit latency at half of the
//!   measured drain rate.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use clap::Parser;
use pii_ingest::config::SqsConfig;
use pii_ingest::event::{Rules, parse};
use pii_ingest::mask::Masker;
use pii_ingest::sink::NewLogin;
use pii_ingest::sink::copy::copy_logins;
use pii_ingest::{db, seed, source};

#[derive(Parser)]
struct Args {
    /// Passed by `cargo bench`, which runs every bench target with it; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Messages per SQS measurement.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Rows per Postgres measurement.
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Concurrent receivers, for the bare drain and the ingester alike.
    #[arg(long, default_value_t = 8)]
    receivers: usize,
    /// Rounds of the Postgres measurements (COPY and replays interleaved); the table shows medians.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of steady load for the latency measurement (0 skips it).
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// Also drain a backlog of this many messages and report its peak RSS (0 skips it; the issue's
    /// figure is 1000000, which takes about 8 minutes here).
    #[arg(long, default_value_t = 0)]
    backlog: usize,
    /// Also drain this many bodies of about 1 MiB (each with 4 small logins) and report peak RSS with
    /// default settings and with 5x the batch and 2x the receivers (0 skips it; the figure is
    /// 1500). Fed while the ingester drains, at most 40 large ones queued at a time.
    #[arg(long, default_value_t = 0)]
    large: usize,
    #[arg(long)]
    skip_sqs: bool,
    #[arg(long)]
    skip_postgres: bool,
    #[arg(long, default_value = "http://127.0.0.1:4566")]
    sqs_endpoint: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
}

const KEY: &str = "benchmark-key-not-a-secret-0123456789";

struct Row {
    measure: String,
    value: String,
    baseline: String,
    ratio: Option<f64>,
    target: &'static str,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ingester = sibling_binary("pii-ingest")?;
    let mut table = Vec::new();
    let work = tempfile::tempdir()?;
    if !args.skip_postgres {
        postgres_side(&args, &ingester, work.path(), &mut table).await?;
    }
    if !args.skip_sqs {
        sqs_side(&args, &ingester, work.path(), &mut table).await?;
    }
    if args.large > 0 {
        large_bodies(&args, &ingester, work.path(), &mut table).await?;
    }
    print_table(&table);
    Ok(())
}

async fn sqs_side(args: &Args, ingester: &PathBuf, work: &std::path::Path, table: &mut Vec<Row>) -> anyhow::Result<()> {
    let client = source::sqs::client(&sqs_config(args, "unused")).await;
    let n = args.messages;
    // The emulator's speed drifts over a run (seen here: 2,800 to 3,100 msg/s between fresh queues), so
    // the bare drain runs before and after pii-ingest and the baseline is their mean.
    let before = bare_drain_of_fresh_queue(args, &client, "before").await?;
    eprintln!("sqs: seeding {n} messages for pii-ingest");
    let queue = fresh_queue(&client).await?;
    seed_queue(&client, &queue.1, n).await?;
    let db_url = fresh_database(&args.postgres, "pii_bench_sqs").await?;
    eprintln!("sqs: pii-ingest run --until-empty");
    let env = ingest_env(args, &db_url, &queue.0, work, "sqs");
    let started = Instant::now();
    let child = spawn(ingester, &["run", "--until-empty", "--json"], &env)?;
    let usage = wait_with_peak_rss(child)?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    client.delete_queue().queue_url(&queue.1).send().await?;
    let after = bare_drain_of_fresh_queue(args, &client, "after").await?;
    let bare = (before + after) / 2.0;
    table.push(Row {
        measure: format!("SQS drain, msg/s ({n} msgs, {} receivers)", args.receivers),
        value: format!("{rate:.0}"),
        baseline: format!("{bare:.0} bare receive+delete (before {before:.0}, after {after:.0})"),
        ratio: Some(rate / bare),
        target: ">= 0.90",
    });
    table.push(Row {
        measure: format!("peak RSS draining {n} msgs, MiB (ingester CPU {:.1} s)", usage.cpu_seconds),
        value: format!("{:.1}", usage.peak_kib as f64 / 1024.0),
        baseline: "100 MiB budget".into(),
        ratio: Some(usage.peak_kib as f64 / 1024.0 / 100.0),
        target: "<= 1.00",
    });
    if args.latency_seconds > 0 {
        latency(args, ingester, work, &client, rate / 2.0, table).await?;
    }
    if args.backlog > 0 {
        backlog(args, ingester, work, &client, table).await?;
    }
    Ok(())
}

/// Peak RSS while draining `args.large` bodies of about 1 MiB (half logins with a large extra field,
/// half not JSON) mixed with 4 small logins each: with defaults, then with batch settings that would
/// multiply the peak if counts, not bytes, bounded it.
async fn large_bodies(
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
            baseline: "160 MiB budget (pipeline.max_inflight_bytes 64 MiB)".into(),
            ratio: Some(usage.peak_kib as f64 / 1024.0 / 160.0),
            target: "<= 1.00",
        });
    }
    Ok(())
}

/// Sends `n` large bodies, each followed by 4 small logins, keeping at most 40 large ones queued.
async fn feed_large(client: &Client, url: &str, n: usize) -> anyhow::Result<()> {
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
async fn queued(client: &Client, url: &str) -> anyhow::Result<u64> {
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

/// Peak RSS of `pii-ingest run --until-empty` over a backlog of `args.backlog` messages.
async fn backlog(
    args: &Args,
    ingester: &PathBuf,
    work: &std::path::Path,
    client: &Client,
    table: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let n = args.backlog;
    eprintln!("backlog: seeding {n} messages");
    let queue = fresh_queue(client).await?;
    seed_queue(client, &queue.1, n).await?;
    let db_url = fresh_database(&args.postgres, "pii_bench_backlog").await?;
    eprintln!("backlog: pii-ingest run --until-empty");
    let env = ingest_env(args, &db_url, &queue.0, work, "backlog");
    let started = Instant::now();
    let usage = wait_with_peak_rss(spawn(ingester, &["run", "--until-empty", "--json"], &env)?)?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let pg = db::connect_client(&db_url).await?;
    let rows: i64 = pg.query_one("SELECT count(*) FROM user_logins", &[]).await?.get(0);
    let quarantined: i64 = pg.query_one("SELECT count(*) FROM quarantined_messages", &[]).await?.get(0);
    if (rows + quarantined) as usize != n {
        bail!("backlog of {n} ended as {rows} rows + {quarantined} quarantined");
    }
    client.delete_queue().queue_url(&queue.1).send().await?;
    table.push(Row {
        measure: format!(
            "peak RSS draining a {n}-message backlog, MiB ({rate:.0} msg/s, ingester CPU {:.0} s, ledger on)",
            usage.cpu_seconds
        ),
        value: format!("{:.1}", usage.peak_kib as f64 / 1024.0),
        baseline: "100 MiB budget".into(),
        ratio: Some(usage.peak_kib as f64 / 1024.0 / 100.0),
        target: "<= 1.00",
    });
    Ok(())
}

async fn postgres_side(
    args: &Args,
    ingester: &PathBuf,
    work: &std::path::Path,
    table: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let m = args.rows;
    let file = work.join("rows.jsonl");
    let lines: Vec<String> = seed::generate(m, seed::Mix::default(), 11).into_iter().map(|o| o.body).collect();
    std::fs::write(&file, lines.join("\n") + "\n")?;
    let db_url = fresh_database(&args.postgres, "pii_bench_pg").await?;

    // Rounds interleave the three measurements so that a slow spell of the machine hits all of them.
    let runs: [(&str, Option<&str>); 2] = [("replay", None), ("replay --no-ledger", Some("--no-ledger"))];
    let (mut copy_rates, mut replay_rates) = (Vec::new(), vec![Vec::new(), Vec::new()]);
    for round in 1..=args.rounds.max(1) {
        eprintln!("postgres: round {round}: bare binary COPY of {m} rows ({} streams)", writers());
        copy_rates.push(bare_copy(&db_url, &lines, writers()).await?);
        for ((label, extra), rates) in runs.iter().zip(&mut replay_rates) {
            // A fresh copy of the table each time, so every run inserts every row.
            fresh_database(&args.postgres, "pii_bench_pg_replay").await?;
            eprintln!("postgres: round {round}: pii-ingest {label} of the same {m} lines");
            let env = ingest_env(args, &format!("{}/pii_bench_pg_replay", args.postgres), "unused", work, label);
            let mut argv = vec!["replay", "--file", file.to_str().unwrap()];
            argv.extend(extra);
            let started = Instant::now();
            let status = spawn(ingester, &argv, &env)?.wait()?;
            if !status.success() {
                bail!("pii-ingest {label} failed");
            }
            rates.push(m as f64 / started.elapsed().as_secs_f64());
        }
    }
    let copy_rate = median(&mut copy_rates);
    let streams = writers();
    for ((label, extra), mut rates) in runs.into_iter().zip(replay_rates) {
        let rate = median(&mut rates);
        table.push(Row {
            measure: format!("Postgres write, rows/s ({m} rows, {label}, median of {})", rates.len()),
            value: format!("{rate:.0}"),
            baseline: format!("{copy_rate:.0} bare binary COPY, {streams} streams"),
            ratio: Some(rate / copy_rate),
            target: if extra.is_none() { ">= 0.70" } else { "(ledger off)" },
        });
    }
    Ok(())
}

/// Rows/s of a binary COPY of the masked rows into a fresh copy of `user_logins`, in `streams`
/// concurrent connections.
async fn bare_copy(db_url: &str, lines: &[String], streams: usize) -> anyhow::Result<f64> {
    let masker = Masker::new(KEY.as_bytes(), Some("bench")).unwrap();
    let rules = Rules::default();
    let now = chrono::Utc::now();
    // The rows are made before the clock starts: only the COPY itself is timed.
    let rows: Vec<NewLogin> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let login = parse(line.as_bytes(), &rules).map_err(|r| anyhow::anyhow!("{r}"))?;
            Ok(NewLogin {
                message_id: format!("bench-{i}"),
                masked_ip: masker.token(&login.ip),
                masked_device_id: masker.token(&login.device_id),
                user_id: login.user_id,
                device_type: login.device_type,
                locale: login.locale,
                app_version: login.app_version,
                create_date: now.date_naive(),
                sent_at: now,
                mask_key_id: masker.key_id().to_owned(),
                ip_sealed: None,
                device_id_sealed: None,
                seal_key_id: None,
                body_fingerprint: masker.token_bytes(line.as_bytes()),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let client = db::connect_client(db_url).await?;
    client
        .batch_execute("DROP TABLE IF EXISTS bench_copy; CREATE TABLE bench_copy (LIKE user_logins INCLUDING ALL)")
        .await?;
    // As many COPY streams as the ingester has writers, each one transaction over its share.
    let mut clients = Vec::new();
    for _ in 0..streams {
        clients.push(db::connect_client(db_url).await?);
    }
    let share = rows.len().div_ceil(streams);
    let started = Instant::now();
    let copies = clients.iter_mut().zip(rows.chunks(share)).map(|(client, rows)| async move {
        let tx = client.transaction().await?;
        copy_logins(&tx, "bench_copy", rows).await?;
        tx.commit().await?;
        anyhow::Ok(())
    });
    futures::future::try_join_all(copies).await?;
    Ok(rows.len() as f64 / started.elapsed().as_secs_f64())
}

/// Seeds a fresh queue with `args.messages` and returns the bare drain's rate.
async fn bare_drain_of_fresh_queue(args: &Args, client: &Client, when: &str) -> anyhow::Result<f64> {
    let n = args.messages;
    eprintln!("sqs: seeding {n} messages for the bare drain {when} pii-ingest");
    let (_, url) = fresh_queue(client).await?;
    seed_queue(client, &url, n).await?;
    eprintln!("sqs: bare drain {when} (receive 10 + delete batch, {} receivers)", args.receivers);
    let rate = bare_drain(client, &url, n, args.receivers).await?;
    client.delete_queue().queue_url(&url).send().await?;
    Ok(rate)
}

/// Messages/s of receive-10-then-delete with `receivers` concurrent loops, until `n` are deleted.
async fn bare_drain(client: &Client, url: &str, n: usize, receivers: usize) -> anyhow::Result<f64> {
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
async fn latency(
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

/// The ingester's default `pipeline.writers`: the bare COPY uses as many streams.
fn writers() -> usize {
    pii_ingest::config::PipelineConfig::default().writers
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn sqs_config(args: &Args, queue: &str) -> SqsConfig {
    SqsConfig {
        endpoint_url: Some(args.sqs_endpoint.clone()),
        queue_name: queue.into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some(pii_ingest::config::Secret("test".into())),
        ..SqsConfig::default()
    }
}

async fn fresh_queue(client: &Client) -> anyhow::Result<(String, String)> {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let url =
        seed::ensure_queue(client, &name, 30).await.context("is the emulator running? scripts/emulator.sh start")?;
    Ok((name, url))
}

async fn seed_queue(client: &Client, url: &str, n: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    seed::send(client, url, None, seed::generate(n, seed::Mix::default(), 5), 16, |_| {}).await?;
    eprintln!("  sent {n} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn fresh_database(server: &str, name: &str) -> anyhow::Result<String> {
    let url = format!("{server}/{name}");
    db::drop_database(&url).await?;
    db::create_database_if_missing(&url).await?;
    db::migrate(&url).await?;
    Ok(url)
}

fn ingest_env(args: &Args, db_url: &str, queue: &str, work: &std::path::Path, tag: &str) -> Vec<(String, String)> {
    vec![
        ("PII_INGEST__POSTGRES__URL".into(), db_url.into()),
        ("PII_INGEST__SQS__ENDPOINT_URL".into(), args.sqs_endpoint.clone()),
        ("PII_INGEST__SQS__ACCESS_KEY_ID".into(), "test".into()),
        ("PII_INGEST__SQS__SECRET_ACCESS_KEY".into(), "test".into()),
        ("PII_INGEST__SQS__QUEUE_NAME".into(), queue.into()),
        ("PII_INGEST__SQS__WAIT_TIME_SECONDS".into(), "1".into()),
        ("PII_INGEST__PIPELINE__RECEIVERS".into(), args.receivers.to_string()),
        (
            "PII_INGEST__LEDGER__PATH".into(),
            work.join(format!("ledger-{}", tag.replace(' ', "_"))).display().to_string(),
        ),
        ("PII_INGEST__MASKING__KEY".into(), KEY.into()),
        ("PII_INGEST__LOG__FILTER".into(), "warn".into()),
        ("PII_INGEST__METRICS__LISTEN".into(), "127.0.0.1:0".into()),
    ]
}

fn spawn(binary: &PathBuf, args: &[&str], env: &[(String, String)]) -> anyhow::Result<Child> {
    Command::new(binary)
        // An empty file: no config.toml of the working directory leaks in (a named file must exist).
        .args(["--config", "/dev/null"])
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

/// What [`wait_with_peak_rss`] saw of the child.
struct Usage {
    /// Peak resident set, KiB.
    peak_kib: u64,
    /// User + system CPU seconds (as last sampled, within 20 ms of the end).
    cpu_seconds: f64,
}

/// Waits for the child, sampling its resident set and CPU time every 20 ms.
fn wait_with_peak_rss(mut child: Child) -> anyhow::Result<Usage> {
    let pid = child.id();
    let mut usage = Usage { peak_kib: 0, cpu_seconds: 0.0 };
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for line in status.lines().filter(|l| l.starts_with("VmHWM:") || l.starts_with("VmRSS:")) {
                let kib = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
                usage.peak_kib = usage.peak_kib.max(kib);
            }
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the command name: utime and stime are the 12th and 13th, in ticks of 1/100 s.
            let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let cpu = (ticks(11) + ticks(12)) as f64 / 100.0;
            usage.cpu_seconds = usage.cpu_seconds.max(cpu);
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("pii-ingest exited with {status}");
            }
            return Ok(usage);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `pii-ingest` beside this executable (where scripts/build-bench.sh puts both, and where
/// scripts/scale.sh copies them), else the one cargo built with this bench.
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if path.exists() {
        return Ok(path);
    }
    let built = PathBuf::from(env!("CARGO_BIN_EXE_pii-ingest"));
    if !built.exists() {
        bail!("{} not found: build it with scripts/build-bench.sh", path.display());
    }
    Ok(built)
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| measure | pii-ingest | baseline (same run) | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        println!("| {} | {} | {} | {} | {} |", r.measure, r.value, r.baseline, ratio, r.target);
    }
}
