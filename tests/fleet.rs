//! Fleet benchmark, not a test: it prints figures and asserts nothing about time or cost.
//! What does a fleet of N app servers, each running rebouncer beside its own PgBouncer,
//! cost every database server, and how long does the whole fleet take to follow a
//! failover? Run with
//!
//!     REBOUNCER_FLEET_N=10,50 cargo test --release --test fleet -- --ignored --nocapture
//!
//! Settings (environment): `REBOUNCER_FLEET_N` fleet sizes, comma-separated (default 10);
//! `REBOUNCER_FLEET_SECS` the steady-state window in seconds (default 60);
//! `REBOUNCER_FLEET_INTERVAL` the daemons' `interval` (default 10).
//!
//! For each N and each mode (kept monitoring connections, the default, and
//! `keep_connections=false`), on a fresh 3-node cluster (`max_connections` raised to N + 50, at least the fixture's 100):
//! N PgBouncers and N daemons on this machine, each daemon with its own symlink, node files,
//! PgBouncer, state directory and status port, all routed to pg1, the daemons started
//! evenly spread over one interval (their rounds are not in step). Then, per database server,
//! over the window:
//! - backends held by monitoring: `pg_stat_activity` rows with `application_name =
//!   rebouncer`, at the end of the window;
//! - new monitoring connections per minute: `log_connections` lines of those logins;
//! - CPU of the monitoring backends: `/proc/<pid>/stat` (utime + stime) of the backends
//!   alive at the end, less what they had at the start, plus the CPU of backends that
//!   ended in the window (the postmaster's cutime + cstime: it reaps them); the
//!   postmaster's own CPU (mostly forking) separately.
//!
//! Then a failover: pg1 is stopped (`pg_ctl stop -m fast`) and pg2 promoted
//! (`pg_ctl promote`); from the start of the promotion, per daemon, the time until its
//! symlink names pg2 (sampled every 10 ms) and until it logged PgBouncer confirmed on pg2
//! (its log watched every 20 ms): median, p99, max over the fleet.
//!
//! The etcd mode (`fleet_etcd_mode_footprint_and_switchover`, run with `etcd` as the test
//! filter): N app servers following the leader key of a 3-member Patroni cluster, the
//! steady-state cost per member, then a `patronictl switchover` while a client writes
//! through `REBOUNCER_FLEET_CLIENTS` (default 10) of the PgBouncers, each write a new
//! connection 50 ms after the last, made by this process (a `psql` per write would take
//! half a core of the two the fleet shares). Times are from the leader key naming the new leader
//! (etcd read every 5 ms): per daemon, when it heard the key, when a check confirmed the
//! candidate and its switch began, when its symlink moved, when its PgBouncer took the
//! `RELOAD` (PgBouncer's log) and when it logged PgBouncer confirmed; per client, the
//! writes that failed and when its first write on the new leader was answered; and when
//! the new leader's PostgreSQL logged that it accepts connections as a primary, the floor
//! under every daemon's time; and, from the members' logs (each daemon logs in as
//! `application_name=rebouncer-<k>`), each daemon's checks on the new leader against its
//! promotion. Each table line says the machine's load average.
//! `REBOUNCER_BENCH_BIN=/path/to/rebouncer` measures another build in turn with this one
//! (`REBOUNCER_FLEET_REPS` times each, the order alternating).
//!
//! Every PgBouncer and daemon is its own process, as on N app servers; they share this
//! machine's two cores with the database servers, so the failover figures at large N
//! include the fleet competing with itself for CPU, which real app servers do not.

mod common;

use common::patroni::Patroni;
use common::{Cluster, Daemon, DaemonCmd, Link, Opts};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fleet_sizes() -> Vec<usize> {
    std::env::var("REBOUNCER_FLEET_N")
        .unwrap_or_else(|_| "10".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// One app server: a PgBouncer and the daemon beside it.
struct AppServer {
    dir: PathBuf,
    bouncer: Child,
    bouncer_port: u16,
    daemon: Option<Daemon>,
}

impl AppServer {
    fn symlink(&self) -> PathBuf {
        self.dir.join("pgbouncer.ini")
    }
    fn node_file(&self, node: usize) -> PathBuf {
        self.dir.join("nodes").join(format!("pg{node}.ini"))
    }
    fn log(&self) -> PathBuf {
        self.dir.join("rebouncer.log")
    }
    fn bouncer_log(&self) -> PathBuf {
        self.dir.join("pgbouncer.log")
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        drop(self.daemon.take());
        let _ = self.bouncer.kill();
        let _ = self.bouncer.wait();
    }
}

fn chown_server(p: &Path) {
    if let Some(u) = common::server_user() {
        let _ = std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid));
    }
}

fn bouncer_ini(dir: &Path, listen: u16, node_port: u16) -> String {
    let d = dir.display();
    format!(
        "[databases]\npostgres = host=127.0.0.1 port={node_port} dbname=postgres\n\
         appdb = host=127.0.0.1 port={node_port} dbname=appdb\n\n[pgbouncer]\n\
         listen_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n\
         auth_type = trust\nauth_file = {d}/userlist.txt\nadmin_users = postgres\n\
         pool_mode = session\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n\
         max_client_conn = 100\ndefault_pool_size = 5\nserver_connect_timeout = 3\n"
    )
}

