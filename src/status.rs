//! The snapshot of what rebouncer knows, shared with the status pages, and the text of
//! those pages. Rendering is pure (the caller passes the time) so the `/nagios` rules can
//! be tested without a server.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Local};

use crate::decide::NodeState;
use crate::events::Events;
use crate::json::Value;
use crate::metrics::{Counters, NodeCounters};

/// One server as the pages show it.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub name: String,
    /// `None` until the first check finished.
    pub state: Option<NodeState>,
    pub last_check: Option<SystemTime>,
    /// When the server entered its current state.
    pub since: Option<SystemTime>,
    /// Why the last check said `down` (connection error, timeout), for people.
    pub error: Option<String>,
    /// How long the last check took to answer: a slow server shows here first.
    pub took: Option<Duration>,
    /// Its timeline, where the monitoring role may read it.
    pub timeline: Option<u32>,
    /// Why its timeline cannot be read, if it cannot.
    pub timeline_note: Option<String>,
    /// It answers on rebouncer's kept session, but a new connection failed with this.
    pub refuses_new: Option<String>,
    /// A server that keeps failing is asked less often: the time to its next check.
    pub next_try: Option<Duration>,
    /// Its checks since start, for `/metrics`.
    pub counters: NodeCounters,
}

impl NodeStatus {
    /// A server not checked yet.
    pub fn new(name: &str) -> NodeStatus {
        NodeStatus {
            name: name.to_string(),
            state: None,
            last_check: None,
            since: None,
            error: None,
            took: None,
            timeline: None,
            timeline_note: None,
            refuses_new: None,
            next_try: None,
            counters: NodeCounters::default(),
        }
    }
}

/// The last configuration reload (SIGHUP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadStatus {
    pub at: SystemTime,
    /// Why it was refused (the running configuration stayed); `None` when applied.
    pub error: Option<String>,
    /// What it changed, one item each.
    pub changes: Vec<String>,
    /// Settings changed in the file that need a restart; their old values stay.
    pub not_applied: Vec<String>,
}

/// A master on a lower timeline than the cluster has reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleStatus {
    pub name: String,
    pub timeline: u32,
    pub highest: u32,
    /// The standby that reports `highest`, when no master reached it: the fence lasts
    /// only while that standby reports it.
    pub standby: Option<String>,
}

impl StaleStatus {
    /// "the cluster is on 2", or "standby db3 reports timeline 2".
    fn fence(&self) -> String {
        match &self.standby {
            Some(b) => format!("standby {b} reports timeline {}", self.highest),
            None => format!("the cluster is on {}", self.highest),
        }
    }
}

/// PgBouncer found not where rebouncer put it; kept until a switch puts it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub what: String,
    pub since: SystemTime,
}

/// A database PgBouncer shows as paused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paused {
    pub name: String,
    /// Paused by rebouncer's own switch (and resumed by it); otherwise by someone else,
    /// whose pause rebouncer leaves alone.
    pub by_rebouncer: bool,
}

/// Clients held in PgBouncer by rebouncer's `PAUSE` while there is no master to send
/// them to (`pause_on_failover`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub databases: Vec<String>,
    /// The master whose loss started it.
    pub lost: String,
    pub since: SystemTime,
    /// `pause_timeout`: the hold ends by then, with or without a new master.
    pub timeout: Duration,
    /// Once over: how long it lasted, how it ended, and how many clients were waiting.
    pub ended: Option<(Duration, String, Option<u64>)>,
}

/// The last finished round of checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundStats {
    /// Servers waited for in this round. One still busy with an earlier check, or that
    /// hung at its last one, is not: it cannot hold the round up.
    pub asked: usize,
    /// Of those, the ones that answered before the round's deadline.
    pub answered: usize,
    /// From the first question to the last answer (or the deadline). The checks run at
    /// the same time, so this is the slowest server's time, not the sum.
    pub took: Duration,
}

