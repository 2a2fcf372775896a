//! Node files the daemon cannot check are refused before anything is touched: a switch is
//! confirmed by finding the node file's named databases in PgBouncer's `SHOW DATABASES`,
//! so a file that names none would let any config pass as confirmed.

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Opts};

#[test]
fn a_star_only_node_file_is_refused_by_start_and_check_and_the_symlink_stays() {
    let c = Cluster::start(Opts::default());
    assert_eq!(c.symlink_node(), Some(2), "the fixture starts on pg2");
    // pg1, the master the daemon would switch to, gets a file with only the fallback.
    let node = c.node_file(1);
    let text = fs::read_to_string(&node).unwrap();
    let settings = &text[text.find("[pgbouncer]").expect("a [pgbouncer] section")..];
    fs::write(
        &node,
        format!(
            "[databases]\n* = host=127.0.0.1 port={}\n\n{settings}",
            c.port(1)
        ),
    )
    .unwrap();
    let cfg = c.write_rebouncer_config(1, 2, "");
    let want = format!("{}:1: [databases] names no database", node.display());

    // -check: the same refusal, exit status 1.
    let out = common::run_timeout(
        Command::new(common::rebouncer_bin())
            .arg("-check")
            .arg(format!("-config={}", cfg.display()))
            .current_dir(c.root()),
        Duration::from_secs(30),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "-check accepted it:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line:\n{stdout}");
    assert!(lines[0].starts_with("config error: "), "{stdout}");
    assert!(lines[0].contains("server pg1: "), "{stdout}");
    assert!(lines[0].contains(&want), "{stdout}");
    assert!(lines[0].contains("only the \"*\" fallback"), "{stdout}");
    assert!(lines[0].contains("SHOW DATABASES"), "says why: {stdout}");
    assert!(
        lines[0].contains("add a line for each database"),
        "says what to do: {stdout}"
    );

    // The daemon refuses to start, with the same line on stderr and in its log.
    let mut d = c.daemon_cmd(&cfg).spawn();
    let t = Instant::now();
    while d.is_running() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let running = d.is_running();
    let symlink_node = c.symlink_node();
    assert!(
        !running,
        "the daemon started with a node file that names no database (symlink now at {symlink_node:?})\n{}",
        d.diagnostics()
    );
    let status = d.wait_exit(Duration::from_secs(1));
    assert!(!status.success(), "{status:?}\n{}", d.diagnostics());
    let stderr = d.stderr();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&want), "{stderr}");
    assert!(d.log().contains(&want), "{}", d.diagnostics());

    // Nothing was switched: PgBouncer still points at pg2.
    assert_eq!(symlink_node, Some(2), "{}", d.diagnostics());
}
