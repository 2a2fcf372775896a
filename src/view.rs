//! The view: everything the status pages, `/metrics` and systemd's `STATUS=` line show,
//! published by the daemon through a `watch` channel. The daemon publishes the servers'
//! states together with the decision it took on them, once per round after deciding, so
//! every page reads one verdict and none works it out again from the states (a stale
//! primary coming back never shows, even for a moment, as a split brain).
//!
//! The types here derive `Serialize` with the field names the JSON pages have always
//! used; `pages::json` arranges them into documents.

use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};
use tokio::sync::watch;

use crate::counters::{Counters, NodeCounters, SwitchReason};
use crate::decide::{Cluster, Decision, NodeId, NodeState};
use crate::events::{Event, Events, Kind, SwitchTiming};
use crate::json_format;
pub use crate::level::Level;
use crate::logging::{self, DropTally};

/// One server as the pages show it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    /// `None` until the first check finished.
    #[serde(serialize_with = "opt_node_state")]
    pub state: Option<NodeState>,
    #[serde(serialize_with = "json_format::opt_time")]
    pub last_check: Option<SystemTime>,
    /// When the server entered its current state.
    #[serde(serialize_with = "json_format::opt_time")]
    pub since: Option<SystemTime>,
    /// Why the last check said `down` (connection error, timeout), for people.
    #[serde(rename = "last_error")]
    pub error: Option<String>,
    /// Its timeline, where the monitoring role may read it.
    pub timeline: Option<u32>,
    /// Why its timeline cannot be read, if it cannot.
    pub timeline_note: Option<String>,
    /// How long the last check took to answer: a slow server shows here first.
    #[serde(rename = "check_seconds", serialize_with = "json_format::opt_seconds")]
    pub took: Option<Duration>,
    /// It answers on rebouncer's kept session, but a new connection failed with this.
    #[serde(rename = "refuses_new_connections")]
    pub refuses_new: Option<String>,
    /// A server that keeps failing is asked less often: the time to its next check.
    #[serde(
        rename = "next_check_seconds",
        serialize_with = "json_format::opt_seconds"
    )]
    pub next_try: Option<Duration>,
    /// Its checks since start, for `/metrics`.
    #[serde(skip)]
    pub counters: NodeCounters,
}

fn opt_node_state<S: Serializer>(state: &Option<NodeState>, s: S) -> Result<S::Ok, S::Error> {
    match state {
        Some(st) => s.serialize_str(st.as_str()),
        None => s.serialize_none(),
    }
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
            timeline: None,
            timeline_note: None,
            took: None,
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

/// PgBouncer found not where rebouncer put it; kept until a switch puts it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub what: String,
    #[serde(serialize_with = "json_format::time")]
    pub since: SystemTime,
}

/// PgBouncer does not take the file the symlink names: `RELOAD` goes through, its routes
/// stay other. Usually it was started with another path than the symlink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotTaken {
    /// The file PgBouncer runs (`conffile` in `SHOW CONFIG`), when it says.
    pub runs: Option<String>,
    pub symlink: String,
    /// What the symlink names, if it names anything.
    pub names: Option<String>,
}

impl NotTaken {
    /// "PgBouncer runs X, the symlink Y names Z".
    pub fn describe(&self) -> String {
        let runs = self
            .runs
            .as_deref()
            .unwrap_or("a file it does not name (no conffile in SHOW CONFIG)");
        let names = self.names.as_deref().unwrap_or("nothing");
        format!(
            "PgBouncer runs {runs}, the symlink {} names {names}",
            self.symlink
        )
    }
}

/// A database PgBouncer shows as paused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PausedDatabase {
    #[serde(rename = "database")]
    pub name: String,
    /// Paused by rebouncer's own switch (and resumed by it); otherwise by someone else,
    /// whose pause rebouncer leaves alone.
    pub by_rebouncer: bool,
}

/// Clients held in PgBouncer by rebouncer's `PAUSE` while there is no master to send
/// them to (`pause_on_failover`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverPause {
    pub databases: Vec<String>,
    /// The master whose loss started it.
    pub lost: String,
    pub since: SystemTime,
    /// `pause_timeout`: the pause ends by then, with or without a new master.
    pub timeout: Duration,
    /// Set once it is over.
    pub ended: Option<PauseEnd>,
}

/// How a failover pause ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PauseEnd {
    pub lasted: Duration,
    /// What ended it ("switched to pg2", "RESUME failed (...)").
    pub outcome: String,
    /// Clients still waiting at the end, when PgBouncer said.
    pub waiting: Option<u64>,
    /// The RESUME meant to end it failed: its databases may still be paused, and the
    /// pause is shown as lasting while the state file lists them as resume pending.
    pub resume_failed: bool,
}

/// The last finished round of checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RoundStats {
    /// Servers waited for in this round. One still busy with an earlier check, or that
    /// hung at its last one, is not: it cannot hold the round up.
    pub asked: usize,
    /// Of those, the ones that answered before the round's deadline.
    pub answered: usize,
    /// From the first question to the last answer (or the deadline). The checks run at
    /// the same time, so this is the slowest server's time, not the sum.
    #[serde(rename = "seconds", serialize_with = "json_format::seconds")]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SwitchFailure {
    /// The master PgBouncer should point at.
    pub wanted: String,
    pub error: String,
    #[serde(serialize_with = "json_format::time")]
    pub since: SystemTime,
}

