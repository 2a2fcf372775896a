//! rebouncer in polling mode in front of a real Patroni cluster (etcd + three members +
//! PgBouncer): users run it next to Patroni without access to etcd, and then it must follow
//! whatever Patroni does from what the servers say.
//!
//! One cluster for the three events, one after the other (each Patroni cluster costs
//! 7-10 s to start): a planned switchover, a manual failover and a leader that dies with
//! its host. Each time, with a client writing through PgBouncer, the daemon must end on
//! the new leader and never point PgBouncer at any other member on the way.

mod common;

use common::patroni::{LinkSample, Patroni};
use std::time::{Duration, Instant};

/// Waits until the symlink names member `m` and PgBouncer routes there; `what` names `m`
/// in the message.
fn wait_routed(p: &Patroni, d: &mut common::Daemon, m: usize, within: Duration, what: &str) {
    d.wait_for(
        within,
        &format!("symlink and PgBouncer on {what} {}", p.name(m)),
        |_| p.symlink_member() == Some(m) && p.bouncer_target_member() == Some(m),
    );
}

/// Starts the daemon on `cfg` and waits until it routed PgBouncer to the bootstrap
/// leader; returns the daemon and that leader.
fn start_daemon(p: &Patroni, cfg: &std::path::Path) -> (common::Daemon, usize) {
    let mut d = p.daemon(cfg);
    let first = p.leader().expect("a leader after start");
    wait_routed(
        p,
        &mut d,
        first,
        Duration::from_secs(30),
        "the bootstrap leader",
    );
    (d, first)
}

/// Runs `event` with a writer and a symlink sampler going, then checks that the daemon
/// routed PgBouncer from `old` straight to the new leader and that writes go through
/// there. Returns the new leader.
fn follow(
    p: &Patroni,
    d: &mut common::Daemon,
    what: &str,
    old: usize,
    event: impl FnOnce(),
) -> usize {
    let log_mark = d.log().len();
    let writer = p.start_writer(what, Duration::from_secs(5));
    let sampler = p.start_link_sampler();
    let rows_before = p.rows_tagged(old, what).expect("the leader answers");
    common::wait_until(
        Duration::from_secs(20),
        &format!("{what}: the writer's first rows on {}", p.name(old)),
        || p.rows_tagged(old, what).is_some_and(|n| n > rows_before),
    );

    let t_event = Instant::now();
    event();
    let new = p.wait_new_leader(old, Duration::from_secs(60));
    let t_leader = t_event.elapsed();
    wait_routed(
        p,
        d,
        new,
        Duration::from_secs(30),
        &format!("{what}: the new leader"),
    );
    let routed = Instant::now();
    // Writes that start a second after the route was confirmed must all go through.
    common::poll_until(Duration::from_secs(1), || false);
    let rows_settled = p.rows_tagged(new, what).expect("the new leader answers");
    common::wait_until(
        Duration::from_secs(20),
        &format!(
            "{what}: writes through PgBouncer landing on {}",
            p.name(new)
        ),
        || {
            p.rows_tagged(new, what)
                .is_some_and(|n| n >= rows_settled + 5)
        },
    );
    let writes = writer.stop();
    let samples = sampler.stop();
    eprintln!(
        "{what}: {} leads {t_leader:.1?} after the event, routed there {:.1?} after it; {}",
        p.name(new),
        routed - t_event,
        summary(p, &writes)
    );

    assert_route_moved_once(p, what, &samples, old, new);
    // What the daemon itself did: every switch it made in this transition went to the new
    // leader.
    let log = d.log();
    let switches: Vec<&str> = log[log_mark..]
        .lines()
        .filter(|l| l.contains("PgBouncer now points at"))
        .collect();
    assert!(
        !switches.is_empty()
            && switches
                .iter()
                .all(|l| l.contains(&format!("points at {} ", p.name(new)))),
        "{what}: the daemon switched elsewhere than {}:\n{}",
        p.name(new),
        switches.join("\n")
    );
    // Writes only ever landed on the old or the new leader (a replica refuses them), and
    // once PgBouncer was confirmed on the new one, every write that started a second later
    // went through there.
    for r in &writes.records {
        assert!(
            r.node.is_none() || r.node == Some(old) || r.node == Some(new),
            "{what}: a write landed on {:?}: {}",
            r.node,
            summary(p, &writes)
        );
    }
    let late: Vec<_> = writes
        .records
        .iter()
        .filter(|r| r.at >= routed + Duration::from_secs(1))
        .collect();
    assert!(
        !late.is_empty() && late.iter().all(|r| r.node == Some(new)),
        "{what}: writes after the switch did not all go to {}: {}\n{}",
        p.name(new),
        summary(p, &writes),
        late.iter()
            .map(|r| format!(
                "{:+.2?} after routing: {:?} {:?}\n",
                r.at - routed,
                r.node.map(|n| p.name(n)),
                r.error
            ))
            .collect::<String>()
    );
    new
}

