//! Integration-test fixture: the one place that owns external processes.
//!
//! A [`Cluster`] is a fresh temporary directory holding
//! - a PostgreSQL 15 primary (`pg1`) and N streaming standbys (`pg2`, `pg3`, ...),
//!   each on its own loopback port, with `log_connections=on`;
//! - a real PgBouncer whose config file is the MANAGED SYMLINK
//!   `<tmp>/pgbouncer.ini -> <tmp>/nodes/<node>.ini`, one precooked node file per
//!   PostgreSQL instance (`<tmp>/nodes/pg1.ini`, ...);
//! - helpers to break things (stop, kill -9, SIGSTOP, promote, PgBouncer down/up), to
//!   query every server directly and through PgBouncer, and to run the daemon ([`Daemon`]).
//!
//! Node numbers are 1-based and match the node names: node 1 = `pg1` = the initial
//! primary, node 2 = `pg2` = first standby, ...
//!
//! The directory is `<base>/rebouncer-it-<pid>-XXXXXX`, base = [`base_dir`]: `/dev/shm`
//! when it is a tmpfs with >= 1 GiB free (4x faster start-up than ext4 here), else
//! `$TMPDIR`/`/tmp`; `REBOUNCER_TEST_TMPDIR` overrides.
//!
//! Everything is torn down by `Drop` (also when a test panics): every postmaster gets
//! SIGCONT (it and its children) then SIGQUIT (= `pg_ctl stop -m immediate`, all at
//! once) and is waited for (SIGKILL after 10 s), PgBouncer gets SIGKILL, any leftover
//! process whose command line mentions the directory is SIGKILLed, the directory is
//! removed. `REBOUNCER_KEEP_TMP=1` keeps the directory (processes are still stopped; a
//! `KEEP` file marks it) and prints its path. Directories left by a test process that was
//! itself killed (`rebouncer-it-<pid>-*`, pid no longer alive, no `KEEP`) are swept,
//! with their processes, at the first `Cluster::start` of the next test process; that
//! includes the per-process template data directory (see `template()`).
//!
//! Daemon: [`Daemon`] (via [`Cluster::daemon`] / [`Cluster::daemon_cmd`]) runs the
//! daemon binary with Go-style flags and kills it on drop.
//!
//! Root: PostgreSQL and PgBouncer refuse to run as root. When the test runs as root,
//! every server program (initdb, pg_ctl, pg_basebackup, postgres, pgbouncer) is run as
//! the OS user `postgres` (std's `CommandExt::uid/gid`, so the spawned pid *is* the
//! program: signals reach it directly), and the temp dir is chown'ed to it. Client
//! programs (psql, openssl) run as the current user. Not root: everything runs as the
//! current user; the database superuser is called `postgres` in both cases.
//!
//! Environment overrides: `REBOUNCER_PG_BIN` (default `/usr/lib/postgresql/15/bin`),
//! `REBOUNCER_PGBOUNCER` (default `/usr/sbin/pgbouncer`), `REBOUNCER_BIN` (daemon binary
//! when not built by cargo as an integration test), `REBOUNCER_KEEP_TMP=1`,
//! `REBOUNCER_TEST_TMPDIR`, `REBOUNCER_FIXTURE_TRACE=1` (print start-up phase timings).
//!
//! No test-harness-only assumptions: failures are plain panics with a message, so the
//! module can be `#[path]`-included by an example or a bench.
#![allow(dead_code)]

pub mod etcd;
pub mod patroni;

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Small generic helpers
// ---------------------------------------------------------------------------------------

/// Polls `f` every 50 ms until it returns true; panics with `what` and the elapsed time
/// when `timeout` passes. Use this for every synchronisation, never a bare sleep.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        if start.elapsed() >= timeout {
            panic!(
                "timed out after {:.1?} (limit {timeout:?}) waiting for: {what}",
                start.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`wait_until`] but returns false instead of panicking.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` with stdin closed and stdout/stderr captured; kills it when `timeout` passes.
/// Err only for spawn failure or timeout (a non-zero exit is an `Ok(Output)`).
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {desc}: {e}"))?;
    let rx_out = reader(child.stdout.take().unwrap());
    let rx_err = reader(child.stderr.take().unwrap());
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?}: {desc}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("wait for {desc}: {e}")),
        }
    };
    // A grandchild could keep a pipe open: don't wait for EOF forever.
    let get = |rx: std::sync::mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: get(rx_out),
        stderr: get(rx_err),
    })
}

fn reader(mut r: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Runs `cmd`; panics with its output unless it exits 0. Returns stdout.
fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let desc = format!("{cmd:?}");
    match run_timeout(cmd, timeout) {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!(
            "{desc} failed ({}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("{e}"),
    }
}

/// Sends a signal with the `kill` program (`sig` like "TERM", "KILL", "STOP", "CONT",
/// "HUP"). A negative `target` string such as "-1234" addresses a process group.
pub fn signal(target: &str, sig: &str) -> Result<(), String> {
    let o = run_timeout(
        Command::new("kill").args(["-s", sig, "--", target]),
        Duration::from_secs(5),
    )?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kill -s {sig} {target}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// One `kill -s <sig> -- pids...` for several processes (in that order).
pub fn signal_many(pids: &[String], sig: &str) -> Result<(), String> {
    if pids.is_empty() {
        return Ok(());
    }
    let o = run_timeout(
        Command::new("kill").args(["-s", sig, "--"]).args(pids),
        Duration::from_secs(5),
    )?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kill -s {sig} {pids:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// True when `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => proc_stat_fields(&s)
            .first()
            .map(|st| *st != "Z" && *st != "X")
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...].
fn proc_stat_fields(stat: &str) -> Vec<&str> {
    match stat.rfind(')') {
        Some(i) => stat[i + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// Pids of the direct children of `pid` (via `pgrep -P`).
pub fn children_of(pid: u32) -> Vec<u32> {
    pgrep(&["-P", &pid.to_string()])
}

/// Pids whose full command line contains `pattern` (`pgrep -f`, a regex), this process excluded.
pub fn pgrep_f(pattern: &str) -> Vec<u32> {
    pgrep(&["-f", pattern])
}

fn pgrep(args: &[&str]) -> Vec<u32> {
    let me = std::process::id();
    match run_timeout(Command::new("pgrep").args(args), Duration::from_secs(5)) {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .filter(|p| *p != me)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Last `n` lines of a file (for panic messages).
pub fn tail(path: &Path, n: usize) -> String {
    let s = fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

// ---------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------

/// Effective uid of this process (from /proc/self/status, no libc needed).
pub fn euid() -> u32 {
    let s = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("Uid line in /proc/self/status")
}

pub fn is_root() -> bool {
    euid() == 0
}

/// An OS account looked up with `getent passwd`.
#[derive(Clone, Debug)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

pub fn os_user(name: &str) -> OsUser {
    let out = run_ok(
        Command::new("getent").args(["passwd", name]),
        Duration::from_secs(5),
    );
    let f: Vec<&str> = out.trim().split(':').collect();
    assert!(
        f.len() >= 6,
        "getent passwd {name}: unexpected output {out:?}"
    );
    OsUser {
        name: name.to_string(),
        uid: f[2].parse().expect("uid"),
        gid: f[3].parse().expect("gid"),
        home: f[5].to_string(),
    }
}

/// The account server programs run as: `postgres` when we are root, else None (= us).
pub fn server_user() -> Option<&'static OsUser> {
    static U: OnceLock<Option<OsUser>> = OnceLock::new();
    U.get_or_init(|| {
        if is_root() {
            Some(os_user("postgres"))
        } else {
            None
        }
    })
    .as_ref()
}

/// A Command that runs as `user` (when Some): setuid/setgid in the child, supplementary
/// groups dropped, USER/LOGNAME/HOME set. Working directory `cwd` (must be reachable by
/// that user: pg tools fail in a directory they cannot getcwd()).
pub fn command_as(
    program: impl AsRef<std::ffi::OsStr>,
    user: Option<&OsUser>,
    cwd: &Path,
) -> Command {
    let mut c = Command::new(program);
    c.current_dir(cwd);
    if let Some(u) = user {
        c.uid(u.uid)
            .gid(u.gid)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name)
            .env("HOME", &u.home);
    }
    c
}

/// chown (not following symlinks) to the server user, when root.
fn chown_server(path: &Path) {
    if let Some(u) = server_user() {
        std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

fn chown_server_recursive(path: &Path) {
    if server_user().is_some() {
        chown_server(path);
        if path.is_dir() && !path.is_symlink() {
            for e in fs::read_dir(path).unwrap().flatten() {
                chown_server_recursive(&e.path());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Programs
// ---------------------------------------------------------------------------------------

pub fn pg_bin(prog: &str) -> PathBuf {
    let dir =
        std::env::var("REBOUNCER_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    Path::new(&dir).join(prog)
}

pub fn pgbouncer_bin() -> PathBuf {
    PathBuf::from(
        std::env::var("REBOUNCER_PGBOUNCER").unwrap_or_else(|_| "/usr/sbin/pgbouncer".into()),
    )
}

/// The daemon binary: cargo's `CARGO_BIN_EXE_rebouncer` (integration tests), else
/// `$REBOUNCER_BIN`, else `<crate>/target/{debug,release}/rebouncer`.
pub fn rebouncer_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_rebouncer") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var("REBOUNCER_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for prof in ["debug", "release"] {
        let p = root.join("target").join(prof).join("rebouncer");
        if p.exists() {
            return p;
        }
    }
    panic!("rebouncer binary not found: set REBOUNCER_BIN")
}

/// Whether `user` can execute `bin`: every ancestor directory searchable, the file
/// executable.
fn executable_by(bin: &Path, user: &OsUser) -> bool {
    let can = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = fs::metadata(path) else {
            return false;
        };
        let m = meta.mode();
        user.uid == 0
            || (meta.uid() == user.uid && m & 0o100 != 0)
            || (meta.gid() == user.gid && m & 0o010 != 0)
            || m & 0o001 != 0
    };
    fs::canonicalize(bin).is_ok_and(|bin| bin.ancestors().all(can))
}

/// `bin`, or, when `user` cannot reach it, a copy `user` can run. A checkout under a 0700
/// directory (`git clone . "$(mktemp -d)/c"`) puts cargo's target directory out of reach
/// of the `postgres` user that root-run tests start the daemon as. The copy lives in a
/// directory of this test process under [`base_dir`], removed by the next run's sweep.
pub fn runnable_by(bin: &Path, user: &OsUser) -> PathBuf {
    if executable_by(bin, user) {
        return bin.to_path_buf();
    }
    static COPIES: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
    let mut copies = COPIES.lock().unwrap();
    if let Some((_, copy)) = copies.iter().find(|(b, _)| b == bin) {
        return copy.clone();
    }
    let dir = base_dir().join(format!(
        "{DIR_PREFIX}{}-bin-{}",
        std::process::id(),
        copies.len()
    ));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join(bin.file_name().unwrap_or_default());
    fs::copy(bin, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        executable_by(&copy, user),
        "OS user {} cannot run {} either: is {} traversable?",
        user.name,
        copy.display(),
        base_dir().display()
    );
    copies.push((bin.to_path_buf(), copy.clone()));
    copy
}

// ---------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------

static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free loopback TCP port never handed out before by this process.
///
/// Scheme: a random port BELOW the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, usually 32768-60999), between 20000 and its
/// start, that can be bound on 127.0.0.1 right now. Staying out of the ephemeral range
/// means outgoing connections (psql, the daemon, PgBouncer, walreceivers) never grab a
/// port a server will (re)bind later, e.g. when a test restarts a stopped node. Ports are
/// remembered in a process-wide set, so parallel tests in one process never share one;
/// another process doing the same can still pick the same port in the short window before
/// the server binds it, which is why server start-up retries with a new port on
/// "Address already in use". Falls back to binding 127.0.0.1:0 when the range is tiny.
pub fn alloc_port() -> u16 {
    let mut guard = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);
    let eph_lo: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32768);
    let (lo, hi) = (20000u16, eph_lo.min(32768));
    let rs = RandomState::new();
    if hi > lo + 1000 {
        for i in 0..2000u32 {
            let mut h = rs.build_hasher();
            h.write_u32(i);
            h.write_u32(std::process::id());
            let p = lo + (h.finish() % u64::from(hi - lo)) as u16;
            if used.contains(&p) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", p)).is_ok() {
                used.insert(p);
                return p;
            }
        }
    }
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = l.local_addr().unwrap().port();
        if used.insert(p) {
            return p;
        }
    }
    panic!("could not allocate a free port");
}

/// True when something accepts TCP connections on 127.0.0.1:port.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

// ---------------------------------------------------------------------------------------
// psql
// ---------------------------------------------------------------------------------------

/// Runs one statement with `psql -X -A -t -q -v ON_ERROR_STOP=1 -w -d <conninfo> -c <sql>`
/// as the current OS user, with PGCONNECT_TIMEOUT=3 (covers the whole connection start-up
/// in libpq) and `PGAPPNAME=rebouncer-fixture` (so fixture connections can be told apart
/// in the server log), the whole run killed after `timeout`. Ok(stdout without the
/// trailing newline; rows on lines, columns separated by `|`), Err(stderr or timeout).
pub fn psql_conninfo(conninfo: &str, sql: &str, timeout: Duration) -> Result<String, String> {
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-w",
        "-d",
        conninfo,
        "-c",
        sql,
    ])
    .env("PGCONNECT_TIMEOUT", "3")
    .env("PGAPPNAME", "rebouncer-fixture");
    for v in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGSSLMODE",
        "PGOPTIONS",
        "PGSERVICE",
        "PGPASSWORD",
    ] {
        cmd.env_remove(v);
    }
    let o = run_timeout(&mut cmd, timeout)?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout)
            .trim_end_matches('\n')
            .to_string())
    } else {
        let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
        Err(if err.is_empty() {
            format!("psql exited with {}", o.status)
        } else {
            err
        })
    }
}

