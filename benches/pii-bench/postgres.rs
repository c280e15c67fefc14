//! The Postgres side: pii-ingest's write path against what a user would compare it with, psql's
//! `\copy` of the same final rows, plus a bare binary COPY of the masked rows.
//!
//! The psql baseline is honest in this sense: after a replay, everything the replay left behind
//! (`user_logins`, `message_claims`, `quarantined_messages`, ids and timestamps included) is exported
//! with psql's `\copy ... TO`, and each round loads those files with plain `psql -c "\copy T FROM f"`
//! (one psql process, the three tables one after the other, text format, its defaults) into a freshly
//! migrated database: the same partitioned `user_logins` with the same partitions (created before the
//! clock starts), the same indexes, constraints, defaults and grants. It is one stream where
//! pii-ingest has two writers; that is what a user running psql gets. Rates count input lines (each
//! one final row in `user_logins` or `quarantined_messages`, plus its claim) per second of wall time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use pii_ingest::db;
use pii_ingest::event::{Rules, parse};
use pii_ingest::mask::Masker;
use pii_ingest::seed;
use pii_ingest::sink::copy::{UNNEST_BELOW, copy_logins};
use pii_ingest::sink::{CopySink, NewLogin};

use crate::harness::{fresh_database, ingest_env, median, spawn, writers};
use crate::{Args, KEY, Row};

/// The tables a replay leaves rows in, in the order psql loads them.
const FINAL_TABLES: [&str; 3] = ["user_logins", "message_claims", "quarantined_messages"];

/// Database names of this side, suffixed with `$PII_BENCH_DB_TAG` (so two benchmarks on one server
/// do not drop each other's databases).
struct Names {
    bare: String,
    replay: String,
    psql: String,
    paths: String,
}

impl Names {
    fn new() -> Names {
        let tag = std::env::var("PII_BENCH_DB_TAG").unwrap_or_default();
        let name = |base: &str| format!("{base}{tag}");
        Names {
            bare: name("pii_bench_pg"),
            replay: name("pii_bench_pg_replay"),
            psql: name("pii_bench_pg_psql"),
            paths: name("pii_bench_pg_paths"),
        }
    }
}

/// What a replay left, exported once for the psql baseline.
struct Export {
    dir: PathBuf,
    /// `{...}` of the distinct `create_date`s, for the partitions the psql copy needs.
    dates: String,
}

pub(crate) async fn postgres_side(
    args: &Args,
    ingester: &PathBuf,
    work: &Path,
    table: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let m = args.rows;
    let file = work.join("rows.jsonl");
    let lines: Vec<String> = seed::generate(m, seed::Mix::default(), 11).into_iter().map(|o| o.body).collect();
    std::fs::write(&file, lines.join("\n") + "\n")?;
    let names = Names::new();
    let db_url = fresh_database(&args.postgres, &names.bare).await?;

    // Rounds interleave the measurements so that a slow spell of the machine hits all of them.
    let runs: [(&str, Option<&str>); 2] = [("replay", None), ("replay --no-ledger", Some("--no-ledger"))];
    let (mut copy_rates, mut replay_rates) = (Vec::new(), vec![Vec::new(), Vec::new()]);
    let (mut psql_rates, mut parallel_rates) = (Vec::new(), Vec::new());
    let mut export = None;
    for round in 1..=args.rounds.max(1) {
        eprintln!("postgres: round {round}: bare binary COPY of {m} rows ({} streams)", writers());
        copy_rates.push(bare_copy(&db_url, &lines, writers()).await?);
        for ((label, extra), rates) in runs.iter().zip(&mut replay_rates) {
            eprintln!("postgres: round {round}: pii-ingest {label} of the same {m} lines");
            rates.push(replay(args, ingester, work, &file, &names.replay, label, *extra).await?);
            if export.is_none() {
                export = Some(export_final_rows(&format!("{}/{}", args.postgres, names.replay), work)?);
            }
        }
        eprintln!("postgres: round {round}: psql \\copy of the final rows of a replay");
        let export = export.as_ref().expect("the first replay exported its rows");
        psql_rates.push(psql_copy(&args.postgres, &names.psql, export, m, false).await?);
        eprintln!("postgres: round {round}: psql \\copy of the same rows, one psql per table, in parallel");
        parallel_rates.push(psql_copy(&args.postgres, &names.psql, export, m, true).await?);
    }
    let (copy_rate, psql_rate, parallel_rate) =
        (median(&mut copy_rates), median(&mut psql_rates), median(&mut parallel_rates));
    table.push(Row {
        measure: format!("psql \\copy of a replay's final rows, rows/s ({m} lines, median of {})", psql_rates.len()),
        value: format!("{psql_rate:.0}"),
        baseline: format!("{copy_rate:.0} bare binary COPY, {} streams", writers()),
        ratio: Some(psql_rate / copy_rate),
        target: "(baseline)",
    });
    let mut replay_rate = 0.0;
    for ((label, extra), mut rates) in runs.into_iter().zip(replay_rates) {
        let rate = median(&mut rates);
        if extra.is_none() {
            replay_rate = rate;
        }
        table.push(Row {
            measure: format!("Postgres write, rows/s ({m} lines, {label}, median of {})", rates.len()),
            value: format!("{rate:.0}"),
            baseline: format!("{psql_rate:.0} psql \\copy of the final rows"),
            ratio: Some(rate / psql_rate),
            target: if extra.is_none() { ">= 0.85" } else { "(ledger off)" },
        });
    }
    table.push(Row {
        measure: format!("Postgres write, rows/s ({m} lines, replay) against psql per table in parallel"),
        value: format!("{replay_rate:.0}"),
        baseline: format!("{parallel_rate:.0} three psql \\copy at once"),
        ratio: Some(replay_rate / parallel_rate),
        target: "(stricter baseline)",
    });
    copy_vs_unnest(args, &names.paths, table).await?;
    for name in [&names.bare, &names.replay, &names.psql, &names.paths] {
        db::drop_database(&format!("{}/{name}", args.postgres)).await?;
    }
    Ok(())
}

