//! The PostgreSQL servers of a cluster: the template data directory made once per test
//! process, starting an instance, stopping, killing, freezing and promoting one, and
//! editing its pg_hba.conf and reading its log.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::certs::Tls;
use super::clients::{QUERY_TIMEOUT, psql_conninfo, tcp_conninfo};
use super::cluster::{Cluster, DIR_PREFIX, base_dir};
use super::process::{
    alloc_port, children_of, chown_server, command_as, env_flag, pg_bin, pid_alive, poll_until,
    run_ok, run_timeout, server_user, signal, signal_many, tail, wait_until,
};

/// Settings every instance shares (appended to the template's postgresql.conf);
/// per-instance settings live in `<datadir>/fixture.conf`, included last.
pub const COMMON_CONF: &str = "
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
pub fn template() -> &'static Path {
    static T: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match T.get_or_init(|| std::panic::catch_unwind(make_template).map_err(panic_text)) {
        Ok(p) => p,
        Err(e) => panic!("building the PostgreSQL template failed (earlier): {e}"),
    }
}

pub fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

pub fn make_template() -> PathBuf {
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

pub fn pg_ctl(data: &Path, args: &[&str], cwd: &Path, timeout: Duration) -> Result<String, String> {
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

pub fn fixture_conf(port: u16, socket_dir: &Path, name: &str, tls: Option<&Tls>) -> String {
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
pub fn start_pg_retry(
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

pub fn pg_start(data: &Path, log: &Path, cwd: &Path) -> Result<(), String> {
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
    let out = pg_ctl(
        data,
        &["start", "-w", "-t", "60", "-l", &log_s],
        cwd,
        Duration::from_secs(70),
    )?;
    // pg_ctl of PostgreSQL 18 (not 15) exits 0 when the server of a cleanly stopped standby
    // dies during start-up, for whatever reason (a taken port too): it reads the control
    // file's "shut down in recovery" as a stop by recovery target settings. The fixture sets
    // no recovery target, so that is a failed start.
    if out.contains("shut down because of recovery target") {
        return Err(format!(
            "pg_ctl start: the server exited during start-up (pg_ctl says: {})",
            out.trim()
        ));
    }
    Ok(())
}

pub fn read_postmaster_pid(data: &Path) -> Option<u32> {
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
pub fn is_postmaster_of(pid: u32, data: &Path) -> bool {
    pid_alive(pid)
        && fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&*data.to_string_lossy()))
            .unwrap_or(false)
}

/// Marker appended to every pg_hba.conf line the fixture adds, so `hba_restore` removes
/// exactly those.
pub const HBA_MARK: &str = "# rebouncer-fixture";

impl Cluster {
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

    pub fn pg_ctl_stop(&self, i: usize, mode: &str) {
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

    pub fn signal_server(&self, i: usize, sig: &str) {
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
}
