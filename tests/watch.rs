//! Against the real cluster: `/metrics` read by a real Prometheus parser
//! (`prometheus_client` from PyPI, installed by `.ci/run`), the JSON pages parsed with
//! `serde_json`, the event history after a failover, and systemd's readiness protocol
//! seen by a unix datagram listener like systemd's.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Daemon, Opts};
use serde_json::{Value, json};

const SHORT: Duration = Duration::from_secs(20);

fn python(script: &str, input: &str) -> String {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (see .ci/run)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3 failed on:\n{input}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Parses the exposition with prometheus_client's own parser, which raises on anything
/// malformed; one line per family and per sample comes back.
const PARSE_METRICS: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    print("family\t%s\t%s" % (f.name, f.type))
    for s in f.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        series = "%s{%s}" % (s.name, labels) if labels else s.name
        print("sample\t%s\t%r" % (series, float(s.value)))
"#;

struct Metrics {
    families: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
    text: String,
}

impl Metrics {
    fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }
    fn must(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no sample {series} in:\n{}", self.text))
    }
    fn is(&self, series: &str, want: f64) {
        assert_eq!(self.must(series), want, "{series} in:\n{}", self.text);
    }
}

fn metrics(d: &Daemon) -> Metrics {
    let (code, head, text) = d.http("GET", "/metrics").unwrap();
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    let parsed = python(PARSE_METRICS, &text);
    let mut m = Metrics {
        families: BTreeMap::new(),
        samples: BTreeMap::new(),
        text,
    };
    for line in parsed.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "family" => {
                m.families.insert(f[1].into(), f[2].into());
            }
            _ => {
                m.samples.insert(f[1].into(), f[2].parse().unwrap());
            }
        }
    }
    m
}

/// Every family, as the parser names them (counters without `_total`), with its type.
const FAMILIES: &[(&str, &str)] = &[
    ("rebouncer_build_info", "gauge"),
    ("rebouncer_start_time_seconds", "gauge"),
    ("rebouncer_waiting_for_pgbouncer", "gauge"),
    ("rebouncer_node_state", "gauge"),
    ("rebouncer_node_check_duration_seconds", "histogram"),
    ("rebouncer_node_checks", "counter"),
    ("rebouncer_node_check_failures", "counter"),
    ("rebouncer_node_last_success_timestamp_seconds", "gauge"),
    ("rebouncer_node_timeline", "gauge"),
    ("rebouncer_node_refuses_new_connections", "gauge"),
    ("rebouncer_stale_primary", "gauge"),
    ("rebouncer_pgbouncer_target_info", "gauge"),
    ("rebouncer_pgbouncer_confirmed", "gauge"),
    ("rebouncer_pgbouncer_on_master", "gauge"),
    ("rebouncer_pgbouncer_databases_paused", "gauge"),
    ("rebouncer_pgbouncer_databases_held", "gauge"),
    ("rebouncer_pgbouncer_databases_unreset", "gauge"),
    ("rebouncer_drift", "gauge"),
    ("rebouncer_failover_pause", "gauge"),
    ("rebouncer_failover_pause_start_timestamp_seconds", "gauge"),
    ("rebouncer_masters", "gauge"),
    ("rebouncer_split_brain", "gauge"),
    ("rebouncer_no_master", "gauge"),
    ("rebouncer_stale_primaries", "gauge"),
    ("rebouncer_switch_refused", "gauge"),
    ("rebouncer_rounds", "counter"),
    ("rebouncer_last_round_duration_seconds", "gauge"),
    ("rebouncer_switches", "counter"),
    ("rebouncer_switch_failures", "counter"),
    ("rebouncer_switch_failing", "gauge"),
    ("rebouncer_last_switch_timestamp_seconds", "gauge"),
    ("rebouncer_last_switch_duration_seconds", "gauge"),
    ("rebouncer_last_switch_step_seconds", "gauge"),
    ("rebouncer_config_reloads", "counter"),
    ("rebouncer_config_last_reload_successful", "gauge"),
    ("rebouncer_state_file_writable", "gauge"),
    ("rebouncer_log_lines_dropped", "counter"),
];

fn all_families_present(m: &Metrics) {
    for (name, kind) in FAMILIES {
        assert_eq!(
            m.families.get(*name).map(String::as_str),
            Some(*kind),
            "family {name} in:\n{}",
            m.text
        );
    }
    assert_eq!(m.families.len(), FAMILIES.len(), "{:?}", m.families);
}

/// A JSON page, parsed.
fn json(d: &Daemon, path: &str) -> Value {
    let (code, head, body) = d.http("GET", path).unwrap();
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Events in /events as (kind, node, text), oldest first; no node is "".
fn events(d: &Daemon) -> Vec<(String, String, String)> {
    let j = json(d, "/events");
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    j["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {j}"))
        .iter()
        .map(|e| (s(&e["kind"]), s(&e["node"]), s(&e["text"])))
        .collect()
}