pub fn tcp_conninfo(port: u16, db: &str) -> String {
    format!("host=127.0.0.1 port={port} dbname={db} user=postgres sslmode=disable")
}

/// Default time limit of a fixture query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Template data directory (initdb once per test process)
// ---------------------------------------------------------------------------------------

const DIR_PREFIX: &str = "rebouncer-it-";

/// Where cluster directories go: `$REBOUNCER_TEST_TMPDIR` if set; else `/dev/shm` when it
/// is a writable tmpfs with at least 1 GiB free (file creation on this VM's ext4 costs
/// ~1.5 ms per file, and a cluster is ~4000 files: 3.3 s vs 0.7 s per cluster); else
/// `std::env::temp_dir()` (`$TMPDIR` or /tmp). Must be traversable by the server user.
pub fn base_dir() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        if let Ok(d) = std::env::var("REBOUNCER_TEST_TMPDIR") {
            return PathBuf::from(d);
        }
        let shm = Path::new("/dev/shm");
        let avail_kib = run_timeout(
            Command::new("df").arg("-Pk").arg(shm),
            Duration::from_secs(5),
        )
        .ok()
        .and_then(|o| {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.lines()
                .nth(1)?
                .split_whitespace()
                .nth(3)?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
        let writable = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(shm)
            .is_ok();
        if avail_kib >= 1 << 20 && writable {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    })
}

/// Settings every instance shares (appended to the template's postgresql.conf);
/// per-instance settings live in `<datadir>/fixture.conf`, included last.
const COMMON_CONF: &str = "
# --- rebouncer test fixture ---
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
fsync = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 100
log_connections = on
log_line_prefix = '%m [%p] '
wal_retrieve_retry_interval = 1s
wal_keep_size = 128MB
include_if_exists = 'fixture.conf'
";

/// A data directory made by `initdb -A trust -U postgres` with `appdb` and its table
/// `t(id serial, node text, at timestamptz default now())`, cleanly shut down.
/// Made once per process in `<tmp>/rebouncer-it-<pid>-template-*` (removed by the stale
/// sweep of a later run) and copied with `cp -a` for each cluster's primary.
fn template() -> &'static Path {
    static T: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match T.get_or_init(|| std::panic::catch_unwind(make_template).map_err(panic_text)) {
        Ok(p) => p,
        Err(e) => panic!("building the PostgreSQL template failed (earlier): {e}"),
    }
}

fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

fn make_template() -> PathBuf {
    let t0 = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-template-", std::process::id()))
        .tempdir_in(base_dir())
        .expect("create template dir")
        .keep();
    if env_flag("REBOUNCER_KEEP_TMP") {
        let _ = fs::write(dir.join("KEEP"), "");
    }
    chown_server(&dir);
    let user = server_user();
    let data = dir.join("data");
    run_ok(
        command_as(pg_bin("initdb"), user, &dir)
            .args([
                "-N",
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "-D",
            ])
            .arg(&data),
        Duration::from_secs(120),
    );
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    conf.write_all(COMMON_CONF.as_bytes()).unwrap();
    drop(conf);
    let log = dir.join("template.log");
    let port = start_pg_retry(&data, &log, &dir, "template", &dir, None);
    let made = psql_conninfo(
        &tcp_conninfo(port, "postgres"),
        "CREATE DATABASE appdb",
        QUERY_TIMEOUT,
    )
    .and_then(|_| {
        psql_conninfo(
            &tcp_conninfo(port, "appdb"),
            "CREATE TABLE t(id serial, node text, at timestamptz default now())",
            QUERY_TIMEOUT,
        )
    });
    let stopped = pg_ctl(
        &data,
        &["stop", "-m", "fast", "-w", "-t", "60"],
        &dir,
        Duration::from_secs(70),
    );
    if let Err(e) = made {
        let _ = pg_ctl(
            &data,
            &["stop", "-m", "immediate", "-w"],
            &dir,
            Duration::from_secs(30),
        );
        panic!("template: creating appdb/t failed: {e}");
    }
    stopped.expect("stop template server");
    let _ = fs::remove_file(data.join("fixture.conf"));
    let _ = fs::remove_file(data.join("postmaster.opts"));
    eprintln!(
        "[fixture] template data dir {} made in {:.2?}",
        data.display(),
        t0.elapsed()
    );
    data
}

fn pg_ctl(data: &Path, args: &[&str], cwd: &Path, timeout: Duration) -> Result<String, String> {
    let mut cmd = command_as(pg_bin("pg_ctl"), server_user(), cwd);
    cmd.arg("-D").arg(data).args(args);
    let o = run_timeout(&mut cmd, timeout)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if o.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "pg_ctl {} failed ({}): {}",
            args.join(" "),
            o.status,
            text.trim()
        ))
    }
}

