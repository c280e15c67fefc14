//! The Postgres side: pii-ingest's write path against a bare COPY of the same rows.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use pii_ingest::db;
use pii_ingest::event::{Rules, parse};
use pii_ingest::mask::Masker;
use pii_ingest::seed;
use pii_ingest::sink::NewLogin;
use pii_ingest::sink::copy::copy_logins;

use crate::harness::{fresh_database, ingest_env, median, spawn, writers};
use crate::{Args, KEY, Row};

pub(crate) async fn postgres_side(
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
pub(crate) async fn bare_copy(db_url: &str, lines: &[String], streams: usize) -> anyhow::Result<f64> {
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