#[test]
fn metrics_json_and_events_when_healthy_after_a_failover_and_in_split_brain() {
    let c = Cluster::start_default();
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);
    d.wait_for(SHORT, "settled on pg1", |d| {
        c.symlink_node() == Some(1) && d.nagios().starts_with("OK")
    });

    // Healthy.
    let m = metrics(&d);
    all_families_present(&m);
    m.is(r#"rebouncer_build_info{version=0.1.0}"#, 1.0);
    m.is("rebouncer_node_state{node=pg1,state=master}", 1.0);
    m.is("rebouncer_node_state{node=pg1,state=standby}", 0.0);
    m.is("rebouncer_node_state{node=pg2,state=standby}", 1.0);
    m.is("rebouncer_node_state{node=pg3,state=down}", 0.0);
    for n in ["pg1", "pg2", "pg3"] {
        let checks = m.must(&format!("rebouncer_node_checks_total{{node={n}}}"));
        assert!(checks >= 1.0, "{n}: {checks}");
        m.is(
            &format!("rebouncer_node_check_duration_seconds_count{{node={n}}}"),
            checks,
        );
        m.is(
            &format!("rebouncer_node_check_duration_seconds_bucket{{le=+Inf,node={n}}}"),
            checks,
        );
        m.is(
            &format!("rebouncer_node_check_failures_total{{node={n}}}"),
            0.0,
        );
        m.is(&format!("rebouncer_node_timeline{{node={n}}}"), 1.0);
        m.is(&format!("rebouncer_stale_primary{{node={n}}}"), 0.0);
        let last = m.must(&format!(
            "rebouncer_node_last_success_timestamp_seconds{{node={n}}}"
        ));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - last).abs() < 10.0, "{n}: {last} vs {now}");
    }
    m.is("rebouncer_pgbouncer_target_info{node=pg1}", 1.0);
    m.is("rebouncer_pgbouncer_confirmed", 1.0);
    m.is("rebouncer_pgbouncer_on_master", 1.0);
    m.is("rebouncer_masters", 1.0);
    m.is("rebouncer_split_brain", 0.0);
    m.is("rebouncer_no_master", 0.0);
    m.is("rebouncer_stale_primaries", 0.0);
    m.is("rebouncer_drift", 0.0);
    m.is("rebouncer_failover_pause", 0.0);
    m.is("rebouncer_waiting_for_pgbouncer", 0.0);
    m.is("rebouncer_pgbouncer_databases_paused{by=other}", 0.0);
    m.is("rebouncer_pgbouncer_databases_held", 0.0);
    m.is("rebouncer_pgbouncer_databases_unreset", 0.0);
    // The symlink started on pg2's config.
    m.is("rebouncer_switches_total{reason=failover}", 1.0);
    m.is("rebouncer_switches_total{reason=drift}", 0.0);
    m.is("rebouncer_switch_failures_total{reason=admin}", 0.0);
    m.is("rebouncer_switch_failing", 0.0);
    assert!(m.must("rebouncer_rounds_total") >= 1.0);

    // The plain pages are what they always were; JSON only when asked.
    assert_eq!(
        d.http_get("/nodes").unwrap(),
        "pg1: master\npg2: standby\npg3: standby\n"
    );
    let j = json(&d, "/nodes?format=json");
    assert_eq!(j["nodes"][0]["name"], "pg1", "{j}");
    assert_eq!(j["nodes"][0]["state"], "master", "{j}");
    assert_eq!(j["nodes"][1]["state"], "standby", "{j}");
    assert_eq!(j["nodes"][2]["timeline"], 1, "{j}");
    assert_eq!(j["nodes"][0]["last_error"], Value::Null, "{j}");
    assert!(
        j["nodes"][0]["last_check"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{j}"
    );
    let curl = Command::new("curl")
        .args(["-s", "-H", "Accept: application/json"])
        .arg(format!("http://{}/nodes", d.http_addr))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&curl.stdout);
    assert!(
        body.starts_with(r#"{"nodes":[{"name":"pg1","state":"master","#),
        "{body}"
    );
    let j = json(&d, "/?format=json");
    assert_eq!(j["active"], "pg1", "{j}");
    assert_eq!(j["confirmed"], true, "{j}");
    assert_eq!(j["level"], "OK", "{j}");
    let conditions = &j["conditions"];
    assert_eq!(conditions["split_brain"], json!([]), "{j}");
    assert_eq!(conditions["no_master"], false, "{j}");
    assert_eq!(conditions["stale_primaries"], json!([]), "{j}");
    assert_eq!(conditions["drift"], Value::Null, "{j}");
    assert_eq!(conditions["paused"], json!([]), "{j}");
    assert_eq!(j["nodes"][1]["name"], "pg2", "{j}");

    // After a failover.
    c.stop_fast(1);
    c.promote(2);
    d.wait_for(SHORT, "switch to pg2, confirmed", |d| {
        c.bouncer_target_node() == Some(2)
            && d.http_get("/nodes").unwrap_or_default() == "pg1: down\npg2: master\npg3: standby\n"
            && d.nagios().starts_with("WARNING: 1 server down (pg1)")
    });
    let m = metrics(&d);
    all_families_present(&m);
    m.is("rebouncer_node_state{node=pg1,state=down}", 1.0);
    m.is("rebouncer_node_state{node=pg2,state=master}", 1.0);
    assert!(m.must("rebouncer_node_check_failures_total{node=pg1}") >= 1.0);
    m.is("rebouncer_node_timeline{node=pg2}", 2.0);
    m.is("rebouncer_pgbouncer_target_info{node=pg2}", 1.0);
    assert_eq!(m.get("rebouncer_pgbouncer_target_info{node=pg1}"), None);
    m.is("rebouncer_pgbouncer_on_master", 1.0);
    m.is("rebouncer_switches_total{reason=failover}", 2.0);
    let took = m.must("rebouncer_last_switch_duration_seconds");
    let step = m.must("rebouncer_last_switch_step_seconds");
    assert!(
        step > 0.0 && step <= took && took < 10.0,
        "step {step}, took {took}"
    );
    let ev = events(&d);
    let pos = |kind: &str, node: &str| {
        ev.iter()
            .rposition(|(k, n, _)| k == kind && n == node)
            .unwrap_or_else(|| panic!("no {kind} {node} in {ev:#?}"))
    };
    assert_eq!(ev[0].0, "started", "{ev:#?}");
    assert!(pos("state", "pg1") < pos("switch", "pg2"), "{ev:#?}");
    assert!(pos("state", "pg2") < pos("switch", "pg2"), "{ev:#?}");
    let switch = &ev[pos("switch", "pg2")].2;
    assert!(
        switch.starts_with("PgBouncer now points at pg2 (failover from pg1), confirmed"),
        "{switch}"
    );
    let j = json(&d, "/events");
    let last = ev.len() - 1;
    let i = pos("switch", "pg2");
    let e = &j["events"][i];
    assert!(e["switch_seconds"].as_f64().is_some_and(|s| s > 0.0), "{e}");
    assert!(
        e["since_needed_seconds"].as_f64() >= e["switch_seconds"].as_f64(),
        "{e}"
    );
    assert_eq!(j["capacity"], 200, "{j}");
    assert_eq!(
        j["events"][last]["seq"].as_u64(),
        Some(ev.len() as u64),
        "no event dropped yet: {j}"
    );
    let root = d.http_get("/").unwrap();
    assert!(root.contains("Recent events (newest first"), "{root}");
    assert!(
        root.contains("PgBouncer now points at pg2 (failover from pg1)"),
        "{root}"
    );

    // Split brain: two standbys promoted from one primary, both on timeline 2.
    c.promote(3);
    d.wait_for(SHORT, "split brain on /nagios", |d| {
        d.nagios()
            .starts_with("CRITICAL: split brain: 2 masters (pg2, pg3)")
    });
    let m = metrics(&d);
    all_families_present(&m);
    m.is("rebouncer_split_brain", 1.0);
    m.is("rebouncer_masters", 2.0);
    m.is("rebouncer_node_state{node=pg3,state=master}", 1.0);
    m.is("rebouncer_pgbouncer_on_master", 0.0);
    m.is("rebouncer_pgbouncer_target_info{node=pg2}", 1.0);
    m.is("rebouncer_switches_total{reason=failover}", 2.0);
    let j = json(&d, "/?format=json");
    assert_eq!(j["conditions"]["split_brain"], json!(["pg2", "pg3"]), "{j}");
    assert_eq!(j["level"], "CRITICAL", "{j}");
    assert!(
        events(&d)
            .iter()
            .any(|(k, _, t)| k == "split_brain_start" && t.contains("pg2, pg3")),
        "{:#?}",
        events(&d)
    );

    // And the old primary back on timeline 1: a stale primary beside the split brain.
    c.start_node(1);
    d.wait_for(SHORT, "pg1 seen as a stale primary", |d| {
        metrics(d).get("rebouncer_stale_primaries") == Some(1.0)
    });
    let m = metrics(&d);
    m.is("rebouncer_stale_primary{node=pg1}", 1.0);
    m.is("rebouncer_stale_primary{node=pg2}", 0.0);
    m.is("rebouncer_masters", 3.0);
    m.is("rebouncer_split_brain", 1.0);
    m.is("rebouncer_node_timeline{node=pg1}", 1.0);
    let j = json(&d, "/?format=json");
    assert_eq!(
        j["conditions"]["stale_primaries"],
        json!([{"name": "pg1", "timeline": 1, "cluster_timeline": 2, "fenced_by_standby": null}]),
        "{j}"
    );
    assert_eq!(
        j["conditions"]["split_brain"],
        json!(["pg2", "pg3"]),
        "the stale pg1 is not one of the split brain's masters: {j}"
    );
    assert!(
        events(&d)
            .iter()
            .any(|(k, n, _)| k == "stale_primary_start" && n == "pg1")
    );
    assert_eq!(c.bouncer_target_node(), Some(2));
}

