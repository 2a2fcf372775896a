//! What an operator cares about most: PgBouncer follows the one primary, and never an
//! old one. Real PostgreSQL 15 primary + streaming standbys, real PgBouncer.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Daemon, Opts, finally};

const SHORT: Duration = Duration::from_secs(20);

fn nodes(d: &Daemon) -> String {
    d.http_get("/nodes").unwrap_or_default()
}

/// pg1 primary, pg2 + pg3 standbys, the daemon (interval=1, timeout=2) settled on pg1.
fn settled_on_pg1() -> (Cluster, Daemon) {
    let c = Cluster::start_default();
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);
    c.wait_settled_on_pg1(&mut d);
    (c, d)
}

#[test]
fn at_start_up_pgbouncer_is_pointed_at_the_primary() {
    // The symlink starts on pg2, a standby: writes through PgBouncer fail.
    let c = Cluster::start_default();
    assert!(c.bouncer_write("before").is_err(), "pg2 is a standby");
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);
    c.wait_settled_on_pg1(&mut d);

    assert_eq!(c.bouncer_target_node(), Some(1));
    assert_eq!(c.bouncer_write("after").unwrap(), 1);
    assert_eq!(nodes(&d), "pg1: master\npg2: standby\npg3: standby\n");
    assert_eq!(
        d.nagios().trim(),
        "OK: 1 master (pg1, PgBouncer points at it), 2 standbys"
    );
    let root = d.http_get("/").unwrap();
    assert!(
        root.contains("PgBouncer points at: pg1 (confirmed by PgBouncer)"),
        "{root}"
    );
    assert!(root.contains("pg2: standby (last checked "), "{root}");
    // The link target is absolute, as PgBouncer resolves relative ones elsewhere.
    assert!(c.symlink_target().is_absolute());
    assert!(
        d.log().contains("master is pg1; pointing PgBouncer at it")
            || d.log().contains("master changed from pg2 to pg1"),
        "{}",
        d.log()
    );
}

#[test]
fn failover_is_followed_and_writes_land_on_the_new_primary() {
    let (c, mut d) = settled_on_pg1();

    c.stop_fast(1);
    let promoted = Instant::now();
    c.promote(2);
    let mut attempts = 0;
    d.wait_for(SHORT, "a write through PgBouncer landing on pg2", |_| {
        attempts += 1;
        c.bouncer_write("failover") == Ok(2)
    });
    eprintln!(
        "failover at interval=1: promotion to first write on pg2 through PgBouncer took {} ms ({attempts} attempts)",
        promoted.elapsed().as_millis()
    );
    assert_eq!(c.symlink_node(), Some(2));
    d.wait_for(SHORT, "/nodes to show the new roles", |d| {
        nodes(d) == "pg1: down\npg2: master\npg3: standby\n"
    });
    let text = d.nagios();
    assert!(
        text.starts_with("WARNING: 1 server down (pg1); 1 master (pg2)"),
        "{text}"
    );
    assert!(
        d.log().contains("master changed from pg1 to pg2"),
        "{}",
        d.log()
    );
}

#[test]
fn failover_is_followed_without_waiting_for_the_interval() {
    // interval=30: the closed monitoring connection to the old primary starts a round at
    // once, and rounds come fast until a single master is stable again.
    let c = Cluster::start_default();
    let cfg = c.write_rebouncer_config(30, 3, "");
    let mut d = c.daemon(&cfg);
    c.wait_settled_on_pg1(&mut d);

    c.stop_fast(1);
    let promoted = Instant::now();
    c.promote(2);
    // Generous: far below the 30 s interval, far above what it takes.
    d.wait_for(
        Duration::from_secs(15),
        "switch to pg2 long before the 30 s interval",
        |_| c.symlink_node() == Some(2) && c.bouncer_target_node() == Some(2),
    );
    eprintln!(
        "failover at interval=30: promotion to confirmed switch in {} ms",
        promoted.elapsed().as_millis()
    );
    assert!(
        d.log()
            .contains("monitoring connection closed by the server"),
        "{}",
        d.log()
    );
}

