//! SIGHUP re-reads the configuration: a valid one takes effect without a restart, an
//! invalid one is refused and the running one stays. Real PostgreSQL 15 primary +
//! streaming standbys, real PgBouncer.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Cluster;

const SHORT: Duration = Duration::from_secs(20);

fn nodes(d: &common::Daemon) -> String {
    d.http_get("/nodes").unwrap_or_default()
}

fn metric(d: &common::Daemon, series: &str) -> Option<String> {
    let text = d.http_get("/metrics").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_string)
}

/// Backend pids of rebouncer's monitoring sessions on server `i`, oldest first (the kept
/// one; a fresh check may add a short-lived one).
fn monitor_backends(c: &Cluster, i: usize) -> Vec<String> {
    c.query(
        i,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'rebouncer' AND pid <> pg_backend_pid() ORDER BY backend_start",
    )
    .unwrap_or_default()
    .lines()
    .map(|l| l.trim().to_string())
    .filter(|l| !l.is_empty())
    .collect()
}

/// "RELOAD command issued" lines in PgBouncer's log: one per RELOAD rebouncer sent.
fn bouncer_reloads(c: &Cluster) -> usize {
    c.bouncer_log().matches("RELOAD command issued").count()
}

#[test]
fn sighup_with_a_good_config_adds_and_removes_servers_without_a_restart() {
    let c = Cluster::start_default();
    let servers = c.servers();
    let cfg = c.write_rebouncer_config_with(1, 2, "", &servers[..2]);
    let mut d = c.daemon(&cfg);
    c.wait_settled_on_pg1(&mut d);
    d.wait_for(SHORT, "pg1 and pg2 checked", |d| {
        nodes(d) == "pg1: master\npg2: standby\n"
    });
    let pid = d.pid();
    let bouncer_pid = c.bouncer_pid();
    let reloads = bouncer_reloads(&c);
    let switches = metric(&d, "rebouncer_switches_total{reason=\"failover\"}");
    let kept_on_pg1 = monitor_backends(&c, 1);
    assert!(!kept_on_pg1.is_empty(), "rebouncer keeps a session on pg1");
    assert!(!monitor_backends(&c, 2).is_empty());
    assert!(
        monitor_backends(&c, 3).is_empty(),
        "pg3 is not configured yet"
    );

    // pg2 removed, pg3 added.
    c.write_rebouncer_config_with(1, 2, "", &[servers[0].clone(), servers[2].clone()]);
    common::signal(&pid.to_string(), "HUP").unwrap();
    d.wait_for(SHORT, "pg3 on /nodes, pg2 gone", |d| {
        nodes(d) == "pg1: master\npg3: standby\n"
    });
    assert!(d.is_running(), "no restart");
    assert_eq!(d.pid(), pid);
    let log = d.log();
    assert!(
        log.contains("configuration reloaded from")
            && log.contains("server(s) pg3 added; server(s) pg2 removed"),
        "{log}"
    );
    assert_eq!(
        metric(&d, "rebouncer_config_reloads_total{result=\"ok\"}").as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&d, "rebouncer_config_reloads_total{result=\"failed\"}").as_deref(),
        Some("0")
    );
    let root = d.http_get("/").unwrap();
    assert!(
        root.contains("Last config reload: ")
            && root.contains("server(s) pg3 added; server(s) pg2 removed"),
        "{root}"
    );
    assert!(
        root.contains("PgBouncer points at: pg1 (confirmed by PgBouncer)"),
        "{root}"
    );
    // The removed server's session closes; pg3 gets one; pg1 keeps its own.
    common::wait_until(SHORT, "pg2's monitoring session closed", || {
        monitor_backends(&c, 2).is_empty()
    });
    assert!(!monitor_backends(&c, 3).is_empty());
    assert_eq!(
        monitor_backends(&c, 1).first(),
        kept_on_pg1.first(),
        "pg1's kept session is the same backend"
    );
    // PgBouncer untouched: the same process, no RELOAD, still on pg1.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.bouncer_pid(), bouncer_pid);
    assert_eq!(bouncer_reloads(&c), reloads, "no RELOAD sent to PgBouncer");
    assert_eq!(c.symlink_node(), Some(1));
    assert_eq!(c.bouncer_target_node(), Some(1));
    assert_eq!(
        metric(&d, "rebouncer_switches_total{reason=\"failover\"}"),
        switches
    );
    assert!(
        d.nagios().starts_with("OK: 1 master (pg1"),
        "{}",
        d.nagios()
    );

    // The new server is really monitored: a failover to it is followed.
    c.stop_fast(1);
    c.promote(3);
    d.wait_for(SHORT, "failover to the added pg3", |_| {
        c.symlink_node() == Some(3) && c.bouncer_target_node() == Some(3)
    });
}

