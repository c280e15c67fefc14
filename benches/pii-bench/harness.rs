//! What every measurement uses: the ingester's process (spawned, watched for peak RSS and CPU), fresh
//! queues and databases, and the ingester's environment.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_sqs::Client;
use pii_ingest::config::SqsConfig;
use pii_ingest::{db, seed};

use crate::{Args, KEY};

/// The ingester's default `pipeline.writers`: the bare COPY uses as many streams.
pub(crate) fn writers() -> usize {
    pii_ingest::config::PipelineConfig::default().writers
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub(crate) fn sqs_config(args: &Args, queue: &str) -> SqsConfig {
    SqsConfig {
        endpoint_url: Some(args.sqs_endpoint.clone()),
        queue_name: queue.into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some(pii_ingest::config::Secret("test".into())),
        ..SqsConfig::default()
    }
}

pub(crate) async fn fresh_queue(client: &Client) -> anyhow::Result<(String, String)> {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let url =
        seed::ensure_queue(client, &name, 30).await.context("is the emulator running? scripts/emulator.sh start")?;
    Ok((name, url))
}

pub(crate) async fn seed_queue(client: &Client, url: &str, n: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    seed::send(client, url, None, seed::generate(n, seed::Mix::default(), 5), 16, |_| {}).await?;
    eprintln!("  sent {n} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

pub(crate) async fn fresh_database(server: &str, name: &str) -> anyhow::Result<String> {
    let url = format!("{server}/{name}");
    db::drop_database(&url).await?;
    db::create_database_if_missing(&url).await?;
    db::migrate(&url).await?;
    Ok(url)
}

pub(crate) fn ingest_env(
    args: &Args,
    db_url: &str,
    queue: &str,
    work: &std::path::Path,
    tag: &str,
) -> Vec<(String, String)> {
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

pub(crate) fn spawn(binary: &PathBuf, args: &[&str], env: &[(String, String)]) -> anyhow::Result<Child> {
    spawn_with(binary, args, env, Stdio::null())
}

/// As [`spawn`], with stdout piped (for a `--json` report; small enough for the pipe's buffer).
pub(crate) fn spawn_reporting(binary: &PathBuf, args: &[&str], env: &[(String, String)]) -> anyhow::Result<Child> {
    spawn_with(binary, args, env, Stdio::piped())
}

fn spawn_with(binary: &PathBuf, args: &[&str], env: &[(String, String)], stdout: Stdio) -> anyhow::Result<Child> {
    Command::new(binary)
        // An empty file: no config.toml of the working directory leaks in (a named file must exist).
        .args(["--config", "/dev/null"])
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(stdout)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

/// What [`wait_with_peak_rss`] saw of the child.
pub(crate) struct Usage {
    /// Peak resident set, KiB.
    pub(crate) peak_kib: u64,
    /// User + system CPU seconds (as last sampled, within 20 ms of the end).
    pub(crate) cpu_seconds: f64,
}

/// Waits for the child, sampling its resident set and CPU time every 20 ms.
pub(crate) fn wait_with_peak_rss(mut child: Child) -> anyhow::Result<Usage> {
    let pid = child.id();
    let mut usage = Usage { peak_kib: 0, cpu_seconds: 0.0 };
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for line in status.lines().filter(|l| l.starts_with("VmHWM:") || l.starts_with("VmRSS:")) {
                let kib = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
                usage.peak_kib = usage.peak_kib.max(kib);
            }
        }
        if let Ok(cpu) = cpu_seconds(&format!("/proc/{pid}/stat")) {
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

/// User + system CPU seconds from a `/proc/.../stat` file (a process's, or `/proc/thread-self/stat`).
pub(crate) fn cpu_seconds(stat_path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(stat_path)?;
    // Fields after the command name: utime and stime are the 12th and 13th, in ticks of 1/100 s.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok((ticks(11) + ticks(12)) as f64 / 100.0)
}

/// The `pii-ingest` beside this executable (where scripts/build-bench.sh puts both, and where
/// scripts/scale.sh copies them), else the one cargo built with this bench.
pub(crate) fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
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
