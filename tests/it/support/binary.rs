//! Running the `pii-ingest` binary as a user would, with the configuration given entirely by
//! environment (`--config /dev/null` is an empty file, so no `config.toml` leaks in), and talking
//! HTTP to it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Duration;

/// The binary under test, with nothing set: the one place that names it. Most tests want
/// [`command`]; this is for those that test the configuration itself.
pub fn bare() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pii-ingest"))
}

/// The binary with `args`, configured by `env`. `RUST_LOG` is cleared unless `env` sets it.
pub fn command(env: &[(String, String)], args: &[&str]) -> Command {
    let mut command = bare();
    command.args(["--config", "/dev/null"]).args(args).env_remove("RUST_LOG").envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// Runs the binary to completion.
pub fn run(env: &[(String, String)], args: &[&str]) -> Output {
    command(env, args).output().expect("the binary runs")
}

/// Its stdout, failing the test (with both streams) unless it succeeded.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `env` with `key` set to `value` (replacing any earlier value).
pub fn with(env: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut env: Vec<_> = env.iter().filter(|(k, _)| k != key).cloned().collect();
    env.push((key.into(), value.into()));
    env
}

/// A plain HTTP/1.0 GET (no client crate needed): (status code, body).
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends SIGTERM to a child process.
pub fn terminate(child: &std::process::Child) {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
}

/// A background `pii-ingest` that is killed if the test fails before stopping it (an orphan would
/// keep the test harness's output pipe open and hang the whole run).
pub struct Running(pub std::process::Child);

impl Running {
    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        terminate(&self.0);
        self.0.wait().expect("the child was started")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `pii-ingest run` in the background, its metrics served on `addr`.
pub fn serve(env: &[(String, String)], addr: &str) -> Running {
    let child = command(&with(env, "PII_INGEST__METRICS__LISTEN", addr), &["run"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the binary starts");
    Running(child)
}

/// Scrapes `/metrics` at `addr` until `ready` holds for the body; `None` after `limit`.
pub fn scrape_until(addr: &str, limit: Duration, ready: impl Fn(&str) -> bool) -> Option<String> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some((200, body)) = get(addr, "/metrics")
            && ready(&body)
        {
            return Some(body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}