/// Where the daemon is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// PgBouncer's admin console has not answered yet; nothing is polled until it does.
    WaitingForPgBouncer { error: String },
    /// Polling; the first round may not have finished yet.
    Running,
}

/// The last switch that did not complete, kept until a switch succeeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchFailure {
    /// The master PgBouncer should point at.
    pub wanted: String,
    pub error: String,
    pub since: SystemTime,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub phase: Phase,
    /// In configuration file order.
    pub nodes: Vec<NodeStatus>,
    /// The node PgBouncer's config symlink points at, as far as rebouncer knows.
    pub active: Option<String>,
    /// Whether PgBouncer confirmed (`SHOW DATABASES`) that it uses `active`'s config.
    pub confirmed: bool,
    pub last_switch: Option<SystemTime>,
    pub switch_failure: Option<SwitchFailure>,
    pub interval: Duration,
    pub started: SystemTime,
    /// Where the admin console is, for messages.
    pub pgbouncer: String,
    pub last_round: Option<RoundStats>,
    /// Masters on an old timeline, never routed to.
    pub stale: Vec<StaleStatus>,
    /// Why the one master is not switched to, when it is not.
    pub refusal: Option<String>,
    pub drift: Option<Drift>,
    /// Databases PgBouncer showed as paused at the last check of its routes.
    pub paused: Vec<Paused>,
    /// Databases a switch killed and could not resume yet (retried every round).
    pub held: Vec<String>,
    /// Databases a switch moved whose `KILL` has not gone through: session clients may
    /// still be on the old server (retried every round).
    pub unreset: Vec<String>,
    /// The pause rebouncer holds now, or the last one (with `ended` set).
    pub hold: Option<Hold>,
    pub state_file: String,
    /// Why the state file cannot be written, while it cannot.
    pub state_error: Option<String>,
    /// Problems in the configuration that did not stop rebouncer (unknown keys).
    pub config_warnings: Vec<String>,
    /// The last configuration reload, if there was one.
    pub reload: Option<ReloadStatus>,
    /// Rounds and switches since start, for `/metrics`.
    pub counters: Counters,
    /// What happened lately, for `/` and `/events`.
    pub events: Events,
}

impl Snapshot {
    pub fn new(names: &[String], interval: Duration, pgbouncer: String) -> Snapshot {
        Snapshot {
            phase: Phase::Running,
            nodes: names.iter().map(|n| NodeStatus::new(n)).collect(),
            active: None,
            confirmed: false,
            last_switch: None,
            switch_failure: None,
            interval,
            started: SystemTime::now(),
            pgbouncer,
            last_round: None,
            stale: Vec::new(),
            refusal: None,
            drift: None,
            paused: Vec::new(),
            held: Vec::new(),
            unreset: Vec::new(),
            hold: None,
            state_file: String::new(),
            state_error: None,
            config_warnings: Vec::new(),
            reload: None,
            counters: Counters::default(),
            events: Events::default(),
        }
    }

    /// The masters that are not stale primaries: one is the primary, more a split brain.
    pub fn masters_not_stale(&self) -> Vec<&str> {
        self.names_in(NodeState::Master)
            .into_iter()
            .filter(|m| !self.stale.iter().any(|x| x.name == *m))
            .collect()
    }

    /// "db1 (timeline 1, the cluster is on 2)", comma-separated.
    fn stale_list(&self) -> String {
        let list: Vec<String> = self
            .stale
            .iter()
            .map(|s| format!("{} (timeline {}, {})", s.name, s.timeline, s.fence()))
            .collect();
        list.join(", ")
    }

    /// "; stale primary db1 (timeline 1, the cluster is on 2) never routed to", or "".
    fn stale_suffix(&self) -> String {
        if self.stale.is_empty() {
            return String::new();
        }
        format!("; stale primary {} never routed to", self.stale_list())
    }

