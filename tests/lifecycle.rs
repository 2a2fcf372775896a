//! The daemon as an init script and a monitoring system see it: flags, pid file, exit
//! codes, signals, the status server's address, `-check`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Opts};

const SHORT: Duration = Duration::from_secs(20);

fn rebouncer(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    Command::new(common::rebouncer_bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run rebouncer")
}

#[test]
fn a_broken_config_is_refused_with_one_line_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("nodes")).unwrap();
    std::fs::write(
        dir.path().join("nodes/db1.ini"),
        "[databases]\npostgres = host=127.0.0.1 port=5432\n[pgbouncer]\nlisten_port=6432\n",
    )
    .unwrap();
    let ini = dir.path().join("rebouncer.ini");
    std::fs::write(
        &ini,
        "[global]\npgbouncer=host=127.0.0.1 port=6432 dbname=pgbouncer sslmode=disable\n\
         symlink=pgbouncer.ini\nconfigdir=nodes\ninterval=abc\n\n[servers]\ndb1=host=127.0.0.1 sslmode=disable\n",
    )
    .unwrap();
    let out = rebouncer(
        &["-config", ini.to_str().unwrap(), "-http=127.0.0.1:0"],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("rebouncer.ini:5"), "{err}");
    assert!(err.contains("interval"), "{err}");
    assert!(
        !dir.path().join("pgbouncer.ini").exists(),
        "nothing was touched"
    );

    let missing = rebouncer(&["-config=/nonexistent/rebouncer.ini"], dir.path());
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("/nonexistent/rebouncer.ini"), "{err}");
}

#[test]
fn help_and_version_answer_and_bad_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = rebouncer(&["-version"], dir.path());
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("rebouncer "));
    let h = rebouncer(&["--help"], dir.path());
    assert!(String::from_utf8_lossy(&h.stdout).contains("-config"));
    let bad = rebouncer(&["-confg=/x"], dir.path());
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--config"));
}

#[test]
fn pid_file_is_rewritten_locked_and_removed_on_sigterm() {
    let c = Cluster::start(Opts::default().standbys(1));
    let cfg = c.write_rebouncer_config(1, 2, "");
    let cmd = c.daemon_cmd(&cfg);
    // A stale, longer pid file from an earlier run must not survive in front of ours.
    std::fs::write(&cmd.pidfile, "999999999\n").unwrap();
    let pidfile = cmd.pidfile.clone();
    let mut d = cmd.start();
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", d.pid())
    );

    // A second instance with the same pid file refuses, and says why.
    let mut second = c.daemon_cmd(&cfg);
    second.pidfile = pidfile.clone();
    second.logfile = None;
    let mut second = second.spawn();
    let status = second.wait_exit(SHORT);
    assert!(!status.success());
    assert!(
        second.stderr().contains("another rebouncer"),
        "{}",
        second.stderr()
    );
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", d.pid())
    );

    // A second instance on the same port refuses too.
    let mut third = c.daemon_cmd(&cfg);
    third.http = d.cmd.http.clone();
    third.pidfile = c.root().join("third.pid");
    third.logfile = None;
    let mut third = third.spawn();
    assert!(!third.wait_exit(SHORT).success());
    assert!(
        third.stderr().contains("already in use"),
        "{}",
        third.stderr()
    );

    let status = d.stop();
    assert!(
        status.success(),
        "exit status {status}\n{}",
        d.diagnostics()
    );
    assert!(!pidfile.exists(), "pid file removed on a clean exit");
    let log = d.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in the log file");
}

#[test]
fn a_half_sent_http_request_does_not_hold_up_shutdown() {
    let c = Cluster::start(Opts::default().standbys(0));
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);
    let mut s = TcpStream::connect(&d.http_addr).unwrap();
    s.write_all(b"GET /nagios HTTP/1.1\r\nHost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let status = d.stop();
    assert!(status.success());
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn localhost_means_ipv4_and_every_path_shows_the_overview() {
    let c = Cluster::start(Opts::default().standbys(1));
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut cmd = c.daemon_cmd(&cfg);
    let port = common::alloc_port();
    cmd.http = format!("localhost:{port}");
    let mut d = cmd.start();
    assert!(common::http_request(&format!("127.0.0.1:{port}"), "GET", "/nodes").is_ok());
    d.wait_for(SHORT, "first round", |d| {
        d.http_get("/nodes")
            .unwrap_or_default()
            .contains("pg1: master")
    });
    let (code, head, body) = d.http("GET", "/whatever").unwrap();
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    assert!(body.contains("Node status:"), "{body}");
}

#[test]
fn check_mode_validates_and_tries_each_server_once() {
    let c = Cluster::start(Opts::default().standbys(1));
    let mut servers = c.servers();
    servers.push((
        "gone".into(),
        common::tcp_conninfo(common::alloc_port(), "postgres"),
    ));
    std::fs::copy(c.node_file(1), c.configdir().join("gone.ini")).unwrap();
    let cfg = c.write_rebouncer_config_with(1, 2, "", &servers);
    let out = rebouncer(&["-check", &format!("-config={}", cfg.display())], c.root());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("valid"), "{text}");
    assert!(
        text.contains(&format!(
            "symlink directory {}: writable",
            c.root().display()
        )),
        "{text}"
    );
    assert!(text.contains("pgbouncer (127.0.0.1:"), "{text}");
    assert!(text.contains(": master, timeline 1"), "{text}");
    assert!(text.contains(": standby, timeline 1"), "{text}");
    assert!(text.contains("gone: down:"), "{text}");
    // Nothing was switched by a check.
    assert_eq!(c.symlink_node(), Some(2));
}
