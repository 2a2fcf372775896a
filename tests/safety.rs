//! Safety under partial, overlapping failures: a stale primary (an old primary that came back on its old timeline) must never get a
//! write, whatever else is down or refusing logins; PgBouncer changed by hand is put back;
//! a server that refuses the monitoring login is not hammered at the fast-round rate.
//! Real PostgreSQL 15 primary + streaming standbys, real PgBouncer, clients writing
//! through PgBouncer.
//!
//! Texts these tests expect from the daemon (operators and their alerting read them):
//! - log: a line naming the stale node (`pg1`), containing `stale primary` and a form of
//!   "refuse" (`refuse`/`refused`/`refusing`);
//! - `/nagios`: starts with `CRITICAL` and contains `stale primary` while the stale
//!   primary accepts connections;
//! - log: a line containing `PgBouncer drifted` that names the node PgBouncer drifted to
//!   (`pg2`) and the master it is put back on (`pg1`);
//! - the log line about a server whose pg_hba.conf rejects the monitoring login must not
//!   suggest TLS (`sslmode=require`, `accepts only TLS`).

mod common;

use std::time::{Duration, Instant};

use common::{BouncerWriter, Cluster, Daemon, Opts, RouteSampler, finally};

const SHORT: Duration = Duration::from_secs(30);

fn nodes(d: &Daemon) -> String {
    d.http_get("/nodes").unwrap_or_default()
}

/// Log lines that contain every one of `words`.
fn lines_with<'a>(log: &'a str, words: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .collect()
}

fn says_refused(line: &str) -> bool {
    let l = line.to_lowercase();
    l.contains("refus")
}

/// The daemon's log says why it refused pg1: a line naming pg1 as a stale primary and
/// saying it refused (to switch to it).
fn assert_log_refuses_stale_pg1(d: &Daemon) {
    let log = d.log();
    let stale = lines_with(&log, &["pg1", "stale primary"]);
    assert!(
        stale.iter().any(|l| says_refused(l)),
        "no log line names pg1 as a \"stale primary\" and says it refused; lines naming \
         pg1 as stale: {stale:#?}\n--- daemon log ---\n{log}"
    );
}

/// pg1 primary, pg2 + pg3 standbys, the daemon (interval=2, timeout=2) started from
/// `cfg`, and PgBouncer switched to pg1.
fn started_on_pg1() -> (Cluster, std::path::PathBuf, Daemon) {
    let c = Cluster::start(Opts::default().standbys(2));
    let cfg = c.write_rebouncer_config(2, 2, "");
    let mut d = c.daemon(&cfg);
    d.wait_for(SHORT, "PgBouncer switched to pg1 at start-up", |_| {
        c.symlink_node() == Some(1) && c.bouncer_target_node() == Some(1)
    });
    (c, cfg, d)
}

/// [`started_on_pg1`]; then the failover: pg1 stopped, pg2 promoted, PgBouncer on pg2;
/// then pg1 started again as it was, an old primary on timeline 1 (pg2 is on timeline 2).
fn failover_then_old_primary_back() -> (Cluster, Daemon, RouteSampler) {
    let (c, _, mut d) = started_on_pg1();
    c.fail_over_to_pg2(&mut d, SHORT);
    d.wait_for(SHORT, "a write through PgBouncer landing on pg2", |_| {
        c.bouncer_write("after failover") == Ok(2)
    });
    // Timelines as PostgreSQL reports them (see pg-privileges.txt): pg2 on 2.
    let tli = |i| {
        c.query(
            i,
            "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
        )
        .unwrap_or_else(|e| format!("<{e}>"))
    };
    assert_eq!(tli(2), "00000002");
    // From here on PgBouncer must never route to pg1.
    let sampler = c.start_route_sampler();
    c.start_node(1);
    assert_eq!(c.in_recovery(1), Ok(false), "pg1 is back as a master");
    assert_eq!(tli(1), "00000001", "pg1 is back on the old timeline");
    // The daemon has seen it (as a master on an old timeline: a stale primary).
    d.wait_for(SHORT, "/nodes showing pg1 up again", pg1_seen_up);
    (c, d, sampler)
}

