//! `/nagios` (and systemd's `STATUS=` line): one line that starts with the level, OK,
//! WARNING, CRITICAL or UNKNOWN (the plugin and the Go-era checks match on that word),
//! read from the view's verdict. Pure: the caller passes the time.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::decide::NodeState;
use crate::pages::format::{local, plural};
use crate::view::{Level, Phase, Snapshot};

/// How long `/nagios` warns after the log last dropped a line. A check every 5 minutes (a
/// common Nagios `check_interval`) sees it at least once; the count stays on `/metrics`
/// and in the JSON page.
pub const LOG_DROPS_SHOWN_FOR: Duration = Duration::from_secs(10 * 60);

/// The level and what follows it on the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub level: Level,
    pub text: String,
}

impl Health {
    fn new(level: Level, text: String) -> Health {
        Health { level, text }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.level, self.text)
    }
}

/// `/nagios`: the whole line.
pub fn render(s: &Snapshot, now: SystemTime) -> String {
    health(s, now).to_string()
}

fn names_in(s: &Snapshot, state: NodeState) -> Vec<&str> {
    s.nodes
        .iter()
        .filter(|n| n.state == Some(state))
        .map(|n| n.name.as_str())
        .collect()
}

/// "db1 (timeline 1, the cluster is on 2)" or "db1 (timeline 1, standby db2 reports
/// timeline 2)", comma-separated.
fn stale_list(s: &Snapshot) -> String {
    let list: Vec<String> = s
        .stale()
        .iter()
        .map(|x| format!("{} (timeline {}, {})", x.name, x.timeline, x.fence()))
        .collect();
    list.join(", ")
}

/// "; stale primary db1 (timeline 1, the cluster is on 2) never routed to", or "".
fn stale_suffix(s: &Snapshot) -> String {
    let list = stale_list(s);
    if list.is_empty() {
        return String::new();
    }
    format!("; stale primary {list} never routed to")
}

/// What `/nagios` says: its level, and the rest of the line after `LEVEL: `.
pub fn health(s: &Snapshot, now: SystemTime) -> Health {
    let h = servers_health(s, now);
    match &s.etcd {
        Some(v) => {
            let routed = s.confirmed && s.master().is_some() && s.master() == s.active.as_deref();
            let (level, text) = crate::policy::leader::nagios(v, (h.level, h.text), routed, now);
            Health::new(level, text)
        }
        None => h,
    }
}