/// `n` app servers under `<root>/fleet`, each a PgBouncer with one node file per server
/// (`pg<i>.ini`, node i on `node_ports[i - 1]`) and its symlink on `pg<initial>.ini`;
/// returns once every PgBouncer listens. No daemon yet.
fn spawn_app_servers(root: &Path, n: usize, node_ports: &[u16], initial: usize) -> Vec<AppServer> {
    let base = root.join("fleet");
    fs::create_dir_all(&base).unwrap();
    chown_server(&base);
    let mut fleet = Vec::with_capacity(n);
    for k in 0..n {
        let dir = base.join(k.to_string());
        fs::create_dir_all(dir.join("nodes")).unwrap();
        chown_server(&dir);
        let port = common::alloc_port();
        for (i, node_port) in node_ports.iter().enumerate() {
            fs::write(
                dir.join("nodes").join(format!("pg{}.ini", i + 1)),
                bouncer_ini(&dir, port, *node_port),
            )
            .unwrap();
        }
        fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        std::os::unix::fs::symlink(
            dir.join(format!("nodes/pg{initial}.ini")),
            dir.join("pgbouncer.ini"),
        )
        .unwrap();
        let bouncer = common::command_as(common::pgbouncer_bin(), common::server_user(), &dir)
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pgbouncer");
        fleet.push(AppServer {
            dir,
            bouncer,
            bouncer_port: port,
            daemon: None,
        });
    }
    common::wait_until(Duration::from_secs(60), "every PgBouncer listening", || {
        fleet.iter().all(|a| common::port_open(a.bouncer_port))
    });
    fleet
}

/// Starts a daemon (the binary `bin`) beside every PgBouncer, one after the other across
/// `spread`, each with `global` (extra `[global]` lines) and `servers(k)` for the k-th
/// (`pg<i>=<conninfo>`); waits until every daemon's `/nagios` says OK.
fn start_daemons(
    fleet: &mut [AppServer],
    bin: &Path,
    interval: u64,
    global: &str,
    servers: &dyn Fn(usize) -> Vec<String>,
    spread: Duration,
) {
    let n = fleet.len();
    for (k, a) in fleet.iter_mut().enumerate() {
        let mut cfg = format!(
            "[global]\npgbouncer=host=127.0.0.1 port={} dbname=pgbouncer user=postgres sslmode=disable\n\
             symlink={}\nconfigdir={}\ninterval={interval}\ntimeout=3\n{global}\n[servers]\n",
            a.bouncer_port,
            a.symlink().display(),
            a.dir.join("nodes").display(),
        );
        for (i, conninfo) in servers(k).iter().enumerate() {
            cfg += &format!("pg{}={conninfo}\n", i + 1);
        }
        let config = a.dir.join("rebouncer.ini");
        fs::write(&config, cfg).unwrap();
        let cmd = DaemonCmd {
            bin: bin.to_path_buf(),
            config,
            http: format!("127.0.0.1:{}", common::alloc_port()),
            pidfile: a.dir.join("rebouncer.pid"),
            logfile: Some(a.log()),
            extra_args: Vec::new(),
            raw_args: None,
            user: None,
            cwd: a.dir.clone(),
            out: a.dir.join("rebouncer.out"),
            err: a.dir.join("rebouncer.err"),
            env: vec![("STATE_DIRECTORY".into(), a.dir.display().to_string())],
        };
        a.daemon = Some(cmd.spawn());
        // Started one after the other, so that their rounds fall at random moments
        // relative to each other, as on app servers started at different times, rather
        // than all together.
        std::thread::sleep(spread / n as u32);
    }
    common::wait_until(
        Duration::from_secs(180),
        "every daemon's /nagios OK",
        || {
            fleet
                .iter()
                .all(|a| a.daemon.as_ref().unwrap().nagios().starts_with("OK"))
        },
    );
}

/// Starts `n` app servers against `c`, all routed to pg1, and waits until every daemon
/// says OK.
fn start_fleet(c: &Cluster, n: usize, keep: bool, interval: u64) -> Vec<AppServer> {
    let ports: Vec<u16> = (1..=c.len()).map(|i| c.port(i)).collect();
    let mut fleet = spawn_app_servers(c.root(), n, &ports, 1);
    let servers: Vec<String> = (1..=c.len()).map(|i| c.conninfo(i)).collect();
    let global = format!("keep_connections={}\n", if keep { "on" } else { "off" });
    start_daemons(
        &mut fleet,
        &common::rebouncer_bin(),
        interval,
        &global,
        &|_| servers.clone(),
        Duration::from_secs(interval),
    );
    fleet
}

fn clk_tck() -> u64 {
    common::run_timeout(
        std::process::Command::new("getconf").arg("CLK_TCK"),
        Duration::from_secs(5),
    )
    .ok()
    .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
    .unwrap_or(100)
}

/// (own utime + stime, reaped children's cutime + cstime) in clock ticks.
fn proc_cpu(pid: u32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<u64> = s[s.rfind(')')? + 1..]
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Some((f.get(11)? + f.get(12)?, f.get(13)? + f.get(14)?))
}

fn monitoring_pids(c: &Cluster, node: usize) -> Vec<u32> {
    c.query(
        node,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'rebouncer'",
    )
    .unwrap_or_default()
    .lines()
    .filter_map(|l| l.trim().parse().ok())
    .collect()
}

fn logins(text: &str) -> usize {
    text.lines().filter(|l| login_of(l).is_some()).count()
}

/// A `log_connections` line of a rebouncer login: `Some(Some(k))` for the k-th daemon of
/// an etcd fleet (`application_name=rebouncer-<k>`), `Some(None)` for a daemon of the
/// polling fleet (plain `rebouncer`).
fn login_of(line: &str) -> Option<Option<usize>> {
    if !line.contains("connection authorized") {
        return None;
    }
    let app = line.rsplit_once("application_name=")?.1;
    match app.strip_prefix("rebouncer")? {
        "" => Some(None),
        k => Some(Some(k.strip_prefix('-')?.parse().ok()?)),
    }
}

struct NodeCost {
    backends: usize,
    logins_per_min: f64,
    backend_cpu_ms_per_min: f64,
    postmaster_cpu_ms_per_min: f64,
}