/// The nodes PgBouncer routed to while `sampler` ran, each run of one route told once.
fn routes_seen(sampler: RouteSampler) -> Vec<Option<usize>> {
    let mut routed: Vec<Option<usize>> = sampler.stop().into_iter().map(|s| s.1).collect();
    routed.dedup();
    routed
}

/// Stops the client `writer` (writing rows tagged `tag`) and the `sampler`: no write
/// reached the stale primary pg1, as the client saw it or in pg1's rows, and PgBouncer
/// was never routed nor linked to it.
fn assert_pg1_never_written(
    c: &Cluster,
    d: &Daemon,
    tag: &str,
    writer: BouncerWriter,
    sampler: RouteSampler,
) {
    let writes = writer.stop();
    let routed = routes_seen(sampler);
    eprintln!("{}", writes.summary());

    let on_pg1_rows = c.rows_tagged(1, tag).expect("count rows on pg1");
    eprintln!("PgBouncer routes seen (deduplicated): {routed:?}");
    assert_eq!(
        (writes.on(1), on_pg1_rows),
        (0, 0),
        "client writes reached the stale primary pg1 (client view, rows on pg1): {}\n{}",
        writes.summary(),
        d.diagnostics()
    );
    assert!(
        !routed.contains(&Some(1)),
        "PgBouncer was pointed at the stale primary pg1: routes {routed:?}\n{}",
        d.diagnostics()
    );
    assert_ne!(c.symlink_node(), Some(1));
}

/// /nodes shows pg1 up again: any state but `down`, since what the returning old primary
/// is called on /nodes is not what these tests are about.
fn pg1_seen_up(d: &Daemon) -> bool {
    nodes(d)
        .lines()
        .next()
        .is_some_and(|l| l.starts_with("pg1: ") && !l.ends_with("down"))
}

