//! The cluster's PgBouncer: its config is the managed symlink
//! `<tmp>/pgbouncer.ini -> <tmp>/nodes/<node>.ini`, with one precooked node file per
//! PostgreSQL instance; starting and stopping it, its admin console, and where it routes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::clients::{QUERY_TIMEOUT, psql_conninfo, psql_rows, tcp_conninfo};
use super::cluster::Cluster;
use super::process::{command_as, pgbouncer_bin, pgbouncer_fast_exit_signal, server_user, signal};

/// Where a fixture keeps its PgBouncer's files, under the fixture's directory.
pub struct BouncerFiles<'a>(pub &'a Path);

impl BouncerFiles<'_> {
    /// The managed symlink `<root>/pgbouncer.ini` (PgBouncer's config file).
    pub fn symlink(&self) -> PathBuf {
        self.0.join("pgbouncer.ini")
    }

    /// `<root>/nodes`, the daemon's `configdir`.
    pub fn configdir(&self) -> PathBuf {
        self.0.join("nodes")
    }

    /// `<root>/nodes/<name>.ini`
    pub fn node_file(&self, name: &str) -> PathBuf {
        self.configdir().join(format!("{name}.ini"))
    }

    /// `<root>/initial.ini`: no databases, the config PgBouncer starts on when the daemon
    /// has to switch at start-up.
    pub fn dummy_file(&self) -> PathBuf {
        self.0.join("initial.ini")
    }

    pub fn log(&self) -> PathBuf {
        self.0.join("pgbouncer.log")
    }
}

/// The port PgBouncer sends `db` to, from the rows of its `SHOW DATABASES` (psql's
/// unaligned, tuples-only output).
pub fn route_port(show_databases: &str, db: &str) -> Option<u16> {
    show_databases.lines().find_map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        (f.first() == Some(&db))
            .then(|| f.get(2)?.parse().ok())
            .flatten()
    })
}

impl Cluster {
    fn files(&self) -> BouncerFiles<'_> {
        BouncerFiles(&self.root)
    }

    /// The managed symlink `<tmp>/pgbouncer.ini` (PgBouncer's config file).
    pub fn symlink(&self) -> PathBuf {
        self.files().symlink()
    }

    /// `<tmp>/nodes`, the daemon's `configdir`.
    pub fn configdir(&self) -> PathBuf {
        self.files().configdir()
    }

    /// `<tmp>/nodes/pg<i>.ini`
    pub fn node_file(&self, i: usize) -> PathBuf {
        self.files().node_file(&self.name(i))
    }

    /// `<tmp>/initial.ini` (see [`Link::Dummy`]).
    pub fn dummy_file(&self) -> PathBuf {
        self.files().dummy_file()
    }

    pub fn symlink_target(&self) -> PathBuf {
        fs::read_link(self.symlink()).expect("read_link of the managed symlink")
    }

    /// The node the symlink points at, if it points at a node file.
    pub fn symlink_node(&self) -> Option<usize> {
        let t = self.symlink_target();
        (1..=self.nodes.len()).find(|i| t == self.node_file(*i))
    }

    pub fn bouncer_port(&self) -> u16 {
        self.bouncer_port
    }

    /// `host=127.0.0.1 port=<bouncer port> dbname=pgbouncer user=postgres sslmode=disable`
    pub fn pgbouncer_conninfo(&self) -> String {
        tcp_conninfo(self.bouncer_port, "pgbouncer")
    }

    pub fn bouncer_log_path(&self) -> PathBuf {
        self.files().log()
    }

    pub fn bouncer_log(&self) -> String {
        fs::read_to_string(self.bouncer_log_path()).unwrap_or_default()
    }

    pub fn bouncer_pidfile(&self) -> PathBuf {
        self.root.join("pgbouncer.pid")
    }

    /// An admin command on PgBouncer's console (`psql -d pgbouncer`), e.g. `SHOW DATABASES`,
    /// `RELOAD`. Rows `|`-separated.
    pub fn admin(&self, cmd: &str) -> Result<String, String> {
        psql_conninfo(&self.pgbouncer_conninfo(), cmd, QUERY_TIMEOUT)
    }

    /// Port of the `postgres` database according to PgBouncer's `SHOW DATABASES`
    /// (None when PgBouncer is down or has no such database).
    pub fn bouncer_target_port(&self) -> Option<u16> {
        route_port(&self.admin("SHOW DATABASES").ok()?, "postgres")
    }

    /// The `paused` column of `SHOW DATABASES` for `db` ("1" or "0"; "" when PgBouncer
    /// does not answer or has no such database).
    pub fn paused(&self, db: &str) -> String {
        let Ok(rows) = psql_rows(&self.pgbouncer_conninfo(), "SHOW DATABASES", QUERY_TIMEOUT)
        else {
            return String::new();
        };
        rows.iter()
            .find(|r| r.get("name").map(String::as_str) == Some(db))
            .and_then(|r| r.get("paused").cloned())
            .unwrap_or_default()
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

    pub fn bouncer_ini(&self, port: Option<u16>) -> String {
        bouncer_ini(&self.root, self.bouncer_port, self.opts.pool_mode, port)
    }

    pub fn write_bouncer_files(&self) {
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

    pub fn try_bouncer_start(&self) -> Result<(), String> {
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

    /// Stops PgBouncer: its immediate shutdown (SIGTERM up to 1.22, SIGQUIT from 1.23, see
    /// [`pgbouncer_fast_exit_signal`]), SIGKILL after 5 s; returns when it has exited (its
    /// port is closed then).
    pub fn bouncer_stop(&self) {
        let sig = pgbouncer_fast_exit_signal();
        let mut g = self.bouncer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut ch) = g.take() {
            if matches!(ch.try_wait(), Ok(None)) {
                let _ = signal(&ch.id().to_string(), sig);
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
}

/// A PgBouncer node file under `root` listening on `bouncer_port`: `postgres` and `appdb`
/// routed to the server on `port`, or no database at all (the initial dummy config).
pub fn bouncer_ini(root: &Path, bouncer_port: u16, pool_mode: &str, port: Option<u16>) -> String {
    let r = root.display();
    let dbs = match port {
        Some(p) => format!(
            "postgres = host=127.0.0.1 port={p} dbname=postgres\nappdb = host=127.0.0.1 port={p} dbname=appdb\n"
        ),
        None => "; no databases: initial dummy config\n".into(),
    };
    format!(
        "[databases]\n{dbs}\n[pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {bouncer_port}\n\
         unix_socket_dir = {r}\n\
         auth_type = trust\n\
         auth_file = {r}/userlist.txt\n\
         admin_users = postgres\n\
         pool_mode = {pool_mode}\n\
         logfile = {r}/pgbouncer.log\n\
         pidfile = {r}/pgbouncer.pid\n\
         max_client_conn = 500\n\
         default_pool_size = 20\n\
         server_connect_timeout = 3\n\
         query_wait_timeout = 8\n"
    )
}