#[test]
fn sighup_with_a_bad_config_is_refused_and_the_old_one_keeps_running() {
    let c = Cluster::start_default();
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);
    c.wait_settled_on_pg1(&mut d);
    d.wait_for(SHORT, "every server checked", |d| {
        nodes(d) == "pg1: master\npg2: standby\npg3: standby\n"
    });
    let pid = d.pid();
    let before = nodes(&d);

    // An unparsable interval and pg3 removed: none of it may apply.
    let servers = c.servers();
    let bad = c
        .rebouncer_config_text(1, 2, "", &servers[..2])
        .replace("interval=1\n", "interval=often\n");
    std::fs::write(&cfg, bad).unwrap();
    // What `rebouncer -check` (and a start) says about this file.
    let check = Command::new(common::rebouncer_bin())
        .arg("-check")
        .arg(format!("-config={}", cfg.display()))
        .current_dir(c.root())
        .output()
        .unwrap();
    assert!(!check.status.success());
    let error = String::from_utf8_lossy(&check.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(error.starts_with("config error: "), "{error}");

    common::signal(&pid.to_string(), "HUP").unwrap();
    d.wait_for(SHORT, "the reload refused in the log", |d| {
        d.log().contains("configuration reload refused")
    });
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("configuration reload refused"))
        .unwrap();
    assert!(
        line.ends_with(&format!(
            "configuration reload refused, the running configuration stays: {error}"
        )),
        "the same one-line error as at start:\n{line}\n{error}"
    );
    assert!(d.is_running());
    assert_eq!(d.pid(), pid);
    assert_eq!(
        metric(&d, "rebouncer_config_reloads_total{result=\"failed\"}").as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&d, "rebouncer_config_last_reload_successful").as_deref(),
        Some("0")
    );
    let root = d.http_get("/").unwrap();
    assert!(
        root.contains("FAILED, the running configuration stays: config error"),
        "{root}"
    );
    // The old configuration keeps running: three servers, rounds every second.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(nodes(&d), before);
    // The broken file would stop the next start: the monitoring says so.
    let n = d.nagios();
    assert!(
        n.starts_with("WARNING: configuration reload at ")
            && n.contains(
                "refused, the running configuration stays but a restart would fail: config error"
            ),
        "{n}"
    );
    assert_eq!(c.symlink_node(), Some(1));
    assert!(!monitor_backends(&c, 3).is_empty(), "pg3 still monitored");

    // Fixed, it applies.
    c.write_rebouncer_config_with(1, 2, "", &servers[..2]);
    common::signal(&pid.to_string(), "HUP").unwrap();
    d.wait_for(SHORT, "pg3 removed by the good reload", |d| {
        nodes(d) == "pg1: master\npg2: standby\n"
    });
    assert_eq!(
        metric(&d, "rebouncer_config_last_reload_successful").as_deref(),
        Some("1")
    );
    d.wait_for(SHORT, "/nagios OK again", |d| d.nagios().starts_with("OK"));
}

#[test]
fn sighup_reopens_the_log_file_first_then_reloads_an_unchanged_config() {
    // logrotate's `create`: the file is moved away, then SIGHUP.
    let c = Cluster::start_default();
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);
    c.wait_settled_on_pg1(&mut d);
    let log = d.cmd.logfile.clone().unwrap();
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    common::signal(&d.pid().to_string(), "HUP").unwrap();
    d.wait_for(SHORT, "the reload in the new log file", |d| {
        d.log().contains("configuration reloaded from")
    });
    let new = d.log();
    let reopened = new.find("log file").expect("reopened line in the new file");
    let reloaded = new.find("configuration reloaded from").unwrap();
    assert!(reopened < reloaded, "{new}");
    assert!(new.contains(": no changes"), "{new}");
    assert!(
        !std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("configuration reloaded")
    );
    assert!(d.nagios().starts_with("OK"), "{}", d.nagios());
    assert_eq!(c.symlink_node(), Some(1));
}

#[test]
fn a_changed_pgbouncer_line_is_used_live_and_a_new_symlink_is_not() {
    let c = Cluster::start_default();
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);
    c.wait_settled_on_pg1(&mut d);
    let good = std::fs::read_to_string(&cfg).unwrap();
    let closed = common::alloc_port();
    let elsewhere = c.root().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let text = good
        .replace(
            &format!("port={}", c.bouncer_port()),
            &format!("port={closed}"),
        )
        .replace(
            &format!("symlink={}", c.symlink().display()),
            &format!("symlink={}/pgbouncer.ini", elsewhere.display()),
        );
    assert_ne!(text, good);
    std::fs::write(&cfg, text).unwrap();
    common::signal(&d.pid().to_string(), "HUP").unwrap();
    // The routes are checked through the new console at the next round: it fails.
    d.wait_for(SHORT, "the new admin console used", |d| {
        d.log().lines().any(|l| {
            l.contains("cannot check where PgBouncer routes") && l.contains(&format!(":{closed}"))
        })
    });
    let log = d.log();
    assert!(
        log.contains("configuration reload: NOT applied, needs a restart: symlink (the file says"),
        "{log}"
    );
    let root = d.http_get("/").unwrap();
    assert!(
        root.contains("Config reload NOT applied (needs a restart): symlink"),
        "{root}"
    );
    assert_eq!(c.symlink_node(), Some(1), "the running symlink is kept");
    assert!(!elsewhere.join("pgbouncer.ini").exists());
    // Back to the right console: confirmed again.
    std::fs::write(&cfg, &good).unwrap();
    common::signal(&d.pid().to_string(), "HUP").unwrap();
    d.wait_for(SHORT, "the console restored", |d| {
        d.log()
            .contains(&format!("pgbouncer 127.0.0.1:{closed} -> 127.0.0.1:"))
    });
    assert!(
        d.nagios().starts_with("OK: 1 master (pg1"),
        "{}",
        d.nagios()
    );
}