fn fixture_conf(port: u16, socket_dir: &Path, name: &str, tls: Option<&Tls>) -> String {
    let mut s = format!(
        "port = {port}\nunix_socket_directories = '{}'\ncluster_name = '{name}'\n",
        socket_dir.display()
    );
    if let Some(t) = tls {
        s += &format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            t.cert.display(),
            t.key.display()
        );
    }
    s
}

/// Writes fixture.conf with a fresh port and starts the server; on "Address already in
/// use" tries again with another port (up to 4 times). Returns the port. Panics with the
/// log tail otherwise.
fn start_pg_retry(
    data: &Path,
    log: &Path,
    socket_dir: &Path,
    name: &str,
    cwd: &Path,
    tls: Option<&Tls>,
) -> u16 {
    let mut last = String::new();
    for _ in 0..4 {
        let port = alloc_port();
        let conf = data.join("fixture.conf");
        fs::write(&conf, fixture_conf(port, socket_dir, name, tls)).unwrap();
        chown_server(&conf);
        match pg_start(data, log, cwd) {
            Ok(()) => return port,
            Err(e) => {
                let t = tail(log, 15);
                if t.contains("Address already in use") || t.contains("could not bind") {
                    eprintln!("[fixture] {name}: port {port} taken, retrying with another");
                    last = e;
                    continue;
                }
                panic!(
                    "starting {name} ({}) failed: {e}\n--- {} ---\n{t}",
                    data.display(),
                    log.display()
                );
            }
        }
    }
    panic!("starting {name} failed 4 times on port collisions: {last}")
}

fn pg_start(data: &Path, log: &Path, cwd: &Path) -> Result<(), String> {
    // A postmaster killed with -9 may linger as a zombie until something reaps it, and
    // PostgreSQL's lock-file check (kill(pid, 0)) counts a zombie as alive: remove lock
    // files (postmaster.pid, the socket's .lock) whose owner is dead or a zombie.
    let mut locks = vec![data.join("postmaster.pid")];
    if let Ok(conf) = fs::read_to_string(data.join("fixture.conf")) {
        let get = |k: &str| {
            conf.lines().find_map(|l| l.strip_prefix(k)).map(|v| {
                v.trim()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('\'')
                    .to_string()
            })
        };
        if let (Some(port), Some(dir)) = (get("port"), get("unix_socket_directories")) {
            locks.push(Path::new(&dir).join(format!(".s.PGSQL.{port}.lock")));
        }
    }
    for lock in locks {
        let pid = fs::read_to_string(&lock)
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok());
        if let Some(pid) = pid
            && !pid_alive(pid)
        {
            let _ = fs::remove_file(&lock);
        }
    }
    let log_s = log.to_string_lossy().into_owned();
    pg_ctl(
        data,
        &["start", "-w", "-t", "60", "-l", &log_s],
        cwd,
        Duration::from_secs(70),
    )
    .map(|_| ())
}

fn read_postmaster_pid(data: &Path) -> Option<u32> {
    fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// True when `pid` is alive and its command line names `data` (guards against a stale
/// postmaster.pid whose pid was reused).
fn is_postmaster_of(pid: u32, data: &Path) -> bool {
    pid_alive(pid)
        && fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&*data.to_string_lossy()))
            .unwrap_or(false)
}

/// Removes directories of earlier test processes that died without tearing down
/// (`rebouncer-it-<pid>-*` whose pid is gone, no `KEEP` file), killing what still runs
/// from them. Once per process.
fn sweep_stale() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let mut dirs = vec![
            base_dir().to_path_buf(),
            std::env::temp_dir(),
            PathBuf::from("/dev/shm"),
        ];
        dirs.dedup();
        for e in dirs
            .iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flat_map(|rd| rd.flatten())
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let path = e.path();
            if pid == std::process::id()
                || Path::new(&format!("/proc/{pid}")).exists()
                || path.join("KEEP").exists()
            {
                continue;
            }
            let procs = pgrep_f(&path.to_string_lossy());
            for p in &procs {
                let _ = signal(&p.to_string(), "CONT");
                let _ = signal(&p.to_string(), "KILL");
            }
            let _ = fs::remove_dir_all(&path);
            eprintln!(
                "[fixture] swept stale {} ({} processes killed)",
                path.display(),
                procs.len()
            );
        }
    });
}

// ---------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------

/// Where the managed symlink points when the cluster starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// `<tmp>/nodes/pg<n>.ini`
    Node(usize),
    /// `<tmp>/initial.ini`: a complete PgBouncer config with an empty `[databases]`
    /// section, outside the node directory (no node is "active").
    Dummy,
}

#[derive(Clone, Debug)]
pub struct Opts {
    /// Number of streaming standbys (default 2: pg2, pg3).
    pub standbys: usize,
    /// Primary (and so every standby, which copies its settings) gets `ssl=on` with a
    /// self-signed cert for CN=localhost, SAN DNS:localhost, IP:127.0.0.1.
    pub tls: bool,
    /// Initial symlink target. Default: `Link::Node(2)` (a standby, so the daemon must
    /// switch at start-up), `Link::Dummy` when there is no standby.
    pub link: Link,
    /// Start PgBouncer (default true). When false it is configured but not running
    /// ("PgBouncer down at start-up"); call `bouncer_start()` later.
    pub bouncer: bool,
    /// PgBouncer pool_mode (default "session").
    pub pool_mode: &'static str,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            standbys: 2,
            tls: false,
            link: Link::Node(2),
            bouncer: true,
            pool_mode: "session",
        }
    }
}

impl Opts {
    pub fn standbys(mut self, n: usize) -> Self {
        self.standbys = n;
        if n == 0 && self.link == Link::Node(2) {
            self.link = Link::Dummy;
        }
        self
    }
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }
    pub fn link(mut self, l: Link) -> Self {
        self.link = l;
        self
    }
    pub fn bouncer(mut self, start: bool) -> Self {
        self.bouncer = start;
        self
    }
    pub fn pool_mode(mut self, m: &'static str) -> Self {
        self.pool_mode = m;
        self
    }
}

#[derive(Clone, Debug)]
struct Tls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    data: PathBuf,
    log: PathBuf,
}

pub struct Cluster {
    tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    nodes: Vec<Node>,
    bouncer_port: u16,
    bouncer: Mutex<Option<Child>>,
    tls: Option<Tls>,
    opts: Opts,
    daemons: AtomicUsize,
    /// Time Cluster::start took.
    pub startup: Duration,
}

impl Cluster {
    /// Starts a cluster with default options (1 primary, 2 standbys, PgBouncer → pg2).
    pub fn start_default() -> Cluster {
        Cluster::start(Opts::default())
    }

