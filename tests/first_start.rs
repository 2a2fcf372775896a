//! A start with no remembered timeline (first install, the upgrade from the Go tool, a lost
//! state directory), against real PostgreSQL 15 and PgBouncer: PgBouncer is not moved away
//! from the node the symlink points at while that node only times out, because it may be
//! the real primary, hung, beside an old primary that came back; it is moved in the first
//! round when that node answers or refuses connections.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Opts};

const SHORT: Duration = Duration::from_secs(30);

/// Runs `body`, then `cleanup` even if `body` panicked (a stopped server must be resumed
/// before the failure is reported).
fn finally<T>(body: impl FnOnce() -> T, cleanup: impl FnOnce()) -> T {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    cleanup();
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The state file the daemons of this cluster use (`STATE_DIRECTORY` is its directory).
fn state_file(c: &Cluster) -> std::path::PathBuf {
    c.root().join("rebouncer.state")
}

/// pg1 primary and pg2 standby; pg1 stopped, pg2 promoted (timeline 2), pg1 started
/// again as it was: an old primary on timeline 1, with no standby left to report
/// timeline 2. The symlink is on pg2, and PgBouncer runs its file. No rebouncer ran yet.
fn old_primary_back_beside_the_new_one() -> Cluster {
    let c = Cluster::start(Opts::default().standbys(1));
    c.stop_fast(1);
    c.promote(2);
    c.start_node(1);
    assert_eq!(c.in_recovery(1), Ok(false), "pg1 is back as a master");
    let tli = |i| {
        c.query(
            i,
            "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
        )
    };
    assert_eq!(tli(1).as_deref(), Ok("00000001"), "pg1 on the old timeline");
    assert_eq!(tli(2).as_deref(), Ok("00000002"), "pg2 on the new timeline");
    c.set_symlink(2);
    c.admin("RELOAD").expect("RELOAD on PgBouncer's console");
    assert_eq!(c.bouncer_target_node(), Some(2), "PgBouncer routes to pg2");
    assert!(
        !state_file(&c).exists(),
        "no state file before the first start"
    );
    c
}

#[test]
fn first_start_never_moves_pgbouncer_to_an_old_primary_while_the_linked_primary_hangs() {
    let c = old_primary_back_beside_the_new_one();
    c.sigstop(2);
    let cfg = c.write_rebouncer_config(1, 2, "");
    let (d, moved, nagios) = finally(
        || {
            let d = c.daemon(&cfg);
            let started = Instant::now();
            let mut moved = None;
            let mut nagios = String::new();
            while started.elapsed() < Duration::from_secs(10) {
                if moved.is_none() && c.symlink_node() != Some(2) {
                    moved = Some((started.elapsed(), c.symlink_node()));
                }
                if started.elapsed() >= Duration::from_secs(6) && nagios.is_empty() {
                    nagios = d.nagios();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (d, moved, nagios)
        },
        || c.sigcont(2),
    );
    let mut d = d;
    assert_eq!(
        moved,
        None,
        "the symlink left pg2 (hung, the real primary) at start-up\n--- daemon log ---\n{}",
        d.log()
    );
    eprintln!("/nagios while pg2 hung: {}", nagios.trim());
    assert!(nagios.starts_with("CRITICAL: waiting for pg2"), "{nagios}");
    assert!(nagios.contains("no remembered timeline"), "{nagios}");
    assert!(nagios.contains("pg1"), "{nagios}");

    // pg2 answers again: the primary on the higher timeline, confirmed where it is, and
    // pg1 is known as stale from then on (and remembered).
    d.wait_for(
        SHORT,
        "PgBouncer confirmed on pg2 and pg1 named stale",
        |d| {
            let n = d.nagios();
            n.contains("stale primary pg1 (timeline 1, the cluster is on 2)")
                && !n.contains("waiting for")
        },
    );
    assert_eq!(c.symlink_node(), Some(2));
    assert_eq!(c.bouncer_target_node(), Some(2));
    let state = std::fs::read_to_string(state_file(&c)).unwrap_or_default();
    assert!(state.contains("highest=2"), "state file: {state}");
}

#[test]
fn first_start_follows_the_primary_at_once_when_the_linked_node_refuses_connections() {
    // The upgrade from the Go tool with the symlink on an old node that is stopped: it
    // refuses connections, which a hung primary could not do, so there is nothing to
    // wait for.
    let c = Cluster::start(Opts::default().standbys(1));
    c.set_symlink(2);
    c.stop_fast(2);
    assert!(
        !state_file(&c).exists(),
        "no state file before the first start"
    );
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);
    d.wait_for(SHORT, "PgBouncer switched to pg1", |_| {
        c.symlink_node() == Some(1) && c.bouncer_target_node() == Some(1)
    });
    let log = d.log();
    assert!(!log.contains("waiting for pg2"), "{log}");
}
