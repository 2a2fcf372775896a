//! Proves the integration-test fixture (tests/common) itself; never runs the daemon.
mod common;

use common::*;
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Every pid the cluster owns right now: postmasters, their children, PgBouncer.
fn cluster_pids(c: &Cluster) -> Vec<u32> {
    let mut v = Vec::new();
    for i in 1..=c.len() {
        if let Some(p) = c.postmaster_pid(i)
            && pid_alive(p)
        {
            v.push(p);
            v.extend(children_of(p));
        }
    }
    v.extend(c.bouncer_pid());
    v
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn assert_gone(root: &Path, pids: &[u32]) {
    assert!(
        !root.exists() || std::env::var("REBOUNCER_KEEP_TMP").is_ok(),
        "{} still exists",
        root.display()
    );
    let left = pgrep_f(&root.to_string_lossy());
    assert!(
        left.is_empty(),
        "processes left for {}: {left:?}",
        root.display()
    );
    let alive: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(
        alive.is_empty(),
        "cluster processes still alive after drop: {alive:?}"
    );
}

#[test]
fn roles_routing_and_manual_switch() {
    let t0 = Instant::now();
    let c = Cluster::start_default();
    eprintln!(
        "[selftest] default cluster (1 primary + 2 standbys + pgbouncer) up in {:.2?}",
        c.startup
    );

    assert_eq!(c.len(), 3);
    let ports: HashSet<u16> = [c.port(1), c.port(2), c.port(3), c.bouncer_port()].into();
    assert_eq!(ports.len(), 4, "ports must differ");
    assert_eq!(c.in_recovery(1), Ok(false), "pg1 is the primary");
    assert_eq!(c.in_recovery(2), Ok(true), "pg2 is a standby");
    assert_eq!(c.in_recovery(3), Ok(true), "pg3 is a standby");
    assert_eq!(
        c.query_db(3, "appdb", "SELECT count(*) FROM t"),
        Ok("0".into()),
        "standbys have appdb.t"
    );

    // Initially the managed symlink points at a standby's file.
    assert_eq!(c.symlink_target(), c.node_file(2));
    assert_eq!(c.symlink_node(), Some(2));
    assert_eq!(c.bouncer_target_node(), Some(2));
    for i in 1..=3 {
        let ini = std::fs::read_to_string(c.node_file(i)).unwrap();
        assert!(ini.contains(&format!(
            "postgres = host=127.0.0.1 port={} dbname=postgres",
            c.port(i)
        )));
        assert!(!ini.contains("ignore_startup_parameters"));
    }
    assert_eq!(
        c.bouncer_query("postgres", "SELECT inet_server_port(), pg_is_in_recovery()"),
        Ok(format!("{}|t", c.port(2)))
    );
    let err = c.bouncer_write("via-pg2").unwrap_err();
    assert!(
        err.contains("read-only transaction"),
        "write through pgbouncer → pg2 should fail read-only: {err}"
    );
    eprintln!("[selftest] write through pgbouncer while it points at pg2: {err}");

    // Manual switch: repoint the symlink, RELOAD.
    c.set_symlink(1);
    assert_eq!(c.symlink_target(), c.node_file(1));
    c.admin("RELOAD").unwrap();
    c.wait_until(Duration::from_secs(5), "pgbouncer to point at pg1", |c| {
        c.bouncer_target_node() == Some(1)
    });
    assert_eq!(c.bouncer_write("via-pg1"), Ok(1));
    c.wait_until(
        Duration::from_secs(10),
        "row replicated to pg2 and pg3",
        |c| {
            (2..=3).all(|i| {
                c.query_db(i, "appdb", "SELECT count(*) FROM t WHERE node = 'via-pg1'")
                    .as_deref()
                    == Ok("1")
            })
        },
    );
    let dbs = c.admin("SHOW DATABASES").unwrap();
    assert!(
        dbs.lines()
            .any(|l| l.starts_with(&format!("appdb|127.0.0.1|{}|", c.port(1)))),
        "{dbs}"
    );

    // The daemon's config file.
    let cfg = c.write_rebouncer_config(1, 2, "; extra\n");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let want = format!(
        "[global]\npgbouncer={}\nsymlink={}\nconfigdir={}\ninterval=1\ntimeout=2\n; extra\n\n[servers]\npg1={}\npg2={}\npg3={}\n",
        c.pgbouncer_conninfo(),
        c.symlink().display(),
        c.configdir().display(),
        c.conninfo(1),
        c.conninfo(2),
        c.conninfo(3)
    );
    assert_eq!(text, want);
    assert_eq!(
        c.conninfo(2),
        format!(
            "host=127.0.0.1 port={} dbname=postgres user=postgres sslmode=disable",
            c.port(2)
        )
    );

    // log_connections is on and fixture connections are tagged.
    assert!(
        c.node_log(1).contains("application_name=rebouncer-fixture"),
        "{}",
        c.node_log(1)
    );

    // Port allocator hands out distinct, bindable ports.
    let many: HashSet<u16> = (0..200).map(|_| alloc_port()).collect();
    assert_eq!(many.len(), 200);
    assert!(!many.iter().any(|p| ports.contains(p)));

    // wait_until reports what it waited for.
    let e = std::panic::catch_unwind(|| {
        wait_until(Duration::from_millis(200), "the impossible", || false)
    })
    .unwrap_err();
    let msg = e.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains("the impossible") && msg.contains("timed out after"),
        "{msg}"
    );

    let root = c.root().to_path_buf();
    let pids = cluster_pids(&c);
    assert!(
        pids.len() >= 3 * 5,
        "expected postmasters with children: {pids:?}"
    );
    let t = Instant::now();
    drop(c);
    eprintln!(
        "[selftest] teardown {:.2?}; whole test {:.2?}",
        t.elapsed(),
        t0.elapsed()
    );
    assert_gone(&root, &pids);
}