    pub fn start(opts: Opts) -> Cluster {
        let t0 = Instant::now();
        sweep_stale();
        let tpl = template();
        let trace = |what: &str| {
            if env_flag("REBOUNCER_FIXTURE_TRACE") {
                eprintln!("[fixture] {:>8.3?} {what}", t0.elapsed());
            }
        };
        trace("template ready");
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir_in(base_dir())
            .expect("create temp dir");
        let root = tmp.path().to_path_buf();
        chown_server(&root);
        let mut c = Cluster {
            tmp: Some(tmp),
            root: root.clone(),
            nodes: Vec::new(),
            bouncer_port: 0,
            bouncer: Mutex::new(None),
            tls: None,
            opts: opts.clone(),
            daemons: AtomicUsize::new(0),
            startup: Duration::ZERO,
        };
        if env_flag("REBOUNCER_KEEP_TMP") {
            let _ = fs::write(root.join("KEEP"), "");
            eprintln!("[fixture] cluster dir (kept): {}", root.display());
        }
        // From here on a panic drops `c`, which tears down whatever was started.
        if opts.tls {
            c.tls = Some(make_cert(&root));
        }
        let user = server_user();

        // Primary: copy of the template.
        let d1 = root.join("pg1");
        run_ok(
            Command::new("cp").arg("-a").arg(tpl).arg(&d1),
            Duration::from_secs(60),
        );
        let log1 = root.join("pg1.log");
        trace("copied template");
        let p1 = start_pg_retry(&d1, &log1, &root, "pg1", &root, c.tls.as_ref());
        trace("pg1 started");
        c.nodes.push(Node {
            name: "pg1".into(),
            port: p1,
            data: d1,
            log: log1,
        });

        // Standbys: base backups in parallel.
        let tls = c.tls.clone();
        let standbys: Vec<Node> = std::thread::scope(|s| {
            let hs: Vec<_> = (2..=opts.standbys + 1)
                .map(|i| {
                    let root = root.clone();
                    let tls = tls.clone();
                    s.spawn(move || {
                        let name = format!("pg{i}");
                        let data = root.join(&name);
                        run_ok(
                            command_as(pg_bin("pg_basebackup"), user, &root)
                                .args(["-h", "127.0.0.1", "-p", &p1.to_string(), "-U", "postgres"])
                                .args(["-R", "-c", "fast", "-X", "stream", "-N", "-w", "-D"])
                                .arg(&data),
                            Duration::from_secs(120),
                        );
                        trace(&format!("{name} base backup done"));
                        let log = root.join(format!("{name}.log"));
                        let port = start_pg_retry(&data, &log, &root, &name, &root, tls.as_ref());
                        trace(&format!("{name} started"));
                        Node {
                            name,
                            port,
                            data,
                            log,
                        }
                    })
                })
                .collect();
            // Join all before propagating a panic, so every started node is registered.
            let rs: Vec<_> = hs.into_iter().map(|h| h.join()).collect();
            let mut ok = Vec::new();
            let mut err = None;
            for r in rs {
                match r {
                    Ok(n) => ok.push(n),
                    Err(e) => err = Some(panic_text(e)),
                }
            }
            if let Some(e) = err {
                c.nodes.append(&mut ok);
                panic!("standby creation failed: {e}");
            }
            ok
        });
        c.nodes.extend(standbys);
        if opts.standbys > 0 {
            let want = opts.standbys.to_string();
            c.wait_until(
                Duration::from_secs(30),
                "all standbys streaming from pg1",
                |c| {
                    c.query(
                        1,
                        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    )
                    .as_deref()
                        == Ok(want.as_str())
                },
            );
        }

        trace("standbys streaming");
        // PgBouncer.
        fs::create_dir(c.configdir()).unwrap();
        fs::write(root.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        let target = match opts.link {
            Link::Node(n) => {
                assert!(n >= 1 && n <= c.nodes.len(), "Opts.link: no node {n}");
                c.node_file(n)
            }
            Link::Dummy => c.dummy_file(),
        };
        std::os::unix::fs::symlink(&target, c.symlink()).unwrap();
        let mut started = false;
        for attempt in 0..4 {
            c.bouncer_port = alloc_port();
            c.write_bouncer_files();
            if !opts.bouncer {
                break;
            }
            match c.try_bouncer_start() {
                Ok(()) => {
                    started = true;
                    break;
                }
                Err(e) if e.contains("Address already in use") && attempt < 3 => {
                    eprintln!(
                        "[fixture] pgbouncer: port {} taken, retrying",
                        c.bouncer_port
                    );
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(started || !opts.bouncer, "pgbouncer did not start");
        trace("pgbouncer started");
        c.startup = t0.elapsed();
        c
    }

    // --- paths and accessors -------------------------------------------------------

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The managed symlink `<tmp>/pgbouncer.ini` (PgBouncer's config file).
    pub fn symlink(&self) -> PathBuf {
        self.root.join("pgbouncer.ini")
    }
    /// `<tmp>/nodes`, the daemon's `configdir`.
    pub fn configdir(&self) -> PathBuf {
        self.root.join("nodes")
    }
    /// `<tmp>/nodes/pg<i>.ini`
    pub fn node_file(&self, i: usize) -> PathBuf {
        self.configdir().join(format!("{}.ini", self.name(i)))
    }
    /// `<tmp>/initial.ini` (see [`Link::Dummy`]).
    pub fn dummy_file(&self) -> PathBuf {
        self.root.join("initial.ini")
    }
    pub fn symlink_target(&self) -> PathBuf {
        fs::read_link(self.symlink()).expect("read_link of the managed symlink")
    }
    /// The node the symlink points at, if it points at a node file.
    pub fn symlink_node(&self) -> Option<usize> {
        let t = self.symlink_target();
        (1..=self.nodes.len()).find(|i| t == self.node_file(*i))
    }
    /// Number of PostgreSQL instances (primary + standbys).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    fn node(&self, i: usize) -> &Node {
        assert!(
            i >= 1 && i <= self.nodes.len(),
            "node numbers are 1-based (pg1..pg{}), got {i}",
            self.nodes.len()
        );
        &self.nodes[i - 1]
    }
    /// `pg<i>`
    pub fn name(&self, i: usize) -> String {
        format!("pg{i}")
    }
    pub fn port(&self, i: usize) -> u16 {
        self.node(i).port
    }
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.node(i).data.clone()
    }
    /// The server log (`pg_ctl -l`); `log_connections=on`, fixture connections carry
    /// `application_name=rebouncer-fixture`.
    pub fn node_log_path(&self, i: usize) -> PathBuf {
        self.node(i).log.clone()
    }
    pub fn node_log(&self, i: usize) -> String {
        fs::read_to_string(&self.node(i).log).unwrap_or_default()
    }
    /// Node number whose port is `port`.
    /// Logins of the daemon's monitoring connections to node `i` so far, from the
    /// server's `log_connections` lines (the fixture's own psql says `rebouncer-fixture`).
    pub fn monitor_logins(&self, i: usize) -> usize {
        self.node_log(i)
            .lines()
            .filter(|l| {
                l.contains("connection authorized") && l.ends_with("application_name=rebouncer")
            })
            .count()
    }
    pub fn node_of_port(&self, port: u16) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .map(|p| p + 1)
    }
    /// libpq string for the daemon's `[servers]`:
    /// `host=127.0.0.1 port=N dbname=postgres user=postgres sslmode=disable`.
    pub fn conninfo(&self, i: usize) -> String {
        tcp_conninfo(self.port(i), "postgres")
    }
    /// libpq string with TLS: `host=127.0.0.1 port=N dbname=postgres user=postgres
    /// sslmode=<mode>` plus `sslrootcert=<cert>` for verify-ca/verify-full.
    pub fn conninfo_ssl(&self, i: usize, sslmode: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} dbname=postgres user=postgres sslmode={sslmode}",
            self.port(i)
        );
        if sslmode.starts_with("verify") {
            s += &format!(
                " sslrootcert={}",
                self.cert_path()
                    .expect("cluster started without tls")
                    .display()
            );
        }
        s
    }
    /// The self-signed server certificate (PEM), usable as `sslrootcert`; None without tls.
    pub fn cert_path(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.cert.clone())
    }
    pub fn bouncer_port(&self) -> u16 {
        self.bouncer_port
    }
    /// `host=127.0.0.1 port=<bouncer port> dbname=pgbouncer user=postgres sslmode=disable`
    pub fn pgbouncer_conninfo(&self) -> String {
        tcp_conninfo(self.bouncer_port, "pgbouncer")
    }
    pub fn bouncer_log_path(&self) -> PathBuf {
        self.root.join("pgbouncer.log")
    }
    pub fn bouncer_log(&self) -> String {
        fs::read_to_string(self.bouncer_log_path()).unwrap_or_default()
    }
    pub fn bouncer_pidfile(&self) -> PathBuf {
        self.root.join("pgbouncer.pid")
    }

    /// Writes `name` under the temp dir (readable by everyone) and returns its path.
    pub fn write_file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// Polls `f(self)` (see [`wait_until`]); on timeout the panic message also carries
    /// the PgBouncer log tail.
    pub fn wait_until(&self, timeout: Duration, what: &str, mut f: impl FnMut(&Cluster) -> bool) {
        if !poll_until(timeout, || f(self)) {
            panic!(
                "timed out after {timeout:?} waiting for: {what}\n--- pgbouncer.log ---\n{}",
                tail(&self.bouncer_log_path(), 10)
            );
        }
    }

    // --- queries --------------------------------------------------------------------

    /// `psql -Atc sql` on node i, database postgres, TCP, sslmode=disable.
    pub fn query(&self, i: usize, sql: &str) -> Result<String, String> {
        psql_conninfo(&self.conninfo(i), sql, QUERY_TIMEOUT)
    }
    pub fn query_db(&self, i: usize, db: &str, sql: &str) -> Result<String, String> {
        psql_conninfo(&tcp_conninfo(self.port(i), db), sql, QUERY_TIMEOUT)
    }
    pub fn query_timeout(&self, i: usize, sql: &str, timeout: Duration) -> Result<String, String> {
        psql_conninfo(&self.conninfo(i), sql, timeout)
    }
    /// `pg_is_in_recovery()` of node i: Ok(false) = primary, Ok(true) = standby.
    pub fn in_recovery(&self, i: usize) -> Result<bool, String> {
        self.query(i, "SELECT pg_is_in_recovery()")
            .map(|s| s == "t")
    }
    /// A statement through PgBouncer (TCP 127.0.0.1:bouncer_port), database `db`
    /// (`postgres` or `appdb`). E.g. `bouncer_query("appdb", "INSERT INTO t(node)
    /// VALUES ('x') RETURNING inet_server_port()")` gives the port of the node that took
    /// the write, or Err("ERROR:  cannot execute INSERT in a read-only transaction").
    pub fn bouncer_query(&self, db: &str, sql: &str) -> Result<String, String> {
        psql_conninfo(&tcp_conninfo(self.bouncer_port, db), sql, QUERY_TIMEOUT)
    }
    pub fn bouncer_query_timeout(
        &self,
        db: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        psql_conninfo(&tcp_conninfo(self.bouncer_port, db), sql, timeout)
    }
    /// Inserts a row into appdb's `t` through PgBouncer; Ok(node number that took it).
    pub fn bouncer_write(&self, tag: &str) -> Result<usize, String> {
        let sql = format!(
            "INSERT INTO t(node) VALUES ('{}') RETURNING inet_server_port()",
            tag.replace('\'', "''")
        );
        let port: u16 = self
            .bouncer_query("appdb", &sql)?
            .trim()
            .parse()
            .map_err(|e| format!("{e}"))?;
        self.node_of_port(port)
            .ok_or_else(|| format!("write landed on unknown port {port}"))
    }
    /// An admin command on PgBouncer's console (`psql -d pgbouncer`), e.g. `SHOW DATABASES`,
    /// `RELOAD`. Rows `|`-separated.
    pub fn admin(&self, cmd: &str) -> Result<String, String> {
        psql_conninfo(&self.pgbouncer_conninfo(), cmd, QUERY_TIMEOUT)
    }
    /// Port of the `postgres` database according to PgBouncer's `SHOW DATABASES`
    /// (None when PgBouncer is down or has no such database).
    pub fn bouncer_target_port(&self) -> Option<u16> {
        let out = self.admin("SHOW DATABASES").ok()?;
        out.lines().find_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.first() == Some(&"postgres"))
                .then(|| f.get(2)?.parse().ok())
                .flatten()
        })
    }
    /// Waits (20 s at most) until the daemon has pointed PgBouncer at pg1 and `/nagios` is OK.
    pub fn wait_settled_on_pg1(&self, d: &mut Daemon) {
        d.wait_for(
            Duration::from_secs(20),
            "PgBouncer switched to pg1 at start-up",
            |d| self.symlink_node() == Some(1) && d.nagios().starts_with("OK"),
        );
    }

    /// The `paused` column of `SHOW DATABASES` for `db` ("1" or "0"; "" when PgBouncer
    /// does not answer or has no such database).
    pub fn paused(&self, db: &str) -> String {
        let Ok(rows) = self.admin("SHOW DATABASES") else {
            return String::new();
        };
        rows.lines()
            .find(|l| l.split('|').next() == Some(db))
            .and_then(|row| row.split('|').nth(11))
            .unwrap_or_default()
            .to_string()
    }

    /// Node PgBouncer currently sends `postgres` to, per `SHOW DATABASES`.
    pub fn bouncer_target_node(&self) -> Option<usize> {
        self.bouncer_target_port()
            .and_then(|p| self.node_of_port(p))
    }

    /// Atomically repoints the managed symlink at node i's file (does NOT reload PgBouncer).
    pub fn set_symlink(&self, i: usize) {
        self.set_symlink_to(&self.node_file(i));
    }
    pub fn set_symlink_to(&self, target: &Path) {
        let tmp = self.root.join(".pgbouncer.ini.fixture-tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        fs::rename(&tmp, self.symlink()).unwrap();
    }

    // --- node controls --------------------------------------------------------------

    /// Postmaster pid (first line of postmaster.pid), None when the file is missing.
    pub fn postmaster_pid(&self, i: usize) -> Option<u32> {
        read_postmaster_pid(&self.node(i).data)
    }

    /// `pg_ctl start -w` (ready to accept connections when it returns). Same port as before.
    /// (Named `start_node` because `Cluster::start` is the constructor.)
    pub fn start_node(&self, i: usize) {
        let n = self.node(i);
        if let Err(e) = pg_start(&n.data, &n.log, &self.root) {
            panic!(
                "start {}: {e}\n--- {} ---\n{}",
                n.name,
                n.log.display(),
                tail(&n.log, 15)
            );
        }
    }
    /// `pg_ctl stop -m fast -w`.
    pub fn stop_fast(&self, i: usize) {
        self.pg_ctl_stop(i, "fast");
    }
    /// `pg_ctl stop -m immediate -w` (no shutdown checkpoint; crash recovery at next start).
    pub fn stop_immediate(&self, i: usize) {
        self.pg_ctl_stop(i, "immediate");
    }
    fn pg_ctl_stop(&self, i: usize, mode: &str) {
        let n = self.node(i);
        if let Err(e) = pg_ctl(
            &n.data,
            &["stop", "-m", mode, "-w", "-t", "30"],
            &self.root,
            Duration::from_secs(40),
        ) {
            panic!("stop -m {mode} {}: {e}", n.name);
        }
    }
    /// SIGKILL to the postmaster; returns once it and its children are gone (the
    /// children notice the postmaster's death by themselves), so the port is closed and
    /// `start(i)` works (after crash recovery).
    pub fn kill9(&self, i: usize) {
        let n = self.node(i);
        let pid = self
            .postmaster_pid(i)
            .unwrap_or_else(|| panic!("{}: no postmaster.pid", n.name));
        let kids = children_of(pid);
        signal(&pid.to_string(), "KILL").unwrap_or_else(|e| panic!("kill -9 {}: {e}", n.name));
        wait_until(
            Duration::from_secs(15),
            &format!("{} postmaster {pid} and its children to exit", n.name),
            || !pid_alive(pid) && kids.iter().all(|k| !pid_alive(*k)),
        );
        // Give the reaper a moment to remove the zombie (start_node copes if it does not).
        poll_until(Duration::from_secs(1), || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
    }
    /// SIGSTOP to the postmaster AND each of its children (backends, walsender,
    /// walreceiver/startup, checkpointer, ... found with `pgrep -P`; each is its own
    /// process group, so a group signal would not reach them). Effect: the kernel still
    /// completes TCP connects (listen backlog) but nobody answers the startup packet;
    /// existing connections hang too; replication from/to this node stalls.
    pub fn sigstop(&self, i: usize) {
        self.signal_server(i, "STOP");
    }
    /// SIGCONT to everything `sigstop` stopped.
    pub fn sigcont(&self, i: usize) {
        self.signal_server(i, "CONT");
    }
    fn signal_server(&self, i: usize, sig: &str) {
        let n = self.node(i);
        let pid = self
            .postmaster_pid(i)
            .unwrap_or_else(|| panic!("{}: no postmaster.pid", n.name));
        assert!(
            is_postmaster_of(pid, &n.data),
            "{}: postmaster {pid} is not running",
            n.name
        );
        // Every postmaster child calls setsid(), so the postmaster's process group holds
        // only the postmaster: signal the children one by one. STOP: postmaster first (it
        // cannot fork new children then), then the children; CONT: the other way round.
        let kids: Vec<String> = children_of(pid).iter().map(|k| k.to_string()).collect();
        if sig == "STOP" {
            signal(&pid.to_string(), sig).unwrap_or_else(|e| panic!("SIG{sig} {}: {e}", n.name));
        }
        let _ = signal_many(&kids, sig);
        if sig != "STOP" {
            signal(&pid.to_string(), sig).unwrap_or_else(|e| panic!("SIG{sig} {}: {e}", n.name));
        }
    }
    /// `pg_ctl promote -w` (returns when the node is out of recovery).
    pub fn promote(&self, i: usize) {
        let n = self.node(i);
        if let Err(e) = pg_ctl(
            &n.data,
            &["promote", "-w", "-t", "60"],
            &self.root,
            Duration::from_secs(70),
        ) {
            panic!("promote {}: {e}\n{}", n.name, tail(&n.log, 15));
        }
    }
    /// True when node i answers `SELECT 1`.
    pub fn is_up(&self, i: usize) -> bool {
        self.query_timeout(i, "SELECT 1", Duration::from_secs(5))
            .is_ok()
    }

    // --- PgBouncer ------------------------------------------------------------------

    fn bouncer_ini(&self, port: Option<u16>) -> String {
        let r = self.root.display();
        let dbs = match port {
            Some(p) => format!(
                "postgres = host=127.0.0.1 port={p} dbname=postgres\nappdb = host=127.0.0.1 port={p} dbname=appdb\n"
            ),
            None => "; no databases: initial dummy config\n".into(),
        };
        format!(
            "[databases]\n{dbs}\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {bp}\n\
             unix_socket_dir = {r}\n\
             auth_type = trust\n\
             auth_file = {r}/userlist.txt\n\
             admin_users = postgres\n\
             pool_mode = {pm}\n\
             logfile = {r}/pgbouncer.log\n\
             pidfile = {r}/pgbouncer.pid\n\
             max_client_conn = 500\n\
             default_pool_size = 20\n\
             server_connect_timeout = 3\n\
             query_wait_timeout = 8\n",
            bp = self.bouncer_port,
            pm = self.opts.pool_mode,
        )
    }

    fn write_bouncer_files(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            fs::write(self.node_file(i + 1), self.bouncer_ini(Some(n.port))).unwrap();
        }
        fs::write(self.dummy_file(), self.bouncer_ini(None)).unwrap();
    }

    /// PgBouncer's pid while the fixture's child runs.
    pub fn bouncer_pid(&self) -> Option<u32> {
        let mut g = self.bouncer.lock().unwrap_or_else(|e| e.into_inner());
        let ch = g.as_mut()?;
        match ch.try_wait() {
            Ok(None) => Some(ch.id()),
            _ => None,
        }
    }
    pub fn bouncer_running(&self) -> bool {
        self.bouncer_pid().is_some()
    }

    /// Starts PgBouncer (foreground child `pgbouncer <symlink>`, as the server user) and
    /// waits until its admin console answers. No-op when it already runs.
    pub fn bouncer_start(&self) {
        if self.bouncer_running() {
            return;
        }
        if let Err(e) = self.try_bouncer_start() {
            panic!("{e}");
        }
    }

    fn try_bouncer_start(&self) -> Result<(), String> {
        let _ = fs::remove_file(self.bouncer_pidfile());
        let log_start = fs::metadata(self.bouncer_log_path())
            .map(|m| m.len())
            .unwrap_or(0);
        // PgBouncer also logs to stderr; it matters when it cannot read its config (no
        // logfile then). Truncated at each start.
        let errf = fs::File::create(self.root.join("pgbouncer.stderr"))
            .map_err(|e| format!("pgbouncer.stderr: {e}"))?;
        let child = command_as(pgbouncer_bin(), server_user(), &self.root)
            .arg(self.symlink())
            .stdin(Stdio::null())
            .stdout(errf.try_clone().unwrap())
            .stderr(errf)
            .spawn()
            .map_err(|e| format!("spawn pgbouncer: {e}"))?;
        *self.bouncer.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let new_log = || {
            let s = fs::read(self.bouncer_log_path()).unwrap_or_default();
            let log = String::from_utf8_lossy(&s[(log_start as usize).min(s.len())..]).into_owned();
            let err = fs::read_to_string(self.root.join("pgbouncer.stderr")).unwrap_or_default();
            if log.trim().is_empty() { err } else { log }
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if !self.bouncer_running() {
                *self.bouncer.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return Err(format!(
                    "pgbouncer exited at start-up (port {}):\n{}",
                    self.bouncer_port,
                    new_log()
                ));
            }
            // PgBouncer 1.18 does NOT exit when its TCP port is taken: it logs
            // "WARNING cannot listen on 127.0.0.1:P: bind(): Address already in use" and
            // serves the unix socket only. So check our own log, not just the port (which
            // may be someone else's server).
            let log = new_log();
            if log.contains("cannot listen on") {
                self.bouncer_kill();
                return Err(format!(
                    "pgbouncer could not listen (port {}):\n{log}",
                    self.bouncer_port
                ));
            }
            if log.contains(&format!("listening on 127.0.0.1:{}", self.bouncer_port))
                && self.admin("SHOW VERSION").is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.bouncer_kill();
        Err(format!(
            "pgbouncer admin console did not answer within 15 s:\n{}",
            new_log()
        ))
    }

    /// Stops PgBouncer: SIGTERM (immediate shutdown), SIGKILL after 5 s; returns when it
    /// has exited (its port is closed then).
    pub fn bouncer_stop(&self) {
        let mut g = self.bouncer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut ch) = g.take() {
            if matches!(ch.try_wait(), Ok(None)) {
                let _ = signal(&ch.id().to_string(), "TERM");
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(5) && matches!(ch.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = ch.kill();
            }
            let _ = ch.wait();
        }
        let _ = fs::remove_file(self.bouncer_pidfile());
    }

    /// SIGKILL to PgBouncer (no clean-up by PgBouncer itself).
    pub fn bouncer_kill(&self) {
        let mut g = self.bouncer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut ch) = g.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
        let _ = fs::remove_file(self.bouncer_pidfile());
    }

    /// Sends a signal to the running PgBouncer (e.g. "HUP" = reload the config file).
    pub fn bouncer_signal(&self, sig: &str) -> Result<(), String> {
        let pid = self.bouncer_pid().ok_or("pgbouncer not running")?;
        signal(&pid.to_string(), sig)
    }

    // --- rebouncer config -----------------------------------------------------------

    /// The default `[servers]` lines: `(pg<i>, conninfo(i))` for every node.
    pub fn servers(&self) -> Vec<(String, String)> {
        (1..=self.nodes.len())
            .map(|i| (self.name(i), self.conninfo(i)))
            .collect()
    }

    /// Text of a rebouncer config in the Go format (see `write_rebouncer_config`).
    pub fn rebouncer_config_text(
        &self,
        interval: u64,
        timeout: u64,
        extra_global: &str,
        servers: &[(String, String)],
    ) -> String {
        let mut s = format!(
            "[global]\npgbouncer={}\nsymlink={}\nconfigdir={}\ninterval={interval}\ntimeout={timeout}\n",
            self.pgbouncer_conninfo(),
            self.symlink().display(),
            self.configdir().display()
        );
        for l in extra_global.lines() {
            s += l.trim_start();
            s.push('\n');
        }
        s += "\n[servers]\n";
        for (name, ci) in servers {
            s += &format!("{name}={ci}\n");
        }
        s
    }

    /// Writes `<tmp>/rebouncer.ini`:
    /// ```text
    /// [global]
    /// pgbouncer=<pgbouncer_conninfo>
    /// symlink=<tmp>/pgbouncer.ini
    /// configdir=<tmp>/nodes
    /// interval=N
    /// timeout=N
    /// <extra_global lines>
    ///
    /// [servers]
    /// pg1=host=127.0.0.1 port=.. dbname=postgres user=postgres sslmode=disable
    /// ...
    /// ```
    pub fn write_rebouncer_config(
        &self,
        interval: u64,
        timeout: u64,
        extra_global: &str,
    ) -> PathBuf {
        self.write_rebouncer_config_with(interval, timeout, extra_global, &self.servers())
    }

    /// Same with custom `[servers]` lines (name, conninfo).
    pub fn write_rebouncer_config_with(
        &self,
        interval: u64,
        timeout: u64,
        extra_global: &str,
        servers: &[(String, String)],
    ) -> PathBuf {
        self.write_file(
            "rebouncer.ini",
            &self.rebouncer_config_text(interval, timeout, extra_global, servers),
        )
    }

    /// A daemon command line (default flags, allocated HTTP port) to adjust and spawn.
    pub fn daemon_cmd(&self, config: &Path) -> DaemonCmd {
        let n = self.daemons.fetch_add(1, Ordering::SeqCst);
        DaemonCmd {
            bin: rebouncer_bin(),
            config: config.to_path_buf(),
            http: format!("127.0.0.1:{}", alloc_port()),
            pidfile: self.root.join("rebouncer.pid"),
            logfile: Some(self.root.join("rebouncer.log")),
            extra_args: Vec::new(),
            raw_args: None,
            user: None,
            cwd: self.root.clone(),
            out: self.root.join(format!("rebouncer-{n}.out")),
            err: self.root.join(format!("rebouncer-{n}.err")),
            // The state file goes into this cluster's directory, as systemd's
            // StateDirectory= would arrange: tests never share timeline memory.
            env: vec![("STATE_DIRECTORY".into(), self.root.display().to_string())],
        }
    }

    /// Spawns the daemon with default flags and waits until its HTTP server answers.
    pub fn daemon(&self, config: &Path) -> Daemon {
        self.daemon_cmd(config).start()
    }

    // --- teardown -------------------------------------------------------------------

    fn teardown(&mut self) {
        // Immediate shutdown of every postmaster at once (what `pg_ctl stop -m immediate`
        // does: SIGQUIT), after SIGCONT in case a test left it stopped; SIGKILL after 10 s.
        let pms: Vec<u32> = self
            .nodes
            .iter()
            .filter_map(|n| read_postmaster_pid(&n.data).filter(|p| is_postmaster_of(*p, &n.data)))
            .collect();
        for pid in &pms {
            let kids: Vec<String> = children_of(*pid).iter().map(|k| k.to_string()).collect();
            let _ = signal_many(&kids, "CONT");
            let _ = signal(&pid.to_string(), "CONT");
            let _ = signal(&pid.to_string(), "QUIT");
        }
        if !poll_until(Duration::from_secs(10), || {
            pms.iter().all(|p| !pid_alive(*p))
        }) {
            for pid in &pms {
                let _ = signal(&pid.to_string(), "KILL");
            }
        }
        self.bouncer_kill();
        // Safety net: anything whose command line mentions our dir (postmasters not yet
        // registered when a start-up panicked, a daemon still running, ...).
        let pat = self.root.to_string_lossy().into_owned();
        for _ in 0..3 {
            let left = pgrep_f(&pat);
            if left.is_empty() {
                break;
            }
            for p in &left {
                let _ = signal(&p.to_string(), "CONT");
                let _ = signal(&p.to_string(), "KILL");
            }
            poll_until(Duration::from_secs(3), || {
                left.iter().all(|p| !pid_alive(*p))
            });
        }
        let _ = fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700));
        if let Some(tmp) = self.tmp.take() {
            if env_flag("REBOUNCER_KEEP_TMP") {
                eprintln!("[fixture] kept {}", tmp.keep().display());
            } else if let Err(e) = tmp.close() {
                eprintln!("[fixture] removing {}: {e}", self.root.display());
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

// ---------------------------------------------------------------------------------------
// Safety helpers: pg_hba.conf edits, server-log counting, background writers/samplers
// ---------------------------------------------------------------------------------------

/// Marker appended to every pg_hba.conf line the fixture adds, so `hba_restore` removes
/// exactly those.
const HBA_MARK: &str = "# rebouncer-fixture";

/// One write attempted by a [`BouncerWriter`].
#[derive(Clone, Debug)]
pub struct WriteRecord {
    /// When the attempt started.
    pub at: Instant,
    /// How long it took.
    pub took: Duration,
    /// Node that took the write (from `inet_server_port()`), None when it failed.
    pub node: Option<usize>,
    /// The error when it failed (psql's stderr, or a timeout).
    pub error: Option<String>,
}

/// What a [`BouncerWriter`] saw.
#[derive(Clone, Debug, Default)]
pub struct WriteLog {
    pub records: Vec<WriteRecord>,
}

impl WriteLog {
    /// Writes that landed on node `i`.
    pub fn on(&self, i: usize) -> usize {
        self.records.iter().filter(|r| r.node == Some(i)).count()
    }
    pub fn failed(&self) -> usize {
        self.records.iter().filter(|r| r.node.is_none()).count()
    }
    pub fn total(&self) -> usize {
        self.records.len()
    }
    /// Writes on node `i` that started at or after `t`.
    pub fn on_since(&self, i: usize, t: Instant) -> usize {
        self.records
            .iter()
            .filter(|r| r.node == Some(i) && r.at >= t)
            .count()
    }
    /// "N writes: pg1 x, pg2 y, failed z (first error: ...)" for messages.
    pub fn summary(&self) -> String {
        let mut nodes: Vec<usize> = self.records.iter().filter_map(|r| r.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let mut s = format!("{} writes:", self.total());
        for n in nodes {
            s += &format!(" pg{n} {},", self.on(n));
        }
        s += &format!(" failed {}", self.failed());
        if let Some(e) = self.records.iter().find_map(|r| r.error.as_deref()) {
            s += &format!(" (first error: {})", e.lines().next().unwrap_or(""));
        }
        s
    }
}

/// A client that writes through PgBouncer in a loop (one new psql connection per
/// write: `INSERT INTO t(node) VALUES (<tag>) RETURNING inet_server_port()` in `appdb`)
/// on a background thread until stopped; records per write which node took it.
pub struct BouncerWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<WriteLog>>,
    pub tag: String,
}

impl BouncerWriter {
    /// Stops the loop (after the write in flight, at most `per_write` later) and returns
    /// what it saw.
    pub fn stop(mut self) -> WriteLog {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap_or_default()
    }
}

impl Drop for BouncerWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One sample of a [`RouteSampler`]: when, and the node PgBouncer routed to (None when it
/// did not answer or routed to an unknown port).
pub type RouteSample = (Instant, Option<usize>);

/// Samples where PgBouncer routes `postgres` (`SHOW DATABASES`) every 100 ms on a
/// background thread until stopped.
pub struct RouteSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<RouteSample>>>,
}

impl RouteSampler {
    /// Stops sampling; returns every sample (time, node or None when PgBouncer did not
    /// answer or routed to an unknown port).
    pub fn stop(mut self) -> Vec<RouteSample> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap_or_default()
    }
}

impl Drop for RouteSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn node_of(ports: &[u16], port: u16) -> Option<usize> {
    ports.iter().position(|p| *p == port).map(|p| p + 1)
}

impl Cluster {
    /// `pg_ctl reload` of node i (SIGHUP; works even when pg_hba.conf rejects every login).
    pub fn reload(&self, i: usize) {
        let n = self.node(i);
        if let Err(e) = pg_ctl(&n.data, &["reload"], &self.root, Duration::from_secs(20)) {
            panic!("reload {}: {e}", n.name);
        }
    }

    pub fn hba_path(&self, i: usize) -> PathBuf {
        self.node(i).data.join("pg_hba.conf")
    }

    /// Puts `lines` (pg_hba.conf syntax, one per line) IN FRONT of node i's pg_hba.conf,
    /// each marked so that [`Cluster::hba_restore`] removes them, then `pg_ctl reload`.
    /// The reload is asynchronous: wait for its effect (e.g. [`Cluster::login_rejected`]).
    /// Existing sessions are not affected: PostgreSQL checks pg_hba.conf at login only.
    pub fn hba_prepend(&self, i: usize, lines: &[&str]) {
        let p = self.hba_path(i);
        let old = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let mut new = String::new();
        for l in lines {
            new += &format!("{l} {HBA_MARK}\n");
        }
        new += &old;
        // Written in place: owner and mode stay the server's.
        fs::write(&p, new).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        self.reload(i);
    }

    /// Removes every line the fixture added to node i's pg_hba.conf and reloads.
    pub fn hba_restore(&self, i: usize) {
        let p = self.hba_path(i);
        let old = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let new: String = old
            .lines()
            .filter(|l| !l.ends_with(HBA_MARK))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&p, new).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        self.reload(i);
    }

    /// Node i refuses every NEW login (TCP and unix socket, any user and database;
    /// replication connections are not matched by `all`), while existing sessions,
    /// PgBouncer's server connections and the daemon's kept connection live on. Returns
    /// once a new login is refused (the reload has taken effect).
    pub fn hba_reject_new_logins(&self, i: usize) {
        self.hba_prepend(
            i,
            &[
                "local all all reject",
                "host all all 0.0.0.0/0 reject",
                "host all all ::/0 reject",
            ],
        );
        self.wait_until(
            Duration::from_secs(20),
            &format!(
                "{} to refuse new logins after the pg_hba.conf reload",
                self.name(i)
            ),
            |c| c.login_rejected(i, "postgres"),
        );
    }

    /// Node i refuses TCP logins to database `postgres` (what the daemon's monitoring
    /// connection uses: `host=127.0.0.1 ... dbname=postgres`); `appdb` and unix-socket
    /// logins still work. Returns once the reload has taken effect.
    pub fn hba_reject_monitoring(&self, i: usize) {
        self.hba_prepend(i, &["host postgres all 127.0.0.1/32 reject"]);
        self.wait_until(
            Duration::from_secs(20),
            &format!("{} to refuse TCP logins to database postgres", self.name(i)),
            |c| c.login_rejected(i, "postgres"),
        );
    }

    /// True when a new TCP login as postgres to database `db` on node i is refused by
    /// pg_hba.conf (not merely failing for another reason).
    pub fn login_rejected(&self, i: usize, db: &str) -> bool {
        match psql_conninfo(&tcp_conninfo(self.port(i), db), "SELECT 1", QUERY_TIMEOUT) {
            Ok(_) => false,
            Err(e) => e.contains("pg_hba.conf rejects connection"),
        }
    }

    /// Current length in bytes of node i's server log: a mark for `node_log_since`.
    pub fn node_log_len(&self, i: usize) -> u64 {
        fs::metadata(&self.node(i).log)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Node i's server log from byte offset `mark` on.
    pub fn node_log_since(&self, i: usize, mark: u64) -> String {
        let b = fs::read(&self.node(i).log).unwrap_or_default();
        String::from_utf8_lossy(&b[(mark as usize).min(b.len())..]).into_owned()
    }

    /// Logins node i refused because of pg_hba.conf since `mark` (one
    /// `FATAL:  pg_hba.conf rejects connection for host ...` line per attempt).
    pub fn hba_rejections_since(&self, i: usize, mark: u64) -> usize {
        self.node_log_since(i, mark)
            .lines()
            .filter(|l| l.contains("FATAL:") && l.contains("pg_hba.conf rejects connection"))
            .count()
    }

    /// Connection attempts node i received since `mark` (`log_connections`'s
    /// `connection received:` lines; every attempt, accepted or refused, forks a backend).
    pub fn connections_received_since(&self, i: usize, mark: u64) -> usize {
        self.node_log_since(i, mark)
            .lines()
            .filter(|l| l.contains("LOG:  connection received:"))
            .count()
    }

    /// Rows of appdb's `t` with `node = tag` on node i, read directly (not through
    /// PgBouncer): proof of where writes landed, even when the client never saw an answer.
    pub fn rows_tagged(&self, i: usize, tag: &str) -> Result<usize, String> {
        self.query_db(
            i,
            "appdb",
            &format!(
                "SELECT count(*) FROM t WHERE node = '{}'",
                tag.replace('\'', "''")
            ),
        )?
        .trim()
        .parse()
        .map_err(|e| format!("{e}"))
    }

    /// Starts a [`BouncerWriter`]: writes rows tagged `tag` through PgBouncer in a loop,
    /// each a new connection with a `per_write` limit (psql is killed after it; PgBouncer's
    /// own query_wait_timeout is 8 s), then 50 ms pause.
    pub fn start_writer(&self, tag: &str, per_write: Duration) -> BouncerWriter {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        let conninfo = tcp_conninfo(self.bouncer_port, "appdb");
        let sql = format!(
            "INSERT INTO t(node) VALUES ('{}') RETURNING inet_server_port()",
            tag.replace('\'', "''")
        );
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut log = WriteLog::default();
            while !s.load(Ordering::SeqCst) {
                let at = Instant::now();
                let r = psql_conninfo(&conninfo, &sql, per_write);
                let took = at.elapsed();
                let (node, error) = match r {
                    Ok(out) => match out.trim().parse::<u16>() {
                        Ok(p) => match node_of(&ports, p) {
                            Some(n) => (Some(n), None),
                            None => (None, Some(format!("unknown port {p}"))),
                        },
                        Err(e) => (None, Some(format!("bad output {out:?}: {e}"))),
                    },
                    Err(e) => (None, Some(e)),
                };
                log.records.push(WriteRecord {
                    at,
                    took,
                    node,
                    error,
                });
                std::thread::sleep(Duration::from_millis(50));
            }
            log
        });
        BouncerWriter {
            stop,
            handle: Some(handle),
            tag: tag.to_string(),
        }
    }

    /// Starts a [`RouteSampler`] on PgBouncer's admin console.
    pub fn start_route_sampler(&self) -> RouteSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        let conninfo = self.pgbouncer_conninfo();
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let at = Instant::now();
                let node = psql_conninfo(&conninfo, "SHOW DATABASES", Duration::from_secs(5))
                    .ok()
                    .and_then(|out| {
                        out.lines().find_map(|l| {
                            let f: Vec<&str> = l.split('|').collect();
                            (f.first() == Some(&"postgres"))
                                .then(|| f.get(2)?.parse::<u16>().ok())
                                .flatten()
                        })
                    })
                    .and_then(|p| node_of(&ports, p));
                samples.push((at, node));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        RouteSampler {
            stop,
            handle: Some(handle),
        }
    }
}

