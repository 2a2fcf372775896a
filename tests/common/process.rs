//! Processes and the machine: waiting, running commands with a time limit, signals,
//! `/proc`, OS users, the programs under test and free ports.
//!
//! Root: PostgreSQL and PgBouncer refuse to run as root. When the test runs as root,
//! every server program (initdb, pg_ctl, pg_basebackup, postgres, pgbouncer) is run as
//! the OS user `postgres` (std's `CommandExt::uid/gid`, so the spawned pid *is* the
//! program: signals reach it directly), and the temp dir is chown'ed to it. Client
//! programs (psql, openssl) run as the current user. Not root: everything runs as the
//! current user; the database superuser is called `postgres` in both cases.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::cluster::{DIR_PREFIX, base_dir};

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

pub fn reader(mut r: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Runs `cmd`; panics with its output unless it exits 0. Returns stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
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
pub fn proc_stat_fields(stat: &str) -> Vec<&str> {
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

pub fn pgrep(args: &[&str]) -> Vec<u32> {
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

pub fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

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
pub fn chown_server(path: &Path) {
    if let Some(u) = server_user() {
        std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

pub fn chown_server_recursive(path: &Path) {
    if server_user().is_some() {
        chown_server(path);
        if path.is_dir() && !path.is_symlink() {
            for e in fs::read_dir(path).unwrap().flatten() {
                chown_server_recursive(&e.path());
            }
        }
    }
}

/// The PostgreSQL bin directory under test: `$REBOUNCER_PG_BIN`, else Debian 12's
/// PostgreSQL 15. Every PostgreSQL program the fixture runs (also Patroni's `bin_dir` and
/// psql) comes from here, so one variable switches the whole suite to another build.
pub const PG_BIN_ENV: &str = "REBOUNCER_PG_BIN";
pub const PG_BIN_DEFAULT: &str = "/usr/lib/postgresql/15/bin";
/// The PgBouncer binary under test: `$REBOUNCER_PGBOUNCER`, else Debian 12's 1.18.
pub const PGBOUNCER_ENV: &str = "REBOUNCER_PGBOUNCER";
pub const PGBOUNCER_DEFAULT: &str = "/usr/sbin/pgbouncer";

fn env_or(name: &str, default: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(default),
    }
}

pub fn pg_bin(prog: &str) -> PathBuf {
    env_or(PG_BIN_ENV, PG_BIN_DEFAULT).join(prog)
}

pub fn pgbouncer_bin() -> PathBuf {
    env_or(PGBOUNCER_ENV, PGBOUNCER_DEFAULT)
}

/// The version of the PgBouncer under test as (major, minor, patch), from the first line
/// of `pgbouncer --version` ("PgBouncer 1.24.1"); asked once per test process. Panics
/// when the binary cannot be run: nothing else in a test could work then either.
pub fn pgbouncer_version() -> (u32, u32, u32) {
    static V: OnceLock<Result<(u32, u32, u32), String>> = OnceLock::new();
    let v = V.get_or_init(|| {
        let bin = pgbouncer_bin();
        let o = run_timeout(Command::new(&bin).arg("--version"), Duration::from_secs(10))?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        parse_pgbouncer_version(&text).ok_or_else(|| {
            format!(
                "{} --version said {:?} ({}), not \"PgBouncer <major>.<minor>.<patch>\": is {PGBOUNCER_ENV} a PgBouncer?",
                bin.display(),
                text.trim(),
                o.status
            )
        })
    });
    match v {
        Ok(v) => *v,
        Err(e) => panic!("{e}"),
    }
}

fn parse_pgbouncer_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.lines().next()?.strip_prefix("PgBouncer ")?.trim();
    let mut n = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((n.next()??, n.next()??, n.next().flatten().unwrap_or(0)))
}

/// The signal that makes PgBouncer exit at once, dropping its clients: SIGTERM up to 1.22;
/// from 1.23 SIGTERM waits until every client (an admin session too) has disconnected,
/// and SIGQUIT is the immediate one. 1.18 ignores SIGQUIT (docs/versions.md).
pub fn pgbouncer_fast_exit_signal() -> &'static str {
    if pgbouncer_version() >= (1, 23, 0) {
        "QUIT"
    } else {
        "TERM"
    }
}

/// "PostgreSQL 15.14 (/usr/lib/postgresql/15/bin), PgBouncer 1.18.0 (/usr/sbin/pgbouncer)":
/// what the suite runs against, from the programs' own `--version`, for narration and
/// failure messages.
pub fn versions_under_test() -> String {
    fn first_line(prog: &Path) -> String {
        match run_timeout(Command::new(prog).arg("--version"), Duration::from_secs(10)) {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            Ok(o) => format!("{} --version failed ({})", prog.display(), o.status),
            Err(e) => e,
        }
    }
    // "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)" -> "PostgreSQL 15.14"
    let pg = first_line(&pg_bin("postgres"));
    let pg = match pg.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["postgres", "(PostgreSQL)", v, ..] => format!("PostgreSQL {v}"),
        _ => pg,
    };
    format!(
        "{pg} ({}), {} ({})",
        pg_bin("").display(),
        first_line(&pgbouncer_bin()),
        pgbouncer_bin().display()
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
pub fn executable_by(bin: &Path, user: &OsUser) -> bool {
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

pub static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

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
