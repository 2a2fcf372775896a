//! The loop's rules where the real PostgreSQL or PgBouncer decides what happens: a
//! promoted standby that refuses new logins (pg_hba.conf) is not given PgBouncer; a
//! PgBouncer started with another file than the symlink is not sent a RELOAD at every
//! round, and `/nagios` names both files; a standby on a newer timeline than the primary
//! fences it only while it reports that timeline. Real PostgreSQL 15 primary + standbys,
//! real PgBouncer 1.18.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Opts};

const SHORT: Duration = Duration::from_secs(30);

/// Runs `body`, then `cleanup` even if `body` panicked (a pg_hba.conf restored before the
/// failure is reported).
fn finally<T>(body: impl FnOnce() -> T, cleanup: impl FnOnce()) -> T {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    cleanup();
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The promoted pg2 keeps answering on the daemon's kept session but refuses every new
/// login: PgBouncer could not log in there either, so it stays where it is until pg2
/// accepts logins again.
#[test]
fn a_promoted_standby_that_refuses_new_logins_is_not_given_pgbouncer() {
    let c = Cluster::start(Opts::default().standbys(1));
    let cfg = c.write_rebouncer_config(2, 2, "");
    let mut d = c.daemon(&cfg);
    c.wait_settled_on_pg1(&mut d);
    c.hba_reject_new_logins(2);
    finally(
        || {
            c.stop_fast(1);
            c.promote(2);
            let since = Instant::now();
            let mut refusing = false;
            while since.elapsed() < Duration::from_secs(6) {
                assert_ne!(
                    c.symlink_node(),
                    Some(2),
                    "PgBouncer pointed at pg2, which refuses new logins: {}\n{}",
                    d.nagios(),
                    d.diagnostics()
                );
                refusing |= d.nagios().contains("refuses new connections");
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(refusing, "/nagios never said why: {}", d.nagios());
        },
        || c.hba_restore(2),
    );
    d.wait_for(SHORT, "PgBouncer on pg2 once it accepts logins", |_| {
        c.symlink_node() == Some(2) && c.bouncer_target_node() == Some(2)
    });
    assert_eq!(c.bouncer_write("after refusal"), Ok(2));
}

/// PgBouncer started by hand, as the server user, with `file` as its config file; killed
/// when dropped.
struct HandStarted(Child);

impl HandStarted {
    fn start(c: &Cluster, file: &Path) -> HandStarted {
        let child = common::command_as(common::pgbouncer_bin(), common::server_user(), c.root())
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let started = HandStarted(child);
        c.wait_until(SHORT, "PgBouncer started by hand answering", |c| {
            c.admin("SHOW VERSION").is_ok()
        });
        started
    }
}

impl Drop for HandStarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn reloads(c: &Cluster) -> usize {
    c.bouncer_log().matches("RELOAD command issued").count()
}

#[test]
fn pgbouncer_running_another_file_is_named_and_reloaded_less_and_less_often() {
    let c = Cluster::start(Opts::default().standbys(1));
    c.bouncer_stop();
    // A copy of pg1's file, as an operator's `pgbouncer /etc/pgbouncer/old.ini` would run.
    let other = c.root().join("other.ini");
    std::fs::copy(c.node_file(1), &other).unwrap();
    let _bouncer = HandStarted::start(&c, &other);
    let cfg = c.write_rebouncer_config(2, 2, "");
    let mut d = c.daemon(&cfg);
    c.wait_settled_on_pg1(&mut d);

    c.stop_fast(1);
    c.promote(2);
    let named = format!(
        "PgBouncer runs {}, the symlink {} names {}",
        other.display(),
        c.symlink().display(),
        c.node_file(2).display()
    );
    d.wait_for(SHORT, "/nagios naming both files", |d| {
        d.nagios().contains(&named)
    });
    assert!(d.nagios().starts_with("CRITICAL"), "{}", d.nagios());
    // interval=2: after the first retries (1 s, 2 s), one RELOAD per interval at most,
    // where a retry at every round would send one a second.
    let before = reloads(&c);
    std::thread::sleep(Duration::from_secs(10));
    let sent = reloads(&c) - before;
    assert!(
        (1..=6).contains(&sent),
        "{sent} RELOADs in 10 s\n{}",
        d.diagnostics()
    );
    assert_eq!(
        c.bouncer_target_node(),
        Some(1),
        "PgBouncer still runs other.ini"
    );
}

/// The state file's directory is missing at start with `pause_on_failover` on: the
/// start-up log, `/` and `/nagios` say pausing is off; the failure is logged once; once
/// the directory exists the next round writes the file and `/nagios` is OK again.
#[test]
fn an_unwritable_state_file_turns_pausing_off_until_a_later_round_writes_it() {
    let c = Cluster::start(Opts::default().standbys(1));
    let dir = c.root().join("state");
    let cfg = c.write_rebouncer_config(
        2,
        2,
        &format!(
            "pause_on_failover=on\npause_timeout=10\nstate_file={}/rebouncer.state\n",
            dir.display()
        ),
    );
    let mut d = c.daemon(&cfg);
    let off = "pause_on_failover is off until the state file can be written";
    d.wait_log(SHORT, off);
    d.wait_for(SHORT, "/nagios saying pausing is off", |d| {
        d.nagios().starts_with("WARNING") && d.nagios().contains(off)
    });
    let root = d.http_get("/").unwrap();
    assert!(
        root.contains("Pausing: off until the state file can be written"),
        "{root}"
    );
    // Several rounds pass (interval 2 s), each retrying the write: the failure is not
    // logged again.
    let mark = d.log().len();
    std::thread::sleep(Duration::from_secs(5));
    let quiet = d.log()[mark..].to_string();
    assert!(!quiet.contains("cannot write state file"), "{quiet}");
    std::fs::create_dir(&dir).unwrap();
    d.wait_for(SHORT, "/nagios OK once the state file is written", |d| {
        d.nagios().starts_with("OK")
    });
    assert!(dir.join("rebouncer.state").exists());
    let log = d.log();
    assert_eq!(log.matches(off).count(), 1, "said once:\n{log}");
    assert!(log.contains("written again"), "{log}");
}

/// The highest timelines the state file of this cluster's daemon remembers, one per
/// cluster identity (`STATE_DIRECTORY` is the cluster's directory).
fn remembered_timelines(c: &Cluster) -> Vec<u32> {
    std::fs::read_to_string(c.root().join("rebouncer.state"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("timeline "))
        .filter_map(|l| l.split_once(" highest=")?.1.parse().ok())
        .collect()
}

/// Puts node `i` back into recovery: `standby.signal`, then a restart. Its checkpoint
/// stays on the timeline it reached, and its `primary_conninfo` (from the base backup)
/// names pg1, which cannot serve that timeline: it stays a standby on it for good.
fn restart_as_standby(c: &Cluster, i: usize) {
    c.stop_fast(i);
    let signal = c.data_dir(i).join("standby.signal");
    std::fs::write(&signal, "").unwrap();
    common::chown_server(&signal);
    c.start_node(i);
}

/// A clone of the primary promoted by mistake (twice, so timeline 3) and restarted as a
/// standby: while it reports timeline 3, the real primary pg1 on timeline 1 is fenced and
/// `/nagios` names the standby and both timelines, but the state file remembers only the
/// master's timeline. Once that standby is stopped, the fence it alone caused is gone:
/// PgBouncer goes to pg1, and a failover to pg2 (timeline 2, still below the rogue's 3)
/// works. The rules alone: `decide::tests::a_standby_ahead_fences_only_while_it_reports_its_timeline`.
#[test]
fn a_standby_ahead_of_the_primary_fences_it_only_while_it_reports_its_timeline() {
    let c = Cluster::start(Opts::default());
    c.promote(3);
    restart_as_standby(&c, 3);
    c.promote(3);
    restart_as_standby(&c, 3);
    let recovery_and_timeline = "SELECT pg_is_in_recovery()::text || ' ' || timeline_id \
        FROM pg_control_checkpoint()";
    c.wait_until(SHORT, "pg3 a standby on timeline 3", |c| {
        c.query(3, recovery_and_timeline).as_deref() == Ok("true 3")
    });
    assert_eq!(c.query(1, recovery_and_timeline).as_deref(), Ok("false 1"));

    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);
    let fenced = "stale primary pg1 (timeline 1, standby pg3 reports timeline 3) never routed to";
    d.wait_for(
        SHORT,
        "/nagios naming the standby and both timelines",
        |d| d.nagios().contains(fenced),
    );
    assert!(
        d.nagios().starts_with("CRITICAL: no master"),
        "{}",
        d.nagios()
    );
    d.wait_for(SHORT, "the state file remembering pg1's timeline", |_| {
        !remembered_timelines(&c).is_empty()
    });
    // Rounds go by (interval 1 s): the fence holds, and never reaches the state file.
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(4) {
        assert_eq!(remembered_timelines(&c), [1], "{}", d.diagnostics());
        assert_eq!(c.symlink_node(), Some(2), "{}", d.nagios());
        assert!(d.nagios().contains(fenced), "{}", d.nagios());
        std::thread::sleep(Duration::from_millis(200));
    }

    // Stopped for good: the fence lifts with the last report of timeline 3.
    c.stop_fast(3);
    d.wait_for(SHORT, "PgBouncer on pg1 once pg3 is gone", |d| {
        c.symlink_node() == Some(1)
            && c.bouncer_target_node() == Some(1)
            && d.nagios()
                .starts_with("WARNING: 1 server down (pg3); 1 master (pg1)")
    });
    assert_eq!(c.bouncer_write("after the rogue"), Ok(1));
    // Taken out of the configuration too: nothing left to warn about.
    let servers = c.servers();
    c.write_rebouncer_config_with(1, 2, "", &servers[..2]);
    d.signal("HUP").unwrap();
    d.wait_for(SHORT, "/nagios OK without pg3", |d| {
        d.nagios().trim_end() == "OK: 1 master (pg1, PgBouncer points at it), 1 standby"
    });

    // A failover to a server on timeline 2, below what the rogue reported.
    c.stop_fast(1);
    c.promote(2);
    d.wait_for(SHORT, "a write through PgBouncer landing on pg2", |_| {
        c.bouncer_write("after the failover") == Ok(2)
    });
    assert_eq!(c.symlink_node(), Some(2));
    d.wait_for(SHORT, "the state file remembering pg2's timeline", |_| {
        remembered_timelines(&c) == [2]
    });
}
