//! The shipped Prometheus alert rules (`contrib/rebouncer.rules.yml`) against what a real
//! rebouncer exports: a real cluster is taken through a state file that cannot be written,
//! a failover with clients held, a failing switch, a stale primary and a split brain;
//! `/metrics` is captured in each
//! situation and fed to `promtool test rules` with the expectations in
//! `tests/alerts.test.yml` (each alert firing where it should and quiet elsewhere). The
//! etcd mode's alert likewise, from a daemon following a real etcd
//! (`tests/alerts_etcd.test.yml`).

mod common;

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Cluster, Daemon, Opts};

const SHORT: Duration = Duration::from_secs(30);
/// 10 minutes of samples at promtool's 15 s interval: longer than any rule's `for`.
const SAMPLES: usize = 41;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// promtool, which `.ci/run` installs (Debian package `prometheus`): a missing one fails,
/// since rules that were never evaluated prove nothing.
fn promtool() -> &'static str {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool is not installed, so the alert rules cannot be tested; \
         apt-get install prometheus (as .ci/run does)"
    );
    "promtool"
}

/// `/metrics` and the unix time it was read at.
struct Snapshot {
    text: String,
    at: f64,
}

fn capture(d: &Daemon) -> Snapshot {
    let text = d.http_get("/metrics").expect("/metrics answers");
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    Snapshot { text, at }
}

/// The value of an unlabelled series.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn metric(d: &Daemon, name: &str) -> Option<f64> {
    value(&d.http_get("/metrics").unwrap_or_default(), name)
}

/// One snapshot as promtool `input_series` items: the scrape labels added, each value held
/// for `held` samples (then marked stale when that is shorter than the test), and every
/// unix timestamp moved by the capture time so that time 0 of the test is the moment of
/// capture and `time() - <timestamp>` is the age it had then.
fn input_series(s: &Snapshot, held: usize, indent: &str) -> String {
    let mut out = String::new();
    for line in s.text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, raw) = line.rsplit_once(' ').expect("a sample line: name value");
        let mut v: f64 = raw.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let name = series.split('{').next().unwrap();
        if (name.ends_with("_timestamp_seconds") || name == "rebouncer_start_time_seconds")
            && v > 0.0
        {
            v -= s.at;
        }
        let scrape = r#"job="rebouncer",instance="app1:7100""#;
        let series = match series.split_once('{') {
            Some((n, rest)) => format!("{n}{{{scrape},{rest}"),
            None => format!("{series}{{{scrape}}}"),
        };
        assert!(!series.contains('\''), "{series}");
        let values = if held >= SAMPLES {
            format!("{v}x{}", SAMPLES - 1)
        } else {
            format!("{v}x{} stale", held - 1)
        };
        writeln!(
            out,
            "{indent}- series: '{series}'\n{indent}  values: '{values}'"
        )
        .unwrap();
    }
    out
}

#[test]
fn alert_rules_fire_and_stay_quiet_on_real_metrics() {
    let promtool = promtool();
    let rules = repo().join("contrib/rebouncer.rules.yml");
    let o = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    let c = Cluster::start(Opts::default().standbys(2));
    // The state file's directory does not exist yet: the first round's write of the
    // timeline fails (even as root) until the directory is made below.
    let state_dir = c.root().join("state");
    let cfg = c.write_rebouncer_config(
        2,
        2,
        &format!(
            "pause_on_failover=true\npause_timeout=5\nstate_file={}/rebouncer.state",
            state_dir.display()
        ),
    );
    let mut d = c.daemon(&cfg);
    let mut snaps: Vec<(&str, Snapshot)> = Vec::new();

    d.wait_for(SHORT, "PgBouncer on pg1, the state file unwritable", |d| {
        let t = d.http_get("/metrics").unwrap_or_default();
        c.bouncer_target_node() == Some(1)
            && value(&t, "rebouncer_pgbouncer_on_master") == Some(1.0)
            && value(&t, "rebouncer_state_file_writable") == Some(0.0)
    });
    snaps.push(("state_unwritable", capture(&d)));

    fs::create_dir(&state_dir).unwrap();
    d.wait_for(SHORT, "PgBouncer on pg1, the state file written", |d| {
        let t = d.http_get("/metrics").unwrap_or_default();
        c.bouncer_target_node() == Some(1)
            && value(&t, "rebouncer_pgbouncer_on_master") == Some(1.0)
            && value(&t, "rebouncer_state_file_writable") == Some(1.0)
    });
    assert!(state_dir.join("rebouncer.state").exists());
    snaps.push(("healthy", capture(&d)));

    // pg2's node file broken now, so that its promotion below makes a failing switch.
    let pg2_file = c.node_file(2);
    let pg2_text = fs::read_to_string(&pg2_file).unwrap();
    fs::write(&pg2_file, "this is not a PgBouncer config\n").unwrap();

    c.stop_fast(1);
    d.wait_for(SHORT, "no master, clients held", |d| {
        let t = d.http_get("/metrics").unwrap_or_default();
        value(&t, "rebouncer_no_master") == Some(1.0)
            && value(&t, "rebouncer_failover_pause") == Some(1.0)
    });
    snaps.push(("no_master_paused", capture(&d)));

    c.promote(2);
    d.wait_for(SHORT, "the switch to pg2 failing, the pause over", |d| {
        let t = d.http_get("/metrics").unwrap_or_default();
        value(&t, "rebouncer_switch_failing") == Some(1.0)
            && value(&t, "rebouncer_failover_pause") == Some(0.0)
            && value(&t, "rebouncer_masters") == Some(1.0)
    });
    snaps.push(("not_on_master", capture(&d)));

    fs::write(&pg2_file, pg2_text).unwrap();
    d.wait_for(SHORT, "PgBouncer on pg2", |d| {
        c.bouncer_target_node() == Some(2)
            && metric(d, "rebouncer_pgbouncer_on_master") == Some(1.0)
    });
    snaps.push(("failed_over", capture(&d)));

    c.start_node(1);
    d.wait_for(SHORT, "pg1 seen as a stale primary", |d| {
        metric(d, "rebouncer_stale_primaries") == Some(1.0)
    });
    snaps.push(("stale", capture(&d)));

    c.promote(3);
    d.wait_for(SHORT, "pg2 and pg3 in split brain", |d| {
        metric(d, "rebouncer_split_brain") == Some(1.0)
    });
    snaps.push(("split_brain", capture(&d)));

    promtool_test(promtool, &rules, "tests/alerts.test.yml", &snaps);
}