/// Over 4 s, the daemon logs in to pg2 (the master PgBouncer is on) twice at the most,
/// and PgBouncer stays on pg2.
fn held_on_pg2_with_few_new_logins(c: &Cluster) {
    let logins = c.monitor_logins(2);
    std::thread::sleep(Duration::from_secs(4));
    let new_logins = c.monitor_logins(2) - logins;
    assert!(
        new_logins <= 2,
        "{new_logins} new monitoring logins to pg2 in 4 s"
    );
    assert_eq!(c.symlink_node(), Some(2));
    assert_eq!(c.bouncer_target_node(), Some(2));
}

#[test]
fn old_primary_coming_back_is_refused_as_a_stale_primary() {
    let (c, mut d) = settled_on_pg1();
    c.fail_over_to_pg2(&mut d, SHORT);

    // The old primary restarts as it was: a second master, on the old timeline.
    c.start_node(1);
    d.wait_for(SHORT, "stale primary on /nagios", |d| {
        d.nagios().starts_with(
            "CRITICAL: stale primary pg1 (timeline 1, the cluster is on 2) accepts connections",
        )
    });
    // Not a split brain: no re-check on new connections at the fast rate.
    held_on_pg2_with_few_new_logins(&c);
    assert_eq!(c.bouncer_write("still on pg2").unwrap(), 2);
    // /nodes keeps the Go tool's words: pg1 does answer as master.
    assert_eq!(nodes(&d), "pg1: master\npg2: master\npg3: standby\n");
    let root = d.http_get("/").unwrap();
    assert!(
        root.contains("Stale primary: pg1 answers as master on timeline 1"),
        "{root}"
    );
    assert!(root.contains("pg2: master (last checked"), "{root}");
    // Said once loudly, not at every round.
    let log = d.log();
    assert_eq!(
        log.matches("stale primary: pg1 answers as master on timeline 1, but the cluster has reached timeline 2")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("split brain"), "{log}");

    // The operator stops the old primary: the condition ends, PgBouncer stays on pg2.
    c.stop_fast(1);
    d.wait_log(SHORT, "stale primary pg1 no longer answers as master");
    assert_eq!(c.symlink_node(), Some(2));
    d.wait_for(SHORT, "/nagios back to a warning", |d| {
        d.nagios().starts_with("WARNING: 1 server down (pg1)")
    });
}

#[test]
fn two_standbys_promoted_from_one_primary_are_split_brain() {
    // Both start timeline 2 from the same history: the timelines cannot tell them apart.
    let (c, mut d) = settled_on_pg1();
    c.fail_over_to_pg2(&mut d, SHORT);
    c.promote(3);
    d.wait_for(SHORT, "split brain on /nagios", |d| {
        d.nagios()
            .starts_with("CRITICAL: split brain: 2 masters (pg2, pg3)")
    });
    // Rounds come every 0.1 s while it lasts, but each master is re-checked on a new
    // connection only when the split brain starts and then every 5 s: not 40 backends.
    held_on_pg2_with_few_new_logins(&c);
    let log = d.log();
    assert_eq!(
        log.matches("split brain: pg2, pg3 all answer as master")
            .count(),
        1,
        "{log}"
    );

    // The operator stops the wrong one: the condition ends, PgBouncer stays on pg2.
    c.stop_fast(3);
    d.wait_log(SHORT, "split brain (pg2, pg3) is over");
    assert_eq!(c.symlink_node(), Some(2));
}