/// Datagrams received on `sock` until `until` says stop or `limit` passes.
fn receive_until(
    sock: &UnixDatagram,
    limit: Duration,
    mut until: impl FnMut(&str) -> bool,
) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while t.elapsed() < limit {
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = until(&m);
            got.push(m);
            if done {
                return got;
            }
        }
    }
    panic!("not within {limit:?}; got {got:#?}");
}

#[test]
fn systemd_is_told_ready_after_the_first_round_then_status_and_stopping() {
    let c = Cluster::start_default();
    let cfg = c.write_rebouncer_config(1, 2, "");
    let path = c.root().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut cmd = c.daemon_cmd(&cfg);
    cmd.env
        .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    let mut d = cmd.spawn();
    let got = receive_until(&sock, SHORT, |m| m.contains("READY=1"));
    assert_eq!(got.len(), 1, "READY=1 comes first: {got:#?}");
    let ready = &got[0];
    assert!(ready.starts_with("READY=1\nSTATUS="), "{ready}");
    // The first round has run by then, and the status server listens.
    let nodes = d.http_get("/nodes").unwrap();
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    // The first round already switched PgBouncer to pg1, so READY usually says OK; if
    // not yet, a STATUS line follows when it does.
    let ok = "STATUS=OK: 1 master (pg1, PgBouncer points at it), 2 standbys";
    if !ready.ends_with(&ok["STATUS=".len()..]) {
        let got = receive_until(&sock, SHORT, |m| m == ok);
        assert!(got.iter().all(|m| m.starts_with("STATUS=")), "{got:#?}");
    }
    // A change is told once, as it happens.
    c.stop_fast(3);
    let got = receive_until(&sock, SHORT, |m| {
        m.starts_with("STATUS=WARNING: 1 server down (pg3)")
    });
    assert_eq!(got.len(), 1, "{got:#?}");
    // `systemctl reload` (SIGHUP): RELOADING=1 first, READY=1 once the loop applied it.
    d.signal("HUP").unwrap();
    let got = receive_until(&sock, SHORT, |m| m == "READY=1");
    let reloading = got.iter().position(|m| m.starts_with("RELOADING=1"));
    assert!(
        reloading.is_some_and(|r| r + 1 < got.len()),
        "RELOADING=1 before READY=1: {got:#?}"
    );
    assert!(
        d.log().contains("configuration reloaded from"),
        "{}",
        d.log()
    );
    d.stop();
    let got = receive_until(&sock, Duration::from_secs(5), |m| {
        m.starts_with("STOPPING=1")
    });
    assert_eq!(got.last().unwrap(), "STOPPING=1\nSTATUS=stopping");
}