#[test]
fn failover_hang_kill_and_bouncer_restart() {
    let t0 = Instant::now();
    let c = Cluster::start(Opts::default().link(Link::Node(1)));
    eprintln!("[selftest] cluster linked to pg1 up in {:.2?}", c.startup);
    assert_eq!(c.bouncer_write("first"), Ok(1));

    // A hung server: TCP accepts, nothing answers; psql gives up after PGCONNECT_TIMEOUT=3.
    c.sigstop(2);
    let pm = c.postmaster_pid(2).unwrap();
    let kids = children_of(pm);
    assert!(kids.len() >= 4, "postmaster children: {kids:?}");
    for p in std::iter::once(pm).chain(kids.iter().copied()) {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        assert_eq!(state, "T", "pid {p} should be stopped: {stat}");
    }
    assert!(port_open(c.port(2)), "kernel still accepts connections");
    let t = Instant::now();
    let r = c.query_timeout(2, "SELECT 1", Duration::from_secs(8));
    eprintln!(
        "[selftest] query on SIGSTOPped pg2: {r:?} after {:.2?}",
        t.elapsed()
    );
    assert!(r.is_err());
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "should have hung until the connect timeout"
    );
    c.sigcont(2);
    c.wait_until(Duration::from_secs(10), "pg2 answers after SIGCONT", |c| {
        c.is_up(2)
    });
    assert!(
        kids.iter().all(|p| pid_alive(*p)),
        "children survive STOP/CONT"
    );

    // kill -9 and restart a standby.
    c.kill9(3);
    assert!(!port_open(c.port(3)));
    c.start_node(3);
    assert_eq!(c.in_recovery(3), Ok(true));

    // Failover: primary down, promote pg2, repoint PgBouncer.
    c.stop_fast(1);
    assert!(c.query(1, "SELECT 1").is_err());
    let t = Instant::now();
    let e = c
        .bouncer_query_timeout("appdb", "SELECT 1", Duration::from_secs(2))
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3));
    eprintln!("[selftest] write through pgbouncer → stopped pg1: {e}");
    c.promote(2);
    assert_eq!(c.in_recovery(2), Ok(false));
    c.set_symlink(2);
    c.admin("RELOAD").unwrap();
    c.wait_until(Duration::from_secs(5), "pgbouncer to point at pg2", |c| {
        c.bouncer_target_node() == Some(2)
    });
    let t = Instant::now();
    let first = c.bouncer_write("after-failover");
    if first != Ok(2) {
        eprintln!("[selftest] first write after switch: {first:?}");
        c.wait_until(
            Duration::from_secs(10),
            "write through pgbouncer lands on pg2",
            |c| c.bouncer_write("after-failover") == Ok(2),
        );
    }
    eprintln!(
        "[selftest] write lands on promoted pg2 {:.2?} after the switch",
        t.elapsed()
    );

    // PgBouncer down and back (it reads the symlink again at start).
    let bp = c.bouncer_port();
    c.bouncer_stop();
    assert!(!c.bouncer_running());
    assert!(!port_open(bp));
    assert!(c.admin("SHOW VERSION").is_err());
    assert!(c.bouncer_write("bouncer-down").is_err());
    c.bouncer_start();
    assert_eq!(c.bouncer_write("bouncer-back"), Ok(2));
    c.bouncer_kill();
    c.bouncer_start();
    assert_eq!(c.bouncer_target_node(), Some(2));

    // The old primary comes back as a second master (split-brain material).
    c.start_node(1);
    assert_eq!(c.in_recovery(1), Ok(false));
    assert_eq!(c.in_recovery(2), Ok(false));
    c.stop_immediate(3);
    assert!(!c.is_up(3));

    let root = c.root().to_path_buf();
    let pids = cluster_pids(&c);
    drop(c);
    eprintln!("[selftest] whole failover test {:.2?}", t0.elapsed());
    assert_gone(&root, &pids);
}

