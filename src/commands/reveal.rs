//! `pii-ingest reveal`: print the raw ip and device_id of selected rows, for a stated reason; every
//! reveal is recorded in `reveal_audit` before anything is printed. With `--quarantined`, the raw
//! body of a quarantined message instead, as one line that `replay` takes back.

use std::path::PathBuf;
use std::process::ExitCode;

use pii_ingest::config::Config;
use pii_ingest::reveal::{Revealed, Selector};
use pii_ingest::seal::Opener;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The private key file from `keygen`.
    #[arg(long, value_name = "FILE")]
    private_key_file: PathBuf,
    /// Why these values are needed (stored in the audit record).
    #[arg(long)]
    reason: String,
    /// Who is asking (default: the database login, session_user).
    #[arg(long)]
    who: Option<String>,
    #[arg(long, group = "selector", required = true)]
    message_id: Option<String>,
    #[arg(long, group = "selector")]
    user_id: Option<String>,
    /// A masked_ip token.
    #[arg(long, group = "selector")]
    masked_ip: Option<String>,
    /// A masked_device_id token.
    #[arg(long, group = "selector")]
    masked_device_id: Option<String>,
    /// Reveal the sealed raw body of the quarantined message --message-id (one line on stdout, for
    /// `replay --file`), instead of a row's ip and device_id.
    #[arg(long, requires = "message_id")]
    quarantined: bool,
    /// At most this many rows.
    #[arg(long, default_value_t = 100)]
    limit: i64,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    if args.quarantined {
        return quarantined(args, config).await;
    }
    let selector = match (args.message_id, args.user_id, args.masked_ip, args.masked_device_id) {
        (Some(v), ..) => Selector::MessageId(v),
        (_, Some(v), ..) => Selector::UserId(v),
        (_, _, Some(v), _) => Selector::MaskedIp(v),
        (.., Some(v)) => Selector::MaskedDeviceId(v),
        _ => unreachable!("clap requires one selector"),
    };
    let opener = Opener::from_file(&args.private_key_file)?;
    let (who, reason) = (args.who, args.reason);
    let url = config.postgres.url.expose();
    let rows = pii_ingest::reveal::reveal(url, &opener, &selector, who.as_deref(), &reason, args.limit).await?;
    let who = shown(who);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
        eprintln!("{} row(s) revealed; recorded in reveal_audit ({who}: {reason})", rows.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// Who the audit record names: the person given with `--who`, else the database login.
fn shown(who: Option<String>) -> String {
    who.unwrap_or_else(|| "the database login".into())
}

async fn quarantined(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let opener = Opener::from_file(&args.private_key_file)?;
    let (who, reason) = (args.who, args.reason);
    let message_id = args.message_id.expect("clap requires --message-id with --quarantined");
    let revealed = pii_ingest::reveal::reveal_quarantined(
        config.postgres.url.expose(),
        &opener,
        &message_id,
        who.as_deref(),
        &reason,
    )
    .await?;
    let who = shown(who);
    let mut body = revealed.body;
    // Raw line breaks in a JSON body are only white space: replaced, the body stays one JSONL line.
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() {
        body.iter_mut().filter(|b| matches!(**b, b'\n' | b'\r')).for_each(|b| *b = b' ');
    }
    if args.json {
        let shown = serde_json::json!({
            "message_id": revealed.message_id,
            "quarantine_reason": revealed.reason,
            "body": String::from_utf8_lossy(&body),
        });
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(&body)?;
        out.write_all(b"\n")?;
        eprintln!(
            "quarantined body of {message_id} ({}) revealed; recorded in reveal_audit ({who}: {reason})",
            revealed.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[Revealed]) {
    println!("{:<40} {:<38} {:<40} device_id", "message_id", "user_id", "ip");
    for r in rows {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not sealed)".into());
        println!("{:<40} {:<38} {:<40} {}", r.message_id, r.user_id, show(&r.ip), show(&r.device_id));
    }
}