/// The decision of the last round, as the daemon acts on it.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Whole, as `decide` returned it; its node ids index [`Snapshot::nodes`].
    pub decision: Decision,
    /// Why the one master is not switched to, in the words the log uses.
    pub refusal: Option<String>,
}

/// A master on a lower timeline than the cluster has reached: never routed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StalePrimary<'a> {
    pub name: &'a str,
    pub timeline: u32,
    /// The highest timeline the cluster has shown.
    #[serde(rename = "cluster_timeline")]
    pub highest: u32,
    /// The standby that reports `highest`, when no master reached it: the fence lasts
    /// only while that standby reports it.
    #[serde(rename = "fenced_by_standby")]
    pub standby: Option<&'a str>,
}

impl StalePrimary<'_> {
    /// "the cluster is on 2", or "standby db3 reports timeline 2".
    pub fn fence(&self) -> String {
        match self.standby {
            Some(b) => format!("standby {b} reports timeline {}", self.highest),
            None => format!("the cluster is on {}", self.highest),
        }
    }
}

/// Events shown on `/` and in its JSON.
pub const RECENT_EVENTS: usize = 10;

/// The published view: what the daemon knows, as of its last decision.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub phase: Phase,
    /// In configuration file order.
    pub nodes: Vec<NodeStatus>,
    /// The decision taken on `nodes`' states; `None` before the first round, and after a
    /// reload that changed the servers until the next round decides on them.
    pub verdict: Option<Verdict>,
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
    pub drift: Option<Drift>,
    /// Databases PgBouncer showed as paused at the last check of its routes.
    pub paused: Vec<PausedDatabase>,
    /// Databases a switch killed whose `RESUME` has not gone through yet (retried every
    /// round): the state file's `resume_pending` list.
    pub resume_pending: Vec<String>,
    /// Databases a switch moved whose `KILL` has not gone through: session clients may
    /// still be on the old server (retried every round). The state file's `kill_pending` list.
    pub kill_pending: Vec<String>,
    /// The failover pause rebouncer holds now, or the last one (with `ended` set).
    pub failover_pause: Option<FailoverPause>,
    pub state_file: String,
    /// Why the state file cannot be written, while it cannot.
    pub state_error: Option<String>,
    /// `pause_on_failover` as configured; with `state_error` it is off until the state
    /// file can be written.
    pub pause_on_failover: bool,
    /// Set while PgBouncer does not take the file the symlink names.
    pub not_taken: Option<NotTaken>,
    /// Problems in the configuration that did not stop rebouncer (unknown keys).
    pub config_warnings: Vec<String>,
    /// The last configuration reload, if there was one.
    pub reload: Option<ReloadStatus>,
    /// Rounds and switches since start, for `/metrics`.
    pub counters: Counters,
    /// What happened lately, for `/` and `/events`.
    pub events: Events,
    /// Log lines the log's queue dropped: the log's own count, read when a page is
    /// rendered rather than published with the rounds.
    pub log_drops: DropTally,
    /// etcd mode: Patroni's leader key as last heard.
    pub etcd: Option<crate::policy::leader::LeaderView>,
}

impl Snapshot {
    pub fn new(names: &[String], interval: Duration, pgbouncer: String) -> Snapshot {
        Snapshot {
            phase: Phase::Running,
            nodes: names.iter().map(|n| NodeStatus::new(n)).collect(),
            verdict: None,
            active: None,
            confirmed: false,
            last_switch: None,
            switch_failure: None,
            interval,
            started: SystemTime::now(),
            pgbouncer,
            last_round: None,
            drift: None,
            paused: Vec::new(),
            resume_pending: Vec::new(),
            kill_pending: Vec::new(),
            failover_pause: None,
            state_file: String::new(),
            state_error: None,
            pause_on_failover: false,
            not_taken: None,
            config_warnings: Vec::new(),
            reload: None,
            counters: Counters::default(),
            events: Events::default(),
            log_drops: logging::tally(),
            etcd: None,
        }
    }

    fn name(&self, id: NodeId) -> &str {
        self.nodes.get(id).map_or("?", |n| n.name.as_str())
    }

