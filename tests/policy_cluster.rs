//! The loop's rules where the real PostgreSQL or PgBouncer decides what happens: a
//! promoted standby that refuses new logins (pg_hba.conf) is not given PgBouncer, and a
//! PgBouncer started with another file than the symlink is not sent a RELOAD at every
//! round, and `/nagios` names both files. Real PostgreSQL 15 primary + standby, real
//! PgBouncer 1.18.

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