fn make_cert(root: &Path) -> Tls {
    let dir = root.join("tls");
    fs::create_dir(&dir).unwrap();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "3650",
                "-subj",
                "/CN=localhost",
            ])
            .args([
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        Duration::from_secs(60),
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&cert, fs::Permissions::from_mode(0o644)).unwrap();
    chown_server_recursive(&dir);
    Tls { cert, key }
}

// ---------------------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------------------

/// How to run the daemon. Fields are public: adjust, then `spawn()` or `start()`.
#[derive(Clone, Debug)]
pub struct DaemonCmd {
    pub bin: PathBuf,
    pub config: PathBuf,
    /// `-http` value; also where `http_get` connects (a leading `:` or `localhost`
    /// means 127.0.0.1).
    pub http: String,
    pub pidfile: PathBuf,
    /// `-logfile`; None = log to stdout (then read `Daemon::stdout()`).
    pub logfile: Option<PathBuf>,
    /// Appended after the default flags.
    pub extra_args: Vec<String>,
    /// When Some, exactly these arguments replace all default flags (`http`, `logfile`,
    /// `pidfile` are then only used by the accessors).
    pub raw_args: Option<Vec<String>>,
    /// Run as this OS user (e.g. "postgres"; the test must run as root for that).
    pub user: Option<String>,
    pub cwd: PathBuf,
    /// Files receiving the daemon's stdout and stderr.
    pub out: PathBuf,
    pub err: PathBuf,
    pub env: Vec<(String, String)>,
}