#[test]
fn systemd_abstract_socket_and_ready_while_pgbouncer_is_awaited() {
    // PgBouncer not running: rebouncer waits for it, which may last; systemd must not
    // keep the unit "activating" until its start timeout and then fail it.
    let c = Cluster::start(Opts::default().bouncer(false));
    let cfg = c.write_rebouncer_config(1, 2, "");
    let name = format!("rebouncer-test-{}", std::process::id());
    let addr = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
    };
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let mut cmd = c.daemon_cmd(&cfg);
    cmd.env.push(("NOTIFY_SOCKET".into(), format!("@{name}")));
    // WatchdogSec=2s: fed every 0.5 s at most, while the loop changes the snapshot.
    cmd.env.push(("WATCHDOG_USEC".into(), "2000000".into()));
    let mut d = cmd.spawn();
    let got = receive_until(&sock, SHORT, |m| m.contains("READY=1"));
    assert!(
        got.last()
            .unwrap()
            .starts_with("READY=1\nSTATUS=CRITICAL: waiting for PgBouncer's admin console"),
        "{got:#?}"
    );
    c.bouncer_start();
    receive_until(&sock, SHORT, |m| m.starts_with("STATUS=OK: 1 master (pg1"));
    // Fed while it polls (interval=1: a round a second).
    let fed = Instant::now();
    let got = receive_until(&sock, Duration::from_secs(10), |m| m == "WATCHDOG=1");
    assert!(fed.elapsed() < Duration::from_secs(3), "{got:#?}");
    d.stop();
    receive_until(&sock, Duration::from_secs(5), |m| {
        m.starts_with("STOPPING=1")
    });
}