/// Runs `promtool test rules` on `template` (a file of the repository) with each
/// "# series: <name>" line replaced by that snapshot.
fn promtool_test(promtool: &str, rules: &Path, template: &str, snaps: &[(&str, Snapshot)]) {
    let template = fs::read_to_string(repo().join(template)).unwrap();
    let mut filled = String::new();
    for line in template.lines() {
        let Some(spec) = line.trim_start().strip_prefix("# series: ") else {
            filled.push_str(line);
            filled.push('\n');
            continue;
        };
        let indent = &line[..line.len() - line.trim_start().len()];
        let (name, held) = match spec.split_once(", until ") {
            Some((n, until)) => {
                let minutes: usize = until.trim_end_matches('m').parse().unwrap();
                (n, minutes * 4)
            }
            None => (spec, SAMPLES),
        };
        let snap = &snaps
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no snapshot {name}"))
            .1;
        filled.push_str(&input_series(snap, held, indent));
    }
    let dir = tempfile::tempdir().unwrap();
    fs::copy(rules, dir.path().join("rebouncer.rules.yml")).unwrap();
    fs::write(dir.path().join("tests.yml"), &filled).unwrap();
    for (name, s) in snaps {
        fs::write(dir.path().join(format!("{name}.prom")), &s.text).unwrap();
    }
    let o = Command::new(promtool)
        .args(["test", "rules", "tests.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() {
        let kept = dir.keep();
        panic!(
            "promtool test rules failed (test file and snapshots kept in {}):\n{out}",
            kept.display()
        );
    }
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The etcd mode's rule against a real daemon following a leader key in a real etcd
/// (`tests/alerts_etcd.test.yml`): the watch in place, then etcd stopped.
#[test]
fn the_etcd_alert_fires_on_a_lost_watch_and_not_on_a_working_one() {
    let promtool = promtool();
    let rules = repo().join("contrib/rebouncer.rules.yml");
    let etcd = common::etcd::Etcd::start();
    etcd.put("/service/main/leader", "pg1");
    let c = Cluster::start(Opts::default().standbys(1));
    let cfg = c.write_rebouncer_config(
        2,
        2,
        &format!(
            "etcd_endpoints={}\netcd_scope=main\netcd_timeout=0.5\netcd_check_interval=0.5",
            etcd.endpoint()
        ),
    );
    let mut d = c.daemon(&cfg);
    let mut snaps: Vec<(&str, Snapshot)> = Vec::new();
    d.wait_for(SHORT, "PgBouncer on pg1, the leader key heard", |d| {
        let t = d.http_get("/metrics").unwrap_or_default();
        c.bouncer_target_node() == Some(1)
            && value(&t, "rebouncer_pgbouncer_on_master") == Some(1.0)
            && value(&t, "rebouncer_etcd_connected") == Some(1.0)
    });
    snaps.push(("etcd_following", capture(&d)));

    etcd.stop();
    d.wait_for(SHORT, "etcd reported lost", |d| {
        metric(d, "rebouncer_etcd_connected") == Some(0.0)
            && metric(d, "rebouncer_etcd_watch_lost_total") == Some(1.0)
    });
    snaps.push(("etcd_lost", capture(&d)));
    promtool_test(promtool, &rules, "tests/alerts_etcd.test.yml", &snaps);
}
