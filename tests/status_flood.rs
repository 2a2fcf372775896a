//! The status web server must never take the resources the checks and the switch need,
//! nor stop answering because idle sockets hold its slots. Any local process can open
//! connections to the status port; the daemon runs under systemd's default limit of
//! 1024 open files.
//! Real PostgreSQL primary + standby, real PgBouncer.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Opts};

const SHORT: Duration = Duration::from_secs(20);

/// How many idle connections the flood opens: more than the daemon's 1024 descriptors.
const FLOOD: usize = 1100;

/// The open-files limit systemd gives a service by default (soft; we make it the hard
/// limit too so the daemon cannot raise it).
const DAEMON_NOFILE: u32 = 1024;

/// `(soft, hard)` "Max open files" of a process, from /proc.
fn nofile_limit(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-files line in /proc/{pid}/limits:\n{text}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// The test itself holds the whole flood: make sure its own limit allows that. Raising a
/// hard limit needs root, which is how these tests run here and in CI.
fn make_room_for_the_flood() {
    let need = (FLOOD + 500) as u64;
    let me = std::process::id();
    let (soft, hard) = nofile_limit(me);
    if soft >= need {
        return;
    }
    let new_hard = hard.max(need);
    let out = Command::new("prlimit")
        .arg(format!("--pid={me}"))
        .arg(format!("--nofile={need}:{new_hard}"))
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        out.status.success(),
        "the test needs {need} open files for its flood (limit {soft}:{hard}); prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How many of a process's descriptors are sockets.
fn sockets_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| fs::read_link(e.path()).ok())
                .filter(|t| t.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

/// Opens `n` TCP connections at once and sends nothing on them. All the SYNs arrive
/// together, so many overflow the listen backlog and are sent again by the kernel after
/// 1 s and 3 s: a connection not established within 4 s (the daemon's backlog stays
/// full because it accepts no more) is given up. The point is to hold as many as the
/// kernel and the daemon will take. Returns the connections held and how many were given up.
fn open_idle(addr: &str, n: usize) -> (Vec<TcpStream>, usize) {
    let sa: SocketAddr = addr.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..n {
            connecting.spawn(tokio::time::timeout(
                Duration::from_secs(4),
                tokio::net::TcpStream::connect(sa),
            ));
        }
        let mut held = Vec::with_capacity(n);
        let mut given_up = 0;
        while let Some(r) = connecting.join_next().await {
            match r.unwrap() {
                Ok(Ok(s)) => held.push(s.into_std().unwrap()),
                _ => given_up += 1,
            }
        }
        (held, given_up)
    })
}

/// Starts the daemon under `prlimit --nofile=LIMIT:LIMIT` (soft and hard, so it cannot
/// raise it) and waits until its status server answers.
fn daemon_with_nofile(c: &Cluster, cfg: &std::path::Path, limit: u32) -> common::Daemon {
    let mut cmd = c.daemon_cmd(cfg);
    let mut args = vec![
        format!("--nofile={limit}:{limit}"),
        "--".to_string(),
        cmd.bin.display().to_string(),
    ];
    args.extend(cmd.args());
    cmd.raw_args = Some(args);
    cmd.bin = "prlimit".into();
    let d = cmd.start();
    assert_eq!(
        nofile_limit(d.pid()),
        (limit as u64, limit as u64),
        "the daemon runs under the limit"
    );
    d
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces) in parentheses:
    // state is field 3, utime 14, stime 15.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_flood_of_idle_status_connections_does_not_stop_a_failover() {
    make_room_for_the_flood();
    let c = Cluster::start(Opts::default().standbys(1));
    let cfg = c.write_rebouncer_config(1, 2, "");
    // The way systemd runs it by default: 1024 open files at most.
    let mut d = daemon_with_nofile(&c, &cfg, DAEMON_NOFILE);
    d.wait_for(SHORT, "PgBouncer switched to pg1 at start-up", |d| {
        c.symlink_node() == Some(1) && d.nagios().starts_with("OK")
    });

    let (held, given_up) = open_idle(&d.http_addr, FLOOD);
    // With the flood in place, fresh requests are answered: the idle connections give
    // their slots away. A request that waited behind them (up to the 5 s header timeout)
    // runs into the client's 2 s timeout instead.
    let mut took = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let answer = d.http("GET", "/nodes");
        took.push(t.elapsed());
        let (code, _, body) = answer.unwrap_or_else(|e| {
            panic!(
                "GET /nodes with {} idle connections held: no answer ({e})\n{}",
                held.len(),
                d.diagnostics()
            )
        });
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("pg1: master\n"), "{body}");
    }
    eprintln!(
        "GET /nodes with {} idle connections held: answered in {took:.1?}, one after the other",
        held.len()
    );
    took.sort();
    eprintln!("median {:.1?}", took[took.len() / 2]);
    let sockets = sockets_of(d.pid());
    eprintln!(
        "flood: {} connections held, {given_up} not established within 4 s; the daemon has {sockets} sockets open",
        held.len()
    );

    c.stop_fast(1);
    c.promote(2);
    let promoted = Instant::now();
    d.wait_for(
        SHORT,
        "PgBouncer switched to pg2 with the flood held",
        |_| c.bouncer_target_node() == Some(2),
    );
    eprintln!(
        "with {} idle status connections held: promotion to PgBouncer on pg2 in {} ms",
        held.len(),
        promoted.elapsed().as_millis()
    );
    assert_eq!(c.symlink_node(), Some(2));
    let sockets_during = sockets_of(d.pid());
    // The pages tell the truth while the flood is still held.
    d.wait_for(SHORT, "/nagios to show pg2 with the flood held", |d| {
        d.nagios().contains("1 master (pg2")
    });
    let nodes = d.http_get("/nodes");
    assert!(
        nodes
            .as_ref()
            .is_ok_and(|n| n.starts_with("pg1: down\npg2: master\n")),
        "/nodes with the flood held: {nodes:?}"
    );
    assert!(
        sockets_during < 200,
        "the daemon holds {sockets_during} sockets during the flood: the status server is not bounded"
    );

    // Once the flood is gone, the status page answers at once and tells the truth.
    drop(held);
    d.wait_for(
        SHORT,
        "/nagios to answer after the flood and show pg2",
        |d| d.nagios().contains("1 master (pg2"),
    );
    assert!(d.is_running());
    let log = d.log();
    assert!(
        !log.contains("Too many open files"),
        "the daemon ran out of descriptors:\n{log}"
    );
    assert!(log.contains("master changed from pg1 to pg2"), "{log}");
}

