//! Benchmarks, not tests: they print figures and assert nothing about speed. Run with
//!
//!     cargo test --release --test bench -- --ignored --nocapture --test-threads=1
//!
//! (`REBOUNCER_BENCH_REPS=N` changes the number of failovers per case, default 10;
//! `REBOUNCER_BENCH_BIN=/path/to/rebouncer` also measures another build, in turn with this
//! one, for the failover, steady-state and status-page benchmarks.)
//! Each uses the same real-cluster fixture as the integration tests.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Link, Opts};

/// Clients writing through PgBouncer during a failover, each with a new connection per
/// write, as in the measurement of the Go tool quoted in the issue.
const CLIENTS: usize = 4;

fn reps() -> usize {
    std::env::var("REBOUNCER_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kill {
    /// `pg_ctl stop -m fast`
    Stop,
    /// SIGKILL to the postmaster
    Kill9,
    /// SIGSTOP to every process of the primary: the host hangs, no connection closes.
    Hang,
}

#[derive(Default)]
struct Writes {
    /// Per client: when its first write after `since` succeeded on the new primary.
    recovered: Vec<Option<Instant>>,
    failures: usize,
    longest: Duration,
}

/// Run `CLIENTS` writers against PgBouncer until `stop`; record when each one first wrote
/// to `new_port`.
fn spawn_writers(
    bouncer_port: u16,
    new_port: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Writes> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let out = Arc::new(Mutex::new(Writes {
                recovered: vec![None; CLIENTS],
                ..Writes::default()
            }));
            let mut tasks = Vec::new();
            for client in 0..CLIENTS {
                let (stop, out) = (stop.clone(), out.clone());
                tasks.push(tokio::spawn(async move {
                    let conninfo = format!(
                        "host=127.0.0.1 port={bouncer_port} dbname=appdb user=postgres connect_timeout=5"
                    );
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let r = tokio::time::timeout(Duration::from_secs(20), write_once(&conninfo)).await;
                        let took = t.elapsed();
                        {
                        let mut o = out.lock().unwrap();
                        o.longest = o.longest.max(took);
                        match r {
                            Ok(Ok(port)) => {
                                // The new primary takes writes only once promoted, so the
                                // first write that lands there is this client's recovery.
                                if port == new_port && o.recovered[client].is_none() {
                                    o.recovered[client] = Some(Instant::now());
                                }
                            }
                            _ => o.failures += 1,
                        }
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            Arc::try_unwrap(out).ok().unwrap().into_inner().unwrap()
        })
    })
}

async fn write_once(conninfo: &str) -> Result<u16, String> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(conn);
    let r = client
        .simple_query("INSERT INTO t(node) VALUES ('bench') RETURNING inet_server_port()")
        .await
        .map_err(|e| e.to_string());
    drop(client);
    task.abort();
    for m in r? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            return row
                .get(0)
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| "no port".to_string());
        }
    }
    Err("no row".into())
}

