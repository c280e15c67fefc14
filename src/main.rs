//! The `pii-ingest` binary: parse the command line, load configuration, init logging, dispatch.

mod commands;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use commands::{Cli, Command};
use indicatif::ProgressBar;
use pii_ingest::config::Config;
use pii_ingest::pipeline::{Pipeline, Settings};
use pii_ingest::source::{FileSource, Source};
use pii_ingest::{db, progress, seed, server, startup, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut figment = Config::figment(cli.config.as_deref());
    if let Some(format) = cli.log_format {
        figment = figment.merge(("log.format", format));
    }
    let config = match Config::from_figment(figment) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    match dispatch(cli.command, config).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { until_empty, json } => run(config, until_empty, json).await,
        Command::Migrate { no_create_db } => migrate(&config, !no_create_db).await,
        Command::Seed { file, generate, bad_share, repeat_share, seed, no_keys, concurrency } => {
            let messages = match (file, generate) {
                (Some(path), _) => seed::file_messages(&path, !no_keys)?,
                (None, Some(n)) => seed::generate(n, seed::Mix { bad: bad_share, repeat: repeat_share }, seed),
                (None, None) => unreachable!("clap requires --file or --generate"),
            };
            seed_queue(&config, messages, concurrency).await
        }
        Command::Replay { file, sent_at, batch_rows, no_ledger, json } => {
            replay(config, &file, sent_at, batch_rows, no_ledger, json).await
        }
        Command::Keygen { out } => {
            let key_id = pii_ingest::seal::keygen(&out)?;
            println!("wrote {0}/seal.pub and {0}/seal.key (mode 0600), key id {key_id}", out.display());
            println!("give the ingester only seal.pub: sealing.public_key_file = \"{}/seal.pub\"", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Reveal {
            private_key_file,
            reason,
            who,
            message_id,
            user_id,
            masked_ip,
            masked_device_id,
            limit,
            json,
        } => {
            use pii_ingest::reveal::Selector;
            let selector = match (message_id, user_id, masked_ip, masked_device_id) {
                (Some(v), ..) => Selector::MessageId(v),
                (_, Some(v), ..) => Selector::UserId(v),
                (_, _, Some(v), _) => Selector::MaskedIp(v),
                (.., Some(v)) => Selector::MaskedDeviceId(v),
                _ => unreachable!("clap requires one selector"),
            };
            let opener = pii_ingest::seal::Opener::from_file(&private_key_file)?;
            let who = who.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".into());
            let rows =
                pii_ingest::reveal::reveal(config.postgres.url.expose(), &opener, &selector, &who, &reason, limit)
                    .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<40} {:<38} {:<40} device_id", "message_id", "user_id", "ip");
                for r in &rows {
                    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not sealed)".into());
                    println!("{:<40} {:<38} {:<40} {}", r.message_id, r.user_id, show(&r.ip), show(&r.device_id));
                }
                eprintln!("{} row(s) revealed; recorded in reveal_audit ({who}: {reason})", rows.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rekey { private_key_file, tokens, no_reseal, batch } => {
            let openers = private_key_file
                .iter()
                .map(|path| pii_ingest::seal::Opener::from_file(path))
                .collect::<Result<Vec<_>, _>>()?;
            let sealer = match (no_reseal, &config.sealing.public_key_file) {
                (true, _) => None,
                (false, Some(path)) => Some(pii_ingest::seal::Sealer::from_file(path)?),
                (false, None) => {
                    anyhow::bail!("re-sealing needs sealing.public_key_file (or pass --tokens --no-reseal)")
                }
            };
            let masker = if tokens { Some(config.masker()?) } else { None };
            let done = pii_ingest::reveal::rekey(
                config.postgres.url.expose(),
                &openers,
                sealer.as_ref(),
                masker.as_ref(),
                batch.max(1),
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&done)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { json } => {
            let mut summary = commands::stats::read(config.postgres.url.expose()).await?;
            if config.ledger.path.exists() {
                // Opening the store takes its lock: this fails while `run` holds the same ledger.
                summary.ledger_entries = match pii_ingest::ledger::Ledger::open_existing(&config.ledger.path) {
                    Ok(ledger) => Some(ledger.len()),
                    Err(error) => {
                        tracing::warn!(error = %error, "ledger not readable (in use by a running ingester?)");
                        None
                    }
                };
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{summary}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            print!("{}", config.redacted_toml());
            match config.masker() {
                Ok(masker) => println!("# masking key: ok (key id {})", masker.key_id()),
                Err(error) => println!("# masking key: {error}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(config: Config, until_empty: bool, json: bool) -> anyhow::Result<ExitCode> {
    let recorder = match config.metrics.listen.is_empty() {
        true => None,
        false => Some(server::install_recorder().context("cannot install the metrics recorder")?),
    };
    let pipeline = startup::pipeline(&config, until_empty).await?;
    let bar = match until_empty {
        true => Some(progress::bar(pipeline.source.depth().await.map(|d| d.total()).unwrap_or(0), "draining")),
        false => None,
    };
    if let Some(handle) = recorder {
        // validate() checked that the address parses.
        let listen = config.metrics.listen.parse().expect("metrics.listen was validated");
        let (source, ledger) = ((*pipeline.source).clone(), pipeline.ledger.clone());
        // A second ingester on the same host finds the port taken: it runs on, without /metrics,
        // rather than refusing to drain.
        if let Err(error) = server::serve(listen, handle, source, ledger, config.postgres.url.expose().to_owned()).await
        {
            tracing::warn!(listen = %listen, error = %error, "metrics.listen is unavailable; running without /metrics, /healthz, /readyz");
        }
    }
    drain(pipeline, json, bar).await
}

async fn replay(
    config: Config,
    file: &std::path::Path,
    sent_at: Option<chrono::DateTime<chrono::Utc>>,
    batch_rows: usize,
    no_ledger: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let source = FileSource::open(file, sent_at).with_context(|| format!("cannot read {}", file.display()))?;
    // The bar's length costs a pass over the file: only worth it where a bar is drawn.
    use std::io::IsTerminal;
    let lines = if std::io::stderr().is_terminal() { count_lines(file).unwrap_or(0) } else { 0 };
    let mut settings = Settings::from_config(&config.pipeline, true);
    settings.batch_max_rows = batch_rows.clamp(1, pii_ingest::sink::MAX_ROWS_PER_TRANSACTION);
    // Readers take turns on the file and judge their chunks in parallel; the writer batches them.
    settings.receivers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(settings.receivers);
    let mut pipeline = startup::pipeline_over(&config, source, settings).await?;
    if no_ledger {
        pipeline.ledger = std::sync::Arc::new(pii_ingest::ledger::Ledger::disabled());
    }
    drain(pipeline, json, Some(progress::bar(lines, "replaying"))).await
}

/// Lines in a file, for the progress bar, read in chunks (a backfill file may be larger than memory).
fn count_lines(path: &std::path::Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0; 1 << 20];
    let mut lines = 0;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buffer[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
}

/// Runs a pipeline until stopped or drained and prints its report.
async fn drain<S: Source>(pipeline: Pipeline<S>, json: bool, bar: Option<ProgressBar>) -> anyhow::Result<ExitCode> {
    let stop = CancellationToken::new();
    tokio::spawn(handle_signals(stop.clone()));
    let started = std::time::Instant::now();
    let follower = bar.clone().map(|bar| progress::follow(pipeline.stats.clone(), bar));
    let report = pipeline.run(stop).await;
    if let (Some(follower), Some(bar)) = (follower, bar) {
        follower.abort();
        bar.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
        println!("elapsed             {seconds:>9.2} s ({:.0} msg/s)", report.received as f64 / seconds.max(1e-9));
    }
    if !report.reconciles() {
        anyhow::bail!("the drain does not reconcile: some delivery is not accounted for");
    }
    Ok(ExitCode::SUCCESS)
}

/// First SIGINT/SIGTERM: stop receiving and finish the batch in hand. Second: exit at once (nothing
/// uncommitted was deleted, so SQS redelivers whatever was in hand).
async fn handle_signals(stop: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("signal received: finishing the batch in hand (signal again to exit at once)");
    stop.cancel();
    wait_for_signal().await;
    tracing::warn!("second signal: exiting now; messages in hand will be redelivered");
    std::process::exit(130);
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // Installing a handler only fails if the signal is invalid, which these are not.
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn migrate(config: &Config, create: bool) -> anyhow::Result<ExitCode> {
    let url = config.postgres.url.expose();
    if create && db::create_database_if_missing(url).await? {
        println!("created database {}", pii_ingest::config::redact_url_password(url));
    }
    let applied = db::migrate(url).await.context("failed to apply migrations")?;
    if applied.is_empty() {
        println!("migrations: up to date");
    } else {
        println!("migrations: applied {}", applied.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

async fn seed_queue(config: &Config, messages: Vec<seed::Outgoing>, concurrency: usize) -> anyhow::Result<ExitCode> {
    let client = pii_ingest::source::sqs::client(&config.sqs).await;
    let url = match &config.sqs.queue_url {
        Some(url) => url.clone(),
        None => seed::ensure_queue(&client, &config.sqs.queue_name, config.sqs.visibility_timeout_seconds)
            .await
            .context("failed to create or find the queue")?,
    };
    let started = std::time::Instant::now();
    let attribute = config.sqs.idempotency_key_attribute.as_deref().filter(|a| !a.is_empty());
    let bar = progress::bar(messages.len() as u64, "sending");
    let sent = seed::send(&client, &url, attribute, messages, concurrency, |n| bar.inc(n as u64)).await?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!("sent {sent} messages to {url} in {seconds:.2} s ({:.0} msg/s)", sent as f64 / seconds.max(1e-9));
    Ok(ExitCode::SUCCESS)
}