/// Stale primary, new primary hung. The hazard: once pg2 hangs it counts as down, pg1 looks
/// like the only master, and a daemon that forgot pg1 is on an old timeline switches
/// PgBouncer to it, so that every write of the next seconds lands on the stale primary.
#[test]
fn stale_primary_never_gets_writes_while_the_new_primary_hangs() {
    let (c, mut d, sampler) = failover_then_old_primary_back();
    let tag = "stale-hung";
    let writer = c.start_writer(tag, Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(1));

    c.sigstop(2);
    let hung = Instant::now();
    let nagios_while_hung = finally(
        || {
            // 15 s of pg2 hung while the client keeps writing; /nagios read at 10 s
            // (pg2 is down by then: timeout=2).
            let mut seen = String::new();
            while hung.elapsed() < Duration::from_secs(15) {
                if seen.is_empty() && hung.elapsed() >= Duration::from_secs(10) {
                    seen = d.nagios();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        },
        || c.sigcont(2),
    );
    eprintln!("/nagios 10 s into the hang: {}", nagios_while_hung.trim());
    // And a while after pg2 is back.
    d.wait_for(SHORT, "pg2 answering as master again after SIGCONT", |d| {
        nodes(d).contains("pg2: master")
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_pg1_never_written(&c, &d, tag, writer, sampler);
    assert_eq!(c.bouncer_target_node(), Some(2));

    assert_log_refuses_stale_pg1(&d);
    // pg1 still runs: an alarm, with pg2 hung and after it is back.
    assert!(
        nagios_while_hung.starts_with("CRITICAL") && nagios_while_hung.contains("stale primary"),
        "/nagios while pg2 hung and the stale primary pg1 ran: {nagios_while_hung}"
    );
    assert!(c.is_up(1));
    let n = d.nagios();
    assert!(
        n.starts_with("CRITICAL") && n.contains("stale primary"),
        "/nagios while the stale primary pg1 runs: {n}"
    );
}

/// Split brain where the true primary refuses new logins. The hazard: the fresh re-check
/// of pg2 fails, pg2 counts as down, and PgBouncer goes to the stale pg1.
#[test]
fn stale_primary_never_gets_writes_while_the_new_primary_refuses_logins() {
    let (c, d, sampler) = failover_then_old_primary_back();
    // PgBouncer holds server connections to pg2 (session pooling keeps them).
    for _ in 0..3 {
        assert_eq!(c.bouncer_write("warm pool"), Ok(2));
    }
    let tag = "stale-refusing";
    let writer = c.start_writer(tag, Duration::from_secs(5));

    c.hba_reject_new_logins(2);
    let since = Instant::now();
    finally(
        || {
            while since.elapsed() < Duration::from_secs(15) {
                std::thread::sleep(Duration::from_millis(200));
            }
        },
        || c.hba_restore(2),
    );
    c.wait_until(SHORT, "pg2 accepting new logins again", |c| {
        !c.login_rejected(2, "postgres")
    });
    assert_pg1_never_written(&c, &d, tag, writer, sampler);
    assert_log_refuses_stale_pg1(&d);
}

/// The symlink pointed at a standby's file by hand and PgBouncer reloaded. Unless the
/// daemon compares PgBouncer's routes with the master's file, PgBouncer stays on the
/// standby (every write fails) while /nagios says OK.
#[test]
fn pgbouncer_changed_by_hand_is_put_back_on_the_master() {
    let c = Cluster::start(Opts::default().standbys(2));
    let cfg = c.write_rebouncer_config(2, 2, "");
    let mut d = c.daemon(&cfg);
    d.wait_for(SHORT, "PgBouncer switched to pg1 at start-up", |d| {
        c.symlink_node() == Some(1)
            && c.bouncer_target_node() == Some(1)
            && d.nagios().starts_with("OK")
    });

    // By hand: link to pg2's file, reload PgBouncer.
    c.set_symlink(2);
    c.bouncer_signal("HUP").unwrap();
    // Either the reload is seen first, or the daemon already repaired (and said so).
    d.wait_for(
        Duration::from_secs(10),
        "PgBouncer routing to pg2 after the hand change (or the drift being reported)",
        |d| c.bouncer_target_node() == Some(2) || d.log().contains("PgBouncer drifted"),
    );
    let changed = Instant::now();
    let repaired = common::poll_until(Duration::from_secs(20), || {
        c.bouncer_target_node() == Some(1) && d.log().contains("PgBouncer drifted")
    });
    assert!(
        repaired,
        "20 s after the hand change: PgBouncer routes to {:?}, symlink -> {:?}, \
         \"PgBouncer drifted\" logged: {}, /nagios: {}\n{}",
        c.bouncer_target_node().map(|n| c.name(n)),
        c.symlink_node().map(|n| c.name(n)),
        d.log().contains("PgBouncer drifted"),
        d.nagios().trim(),
        d.diagnostics()
    );
    eprintln!(
        "hand change repaired {} ms after PgBouncer took it",
        changed.elapsed().as_millis()
    );
    assert_eq!(c.symlink_node(), Some(1));
    assert_eq!(c.bouncer_write("after drift"), Ok(1));
    let log = d.log();
    let drift = lines_with(&log, &["PgBouncer drifted"]);
    assert!(
        drift.iter().any(|l| l.contains("pg2") && l.contains("pg1")),
        "the \"PgBouncer drifted\" line should name where PgBouncer was (pg2) and the \
         master (pg1): {drift:#?}\n{log}"
    );
}

/// No master for 20 s while a standby's pg_hba.conf rejects the monitoring login. Without
/// back-off the fast rounds (every 0.1 s) would try that standby about 190 times in 20 s,
/// filling its log, and a hint chosen from the wrong cause would send the operator after
/// TLS.
#[test]
fn a_refusing_server_is_not_hammered_while_there_is_no_master() {
    let c = Cluster::start(Opts::default().standbys(1));
    // pg2 refuses the daemon's monitoring login (TCP, database postgres) from the start,
    // so there is no kept connection to it. Replication (pg2 -> pg1) is unaffected.
    c.hba_reject_monitoring(2);
    let cfg = c.write_rebouncer_config(2, 2, "");
    let mut d = c.daemon(&cfg);
    d.wait_for(SHORT, "PgBouncer switched to pg1 at start-up", |_| {
        c.symlink_node() == Some(1) && c.bouncer_target_node() == Some(1)
    });
    d.wait_for(SHORT, "pg2 reported down", |d| {
        nodes(d).contains("pg2: down")
    });

    c.stop_fast(1);
    let mark = c.node_log_len(2);
    let start = Instant::now();
    d.wait_for(SHORT, "no master on /nagios", |d| {
        d.nagios().starts_with("CRITICAL")
    });
    while start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let rejected = c.hba_rejections_since(2, mark);
    let received = c.connections_received_since(2, mark);
    eprintln!(
        "pg2 (pg_hba.conf rejects the monitoring login), 20 s without a master at \
         interval=2 timeout=2: {rejected} rejected logins, {received} connections received"
    );
    let log = d.log();
    let pg2_lines = lines_with(&log, &["pg2"]);
    eprintln!("daemon log lines about pg2: {pg2_lines:#?}");
    assert!(rejected > 0, "the log counting works: pg2 was tried at all");
    // With back-off doubling from fast_interval (0.1 s) up to interval (2 s):
    // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 = 3.1 s for the first 5 tries, then one every 2 s:
    // about 5 + 17/2 = 14 in 20 s (a few more when other servers change state), against
    // about 190 without back-off (one per fast round of 0.1 s).
    assert!(
        rejected < 40,
        "pg2 refused {rejected} monitoring logins in 20 s (expected ~14 with back-off)"
    );

    assert!(
        pg2_lines
            .iter()
            .any(|l| l.contains("pg_hba.conf") || l.contains("rejects")),
        "the log should say pg2 rejected the login (pg_hba.conf): {pg2_lines:#?}"
    );
    for l in &pg2_lines {
        assert!(
            !l.contains("sslmode=require") && !l.contains("accepts only TLS"),
            "wrong hint for a pg_hba.conf rejection (the server does not want TLS): {l}"
        );
    }
}

/// The node's line in the Node status part of `/` (`pg2: standby (last checked ...`)
/// gives a state other than `down`.
fn assert_up_on_root(root: &str, n: &str) {
    let line = root
        .lines()
        .find(|l| l.starts_with(&format!("{n}: ")))
        .unwrap_or_else(|| panic!("{n} not on /:\n{root}"));
    let state = line[n.len() + 2..].split_whitespace().next().unwrap_or("");
    assert!(
        state != "down" && state != "not",
        "{n} on / with an unprivileged monitoring role: {line}\n{root}"
    );
}

/// The Go tool's sample configs monitor as an unprivileged role (`user=rebouncer`, no
/// grants): every check must still work, a failover is followed, and the old primary
/// coming back is refused.
#[test]
fn an_unprivileged_monitoring_role_follows_a_failover() {
    let c = Cluster::start(Opts::default().standbys(2));
    c.query(1, "CREATE ROLE rebouncer LOGIN").unwrap();
    for i in 2..=3 {
        c.wait_until(SHORT, "role rebouncer replicated to the standbys", |c| {
            c.query(
                i,
                "SELECT count(*) FROM pg_roles WHERE rolname = 'rebouncer'",
            )
            .as_deref()
                == Ok("1")
        });
    }
    let servers: Vec<(String, String)> = c
        .servers()
        .into_iter()
        .map(|(n, ci)| (n, ci.replace("user=postgres", "user=rebouncer")))
        .collect();
    assert!(servers.iter().all(|(_, ci)| ci.contains("user=rebouncer")));
    let cfg = c.write_rebouncer_config_with(2, 2, "", &servers);
    let mut d = c.daemon(&cfg);
    d.wait_for(SHORT, "PgBouncer switched to pg1 at start-up", |d| {
        c.symlink_node() == Some(1)
            && c.bouncer_target_node() == Some(1)
            && nodes(d) == "pg1: master\npg2: standby\npg3: standby\n"
    });
    let root = d.http_get("/").unwrap();
    for n in ["pg1", "pg2", "pg3"] {
        assert_up_on_root(&root, n);
    }
    assert!(
        c.node_log(2)
            .contains("user=rebouncer database=postgres application_name=rebouncer"),
        "the daemon logs in as rebouncer"
    );

    c.fail_over_until_a_write_lands_on_pg2(&mut d, SHORT, "unprivileged");
    d.wait_for(SHORT, "/nodes after the failover", |d| {
        nodes(d) == "pg1: down\npg2: master\npg3: standby\n"
    });
    let root = d.http_get("/").unwrap();
    for n in ["pg2", "pg3"] {
        assert_up_on_root(&root, n);
    }

    // The old primary comes back: never picked up.
    let sampler = c.start_route_sampler();
    c.start_node(1);
    d.wait_for(SHORT, "pg1 seen up again", pg1_seen_up);
    std::thread::sleep(Duration::from_secs(5));
    let routed = routes_seen(sampler);
    assert!(!routed.contains(&Some(1)), "routes {routed:?}");
    assert_eq!(c.bouncer_write("unprivileged after"), Ok(2));
    assert!(d.nagios().starts_with("CRITICAL"), "{}", d.nagios());
}

/// The rule "remembered across restarts": after the failover
/// the daemon is restarted while the new primary pg2 is down and the old one, pg1, is
/// back on the old timeline as the only master. A daemon that forgot timeline 2 would
/// see a single master and switch to it. (The fixture's daemon runs with
/// `STATE_DIRECTORY=<cluster dir>`, as systemd's `StateDirectory=` would set it, so the
/// state file survives the restart.) A daemon without that memory switches to pg1.
#[test]
fn stale_primary_is_refused_after_a_daemon_restart_while_the_new_primary_is_down() {
    let (c, cfg, mut d) = started_on_pg1();
    c.fail_over_until_a_write_lands_on_pg2(&mut d, SHORT, "after failover");
    d.wait_for(SHORT, "/nodes after the failover", |d| {
        nodes(d) == "pg1: down\npg2: master\npg3: standby\n"
    });
    // A few rounds on timeline 2, so it is remembered.
    std::thread::sleep(Duration::from_secs(5));
    d.stop();
    let first_log = d.log();

    c.stop_fast(2);
    c.start_node(1);
    assert_eq!(c.in_recovery(1), Ok(false));
    let sampler = c.start_route_sampler();
    let tag = "stale-after-restart";
    let writer = c.start_writer(tag, Duration::from_secs(5));
    let mut d = c.daemon(&cfg);
    d.wait_for(SHORT, "/nodes showing pg1 up and pg2 down", |d| {
        pg1_seen_up(d) && nodes(d).contains("pg2: down")
    });
    std::thread::sleep(Duration::from_secs(10));
    let writes = writer.stop();
    let routed = routes_seen(sampler);
    eprintln!("{}; PgBouncer routes seen: {routed:?}", writes.summary());
    let on_pg1_rows = c.rows_tagged(1, tag).expect("count rows on pg1");
    assert_eq!(
        (writes.on(1), on_pg1_rows),
        (0, 0),
        "client writes reached the stale primary pg1 after the daemon restart: {}\n\
         --- first daemon's log ---\n{first_log}\n{}",
        writes.summary(),
        d.diagnostics()
    );
    assert!(!routed.contains(&Some(1)), "routes {routed:?}");
    assert_eq!(c.symlink_node(), Some(2));
    // The restarted daemon's own log says why (the log file is appended to).
    let new_part = d.log()[first_log.len().min(d.log().len())..].to_string();
    assert!(
        lines_with(&new_part, &["pg1", "stale primary"])
            .iter()
            .any(|l| says_refused(l)),
        "the restarted daemon does not say it refused the stale primary pg1:\n{new_part}"
    );
    let n = d.nagios();
    assert!(
        n.starts_with("CRITICAL") && n.contains("stale primary"),
        "/nagios: {n}"
    );
}
