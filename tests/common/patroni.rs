//! A real Patroni cluster (Debian's `patroni`, 3.0) for the tests: one etcd
//! ([`super::etcd::Etcd`]) and three members `m1`, `m2`, `m3` on loopback, each with its
//! own data directory, REST port and PostgreSQL 15 port, plus a PgBouncer whose config is
//! the managed symlink `<tmp>/pgbouncer.ini`, one precooked node file per member
//! (`<tmp>/nodes/m<i>.ini`), starting on `<tmp>/initial.ini` (no databases) so that the
//! daemon has to switch at start-up.
//!
//! Patroni bootstraps the cluster itself: which member leads at first is random, so tests
//! ask [`Patroni::leader`] instead of assuming. The DCS settings are short (`ttl` 10 s,
//! `loop_wait` 1 s) so that a killed leader is replaced within about 10 s; Patroni keeps
//! the leader at `/service/rbtest/leader` (a member name) and each member at
//! `/service/rbtest/members/<name>` (JSON with `conn_url`).
//!
//! Root: Patroni, PostgreSQL, PgBouncer and etcd run as the OS user `postgres` when the
//! tests run as root, like the PostgreSQL fixture's servers; `patronictl` and `psql` run as
//! the current user.
//!
//! Teardown on drop, also when a test panicked: every Patroni is SIGKILLed first (so none
//! restarts or promotes anything), then each postmaster gets SIGCONT and SIGQUIT
//! (immediate shutdown; SIGKILL after 10 s), PgBouncer and etcd are killed, anything still
//! running from the directory is SIGKILLed, and the directory is removed
//! (`REBOUNCER_KEEP_TMP=1` keeps it).

use super::etcd::Etcd;
use super::{
    BouncerFiles, BouncerWriter, Daemon, DaemonCmd, QUERY_TIMEOUT, alloc_port, base_dir,
    children_of, command_as, daemon_cmd_in, http_request, pgbouncer_bin, pid_alive, poll_until,
    psql_conninfo, quit_postmasters, rebouncer_config, route_port, run_timeout, server_user,
    signal, sweep_and_remove, tail, tcp_conninfo,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const SCOPE: &str = "rbtest";
pub const NAMESPACE: &str = "/service";
/// Seconds Patroni's leader key lives without renewal: how long a killed leader holds it.
pub const TTL: u64 = 10;

struct Member {
    name: String,
    rest_port: u16,
    pg_port: u16,
    data: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

pub struct Patroni {
    tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    pub etcd: Etcd,
    members: Vec<Member>,
    bouncer_port: u16,
    bouncer: Mutex<Option<Child>>,
    daemons: AtomicUsize,
    /// Time `Patroni::start` took.
    pub startup: Duration,
}

fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

fn chown_server(path: &Path) {
    if let Some(u) = server_user() {
        let _ = std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid));
    }
}

fn member_yaml(root: &Path, m: &Member, etcd: &str) -> String {
    format!(
        "scope: {SCOPE}
namespace: {NAMESPACE}/
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: {etcd}
bootstrap:
  dcs:
    ttl: {TTL}
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: false
      use_slots: true
      parameters:
        max_connections: 100
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 128MB
  initdb:
  - encoding: UTF8
  - locale: C
  - auth: trust
  pg_hba:
  - host replication all 127.0.0.1/32 trust
  - host all all 127.0.0.1/32 trust
  - local all all trust
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {root}/{name}.pgpass
  authentication:
    replication:
      username: postgres
    superuser:
      username: postgres
  parameters:
    unix_socket_directories: '{root}'
    fsync: 'off'
    full_page_writes: 'off'
    shared_buffers: 16MB
    log_connections: 'on'
    log_line_prefix: '%m [%p] '
    wal_retrieve_retry_interval: 1s
tags: {{}}
",
        name = m.name,
        rest = m.rest_port,
        pg = m.pg_port,
        data = m.data.display(),
        bin = super::pg_bin("").display(),
        root = root.display(),
    )
}

