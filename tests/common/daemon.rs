//! The daemon under test: its config file written for a cluster, how to run it
//! ([`DaemonCmd`]: Go-style flags, another OS user, extra environment), and a handle on the
//! running process ([`Daemon`]: its log, its HTTP pages, signals) that kills it on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::clients::http_request;
use super::cluster::Cluster;
use super::process::{
    alloc_port, command_as, euid, is_root, os_user, rebouncer_bin, runnable_by, signal,
};

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

pub fn http_connect_addr(http: &str) -> String {
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
    pub child: Option<Child>,
    pub http_addr: String,
    pub cmd: DaemonCmd,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon already reaped").id()
    }
    /// Contents of `-logfile` (or of stdout when started without one).
    /// The log as written so far. The daemon writes its log from a thread of its own, so
    /// a line can reach the file a moment after what it reports is visible elsewhere (a
    /// status page, PgBouncer, a notify message): read until two reads 20 ms apart agree
    /// (at most 1 s), so a test reads what the daemon has logged, not a part of it.
    pub fn log(&self) -> String {
        let p = self.cmd.logfile.as_ref().unwrap_or(&self.cmd.out);
        let read = || fs::read_to_string(p).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut last = read();
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = read();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
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

/// A rebouncer config in the Go format:
/// ```text
/// [global]
/// pgbouncer=<pgbouncer>
/// symlink=<symlink>
/// configdir=<configdir>
/// interval=N
/// timeout=N
/// <extra_global lines>
///
/// [servers]
/// <name>=<conninfo>
/// ...
/// ```
pub fn rebouncer_config(
    pgbouncer: &str,
    symlink: &Path,
    configdir: &Path,
    interval: u64,
    timeout: u64,
    extra_global: &str,
    servers: &[(String, String)],
) -> String {
    let mut s = format!(
        "[global]\npgbouncer={pgbouncer}\nsymlink={}\nconfigdir={}\ninterval={interval}\ntimeout={timeout}\n",
        symlink.display(),
        configdir.display()
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

/// A daemon command line for a fixture whose files are in `root` (default flags, allocated
/// HTTP port; log, pidfile and state file in `root`; stdout and stderr in
/// `rebouncer-<n>.out` and `.err`), to adjust and spawn.
pub fn daemon_cmd_in(root: &Path, config: &Path, n: usize) -> DaemonCmd {
    DaemonCmd {
        bin: rebouncer_bin(),
        config: config.to_path_buf(),
        http: format!("127.0.0.1:{}", alloc_port()),
        pidfile: root.join("rebouncer.pid"),
        logfile: Some(root.join("rebouncer.log")),
        extra_args: Vec::new(),
        raw_args: None,
        user: None,
        cwd: root.to_path_buf(),
        out: root.join(format!("rebouncer-{n}.out")),
        err: root.join(format!("rebouncer-{n}.err")),
        // The state file goes into the fixture's directory, as systemd's
        // StateDirectory= would arrange: tests never share timeline memory.
        env: vec![("STATE_DIRECTORY".into(), root.display().to_string())],
    }
}

impl Cluster {
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
        rebouncer_config(
            &self.pgbouncer_conninfo(),
            &self.symlink(),
            &self.configdir(),
            interval,
            timeout,
            extra_global,
            servers,
        )
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
        daemon_cmd_in(&self.root, config, n)
    }

    /// Spawns the daemon with default flags and waits until its HTTP server answers.
    pub fn daemon(&self, config: &Path) -> Daemon {
        self.daemon_cmd(config).start()
    }

    /// Waits (20 s at most) until the daemon has pointed PgBouncer at pg1 and `/nagios` is OK.
    pub fn wait_settled_on_pg1(&self, d: &mut Daemon) {
        d.wait_for(
            Duration::from_secs(20),
            "PgBouncer switched to pg1 at start-up",
            |d| self.symlink_node() == Some(1) && d.nagios().starts_with("OK"),
        );
    }
}