    fn names_in(&self, state: NodeState) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| n.state == Some(state))
            .map(|n| n.name.as_str())
            .collect()
    }
}

fn local(t: SystemTime) -> String {
    DateTime::<Local>::from(t)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `/nodes`: one `name: state` line per checked server, in file order. A server not yet
/// checked is left out rather than reported as something it may not be.
pub fn render_nodes(s: &Snapshot) -> String {
    let mut out = String::new();
    for n in &s.nodes {
        if let Some(state) = n.state {
            let _ = writeln!(out, "{}: {}", n.name, state);
        }
    }
    out
}

/// `/nagios`: one line, starting with OK, WARNING or CRITICAL (the plugin and the Go-era
/// checks match on that word).
pub fn render_nagios(s: &Snapshot, now: SystemTime) -> String {
    if let Phase::WaitingForPgBouncer { error } = &s.phase {
        return format!(
            "CRITICAL: waiting for PgBouncer's admin console at {}: {}",
            s.pgbouncer, error
        );
    }
    if s.nodes.iter().any(|n| n.state.is_none()) {
        let age = now.duration_since(s.started).unwrap_or_default();
        if age > s.interval * 3 {
            return format!(
                "CRITICAL: no round of checks has finished in {} seconds since start-up",
                age.as_secs()
            );
        }
        return "WARNING: starting up, the first round of checks has not finished yet".into();
    }
    if let Some(h) = s.hold.as_ref().filter(|h| h.ended.is_none()) {
        // While clients are held a missing master is expected for up to pause_timeout;
        // past it the hold should have ended, so something is wrong with rebouncer itself.
        let lasted = now.duration_since(h.since).unwrap_or_default();
        let level = if lasted > h.timeout {
            "CRITICAL"
        } else {
            "WARNING"
        };
        return format!(
            "{level}: database(s) {} paused by rebouncer for {} s (pause_timeout {} s) since {} stopped being master; clients wait for a new master",
            h.databases.join(", "),
            lasted.as_secs(),
            h.timeout.as_secs(),
            h.lost
        );
    }
    let stale_names: Vec<&str> = s.stale.iter().map(|x| x.name.as_str()).collect();
    let masters: Vec<&str> = s
        .names_in(NodeState::Master)
        .into_iter()
        .filter(|m| !stale_names.contains(m))
        .collect();
    let standbys = s.names_in(NodeState::Standby).len();
    let down = s.names_in(NodeState::Down);
    let counts = format!(
        "{}, {} down",
        plural(standbys, "standby", "standbys"),
        down.len()
    );
    let pointed = s.active.as_deref().unwrap_or("nothing");
    let stale = s.stale_suffix();
    match masters.as_slice() {
        [] => {
            return format!(
                "CRITICAL: no master ({counts}){stale}; PgBouncer left pointing at {pointed}"
            );
        }
        [_] => {}
        many => {
            return format!(
                "CRITICAL: split brain: {} masters ({}), switching refused; PgBouncer left pointing at {pointed} ({counts}){stale}",
                many.len(),
                many.join(", ")
            );
        }
    }
    let master = masters[0];
    if let Some(f) = &s.switch_failure {
        if s.active.as_deref() == Some(f.wanted.as_str()) {
            // The link moved; PgBouncer did not follow. Say where it really routes.
            return format!(
                "CRITICAL: the symlink points at {}'s config but PgBouncer has not taken it, failing since {}: {}{stale}",
                f.wanted,
                local(f.since),
                f.error
            );
        }
        return format!(
            "CRITICAL: PgBouncer points at {pointed} but the master is {}: switch failing since {}: {}{stale}",
            f.wanted,
            local(f.since),
            f.error
        );
    }
    if let Some(d) = &s.drift {
        return format!(
            "CRITICAL: PgBouncer drifted since {}: {}; switching back to {master}{stale}",
            local(d.since),
            d.what
        );
    }
    if let Some(r) = &s.refusal {
        return format!("CRITICAL: {r}{stale}");
    }
    if s.active.as_deref() != Some(master) || !s.confirmed {
        return format!(
            "CRITICAL: PgBouncer points at {pointed} but the master is {master}: switch not yet confirmed{stale}"
        );
    }
    if !s.stale.is_empty() {
        return format!(
            "CRITICAL: stale primary {} accepts connections, never routed to; PgBouncer points at {master}, the primary",
            s.stale_list()
        );
    }
    if !s.unreset.is_empty() {
        return format!(
            "WARNING: database(s) {} moved to {master} but KILL failing: their session clients may still be on the old server; retried every round",
            s.unreset.join(", ")
        );
    }
    if !s.held.is_empty() {
        return format!(
            "WARNING: database(s) {} still held by rebouncer's switch in PgBouncer, RESUME failing; retried every round",
            s.held.join(", ")
        );
    }
    let paused: Vec<&str> = s.paused.iter().map(|p| p.name.as_str()).collect();
    if !paused.is_empty() {
        let whose = if s.paused.iter().all(|p| p.by_rebouncer) {
            "by rebouncer's switch"
        } else {
            "not by rebouncer; RESUME them on the admin console when done"
        };
        return format!(
            "WARNING: database(s) {} paused in PgBouncer ({whose}); 1 master ({master}, PgBouncer points at it)",
            paused.join(", ")
        );
    }
    if !down.is_empty() {
        return format!(
            "WARNING: {} down ({}); 1 master ({master}), {}",
            plural(down.len(), "server", "servers"),
            down.join(", "),
            plural(standbys, "standby", "standbys")
        );
    }
    let refusing: Vec<&str> = s
        .nodes
        .iter()
        .filter(|n| n.refuses_new.is_some())
        .map(|n| n.name.as_str())
        .collect();
    if !refusing.is_empty() {
        return format!(
            "WARNING: {} refuse(s) new connections (rebouncer's kept session still answers); 1 master ({master})",
            refusing.join(", ")
        );
    }
    if let Some(e) = &s.state_error {
        return format!("WARNING: {e}");
    }
    // The file on disk is what the next start reads: left broken, a reboot stops rebouncer.
    if let Some((r, e)) = s.reload.as_ref().and_then(|r| Some((r, r.error.as_ref()?))) {
        return format!(
            "WARNING: configuration reload at {} refused, the running configuration stays but a restart would fail: {e}",
            local(r.at)
        );
    }
    let oldest = s.nodes.iter().filter_map(|n| n.last_check).min();
    if let Some(oldest) = oldest {
        let age = now.duration_since(oldest).unwrap_or_default();
        let max = s.interval * 3;
        if age > max {
            return format!(
                "WARNING: oldest check is {} seconds old, more than {} (three intervals)",
                age.as_secs(),
                max.as_secs()
            );
        }
    }
    format!(
        "OK: 1 master ({master}, PgBouncer points at it), {}",
        plural(standbys, "standby", "standbys")
    )
}

/// `/`: an overview for people.
pub fn render_root(s: &Snapshot, now: SystemTime) -> String {
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
            let _ = writeln!(out, "State: polling every {} s", s.interval.as_secs());
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
    let _ = writeln!(out, "Status: {}", render_nagios(s, now));
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
    for st in &s.stale {
        let _ = writeln!(
            out,
            "Stale primary: {} answers as master on timeline {}, but {}; never routed to",
            st.name,
            st.timeline,
            st.fence()
        );
    }
    if let Some(r) = &s.refusal {
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
    for p in &s.paused {
        let whose = if p.by_rebouncer {
            "by rebouncer's switch"
        } else {
            "not by rebouncer (left for whoever paused it to RESUME)"
        };
        let _ = writeln!(out, "Paused in PgBouncer: {} ({whose})", p.name);
    }
    if let Some(h) = &s.hold {
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
            Some((lasted, outcome, waiting)) => writeln!(
                out,
                "Last pause by rebouncer: {} for {} ms (database(s) {}, {} stopped being master; {} client(s) waiting at the end): {outcome}",
                local(h.since),
                lasted.as_millis(),
                h.databases.join(", "),
                h.lost,
                waiting.map_or("unknown".to_string(), |w| w.to_string())
            ),
        };
    }
    if !s.unreset.is_empty() {
        let _ = writeln!(
            out,
            "Moved but not yet KILLed (session clients may still be on the old server; retried every round): {}",
            s.unreset.join(", ")
        );
    }
    if !s.held.is_empty() && s.hold.as_ref().is_none_or(|h| h.ended.is_some()) {
        let _ = writeln!(
            out,
            "Held by rebouncer, RESUME failing (retried every round): {}",
            s.held.join(", ")
        );
    }
    if !s.state_file.is_empty() {
        match &s.state_error {
            None => {
                let _ = writeln!(out, "State file: {}", s.state_file);
            }
            Some(e) => {
                let _ = writeln!(out, "State file: {e}");
            }
        }
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
        for e in s.events.iter().rev().take(RECENT_EVENTS) {
            let _ = writeln!(out, "{}  {}", local(e.at), e.text);
        }
    }
    out
}

/// `/events?format=text`: every event kept, oldest first, one line each.
pub fn render_events(s: &Snapshot) -> String {
    let mut out = String::new();
    for e in s.events.iter() {
        let _ = writeln!(out, "{}  {}  {}", local(e.at), e.kind.as_str(), e.text);
    }
    out
}

/// Events shown on `/`.
pub const RECENT_EVENTS: usize = 10;

fn node_json(n: &NodeStatus) -> Value {
    Value::Obj(vec![
        ("name", Value::str(n.name.clone())),
        ("state", Value::opt_str(n.state.map(NodeState::as_str))),
        ("last_check", Value::opt_time(n.last_check)),
        ("since", Value::opt_time(n.since)),
        ("last_error", Value::opt_str(n.error.clone())),
        (
            "timeline",
            n.timeline.map_or(Value::Null, |t| Value::Int(t.into())),
        ),
        ("timeline_note", Value::opt_str(n.timeline_note.clone())),
        (
            "check_seconds",
            n.took.map_or(Value::Null, |t| Value::Num(t.as_secs_f64())),
        ),
        (
            "refuses_new_connections",
            Value::opt_str(n.refuses_new.clone()),
        ),
        (
            "next_check_seconds",
            n.next_try
                .map_or(Value::Null, |t| Value::Num(t.as_secs_f64())),
        ),
    ])
}

/// `/nodes` as JSON: every node in file order, the unchecked ones with `"state": null`.
pub fn render_nodes_json(s: &Snapshot) -> String {
    Value::Obj(vec![(
        "nodes",
        Value::Arr(s.nodes.iter().map(node_json).collect()),
    )])
    .to_document()
}

/// `/` as JSON: what the overview says, for scripts.
pub fn render_root_json(s: &Snapshot, now: SystemTime) -> String {
    let status = render_nagios(s, now);
    let level = status.split(':').next().unwrap_or("").to_string();
    let (phase, phase_error) = match &s.phase {
        Phase::Running => ("running", None),
        Phase::WaitingForPgBouncer { error } => ("waiting_for_pgbouncer", Some(error.clone())),
    };
    let masters = s.masters_not_stale();
    let all_checked = s.nodes.iter().all(|n| n.state.is_some());
    let strings = |v: &[String]| Value::Arr(v.iter().cloned().map(Value::Str).collect());
    let conditions = Value::Obj(vec![
        ("no_master", Value::Bool(all_checked && masters.is_empty())),
        (
            "split_brain",
            Value::Arr(if masters.len() > 1 {
                masters.iter().map(|m| Value::str(*m)).collect()
            } else {
                Vec::new()
            }),
        ),
        (
            "stale_primaries",
            Value::Arr(
                s.stale
                    .iter()
                    .map(|x| {
                        Value::Obj(vec![
                            ("name", Value::str(x.name.clone())),
                            ("timeline", Value::Int(x.timeline.into())),
                            ("cluster_timeline", Value::Int(x.highest.into())),
                            ("fenced_by_standby", Value::opt_str(x.standby.clone())),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "switch_failure",
            s.switch_failure.as_ref().map_or(Value::Null, |f| {
                Value::Obj(vec![
                    ("wanted", Value::str(f.wanted.clone())),
                    ("error", Value::str(f.error.clone())),
                    ("since", Value::time(f.since)),
                ])
            }),
        ),
        ("refusal", Value::opt_str(s.refusal.clone())),
        (
            "drift",
            s.drift.as_ref().map_or(Value::Null, |d| {
                Value::Obj(vec![
                    ("what", Value::str(d.what.clone())),
                    ("since", Value::time(d.since)),
                ])
            }),
        ),
        (
            "paused",
            Value::Arr(
                s.paused
                    .iter()
                    .map(|p| {
                        Value::Obj(vec![
                            ("database", Value::str(p.name.clone())),
                            ("by_rebouncer", Value::Bool(p.by_rebouncer)),
                        ])
                    })
                    .collect(),
            ),
        ),
        ("held", strings(&s.held)),
        ("unreset", strings(&s.unreset)),
        (
            "refusing_new_connections",
            Value::Arr(
                s.nodes
                    .iter()
                    .filter(|n| n.refuses_new.is_some())
                    .map(|n| Value::str(n.name.clone()))
                    .collect(),
            ),
        ),
        ("state_file_error", Value::opt_str(s.state_error.clone())),
    ]);
    let last_round = s.last_round.map_or(Value::Null, |r| {
        Value::Obj(vec![
            ("asked", Value::Int(r.asked as i64)),
            ("answered", Value::Int(r.answered as i64)),
            ("seconds", Value::Num(r.took.as_secs_f64())),
        ])
    });
    let skip = s.events.len().saturating_sub(RECENT_EVENTS);
    Value::Obj(vec![
        ("version", Value::str(env!("CARGO_PKG_VERSION"))),
        ("time", Value::time(now)),
        ("started", Value::time(s.started)),
        ("phase", Value::str(phase)),
        ("phase_error", Value::opt_str(phase_error)),
        ("interval_seconds", Value::Int(s.interval.as_secs() as i64)),
        ("level", Value::Str(level)),
        ("status", Value::Str(status)),
        ("active", Value::opt_str(s.active.clone())),
        ("confirmed", Value::Bool(s.active.is_some() && s.confirmed)),
        ("last_switch", Value::opt_time(s.last_switch)),
        ("conditions", conditions),
        ("last_round", last_round),
        ("config_warnings", strings(&s.config_warnings)),
        (
            "last_reload",
            s.reload.as_ref().map_or(Value::Null, |r| {
                Value::Obj(vec![
                    ("time", Value::time(r.at)),
                    ("ok", Value::Bool(r.error.is_none())),
                    ("error", Value::opt_str(r.error.clone())),
                    ("changes", strings(&r.changes)),
                    ("not_applied", strings(&r.not_applied)),
                ])
            }),
        ),
        ("nodes", Value::Arr(s.nodes.iter().map(node_json).collect())),
        (
            "recent_events",
            Value::Arr(s.events.iter().skip(skip).map(|e| e.to_json()).collect()),
        ),
    ])
    .to_document()
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeState::*;

    fn snap(states: &[(&str, Option<NodeState>)], active: Option<&str>) -> Snapshot {
        let now = SystemTime::now();
        let names: Vec<String> = states.iter().map(|(n, _)| n.to_string()).collect();
        let mut s = Snapshot::new(&names, Duration::from_secs(30), "127.0.0.1:6432".into());
        for (node, (_, st)) in s.nodes.iter_mut().zip(states) {
            node.state = *st;
            node.last_check = st.map(|_| now);
            node.since = st.map(|_| now);
        }
        s.active = active.map(str::to_string);
        s.confirmed = active.is_some();
        s
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
            render_nagios(&s, SystemTime::now()),
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
        let n = render_nagios(&s, SystemTime::now());
        assert!(
            n.starts_with("WARNING: configuration reload at ")
                && n.ends_with(
                    "refused, the running configuration stays but a restart would fail: config error in /etc/rebouncer.ini line 3: ..."
                ),
            "{n}"
        );
        // Worse news still comes first.
        s.nodes[0].state = Some(Down);
        assert!(render_nagios(&s, SystemTime::now()).starts_with("CRITICAL: no master"));
        s.nodes[0].state = Some(Master);
        s.reload.as_mut().unwrap().error = None;
        assert!(render_nagios(&s, SystemTime::now()).starts_with("OK"));
    }

    #[test]
    fn no_master_is_critical() {
        let s = snap(&[("db1", Some(Down)), ("db2", Some(Standby))], Some("db1"));
        assert_eq!(
            render_nagios(&s, SystemTime::now()),
            "CRITICAL: no master (1 standby, 1 down); PgBouncer left pointing at db1"
        );
    }

    #[test]
    fn a_pause_by_rebouncer_is_a_warning_until_pause_timeout_then_critical() {
        let mut s = snap(&[("db1", Some(Down)), ("db2", Some(Standby))], Some("db1"));
        let since = SystemTime::now();
        s.hold = Some(Hold {
            databases: vec!["appdb".into()],
            lost: "db1".into(),
            since,
            timeout: Duration::from_secs(10),
            ended: None,
        });
        assert_eq!(
            render_nagios(&s, since + Duration::from_secs(3)),
            "WARNING: database(s) appdb paused by rebouncer for 3 s (pause_timeout 10 s) since db1 stopped being master; clients wait for a new master"
        );
        assert!(
            render_nagios(&s, since + Duration::from_secs(11))
                .starts_with("CRITICAL: database(s) appdb paused by rebouncer for 11 s")
        );
        let root = render_root(&s, since + Duration::from_secs(3));
        assert!(
            root.contains("Paused by rebouncer since ")
                && root.contains(
                    "(3 s, at most 10 s): database(s) appdb, because db1 stopped being master"
                ),
            "{root}"
        );
        // Once over it is history on /, and /nagios says what the cluster says.
        s.hold.as_mut().unwrap().ended = Some((
            Duration::from_millis(3200),
            "switched to db2".into(),
            Some(7),
        ));
        assert!(render_nagios(&s, since).starts_with("CRITICAL: no master"));
        let root = render_root(&s, since + Duration::from_secs(5));
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
        let text = render_nagios(&s, SystemTime::now());
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
            render_nagios(&s, SystemTime::now()),
            "WARNING: 1 server down (db2); 1 master (db1), 1 standby"
        );
    }

    #[test]
    fn stale_checks_are_a_warning() {
        let s = snap(&[("db1", Some(Master))], Some("db1"));
        let later = SystemTime::now() + Duration::from_secs(91);
        let text = render_nagios(&s, later);
        assert!(text.starts_with("WARNING: oldest check is 9"), "{text}");
        assert!(text.contains("more than 90"), "{text}");
    }

    #[test]
    fn a_stale_primary_fenced_by_a_standby_names_the_standby_and_both_timelines() {
        let mut s = snap(
            &[("db1", Some(Master)), ("db2", Some(Standby))],
            Some("db1"),
        );
        s.stale = vec![StaleStatus {
            name: "db1".into(),
            timeline: 1,
            highest: 2,
            standby: Some("db2".into()),
        }];
        let text = render_nagios(&s, SystemTime::now());
        assert!(
            text.starts_with(
                "CRITICAL: no master (1 standby, 0 down); stale primary db1 (timeline 1, standby db2 reports timeline 2) never routed to"
            ),
            "{text}"
        );
    }

    #[test]
    fn failing_switch_is_critical_and_says_where_pgbouncer_points() {
        let mut s = snap(&[("db1", Some(Down)), ("db2", Some(Master))], Some("db1"));
        s.switch_failure = Some(SwitchFailure {
            wanted: "db2".into(),
            error: "cannot replace symlink: Permission denied".into(),
            since: SystemTime::now(),
        });
        let text = render_nagios(&s, SystemTime::now());
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
        assert!(
            render_nagios(&s, SystemTime::now())
                .starts_with("CRITICAL: PgBouncer points at db1 but")
        );
    }

    #[test]
    fn waiting_for_pgbouncer_is_critical() {
        let mut s = snap(&[("db1", None)], None);
        s.phase = Phase::WaitingForPgBouncer {
            error: "connection refused".into(),
        };
        assert_eq!(
            render_nagios(&s, SystemTime::now()),
            "CRITICAL: waiting for PgBouncer's admin console at 127.0.0.1:6432: connection refused"
        );
        assert!(render_root(&s, SystemTime::now()).contains("waiting for PgBouncer"));
    }

    #[test]
    fn before_the_first_round_it_warns_then_turns_critical() {
        let s = snap(&[("db1", None), ("db2", None)], None);
        assert!(render_nagios(&s, SystemTime::now()).starts_with("WARNING: starting up"));
        let much_later = SystemTime::now() + Duration::from_secs(100);
        assert!(render_nagios(&s, much_later).starts_with("CRITICAL: no round"));
        assert_eq!(render_nodes(&s), "");
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
        assert_eq!(
            render_nodes(&s),
            "zeta: standby\nalpha: master\nmid: down\n"
        );
    }

    #[test]
    fn json_pages_escape_errors_and_name_the_conditions() {
        let mut s = snap(
            &[("db1", Some(Master)), ("db2", Some(Master)), ("db3", None)],
            Some("db1"),
        );
        s.nodes[1].error = Some("FATAL:  role \"x\"\ndoes not exist".into());
        let nodes = render_nodes_json(&s);
        assert!(
            nodes.contains(r#""last_error":"FATAL:  role \"x\"\ndoes not exist""#),
            "{nodes}"
        );
        assert!(nodes.contains(r#"{"name":"db3","state":null,"#), "{nodes}");
        assert!(nodes.ends_with("]}\n"), "{nodes}");
        s.nodes[2].state = Some(Standby);
        s.nodes[2].last_check = Some(SystemTime::now());
        let root = render_root_json(&s, SystemTime::now());
        assert!(
            root.contains(r#""conditions":{"no_master":false,"split_brain":["db1","db2"],"#),
            "{root}"
        );
        assert!(root.contains(r#""level":"CRITICAL","#), "{root}");
        assert!(
            root.contains(r#""active":"db1","confirmed":true,"#),
            "{root}"
        );
    }

    #[test]
    fn root_page_ends_with_the_latest_events_newest_first() {
        let mut s = snap(&[("db1", Some(Master))], Some("db1"));
        assert!(!render_root(&s, SystemTime::now()).contains("Recent events"));
        for i in 0..12 {
            s.events.push(
                SystemTime::now(),
                crate::events::Kind::State,
                None,
                format!("event {i}"),
            );
        }
        let text = render_root(&s, SystemTime::now());
        let tail = text.split("Recent events").nth(1).unwrap();
        let lines: Vec<&str> = tail.lines().skip(1).collect();
        assert_eq!(lines.len(), RECENT_EVENTS, "{text}");
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
        let text = render_root(&s, SystemTime::now());
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
}