    /// The shape of the cluster the last decision found, if there is one.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.verdict.as_ref().map(|v| &v.decision.cluster)
    }

    /// The one master PgBouncer should point at, if the verdict found one.
    pub fn master(&self) -> Option<&str> {
        match self.cluster() {
            Some(Cluster::OneMaster(m)) => Some(self.name(*m)),
            _ => None,
        }
    }

    /// The masters of a split brain, in file order; empty when there is none.
    pub fn split_brain(&self) -> Vec<&str> {
        match self.cluster() {
            Some(Cluster::SplitBrain(ids)) => ids.iter().map(|m| self.name(*m)).collect(),
            _ => Vec::new(),
        }
    }

    /// True when every server has been checked and the verdict found no usable master.
    pub fn no_master(&self) -> bool {
        matches!(self.cluster(), Some(Cluster::NoMaster)) && self.all_checked()
    }

    /// The stale primaries of the verdict, in file order.
    pub fn stale(&self) -> Vec<StalePrimary<'_>> {
        let Some(v) = &self.verdict else {
            return Vec::new();
        };
        v.decision
            .stale
            .iter()
            .map(|s| StalePrimary {
                name: self.name(s.node),
                timeline: s.timeline,
                highest: s.highest,
                standby: s.standby.map(|b| self.name(b)),
            })
            .collect()
    }

    /// Why the one master is not switched to, when it is not.
    pub fn refusal(&self) -> Option<&str> {
        self.verdict.as_ref()?.refusal.as_deref()
    }

    pub fn all_checked(&self) -> bool {
        self.nodes.iter().all(|n| n.state.is_some())
    }

    /// The last [`RECENT_EVENTS`] events, oldest first.
    pub fn recent_events(&self) -> impl DoubleEndedIterator<Item = &Event> {
        self.events
            .iter()
            .skip(self.events.len().saturating_sub(RECENT_EVENTS))
    }

    /// The failover pause under way, if one is.
    pub fn pausing(&self) -> Option<&FailoverPause> {
        self.failover_pause.as_ref().filter(|p| p.ended.is_none())
    }
}

/// Record an event in the published view, stamped now. The daemon's one-line hook.
pub fn record_event(
    status: &watch::Sender<Snapshot>,
    kind: Kind,
    node: Option<&str>,
    text: String,
) {
    let at = SystemTime::now();
    status.send_modify(|s| s.events.push(at, kind, node, text));
}

/// A switch PgBouncer confirmed, as the daemon hands it over.
pub struct SwitchDone<'a> {
    pub reason: SwitchReason,
    pub to: &'a str,
    pub from: Option<&'a str>,
    /// False when the symlink already pointed at the node (only confirmed).
    pub relinked: bool,
    pub needed_since: Option<SystemTime>,
    /// The switch itself.
    pub step: Duration,
}

/// Count a confirmed switch, keep its timings and put it in the event history.
pub fn record_switch(status: &watch::Sender<Snapshot>, d: SwitchDone<'_>) {
    let now = SystemTime::now();
    let since_need = d
        .needed_since
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or(d.step);
    let ms = |t: Duration| t.as_secs_f64() * 1000.0;
    let text = match (d.reason, d.from) {
        (SwitchReason::Confirm, _) => format!(
            "PgBouncer confirmed on {} (its config already pointed there); {:.0} ms",
            d.to,
            ms(d.step)
        ),
        (reason, from) => format!(
            "PgBouncer now points at {} ({}{}), confirmed; the switch took {:.0} ms, {:.0} ms after the need arose",
            d.to,
            reason.as_str(),
            from.map(|f| format!(" from {f}")).unwrap_or_default(),
            ms(d.step),
            ms(since_need)
        ),
    };
    let timing = SwitchTiming {
        switch_seconds: d.step.as_secs_f64(),
        since_needed_seconds: since_need.as_secs_f64(),
    };
    status.send_modify(|s| {
        s.counters.switched(d.reason);
        if d.relinked {
            s.counters.last_switch = Some((now, since_need));
            s.counters.last_switch_step = Some(d.step);
        }
        s.events
            .push_timed(now, Kind::Switch, Some(d.to), text, Some(timing));
    });
}

#[cfg(test)]
impl Snapshot {
    /// The pages' test view: these servers checked just now in these states, PgBouncer
    /// confirmed on `active`, and the verdict `decide` reaches on them.
    pub fn checked_now(states: &[(&str, Option<NodeState>)], active: Option<&str>) -> Snapshot {
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
        s.decide(None);
        s
    }

    /// What the daemon would publish after a round on these states, for the pages'
    /// tests: the verdict `decide` reaches on the nodes' states and timelines, with
    /// `highest` as the remembered timeline.
    pub fn decide(&mut self, highest: Option<u32>) {
        use crate::decide::{self, Believed, Memory, Seen};
        let observed: Vec<Seen> = self
            .nodes
            .iter()
            .map(|n| {
                let state = n.state.unwrap_or(NodeState::Down);
                let mut seen = match n.timeline {
                    Some(t) => Seen::on(state, t),
                    None => Seen::new(state),
                };
                seen.refuses_new = n.refuses_new.is_some();
                seen
            })
            .collect();
        let mut memory = Memory::default();
        if let Some(h) = highest {
            memory.timelines.raise(None, h);
        }
        let believed = Believed {
            active: self
                .active
                .as_ref()
                .and_then(|a| self.nodes.iter().position(|n| n.name == *a)),
            confirmed: self.confirmed,
        };
        let decision = decide::decide(believed, &observed, &memory);
        let refusal = decision.refusal.as_ref().map(|r| format!("{r:?}"));
        self.verdict = Some(Verdict { decision, refusal });
    }
}