/// Reads until the server closes the connection, sending one more header byte every
/// second as a slow client would; Err after `limit`. Returns what the server sent and
/// how long it took.
fn wait_for_close(s: &mut TcpStream, limit: Duration) -> Result<(Vec<u8>, Duration), String> {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if t.elapsed() > limit {
            return Err(format!(
                "connection still open after {:?}; server sent {:?}",
                t.elapsed(),
                String::from_utf8_lossy(&got)
            ));
        }
        match s.read(&mut buf) {
            Ok(0) => return Ok((got, t.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                // Keep trickling: a header that grows slowly must not keep it open either.
                if s.write_all(b"x").is_err() {
                    return Ok((got, t.elapsed()));
                }
            }
            Err(_) => return Ok((got, t.elapsed())),
        }
    }
}

#[test]
fn slow_and_idle_clients_are_disconnected_and_only_get_and_head_are_served() {
    let c = Cluster::start(Opts::default().standbys(0).bouncer(false));
    let cfg = c.write_rebouncer_config(1, 2, "");
    let d = c.daemon(&cfg);
    let sa: SocketAddr = d.http_addr.parse().unwrap();

    // Half a request, then a header byte now and then: disconnected by the header timeout.
    let mut s = TcpStream::connect(sa).unwrap();
    s.write_all(b"GET /nodes HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let (sent, took) = wait_for_close(&mut s, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("half a request: {e}\n{}", d.diagnostics()));
    eprintln!(
        "half a request: closed after {took:.1?}, server sent {:?}",
        String::from_utf8_lossy(&sent)
    );

    // A keep-alive connection left idle after a complete request is closed too.
    let mut s = TcpStream::connect(sa).unwrap();
    s.write_all(b"GET /nodes HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let t = Instant::now();
    let mut rest = Vec::new();
    let idle_closed = loop {
        if t.elapsed() > Duration::from_secs(15) {
            break false;
        }
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
    };
    assert!(
        idle_closed,
        "an idle keep-alive connection is still open after {:?}",
        t.elapsed()
    );
    eprintln!("idle keep-alive: closed after {:.1?}", t.elapsed());

    // GET and HEAD only, on every path.
    for path in ["/", "/nodes", "/nagios", "/whatever"] {
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
            let (code, head, _) = d.http(method, path).unwrap();
            assert_eq!(code, 405, "{method} {path}: {head}");
            assert!(
                head.to_ascii_lowercase().contains("\r\nallow: get, head"),
                "{method} {path}: {head}"
            );
        }
        let (code, head, body) = d.http("HEAD", path).unwrap();
        assert_eq!(code, 200, "HEAD {path}: {head}");
        assert_eq!(body, "", "HEAD {path}");
        // No round has run (PgBouncer is down), so /nodes is empty: only the code counts.
        let (code, head, _) = d.http("GET", path).unwrap();
        assert_eq!(code, 200, "GET {path}: {head}");
    }
}

#[test]
fn out_of_descriptors_the_status_server_backs_off_and_says_so_once() {
    // So few descriptors that the status server runs out before its own cap: accept()
    // fails with "Too many open files" while connections wait. It must not spin on that
    // (the checks share its one thread) nor log it at every attempt.
    let c = Cluster::start(Opts::default().standbys(1));
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = daemon_with_nofile(&c, &cfg, 40);
    d.wait_for(SHORT, "PgBouncer switched to pg1 at start-up", |d| {
        c.symlink_node() == Some(1) && d.nagios().starts_with("OK")
    });

    let (held, _) = open_idle(&d.http_addr, 100);
    let needle = "status web server cannot accept connections: Too many open files";
    d.wait_log(SHORT, needle);
    let hz = clock_ticks_per_second();
    let (cpu, t) = (cpu_ticks(d.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(d.pid()) - cpu;
    let wall = t.elapsed();
    eprintln!(
        "out of descriptors: {:.2} s of CPU in {wall:.1?}",
        used as f64 / hz as f64
    );
    // A spinning accept loop would use about all of it; this one sleeps between tries.
    assert!(
        used * 3 < hz * wall.as_secs(),
        "the daemon used {used} ticks of CPU in {wall:?} while out of descriptors: spinning?\n{}",
        d.diagnostics()
    );

    // Once the flood is gone the pages answer again, and the first connection accepted
    // after some quiet seconds says the trouble is over.
    drop(held);
    d.wait_for(SHORT, "/nagios to answer again", |d| {
        d.nagios().starts_with("OK")
    });
    d.wait_for(
        Duration::from_secs(30),
        "the log to say the status server accepts connections again",
        |d| {
            let _ = d.nagios();
            d.log()
                .contains("status web server accepts connections again")
        },
    );
    let log = d.log();
    for l in log.lines().filter(|l| l.contains("status web server")) {
        eprintln!("{l}");
    }
    assert_eq!(log.matches(needle).count(), 1, "{log}");
}