#[test]
fn with_no_master_pgbouncer_is_left_alone() {
    let (c, mut d) = settled_on_pg1();

    c.stop_fast(1);
    d.wait_for(SHORT, "no master on /nagios", |d| {
        d.nagios()
            .starts_with("CRITICAL: no master (2 standbys, 1 down)")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.symlink_node(), Some(1));
    assert_eq!(nodes(&d), "pg1: down\npg2: standby\npg3: standby\n");
    let log = d.log();
    assert_eq!(
        log.matches("no master: no server answers as master")
            .count(),
        1,
        "{log}"
    );

    // Everything down is the same: nothing is touched.
    c.stop_fast(2);
    c.stop_fast(3);
    d.wait_for(SHORT, "all down", |d| {
        nodes(d) == "pg1: down\npg2: down\npg3: down\n"
    });
    assert_eq!(c.symlink_node(), Some(1));
    assert!(
        d.nagios()
            .starts_with("CRITICAL: no master (0 standbys, 3 down)")
    );
}

#[test]
fn a_hung_server_is_down_within_the_timeout_and_holds_up_nothing() {
    let (c, mut d) = settled_on_pg1();
    let fds_before = open_fds(d.pid());

    // pg3's processes stop: its port accepts, nothing answers.
    c.sigstop(3);
    let hung = Instant::now();
    d.wait_for(SHORT, "pg3 down", |d| nodes(d).contains("pg3: down"));
    let took = hung.elapsed();
    eprintln!(
        "hung standby reported down after {} ms (timeout 2 s, interval 1 s)",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(d.log().contains("pg3: now down"), "{}", d.log());

    // While pg3 hangs, a failover is still followed. (A fast shutdown would wait for the
    // hung standby's walsender, so the primary goes down hard.)
    c.stop_immediate(1);
    c.promote(2);
    d.wait_for(SHORT, "switch to pg2 with pg3 hung", |_| {
        c.bouncer_target_node() == Some(2)
    });

    // Timed-out checks leave no connection behind.
    std::thread::sleep(Duration::from_secs(5));
    let fds_after = open_fds(d.pid());
    assert!(
        fds_after <= fds_before + 2,
        "open fds grew from {fds_before} to {fds_after}"
    );
    c.sigcont(3);
    d.wait_for(SHORT, "pg3 back as standby", |d| {
        nodes(d).contains("pg3: standby")
    });
}

#[test]
fn a_hung_primary_is_replaced_by_the_promoted_standby() {
    let (c, mut d) = settled_on_pg1();

    c.sigstop(1);
    d.wait_for(SHORT, "pg1 down", |d| nodes(d).contains("pg1: down"));
    c.promote(2);
    d.wait_for(SHORT, "switch to pg2", |_| c.symlink_node() == Some(2));
    d.wait_for(SHORT, "PgBouncer on pg2", |_| {
        c.bouncer_target_node() == Some(2)
    });
    c.sigcont(1);
    // pg1 comes back as a master beside pg2, on the old timeline: refused.
    d.wait_for(SHORT, "stale primary", |d| {
        d.nagios().starts_with("CRITICAL: stale primary pg1")
    });
    assert_eq!(c.symlink_node(), Some(2));
}

#[test]
fn a_master_whose_postmaster_hangs_is_flagged_and_never_followed_back() {
    // Only pg1's postmaster stops: the daemon's kept session to pg1 still answers
    // "master", but nobody can log in any more (patroni/patroni#1371). pg2 is promoted:
    // pg1 is then a stale primary, whatever its kept session says.
    let c = Cluster::start(Opts::default().standbys(1).link(common::Link::Node(1)));
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);
    c.wait_settled_on_pg1(&mut d);

    let postmaster = c.postmaster_pid(1).expect("pg1 postmaster pid");
    common::signal(&postmaster.to_string(), "STOP").unwrap();
    c.promote(2);
    finally(
        || d.wait_for(SHORT, "switch to pg2", |_| c.symlink_node() == Some(2)),
        || common::signal(&postmaster.to_string(), "CONT").unwrap(),
    );
    let log = d.log();
    assert!(log.contains("stale primary: pg1"), "{log}");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn clients_are_not_held_back_by_failed_logins_to_the_old_primary() {
    // PgBouncer's node files keep the default server_login_retry (15 s). After logins to
    // the dead primary failed, PgBouncer would hold new logins back that long, even after
    // a RELOAD to the new primary; the switch's KILL + RESUME clears that.
    let (c, mut d) = settled_on_pg1();
    assert!(
        !c.node_file(1).exists()
            || !std::fs::read_to_string(c.node_file(1))
                .unwrap()
                .contains("server_login_retry")
    );

    c.stop_fast(1);
    // A client tries while pg1 is gone: PgBouncer's login to pg1 fails.
    assert!(
        c.bouncer_query_timeout("appdb", "SELECT 1", Duration::from_secs(3))
            .is_err()
    );
    c.promote(2);
    d.wait_for(SHORT, "switch to pg2", |_| {
        c.bouncer_target_node() == Some(2)
    });
    let switched = Instant::now();
    d.wait_for(SHORT, "a write on pg2", |_| {
        c.bouncer_write("after") == Ok(2)
    });
    let took = switched.elapsed();
    eprintln!(
        "first write on pg2 {} ms after the switch was confirmed",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(5),
        "writes were held back {took:?} after the switch (server_login_retry is 15 s)"
    );
}

/// The Go tool's sample config, shape for shape: relative `symlink` and `configdir` (with
/// a trailing slash), unix-socket hosts, `sslmode=disable` spelled out, interval 10.
/// Dropped in unchanged, it must keep PgBouncer on the primary through a failover.
#[test]
fn a_config_shaped_like_the_go_sample_follows_a_failover() {
    let c = Cluster::start_default();
    let sock = c.root().display().to_string();
    let mut text = format!(
        "[global]\n\
         pgbouncer=host={sock} port={} sslmode=disable dbname=pgbouncer user=postgres\n\
         symlink=pgbouncer.ini\n\
         configdir=nodes/\n\
         interval=10\n\
         timeout=3\n\
         \n\
         [servers]\n",
        c.bouncer_port()
    );
    for i in 1..=c.len() {
        text += &format!(
            "{}=host={sock} port={} sslmode=disable dbname=postgres user=postgres\n",
            c.name(i),
            c.port(i)
        );
    }
    let cfg = c.write_file("rebouncer.ini", &text);
    // The daemon runs in the cluster directory, so the relative paths resolve there.
    let mut d = c.daemon(&cfg);
    c.wait_settled_on_pg1(&mut d);
    assert!(c.symlink_target().is_absolute());
    assert_eq!(c.bouncer_write("go-sample before").unwrap(), 1);

    c.fail_over_until_a_write_lands_on_pg2(&mut d, SHORT, "go-sample after");
    assert_eq!(c.symlink_node(), Some(2));
    assert_eq!(c.symlink_target(), c.node_file(2));
}

/// A primary that hangs closes no connection. At interval=30 the next round could be
/// 30 s away; the heartbeat on the active master's kept connection notices the hang
/// within about a second plus the timeout, and the promoted standby is followed.
#[test]
fn a_hung_primary_is_noticed_between_rounds() {
    let c = Cluster::start(Opts::default().standbys(1).link(common::Link::Node(1)));
    let cfg = c.write_rebouncer_config(30, 2, "");
    let mut d = c.daemon(&cfg);
    c.wait_settled_on_pg1(&mut d);
    // Past the fast rounds that follow the start-up switch: from here on, rounds are
    // 30 s apart.
    std::thread::sleep(Duration::from_secs(2));

    c.sigstop(1);
    let hung = Instant::now();
    c.promote(2);
    finally(
        || {
            d.wait_for(
                Duration::from_secs(15),
                "switch to pg2 well before the next round",
                |_| c.symlink_node() == Some(2),
            )
        },
        || c.sigcont(1),
    );
    eprintln!(
        "hung primary at interval=30 timeout=2: followed {} ms after SIGSTOP",
        hung.elapsed().as_millis()
    );
    assert!(d.log().contains("pg1: now down"), "{}", d.log());
}