/// "N writes: m1 x, m2 y, failed z (first error: ...)"
fn summary(p: &Patroni, w: &common::WriteLog) -> String {
    let mut s = format!("{} writes:", w.total());
    for m in 1..=p.len() {
        if w.on(m) > 0 {
            s += &format!(" {} {},", p.name(m), w.on(m));
        }
    }
    s += &format!(" failed {}", w.failed());
    if let Some(e) = w.records.iter().find_map(|r| r.error.as_deref()) {
        s += &format!(" (first error: {})", e.lines().next().unwrap_or(""));
    }
    s
}

/// The symlink named `old` (or nothing), then `new`, and nothing else in between or after.
fn assert_route_moved_once(
    p: &Patroni,
    what: &str,
    samples: &[LinkSample],
    old: usize,
    new: usize,
) {
    let mut seen_new = false;
    for (i, (_, m)) in samples.iter().enumerate() {
        let ok = match m {
            Some(m) if *m == new => {
                seen_new = true;
                true
            }
            Some(m) if *m == old => !seen_new,
            _ => false,
        };
        assert!(
            ok,
            "{what}: sample {i} of {}: the symlink named {:?} (old {}, new {}); every sample: {:?}",
            samples.len(),
            m.map(|m| p.name(m)),
            p.name(old),
            p.name(new),
            samples.iter().map(|(_, m)| *m).collect::<Vec<_>>()
        );
    }
    assert!(seen_new, "{what}: the symlink never named {}", p.name(new));
}

#[test]
fn polling_mode_follows_patroni_switchover_failover_and_a_killed_leader() {
    let p = Patroni::start();
    let cfg = p.write_rebouncer_config(2, 2, "");
    let (mut d, first) = start_daemon(&p, &cfg);

    // A planned switchover to the next member.
    let to = first % 3 + 1;
    let second = follow(&p, &mut d, "switchover", first, || p.switchover(first, to));
    assert_eq!(second, to, "patronictl switchover chose another member");
    p.wait_healthy(Duration::from_secs(60));

    // A manual failover to the member that has not led yet.
    let to = (1..=3).find(|m| *m != first && *m != second).unwrap();
    let third = follow(&p, &mut d, "failover", second, || p.failover(to));
    assert_eq!(third, to, "patronictl failover chose another member");
    p.wait_healthy(Duration::from_secs(60));

    // The leader's host dies: Patroni and PostgreSQL killed at once. The leader key stays
    // until its TTL runs out, then one of the others takes over.
    let fourth = follow(&p, &mut d, "killed leader", third, || p.kill_member(third));
    assert_ne!(fourth, third);
    assert!(
        d.nagios().starts_with("WARNING"),
        "with the killed member down, /nagios should warn: {}",
        d.nagios()
    );
}

/// Backends rebouncer holds on member i (`application_name = rebouncer`).
fn rebouncer_backends(p: &Patroni, i: usize) -> Option<usize> {
    common::psql_conninfo(
        &p.conninfo(i),
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rebouncer'",
        Duration::from_secs(5),
    )
    .ok()?
    .parse()
    .ok()
}

