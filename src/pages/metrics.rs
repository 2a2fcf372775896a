//! `/metrics`: the snapshot in Prometheus' text exposition format (version 0.0.4), and
//! the counters behind it. One rebouncer runs per application server; the fleet view in
//! Prometheus is what shows the 3 of 200 PgBouncers still on the old primary.
//!
//! Counters live in the view and are bumped by the daemon; rendering is pure. Every
//! family is written even when it has no sample yet where that is possible (a counter at
//! 0 for each known label value), so alerts and dashboards see a series from the start
//! instead of "no data".

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::counters::{BUCKETS, FAILURE_REASONS, SwitchReason};
use crate::decide::NodeState;
use crate::policy::leader::LeaderView;
use crate::view::{Phase, Snapshot};

/// Label values: backslash, double quote and line feed escaped (the format's rules).
/// Written in place: `/metrics` writes hundreds of labels per scrape.
fn push_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// [`BUCKETS`] as `le` label values, as Go's client writes them.
const BUCKET_LABELS: [&str; BUCKETS.len()] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5",
];

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                push_label(&mut self.0, v);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

fn flag(b: bool) -> u8 {
    u8::from(b)
}

/// `/metrics`.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out(String::with_capacity(4096 + 1024 * s.nodes.len()));
    let stale = s.stale();

    o.family(
        "rebouncer_build_info",
        "gauge",
        "Always 1; the version of rebouncer in its label.",
    );
    o.sample(
        "rebouncer_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    o.gauge(
        "rebouncer_start_time_seconds",
        "When rebouncer started, in seconds since the Unix epoch.",
        unix(s.started),
    );
    o.gauge(
        "rebouncer_waiting_for_pgbouncer",
        "1 while PgBouncer's admin console has not answered yet at start-up (nothing is polled until it does).",
        flag(matches!(s.phase, Phase::WaitingForPgBouncer { .. })),
    );

    // Per node.
    let states = [NodeState::Master, NodeState::Standby, NodeState::Down];
    o.family(
        "rebouncer_node_state",
        "gauge",
        "1 for the state the last check found the server in, 0 for the others; all 0 before its first check.",
    );
    for n in &s.nodes {
        for st in states {
            o.sample(
                "rebouncer_node_state",
                &[("node", &n.name), ("state", st.as_str())],
                flag(n.state == Some(st)),
            );
        }
    }
    o.family(
        "rebouncer_node_check_duration_seconds",
        "histogram",
        "How long each check of the server took (a slow server shows here first).",
    );
    for n in &s.nodes {
        let c = &n.counters;
        let mut cumulative = 0;
        for (le, count) in BUCKET_LABELS.iter().zip(c.buckets) {
            cumulative += count;
            o.sample(
                "rebouncer_node_check_duration_seconds_bucket",
                &[("node", &n.name), ("le", le)],
                cumulative,
            );
        }
        o.sample(
            "rebouncer_node_check_duration_seconds_bucket",
            &[("node", &n.name), ("le", "+Inf")],
            c.checks,
        );
        o.sample(
            "rebouncer_node_check_duration_seconds_sum",
            &[("node", &n.name)],
            c.seconds,
        );
        o.sample(
            "rebouncer_node_check_duration_seconds_count",
            &[("node", &n.name)],
            c.checks,
        );
    }
    o.family(
        "rebouncer_node_checks_total",
        "counter",
        "Checks of the server since start.",
    );
    for n in &s.nodes {
        o.sample(
            "rebouncer_node_checks_total",
            &[("node", &n.name)],
            n.counters.checks,
        );
    }
    o.family(
        "rebouncer_node_check_failures_total",
        "counter",
        "Checks that found the server down (refused, timed out, failed) since start.",
    );
    for n in &s.nodes {
        o.sample(
            "rebouncer_node_check_failures_total",
            &[("node", &n.name)],
            n.counters.failures,
        );
    }
    o.family(
        "rebouncer_node_last_success_timestamp_seconds",
        "gauge",
        "When a check of the server last succeeded, in seconds since the Unix epoch; absent until one has.",
    );
    for n in &s.nodes {
        if let Some(t) = n.counters.last_success {
            o.sample(
                "rebouncer_node_last_success_timestamp_seconds",
                &[("node", &n.name)],
                unix(t),
            );
        }
    }
    o.family(
        "rebouncer_node_timeline",
        "gauge",
        "The server's timeline, where the monitoring role may read it.",
    );
    for n in &s.nodes {
        if let Some(t) = n.timeline {
            o.sample("rebouncer_node_timeline", &[("node", &n.name)], t);
        }
    }
    o.family(
        "rebouncer_node_refuses_new_connections",
        "gauge",
        "1 while the server answers on rebouncer's kept session but a new connection failed.",
    );
    for n in &s.nodes {
        o.sample(
            "rebouncer_node_refuses_new_connections",
            &[("node", &n.name)],
            flag(n.refuses_new.is_some()),
        );
    }
    o.family(
        "rebouncer_stale_primary",
        "gauge",
        "1 while the server answers as master on a lower timeline than the cluster has reached (never routed to).",
    );
    for n in &s.nodes {
        o.sample(
            "rebouncer_stale_primary",
            &[("node", &n.name)],
            flag(stale.iter().any(|x| x.name == n.name)),
        );
    }

    // PgBouncer.
    o.family(
        "rebouncer_pgbouncer_target_info",
        "gauge",
        "Always 1; the node whose config PgBouncer's symlink points at in its label. Absent when it points at no node's config.",
    );
    if let Some(a) = &s.active {
        o.sample("rebouncer_pgbouncer_target_info", &[("node", a)], 1);
    }
    o.gauge(
        "rebouncer_pgbouncer_confirmed",
        "1 when PgBouncer confirmed (SHOW DATABASES) that it routes as the target node's config says.",
        flag(s.active.is_some() && s.confirmed),
    );
    let on_master = s.master().is_some_and(|m| s.active.as_deref() == Some(m))
        && s.confirmed
        && s.switch_failure.is_none()
        && s.drift.is_none();
    o.gauge(
        "rebouncer_pgbouncer_on_master",
        "1 when there is exactly one primary and PgBouncer is confirmed on it; 0 otherwise (no master, split brain, switch pending or failing, drift).",
        flag(on_master),
    );
    o.family(
        "rebouncer_pgbouncer_databases_paused",
        "gauge",
        "Databases PgBouncer showed as paused at the last check of its routes, by who paused them.",
    );
    let by_us = s.paused.iter().filter(|p| p.by_rebouncer).count();
    o.sample(
        "rebouncer_pgbouncer_databases_paused",
        &[("by", "rebouncer")],
        by_us,
    );
    o.sample(
        "rebouncer_pgbouncer_databases_paused",
        &[("by", "other")],
        s.paused.len() - by_us,
    );
    o.gauge(
        "rebouncer_pgbouncer_databases_held",
        "Databases a switch killed and could not resume yet (RESUME retried every round).",
        s.resume_pending.len(),
    );
    o.gauge(
        "rebouncer_pgbouncer_databases_unreset",
        "Databases a switch moved whose KILL has not gone through: session clients may still be on the old server (retried every round).",
        s.kill_pending.len(),
    );
    // Clients held in PgBouncer through a failover (pause_on_failover).
    let holding = s.pausing();
    o.gauge(
        "rebouncer_failover_pause",
        "1 while rebouncer holds clients in PgBouncer (PAUSE) waiting for a new primary.",
        flag(holding.is_some()),
    );
    o.gauge(
        "rebouncer_failover_pause_start_timestamp_seconds",
        "When the current failover pause started (unix time; time() minus this is its age); 0 when there is none.",
        holding
            .and_then(|h| h.since.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    o.gauge(
        "rebouncer_drift",
        "1 while PgBouncer is found not where rebouncer put it (until a switch puts it back).",
        flag(s.drift.is_some()),
    );

    // The cluster.
    o.gauge(
        "rebouncer_masters",
        "Servers that answered as master at their last check (stale primaries included).",
        s.nodes
            .iter()
            .filter(|n| n.state == Some(NodeState::Master))
            .count(),
    );
    o.gauge(
        "rebouncer_split_brain",
        "1 while more than one server that is not a stale primary answers as master; nothing is switched.",
        flag(!s.split_brain().is_empty()),
    );
    o.gauge(
        "rebouncer_no_master",
        "1 while every server has been checked and none is a usable master.",
        flag(s.no_master()),
    );
    o.gauge(
        "rebouncer_stale_primaries",
        "Servers answering as master on a lower timeline than the cluster has reached.",
        stale.len(),
    );
    o.gauge(
        "rebouncer_switch_refused",
        "1 while the single master is not switched to (it refuses new logins, or a split brain did not resolve cleanly).",
        flag(s.refusal().is_some()),
    );

    // Rounds and switches.
    o.family(
        "rebouncer_rounds_total",
        "counter",
        "Rounds of checks since start.",
    );
    o.sample("rebouncer_rounds_total", &[], s.counters.rounds);
    if let Some(r) = &s.last_round {
        o.gauge(
            "rebouncer_last_round_duration_seconds",
            "How long the last round of checks took (the slowest server's time).",
            r.took.as_secs_f64(),
        );
    }
    o.family(
        "rebouncer_switches_total",
        "counter",
        "Switches PgBouncer confirmed, by reason: initial (the symlink pointed at no node), confirm (it already pointed at the master), failover, drift.",
    );
    for (r, n) in SwitchReason::ALL.iter().zip(s.counters.switches) {
        o.sample("rebouncer_switches_total", &[("reason", r.as_str())], n);
    }
    o.family(
        "rebouncer_switch_failures_total",
        "counter",
        "Switch attempts that failed, by where they stopped: node_file, admin, symlink, reload, not_applied.",
    );
    for (r, n) in FAILURE_REASONS.iter().zip(s.counters.switch_failures) {
        o.sample("rebouncer_switch_failures_total", &[("reason", r)], n);
    }
    o.gauge(
        "rebouncer_switch_failing",
        "1 while the last switch attempt failed (retried every round).",
        flag(s.switch_failure.is_some()),
    );
    if let Some((at, took)) = s.counters.last_switch {
        o.gauge(
            "rebouncer_last_switch_timestamp_seconds",
            "When PgBouncer confirmed the last switch that moved its symlink, in seconds since the Unix epoch.",
            unix(at),
        );
        o.gauge(
            "rebouncer_last_switch_duration_seconds",
            "From the new master first seen as master (or the drift found) to PgBouncer confirmed on it, for the last switch.",
            took.as_secs_f64(),
        );
    }
    if let Some(took) = s.counters.last_switch_step {
        o.gauge(
            "rebouncer_last_switch_step_seconds",
            "How long the last switch itself took: admin check, symlink, RELOAD, confirmation.",
            took.as_secs_f64(),
        );
    }

    // Configuration reloads.
    o.family(
        "rebouncer_config_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP) since start, by result: ok (applied), failed (refused; the running configuration stays).",
    );
    o.sample(
        "rebouncer_config_reloads_total",
        &[("result", "ok")],
        s.counters.reloads_ok,
    );
    o.sample(
        "rebouncer_config_reloads_total",
        &[("result", "failed")],
        s.counters.reloads_failed,
    );
    o.gauge(
        "rebouncer_config_last_reload_successful",
        "0 when the last configuration reload was refused (the file on disk is not what runs), 1 otherwise.",
        flag(s.reload.as_ref().is_none_or(|r| r.error.is_none())),
    );

    // The state file: the fence against stale primaries survives a restart only on disk.
    o.gauge(
        "rebouncer_state_file_writable",
        "0 while the state file cannot be written (retried every round): the highest timeline seen, which keeps a stale primary from being routed to, is only in memory and a restart loses it, and pause_on_failover, if set, is off; 1 when the last write worked or none was needed.",
        flag(s.state_error.is_none()),
    );

    if let Some(v) = &s.etcd {
        etcd(&mut o, v);
    }

    // The log itself: the one place that cannot say it lost lines.
    o.family(
        "rebouncer_log_lines_dropped_total",
        "counter",
        "Log lines dropped since start because the log could not be written as fast as they came (a slow, hung or full disk, or a stalled journal); the log has a line saying how many are missing where.",
    );
    o.sample(
        "rebouncer_log_lines_dropped_total",
        &[],
        s.log_drops.read().lines,
    );
    o.0
}

/// The etcd mode's families, written only in that mode: in polling mode there is no watch
/// whose absence an alert should see.
fn etcd(o: &mut Out, v: &LeaderView) {
    o.gauge(
        "rebouncer_etcd_connected",
        "1 while the watch of Patroni's leader key is in place; 0 before etcd was first heard and while it cannot be (nothing is switched then).",
        flag(v.connected()),
    );
    o.family(
        "rebouncer_etcd_watch_lost_total",
        "counter",
        "Times the watch of the leader key was lost since start (etcd refused, timed out or went silent); rebouncer reconnects after each.",
    );
    o.sample("rebouncer_etcd_watch_lost_total", &[], v.watch_lost);
    o.family(
        "rebouncer_etcd_last_event_timestamp_seconds",
        "gauge",
        "When the watch last reported the key or its loss, in seconds since the Unix epoch; absent until it has. A leader holding the key does not rewrite it, so this ages in a settled cluster.",
    );
    if let Some(t) = v.last_event {
        o.sample("rebouncer_etcd_last_event_timestamp_seconds", &[], unix(t));
    }
    o.family(
        "rebouncer_etcd_leader_change_timestamp_seconds",
        "gauge",
        "When the leader key last changed as rebouncer saw it, in seconds since the Unix epoch; absent until it has been heard.",
    );
    if let Some(t) = v.changed {
        o.sample(
            "rebouncer_etcd_leader_change_timestamp_seconds",
            &[],
            unix(t),
        );
    }
    o.gauge(
        "rebouncer_etcd_leader_address_mismatch",
        "1 while the leader's member record in etcd (conn_url) advertises another host or port than its [servers] entry's connection string: etcd_members or that connection string is wrong.",
        flag(v.address_mismatch.is_some()),
    );
    o.family(
        "rebouncer_etcd_leader_info",
        "gauge",
        "Always 1; the member Patroni's leader key names, as last heard, and the [servers] entry it maps to (empty when none) in its labels. Absent while the key is absent (Patroni has no leader) or not heard yet.",
    );
    if let Some(m) = &v.leader {
        o.sample(
            "rebouncer_etcd_leader_info",
            &[("member", m), ("node", v.server.as_deref().unwrap_or(""))],
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::PausedDatabase;
    use NodeState::*;
    use std::time::Duration;

    fn snap(states: &[(&str, Option<NodeState>)], active: Option<&str>) -> Snapshot {
        let names: Vec<String> = states.iter().map(|(n, _)| n.to_string()).collect();
        let mut s = Snapshot::new(&names, Duration::from_secs(30), "x".into());
        for (node, (_, st)) in s.nodes.iter_mut().zip(states) {
            node.state = *st;
        }
        s.active = active.map(str::to_string);
        s.confirmed = active.is_some();
        s.decide(None);
        s
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_string)
    }

    #[test]
    fn healthy() {
        let mut s = snap(
            &[("pg1", Some(Master)), ("pg2", Some(Standby))],
            Some("pg1"),
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        s.nodes[0]
            .counters
            .record(Duration::from_micros(300), true, t);
        s.nodes[0]
            .counters
            .record(Duration::from_millis(30), true, t);
        s.nodes[1].counters.record(Duration::from_secs(3), false, t);
        s.nodes[0].timeline = Some(2);
        s.counters.rounds = 7;
        s.counters.switched(SwitchReason::Confirm);
        let m = render(&s);
        let v = |series| value(&m, series);
        assert_eq!(
            v(r#"rebouncer_node_state{node="pg1",state="master"}"#),
            Some("1".into())
        );
        assert_eq!(
            v(r#"rebouncer_node_state{node="pg1",state="standby"}"#),
            Some("0".into())
        );
        assert_eq!(
            v(r#"rebouncer_node_state{node="pg2",state="standby"}"#),
            Some("1".into())
        );
        assert_eq!(
            v(r#"rebouncer_node_check_duration_seconds_bucket{node="pg1",le="0.0005"}"#),
            Some("1".into())
        );
        assert_eq!(
            v(r#"rebouncer_node_check_duration_seconds_bucket{node="pg1",le="0.05"}"#),
            Some("2".into())
        );
        assert_eq!(
            v(r#"rebouncer_node_check_duration_seconds_bucket{node="pg2",le="2.5"}"#),
            Some("0".into())
        );
        assert_eq!(
            v(r#"rebouncer_node_check_duration_seconds_bucket{node="pg2",le="+Inf"}"#),
            Some("1".into())
        );
        assert_eq!(
            v(r#"rebouncer_node_checks_total{node="pg1"}"#),
            Some("2".into())
        );
        assert_eq!(
            v(r#"rebouncer_node_check_failures_total{node="pg2"}"#),
            Some("1".into())
        );
        assert_eq!(
            v(r#"rebouncer_node_last_success_timestamp_seconds{node="pg1"}"#),
            Some("1000".into())
        );
        assert_eq!(
            v(r#"rebouncer_node_last_success_timestamp_seconds{node="pg2"}"#),
            None
        );
        assert_eq!(
            v(r#"rebouncer_node_timeline{node="pg1"}"#),
            Some("2".into())
        );
        assert_eq!(
            v(r#"rebouncer_pgbouncer_target_info{node="pg1"}"#),
            Some("1".into())
        );
        assert_eq!(v("rebouncer_pgbouncer_on_master"), Some("1".into()));
        assert_eq!(v("rebouncer_masters"), Some("1".into()));
        assert_eq!(v("rebouncer_split_brain"), Some("0".into()));
        assert_eq!(v("rebouncer_rounds_total"), Some("7".into()));
        assert_eq!(v("rebouncer_state_file_writable"), Some("1".into()));
        assert_eq!(
            v(r#"rebouncer_switches_total{reason="confirm"}"#),
            Some("1".into())
        );
        assert_eq!(
            v(r#"rebouncer_switches_total{reason="failover"}"#),
            Some("0".into())
        );
        assert_eq!(
            v(r#"rebouncer_switch_failures_total{reason="symlink"}"#),
            Some("0".into())
        );
        // Every sample belongs to a family declared right before it, once.
        let mut declared = Vec::new();
        for l in m.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!declared.contains(&name.to_string()), "{name} twice");
                declared.push(name.to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let family = declared.last().unwrap();
                assert!(name.starts_with(family.as_str()), "{l} after {family}");
            }
        }
    }

    #[test]
    fn split_brain_stale_and_paused() {
        let mut s = snap(
            &[
                ("pg1", Some(Master)),
                ("pg2", Some(Master)),
                ("pg3", Some(Master)),
            ],
            Some("pg2"),
        );
        for (n, t) in s.nodes.iter_mut().zip([1, 2, 2]) {
            n.timeline = Some(t);
        }
        s.decide(Some(2));
        s.paused = vec![PausedDatabase {
            name: "app".into(),
            by_rebouncer: false,
        }];
        let m = render(&s);
        let v = |series| value(&m, series);
        assert_eq!(v("rebouncer_masters"), Some("3".into()));
        assert_eq!(v("rebouncer_split_brain"), Some("1".into()));
        assert_eq!(v("rebouncer_pgbouncer_on_master"), Some("0".into()));
        assert_eq!(v("rebouncer_stale_primaries"), Some("1".into()));
        assert_eq!(
            v(r#"rebouncer_stale_primary{node="pg1"}"#),
            Some("1".into())
        );
        assert_eq!(
            v(r#"rebouncer_stale_primary{node="pg2"}"#),
            Some("0".into())
        );
        assert_eq!(
            v(r#"rebouncer_pgbouncer_databases_paused{by="other"}"#),
            Some("1".into())
        );
    }

    #[test]
    fn state_file_writable_follows_the_write_error() {
        let mut s = snap(
            &[("pg1", Some(Master)), ("pg2", Some(Standby))],
            Some("pg1"),
        );
        s.state_file = "/var/lib/rebouncer/rebouncer.state".into();
        s.pause_on_failover = true;
        assert_eq!(
            value(&render(&s), "rebouncer_state_file_writable"),
            Some("1".into())
        );
        s.state_error = Some(
            "cannot write state file /var/lib/rebouncer/rebouncer.state: Permission denied".into(),
        );
        let m = render(&s);
        assert_eq!(value(&m, "rebouncer_state_file_writable"), Some("0".into()));
        // Only this gauge says it: PgBouncer is still on the master.
        assert_eq!(value(&m, "rebouncer_pgbouncer_on_master"), Some("1".into()));
        assert!(
            m.contains("# TYPE rebouncer_state_file_writable gauge\n"),
            "{m}"
        );
    }

    #[test]
    fn dropped_log_lines_are_counted_from_zero() {
        use crate::logging::{DropTally, DroppedLines};
        let mut s = snap(&[("pg1", Some(Master))], Some("pg1"));
        s.log_drops = DropTally::default();
        let m = render(&s);
        assert_eq!(
            value(&m, "rebouncer_log_lines_dropped_total"),
            Some("0".into())
        );
        assert!(
            m.contains("# TYPE rebouncer_log_lines_dropped_total counter\n"),
            "{m}"
        );
        s.log_drops = DropTally::saying(DroppedLines {
            lines: 1234,
            last: Some(SystemTime::UNIX_EPOCH),
        });
        assert_eq!(
            value(&render(&s), "rebouncer_log_lines_dropped_total"),
            Some("1234".into())
        );
    }

    #[test]
    fn bucket_labels_are_the_buckets() {
        for (b, l) in BUCKETS.iter().zip(BUCKET_LABELS) {
            assert_eq!(l.parse::<f64>().unwrap(), *b);
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let s = snap(&[("a\"b\\c\nd", Some(Down))], None);
        let m = render(&s);
        assert!(
            m.contains(r#"rebouncer_node_checks_total{node="a\"b\\c\nd"} 0"#),
            "{m}"
        );
        assert!(!m.contains("rebouncer_pgbouncer_target_info{"), "{m}");
        assert_eq!(value(&m, "rebouncer_no_master"), Some("1".into()));
    }

    #[test]
    fn the_etcd_families_only_in_etcd_mode() {
        use crate::policy::leader::LeaderView;
        let mut s = snap(
            &[("pg1", Some(Master)), ("pg2", Some(Standby))],
            Some("pg1"),
        );
        let m = render(&s);
        assert!(!m.contains("rebouncer_etcd"), "{m}");

        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        s.etcd = Some(LeaderView {
            key: "/service/main/leader".into(),
            ..LeaderView::default()
        });
        let m = render(&s);
        assert_eq!(value(&m, "rebouncer_etcd_connected"), Some("0".into()));
        assert_eq!(
            value(&m, "rebouncer_etcd_watch_lost_total"),
            Some("0".into())
        );
        assert!(m.contains("# TYPE rebouncer_etcd_watch_lost_total counter\n"));
        assert_eq!(
            value(&m, "rebouncer_etcd_last_event_timestamp_seconds"),
            None
        );
        assert!(!m.contains("rebouncer_etcd_leader_info{"), "{m}");

        let v = s.etcd.as_mut().unwrap();
        v.heard = true;
        v.leader = Some("pg-a".into());
        v.server = Some("pg1".into());
        v.changed = Some(at(1_000));
        v.last_event = Some(at(1_500));
        v.watch_lost = 3;
        let m = render(&s);
        assert_eq!(value(&m, "rebouncer_etcd_connected"), Some("1".into()));
        assert_eq!(
            value(&m, "rebouncer_etcd_watch_lost_total"),
            Some("3".into())
        );
        assert_eq!(
            value(&m, "rebouncer_etcd_last_event_timestamp_seconds"),
            Some("1500".into())
        );
        assert_eq!(
            value(&m, "rebouncer_etcd_leader_change_timestamp_seconds"),
            Some("1000".into())
        );
        assert_eq!(
            value(
                &m,
                r#"rebouncer_etcd_leader_info{member="pg-a",node="pg1"}"#
            ),
            Some("1".into())
        );

        // etcd lost: the last known leader stays in the info, the watch is not connected.
        let v = s.etcd.as_mut().unwrap();
        v.unreachable = Some((at(2_000), "timed out".into()));
        v.server = None;
        let m = render(&s);
        assert_eq!(value(&m, "rebouncer_etcd_connected"), Some("0".into()));
        assert_eq!(
            value(&m, r#"rebouncer_etcd_leader_info{member="pg-a",node=""}"#),
            Some("1".into())
        );
        assert_eq!(
            value(&m, "rebouncer_etcd_leader_address_mismatch"),
            Some("0".into())
        );
        s.etcd.as_mut().unwrap().address_mismatch = Some("pg-a advertises x:1".into());
        assert_eq!(
            value(&render(&s), "rebouncer_etcd_leader_address_mismatch"),
            Some("1".into())
        );
        // Patroni has no leader: no info series.
        s.etcd.as_mut().unwrap().leader = None;
        assert!(!render(&s).contains("rebouncer_etcd_leader_info{"));
    }
}
