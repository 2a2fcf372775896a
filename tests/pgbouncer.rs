//! When the switch itself cannot happen: PgBouncer not running yet, PgBouncer down at the
//! moment of a failover, the symlink's directory not writable. The switch must be retried
//! until it succeeds, and `/nagios` must say what is wrong meanwhile.

mod common;

use std::time::Duration;

use common::{Cluster, Opts};

const SHORT: Duration = Duration::from_secs(20);

#[test]
fn waits_for_pgbouncer_at_start_up_then_switches() {
    let c = Cluster::start(Opts::default().bouncer(false));
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);

    d.wait_for(SHORT, "waiting for PgBouncer on /nagios", |d| {
        d.nagios()
            .starts_with("CRITICAL: waiting for PgBouncer's admin console at 127.0.0.1:")
    });
    let root = d.http_get("/").unwrap();
    assert!(root.contains("State: waiting for PgBouncer"), "{root}");
    assert!(d.log().contains("waiting for PgBouncer"), "{}", d.log());
    assert_eq!(
        c.symlink_node(),
        Some(2),
        "nothing is touched before PgBouncer answers"
    );

    c.bouncer_start();
    d.wait_for(
        Duration::from_secs(30),
        "switch to pg1 once PgBouncer is up",
        |d| c.symlink_node() == Some(1) && d.nagios().starts_with("OK"),
    );
    assert_eq!(c.bouncer_write("after start").unwrap(), 1);
}

#[test]
fn switch_is_retried_after_pgbouncer_returns() {
    let c = Cluster::start_default();
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);
    d.wait_for(SHORT, "initial switch to pg1", |d| {
        c.symlink_node() == Some(1) && d.nagios().starts_with("OK")
    });

    c.bouncer_stop();
    c.stop_fast(1);
    c.promote(2);
    d.wait_for(SHORT, "the failed switch on /nagios", |d| {
        let n = d.nagios();
        n.starts_with("CRITICAL: PgBouncer points at pg1 but the master is pg2")
            && n.contains("switch failing since")
    });
    // The admin console did not answer, so the link was not touched.
    assert_eq!(c.symlink_node(), Some(1));
    assert!(d.log().contains("switch to pg2 failed"), "{}", d.log());

    c.bouncer_start();
    d.wait_for(
        SHORT,
        "the switch to complete once PgBouncer is back",
        |d| c.symlink_node() == Some(2) && d.nagios().starts_with("WARNING: 1 server down (pg1)"),
    );
    assert_eq!(c.bouncer_write("after return").unwrap(), 2);
}

#[test]
fn switch_is_retried_when_the_symlink_directory_becomes_writable() {
    let c = Cluster::start_default();
    let cfg = c.write_rebouncer_config(1, 2, "");
    // Root ignores directory modes, so as root the daemon runs as the postgres user,
    // which owns the cluster's directory.
    let mut cmd = c.daemon_cmd(&cfg);
    if common::is_root() {
        cmd = cmd.run_as("postgres");
    }
    let mut d = cmd.start();
    d.wait_for(SHORT, "initial switch to pg1", |d| {
        c.symlink_node() == Some(1) && d.nagios().starts_with("OK")
    });

    let dir = c.root().to_path_buf();
    let _restore = ReadOnlyDir::new(&dir);
    c.stop_fast(1);
    c.promote(2);
    d.wait_for(SHORT, "the failed switch on /nagios", |d| {
        let n = d.nagios();
        n.starts_with("CRITICAL: PgBouncer points at pg1 but the master is pg2")
            && n.contains("Permission denied")
    });
    assert_eq!(c.symlink_node(), Some(1));
    drop(_restore);
    d.wait_for(
        SHORT,
        "switch to pg2 once the directory is writable",
        |_| c.symlink_node() == Some(2) && c.bouncer_target_node() == Some(2),
    );
    assert!(
        d.log().contains("make its directory writable"),
        "{}",
        d.log()
    );
}

/// Makes a directory read-only and restores its mode when dropped, also on panic.
struct ReadOnlyDir {
    path: std::path::PathBuf,
    mode: u32,
}

impl ReadOnlyDir {
    fn new(path: &std::path::Path) -> ReadOnlyDir {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).unwrap();
        ReadOnlyDir {
            path: path.to_path_buf(),
            mode,
        }
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(self.mode));
    }
}

/// A switch `KILL`s the databases that moved, and PgBouncer then holds every new client
/// of them until `RESUME` (it shows them as paused). When that `RESUME` fails the daemon
/// retries it every round through `switch::resume`: it must un-pause the database, and
/// must also succeed when an earlier attempt did get through (PgBouncer answers
/// "database ... is not paused").
#[test]
fn a_killed_database_is_resumed_and_resuming_twice_is_harmless() {
    use rebouncer::admin::Bouncer;
    use rebouncer::conninfo::{Env, Target};
    use rebouncer::switch;

    let c = Cluster::start(Opts::default().standbys(1).link(common::Link::Node(1)));
    c.bouncer_query("appdb", "SELECT 1").unwrap();
    c.admin("KILL appdb").unwrap();
    assert_eq!(c.paused("appdb"), "1", "KILL should leave appdb paused");

    let target = Target::parse(&c.pgbouncer_conninfo(), &Env::from_process()).unwrap();
    let bouncer = Bouncer::new(target, Duration::from_secs(3));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dbs = vec!["appdb".to_string()];
    for attempt in ["first", "second"] {
        rt.block_on(switch::resume(&bouncer, &dbs))
            .unwrap_or_else(|(left, e)| panic!("{attempt} resume: {left:?}: {e}"));
        assert_eq!(c.paused("appdb"), "0", "after the {attempt} resume");
    }
    assert_eq!(c.bouncer_query("appdb", "SELECT 1").unwrap().trim(), "1");
}