/// One failover; returns (ms from `pg_ctl promote` being called, and from it returning,
/// until every client wrote to the new primary; failed writes; longest write in ms).
fn failover_once(keep: bool, how: Kill, bin: Option<&str>) -> Option<(f64, f64, usize, f64)> {
    let c = Cluster::start(Opts::default().standbys(1).link(Link::Node(1)));
    let extra = if keep { "" } else { "keep_connections=false" };
    let cfg = c.write_rebouncer_config(30, 3, extra);
    let mut cmd = c.daemon_cmd(&cfg);
    if let Some(bin) = bin {
        cmd.bin = bin.into();
    }
    let mut d = cmd.start();
    d.wait_for(Duration::from_secs(20), "settled on pg1", |d| {
        d.http_get("/nagios").unwrap_or_default().starts_with("OK")
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(c.bouncer_port(), c.port(2), stop.clone());
    // A failure comes at a random moment of the polling cycle, as in life; without this
    // the reconnect-every-round mode would always wait a whole interval.
    let phase = if keep {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(30)
    };
    std::thread::sleep(Duration::from_millis(500) + random_below(phase));
    match how {
        Kill::Stop => c.stop_fast(1),
        Kill::Kill9 => c.kill9(1),
        Kill::Hang => c.sigstop(1),
    }
    let asked = Instant::now();
    c.promote(2);
    let promoted = Instant::now();
    let deadline = promoted + Duration::from_secs(90);
    let all = loop {
        std::thread::sleep(Duration::from_millis(20));
        // The writers report only at the end: watch PgBouncer's target meanwhile.
        let done = c.bouncer_target_node() == Some(2);
        if done || Instant::now() > deadline {
            break done;
        }
    };
    // Let every client get at least one write in after the switch.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let w = writers.join().unwrap();
    if how == Kill::Hang {
        c.sigcont(1);
    }
    if std::env::var_os("REBOUNCER_BENCH_VERBOSE").is_some() {
        eprintln!(
            "{}\n--- pgbouncer log ---\n{}",
            d.diagnostics(),
            c.bouncer_log()
        );
    }
    if !all || w.recovered.iter().any(Option::is_none) {
        eprintln!(
            "  a repetition did not recover within 90 s\n{}",
            d.diagnostics()
        );
        return None;
    }
    let last = w.recovered.iter().flatten().max().unwrap();
    Some((
        last.saturating_duration_since(asked).as_secs_f64() * 1000.0,
        last.saturating_duration_since(promoted).as_secs_f64() * 1000.0,
        w.failures,
        w.longest.as_secs_f64() * 1000.0,
    ))
}

/// One build's failovers of one case: ms from `pg_ctl promote` called, ms from its return,
/// the longest write in ms, and the failed writes.
type Figures = (Vec<f64>, Vec<f64>, Vec<f64>, usize);

/// Good enough randomness for spreading failures over the polling cycle.
fn random_below(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos() as u64;
    let x = nanos
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 11;
    Duration::from_millis(x % max.as_millis().max(1) as u64)
}

/// "min .. median .. max .. ms" with `decimals` digits after the point.
fn summary(v: &mut [f64], decimals: usize) -> String {
    if v.is_empty() {
        return "no data".into();
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "min {:7.*}  median {:7.*}  max {:7.*} ms",
        decimals,
        v[0],
        decimals,
        v[v.len() / 2],
        decimals,
        v[v.len() - 1]
    )
}

#[test]
#[ignore]
fn bench_failover_as_clients_see_it() {
    let n = reps();
    println!(
        "\nfailover with {CLIENTS} clients writing through PgBouncer (new connection per write), \
         interval=30 timeout=3, {n} repetitions; time until every client has written to the \
         new primary, counted from the call of `pg_ctl promote -w` and from its return:"
    );
    let cases = std::env::var("REBOUNCER_BENCH_CASES").unwrap_or_else(|_| "stop,kill,hang".into());
    let modes = std::env::var("REBOUNCER_BENCH_MODES").unwrap_or_else(|_| "kept,reconnect".into());
    let other = std::env::var("REBOUNCER_BENCH_BIN").ok();
    for how in [Kill::Stop, Kill::Kill9, Kill::Hang] {
        let case = match how {
            Kill::Stop => "stop",
            Kill::Kill9 => "kill",
            Kill::Hang => "hang",
        };
        if !cases.split(',').any(|c| c == case) {
            continue;
        }
        for keep in [true, false] {
            if !modes
                .split(',')
                .any(|m| m == if keep { "kept" } else { "reconnect" })
            {
                continue;
            }
            let mode = if keep {
                "kept connections (default)"
            } else {
                "reconnect every round (Go)"
            };
            // With another build named, each repetition runs it and this build in turn
            // on fresh clusters, so both meet the same machine load.
            let builds: Vec<(String, Option<&str>)> = match other.as_deref() {
                Some(bin) => vec![
                    (format!("other ({bin})"), Some(bin)),
                    ("this build".into(), None),
                ],
                None => vec![("this build".into(), None)],
            };
            let mut figures: Vec<Figures> = vec![Figures::default(); builds.len()];
            for _ in 0..n {
                for (b, (_, bin)) in builds.iter().enumerate() {
                    if let Some((t, w, f, l)) = failover_once(keep, how, *bin) {
                        figures[b].0.push(t);
                        figures[b].1.push(w);
                        figures[b].2.push(l);
                        figures[b].3 += f;
                    }
                }
            }
            let mut medians = Vec::new();
            for ((name, _), (times, after_w, longest, fails)) in builds.iter().zip(&mut figures) {
                println!(
                    "  {how:?} {mode:28} {name}: from promote called: {}  | from promote -w returned: {}  | longest write {}  | failed writes {fails}",
                    summary(times, 0),
                    summary(after_w, 0),
                    summary(longest, 0)
                );
                medians.push(times.get(times.len() / 2).copied());
            }
            if let [Some(a), Some(b)] = medians[..] {
                println!("  {how:?} {mode:28} median this/other: {:.2}", b / a);
            }
        }
    }
}

fn proc_status(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[test]
#[ignore]
fn bench_steady_state_cost() {
    let secs: u64 = std::env::var("REBOUNCER_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    println!("\nsteady healthy cluster, 3 servers, interval=1, measured over {secs} s:");
    let other = std::env::var("REBOUNCER_BENCH_BIN").ok();
    let mut runs: Vec<(bool, Option<&str>)> = Vec::new();
    for keep in [true, false] {
        if let Some(bin) = other.as_deref() {
            runs.push((keep, Some(bin)));
        }
        runs.push((keep, None));
    }
    for (keep, bin) in runs {
        let c = Cluster::start(Opts::default().link(Link::Node(1)));
        let extra = if keep { "" } else { "keep_connections=false" };
        let cfg = c.write_rebouncer_config(1, 3, extra);
        let mut cmd = c.daemon_cmd(&cfg);
        if let Some(bin) = bin {
            cmd.bin = bin.into();
        }
        let mut d = cmd.start();
        d.wait_for(Duration::from_secs(20), "settled", |d| {
            d.http_get("/nagios").unwrap_or_default().starts_with("OK")
        });
        std::thread::sleep(Duration::from_secs(2));
        let (logins0, cpu0) = (
            (1..=c.len()).map(|i| c.monitor_logins(i)).sum::<usize>(),
            cpu_seconds(d.pid()),
        );
        std::thread::sleep(Duration::from_secs(secs));
        let (logins1, cpu1) = (
            (1..=c.len()).map(|i| c.monitor_logins(i)).sum::<usize>(),
            cpu_seconds(d.pid()),
        );
        let per_min = (logins1 - logins0) as f64 * 60.0 / secs as f64;
        println!(
            "  {:28} {}: new server connections {:6.0}/min | CPU {:5.2} s/min | VmHWM {} | VmRSS {} | threads {}",
            if keep {
                "kept connections (default)"
            } else {
                "reconnect every round (Go)"
            },
            bin.map_or("this build".to_string(), |b| format!("other ({b})")),
            per_min,
            (cpu1 - cpu0) * 60.0 / secs as f64,
            proc_status(d.pid(), "VmHWM:"),
            proc_status(d.pid(), "VmRSS:"),
            proc_status(d.pid(), "Threads:"),
        );
    }
}

/// Requests per second from `wrk -t2 -c50 -d10s`, or None when wrk is missing.
fn wrk(url: &str) -> Option<(f64, String)> {
    let out = std::process::Command::new("wrk")
        .args(["-t2", "-c50", "-d10s", url])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())?;
    Some((rps, text))
}

/// `/nodes` and `/metrics` under `wrk -t2 -c50 -d10s`, three runs each, against a daemon
/// polling a healthy 3-server cluster at `interval=1` (the status server allows 64
/// connections at a time; wrk's 50 fit). `apt-get install wrk` first.
/// `REBOUNCER_BENCH_BIN=/path/to/rebouncer` measures another build (an older commit, the
/// Go tool) on the same cluster.
#[test]
#[ignore]
fn bench_status_pages_wrk() {
    let c = Cluster::start_default();
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut cmd = c.daemon_cmd(&cfg);
    let other = std::env::var("REBOUNCER_BENCH_BIN").ok();
    if let Some(bin) = &other {
        println!("measuring {bin}");
        cmd.bin = bin.into();
    }
    let mut d = cmd.start();
    if other.is_some() {
        // The Go tool never gets past PgBouncer's admin console with a current lib/pq (its
        // connection check is a query the console refuses), so it never polls and never
        // says OK; its pages are served all the same
        // (its /nodes is then empty: compare the request rates, not the bytes).
        d.wait_for(
            Duration::from_secs(20),
            "the status server answering",
            |d| d.http_get("/nodes").is_ok(),
        );
    } else {
        d.wait_for(Duration::from_secs(20), "settled on pg1", |d| {
            d.http_get("/nagios").unwrap_or_default().starts_with("OK")
        });
    }
    let bytes = |p: &str| d.http_get(p).map(|b| b.len()).unwrap_or(0);
    println!(
        "status pages: /nodes {} bytes, /metrics {} bytes",
        bytes("/nodes"),
        bytes("/metrics")
    );
    for path in ["/nodes", "/metrics"] {
        let url = format!("http://{}{path}", d.http_addr);
        let mut runs = Vec::new();
        for run in 1..=3 {
            let Some((rps, text)) = wrk(&url) else {
                println!("wrk not found: apt-get install wrk");
                return;
            };
            println!("{path} run {run}: {rps:.0} requests/s");
            if run == 1 {
                println!("{text}");
            }
            runs.push(rps);
        }
        println!(
            "{path}: {}",
            runs.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    // Still polling and right after the load.
    if other.is_none() {
        assert!(d.http_get("/nagios").unwrap_or_default().starts_with("OK"));
    }
}

/// From the `/` page: the last round's (answered, asked, ms).
fn round_figures(page: &str) -> Option<(usize, usize, f64)> {
    // "Last round: 3 of 50 servers answered in 1.2 ms"
    let line = page.lines().find_map(|l| l.strip_prefix("Last round: "))?;
    let (counts, took) = line.split_once(" answered in ")?;
    let (answered, rest) = counts.split_once(" of ")?;
    let asked = rest.split_whitespace().next()?;
    let took = took.trim().trim_end_matches(" ms").parse().ok()?;
    Some((answered.parse().ok()?, asked.parse().ok()?, took))
}

#[test]
#[ignore]
fn bench_round_time_as_the_cluster_grows() {
    let samples: usize = std::env::var("REBOUNCER_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!(
        "\nround time as the cluster grows (entries beyond the 3 real servers point at the 2 \
         standbys), interval=1, {samples} rounds each; a round is from the first question to \
         the last answer; `one after the other` is N times the 1-server round:"
    );
    let c = Cluster::start(Opts::default().link(Link::Node(1)));
    for keep in [true, false] {
        let mut single = f64::NAN;
        for n in [1usize, 3, 10, 50] {
            let mut servers = c.servers();
            servers.truncate(n);
            for k in 4..=n {
                let standby = 2 + k % 2;
                let name = format!("extra{k}");
                let copy = c.configdir().join(format!("{name}.ini"));
                std::fs::copy(c.node_file(standby), &copy).unwrap();
                servers.push((name, c.conninfo(standby)));
            }
            let extra = if keep { "" } else { "keep_connections=false" };
            let cfg = c.write_rebouncer_config_with(1, 3, extra, &servers);
            let mut d = c.daemon(&cfg);
            d.wait_for(Duration::from_secs(30), "settled", |d| {
                d.http_get("/nagios").unwrap_or_default().starts_with("OK")
            });
            let (mut rounds, mut missed, mut seen) = (Vec::new(), 0, None);
            let until = Instant::now() + Duration::from_secs(samples as u64 * 3 + 10);
            while rounds.len() < samples && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(150));
                let page = d.http_get("/").unwrap_or_default();
                let Some((answered, asked, took)) = round_figures(&page) else {
                    continue;
                };
                // The same round seen twice is counted once (its check times differ).
                let key = page
                    .lines()
                    .filter(|l| l.contains("last checked"))
                    .collect::<Vec<_>>()
                    .join("\n");
                if seen.as_ref() == Some(&key) {
                    continue;
                }
                seen = Some(key);
                missed += asked - answered;
                rounds.push(took);
            }
            d.stop();
            let mut sorted = rounds.clone();
            let median = {
                sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
                sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
            };
            if n == 1 {
                single = median;
            }
            println!(
                "  {:28} {n:2} servers: round {}  | one after the other ~{:7.2} ms | ratio {:.2} | unanswered {missed}",
                if keep {
                    "kept connections (default)"
                } else {
                    "reconnect every round (Go)"
                },
                summary(&mut rounds, 2),
                single * n as f64,
                median / (single * n as f64)
            );
        }
    }
}

/// How the old primary goes away in [`bench_pause_through_failover`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    /// `pg_ctl stop -m fast`, a standby promoted `gap` later.
    Stop(Duration),
    /// SIGKILL to the postmaster, a standby promoted `gap` later.
    Kill9(Duration),
    /// A planned switchover: the old primary stopped cleanly, the standby promoted at once.
    Switchover,
}

impl Loss {
    fn label(self) -> String {
        match self {
            Loss::Stop(g) => format!("stop, promote after {:.1} s", g.as_secs_f64()),
            Loss::Kill9(g) => format!("SIGKILL, promote after {:.1} s", g.as_secs_f64()),
            Loss::Switchover => "planned switchover".into(),
        }
    }
    fn gap(self) -> Duration {
        match self {
            Loss::Stop(g) | Loss::Kill9(g) => g,
            Loss::Switchover => Duration::ZERO,
        }
    }
}

/// One transaction of a ledger client: when it started, how long it took, and how it ended.
struct Attempt {
    at: Instant,
    took: Duration,
    /// Ok: acknowledged. Err((in the login, error text)).
    result: Result<(), (bool, String)>,
    seq: i64,
    client: i64,
}

/// One numbered `INSERT` into `ledger` through PgBouncer on a new connection.
async fn ledger_insert(conninfo: &str, client: i64, seq: i64) -> Result<(), (bool, String)> {
    let (pg, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .map_err(|e| (true, e.to_string()))?;
    let task = tokio::spawn(conn);
    let r = pg
        .simple_query(&format!(
            "INSERT INTO ledger(client, seq) VALUES ({client}, {seq})"
        ))
        .await
        .map(|_| ())
        .map_err(|e| {
            let text = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            (false, text)
        });
    drop(pg);
    task.abort();
    r
}

/// Figures of one failover, as clients saw it.
#[derive(Default, Clone)]
struct LedgerRun {
    attempts: usize,
    failed_tx: usize,
    failed_logins: usize,
    failed_after_gone: usize,
    longest: Duration,
    /// From the stop or SIGKILL being sent until `pg_ctl promote -w` returned: the time
    /// without a primary that a held client has to wait out.
    outage: Duration,
    lost: usize,
    errors: Vec<String>,
}

fn ledger_failover(pause: bool, loss: Loss) -> Option<LedgerRun> {
    let c = Cluster::start(
        Opts::default()
            .standbys(1)
            .link(Link::Node(1))
            .pool_mode("transaction"),
    );
    // The fixture's query_wait_timeout (8 s) would cut an 8 s hold short: PgBouncer's
    // default is 120 s, and pause_timeout must stay below it.
    for i in 1..=2 {
        let f = c.node_file(i);
        let text = std::fs::read_to_string(&f).unwrap();
        std::fs::write(
            &f,
            text.replace("query_wait_timeout = 8", "query_wait_timeout = 60"),
        )
        .unwrap();
    }
    c.admin("RELOAD").unwrap();
    c.query_db(
        1,
        "appdb",
        "CREATE TABLE ledger(client int, seq int, PRIMARY KEY (client, seq))",
    )
    .unwrap();
    common::wait_until(Duration::from_secs(20), "ledger on pg2", || {
        c.query_db(2, "appdb", "SELECT to_regclass('ledger') IS NOT NULL")
            .is_ok_and(|o| o.trim() == "t")
    });
    let extra = if pause {
        "pause_on_failover=on\npause_timeout=15"
    } else {
        ""
    };
    let cfg = c.write_rebouncer_config(30, 3, extra);
    let mut d = c.daemon(&cfg);
    d.wait_for(Duration::from_secs(20), "settled on pg1", |d| {
        d.http_get("/nagios").unwrap_or_default().starts_with("OK")
    });

    let stop = Arc::new(AtomicBool::new(false));
    let port = c.bouncer_port();
    let s = stop.clone();
    let load = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for client in 0..CLIENTS as i64 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    let conninfo = format!(
                        "host=127.0.0.1 port={port} dbname=appdb user=postgres connect_timeout=5"
                    );
                    let mut out = Vec::new();
                    let mut seq = 0;
                    while !s.load(Ordering::Relaxed) {
                        seq += 1;
                        let at = Instant::now();
                        let result = match tokio::time::timeout(
                            Duration::from_secs(60),
                            ledger_insert(&conninfo, client, seq),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(_) => Err((false, "no answer in 60 s".into())),
                        };
                        out.push(Attempt {
                            at,
                            took: at.elapsed(),
                            result,
                            seq,
                            client,
                        });
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    out
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap_or_default());
            }
            all
        })
    });
    std::thread::sleep(Duration::from_millis(500) + random_below(Duration::from_secs(1)));
    let failing = Instant::now();
    match loss {
        Loss::Stop(_) | Loss::Switchover => c.stop_fast(1),
        Loss::Kill9(_) => c.kill9(1),
    }
    let gone = Instant::now();
    std::thread::sleep(loss.gap());
    c.promote(2);
    let outage = failing.elapsed();
    let recovered = common::poll_until(Duration::from_secs(60), || {
        c.bouncer_target_node() == Some(2)
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let attempts = load.join().unwrap();
    if !recovered {
        eprintln!(
            "  a repetition did not switch within 60 s\n{}",
            d.diagnostics()
        );
        return None;
    }
    let on_new: std::collections::HashSet<(i64, i64)> = c
        .query_db(2, "appdb", "SELECT client, seq FROM ledger")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once('|')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .collect();
    let mut r = LedgerRun {
        attempts: attempts.len(),
        outage,
        ..LedgerRun::default()
    };
    for a in &attempts {
        r.longest = r.longest.max(a.took);
        match &a.result {
            Ok(()) => {
                if !on_new.contains(&(a.client, a.seq)) {
                    r.lost += 1;
                }
            }
            Err((login, e)) => {
                if *login {
                    r.failed_logins += 1;
                } else {
                    r.failed_tx += 1;
                }
                if a.at >= gone {
                    r.failed_after_gone += 1;
                    if r.errors.len() < 2 {
                        r.errors.push(e.lines().next().unwrap_or("").to_string());
                    }
                }
            }
        }
    }
    if std::env::var_os("REBOUNCER_BENCH_VERBOSE").is_some() {
        eprintln!("{}", d.diagnostics());
    }
    d.stop();
    Some(r)
}

/// Failed transactions through a failover, pausing off and on, side by side: what
/// `pause_on_failover` buys.
#[test]
#[ignore]
fn bench_pause_through_failover() {
    let n: usize = std::env::var("REBOUNCER_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!(
        "\n{CLIENTS} ledger clients through PgBouncer (transaction pooling, query_wait_timeout=60), \
         a new connection and one numbered INSERT per transaction, reconnecting on error; \
         interval=30 timeout=3, pause_timeout=15; {n} repetitions per line, figures summed \
         (longest: the maximum); `after gone`: failures that started after the old primary was \
         gone (pg_ctl stop or the SIGKILL returned); `lost`: acknowledged rows absent on the new \
         primary; `no primary for`: from the stop or SIGKILL until `pg_ctl promote -w` returned (the \
         maximum):"
    );
    let loss: Vec<Loss> = vec![
        Loss::Stop(Duration::from_millis(500)),
        Loss::Stop(Duration::from_secs(3)),
        Loss::Stop(Duration::from_secs(8)),
        Loss::Kill9(Duration::from_millis(500)),
        Loss::Kill9(Duration::from_secs(3)),
        Loss::Kill9(Duration::from_secs(8)),
        Loss::Switchover,
    ];
    let started = Instant::now();
    for l in loss {
        for pause in [false, true] {
            let mut total = LedgerRun::default();
            let mut runs = 0;
            // Per run: without pausing the count depends on a race inside PgBouncer.
            let mut each_after_gone = Vec::new();
            for _ in 0..n {
                let Some(r) = ledger_failover(pause, l) else {
                    continue;
                };
                runs += 1;
                total.attempts += r.attempts;
                total.failed_tx += r.failed_tx;
                total.failed_logins += r.failed_logins;
                total.failed_after_gone += r.failed_after_gone;
                each_after_gone.push(r.failed_after_gone.to_string());
                total.longest = total.longest.max(r.longest);
                total.outage = total.outage.max(r.outage);
                total.lost += r.lost;
                for e in r.errors {
                    if total.errors.len() < 2 && !total.errors.contains(&e) {
                        total.errors.push(e);
                    }
                }
            }
            println!(
                "  {:31} pausing {:3}: {runs} runs, {:5} transactions, failed: {:4} tx + {:3} logins, {:4} after gone ({}) | longest wait {:5} ms (no primary for {:5} ms) | lost {}{}",
                l.label(),
                if pause { "on" } else { "off" },
                total.attempts,
                total.failed_tx,
                total.failed_logins,
                total.failed_after_gone,
                each_after_gone.join(", "),
                total.longest.as_millis(),
                total.outage.as_millis(),
                total.lost,
                if total.errors.is_empty() {
                    String::new()
                } else {
                    format!(" | e.g. {}", total.errors.join(" / "))
                }
            );
        }
    }
    println!("  ({} s in all)", started.elapsed().as_secs());
}
