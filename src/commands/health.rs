//! `pii-ingest health`: asks a running instance's `/healthz` (or `/readyz`) and exits 0 when it
//! answers 200, 1 otherwise. It is the container health check: the runtime image has no curl.
//!
//! One HTTP/1.0 GET over a plain TCP stream to an address the operator gives (by default this
//! configuration's own `metrics.listen`), so no HTTP client stack is linked in for it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use pii_ingest::config::Config;

/// The most of a response read: a health body is a few lines.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to ask (default: http://<metrics.listen>/healthz, a wildcard address asked on loopback).
    #[arg(long, value_name = "http://HOST:PORT/PATH")]
    url: Option<String>,
    /// Ask /readyz (Postgres and SQS answer) instead of /healthz (the process is alive).
    #[arg(long, conflicts_with = "url")]
    ready: bool,
    /// Seconds to wait for the whole answer.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
}

pub async fn run(Args { url, ready, timeout }: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let url = match url {
        Some(url) => url,
        None => default_url(&config.metrics.listen, if ready { "/readyz" } else { "/healthz" })?,
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(timeout), get(&url))
        .await
        .map_err(|_| anyhow!("{url}: no answer within {timeout} s"))??;
    let first_line = body.lines().next().unwrap_or("").trim();
    if status != 200 {
        bail!("{url} answered {status}: {}", body.trim().replace('\n', "; "));
    }
    println!("ok: {url} answered {status} {first_line}");
    Ok(ExitCode::SUCCESS)
}

/// `http://<listen><path>`, with a wildcard listen address (0.0.0.0, ::) asked on loopback.
fn default_url(listen: &str, path: &str) -> anyhow::Result<String> {
    if listen.is_empty() {
        bail!("metrics.listen is empty: this configuration serves no {path}; pass --url");
    }
    // validate() checked that the address parses.
    let mut addr: SocketAddr = listen.parse().context("metrics.listen")?;
    if addr.ip().is_unspecified() {
        let loopback = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        addr.set_ip(loopback);
    }
    Ok(format!("http://{addr}{path}"))
}

/// GET `url` (http://host:port/path): the status code and the body.
async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("{url}: only http://HOST:PORT/PATH URLs"))?;
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, format!("/{path}")),
        None => (rest, "/".to_owned()),
    };
    let mut stream = tokio::net::TcpStream::connect(authority).await.with_context(|| url.to_owned())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.with_context(|| url.to_owned())?;
    let mut response = Vec::new();
    stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut response).await.with_context(|| url.to_owned())?;
    parse_response(&String::from_utf8_lossy(&response)).ok_or_else(|| anyhow!("{url}: not an HTTP response"))
}

/// The status code and body of a raw HTTP/1.x response.
fn parse_response(response: &str) -> Option<(u16, String)> {
    let status_line = response.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Some((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_asked_on_loopback() {
        assert_eq!(default_url("0.0.0.0:9898", "/healthz").unwrap(), "http://127.0.0.1:9898/healthz");
        assert_eq!(default_url("[::]:9898", "/readyz").unwrap(), "http://[::1]:9898/readyz");
        assert_eq!(default_url("10.0.0.5:80", "/healthz").unwrap(), "http://10.0.0.5:80/healthz");
    }

    #[test]
    fn disabled_metrics_need_an_explicit_url() {
        let error = default_url("", "/healthz").unwrap_err().to_string();
        assert!(error.contains("metrics.listen") && error.contains("--url"), "{error}");
    }

    #[test]
    fn a_response_gives_its_status_and_body() {
        let response = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\npostgres: unreachable\n";
        assert_eq!(parse_response(response), Some((503, "postgres: unreachable\n".into())));
        assert_eq!(parse_response("SSH-2.0-OpenSSH\r\n"), None);
    }
}
