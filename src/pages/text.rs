//! The plain-text pages: `/` for people, `/nodes` for the Go-era scripts (byte for byte
//! what they always read), `/events?format=text`. Pure: the caller passes the time.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::pages::format::{local, millis, plural};
use crate::pages::nagios;
use crate::view::{Phase, Snapshot};

/// `/nodes`: one `name: state` line per checked server, in file order. A server not yet
/// checked is left out rather than reported as something it may not be.
pub fn nodes(s: &Snapshot) -> String {
    let mut out = String::new();
    for n in &s.nodes {
        if let Some(state) = n.state {
            let _ = writeln!(out, "{}: {}", n.name, state);
        }
    }
    out
}

/// `/`: an overview for people.
pub fn root(s: &Snapshot, now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rebouncer {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "Current time: {}", local(now));
    let _ = writeln!(out, "Running since: {}", local(s.started));
    match &s.phase {
        Phase::WaitingForPgBouncer { error } => {
            let _ = writeln!(
                out,
                "State: waiting for PgBouncer's admin console at {}: {error}",
                s.pgbouncer
            );
        }
        Phase::Running => {
            if s.etcd.is_some() {
                let _ = writeln!(out, "State: following Patroni's leader key in etcd");
            } else {
                let _ = writeln!(out, "State: polling every {} s", s.interval.as_secs());
            }
        }
    }
    if let Some(r) = &s.last_round {
        let _ = writeln!(
            out,
            "Last round: {} of {} answered in {}",
            r.answered,
            plural(r.asked, "server", "servers"),
            millis(r.took)
        );
    }
    let _ = writeln!(out, "Status: {}", nagios::render(s, now));
    if let Some(v) = &s.etcd {
        let _ = writeln!(out, "{}", crate::policy::leader::describe(v, now));
    }
    let pointed = match (&s.active, s.confirmed) {
        (None, _) => "nothing known (the symlink points at no node's config)".to_string(),
        (Some(a), true) => format!("{a} (confirmed by PgBouncer)"),
        (Some(a), false) => format!("{a} (symlink only, not yet confirmed by PgBouncer)"),
    };
    let _ = writeln!(out, "PgBouncer points at: {pointed}");
    if let Some(t) = s.last_switch {
        let _ = writeln!(out, "Last switch: {}", local(t));
    }
    if let Some(f) = &s.switch_failure {
        let _ = writeln!(
            out,
            "Switch to {} failing since {}: {}",
            f.wanted,
            local(f.since),
            f.error
        );
    }
    for st in s.stale() {
        let _ = writeln!(
            out,
            "Stale primary: {} answers as master on timeline {}, but {}; never routed to",
            st.name,
            st.timeline,
            st.fence()
        );
    }
    if let Some(r) = s.refusal() {
        let _ = writeln!(out, "Not switching: {r}");
    }
    if let Some(d) = &s.drift {
        let _ = writeln!(
            out,
            "PgBouncer drifted since {}: {}",
            local(d.since),
            d.what
        );
    }
    if let Some(n) = &s.not_taken {
        let _ = writeln!(out, "PgBouncer does not take the symlink: {}", n.describe());
    }
    for p in &s.paused {
        let whose = if p.by_rebouncer {
            "by rebouncer's switch"
        } else {
            "not by rebouncer (left for whoever paused it to RESUME)"
        };
        let _ = writeln!(out, "Paused in PgBouncer: {} ({whose})", p.name);
    }
    if let Some(h) = &s.failover_pause {
        let _ = match &h.ended {
            None => writeln!(
                out,
                "Paused by rebouncer since {} ({} s, at most {} s): database(s) {}, because {} stopped being master",
                local(h.since),
                now.duration_since(h.since).unwrap_or_default().as_secs(),
                h.timeout.as_secs(),
                h.databases.join(", "),
                h.lost
            ),
            Some(end) => writeln!(
                out,
                "Last pause by rebouncer: {} for {} ms (database(s) {}, {} stopped being master; {} client(s) waiting at the end): {}",
                local(h.since),
                end.lasted.as_millis(),
                h.databases.join(", "),
                h.lost,
                end.waiting.map_or("unknown".to_string(), |w| w.to_string()),
                end.outcome
            ),
        };
    }
    if !s.kill_pending.is_empty() {
        let _ = writeln!(
            out,
            "KILL pending (moved, but session clients may still be on the old server; retried every round): {}",
            s.kill_pending.join(", ")
        );
    }
    if !s.resume_pending.is_empty() && s.pausing().is_none() {
        let _ = writeln!(
            out,
            "RESUME pending (paused by rebouncer; retried every round): {}",
            s.resume_pending.join(", ")
        );
    }
    if !s.state_file.is_empty() {
        match &s.state_error {
            None => {
                let _ = writeln!(out, "State file: {}", s.state_file);
            }
            Some(e) => {
                let _ = writeln!(out, "State file: {e}");
                if s.pause_on_failover {
                    let _ = writeln!(
                        out,
                        "Pausing: off until the state file can be written (pause_on_failover is on; retried every round)"
                    );
                }
            }
        }
    }
    let drops = s.log_drops.read();
    if let Some(last) = drops.last {
        let _ = writeln!(
            out,
            "Log: {} line(s) dropped since start, the last at {}: the log could not be written as fast as lines came",
            drops.lines,
            local(last)
        );
    }
    for w in &s.config_warnings {
        let _ = writeln!(out, "Config warning: {w}");
    }
    if let Some(r) = &s.reload {
        match &r.error {
            Some(e) => {
                let _ = writeln!(
                    out,
                    "Last config reload: {} FAILED, the running configuration stays: {e}",
                    local(r.at)
                );
            }
            None if r.changes.is_empty() => {
                let _ = writeln!(out, "Last config reload: {}: no changes", local(r.at));
            }
            None => {
                let _ = writeln!(
                    out,
                    "Last config reload: {}: {}",
                    local(r.at),
                    r.changes.join("; ")
                );
            }
        }
        for n in &r.not_applied {
            let _ = writeln!(out, "Config reload NOT applied (needs a restart): {n}");
        }
    }
    let _ = writeln!(out, "\nNode status:");
    for n in &s.nodes {
        match (n.state, n.last_check) {
            (Some(state), Some(checked)) => {
                let since = n.since.map(local).unwrap_or_default();
                let took = n
                    .took
                    .map(|t| format!(" in {}", millis(t)))
                    .unwrap_or_default();
                let timeline = n
                    .timeline
                    .map(|t| format!(", timeline {t}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{}: {} (last checked {}{took}, {} since {}{timeline})",
                    n.name,
                    state,
                    local(checked),
                    state,
                    since
                );
            }
            _ => {
                let _ = writeln!(out, "{}: not checked yet", n.name);
            }
        }
        if let Some(e) = &n.error {
            let _ = writeln!(out, "    last error: {e}");
        }
        if let Some(e) = &n.refuses_new {
            let _ = writeln!(out, "    refuses new connections: {e}");
        }
        if let Some(note) = &n.timeline_note {
            let _ = writeln!(out, "    timeline: {note}");
        }
        if let Some(t) = n.next_try {
            let _ = writeln!(
                out,
                "    keeps failing: next check in {:.1} s (asked less often until it answers or something changes)",
                t.as_secs_f64()
            );
        }
    }
    if !s.events.is_empty() {
        // Below everything else: scripts that read the lines above see them unchanged.
        let _ = writeln!(
            out,
            "\nRecent events (newest first; all {} kept at /events):",
            s.events.len()
        );
        for e in s.recent_events().rev() {
            let _ = writeln!(out, "{}  {}", local(e.at), e.text);
        }
    }
    out
}

/// `/events?format=text`: every event kept, oldest first, one line each.
pub fn events(s: &Snapshot) -> String {
    let mut out = String::new();
    for e in s.events.iter() {
        let _ = writeln!(out, "{}  {}  {}", local(e.at), e.kind.as_str(), e.text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::NodeState::{self, *};
    use crate::view::RoundStats;
    use std::time::Duration;

    fn snap(states: &[(&str, Option<NodeState>)], active: Option<&str>) -> Snapshot {
        Snapshot::checked_now(states, active)
    }

    #[test]
    fn nodes_page_lists_checked_nodes_in_file_order() {
        let s = snap(
            &[
                ("zeta", Some(Standby)),
                ("alpha", Some(Master)),
                ("mid", Some(Down)),
            ],
            Some("alpha"),
        );
        assert_eq!(nodes(&s), "zeta: standby\nalpha: master\nmid: down\n");
    }

    #[test]
    fn root_page_ends_with_the_latest_events_newest_first() {
        let mut s = snap(&[("db1", Some(Master))], Some("db1"));
        assert!(!root(&s, SystemTime::now()).contains("Recent events"));
        for i in 0..12 {
            s.events.push(
                SystemTime::now(),
                crate::events::Kind::State,
                None,
                format!("event {i}"),
            );
        }
        let text = root(&s, SystemTime::now());
        let tail = text.split("Recent events").nth(1).unwrap();
        let lines: Vec<&str> = tail.lines().skip(1).collect();
        assert_eq!(lines.len(), crate::view::RECENT_EVENTS, "{text}");
        assert!(lines[0].ends_with("  event 11"), "{text}");
        assert!(lines[9].ends_with("  event 2"), "{text}");
    }

    #[test]
    fn root_page_shows_each_node_and_the_active_one() {
        let mut s = snap(&[("db1", Some(Master)), ("db2", Some(Down))], Some("db1"));
        s.nodes[1].error = Some("127.0.0.1:5433: connection refused".into());
        s.nodes[0].took = Some(Duration::from_micros(300));
        s.last_round = Some(RoundStats {
            asked: 2,
            answered: 2,
            took: Duration::from_micros(1500),
        });
        s.config_warnings =
            vec!["rebouncer.ini:7: unknown key \"loglevel\" in [global] is ignored".into()];
        let text = root(&s, SystemTime::now());
        assert!(
            text.contains("Config warning: rebouncer.ini:7: unknown key \"loglevel\""),
            "{text}"
        );
        assert!(
            text.contains("Last round: 2 of 2 servers answered in 1.5 ms"),
            "{text}"
        );
        assert!(text.contains(" in 0.3 ms, master since "), "{text}");
        assert!(text.contains("db1: master (last checked "), "{text}");
        assert!(text.contains("db2: down (last checked "), "{text}");
        assert!(
            text.contains("last error: 127.0.0.1:5433: connection refused"),
            "{text}"
        );
        assert!(
            text.contains("PgBouncer points at: db1 (confirmed by PgBouncer)"),
            "{text}"
        );
    }

    #[test]
    fn root_page_says_when_log_lines_were_dropped() {
        use crate::logging::{DropTally, DroppedLines};
        let mut s = snap(&[("db1", Some(Master))], Some("db1"));
        s.log_drops = DropTally::default();
        assert!(!root(&s, SystemTime::now()).contains("Log: "));
        let last = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_748_800);
        s.log_drops = DropTally::saying(DroppedLines {
            lines: 5,
            last: Some(last),
        });
        let text = root(&s, SystemTime::now());
        assert!(
            text.contains(&format!(
                "Log: 5 line(s) dropped since start, the last at {}: ",
                local(last)
            )),
            "{text}"
        );
    }
}