impl Patroni {
    /// etcd, three members (waits until one leads and both others stream from it, with
    /// `appdb` and its table `t` created on the leader), and PgBouncer on `initial.ini`.
    pub fn start() -> Patroni {
        let t0 = Instant::now();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("rebouncer-it-{}-patroni-", std::process::id()))
            .tempdir_in(base_dir())
            .expect("create patroni temp dir");
        let root = tmp.path().to_path_buf();
        chown_server(&root);
        if env_flag("REBOUNCER_KEEP_TMP") {
            let _ = fs::write(root.join("KEEP"), "");
            eprintln!("[fixture] patroni dir (kept): {}", root.display());
        }
        let etcd_dir = root.join("etcd");
        fs::create_dir(&etcd_dir).unwrap();
        let etcd = Etcd::start_in(&etcd_dir);
        let mut p = Patroni {
            tmp: Some(tmp),
            root: root.clone(),
            etcd,
            members: Vec::new(),
            bouncer_port: 0,
            bouncer: Mutex::new(None),
            daemons: AtomicUsize::new(0),
            startup: Duration::ZERO,
        };
        // From here on a panic drops `p`, which tears down whatever was started.
        for i in 1..=3 {
            let name = format!("m{i}");
            let m = Member {
                rest_port: alloc_port(),
                pg_port: alloc_port(),
                data: root.join(&name),
                config: root.join(format!("{name}.yml")),
                log: root.join(format!("{name}.log")),
                child: Mutex::new(None),
                name,
            };
            fs::write(&m.config, member_yaml(&root, &m, &p.etcd.host_port())).unwrap();
            chown_server(&m.config);
            p.members.push(m);
        }
        for i in 1..=3 {
            p.start_member(i);
        }
        p.wait_healthy(Duration::from_secs(90));
        let leader = p.leader().expect("a leader after wait_healthy");
        let made = psql_conninfo(&p.conninfo(leader), "CREATE DATABASE appdb", QUERY_TIMEOUT)
            .and_then(|_| {
                psql_conninfo(
                    &tcp_conninfo(p.port(leader), "appdb"),
                    "CREATE TABLE t(id serial, node text, at timestamptz default now())",
                    QUERY_TIMEOUT,
                )
            });
        if let Err(e) = made {
            panic!("creating appdb on {}: {e}", p.name(leader));
        }
        p.start_bouncer();
        p.startup = t0.elapsed();
        eprintln!(
            "[fixture] etcd + patroni m1..m3 ({} leads) + pgbouncer started in {:.1?}",
            p.name(leader),
            p.startup
        );
        p
    }

    // --- members --------------------------------------------------------------------

    fn member(&self, i: usize) -> &Member {
        assert!(
            (1..=self.members.len()).contains(&i),
            "members are m1..m{}, got {i}",
            self.members.len()
        );
        &self.members[i - 1]
    }
    pub fn len(&self) -> usize {
        self.members.len()
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `m<i>`
    pub fn name(&self, i: usize) -> String {
        self.member(i).name.clone()
    }
    /// PostgreSQL port of member i.
    pub fn port(&self, i: usize) -> u16 {
        self.member(i).pg_port
    }
    pub fn rest_port(&self, i: usize) -> u16 {
        self.member(i).rest_port
    }
    /// `host=127.0.0.1 port=N dbname=postgres user=postgres sslmode=disable`
    pub fn conninfo(&self, i: usize) -> String {
        tcp_conninfo(self.port(i), "postgres")
    }
    pub fn member_of_port(&self, port: u16) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.pg_port == port)
            .map(|p| p + 1)
    }
    /// Member i's Patroni log (PostgreSQL's own output goes there too).
    pub fn member_log(&self, i: usize) -> String {
        tail(&self.member(i).log, 30)
    }
    /// Where member i's Patroni log is written.
    pub fn member_log_path(&self, i: usize) -> PathBuf {
        self.member(i).log.clone()
    }
    /// The etcd key of the leader, `/service/rbtest/leader`.
    pub fn leader_key(&self) -> String {
        format!("{NAMESPACE}/{SCOPE}/leader")
    }

    /// Member the leader key names (None: no key, or etcd does not answer).
    pub fn leader(&self) -> Option<usize> {
        let (name, _) = self.etcd.get(&self.leader_key()).ok()??;
        self.members
            .iter()
            .position(|m| m.name == name)
            .map(|p| p + 1)
    }

    /// `pg_is_in_recovery()` of member i: Ok(false) = primary.
    pub fn in_recovery(&self, i: usize) -> Result<bool, String> {
        psql_conninfo(
            &self.conninfo(i),
            "SELECT pg_is_in_recovery()",
            Duration::from_secs(5),
        )
        .map(|s| s == "t")
    }

    /// Member i's Patroni REST API answers `GET path` with this status code.
    pub fn rest_status(&self, i: usize, path: &str) -> Option<u16> {
        http_request(&format!("127.0.0.1:{}", self.rest_port(i)), "GET", path)
            .ok()
            .map(|(code, _, _)| code)
    }

    /// Every member's Patroni runs, the leader key names a member whose PostgreSQL is
    /// out of recovery and the other two stream from it.
    pub fn healthy(&self) -> bool {
        let Some(l) = self.leader() else {
            return false;
        };
        self.in_recovery(l) == Ok(false)
            && psql_conninfo(
                &self.conninfo(l),
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                Duration::from_secs(5),
            )
            .as_deref()
                == Ok("2")
    }

    pub fn wait_healthy(&self, timeout: Duration) {
        if !poll_until(timeout, || self.healthy()) {
            panic!(
                "patroni cluster not healthy after {timeout:?}\n{}",
                self.diagnostics()
            );
        }
    }

    /// Waits until the leader key names a member other than `old` whose PostgreSQL is
    /// out of recovery; returns it.
    pub fn wait_new_leader(&self, old: usize, timeout: Duration) -> usize {
        let mut found = None;
        if !poll_until(timeout, || {
            found = self
                .leader()
                .filter(|l| *l != old && self.in_recovery(*l) == Ok(false));
            found.is_some()
        }) {
            panic!(
                "no new leader (other than {}) after {timeout:?}\n{}",
                self.name(old),
                self.diagnostics()
            );
        }
        found.unwrap()
    }

    /// The etcd keys, `patronictl list` and each member's log tail, for panic messages.
    pub fn diagnostics(&self) -> String {
        let mut s = format!(
            "--- etcd {NAMESPACE}/{SCOPE}/ ---\n{}",
            self.etcd.dump(&format!("{NAMESPACE}/{SCOPE}/"))
        );
        if let Ok(o) = run_timeout(self.patronictl().arg("list"), Duration::from_secs(20)) {
            s += &format!(
                "--- patronictl list ---\n{}",
                String::from_utf8_lossy(&o.stdout)
            );
        }
        for m in &self.members {
            s += &format!("--- {} ---\n{}\n", m.log.display(), tail(&m.log, 15));
        }
        s
    }

    /// Starts member i's Patroni (which starts its PostgreSQL).
    pub fn start_member(&self, i: usize) {
        let m = self.member(i);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        chown_server(&m.log);
        let child = command_as("/usr/bin/patroni", server_user(), &self.root)
            .arg(&m.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn patroni for {}: {e}", m.name));
        *m.child.lock().unwrap() = Some(child);
    }

    fn postmaster_pid(&self, i: usize) -> Option<u32> {
        let m = self.member(i);
        let pid: u32 = fs::read_to_string(m.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()?;
        let ours = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&*m.data.to_string_lossy()))
            .unwrap_or(false);
        (ours && pid_alive(pid)).then_some(pid)
    }

    /// SIGKILL to member i's Patroni only: its PostgreSQL keeps running as it was.
    pub fn kill_patroni(&self, i: usize) {
        if let Some(mut ch) = self.member(i).child.lock().unwrap().take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }

    /// The whole member dies at once (a crashed host): SIGKILL to its Patroni and its
    /// postmaster; returns when PostgreSQL's processes are gone. Its leader key, if it
    /// held it, stays until the TTL runs out.
    pub fn kill_member(&self, i: usize) {
        self.kill_patroni(i);
        if let Some(pid) = self.postmaster_pid(i) {
            let kids = children_of(pid);
            let _ = signal(&pid.to_string(), "KILL");
            super::wait_until(
                Duration::from_secs(15),
                &format!(
                    "{}'s postmaster {pid} and its children to exit",
                    self.name(i)
                ),
                || !pid_alive(pid) && kids.iter().all(|k| !pid_alive(*k)),
            );
        }
    }

    /// `patronictl -c <m1.yml>` (the file only tells patronictl where etcd is).
    pub fn patronictl(&self) -> Command {
        let mut c = Command::new("/usr/bin/patronictl");
        c.arg("-c").arg(&self.member(1).config);
        c
    }

    /// Runs patronictl and returns what it printed.
    fn run_patronictl(&self, args: &[&str]) -> String {
        let mut c = self.patronictl();
        c.args(args);
        match run_timeout(&mut c, Duration::from_secs(90)) {
            Ok(o) if o.status.success() => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Ok(o) => panic!(
                "patronictl {} failed ({}):\n{}{}\n{}",
                args.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                self.diagnostics()
            ),
            Err(e) => panic!("patronictl {}: {e}\n{}", args.join(" "), self.diagnostics()),
        }
    }

    /// `patronictl switchover --leader <from> --candidate <to> --force`: the planned
    /// hand-over (the leader shuts down cleanly, then `to` is promoted).
    pub fn switchover(&self, from: usize, to: usize) {
        let (f, t) = (self.name(from), self.name(to));
        self.until_accepted(&["switchover", "--leader", &f, "--candidate", &t, "--force"]);
    }

    /// `patronictl failover --candidate <to> --force`.
    pub fn failover(&self, to: usize) {
        let t = self.name(to);
        self.until_accepted(&["failover", "--candidate", &t, "--force"]);
    }

    /// patronictl exits 0 also when the leader refuses the request ("Switchover failed,
    /// details: 503 ..."), as it does while it does not yet count the candidate as
    /// healthy (a busy machine right after bootstrap or a previous switchover): ask
    /// again, a few seconds apart, until the leader key moves.
    fn until_accepted(&self, args: &[&str]) {
        let before = self.leader();
        let mut said = Vec::new();
        for _ in 0..6 {
            let out = self.run_patronictl(args);
            let moved = poll_until(Duration::from_secs(20), || {
                self.leader().is_some_and(|l| Some(l) != before)
            });
            if moved {
                return;
            }
            eprintln!(
                "[fixture] patronictl {}: the leader key did not move within 20 s; asking again. It said:\n{out}",
                args[0]
            );
            said.push(out);
        }
        panic!(
            "patronictl {}: the leader key never moved:\n{}\n{}",
            args.join(" "),
            said.join("\n"),
            self.diagnostics()
        );
    }

    // --- PgBouncer ------------------------------------------------------------------

    fn files(&self) -> BouncerFiles<'_> {
        BouncerFiles(&self.root)
    }
    fn node_file(&self, i: usize) -> PathBuf {
        self.files().node_file(&self.name(i))
    }
    /// The member whose node file the symlink names (None: the dummy or anything else).
    pub fn symlink_member(&self) -> Option<usize> {
        let t = fs::read_link(self.files().symlink()).ok()?;
        (1..=self.len()).find(|i| t == self.node_file(*i))
    }
    fn pgbouncer_conninfo(&self) -> String {
        tcp_conninfo(self.bouncer_port, "pgbouncer")
    }
    fn admin(&self, cmd: &str) -> Result<String, String> {
        psql_conninfo(&self.pgbouncer_conninfo(), cmd, QUERY_TIMEOUT)
    }
    /// Member PgBouncer sends `postgres` to (`SHOW DATABASES`).
    pub fn bouncer_target_member(&self) -> Option<usize> {
        let port = route_port(&self.admin("SHOW DATABASES").ok()?, "postgres")?;
        self.member_of_port(port)
    }

    fn bouncer_ini(&self, port: Option<u16>) -> String {
        super::pgbouncer::bouncer_ini(&self.root, self.bouncer_port, "session", port)
    }

    fn start_bouncer(&mut self) {
        fs::create_dir_all(self.files().configdir()).unwrap();
        fs::write(self.root.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        std::os::unix::fs::symlink(self.files().dummy_file(), self.files().symlink()).unwrap();
        for attempt in 0..4 {
            self.bouncer_port = alloc_port();
            for i in 1..=self.len() {
                fs::write(self.node_file(i), self.bouncer_ini(Some(self.port(i)))).unwrap();
            }
            fs::write(self.files().dummy_file(), self.bouncer_ini(None)).unwrap();
            let child = command_as(pgbouncer_bin(), server_user(), &self.root)
                .arg(self.files().symlink())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn pgbouncer: {e}"));
            *self.bouncer.lock().unwrap() = Some(child);
            let listening = format!("listening on 127.0.0.1:{}", self.bouncer_port);
            let mut taken = false;
            let up = poll_until(Duration::from_secs(15), || {
                let log = fs::read_to_string(self.files().log()).unwrap_or_default();
                taken = log.contains(&format!("cannot listen on 127.0.0.1:{}", self.bouncer_port));
                taken || (log.contains(&listening) && self.admin("SHOW VERSION").is_ok())
            });
            if up && !taken {
                return;
            }
            self.bouncer_kill();
            if !taken || attempt == 3 {
                panic!(
                    "pgbouncer did not start on port {}:\n{}",
                    self.bouncer_port,
                    tail(&self.files().log(), 15)
                );
            }
        }
    }

    fn bouncer_kill(&self) {
        if let Some(mut ch) = self.bouncer.lock().unwrap().take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }

    // --- the daemon -------------------------------------------------------------------

    /// Writes `<tmp>/rebouncer.ini` for the polling mode: PgBouncer's console, the
    /// symlink, `configdir`, `interval`, `timeout`, the extra `[global]` lines, and one
    /// `[servers]` line per member (`m<i>=<conninfo>`).
    pub fn write_rebouncer_config(&self, interval: u64, timeout: u64, extra: &str) -> PathBuf {
        let servers: Vec<(String, String)> = (1..=self.len())
            .map(|i| (self.name(i), self.conninfo(i)))
            .collect();
        let text = rebouncer_config(
            &self.pgbouncer_conninfo(),
            &self.files().symlink(),
            &self.files().configdir(),
            interval,
            timeout,
            extra,
            &servers,
        );
        let p = self.root.join("rebouncer.ini");
        fs::write(&p, text).unwrap();
        p
    }

    /// A daemon command line (allocated HTTP port, log and state in the cluster's
    /// directory) to adjust and spawn.
    pub fn daemon_cmd(&self, config: &Path) -> DaemonCmd {
        let n = self.daemons.fetch_add(1, Ordering::SeqCst);
        daemon_cmd_in(&self.root, config, n)
    }

    /// Spawns the daemon and waits until its HTTP server answers.
    pub fn daemon(&self, config: &Path) -> Daemon {
        self.daemon_cmd(config).start()
    }

    // --- clients ----------------------------------------------------------------------

    /// Writes rows tagged `tag` into appdb's `t` through PgBouncer (see
    /// [`BouncerWriter::start`]); records which member took each write.
    pub fn start_writer(&self, tag: &str, per_write: Duration) -> BouncerWriter {
        let ports: Vec<u16> = self.members.iter().map(|m| m.pg_port).collect();
        BouncerWriter::start(
            tcp_conninfo(self.bouncer_port, "appdb"),
            ports,
            tag,
            per_write,
        )
    }

    /// Rows of appdb's `t` tagged `tag` on member i, read directly (None when it does not
    /// answer).
    pub fn rows_tagged(&self, i: usize, tag: &str) -> Option<usize> {
        psql_conninfo(
            &tcp_conninfo(self.port(i), "appdb"),
            &format!("SELECT count(*) FROM t WHERE node = '{tag}'"),
            Duration::from_secs(5),
        )
        .ok()?
        .trim()
        .parse()
        .ok()
    }

    /// Samples the member the symlink names every 20 ms until stopped.
    pub fn start_link_sampler(&self) -> LinkSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let link = self.files().symlink();
        let files: Vec<PathBuf> = (1..=self.len()).map(|i| self.node_file(i)).collect();
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let at = Instant::now();
                let m = fs::read_link(&link)
                    .ok()
                    .and_then(|t| files.iter().position(|f| *f == t))
                    .map(|p| p + 1);
                samples.push((at, m));
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        LinkSampler {
            stop,
            handle: Some(handle),
        }
    }

    // --- teardown -----------------------------------------------------------------------

    fn teardown(&mut self) {
        for i in 1..=self.members.len() {
            self.kill_patroni(i);
        }
        let pms: Vec<u32> = (1..=self.members.len())
            .filter_map(|i| self.postmaster_pid(i))
            .collect();
        quit_postmasters(&pms);
        self.bouncer_kill();
        self.etcd.kill();
        sweep_and_remove(&self.root, self.tmp.take());
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// (when, member the symlink named; None = no member's file)
pub type LinkSample = (Instant, Option<usize>);

/// See [`Patroni::start_link_sampler`].
pub struct LinkSampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<LinkSample>>>,
}

impl LinkSampler {
    pub fn stop(mut self) -> Vec<LinkSample> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap_or_default()
    }
}

impl Drop for LinkSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