/// What the servers' answers and PgBouncer say (all of it in polling mode).
fn servers_health(s: &Snapshot, now: SystemTime) -> Health {
    if let Phase::WaitingForPgBouncer { error } = &s.phase {
        return Health::new(
            Level::Critical,
            format!(
                "waiting for PgBouncer's admin console at {}: {}",
                s.pgbouncer, error
            ),
        );
    }
    if s.nodes.iter().any(|n| n.state.is_none()) {
        let age = now.duration_since(s.started).unwrap_or_default();
        if age > s.interval * 3 {
            return Health::new(
                Level::Critical,
                format!(
                    "no round of checks has finished in {} seconds since start-up",
                    age.as_secs()
                ),
            );
        }
        return Health::new(
            Level::Warning,
            "starting up, the first round of checks has not finished yet".into(),
        );
    }
    if let Some(h) = s.pausing() {
        // While clients are held a missing master is expected for up to pause_timeout;
        // past it the hold should have ended, so something is wrong with rebouncer itself.
        let lasted = now.duration_since(h.since).unwrap_or_default();
        let level = if lasted > h.timeout {
            Level::Critical
        } else {
            Level::Warning
        };
        return Health::new(
            level,
            format!(
                "database(s) {} paused by rebouncer for {} s (pause_timeout {} s) since {} stopped being master; clients wait for a new master",
                h.databases.join(", "),
                lasted.as_secs(),
                h.timeout.as_secs(),
                h.lost
            ),
        );
    }
    if s.verdict.is_none() {
        return Health::new(
            Level::Unknown,
            "the configuration changed the servers; the next round of checks decides on them"
                .into(),
        );
    }
    let standbys = names_in(s, NodeState::Standby).len();
    let down = names_in(s, NodeState::Down);
    let counts = format!(
        "{}, {} down",
        plural(standbys, "standby", "standbys"),
        down.len()
    );
    let pointed = s.active.as_deref().unwrap_or("nothing");
    let stale = stale_suffix(s);
    let Some(master) = s.master() else {
        let split = s.split_brain();
        if split.is_empty() {
            return Health::new(
                Level::Critical,
                format!("no master ({counts}){stale}; PgBouncer left pointing at {pointed}"),
            );
        }
        return Health::new(
            Level::Critical,
            format!(
                "split brain: {} masters ({}), switching refused; PgBouncer left pointing at {pointed} ({counts}){stale}",
                split.len(),
                split.join(", ")
            ),
        );
    };
    if let Some(f) = &s.switch_failure {
        if s.active.as_deref() == Some(f.wanted.as_str()) {
            // The link moved; PgBouncer did not follow. Say where it really routes.
            let runs = s
                .not_taken
                .as_ref()
                .map(|n| format!("; {}", n.describe()))
                .unwrap_or_default();
            return Health::new(
                Level::Critical,
                format!(
                    "the symlink points at {}'s config but PgBouncer has not taken it, failing since {}: {}{runs}{stale}",
                    f.wanted,
                    local(f.since),
                    f.error
                ),
            );
        }
        return Health::new(
            Level::Critical,
            format!(
                "PgBouncer points at {pointed} but the master is {}: switch failing since {}: {}{stale}",
                f.wanted,
                local(f.since),
                f.error
            ),
        );
    }
    if let Some(d) = &s.drift {
        return Health::new(
            Level::Critical,
            format!(
                "PgBouncer drifted since {}: {}; switching back to {master}{stale}",
                local(d.since),
                d.what
            ),
        );
    }
    if let Some(r) = s.refusal() {
        return Health::new(Level::Critical, format!("{r}{stale}"));
    }
    if s.active.as_deref() != Some(master) || !s.confirmed {
        return Health::new(
            Level::Critical,
            format!(
                "PgBouncer points at {pointed} but the master is {master}: switch not yet confirmed{stale}"
            ),
        );
    }
    if !s.stale().is_empty() {
        return Health::new(
            Level::Critical,
            format!(
                "stale primary {} accepts connections, never routed to; PgBouncer points at {master}, the primary",
                stale_list(s)
            ),
        );
    }
    if !s.kill_pending.is_empty() {
        return Health::new(
            Level::Warning,
            format!(
                "database(s) {} moved to {master}, KILL pending: their session clients may still be on the old server; KILL retried every round",
                s.kill_pending.join(", ")
            ),
        );
    }
    if !s.resume_pending.is_empty() {
        return Health::new(
            Level::Warning,
            format!(
                "database(s) {} paused by rebouncer's switch in PgBouncer, RESUME pending; RESUME retried every round",
                s.resume_pending.join(", ")
            ),
        );
    }
    let paused: Vec<&str> = s.paused.iter().map(|p| p.name.as_str()).collect();
    if !paused.is_empty() {
        let whose = if s.paused.iter().all(|p| p.by_rebouncer) {
            "by rebouncer's switch"
        } else {
            "not by rebouncer; RESUME them on the admin console when done"
        };
        return Health::new(
            Level::Warning,
            format!(
                "database(s) {} paused in PgBouncer ({whose}); 1 master ({master}, PgBouncer points at it)",
                paused.join(", ")
            ),
        );
    }
    if !down.is_empty() {
        return Health::new(
            Level::Warning,
            format!(
                "{} down ({}); 1 master ({master}), {}",
                plural(down.len(), "server", "servers"),
                down.join(", "),
                plural(standbys, "standby", "standbys")
            ),
        );
    }
    let refusing: Vec<&str> = s
        .nodes
        .iter()
        .filter(|n| n.refuses_new.is_some())
        .map(|n| n.name.as_str())
        .collect();
    if !refusing.is_empty() {
        return Health::new(
            Level::Warning,
            format!(
                "{} refuse(s) new connections (rebouncer's kept session still answers); 1 master ({master})",
                refusing.join(", ")
            ),
        );
    }
    if let Some(e) = &s.state_error {
        if s.pause_on_failover {
            return Health::new(
                Level::Warning,
                format!("{e}; pause_on_failover is off until the state file can be written"),
            );
        }
        return Health::new(Level::Warning, e.clone());
    }
    // The file on disk is what the next start reads: left broken, a reboot stops rebouncer.
    if let Some((r, e)) = s.reload.as_ref().and_then(|r| Some((r, r.error.as_ref()?))) {
        return Health::new(
            Level::Warning,
            format!(
                "configuration reload at {} refused, the running configuration stays but a restart would fail: {e}",
                local(r.at)
            ),
        );
    }
    let oldest = s.nodes.iter().filter_map(|n| n.last_check).min();
    // In etcd mode the servers are checked when the leader key changes, not by the clock.
    if let Some(oldest) = oldest.filter(|_| s.etcd.is_none()) {
        let age = now.duration_since(oldest).unwrap_or_default();
        let max = s.interval * 3;
        if age > max {
            return Health::new(
                Level::Warning,
                format!(
                    "oldest check is {} seconds old, more than {} (three intervals)",
                    age.as_secs(),
                    max.as_secs()
                ),
            );
        }
    }
    let drops = s.log_drops.read();
    if let Some(last) = drops.last
        && now.duration_since(last).unwrap_or_default() <= LOG_DROPS_SHOWN_FOR
    {
        return Health::new(
            Level::Warning,
            format!(
                "{} log line(s) dropped since start, the last at {}: the log could not be written as fast as lines came (a slow, hung or full disk, or a stalled journal?); a line in the log says how many are missing where; 1 master ({master}, PgBouncer points at it)",
                drops.lines,
                local(last)
            ),
        );
    }
    Health::new(
        Level::Ok,
        format!(
            "1 master ({master}, PgBouncer points at it), {}",
            plural(standbys, "standby", "standbys")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::text;
    use crate::view::{FailoverPause, PauseEnd, Phase, ReloadStatus, SwitchFailure};
    use NodeState::*;
    use std::time::Duration;

    fn snap(states: &[(&str, Option<NodeState>)], active: Option<&str>) -> Snapshot {
        Snapshot::checked_now(states, active)
    }

    #[test]
    fn healthy_cluster_is_ok_with_counts() {
        let s = snap(
            &[
                ("db1", Some(Master)),
                ("db2", Some(Standby)),
                ("db3", Some(Standby)),
            ],
            Some("db1"),
        );
        assert_eq!(
            render(&s, SystemTime::now()),
            "OK: 1 master (db1, PgBouncer points at it), 2 standbys"
        );
    }

    #[test]
    fn a_refused_reload_is_a_warning_until_a_reload_succeeds() {
        let mut s = snap(
            &[("db1", Some(Master)), ("db2", Some(Standby))],
            Some("db1"),
        );
        s.reload = Some(ReloadStatus {
            at: SystemTime::now(),
            error: Some("config error in /etc/rebouncer.ini line 3: ...".into()),
            changes: Vec::new(),
            not_applied: Vec::new(),
        });
        let n = render(&s, SystemTime::now());
        assert!(
            n.starts_with("WARNING: configuration reload at ")
                && n.ends_with(
                    "refused, the running configuration stays but a restart would fail: config error in /etc/rebouncer.ini line 3: ..."
                ),
            "{n}"
        );
        // Worse news still comes first.
        s.nodes[0].state = Some(Down);
        s.decide(None);
        assert!(render(&s, SystemTime::now()).starts_with("CRITICAL: no master"));
        s.nodes[0].state = Some(Master);
        s.decide(None);
        s.reload.as_mut().unwrap().error = None;
        assert!(render(&s, SystemTime::now()).starts_with("OK"));
    }

    #[test]
    fn dropped_log_lines_are_a_warning_for_ten_minutes_after_the_last() {
        use crate::logging::{DropTally, DroppedLines};
        let mut s = snap(
            &[("db1", Some(Master)), ("db2", Some(Standby))],
            Some("db1"),
        );
        let now = SystemTime::now();
        let dropped_at = |last| {
            DropTally::saying(DroppedLines {
                lines: 37,
                last: Some(last),
            })
        };
        s.log_drops = dropped_at(now - LOG_DROPS_SHOWN_FOR);
        let n = render(&s, now);
        assert!(
            n.starts_with("WARNING: 37 log line(s) dropped since start, the last at ")
                && n.contains(&local(now - LOG_DROPS_SHOWN_FOR))
                && n.ends_with("; 1 master (db1, PgBouncer points at it)"),
            "{n}"
        );
        s.log_drops = dropped_at(now - LOG_DROPS_SHOWN_FOR - Duration::from_secs(1));
        assert!(render(&s, now).starts_with("OK: "), "{}", render(&s, now));
        // A clock stepped back since the drop: still recent.
        s.log_drops = dropped_at(now + Duration::from_secs(60));
        assert!(render(&s, now).starts_with("WARNING: 37 log line(s)"));
        // Worse news comes first.
        s.nodes[1].state = Some(Down);
        s.decide(None);
        assert!(
            render(&s, now).starts_with("WARNING: 1 server down (db2)"),
            "{}",
            render(&s, now)
        );
        s.nodes[0].state = Some(Down);
        s.decide(None);
        assert!(render(&s, now).starts_with("CRITICAL: no master"));
        // Nothing dropped.
        s.nodes[0].state = Some(Master);
        s.nodes[1].state = Some(Standby);
        s.decide(None);
        s.log_drops = DropTally::default();
        assert!(render(&s, now).starts_with("OK: "));
    }

    #[test]
    fn no_master_is_critical() {
        let s = snap(&[("db1", Some(Down)), ("db2", Some(Standby))], Some("db1"));
        assert_eq!(
            render(&s, SystemTime::now()),
            "CRITICAL: no master (1 standby, 1 down); PgBouncer left pointing at db1"
        );
    }

    #[test]
    fn a_pause_by_rebouncer_is_a_warning_until_pause_timeout_then_critical() {
        let mut s = snap(&[("db1", Some(Down)), ("db2", Some(Standby))], Some("db1"));
        let since = SystemTime::now();
        s.failover_pause = Some(FailoverPause {
            databases: vec!["appdb".into()],
            lost: "db1".into(),
            since,
            timeout: Duration::from_secs(10),
            ended: None,
        });
        assert_eq!(
            render(&s, since + Duration::from_secs(3)),
            "WARNING: database(s) appdb paused by rebouncer for 3 s (pause_timeout 10 s) since db1 stopped being master; clients wait for a new master"
        );
        assert!(
            render(&s, since + Duration::from_secs(11))
                .starts_with("CRITICAL: database(s) appdb paused by rebouncer for 11 s")
        );
        let root = text::root(&s, since + Duration::from_secs(3));
        assert!(
            root.contains("Paused by rebouncer since ")
                && root.contains(
                    "(3 s, at most 10 s): database(s) appdb, because db1 stopped being master"
                ),
            "{root}"
        );
        // Once over it is history on /, and /nagios says what the cluster says.
        s.failover_pause.as_mut().unwrap().ended = Some(PauseEnd {
            lasted: Duration::from_millis(3200),
            outcome: "switched to db2".into(),
            waiting: Some(7),
            resume_failed: false,
        });
        assert!(render(&s, since).starts_with("CRITICAL: no master"));
        let root = text::root(&s, since + Duration::from_secs(5));
        assert!(
            root.contains("for 3200 ms (database(s) appdb, db1 stopped being master; 7 client(s) waiting at the end): switched to db2"),
            "{root}"
        );
    }

    #[test]
    fn split_brain_is_critical_and_names_the_masters() {
        let s = snap(
            &[
                ("db1", Some(Master)),
                ("db2", Some(Master)),
                ("db3", Some(Standby)),
            ],
            Some("db2"),
        );
        let text = render(&s, SystemTime::now());
        assert!(
            text.starts_with("CRITICAL: split brain: 2 masters (db1, db2)"),
            "{text}"
        );
        assert!(text.contains("left pointing at db2"), "{text}");
    }

    #[test]
    fn a_server_down_is_a_warning() {
        let s = snap(
            &[
                ("db1", Some(Master)),
                ("db2", Some(Down)),
                ("db3", Some(Standby)),
            ],
            Some("db1"),
        );
        assert_eq!(
            render(&s, SystemTime::now()),
            "WARNING: 1 server down (db2); 1 master (db1), 1 standby"
        );
    }

    #[test]
    fn stale_checks_are_a_warning() {
        let s = snap(&[("db1", Some(Master))], Some("db1"));
        let later = SystemTime::now() + Duration::from_secs(91);
        let text = render(&s, later);
        assert!(text.starts_with("WARNING: oldest check is 9"), "{text}");
        assert!(text.contains("more than 90"), "{text}");
    }

    #[test]
    fn failing_switch_is_critical_and_says_where_pgbouncer_points() {
        let mut s = snap(&[("db1", Some(Down)), ("db2", Some(Master))], Some("db1"));
        s.switch_failure = Some(SwitchFailure {
            wanted: "db2".into(),
            error: "cannot replace symlink: Permission denied".into(),
            since: SystemTime::now(),
        });
        let text = render(&s, SystemTime::now());
        assert!(
            text.starts_with("CRITICAL: PgBouncer points at db1 but the master is db2"),
            "{text}"
        );
        assert!(text.contains("Permission denied"), "{text}");
    }

    #[test]
    fn unconfirmed_master_is_critical_until_the_switch_is_confirmed() {
        let mut s = snap(&[("db1", Some(Master))], Some("db1"));
        s.confirmed = false;
        assert!(render(&s, SystemTime::now()).starts_with("CRITICAL: PgBouncer points at db1 but"));
    }

    #[test]
    fn waiting_for_pgbouncer_is_critical() {
        let mut s = snap(&[("db1", None)], None);
        s.phase = Phase::WaitingForPgBouncer {
            error: "connection refused".into(),
        };
        assert_eq!(
            render(&s, SystemTime::now()),
            "CRITICAL: waiting for PgBouncer's admin console at 127.0.0.1:6432: connection refused"
        );
        assert!(text::root(&s, SystemTime::now()).contains("waiting for PgBouncer"));
    }

    #[test]
    fn before_the_first_round_it_warns_then_turns_critical() {
        let s = snap(&[("db1", None), ("db2", None)], None);
        assert!(render(&s, SystemTime::now()).starts_with("WARNING: starting up"));
        let much_later = SystemTime::now() + Duration::from_secs(100);
        assert!(render(&s, much_later).starts_with("CRITICAL: no round"));
        assert_eq!(text::nodes(&s), "");
    }

    #[test]
    fn a_stale_primary_beside_the_master_is_not_a_split_brain() {
        let mut s = snap(
            &[
                ("pg1", Some(Master)),
                ("pg2", Some(Master)),
                ("pg3", Some(Standby)),
            ],
            Some("pg2"),
        );
        for (n, t) in s.nodes.iter_mut().zip([1, 2, 2]) {
            n.timeline = Some(t);
        }
        s.decide(Some(2));
        let h = health(&s, SystemTime::now());
        assert_eq!(h.level, Level::Critical);
        assert_eq!(
            h.text,
            "stale primary pg1 (timeline 1, the cluster is on 2) accepts connections, never routed to; PgBouncer points at pg2, the primary"
        );
        // The same states judged without timelines (a role that may not read them): a
        // split brain, and the page says so because the verdict does.
        for n in &mut s.nodes {
            n.timeline = None;
        }
        s.decide(None);
        assert!(
            render(&s, SystemTime::now())
                .starts_with("CRITICAL: split brain: 2 masters (pg1, pg2)")
        );
    }

    #[test]
    fn checked_servers_without_a_verdict_are_unknown() {
        let mut s = snap(
            &[("pg1", Some(Master)), ("pg2", Some(Standby))],
            Some("pg1"),
        );
        assert_eq!(health(&s, SystemTime::now()).level, Level::Ok);
        // A reload that reordered the servers: the last decision named them by place.
        s.verdict = None;
        let h = health(&s, SystemTime::now());
        assert_eq!(h.level, Level::Unknown);
        assert_eq!(
            h.to_string(),
            "UNKNOWN: the configuration changed the servers; the next round of checks decides on them"
        );
    }
}