/// One `pii-ingest replay` of `file` into a fresh database; its rate in lines/s of wall time.
async fn replay(
    args: &Args,
    ingester: &PathBuf,
    work: &Path,
    file: &Path,
    database: &str,
    label: &str,
    extra: Option<&str>,
) -> anyhow::Result<f64> {
    // A fresh database each time, so every run inserts every row.
    let url = fresh_database(&args.postgres, database).await?;
    let env = ingest_env(args, &url, "unused", work, label);
    // A ledger of its own, empty like the first round's (a ledger left by another database is
    // cleared at startup, which would be timed).
    let _ = std::fs::remove_dir_all(work.join(format!("ledger-{}", label.replace(' ', "_"))));
    let mut argv = vec!["replay", "--file", file.to_str().context("a UTF-8 temporary path")?];
    argv.extend(extra);
    let started = Instant::now();
    let status = spawn(ingester, &argv, &env)?.wait()?;
    if !status.success() {
        bail!("pii-ingest {label} failed");
    }
    Ok(args.rows as f64 / started.elapsed().as_secs_f64())
}

/// psql with `commands` (`-c` each, in order) against `url`, failing on the first error.
fn psql(url: &str, commands: &[String]) -> anyhow::Result<()> {
    psql_wait(psql_spawn(url, commands)?, commands)
}

fn psql_spawn(url: &str, commands: &[String]) -> anyhow::Result<std::process::Child> {
    let mut command = Command::new("psql");
    command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url]);
    for c in commands {
        command.args(["-c", c]);
    }
    command.spawn().context("psql not found (the psql baseline needs it)")
}

fn psql_wait(mut child: std::process::Child, commands: &[String]) -> anyhow::Result<()> {
    if !child.wait()?.success() {
        bail!("psql failed: {commands:?}");
    }
    Ok(())
}

/// Everything the replay in `url` left, one text file per table (psql's `\copy ... TO`).
fn export_final_rows(url: &str, work: &Path) -> anyhow::Result<Export> {
    let dir = work.join("final-rows");
    std::fs::create_dir_all(&dir)?;
    let commands: Vec<String> =
        FINAL_TABLES.iter().map(|t| format!("\\copy (SELECT * FROM {t}) TO '{}'", dir.join(t).display())).collect();
    psql(url, &commands)?;
    let output = Command::new("psql")
        .args(["-X", "-A", "-t", "-d", url, "-c", "SELECT array_agg(DISTINCT create_date) FROM user_logins"])
        .output()?;
    let dates = String::from_utf8(output.stdout)?.trim().to_owned();
    Ok(Export { dir, dates: if dates.is_empty() { "{}".into() } else { dates } })
}

