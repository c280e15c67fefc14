//! A TLS-only PostgreSQL of the test binary's own, as a managed service behaves (RDS with
//! `rds.force_ssl`): its own cluster (`initdb`) on a free port, a CA and a server certificate for
//! `localhost` made at test time with the `openssl` CLI, `ssl = on`, and a `pg_hba.conf` of `hostssl`
//! lines only, with SCRAM passwords.
//!
//! [`plain_server`] is the same without TLS (`ssl = off`, `host` lines), to show what `prefer` and
//! `require` do against a server that refuses TLS (the main test server has Debian's `ssl = on`).
//!
//! Started once per test binary run, on first use. The postmaster is a child of a thread that lives
//! as long as the test process and is told by the kernel (`PR_SET_PDEATHSIG`) to shut down when the
//! process ends, however it ends; each run gets a directory of its own under `target/tmp`, and
//! directories of runs that are gone are removed at the next start.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The login role of the TLS-only cluster (its bootstrap superuser).
pub const USER: &str = "pii_tls";
/// Its password: tests check that no error line quotes it.
pub const PASSWORD: &str = "tls-test-password-2f9c1e";

/// The running TLS-only server.
pub struct TlsServer {
    pub port: u16,
    /// The CA that signed the server certificate (PEM).
    pub ca: PathBuf,
    /// A CA that signed nothing this server presents (PEM).
    pub other_ca: PathBuf,
}

impl TlsServer {
    /// `postgres://pii_tls:PASSWORD@host:port/database?query`.
    pub fn url(&self, host: &str, database: &str, query: &str) -> String {
        let query = if query.is_empty() { String::new() } else { format!("?{query}") };
        format!("postgres://{USER}:{PASSWORD}@{host}:{}/{database}{query}", self.port)
    }

    /// `sslmode=verify-full&sslrootcert=<the right CA>`.
    pub fn verify_full(&self) -> String {
        format!("sslmode=verify-full&sslrootcert={}", self.ca.display())
    }
}

/// The server, started on first call. Panics with what is missing if it cannot start.
pub fn tls_server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        start(true).unwrap_or_else(|problem| panic!("the TLS-only test Postgres did not start: {problem}"))
    })
}

/// A server with TLS off (same user and password), started on first call.
pub fn plain_server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        start(false).unwrap_or_else(|problem| panic!("the plaintext test Postgres did not start: {problem}"))
    })
}

fn start(tls: bool) -> Result<TlsServer, String> {
    let bin = postgres_bindir()?;
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls-postgres");
    remove_stale_runs(&base);
    let dir = base.join(format!("{}-{}", std::process::id(), if tls { "tls" } else { "plain" }));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let server =
        TlsServer { port: super::binary::free_port(), ca: dir.join("ca.crt"), other_ca: dir.join("other-ca.crt") };
    make_certificates(&dir)?;
    let data = dir.join("data");
    std::fs::write(dir.join("pw"), PASSWORD).map_err(|e| e.to_string())?;
    give_to_postgres(&dir)?;
    let pw = format!("--pwfile={}", dir.join("pw").display());
    run(as_postgres(Command::new(bin.join("initdb")).arg("-D").arg(&data).args([
        "-U",
        USER,
        &pw,
        "-A",
        "scram-sha-256",
        "-E",
        "UTF8",
        "--no-sync",
    ])))?;
    configure(&dir, &data, server.port, tls)?;
    spawn_postmaster(&bin, &data, &dir)?;
    wait_ready(&bin, server.port)?;
    Ok(server)
}

/// Where Debian (or a source build) put `initdb` and `postgres`.
fn postgres_bindir() -> Result<PathBuf, String> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.flatten().map(|e| e.path().join("bin")).filter(|bin| bin.join("initdb").exists()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().ok_or_else(|| {
        "no /usr/lib/postgresql/*/bin/initdb: install PostgreSQL (Debian: apt-get install postgresql)".to_string()
    })
}

/// Deletes the directories of earlier runs whose process is gone (a killed run leaves its own).
fn remove_stale_runs(base: &Path) {
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().unwrap_or_default();
        if pid.is_empty() || !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A CA, a certificate for `localhost` signed by it, and a second CA that signed nothing.
fn make_certificates(dir: &Path) -> Result<(), String> {
    let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(dir).args(args));
    let new_ca = |name: &str| {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-subj",
            &format!("/CN=pii-ingest test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
    };
    new_ca("ca")?;
    new_ca("other-ca")?;
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    let extensions = "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
                      keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n";
    std::fs::write(dir.join("server.ext"), extensions).map_err(|e| e.to_string())?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ])?;
    std::fs::set_permissions(dir.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| e.to_string())
}

/// Port, TLS on (or off), no Unix socket, small and fast (the data is thrown away), and `hostssl`
/// lines only (or `host`).
fn configure(dir: &Path, data: &Path, port: u16, tls: bool) -> Result<(), String> {
    let settings = format!(
        "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n\
         ssl = {ssl}\nssl_cert_file = '{dir}/server.crt'\nssl_key_file = '{dir}/server.key'\n\
         shared_buffers = 16MB\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
         max_connections = 60\nlog_min_messages = warning\n",
        dir = dir.display(),
        ssl = if tls { "on" } else { "off" },
    );
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
    text.push_str(&settings);
    std::fs::write(&conf, text).map_err(|e| e.to_string())?;
    let hba = if tls {
        "# TLS only, as a managed service with rds.force_ssl = 1\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
    } else {
        "host all all 127.0.0.1/32 scram-sha-256\n"
    };
    std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| e.to_string())
}

/// Starts the postmaster from a thread that never ends, so the kernel's parent-death signal fires
/// only when the whole test process is gone.
#[expect(unsafe_code, reason = "pre_exec: the child must die with the test process (prctl)")]
fn spawn_postmaster(bin: &Path, data: &Path, dir: &Path) -> Result<(), String> {
    let log = std::fs::File::create(dir.join("postgres.log")).map_err(|e| e.to_string())?;
    let mut command = Command::new(bin.join("postgres"));
    command.arg("-D").arg(data).stdin(Stdio::null()).stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log);
    as_postgres(&mut command);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // SIGQUIT: immediate shutdown; the data directory is thrown away anyway.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let (started, result) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("tls-postgres".into())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = started.send(Ok(()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = started.send(Err(format!("postgres did not start: {e}")));
            }
        })
        .map_err(|e| e.to_string())?;
    result.recv().map_err(|e| e.to_string())?
}

fn wait_ready(bin: &Path, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let ready =
            Command::new(bin.join("pg_isready")).args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()]).status();
        if ready.is_ok_and(|status| status.success()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("nothing answered on port {port} within 90 s; see target/tmp/tls-postgres/*/postgres.log"))
}

/// initdb refuses to run as root: when the tests are root, the cluster belongs to the `postgres` user.
fn as_postgres(command: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = postgres_user() {
        command.uid(uid).gid(gid);
    }
    command
}

fn give_to_postgres(dir: &Path) -> Result<(), String> {
    match postgres_user() {
        Some((uid, gid)) => run(Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(dir)),
        None => Ok(()),
    }
}

/// `Some((uid, gid))` of the `postgres` OS user when running as root.
#[expect(unsafe_code, reason = "libc::geteuid, the one way to ask for the effective uid")]
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().ok()
    };
    let user = id("-u").zip(id("-g"));
    assert!(user.is_some(), "tests run as root need a `postgres` OS user to own the TLS test cluster");
    user
}

/// Runs a setup command, returning its output as the error if it fails.
fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{:?}: {e}", command.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{:?} failed: {}{}",
        command.get_program(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}
