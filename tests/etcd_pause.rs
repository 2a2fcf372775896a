//! `pause_on_failover` in etcd mode: a `patronictl switchover` under client load, with a
//! client writing through PgBouncer (a new connection per write, 50 ms apart) the whole
//! time. Without the pause a write that is waiting in PgBouncer for the old primary when
//! the route moves fails (the switch's `KILL` drops it: "database removed"); with it,
//! every write under way when the leader key leaves the old primary, or begun after,
//! waits and lands on the new leader.
//!
//! What rebouncer cannot save: Patroni stops the old primary (a fast shutdown) about a
//! second before it releases the key, and a write whose server connection PgBouncer had
//! just handed over when the backend was terminated fails at once ("invalid server
//! parameter": PgBouncer's `SET` of the client's parameters is answered by the
//! termination). No route change could have saved it, and nothing tells rebouncer before
//! the key moves; such writes end before the key leaves, and are printed, not asserted.
//!
//! One Patroni cluster (etcd + three members + PgBouncer) for three switchovers: the
//! first with a daemon without the pause (its failed writes are printed, not asserted:
//! whether a write is caught waiting depends on timing), the next two with a daemon that
//! pauses.

mod common;

use common::WriteLog;
use common::patroni::Patroni;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A write is given this long by the client before it counts as failed: longer than
/// `pause_timeout`, so that a write held by the pause is never cut off by the client.
const PER_WRITE: Duration = Duration::from_secs(30);
const PAUSE_TIMEOUT: u64 = 15;

/// etcd mode, with `check_interval` as `etcd_check_interval`.
fn etcd_config(p: &Patroni, check_interval: f64, extra: &str) -> std::path::PathBuf {
    p.write_rebouncer_config(
        5,
        2,
        &format!(
            "etcd_endpoints={}\netcd_scope={}\netcd_timeout=1\netcd_check_interval={check_interval}\n{extra}",
            p.etcd.endpoint(),
            common::patroni::SCOPE
        ),
    )
}

fn wait_routed(p: &Patroni, d: &mut common::Daemon, m: usize, within: Duration, what: &str) {
    d.wait_for(
        within,
        &format!("symlink and PgBouncer on {what} {}", p.name(m)),
        |_| p.symlink_member() == Some(m) && p.bouncer_target_member() == Some(m),
    );
}

/// What one switchover under load showed.
struct Outcome {
    writes: WriteLog,
    /// When the leader key first named another member than the old leader, or none
    /// (sampled every 10 ms).
    key_left: Instant,
    /// When it first named the new leader.
    key_moved: Instant,
    old: usize,
    new: usize,
}

impl Outcome {
    /// The failed writes that ended after the key left the old leader (`after`), or
    /// before: one line each, when they began relative to the key naming the new leader,
    /// how long they took and what the client was told.
    fn failures(&self, after: bool) -> Vec<String> {
        self.writes
            .records
            .iter()
            .filter(|r| r.node.is_none() && (r.at + r.took >= self.key_left) == after)
            .map(|r| {
                format!(
                    "began {:+.2} s from the key's move, failed after {:.2} s: {}",
                    signed_secs(r.at, self.key_moved),
                    r.took.as_secs_f64(),
                    r.error.as_deref().unwrap_or("").trim()
                )
            })
            .collect()
    }

    /// The longest write that went through, and when it began relative to the key.
    fn longest_write(&self) -> (Duration, f64) {
        self.writes
            .records
            .iter()
            .filter(|r| r.node.is_some())
            .map(|r| (r.took, signed_secs(r.at, self.key_moved)))
            .max_by_key(|(t, _)| *t)
            .unwrap_or_default()
    }
}

fn signed_secs(t: Instant, from: Instant) -> f64 {
    if t >= from {
        (t - from).as_secs_f64()
    } else {
        -(from - t).as_secs_f64()
    }
}

