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
    d.wait_for(
        Duration::from_secs(30),
        &format!(
            "{what}: symlink and PgBouncer on the new leader {}",
            p.name(new)
        ),
        |_| p.symlink_member() == Some(new) && p.bouncer_target_member() == Some(new),
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
    let mut d = p.daemon(&cfg);
    let first = p.leader().expect("a leader after start");
    d.wait_for(
        Duration::from_secs(30),
        &format!("PgBouncer on the bootstrap leader {}", p.name(first)),
        |_| p.symlink_member() == Some(first) && p.bouncer_target_member() == Some(first),
    );

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