#[test]
fn tls_dummy_link_and_teardown_after_panic() {
    let t0 = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let c = Cluster::start(
            Opts::default()
                .standbys(1)
                .tls(true)
                .link(Link::Dummy)
                .bouncer(false),
        );
        eprintln!(
            "[selftest] tls cluster (1 standby, pgbouncer not started) up in {:.2?}",
            c.startup
        );
        let sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
        assert_eq!(
            psql_conninfo(&c.conninfo_ssl(1, "verify-full"), sql, QUERY_TIMEOUT),
            Ok("t".into())
        );
        assert_eq!(
            psql_conninfo(&c.conninfo_ssl(2, "require"), sql, QUERY_TIMEOUT),
            Ok("t".into())
        );
        assert_eq!(
            c.query(1, sql),
            Ok("f".into()),
            "conninfo() is sslmode=disable"
        );
        assert!(c.cert_path().unwrap().exists());

        assert_eq!(c.symlink_target(), c.dummy_file());
        assert_eq!(c.symlink_node(), None);
        assert!(!c.bouncer_running());
        assert!(
            c.admin("SHOW VERSION").is_err(),
            "pgbouncer down at start-up"
        );
        c.bouncer_start();
        assert!(c.admin("SHOW VERSION").unwrap().contains("PgBouncer"));
        assert_eq!(c.bouncer_target_port(), None);
        let e = c.bouncer_query("postgres", "SELECT 1").unwrap_err();
        assert!(e.contains("no such database"), "{e}");

        // A taken port is reported (Cluster::start retries with a new one in that case).
        c.bouncer_stop();
        let hold = std::net::TcpListener::bind(("127.0.0.1", c.bouncer_port())).unwrap();
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.bouncer_start()))
            .unwrap_err();
        assert!(
            panic_text(&e).contains("Address already in use"),
            "{}",
            panic_text(&e)
        );
        drop(hold);
        c.bouncer_start();
        c.stop_fast(2);
        let hold = std::net::TcpListener::bind(("127.0.0.1", c.port(2))).unwrap();
        let e =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.start_node(2))).unwrap_err();
        assert!(
            panic_text(&e).contains("Address already in use"),
            "{}",
            panic_text(&e)
        );
        drop(hold);
        c.start_node(2);
        assert_eq!(c.in_recovery(2), Ok(true));

        // Leave a hung server behind: teardown must still clean up.
        c.sigstop(2);
        tx.send((c.root().to_path_buf(), cluster_pids(&c))).unwrap();
        panic!("deliberate panic: the fixture must still tear everything down");
    });
    assert!(h.join().is_err(), "the thread should have panicked");
    let (root, pids) = rx.recv().unwrap();
    assert_gone(&root, &pids);
    eprintln!("[selftest] tls/panic test {:.2?}", t0.elapsed());
}
