//! Drop-in upgrades: `[global]` keys the Go tool ignored start with a warning (log and
//! `-check`); a near miss of a known key is refused before anything starts. No cluster is
//! needed: the warning comes right after the config is read.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NODE: &str =
    "[databases]\npostgres = host=127.0.0.1 port=5432\n[pgbouncer]\nlisten_port=6432\n";

/// A config in `dir` whose PgBouncer and server are on a port nothing listens on.
fn write_config(dir: &Path, extra_global: &str) -> std::path::PathBuf {
    fs::create_dir_all(dir.join("nodes")).unwrap();
    fs::write(dir.join("nodes/db1.ini"), NODE).unwrap();
    let port = common::alloc_port();
    let cfg = dir.join("rebouncer.ini");
    fs::write(
        &cfg,
        format!(
            "[global]\npgbouncer=host=127.0.0.1 port={port} dbname=pgbouncer sslmode=disable\n\
             symlink=pgbouncer.ini\nconfigdir=nodes\n{extra_global}\n\n\
             [servers]\ndb1=host=127.0.0.1 port={port} sslmode=disable\n"
        ),
    )
    .unwrap();
    cfg
}

fn check(cfg: &Path, cwd: &Path) -> (bool, String) {
    let out = common::run_timeout(
        Command::new(common::rebouncer_bin())
            .arg("-check")
            .arg(format!("-config={}", cfg.display()))
            .current_dir(cwd),
        Duration::from_secs(30),
    )
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn an_unknown_global_key_starts_with_a_warning_and_a_near_miss_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "loglevel=debug");
    let warning = "rebouncer.ini:5: unknown key \"loglevel\" in [global] is ignored, \
                   as the Go tool did; remove it or check its spelling";

    let (ok, out) = check(&cfg, dir.path());
    assert!(ok, "-check refused a config the Go tool ran with:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("warning: ") && l.ends_with(warning)),
        "{out}"
    );

    // The daemon starts, and says it in its log before it waits for PgBouncer.
    let log = dir.path().join("rebouncer.log");
    let mut child = Command::new(common::rebouncer_bin())
        .arg(format!("-config={}", cfg.display()))
        .arg(format!("-logfile={}", log.display()))
        .arg("-http=127.0.0.1:0")
        .env("STATE_DIRECTORY", dir.path())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut text = String::new();
    while t.elapsed() < Duration::from_secs(10) {
        text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains(warning) || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(exited.is_none(), "the daemon exited: {exited:?}\n{text}");
    let line = text
        .lines()
        .find(|l| l.contains(warning))
        .unwrap_or_else(|| panic!("no warning in the log:\n{text}"));
    assert!(line.contains("WARN"), "{line}");

    // A near miss stops both.
    let cfg = write_config(dir.path(), "intervall=5");
    let (ok, out) = check(&cfg, dir.path());
    assert!(!ok, "{out}");
    assert_eq!(
        out.trim(),
        format!(
            "config error: {}:5: unknown key \"intervall\" in [global], probably interval \
             (a misspelling); write interval= (the keys are pgbouncer, symlink, configdir, \
             interval, timeout, fast_interval, keep_connections, state_file, pause_on_failover, pause_timeout, \
             etcd_endpoints, etcd_scope, etcd_namespace, etcd_members, etcd_user, etcd_password, \
             etcd_ca_file, etcd_cert_file, etcd_key_file, etcd_timeout, etcd_check_interval)",
            cfg.display()
        )
    );
    let out = common::run_timeout(
        Command::new(common::rebouncer_bin())
            .arg(format!("-config={}", cfg.display()))
            .arg("-http=127.0.0.1:0")
            .current_dir(dir.path()),
        Duration::from_secs(30),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("probably interval"), "{err}");
}