fn measure_steady(c: &Cluster, window: Duration) -> Vec<NodeCost> {
    let tck = clk_tck() as f64;
    let start: Vec<_> = (1..=c.len())
        .map(|i| {
            let pm = c.postmaster_pid(i).unwrap();
            let mon: HashMap<u32, u64> = monitoring_pids(c, i)
                .into_iter()
                .filter_map(|p| Some((p, proc_cpu(p)?.0)))
                .collect();
            (c.node_log_len(i), pm, proc_cpu(pm).unwrap(), mon)
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    (1..=c.len())
        .map(|i| {
            let (mark, pm, pm0, mon0) = &start[i - 1];
            let pids = monitoring_pids(c, i);
            let pm1 = proc_cpu(*pm).unwrap();
            let live: u64 = pids
                .iter()
                .filter_map(|p| {
                    Some(
                        proc_cpu(*p)?
                            .0
                            .saturating_sub(mon0.get(p).copied().unwrap_or(0)),
                    )
                })
                .sum();
            let reaped = pm1.1 - pm0.1;
            NodeCost {
                backends: pids.len(),
                logins_per_min: logins(&c.node_log_since(i, *mark)) as f64 / minutes,
                backend_cpu_ms_per_min: (live + reaped) as f64 * 1000.0 / tck / minutes,
                postmaster_cpu_ms_per_min: (pm1.0 - pm0.0) as f64 * 1000.0 / tck / minutes,
            }
        })
        .collect()
}

/// What the benchmark saw of one app server's switch to the new primary, as times since
/// the watch began.
#[derive(Clone, Debug, Default)]
struct Steps {
    /// The daemon logged the leader key naming the new leader (etcd mode only).
    heard: Option<Duration>,
    /// The daemon logged that it switches PgBouncer there: a check on a new connection
    /// found it the master, and the switch begins.
    checked: Option<Duration>,
    /// The symlink names the new primary's node file (read every 10 ms).
    linked: Option<Duration>,
    /// PgBouncer logged the `RELOAD` (its own millisecond timestamp).
    reloaded: Option<Duration>,
    /// The daemon logged PgBouncer confirmed there by `SHOW DATABASES`.
    confirmed: Option<Duration>,
    /// The switch as the daemon timed it: from its start (before the symlink) to the
    /// confirmation, from the confirmation line's "in N ms".
    switch_took: Option<Duration>,
}

/// Where a file was read up to; [`Tail::read`] gives the whole lines written since.
struct Tail {
    path: PathBuf,
    offset: u64,
}

impl Tail {
    fn from_end(path: PathBuf) -> Tail {
        let offset = fs::metadata(&path).map_or(0, |m| m.len());
        Tail { path, offset }
    }

    fn read(&mut self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = fs::File::open(&self.path) else {
            return String::new();
        };
        let mut b = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut b).is_err() {
            return String::new();
        }
        // Keep only whole lines behind us.
        let whole = b.iter().rposition(|c| *c == b'\n').map_or(0, |i| i + 1);
        self.offset += whole as u64;
        String::from_utf8_lossy(&b[..whole]).into_owned()
    }
}

/// The time of a line of PgBouncer's or PostgreSQL's log (`2026-12-07 01:50:12.345 UTC
/// [pid] LOG ...`: PgBouncer's own format, PostgreSQL's with `log_line_prefix = '%m [%p] '`).
fn log_time(line: &str) -> Option<SystemTime> {
    use chrono::TimeZone;
    let at =
        chrono::NaiveDateTime::parse_from_str(line.get(..23)?, "%Y-%m-%d %H:%M:%S%.3f").ok()?;
    let zone = line.get(24..)?.split_whitespace().next()?;
    let t = if zone == "UTC" {
        chrono::Utc.from_utc_datetime(&at).into()
    } else {
        SystemTime::from(chrono::Local.from_local_datetime(&at).single()?)
    };
    Some(t)
}

/// Follows every app server's switch to node `to` (the daemons' server `pg<to>`; Patroni's
/// member `member` in etcd mode) on a thread of its own: symlinks read every 10 ms, the
/// daemons' logs every 20 ms.
struct Watch {
    t0: Instant,
    t0_wall: SystemTime,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Steps>>,
    bouncer_logs: Vec<Tail>,
}

fn watch_switch(fleet: &[AppServer], to: usize, member: Option<&str>) -> Watch {
    let links: Vec<(PathBuf, PathBuf)> = fleet
        .iter()
        .map(|a| (a.symlink(), a.node_file(to)))
        .collect();
    let mut logs: Vec<Tail> = fleet.iter().map(|a| Tail::from_end(a.log())).collect();
    let bouncer_logs = fleet
        .iter()
        .map(|a| Tail::from_end(a.bouncer_log()))
        .collect();
    let heard = member.map(|m| format!("Patroni's leader key names {m} "));
    let checked = format!(" to pg{to}; switching PgBouncer");
    let confirmed = format!("PgBouncer now points at pg{to} ");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let (t0, t0_wall) = (Instant::now(), SystemTime::now());
    let handle = std::thread::spawn(move || {
        let mut steps = vec![Steps::default(); links.len()];
        let mut last_log_pass = Instant::now() - Duration::from_secs(1);
        while !s.load(Ordering::SeqCst) {
            for (k, (link, target)) in links.iter().enumerate() {
                if steps[k].linked.is_none() && fs::read_link(link).ok().as_ref() == Some(target) {
                    steps[k].linked = Some(t0.elapsed());
                }
            }
            if last_log_pass.elapsed() >= Duration::from_millis(20) {
                last_log_pass = Instant::now();
                for (k, log) in logs.iter_mut().enumerate() {
                    let st = &mut steps[k];
                    if st.confirmed.is_some() {
                        continue;
                    }
                    let new = log.read();
                    let at = t0.elapsed();
                    for l in new.lines() {
                        if st.heard.is_none() && heard.as_ref().is_some_and(|h| l.contains(h)) {
                            st.heard = Some(at);
                        }
                        if st.checked.is_none() && l.contains(&checked) {
                            st.checked = Some(at);
                        }
                        if st.confirmed.is_none() && l.contains(&confirmed) {
                            st.confirmed = Some(at);
                            st.switch_took = l
                                .split(" in ")
                                .nth(1)
                                .and_then(|r| r.split(" ms").next()?.parse().ok())
                                .map(Duration::from_millis);
                        }
                    }
                }
            }
            if steps
                .iter()
                .all(|st| st.confirmed.is_some() && st.linked.is_some())
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        steps
    });
    Watch {
        t0,
        t0_wall,
        stop,
        handle,
        bouncer_logs,
    }
}

impl Watch {
    /// Waits until every app server is confirmed on the new primary or `limit` has passed
    /// since the watch began, then adds when each PgBouncer took its `RELOAD`.
    fn finish(mut self, limit: Duration) -> Vec<Steps> {
        while !self.handle.is_finished() && self.t0.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop.store(true, Ordering::SeqCst);
        let mut steps = self.handle.join().unwrap();
        for (st, log) in steps.iter_mut().zip(self.bouncer_logs.iter_mut()) {
            st.reloaded = log
                .read()
                .lines()
                .find(|l| l.contains("RELOAD command issued"))
                .and_then(log_time)
                .map(|t| t.duration_since(self.t0_wall).unwrap_or_default());
        }
        steps
    }
}

struct Failover {
    steps: Vec<Steps>,
    promote_took: Duration,
}

/// Stops pg1, promotes pg2, and times each daemon's symlink and confirmed switch from the
/// start of the promotion.
fn measure_failover(c: &Cluster, fleet: &[AppServer], limit: Duration) -> Failover {
    c.stop_fast(1);
    let watch = watch_switch(fleet, 2, None);
    c.promote(2);
    let promote_took = watch.t0.elapsed();
    Failover {
        steps: watch.finish(promote_took + limit),
        promote_took,
    }
}

/// "median / p99 / max" in seconds, and how many never got there.
fn spread(v: &[Option<Duration>]) -> String {
    let secs: Vec<Option<f64>> = v.iter().map(|d| d.map(|d| d.as_secs_f64())).collect();
    spread_secs(&secs)
}

/// [`spread`] of figures in seconds that may be negative (the difference of two
/// observations of different resolution).
fn spread_secs(v: &[Option<f64>]) -> String {
    let mut d: Vec<f64> = v.iter().flatten().copied().collect();
    let missing = v.len() - d.len();
    if d.is_empty() {
        return format!("none of {}", v.len());
    }
    d.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pick = |q: f64| d[((d.len() as f64 * q).ceil() as usize).clamp(1, d.len()) - 1];
    let mut s = format!(
        "{:.2} / {:.2} / {:.2} s",
        pick(0.5),
        pick(0.99),
        d[d.len() - 1]
    );
    if missing > 0 {
        s += &format!(" ({missing} of {} not seen)", v.len());
    }
    s
}

/// One step's times over the fleet.
fn pick(steps: &[Steps], f: impl Fn(&Steps) -> Option<Duration>) -> Vec<Option<Duration>> {
    steps.iter().map(f).collect()
}

/// The 1-minute load average of this machine, as `uptime` prints it.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The cluster: pg1 primary, pg2 and pg3 standbys, max_connections = `max_conn`, the
/// fixture's own PgBouncer not started (each app server has its own).
fn cluster(max_conn: usize) -> Cluster {
    let c = Cluster::start(Opts::default().link(Link::Node(1)).bouncer(false));
    // A standby needs max_connections at least the primary's: raise the standbys first.
    for i in [2, 3, 1] {
        let conf = c.data_dir(i).join("fixture.conf");
        let mut text = fs::read_to_string(&conf).unwrap();
        text += &format!("max_connections = {max_conn}\n");
        fs::write(&conf, text).unwrap();
        c.stop_fast(i);
        c.start_node(i);
    }
    c.wait_until(
        Duration::from_secs(60),
        "both standbys streaming again",
        |c| {
            c.query(
                1,
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .as_deref()
                == Ok("2")
        },
    );
    c
}

#[test]
#[ignore = "benchmark: minutes of real servers; run by hand (see the file's header)"]
fn fleet_footprint_and_failover() {
    let window = Duration::from_secs(env_num("REBOUNCER_FLEET_SECS", 60));
    let interval = env_num("REBOUNCER_FLEET_INTERVAL", 10);
    let mut table = vec![
        "| N | mode | node | backends held | new connections/min | backend CPU ms/min | postmaster CPU ms/min |".to_string(),
        "|---|---|---|---|---|---|---|".to_string(),
    ];
    let mut failovers = vec![
        "| N | mode | symlink on pg2 (median / p99 / max) | PgBouncer confirmed on pg2 (median / p99 / max) |".to_string(),
        "|---|---|---|---|".to_string(),
    ];
    for n in fleet_sizes() {
        for keep in [true, false] {
            let mode = if keep {
                "kept"
            } else {
                "keep_connections=false"
            };
            let t = Instant::now();
            let c = cluster((n + 50).max(100));
            let fleet = start_fleet(&c, n, keep, interval);
            eprintln!(
                "[fleet] N={n} {mode}: cluster and fleet up in {:.1?}; measuring {window:?}",
                t.elapsed()
            );
            // One interval of rounds before the window, so every daemon is in its steady state.
            std::thread::sleep(Duration::from_secs(interval));
            let costs = measure_steady(&c, window);
            for (i, k) in costs.iter().enumerate() {
                let line = format!(
                    "| {n} | {mode} | pg{} | {} | {:.0} | {:.0} | {:.0} |",
                    i + 1,
                    k.backends,
                    k.logins_per_min,
                    k.backend_cpu_ms_per_min,
                    k.postmaster_cpu_ms_per_min
                );
                eprintln!("{line}");
                table.push(line);
            }
            let f = measure_failover(&c, &fleet, Duration::from_secs(interval * 3 + 60));
            let line = format!(
                "| {n} | {mode} | {} | {} |",
                spread(&pick(&f.steps, |s| s.linked)),
                spread(&pick(&f.steps, |s| s.confirmed))
            );
            eprintln!("{line}  (pg_ctl promote took {:.2?})", f.promote_took);
            failovers.push(line);
            drop(fleet);
            drop(c);
        }
    }
    println!(
        "\nFleet benchmark: interval={interval}, window {}s, each row a fresh 3-node cluster\n\n{}\n\nFailover (pg1 stopped, pg2 promoted; times from the start of pg_ctl promote)\n\n{}\n",
        window.as_secs(),
        table.join("\n"),
        failovers.join("\n")
    );
}

// --- the etcd mode -----------------------------------------------------------------------

/// `patronictl edit-config` then a restart of every member: Patroni keeps
/// `max_connections` in its own configuration, and 3 x N checks can come at once.
fn raise_max_connections(p: &Patroni, max_conn: usize) {
    let set = format!("postgresql.parameters.max_connections={max_conn}");
    let out = common::run_timeout(
        p.patronictl()
            .args(["edit-config", "--set", &set, "--force"]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let want = max_conn.to_string();
    let raised = |p: &Patroni| {
        (1..=p.len()).all(|i| {
            common::psql_conninfo(
                &p.conninfo(i),
                "SHOW max_connections",
                Duration::from_secs(5),
            )
            .as_deref()
                == Ok(want.as_str())
        })
    };
    for _ in 0..5 {
        let _ = common::run_timeout(
            p.patronictl()
                .args(["restart", common::patroni::SCOPE, "--force"]),
            Duration::from_secs(120),
        );
        if common::poll_until(Duration::from_secs(30), || raised(p)) {
            break;
        }
    }
    assert!(raised(p), "max_connections not raised\n{}", p.diagnostics());
    p.wait_healthy(Duration::from_secs(60));
}

/// `REBOUNCER_FLEET_GLOBAL`: more `[global]` lines for the etcd fleet's daemons, `;`
/// between them (for example `pause_on_failover=on`).
fn extra_global() -> String {
    std::env::var("REBOUNCER_FLEET_GLOBAL")
        .unwrap_or_default()
        .replace(';', "\n")
}

/// `n` app servers following Patroni's leader key (members mapped to `pg1..pg3`), the
/// daemons the binary `bin`, all routed to the leader; waits until every daemon says OK.
/// The k-th daemon logs in as `application_name=rebouncer-<k>`, so each member's log
/// says which daemon checked it when.
fn start_etcd_fleet(p: &Patroni, n: usize, interval: u64, bin: &Path) -> Vec<AppServer> {
    let ports: Vec<u16> = (1..=p.len()).map(|i| p.port(i)).collect();
    let mut fleet = spawn_app_servers(p.root(), n, &ports, p.leader().unwrap());
    let members: Vec<String> = (1..=p.len())
        .map(|i| format!("{}:pg{i}", p.name(i)))
        .collect();
    let global = format!(
        "etcd_endpoints={}\netcd_scope={}\netcd_members={}\n{}\n",
        p.etcd.endpoint(),
        common::patroni::SCOPE,
        members.join(", "),
        extra_global(),
    );
    let servers = |k: usize| -> Vec<String> {
        (1..=p.len())
            .map(|i| format!("{} application_name=rebouncer-{k}", p.conninfo(i)))
            .collect()
    };
    start_daemons(
        &mut fleet,
        bin,
        interval,
        &global,
        &servers,
        Duration::from_secs(1),
    );
    fleet
}

/// Per member over `window`: rebouncer backends at the end, and rebouncer logins per
/// minute (PostgreSQL's `log_connections` lines in the member's log).
fn measure_etcd_steady(p: &Patroni, window: Duration) -> Vec<(usize, f64)> {
    let len = |i: usize| fs::metadata(p.member_log_path(i)).map_or(0, |m| m.len() as usize);
    let marks: Vec<usize> = (1..=p.len()).map(len).collect();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    (1..=p.len())
        .map(|i| {
            let held = common::psql_conninfo(
                &p.conninfo(i),
                "SELECT count(*) FROM pg_stat_activity WHERE application_name ~ '^rebouncer-[0-9]+$'",
                Duration::from_secs(5),
            )
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(usize::MAX);
            let b = fs::read(p.member_log_path(i)).unwrap_or_default();
            let text = String::from_utf8_lossy(&b[marks[i - 1].min(b.len())..]).into_owned();
            (held, logins(&text) as f64 / minutes)
        })
        .collect()
}

/// The app servers whose PgBouncer carries client load: `clients` of them spread over
/// the fleet (every one when the fleet is that small).
fn sampled(n: usize, clients: usize) -> Vec<usize> {
    let k = clients.min(n);
    (0..k).map(|j| j * n / k).collect()
}

/// What a switchover under client load did.
struct Switchover {
    /// When the leader key named the new leader, after `patronictl switchover` began.
    key_at: Duration,
    /// From the key naming the new leader until its PostgreSQL logged that it accepts
    /// connections as a primary (negative: before the key).
    promoted: Option<f64>,
    /// Per app server, times since the key named the new leader (0 for what came before
    /// the benchmark's read of the key saw it).
    steps: Vec<Steps>,
    /// When the key named the new leader.
    key_instant: Instant,
    /// The same by the wall clock, for the servers' logs.
    key_wall: SystemTime,
    /// Per sampled PgBouncer, what its client's writes did.
    writes: Vec<common::WriteLog>,
    /// Per sampled PgBouncer, from the key naming the new leader until its client's first
    /// write there was answered.
    back: Vec<Option<Duration>>,
    /// The 1-minute load average at the end of the switchover.
    load: String,
}

/// A `patronictl switchover` to `to` while a client writes through each of `clients`
/// PgBouncers (a new connection per write, 50 ms apart, made in this process: see
/// [`common::WriteWith::InProcess`]). Times from the moment the leader
/// key names `to` (etcd read every 5 ms).
fn measure_switchover(
    p: &Patroni,
    fleet: &[AppServer],
    from: usize,
    to: usize,
    clients: usize,
    limit: Duration,
) -> Switchover {
    let ports: Vec<u16> = (1..=p.len()).map(|i| p.port(i)).collect();
    let writers: Vec<common::BouncerWriter> = sampled(fleet.len(), clients)
        .into_iter()
        .map(|k| {
            common::BouncerWriter::start_with(
                common::tcp_conninfo(fleet[k].bouncer_port, "appdb"),
                ports.clone(),
                &format!("fleet{k}"),
                Duration::from_secs(5),
                common::WriteWith::InProcess,
            )
        })
        .collect();
    // The load is flowing: every client has written on the old leader.
    let tags: Vec<String> = writers.iter().map(|w| w.tag.clone()).collect();
    common::wait_until(
        Duration::from_secs(30),
        "every client's first write on the leader",
        || {
            let counts = common::psql_conninfo(
                &common::tcp_conninfo(p.port(from), "appdb"),
                "SELECT count(DISTINCT node) FROM t WHERE node LIKE 'fleet%'",
                Duration::from_secs(5),
            );
            counts.ok().and_then(|c| c.parse::<usize>().ok()) >= Some(tags.len())
        },
    );
    let mut promotion_log = Tail::from_end(p.member_log_path(to));
    let watch = watch_switch(fleet, to, Some(&p.name(to)));
    let (t0, t0_wall) = (watch.t0, watch.t0_wall);
    let (from_name, to_name) = (p.name(from), p.name(to));
    let mut ctl = p.patronictl();
    ctl.args([
        "switchover",
        "--leader",
        &from_name,
        "--candidate",
        &to_name,
        "--force",
    ]);
    let switch = std::thread::spawn(move || common::run_timeout(&mut ctl, Duration::from_secs(90)));
    let mut key_at = None;
    while key_at.is_none() && t0.elapsed() < limit {
        if p.leader() == Some(to) {
            key_at = Some(t0.elapsed());
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let key_at =
        key_at.unwrap_or_else(|| panic!("the key never named {to_name}\n{}", p.diagnostics()));
    let steps = watch.finish(limit);
    let load = load_average();
    let _ = switch.join();
    // Every client writing on the new leader, or the limit.
    common::poll_until(limit.saturating_sub(t0.elapsed()), || {
        common::psql_conninfo(
            &common::tcp_conninfo(p.port(to), "appdb"),
            "SELECT count(DISTINCT node) FROM t WHERE node LIKE 'fleet%'",
            Duration::from_secs(5),
        )
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
            >= Some(tags.len())
    });
    let writes: Vec<common::WriteLog> = writers.into_iter().map(|w| w.stop()).collect();
    let promoted = promotion_log
        .read()
        .lines()
        .find(|l| l.contains("database system is ready to accept connections"))
        .and_then(log_time)
        .map(|t| {
            let since_t0 = match t.duration_since(t0_wall) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            since_t0 - key_at.as_secs_f64()
        });
    let key_instant = t0 + key_at;
    let back = writes
        .iter()
        .map(|w| {
            w.records
                .iter()
                .find(|r| r.node == Some(to))
                .map(|r| (r.at + r.took).saturating_duration_since(key_instant))
        })
        .collect();
    let since_key = |d: Option<Duration>| d.map(|d| d.saturating_sub(key_at));
    let steps = steps
        .into_iter()
        .map(|s| Steps {
            heard: since_key(s.heard),
            // The log is read every 20 ms and a switch often takes less: the line saying
            // it begins is mostly read with the one saying it is done. The daemon's own
            // time of the switch, taken from when it was done, places its start better.
            checked: since_key(match (s.confirmed, s.switch_took) {
                (Some(c), Some(t)) => {
                    let start = c.saturating_sub(t);
                    Some(s.checked.map_or(start, |seen| seen.min(start)))
                }
                _ => s.checked,
            }),
            linked: since_key(s.linked),
            reloaded: since_key(s.reloaded),
            confirmed: since_key(s.confirmed),
            switch_took: s.switch_took,
        })
        .collect();
    Switchover {
        key_at,
        promoted,
        key_instant,
        key_wall: t0_wall + key_at,
        steps,
        writes,
        back,
        load,
    }
}

/// "failed writes begun from -0.40 to +1.20 s of the key: 3 x FATAL: ..." for the log.
fn failures(w: &common::WriteLog, key: Instant) -> String {
    let at = |r: &common::WriteRecord| {
        if r.at >= key {
            (r.at - key).as_secs_f64()
        } else {
            -(key - r.at).as_secs_f64()
        }
    };
    let failed: Vec<&common::WriteRecord> = w.records.iter().filter(|r| r.node.is_none()).collect();
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for r in &failed {
        let e = r
            .error
            .as_deref()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("");
        match kinds.iter_mut().find(|(k, _)| k == e) {
            Some((_, c)) => *c += 1,
            None => kinds.push((e.to_string(), 1)),
        }
    }
    let (first, last) = (
        failed.iter().map(|r| at(r)).fold(f64::MAX, f64::min),
        failed.iter().map(|r| at(r)).fold(f64::MIN, f64::max),
    );
    format!(
        "failed writes begun from {first:+.2} to {last:+.2} s of the key: {}",
        kinds
            .iter()
            .map(|(k, c)| format!("{c} x {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// One daemon's login on a member, in seconds since the key named the new leader: when
/// its connection arrived (`connection received`, the same backend pid) and when it was
/// authorized (the check's query follows at once).
#[derive(Clone, Copy, Debug)]
struct Login {
    received: Option<f64>,
    authorized: f64,
}

/// Seconds from `key` to `t`, negative before it.
fn secs_since(key: SystemTime, t: SystemTime) -> f64 {
    match t.duration_since(key) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The logins of an etcd fleet of `n` daemons in a member's log, per daemon, in order.
fn daemon_logins(text: &str, n: usize, key: SystemTime) -> Vec<Vec<Login>> {
    let mut received: HashMap<&str, f64> = HashMap::new();
    let mut per = vec![Vec::new(); n];
    for l in text.lines() {
        let Some(t) = log_time(l) else { continue };
        let pid = l
            .split_once('[')
            .and_then(|(_, r)| r.split_once(']'))
            .map(|(p, _)| p);
        if l.contains("connection received:") {
            if let Some(pid) = pid {
                received.insert(pid, secs_since(key, t));
            }
        } else if let Some(Some(k)) = login_of(l)
            && k < n
        {
            per[k].push(Login {
                received: pid.and_then(|p| received.remove(p)),
                authorized: secs_since(key, t),
            });
        }
    }
    per
}

/// "median / p99 / max" of counts.
fn spread_counts(v: &[usize]) -> String {
    let mut d = v.to_vec();
    if d.is_empty() {
        return "none".into();
    }
    d.sort_unstable();
    let pick = |q: f64| d[((d.len() as f64 * q).ceil() as usize).clamp(1, d.len()) - 1];
    format!("{} / {} / {}", pick(0.5), pick(0.99), d[d.len() - 1])
}

/// How the daemons' checks met the new leader's promotion: per daemon, its checks there
/// until its switch began (from `logins[to - 1]`, the logins per member and daemon), how
/// many came before the promotion (they found it in recovery), when the first one after
/// it came, and what was left of that round; how long a login took there; and the
/// logins per daemon on the other members. Rows of the table, then a line of the new
/// leader's logins per 0.1 s since the key.
fn check_rows(
    head: &str,
    sw: &Switchover,
    logins: &[Vec<Vec<Login>>],
    names: &[String],
    from: usize,
    to: usize,
) -> (Vec<String>, String) {
    let cand = &logins[to - 1];
    let until = |k: usize| {
        let checked = sw.steps[k].checked.map(|d| d.as_secs_f64());
        cand[k]
            .iter()
            .filter(move |l| checked.is_none_or(|c| l.authorized <= c))
            .copied()
    };
    let n = cand.len();
    let mut rows = Vec::new();
    let mut row = |what: String, v: String| rows.push(format!("| {head} | {what} | {v} |"));
    let counts: Vec<usize> = (0..n).map(|k| until(k).count()).collect();
    row(
        format!(
            "checks on {} (new leader) until the switch began",
            names[to - 1]
        ),
        spread_counts(&counts),
    );
    if let Some(p) = sw.promoted {
        let before: Vec<usize> = (0..n)
            .map(|k| until(k).filter(|l| l.authorized < p).count())
            .collect();
        row(
            "of those, before it was a primary (so answered in recovery)".into(),
            spread_counts(&before),
        );
        let first: Vec<Option<f64>> = (0..n)
            .map(|k| cand[k].iter().map(|l| l.authorized).find(|t| *t >= p))
            .collect();
        row(
            "its first check there after the promotion, since the key".into(),
            spread_secs(&first),
        );
        row(
            "the same, since the promotion (the grain of the rechecks)".into(),
            spread_secs(&first.iter().map(|f| f.map(|f| f - p)).collect::<Vec<_>>()),
        );
        let rest: Vec<Option<f64>> = (0..n)
            .map(|k| Some(sw.steps[k].checked?.as_secs_f64() - first[k]?))
            .collect();
        row(
            "from that login to the switch beginning (the rest of its round, the verdict)".into(),
            spread_secs(&rest),
        );
    }
    let took: Vec<Option<f64>> = cand
        .iter()
        .flatten()
        .map(|l| Some(l.authorized - l.received?))
        .collect();
    row(
        format!(
            "a login on {}: connection received to authorized",
            names[to - 1]
        ),
        spread_secs(&took),
    );
    for i in (1..=logins.len()).filter(|i| *i != to) {
        let role = if i == from {
            "old leader"
        } else {
            "the other member"
        };
        let per: Vec<usize> = logins[i - 1].iter().map(Vec::len).collect();
        row(
            format!(
                "logins on {} ({role}) during the switchover, per daemon",
                names[i - 1]
            ),
            spread_counts(&per),
        );
    }
    let mut bins = std::collections::BTreeMap::new();
    for l in cand.iter().flatten() {
        *bins
            .entry((l.authorized * 10.0).floor() as i64)
            .or_insert(0usize) += 1;
    }
    let hist = bins
        .iter()
        .map(|(b, c)| format!("{:.1}: {c}", *b as f64 / 10.0))
        .collect::<Vec<_>>()
        .join(", ");
    (
        rows,
        format!(
            "[fleet] {head}: logins on {} per 0.1 s since the key (promoted at {}): {hist}",
            names[to - 1],
            sw.promoted.map_or("?".into(), |p| format!("{p:.2} s"))
        ),
    )
}

/// The rows of the table of steps: each step since the key changed, and alone (from the
/// step before it, per daemon).
fn step_rows(n: &str, steps: &[Steps]) -> Vec<String> {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    type Get = fn(&Steps) -> Option<Duration>;
    let order: [(&str, Get); 5] = [
        ("heard the key (its log, read every 20 ms)", |s| s.heard),
        (
            "candidate confirmed by a check on a new connection; switch begins (its log, less the switch's own time)",
            |s| s.checked,
        ),
        ("symlink swapped (read every 10 ms)", |s| s.linked),
        ("PgBouncer took the RELOAD (PgBouncer's log, ms)", |s| {
            s.reloaded
        }),
        ("confirmed by SHOW DATABASES (its log)", |s| s.confirmed),
    ];
    let mut rows = Vec::new();
    for (i, (what, get)) in order.iter().enumerate() {
        let since: Vec<Option<f64>> = steps.iter().map(|s| secs(get(s))).collect();
        let alone: Vec<Option<f64>> = if i == 0 {
            since.clone()
        } else {
            let prev = order[i - 1].1;
            steps
                .iter()
                .map(|s| Some(secs(get(s))? - secs(prev(s))?))
                .collect()
        };
        rows.push(format!(
            "| {n} | {what} | {} | {} |",
            spread_secs(&since),
            spread_secs(&alone)
        ));
    }
    rows.push(format!(
        "| {n} | the switch by the daemon's own clock (symlink, RELOAD, SHOW DATABASES, KILL of the old server's connections) | | {} |",
        spread(&pick(steps, |s| s.switch_took))
    ));
    rows
}

/// The etcd mode's fleet: steady-state cost per member, and a Patroni switchover under
/// client load timed from the leader key. Run with
///
///     REBOUNCER_FLEET_N=10,50 REBOUNCER_FLEET_SECS=20 cargo test --release --test fleet etcd -- --ignored --nocapture
///
/// `REBOUNCER_FLEET_GLOBAL`: more `[global]` lines for every daemon, `;` between them
/// (`pause_on_failover=on` to hold the clients through the switchover).
/// `REBOUNCER_FLEET_CLIENTS` (default 10): how many PgBouncers carry a writing client
/// during the switchover. `REBOUNCER_BENCH_BIN=/path/to/rebouncer`: another build
/// measured in turn with this one at each size (each on a fresh cluster, the order
/// alternating), so both meet the same machine load; `REBOUNCER_FLEET_REPS` (default 1)
/// how many times each.
#[test]
#[ignore = "benchmark: minutes of real servers; run by hand (see the file's header)"]
fn fleet_etcd_mode_footprint_and_switchover() {
    let window = Duration::from_secs(env_num("REBOUNCER_FLEET_SECS", 60));
    let interval = env_num("REBOUNCER_FLEET_INTERVAL", 10);
    let clients = env_num("REBOUNCER_FLEET_CLIENTS", 10) as usize;
    let reps = env_num("REBOUNCER_FLEET_REPS", 1).max(1);
    let this = ("this build".to_string(), common::rebouncer_bin());
    let builds: Vec<(String, PathBuf)> = match std::env::var("REBOUNCER_BENCH_BIN") {
        Ok(other) => vec![(other.clone(), PathBuf::from(other)), this],
        Err(_) => vec![this],
    };
    let mut table = vec![
        "| N | build | member | backends held | new connections/min | new connections during the switchover |".to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];
    let mut switches = vec![
        "| N | build | load (1 min) | new leader's PostgreSQL a primary (its log) | every PgBouncer confirmed on the new leader (median / p99 / max) | PgBouncers with a client | writes failed / made | clients writing on the new leader again (median / p99 / max) |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    let mut phases = vec![
        "| N | build | step, per daemon | since the key changed (median / p99 / max) | from the step before (median / p99 / max) |".to_string(),
        "|---|---|---|---|---|".to_string(),
    ];
    let mut checks = vec![
        "| N | build | per daemon (times since the key; logins from its member's log, ms) | median / p99 / max |".to_string(),
        "|---|---|---|---|".to_string(),
    ];
    let mut histograms = Vec::new();
    for n in fleet_sizes() {
        for rep in 0..reps as usize {
            for b in 0..builds.len() {
                // Alternate which build goes first, so neither always meets the other's
                // leftovers.
                let (label, bin) = &builds[(b + rep) % builds.len()];
                let head = format!("{n} | {label}");
                let t = Instant::now();
                let p = Patroni::start();
                raise_max_connections(&p, (3 * n + 50).max(100));
                let fleet = start_etcd_fleet(&p, n, interval, bin);
                eprintln!(
                    "[fleet] N={n} etcd mode, {label}: cluster and fleet up in {:.1?}; measuring {window:?} (load {})",
                    t.elapsed(),
                    load_average()
                );
                std::thread::sleep(Duration::from_secs(2));
                let costs = measure_etcd_steady(&p, window);
                let from = p.leader().unwrap();
                let to = from % 3 + 1;
                let log_len =
                    |i: usize| fs::metadata(p.member_log_path(i)).map_or(0, |m| m.len() as usize);
                let marks: Vec<usize> = (1..=p.len()).map(log_len).collect();
                let load_before = load_average();
                let sw =
                    measure_switchover(&p, &fleet, from, to, clients, Duration::from_secs(120));
                // The checks the switchover cost, per member (every daemon done by now).
                std::thread::sleep(Duration::from_secs(2));
                let texts: Vec<String> = (1..=p.len())
                    .map(|i| {
                        let b = fs::read(p.member_log_path(i)).unwrap_or_default();
                        String::from_utf8_lossy(&b[marks[i - 1].min(b.len())..]).into_owned()
                    })
                    .collect();
                let names: Vec<String> = (1..=p.len()).map(|i| p.name(i)).collect();
                eprintln!(
                    "[fleet] N={n}, {label}: the key named {} {:.2?} after patronictl switchover started (load {load_before} before it)",
                    names[to - 1],
                    sw.key_at
                );
                for (i, (held, per_min)) in costs.iter().enumerate() {
                    let line = format!(
                        "| {head} | {} | {held} | {per_min:.0} | {} |",
                        names[i],
                        logins(&texts[i])
                    );
                    eprintln!("{line}");
                    table.push(line);
                }
                let failed: usize = sw.writes.iter().map(|w| w.failed()).sum();
                let made: usize = sw.writes.iter().map(|w| w.total()).sum();
                let line = format!(
                    "| {head} | {} | {} | {} | {} | {failed} / {made} | {} |",
                    sw.load,
                    sw.promoted
                        .map_or("not seen".to_string(), |p| format!("{p:.2} s")),
                    spread(&pick(&sw.steps, |s| s.confirmed)),
                    sw.writes.len(),
                    spread(&sw.back)
                );
                eprintln!("{line}");
                switches.push(line);
                for w in &sw.writes {
                    if w.failed() > 0 {
                        eprintln!(
                            "[fleet] N={n}, {label}: a client: {}; {}",
                            w.summary(),
                            failures(w, sw.key_instant)
                        );
                    }
                }
                for line in step_rows(&head, &sw.steps) {
                    eprintln!("{line}");
                    phases.push(line);
                }
                let logins: Vec<Vec<Vec<Login>>> = texts
                    .iter()
                    .map(|t| daemon_logins(t, n, sw.key_wall))
                    .collect();
                let (rows, hist) = check_rows(&head, &sw, &logins, &names, from, to);
                for line in rows {
                    eprintln!("{line}");
                    checks.push(line);
                }
                eprintln!("{hist}");
                histograms.push(hist);
                drop(fleet);
                drop(p);
            }
        }
    }
    println!(
        "\nFleet benchmark, etcd mode: window {}s; a patronictl switchover with a client writing through {clients} PgBouncers (all when N is smaller), times from the leader key naming the new leader\n\nSteady state and checks, per member\n\n{}\n\nSwitchover\n\n{}\n\nWhere the time goes\n\n{}\n\nThe checks on the new leader\n\n{}\n\n{}\n",
        window.as_secs(),
        table.join("\n"),
        switches.join("\n"),
        phases.join("\n"),
        checks.join("\n"),
        histograms.join("\n")
    );
}