/// `patronictl switchover` from `old` to `to` with a client writing through PgBouncer
/// from before until writes land on the new leader again. `late`: the daemon is stopped
/// (SIGSTOP) from before the switchover until the new leader is a primary, so that it
/// hears the key's deletion and the new leader back to back, with the new leader already
/// promoted (as a daemon on a starved app server does).
fn switchover_under_load(
    p: &Patroni,
    d: &mut common::Daemon,
    what: &str,
    (old, to): (usize, usize),
    late: bool,
) -> Outcome {
    let writer = p.start_writer(what, PER_WRITE);
    let before = p.rows_tagged(old, what).expect("the leader answers");
    common::wait_until(
        Duration::from_secs(20),
        &format!("{what}: the writer's first rows on {}", p.name(old)),
        || p.rows_tagged(old, what).is_some_and(|n| n > before + 3),
    );
    let stop = AtomicBool::new(false);
    let (key_left, key_moved) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut left = None;
            while !stop.load(Ordering::SeqCst) {
                let now = p.leader();
                if now != Some(old) {
                    left.get_or_insert(Instant::now());
                }
                if now.is_some_and(|l| l != old) {
                    return left.zip(Some(Instant::now()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        });
        if late {
            d.signal("STOP").expect("SIGSTOP the daemon");
        }
        p.switchover(old, to);
        let new = p.wait_new_leader(old, Duration::from_secs(60));
        if late {
            d.signal("CONT").expect("SIGCONT the daemon");
        }
        assert_eq!(
            new, to,
            "{what}: patronictl switchover chose another member"
        );
        stop.store(true, Ordering::SeqCst);
        sampler.join().unwrap()
    })
    .expect("the sampler saw the key move");
    wait_routed(p, d, to, Duration::from_secs(30), what);
    // A query right after the switch can meet the new leader still settling in; the
    // count is what matters, so it is asked until it answers.
    let mut settled = None;
    common::wait_until(
        Duration::from_secs(30),
        &format!("{what}: {} answering a count of the writes", p.name(to)),
        || {
            settled = p.rows_tagged(to, what);
            settled.is_some()
        },
    );
    let settled = settled.unwrap();
    common::wait_until(
        Duration::from_secs(30),
        &format!("{what}: writes landing on {}", p.name(to)),
        || p.rows_tagged(to, what).is_some_and(|n| n >= settled + 5),
    );
    let writes = writer.stop();
    p.wait_healthy(Duration::from_secs(60));
    Outcome {
        writes,
        key_left,
        key_moved,
        old,
        new: to,
    }
}

fn report(p: &Patroni, what: &str, o: &Outcome) {
    let (longest, began) = o.longest_write();
    eprintln!(
        "{what}: {}; the key left {} {:.2} s before it named {}; longest write that went through: {:.2} s (began {began:+.2} s from the key naming {})",
        o.writes.summary(),
        p.name(o.old),
        (o.key_moved - o.key_left).as_secs_f64(),
        p.name(o.new),
        longest.as_secs_f64(),
        p.name(o.new)
    );
    for f in o.failures(false) {
        eprintln!("  failed before the key left (the old primary's shutdown): {f}");
    }
    for f in o.failures(true) {
        eprintln!("  failed after the key left: {f}");
    }
}

#[test]
fn etcd_mode_pause_on_failover_holds_writes_through_a_patroni_switchover() {
    let p = Patroni::start();

    // Without the pause: what a switchover costs the client.
    let cfg = etcd_config(&p, 0.5, "");
    let mut d = p.daemon(&cfg);
    let first = p.leader().expect("a leader after start");
    wait_routed(
        &p,
        &mut d,
        first,
        Duration::from_secs(30),
        "the bootstrap leader",
    );
    let second = first % 3 + 1;
    let off = switchover_under_load(&p, &mut d, "without the pause", (first, second), false);
    report(&p, "without pause_on_failover", &off);
    d.stop();

    // With the pause: no write fails, in either direction, also when the daemon hears
    // the key late. (etcd_check_interval=30: a daemon stopped for a few seconds must not
    // find etcd silent when it goes on, it only hears the key late.)
    let cfg = etcd_config(
        &p,
        30.0,
        &format!("pause_on_failover=on\npause_timeout={PAUSE_TIMEOUT}"),
    );
    let mut d = p.daemon(&cfg);
    wait_routed(&p, &mut d, second, Duration::from_secs(30), "the leader");
    let mut leader = second;
    for (to, what, late) in [
        (second % 3 + 1, "with the pause", false),
        (
            first,
            "with the pause, the daemon hearing the key late",
            true,
        ),
    ] {
        // Every server seen up again: no round is due until the key changes, so a daemon
        // stopped meanwhile learns of the switchover from the key alone.
        d.wait_for(Duration::from_secs(30), "/nagios OK", |d| {
            d.nagios().starts_with("OK")
        });
        let log_mark = d.log().len();
        let on = switchover_under_load(&p, &mut d, what, (leader, to), late);
        report(&p, &format!("pause_on_failover=on ({what})"), &on);
        let log = d.log()[log_mark..].to_string();
        for l in log
            .lines()
            .filter(|l| l.contains("PAUSE") || l.contains("pause of database"))
        {
            eprintln!("  daemon: {l}");
        }
        let failed = on.failures(true);
        assert!(
            failed.is_empty(),
            "{what}: writes failed with pause_on_failover=on after the key left {}:\n{}\ndaemon log:\n{log}",
            p.name(leader),
            failed.join("\n")
        );
        assert!(
            log.contains(" in PgBouncer done in "),
            "{what}: the clients were not held:\n{log}"
        );
        assert!(
            on.writes.on(leader) > 0 && on.writes.on(to) > 0,
            "{what}: {}",
            on.writes.summary()
        );
        leader = on.new;
    }
}