impl DaemonCmd {
    /// `-config=<config> -http=<http> -pidfile=<pidfile> [-logfile=<logfile>] <extra_args>`
    pub fn args(&self) -> Vec<String> {
        if let Some(a) = &self.raw_args {
            return a.clone();
        }
        let mut a = vec![
            format!("-config={}", self.config.display()),
            format!("-http={}", self.http),
            format!("-pidfile={}", self.pidfile.display()),
        ];
        if let Some(l) = &self.logfile {
            a.push(format!("-logfile={}", l.display()));
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    pub fn run_as(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Spawns the daemon; does not wait for anything.
    pub fn spawn(mut self) -> Daemon {
        let user = self.user.as_deref().map(os_user);
        if let Some(u) = &user {
            assert!(
                is_root() || u.uid == euid(),
                "running the daemon as {} needs root",
                u.name
            );
            self.bin = runnable_by(&self.bin, u);
            // Files a previous daemon (as root) may have created must stay writable.
            for p in [Some(&self.pidfile), self.logfile.as_ref()]
                .into_iter()
                .flatten()
            {
                if p.exists() {
                    let _ = std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid));
                }
            }
        }
        let out = fs::File::create(&self.out).unwrap();
        let err = fs::File::create(&self.err).unwrap();
        let mut cmd = command_as(&self.bin, user.as_ref(), &self.cwd);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        Daemon {
            child: Some(child),
            http_addr: http_connect_addr(&self.http),
            cmd: self,
        }
    }

    /// Spawns the daemon and waits (10 s) until its HTTP server answers `GET /nodes` with
    /// any HTTP response; panics with the daemon's log/stderr if it exits first.
    pub fn start(self) -> Daemon {
        let mut d = self.spawn();
        d.wait_http_ready(Duration::from_secs(10));
        d
    }
}

fn http_connect_addr(http: &str) -> String {
    let s = if http.starts_with(':') {
        format!("127.0.0.1{http}")
    } else {
        http.to_string()
    };
    match s.strip_prefix("localhost:") {
        Some(p) => format!("127.0.0.1:{p}"),
        None => s,
    }
}

/// A running daemon; killed on drop (SIGTERM, SIGKILL after 5 s).
pub struct Daemon {
    child: Option<Child>,
    pub http_addr: String,
    pub cmd: DaemonCmd,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon already reaped").id()
    }
    /// Contents of `-logfile` (or of stdout when started without one).
    pub fn log(&self) -> String {
        let p = self.cmd.logfile.as_ref().unwrap_or(&self.cmd.out);
        fs::read_to_string(p).unwrap_or_default()
    }
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.cmd.out).unwrap_or_default()
    }
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.cmd.err).unwrap_or_default()
    }
    /// Log + stderr, for panic messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- daemon log ---\n{}\n--- daemon stderr ---\n{}",
            self.log(),
            self.stderr()
        )
    }

    /// Exit status when the daemon has exited, None while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_status().is_none()
    }
    /// Waits for the daemon to exit by itself; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(st) = self.try_status() {
                return st;
            }
            if t.elapsed() > timeout {
                panic!(
                    "daemon still running after {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    pub fn signal(&self, sig: &str) -> Result<(), String> {
        signal(&self.pid().to_string(), sig)
    }
    /// SIGTERM, then waits (SIGKILL after 10 s, with a warning); returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let Some(mut ch) = self.child.take() else {
            panic!("daemon already stopped")
        };
        if let Ok(Some(st)) = ch.try_wait() {
            return st;
        }
        let _ = signal(&ch.id().to_string(), "TERM");
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = ch.try_wait() {
                return st;
            }
            if t.elapsed() > Duration::from_secs(10) {
                eprintln!("[fixture] daemon ignored SIGTERM for 10 s: SIGKILL");
                let _ = ch.kill();
                return ch.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        let mut ch = self.child.take().expect("daemon already stopped");
        let _ = ch.kill();
        ch.wait().unwrap()
    }

    /// The `/nagios` line ("" when the page does not answer).
    pub fn nagios(&self) -> String {
        self.http_get("/nagios").unwrap_or_default()
    }

    /// `GET path` with HTTP/1.0 (2 s timeouts). Ok(body) on 200, Err otherwise.
    pub fn http_get(&self, path: &str) -> Result<String, String> {
        match self.http("GET", path)? {
            (200, _, body) => Ok(body),
            (code, _, body) => Err(format!("HTTP {code}: {body}")),
        }
    }
    /// Any method: Ok((status code, header block, body)).
    pub fn http(&self, method: &str, path: &str) -> Result<(u16, String, String), String> {
        http_request(&self.http_addr, method, path)
    }
    pub fn wait_http_ready(&mut self, timeout: Duration) {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.http("GET", "/nodes").is_ok() {
                return;
            }
            if let Some(st) = self.try_status() {
                panic!(
                    "daemon exited ({st}) before its HTTP server answered\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "daemon HTTP {} not answering after {timeout:?}\n{}",
            self.http_addr,
            self.diagnostics()
        );
    }
    /// Polls `f(self)` every 50 ms; on timeout panics with `what` and the daemon's log and
    /// stderr. Also panics at once when the daemon has exited and `f` is still false.
    pub fn wait_for(&mut self, timeout: Duration, what: &str, mut f: impl FnMut(&Daemon) -> bool) {
        let t = Instant::now();
        loop {
            if f(self) {
                return;
            }
            if let Some(st) = self.try_status() {
                if !f(self) {
                    panic!(
                        "daemon exited ({st}) while waiting for: {what}\n{}",
                        self.diagnostics()
                    );
                }
                return;
            }
            if t.elapsed() >= timeout {
                panic!(
                    "timed out after {:.1?} waiting for: {what}\n{}",
                    t.elapsed(),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    /// Waits until the log contains `needle`.
    pub fn wait_log(&mut self, timeout: Duration, needle: &str) {
        self.wait_for(timeout, &format!("daemon log to contain {needle:?}"), |d| {
            d.log().contains(needle)
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut ch) = self.child.take() {
            if matches!(ch.try_wait(), Ok(None)) {
                let _ = signal(&ch.id().to_string(), "TERM");
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(5) && matches!(ch.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = ch.kill();
            }
            let _ = ch.wait();
        }
    }
}

/// Plain std HTTP/1.0 request with 2 s connect/read/write timeouts.
pub fn http_request(addr: &str, method: &str, path: &str) -> Result<(u16, String, String), String> {
    let sa: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .min_by_key(|a| !a.is_ipv4())
        .ok_or_else(|| format!("{addr}: no address"))?;
    let t = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&sa, t).map_err(|e| format!("connect {sa}: {e}"))?;
    s.set_read_timeout(Some(t)).unwrap();
    s.set_write_timeout(Some(t)).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("read {sa}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad HTTP response: {head:?}"))?;
    Ok((code, head.to_string(), body.to_string()))
}

/// A loopback TCP forwarder to `127.0.0.1:target`, for cutting a daemon's connections
/// without restarting what is behind them (a broken network path, a firewall's idle
/// timeout). New connections are forwarded as long as the proxy lives.
pub struct Proxy {
    pub port: u16,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (o, a) = (open.clone(), accepted.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                a.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                };
                if let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) {
                    o.lock().unwrap().extend([c3, s3]);
                    pipe(c2, s2);
                    pipe(server, client);
                }
            }
        });
        Proxy {
            port,
            open,
            accepted,
        }
    }

    /// Breaks every connection made so far, both ways.
    pub fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}