/// Rows/s of psql's `\copy` of the exported final rows into a freshly migrated database (partitions
/// made before the clock starts), `lines` counted: one psql loading the tables one after the other,
/// or with `parallel` one psql per table, all at once.
async fn psql_copy(server: &str, database: &str, export: &Export, lines: usize, parallel: bool) -> anyhow::Result<f64> {
    let url = fresh_database(server, database).await?;
    let client = db::connect_client(&url).await?;
    client.execute("SELECT user_logins_ensure_partitions($1::text::date[])", &[&export.dates]).await?;
    drop(client);
    let commands: Vec<String> =
        FINAL_TABLES.iter().map(|t| format!("\\copy {t} FROM '{}'", export.dir.join(t).display())).collect();
    let started = Instant::now();
    if parallel {
        let children: Vec<_> = commands.chunks(1).map(|c| psql_spawn(&url, c)).collect::<anyhow::Result<_>>()?;
        for (child, c) in children.into_iter().zip(commands.chunks(1)) {
            psql_wait(child, c)?;
        }
    } else {
        psql(&url, &commands)?;
    }
    Ok(lines as f64 / started.elapsed().as_secs_f64())
}

/// Batch sizes at which the sink's two statements are compared.
const PATH_BATCHES: [usize; 6] = [10, 100, 250, 500, 1000, 5000];

/// Rows/s of the sink writing batches of each of [`PATH_BATCHES`] rows by COPY and by `INSERT ...
/// SELECT FROM unnest`, one writer, claims and rows in one transaction a batch as always; the tables
/// are emptied before each measurement and the two paths take turns going first.
async fn copy_vs_unnest(args: &Args, database: &str, table: &mut Vec<Row>) -> anyhow::Result<()> {
    let url = fresh_database(&args.postgres, database).await?;
    let total = |batch: usize| (batch * 200).clamp(5_000, 50_000);
    let lines: Vec<String> =
        seed::generate(total(5000), seed::Mix::default(), 13).into_iter().map(|o| o.body).collect();
    let rows = masked_rows(&lines, "path")?;
    let admin = db::connect_client(&url).await?;
    let sinks = [CopySink::new(&url, 1).with_unnest_below(0), CopySink::new(&url, 1).with_unnest_below(usize::MAX)];
    let mut rates = vec![[Vec::new(), Vec::new()]; PATH_BATCHES.len()];
    for round in 1..=args.rounds.max(1) {
        eprintln!("postgres: round {round}: COPY vs UNNEST at {PATH_BATCHES:?} rows a batch");
        for (&batch, rates) in PATH_BATCHES.iter().zip(&mut rates) {
            let n = total(batch);
            for path in if round % 2 == 1 { [0, 1] } else { [1, 0] } {
                admin.batch_execute("TRUNCATE user_logins, message_claims").await?;
                let started = Instant::now();
                for chunk in rows[..n].chunks(batch) {
                    sinks[path].write(chunk, &[]).await?;
                }
                rates[path].push(n as f64 / started.elapsed().as_secs_f64());
            }
        }
    }
    for (&batch, [copy, unnest]) in PATH_BATCHES.iter().zip(&mut rates) {
        let (copy, unnest) = (median(copy), median(unnest));
        table.push(Row {
            measure: format!(
                "UNNEST vs COPY, rows/s at {batch} rows a transaction (one writer, {} rows)",
                total(batch)
            ),
            value: format!("{unnest:.0}"),
            baseline: format!("{copy:.0} COPY"),
            ratio: Some(unnest / copy),
            target: if batch < UNNEST_BELOW { "(sink: UNNEST)" } else { "(sink: COPY)" },
        });
    }
    Ok(())
}

/// The masked rows of `lines`, keyed `<prefix>-<i>` (made before any clock starts).
pub(crate) fn masked_rows(lines: &[String], prefix: &str) -> anyhow::Result<Vec<NewLogin>> {
    let masker = Masker::new(KEY.as_bytes(), Some("bench")).unwrap();
    let rules = Rules::default();
    let now = chrono::Utc::now();
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let login = parse(line.as_bytes(), &rules).map_err(|r| anyhow::anyhow!("{r}"))?;
            Ok(NewLogin {
                message_id: format!("{prefix}-{i}"),
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
        .collect()
}

/// Rows/s of a binary COPY of the masked rows into a fresh copy of `user_logins`, in `streams`
/// concurrent connections.
pub(crate) async fn bare_copy(db_url: &str, lines: &[String], streams: usize) -> anyhow::Result<f64> {
    // The rows are made before the clock starts: only the COPY itself is timed.
    let rows = masked_rows(lines, "bench")?;
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
