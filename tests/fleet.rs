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
use std::time::{Duration, Instant};

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

/// Starts `n` app servers against `c`, all routed to pg1, and waits until every daemon
/// says OK.
fn start_fleet(c: &Cluster, n: usize, keep: bool, interval: u64) -> Vec<AppServer> {
    let base = c.root().join("fleet");
    fs::create_dir_all(&base).unwrap();
    chown_server(&base);
    let mut fleet = Vec::with_capacity(n);
    for k in 0..n {
        let dir = base.join(k.to_string());
        fs::create_dir_all(dir.join("nodes")).unwrap();
        chown_server(&dir);
        let port = common::alloc_port();
        for node in 1..=c.len() {
            fs::write(
                dir.join("nodes").join(format!("pg{node}.ini")),
                bouncer_ini(&dir, port, c.port(node)),
            )
            .unwrap();
        }
        fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        std::os::unix::fs::symlink(dir.join("nodes/pg1.ini"), dir.join("pgbouncer.ini")).unwrap();
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
    for a in fleet.iter_mut() {
        let mut cfg = format!(
            "[global]\npgbouncer=host=127.0.0.1 port={} dbname=pgbouncer user=postgres sslmode=disable\n\
             symlink={}\nconfigdir={}\ninterval={interval}\ntimeout=3\nkeep_connections={}\n\n[servers]\n",
            a.bouncer_port,
            a.symlink().display(),
            a.dir.join("nodes").display(),
            if keep { "on" } else { "off" },
        );
        for node in 1..=c.len() {
            cfg += &format!("pg{node}={}\n", c.conninfo(node));
        }
        let config = a.dir.join("rebouncer.ini");
        fs::write(&config, cfg).unwrap();
        let cmd = DaemonCmd {
            bin: common::rebouncer_bin(),
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
        // Started one after the other across one interval, so that their rounds fall at
        // random moments relative to each other, as on app servers started at different
        // times, rather than all together.
        std::thread::sleep(Duration::from_secs(interval) / n as u32);
    }
    common::wait_until(
        Duration::from_secs(180),
        "every daemon's /nagios OK on pg1",
        || {
            fleet
                .iter()
                .all(|a| a.daemon.as_ref().unwrap().nagios().starts_with("OK"))
        },
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
    text.lines()
        .filter(|l| {
            l.contains("connection authorized") && l.ends_with("application_name=rebouncer")
        })
        .count()
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

struct Failover {
    linked: Vec<Option<Duration>>,
    confirmed: Vec<Option<Duration>>,
    promote_took: Duration,
}

/// Stops pg1, promotes pg2, and times each daemon's symlink and confirmed switch from the
/// start of the promotion.
fn measure_failover(c: &Cluster, fleet: &[AppServer], limit: Duration) -> Failover {
    let n = fleet.len();
    let links: Vec<(PathBuf, PathBuf)> = fleet
        .iter()
        .map(|a| (a.symlink(), a.node_file(2)))
        .collect();
    let logs: Vec<PathBuf> = fleet.iter().map(|a| a.log()).collect();
    let offsets: Vec<u64> = logs
        .iter()
        .map(|l| fs::metadata(l).map(|m| m.len()).unwrap_or(0))
        .collect();
    c.stop_fast(1);
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let s = stop.clone();
    let watcher = std::thread::spawn(move || {
        let mut linked = vec![None; n];
        let mut confirmed = vec![None; n];
        let mut offsets = offsets;
        let mut last_log_pass = Instant::now() - Duration::from_secs(1);
        while !s.load(Ordering::SeqCst) {
            for (k, (link, want)) in links.iter().enumerate() {
                if linked[k].is_none() && fs::read_link(link).ok().as_ref() == Some(want) {
                    linked[k] = Some(t0.elapsed());
                }
            }
            if last_log_pass.elapsed() >= Duration::from_millis(20) {
                last_log_pass = Instant::now();
                for (k, log) in logs.iter().enumerate() {
                    if confirmed[k].is_some() {
                        continue;
                    }
                    let Ok(b) = fs::read(log) else { continue };
                    let from = (offsets[k] as usize).min(b.len());
                    let new = String::from_utf8_lossy(&b[from..]);
                    if new.contains("PgBouncer now points at pg2") {
                        confirmed[k] = Some(t0.elapsed());
                    }
                    // Keep only whole lines behind us.
                    offsets[k] = (from + new.rfind('\n').map(|i| i + 1).unwrap_or(0)) as u64;
                }
            }
            if confirmed.iter().all(|c| c.is_some()) && linked.iter().all(|l| l.is_some()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (linked, confirmed)
    });
    c.promote(2);
    let promote_took = t0.elapsed();
    let t = Instant::now();
    while !watcher.is_finished() && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let (linked, confirmed) = watcher.join().unwrap();
    Failover {
        linked,
        confirmed,
        promote_took,
    }
}

/// "median / p99 / max" in seconds, and how many never got there.
fn spread(v: &[Option<Duration>]) -> String {
    let mut d: Vec<f64> = v.iter().flatten().map(|d| d.as_secs_f64()).collect();
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
        s += &format!(" ({missing} of {} not within the limit)", v.len());
    }
    s
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
                spread(&f.linked),
                spread(&f.confirmed)
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

/// `n` app servers following Patroni's leader key (members mapped to `pg1..pg3`),
/// all routed to the leader; waits until every daemon says OK.
fn start_etcd_fleet(p: &Patroni, n: usize, interval: u64) -> Vec<AppServer> {
    let leader = p.leader().unwrap();
    let base = p.root().join("fleet");
    fs::create_dir_all(&base).unwrap();
    chown_server(&base);
    let mut fleet = Vec::with_capacity(n);
    for k in 0..n {
        let dir = base.join(k.to_string());
        fs::create_dir_all(dir.join("nodes")).unwrap();
        chown_server(&dir);
        let port = common::alloc_port();
        for node in 1..=p.len() {
            fs::write(
                dir.join("nodes").join(format!("pg{node}.ini")),
                bouncer_ini(&dir, port, p.port(node)),
            )
            .unwrap();
        }
        fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        std::os::unix::fs::symlink(
            dir.join(format!("nodes/pg{leader}.ini")),
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
    let members: Vec<String> = (1..=p.len())
        .map(|i| format!("{}:pg{i}", p.name(i)))
        .collect();
    for a in fleet.iter_mut() {
        let mut cfg = format!(
            "[global]\npgbouncer=host=127.0.0.1 port={} dbname=pgbouncer user=postgres sslmode=disable\n\
             symlink={}\nconfigdir={}\ninterval={interval}\ntimeout=3\n\
             etcd_endpoints={}\netcd_scope={}\netcd_members={}\n\n[servers]\n",
            a.bouncer_port,
            a.symlink().display(),
            a.dir.join("nodes").display(),
            p.etcd.endpoint(),
            common::patroni::SCOPE,
            members.join(", "),
        );
        for node in 1..=p.len() {
            cfg += &format!("pg{node}={}\n", p.conninfo(node));
        }
        let config = a.dir.join("rebouncer.ini");
        fs::write(&config, cfg).unwrap();
        let cmd = DaemonCmd {
            bin: common::rebouncer_bin(),
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
        std::thread::sleep(Duration::from_secs(1) / n as u32);
    }
    common::wait_until(
        Duration::from_secs(180),
        "every daemon's /nagios OK on the leader",
        || {
            fleet
                .iter()
                .all(|a| a.daemon.as_ref().unwrap().nagios().starts_with("OK"))
        },
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
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rebouncer'",
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

/// A `patronictl switchover` to `to`, timing each daemon from the moment the leader key
/// names `to` (etcd read every 5 ms) until its symlink names `to` and until it logged
/// PgBouncer confirmed there. Returns (key naming `to` after the switchover began,
/// linked, confirmed); times of daemons that were faster than the key's poll are 0.
fn measure_switchover(
    p: &Patroni,
    fleet: &[AppServer],
    from: usize,
    to: usize,
    limit: Duration,
) -> (Duration, Vec<Option<Duration>>, Vec<Option<Duration>>) {
    let n = fleet.len();
    let links: Vec<(PathBuf, PathBuf)> = fleet
        .iter()
        .map(|a| (a.symlink(), a.node_file(to)))
        .collect();
    let logs: Vec<PathBuf> = fleet.iter().map(|a| a.log()).collect();
    let mut offsets: Vec<u64> = logs
        .iter()
        .map(|l| fs::metadata(l).map(|m| m.len()).unwrap_or(0))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let s = stop.clone();
    let watcher = std::thread::spawn(move || {
        let mut linked = vec![None; n];
        let mut confirmed = vec![None; n];
        let mut last_log_pass = Instant::now() - Duration::from_secs(1);
        let want = format!("PgBouncer now points at pg{to}");
        while !s.load(Ordering::SeqCst) {
            for (k, (link, target)) in links.iter().enumerate() {
                if linked[k].is_none() && fs::read_link(link).ok().as_ref() == Some(target) {
                    linked[k] = Some(t0.elapsed());
                }
            }
            if last_log_pass.elapsed() >= Duration::from_millis(20) {
                last_log_pass = Instant::now();
                for (k, log) in logs.iter().enumerate() {
                    if confirmed[k].is_some() {
                        continue;
                    }
                    let Ok(b) = fs::read(log) else { continue };
                    let from = (offsets[k] as usize).min(b.len());
                    let new = String::from_utf8_lossy(&b[from..]);
                    if new.contains(&want) {
                        confirmed[k] = Some(t0.elapsed());
                    }
                    offsets[k] = (from + new.rfind('\n').map(|i| i + 1).unwrap_or(0)) as u64;
                }
            }
            if confirmed.iter().all(|c| c.is_some()) && linked.iter().all(|l| l.is_some()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (linked, confirmed)
    });
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
    while !watcher.is_finished() && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let (linked, confirmed) = watcher.join().unwrap();
    let _ = switch.join();
    let since_key = |v: Vec<Option<Duration>>| -> Vec<Option<Duration>> {
        v.into_iter()
            .map(|d| d.map(|d| d.saturating_sub(key_at)))
            .collect()
    };
    (key_at, since_key(linked), since_key(confirmed))
}

/// The etcd mode's fleet: steady-state cost per member and a Patroni switchover timed from
/// the leader key. Run with
///
///     REBOUNCER_FLEET_N=10,200 cargo test --release --test fleet etcd -- --ignored --nocapture
#[test]
#[ignore = "benchmark: minutes of real servers; run by hand (see the file's header)"]
fn fleet_etcd_mode_footprint_and_switchover() {
    let window = Duration::from_secs(env_num("REBOUNCER_FLEET_SECS", 60));
    let interval = env_num("REBOUNCER_FLEET_INTERVAL", 10);
    let mut table = vec![
        "| N | member | backends held | new connections/min | new connections during the switchover | switchover: every symlink on the new leader (median / p99 / max) | every PgBouncer confirmed there (median / p99 / max) |".to_string(),
        "|---|---|---|---|---|---|---|".to_string(),
    ];
    for n in fleet_sizes() {
        let t = Instant::now();
        let p = Patroni::start();
        raise_max_connections(&p, (3 * n + 50).max(100));
        let fleet = start_etcd_fleet(&p, n, interval);
        eprintln!(
            "[fleet] N={n} etcd mode: cluster and fleet up in {:.1?}; measuring {window:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_secs(2));
        let costs = measure_etcd_steady(&p, window);
        let from = p.leader().unwrap();
        let to = from % 3 + 1;
        let log_len = |i: usize| fs::metadata(p.member_log_path(i)).map_or(0, |m| m.len() as usize);
        let marks: Vec<usize> = (1..=p.len()).map(log_len).collect();
        let (key_at, linked, confirmed) =
            measure_switchover(&p, &fleet, from, to, Duration::from_secs(120));
        // The checks the switchover cost, per member (every daemon done by now).
        std::thread::sleep(Duration::from_secs(2));
        let switch_logins: Vec<usize> = (1..=p.len())
            .map(|i| {
                let b = fs::read(p.member_log_path(i)).unwrap_or_default();
                logins(&String::from_utf8_lossy(&b[marks[i - 1].min(b.len())..]))
            })
            .collect();
        eprintln!(
            "[fleet] N={n}: the key named {} {key_at:.2?} after patronictl switchover started",
            p.name(to)
        );
        for (i, (held, per_min)) in costs.iter().enumerate() {
            // The switchover's times are the fleet's, written once.
            let times = if i == 0 {
                format!("{} | {}", spread(&linked), spread(&confirmed))
            } else {
                " | ".to_string()
            };
            let line = format!(
                "| {n} | {} | {held} | {per_min:.0} | {} | {times} |",
                p.name(i + 1),
                switch_logins[i]
            );
            eprintln!("{line}");
            table.push(line);
        }
        drop(fleet);
        drop(p);
    }
    println!(
        "\nFleet benchmark, etcd mode: window {}s, times from the leader key naming the new leader\n\n{}\n",
        window.as_secs(),
        table.join("\n")
    );
}