/// The etcd mode against the same kind of cluster, one cluster for every step: a
/// switchover and a failover under client load, a leader killed with its host, etcd
/// stopped (nothing switched, /nagios says so), and a Patroni killed alone (its
/// PostgreSQL stays a writable primary on the old timeline: fenced as a stale primary,
/// PgBouncer follows the member the key names).
#[test]
fn etcd_mode_follows_the_leader_key_and_switches_nothing_without_it() {
    let p = Patroni::start();
    // interval=5: how often a server that is down is checked again (the replicas may
    // still be restarting when the daemon starts); a settled cluster is not checked.
    let cfg = p.write_rebouncer_config(
        5,
        2,
        &format!(
            "etcd_endpoints={}\netcd_scope={}\netcd_timeout=1\netcd_check_interval=0.5",
            p.etcd.endpoint(),
            common::patroni::SCOPE
        ),
    );
    let (mut d, first) = start_daemon(&p, &cfg);
    d.wait_for(Duration::from_secs(30), "/nagios OK", |d| {
        d.nagios().starts_with("OK")
    });
    let root = d.http_get("/").unwrap();
    assert!(
        root.contains(&format!(
            "Patroni's leader key {}: names {}",
            p.leader_key(),
            p.name(first)
        )),
        "{root}"
    );
    // No monitoring connection is kept: every check was a connection that closed (the
    // last ones may still be exiting), and none comes while the key does not change.
    let none_held = || (1..=3).all(|i| rebouncer_backends(&p, i) == Some(0));
    common::wait_until(
        Duration::from_secs(10),
        "no rebouncer backend on any member",
        none_held,
    );
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let held: Vec<_> = (1..=3).map(|i| rebouncer_backends(&p, i)).collect();
        assert_eq!(held, vec![Some(0); 3], "rebouncer backends in etcd mode");
    }

    let to = first % 3 + 1;
    let second = follow(&p, &mut d, "etcd switchover", first, || {
        p.switchover(first, to)
    });
    assert_eq!(second, to, "patronictl switchover chose another member");
    p.wait_healthy(Duration::from_secs(60));

    let to = (1..=3).find(|m| *m != first && *m != second).unwrap();
    let third = follow(&p, &mut d, "etcd failover", second, || p.failover(to));
    assert_eq!(third, to, "patronictl failover chose another member");
    p.wait_healthy(Duration::from_secs(60));

    // etcd stopped: nothing is switched, /nagios says so and keeps the last leader.
    let link = p.symlink_member();
    p.etcd.stop();
    d.wait_for(
        Duration::from_secs(10),
        "/nagios to report etcd unreachable",
        |d| d.nagios().contains("etcd unreachable"),
    );
    let n = d.nagios();
    assert!(
        n.starts_with("WARNING") && n.contains(&format!("last known leader {}", p.name(third))),
        "{n}"
    );
    let root = d.http_get("/").unwrap();
    assert!(
        root.contains(&format!("names {}", p.name(third)))
            && root.contains("this is the last known state"),
        "{root}"
    );
    assert_eq!(p.symlink_member(), link);
    p.etcd.start_again();
    d.wait_for(
        Duration::from_secs(20),
        "the daemon to hear etcd again",
        |d| d.log().contains("etcd answers again"),
    );
    p.wait_healthy(Duration::from_secs(60));
    let leader = p.leader().unwrap();
    wait_routed(&p, &mut d, leader, Duration::from_secs(20), "the leader");

    // Patroni killed alone: its PostgreSQL keeps running as a writable primary; after the
    // TTL another member takes the key and is promoted to a new timeline.
    let fourth = follow(&p, &mut d, "patroni killed alone", leader, || {
        p.kill_patroni(leader)
    });
    assert_ne!(fourth, leader);
    assert_eq!(
        p.in_recovery(leader),
        Ok(false),
        "the member whose Patroni was killed should still be a primary"
    );
    d.wait_for(
        Duration::from_secs(10),
        "/nagios to name the stale primary",
        |d| {
            d.nagios()
                .contains(&format!("stale primary {}", p.name(leader)))
        },
    );

    // The leader's host dies: the key stays until its TTL runs out, then the last member
    // takes over. The old primary of the step before is still running, still stale.
    let fifth = follow(&p, &mut d, "etcd killed leader", fourth, || {
        p.kill_member(fourth)
    });
    assert!(fifth != fourth && fifth != leader);
    for i in 1..=3 {
        if let Some(n) = rebouncer_backends(&p, i) {
            assert_eq!(n, 0, "{} holds rebouncer backends in etcd mode", p.name(i));
        }
    }
}
