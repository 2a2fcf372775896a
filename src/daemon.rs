//! The main loop: rounds of checks, the decision, the switch, drift repair, and the
//! snapshot the status pages read. Each server has its own monitor task behind the
//! [`Probe`] seam, and PgBouncer sits behind the [`Console`] seam, so the loop's behaviour
//! over time is unit-tested with a fake cluster on tokio's paused clock (see the tests at
//! the end); the integration tests drive the real processes.

use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

use crate::admin::{self, Bouncer, Console, Database, Session};
use crate::config::{self, Config, ConfigError, Server};
use crate::decide::{
    self, Action, Believed, Cluster, Decision, Memory, NodeId, NodeState, Refusal, Seen, Stale,
    Timeline,
};
use crate::events::{self, Kind};
use crate::metrics::{self, SwitchReason};
use crate::probe::{ConnectionLost, Monitor, Observation, Probe};
use crate::state::StateFile;
use crate::status::{
    Drift, Hold as HoldStatus, NodeStatus, Paused, Phase, ReloadStatus, RoundStats, Snapshot,
    StaleStatus, SwitchFailure,
};
use crate::switch::{self, SwitchPlan};
use crate::throttle::{Say, Throttle};

/// How often PgBouncer's admin console is tried at start-up until it answers.
const PGBOUNCER_RETRY: Duration = Duration::from_secs(5);
/// How often a lasting condition is logged again.
const REMINDER_EVERY: Duration = Duration::from_secs(60);
/// With kept connections, each server is also checked with a new connection this often,
/// so a server that no longer accepts logins shows as such.
const FRESH_CHECK_EVERY: Duration = Duration::from_secs(300);
/// With kept connections and an `interval` longer than this, the active master is also
/// asked this often between rounds, on its kept connection (one query, no new backend):
/// a primary that hangs closes no connection, and would otherwise be noticed only at the
/// next round, up to `interval` later.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// While a split brain lasts (rounds come every `fast_interval`), or while the one master
/// refuses new logins, each such master is asked on a new connection at most this often.
const RECHECK_EVERY: Duration = Duration::from_secs(5);
/// A failed switch is retried at every round, but not more often than this.
const SWITCH_RETRY_MIN: Duration = Duration::from_secs(1);
/// PgBouncer's routes are compared with the active node's file every this many rounds
/// (and at once when the admin session closes: PgBouncer restarted). The symlink itself is
/// read at every round.
const DRIFT_CHECK_ROUNDS: u32 = 3;

/// A `PAUSE` that has not completed by then is abandoned: it waits for running
/// transactions, and every client arriving meanwhile waits too (together with `timeout`,
/// whichever is shorter).
const PAUSE_BOUND: Duration = Duration::from_secs(2);

/// Clients held in PgBouncer while the active master is gone (`pause_on_failover`).
struct Hold {
    /// Paused by rebouncer, listed in the state file's `held`.
    databases: Vec<String>,
    /// The master whose loss started it.
    lost: NodeId,
    started: Instant,
    since: SystemTime,
    deadline: Instant,
}

/// How a hold ends when no switch ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The lost master answers as master again: plain RESUME, clients go on where they were.
    MasterBack,
    /// No single master in time, split brain, only a stale primary, a refused master:
    /// clients get PgBouncer's errors as they would have without the pause.
    GiveUp,
    /// rebouncer stops: RESUME, and PgBouncer deals with the clients as without rebouncer.
    Shutdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Check,
    Fresh,
}

struct Report {
    /// The monitor's key (see [`Node::key`]), not an index: the list of nodes may have
    /// been rebuilt by a reload since the check was asked for.
    key: MonitorKey,
    obs: Observation,
    /// How long the check took, fresh re-check included.
    took: Duration,
}

/// Names one monitor task for as long as it runs: the index of its node in the first
/// configuration, then increasing for every monitor a reload starts. Reports and news of
/// a lost connection carry it; one from a monitor a reload stopped finds no node and is
/// dropped.
type MonitorKey = usize;

/// A configuration re-read on SIGHUP, already validated by [`config::load`] (or the
/// one-line error saying why not).
pub struct Reload {
    pub config: Result<Config, ConfigError>,
    /// Told once the reload is applied or refused (systemd's `READY=1` after `RELOADING=1`).
    pub done: Option<oneshot::Sender<()>>,
}

/// Starts the monitor task of one server and returns its request channel (dropping it
/// stops the task, closing its kept connection).
type Spawner =
    Box<dyn FnMut(MonitorKey, &Server, &Config) -> mpsc::UnboundedSender<Request> + Send + Sync>;

/// What the loop knows of one server.
struct Node {
    name: String,
    key: MonitorKey,
    state: Option<NodeState>,
    error: Option<String>,
    hung: bool,
    busy: bool,
    last_check: Option<SystemTime>,
    since: Option<SystemTime>,
    took: Option<Duration>,
    timeline: Option<Timeline>,
    timeline_note: Option<String>,
    /// Set by a check on a new connection that failed while the kept session answers;
    /// cleared by one that succeeds, or when the server's state changes.
    refuses_new: Option<String>,
    /// When it was last asked on a new connection before a verdict.
    rechecked: Option<Instant>,
    /// Failed checks in a row, and when it may be asked again: a server that keeps
    /// refusing is not hammered at the fast rate (each attempt is a fork and a FATAL line).
    failures: u32,
    next_try: Instant,
    requests: mpsc::UnboundedSender<Request>,
}

impl Node {
    fn new(name: String, key: MonitorKey, requests: mpsc::UnboundedSender<Request>) -> Node {
        Node {
            name,
            key,
            state: None,
            error: None,
            hung: false,
            busy: false,
            last_check: None,
            since: None,
            took: None,
            timeline: None,
            timeline_note: None,
            refuses_new: None,
            rechecked: None,
            failures: 0,
            next_try: Instant::now(),
            requests,
        }
    }
}

/// A lasting condition worth one log line when it starts and ends.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Condition {
    NoMaster,
    SplitBrain(Vec<String>),
}

pub struct Daemon<C: Console> {
    cfg: Config,
    console: C,
    status: watch::Sender<Snapshot>,
    shutdown: watch::Receiver<bool>,
    nodes: Vec<Node>,
    /// Starts a server's monitor (at start, and for a reload that adds or changes one).
    spawn: Spawner,
    next_key: MonitorKey,
    /// Configurations re-read on SIGHUP.
    reloads: Option<mpsc::UnboundedReceiver<Reload>>,
    reports: mpsc::UnboundedReceiver<Report>,
    lost: mpsc::UnboundedReceiver<ConnectionLost>,
    believed: Believed,
    memory: Memory,
    state: StateFile,
    /// Set by a round that switched, failed to switch or found no single usable master:
    /// the next round comes after `fast_interval` instead of `interval`.
    unsettled: bool,
    last_switch: Option<SystemTime>,
    switch_failure: Option<SwitchFailure>,
    last_switch_attempt: Option<Instant>,
    /// The node the last switch attempt went to.
    last_switch_to: Option<NodeId>,
    conditions: Throttle<Condition>,
    stale_log: Throttle<Vec<String>>,
    refusal_log: Throttle<String>,
    switch_errors: Throttle<String>,
    last_round: Option<RoundStats>,
    last_decision: Option<Decision>,
    /// A kept admin session: when PgBouncer closes it (a restart), its routes are checked
    /// at once.
    watch_session: Option<C::Session>,
    rounds_since_drift_check: u32,
    drift: Option<Drift>,
    paused: Vec<Paused>,
    /// The routes PgBouncer was last confirmed to use.
    last_confirmed: Option<Vec<Database>>,
    hold: Option<Hold>,
    /// The loss of the active master already had its pause (it ended or could not be
    /// made): no second one until that master answers again or another is switched to.
    loss_handled: bool,
    last_hold: Option<HoldStatus>,
}

impl Daemon<Bouncer> {
    /// The daemon with real monitors and the real PgBouncer.
    pub fn new(
        cfg: Config,
        state: StateFile,
        status: watch::Sender<Snapshot>,
        shutdown: watch::Receiver<bool>,
    ) -> Daemon<Bouncer> {
        let console = Bouncer::new(cfg.pgbouncer.clone(), cfg.timeout);
        let (lost_tx, lost) = mpsc::unbounded_channel();
        let probes = move |key: MonitorKey, server: &Server, cfg: &Config| {
            Monitor::new(
                key,
                server.target.clone(),
                cfg.timeout,
                cfg.keep_connections,
                Some(lost_tx.clone()),
            )
        };
        Daemon::with_parts(cfg, console, probes, lost, state, status, shutdown)
    }
}

impl<C: Console> Daemon<C> {
    /// The daemon with the given console and probes: `probes` makes the probe of one
    /// server (its monitor's key, the server, the configuration), at start and whenever a
    /// reload adds or changes a server. `lost` carries the probes' news of a kept
    /// connection that closed by itself, with the key they were made with.
    pub fn with_parts<P: Probe>(
        cfg: Config,
        console: C,
        mut probes: impl FnMut(MonitorKey, &Server, &Config) -> P + Send + Sync + 'static,
        lost: mpsc::UnboundedReceiver<ConnectionLost>,
        state: StateFile,
        status: watch::Sender<Snapshot>,
        shutdown: watch::Receiver<bool>,
    ) -> Daemon<C> {
        let (report_tx, reports) = mpsc::unbounded_channel();
        let mut spawn: Spawner = Box::new(move |key, server, cfg| {
            let probe = probes(key, server, cfg);
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_monitor(key, probe, rx, report_tx.clone()));
            tx
        });
        let nodes: Vec<Node> = cfg
            .servers
            .iter()
            .enumerate()
            .map(|(key, server)| Node::new(server.name.clone(), key, spawn(key, server, &cfg)))
            .collect();
        let memory = Memory::at_start(state.state().timelines.clone(), None);
        Daemon {
            console,
            status,
            shutdown,
            next_key: nodes.len(),
            nodes,
            spawn,
            reloads: None,
            reports,
            lost,
            believed: Believed::default(),
            memory,
            state,
            unsettled: true,
            last_switch: None,
            switch_failure: None,
            last_switch_attempt: None,
            last_switch_to: None,
            conditions: Throttle::new(REMINDER_EVERY),
            stale_log: Throttle::new(REMINDER_EVERY),
            refusal_log: Throttle::new(REMINDER_EVERY),
            switch_errors: Throttle::new(REMINDER_EVERY),
            last_round: None,
            last_decision: None,
            watch_session: None,
            rounds_since_drift_check: 0,
            drift: None,
            paused: Vec::new(),
            last_confirmed: None,
            hold: None,
            loss_handled: false,
            last_hold: None,
            cfg,
        }
    }

    /// Configurations re-read on SIGHUP arrive here.
    pub fn reloads(mut self, reloads: mpsc::UnboundedReceiver<Reload>) -> Self {
        self.reloads = Some(reloads);
        self
    }

    /// The index of the node a monitor reports for, if it is still configured.
    fn index_of(&self, key: MonitorKey) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.key == key)
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Run until shutdown is requested. A switch in progress always finishes first.
    pub async fn run(mut self) {
        for stale in switch::remove_stale_temp_links(&self.cfg.symlink) {
            info!(
                "removed {}, left behind by a rebouncer stopped in the middle of a switch",
                stale.display()
            );
        }
        self.believed.active = self.node_behind_symlink();
        self.memory = Memory::at_start(self.memory.timelines.clone(), self.believed.active);
        match self.believed.active {
            Some(n) => info!(
                "PgBouncer's config {} points at node {}; it will be confirmed after the first round",
                self.cfg.symlink.display(),
                self.nodes[n].name
            ),
            None => info!(
                "PgBouncer's config {} does not point at any node's config yet",
                self.cfg.symlink.display()
            ),
        }
        let remembered: Vec<String> = self
            .memory
            .timelines
            .iter()
            .map(|h| format!("timeline {}", h.timeline))
            .collect();
        if !remembered.is_empty() {
            info!(
                "state file {}: the cluster has reached {}; a master on a lower timeline is a stale primary",
                self.state.path().display(),
                remembered.join(", ")
            );
        }
        self.publish();
        if !self.wait_for_pgbouncer().await {
            return;
        }
        self.resume_held_from_last_run().await;
        self.check_pause_settings().await;
        let mut next_round = Instant::now();
        let mut next_beat = Instant::now() + HEARTBEAT;
        loop {
            let hold_deadline = self.hold.as_ref().map(|h| h.deadline);
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                _ = async { sleep_until(hold_deadline.unwrap_or_else(Instant::now)).await }, if hold_deadline.is_some() => {
                    self.decide_and_act().await;
                    continue;
                }
                Some(reload) = next_reload(&mut self.reloads) => {
                    if self.reload(reload).await && !self.shutting_down() {
                        // Added or changed servers are checked at once, and the new
                        // settings decide from there.
                        next_round = Instant::now();
                    }
                    continue;
                }
                Some(lost) = self.lost.recv() => {
                    let Some(i) = self.index_of(lost.node) else {
                        // A monitor a reload stopped.
                        continue;
                    };
                    let n = &self.nodes[i];
                    info!(
                        "{}: monitoring connection closed by the server (was {}); checking all servers now",
                        n.name,
                        n.state.map_or("unchecked", NodeState::as_str)
                    );
                    self.unsettled = true;
                    self.retry_failing_now();
                    self.round().await;
                }
                Some(report) = self.reports.recv() => {
                    // A heartbeat, or a check that outlived its round (a hung server).
                    // Act on news at once; if it unsettled the cluster, poll fast from now.
                    if self.apply(report) {
                        self.decide_and_act().await;
                    }
                    if self.unsettled && !self.shutting_down() {
                        next_round = next_round.min(Instant::now() + self.cfg.fast_interval);
                    }
                    continue;
                }
                _ = sleep_until(next_beat) => {
                    self.heartbeat();
                    next_beat = Instant::now() + HEARTBEAT;
                    continue;
                }
                _ = sleep_until(next_round) => self.round().await,
            }
            if self.shutting_down() {
                break;
            }
            let pause = if self.unsettled {
                self.cfg.fast_interval
            } else {
                self.cfg.interval
            };
            next_round = Instant::now() + pause;
        }
        if self.hold.is_some() {
            // PgBouncer keeps a pause after its admin session is gone: nobody else would
            // ever resume these clients.
            self.end_hold("rebouncer is shutting down", Ending::Shutdown)
                .await;
        }
        info!(
            "shutting down; PgBouncer stays pointed at {}",
            self.active_name()
        );
    }

    /// Make sure PgBouncer's admin console answers before anything else is done, retrying
    /// every few seconds: PgBouncer may start after rebouncer. False if asked to stop.
    async fn wait_for_pgbouncer(&mut self) -> bool {
        loop {
            match admin::ping(&self.console).await {
                Ok(version) => {
                    info!(
                        "PgBouncer admin console at {} answers ({version}); starting to poll {} servers every {} s",
                        self.console.endpoint(),
                        self.nodes.len(),
                        self.cfg.interval.as_secs()
                    );
                    self.status.send_modify(|s| s.phase = Phase::Running);
                    return true;
                }
                Err(e) => {
                    warn!(
                        "waiting for PgBouncer: {e}; retrying in {} s",
                        PGBOUNCER_RETRY.as_secs()
                    );
                    let error = e.to_string();
                    self.status
                        .send_modify(|s| s.phase = Phase::WaitingForPgBouncer { error });
                }
            }
            tokio::select! {
                _ = self.shutdown.changed() => return false,
                // A fixed `pgbouncer` line is tried at once.
                Some(reload) = next_reload(&mut self.reloads) => { self.reload(reload).await; }
                _ = tokio::time::sleep(PGBOUNCER_RETRY) => {}
            }
        }
    }

    /// Databases a previous run killed and did not resume (it was killed in between)
    /// wait for a `RESUME` that nobody else will send. Only what the state file lists: a
    /// pause an operator made is theirs to end.
    async fn resume_held_from_last_run(&mut self) {
        let unreset = &self.state.state().unreset;
        if !unreset.is_empty() {
            warn!(
                "the state file lists database(s) {} as moved to a new server but not yet KILLed: a rebouncer stopped \
                 between its RELOAD and its KILL may have left their clients on the old server; sending KILL and RESUME now",
                unreset.join(", ")
            );
            self.reset_not_reset().await;
        }
        if !self.state.state().held.is_empty() {
            self.resume_held(
                "left paused by a rebouncer stopped between its PAUSE or KILL and the RESUME",
            )
            .await;
        }
    }

    /// PgBouncer settings that defeat `pause_on_failover`, said once at start.
    async fn check_pause_settings(&self) {
        if !self.cfg.pause_on_failover {
            return;
        }
        let Ok(s) = self.console.session().await else {
            return;
        };
        let secs = |v: Option<String>| v.and_then(|v| v.trim().parse::<f64>().ok());
        let wait = secs(
            admin::setting(&s, "query_wait_timeout")
                .await
                .ok()
                .flatten(),
        );
        let limit = self.cfg.pause_timeout.as_secs_f64();
        if let Some(w) = wait.filter(|w| *w > 0.0 && *w <= limit) {
            warn!(
                "PgBouncer's query_wait_timeout ({w} s) is not above pause_timeout ({limit} s): clients held through a failover get query_wait_timeout errors before the pause ends; raise it or lower pause_timeout"
            );
        }
        if let Ok(Some(mode)) = admin::setting(&s, "pool_mode").await
            && mode == "session"
        {
            warn!(
                "PgBouncer's pool_mode is session: a failover PAUSE waits until every connected client disconnects, so it will usually be given up after {} ms and clients not held; pause_on_failover works with transaction pooling",
                self.cfg.timeout.min(PAUSE_BOUND).as_millis()
            );
        }
    }

    async fn resume_held(&mut self, why: &str) {
        match switch::resume_held(&self.console, &mut self.state).await {
            Ok(done) => {
                if !done.resumed.is_empty() {
                    info!(
                        "resumed database(s) {} in PgBouncer, {why}; their clients are let through again",
                        done.resumed.join(", ")
                    );
                }
                if let Some(w) = done.warning {
                    warn!("{w}");
                }
            }
            Err(e) => warn!("{e}"),
        }
    }

    /// `KILL` (and `RESUME`) the databases the state file lists as moved but not reset:
    /// their clients may still be on the old server. Retried every round until it works.
    async fn reset_not_reset(&mut self) {
        let listed = self.state.state().unreset.join(", ");
        match switch::reset(&self.console, &mut self.state).await {
            Ok(r) => {
                if !r.reset.is_empty() {
                    info!(
                        "connections to the old server dropped for database(s) {} (KILL retried)",
                        r.reset.join(", ")
                    );
                }
                for w in &r.warnings {
                    warn!("{w}");
                }
            }
            Err(e) => warn!("cannot retry KILL of database(s) {listed}: {e}; retrying next round"),
        }
    }

    /// Ask every server that is due, wait for the answers, then decide. A server that
    /// hung at its last check is asked again but not waited for, so it cannot slow down
    /// the rounds that have to notice a newly promoted standby; one that keeps failing is
    /// asked less and less often (see [`Node::next_try`]).
    async fn round(&mut self) {
        let started = Instant::now();
        let deadline = started + self.cfg.timeout + Duration::from_millis(250);
        let mut awaited = Vec::new();
        for n in self.nodes.iter_mut() {
            if n.busy || n.next_try > started {
                continue;
            }
            if n.requests.send(Request::Check).is_ok() {
                n.busy = true;
                if !n.hung {
                    awaited.push(n.key);
                }
            }
        }
        let asked = awaited.len();
        self.collect(&mut awaited, deadline).await;
        self.last_round = Some(RoundStats {
            asked,
            answered: asked - awaited.len(),
            took: started.elapsed(),
        });
        self.check_drift().await;
        self.decide_and_act().await;
        self.status.send_modify(|s| s.counters.rounds += 1);
    }

    /// Between rounds of a settled cluster, ask the active master again on its kept
    /// connection. Its answer arrives like any late report; a timeout marks it down and
    /// starts fast rounds.
    fn heartbeat(&mut self) {
        if !self.cfg.keep_connections || self.cfg.interval <= HEARTBEAT || self.unsettled {
            return;
        }
        let Some(active) = self.believed.active.filter(|_| self.believed.confirmed) else {
            return;
        };
        let n = &mut self.nodes[active];
        if n.state == Some(NodeState::Master) && !n.busy && n.requests.send(Request::Check).is_ok()
        {
            n.busy = true;
        }
    }

    /// Apply reports until every awaited monitor answered or the deadline passed.
    async fn collect(&mut self, awaited: &mut Vec<MonitorKey>, deadline: Instant) {
        while !awaited.is_empty() {
            tokio::select! {
                Some(report) = self.reports.recv() => {
                    let key = report.key;
                    self.apply(report);
                    awaited.retain(|k| *k != key);
                }
                _ = sleep_until(deadline) => break,
            }
        }
    }

    /// A server that was backing off is asked at the next round: something changed, and
    /// it may be part of it.
    fn retry_failing_now(&mut self) {
        let now = Instant::now();
        for n in self.nodes.iter_mut().filter(|n| n.failures > 0) {
            n.next_try = n.next_try.min(now);
        }
    }

    /// Record one answer; true if the node's state changed. An answer from a monitor a
    /// reload stopped is dropped.
    fn apply(&mut self, report: Report) -> bool {
        let Some(index) = self.index_of(report.key) else {
            return false;
        };
        let now = SystemTime::now();
        let fast = self.cfg.fast_interval;
        let interval = self.cfg.interval;
        let n = &mut self.nodes[index];
        let obs = report.obs;
        n.busy = false;
        n.last_check = Some(now);
        n.hung = obs.hung;
        n.took = Some(report.took);
        let changed = n.state != Some(obs.state);
        let ok = obs.state != NodeState::Down;
        if changed {
            let text = match (&obs.error, n.state) {
                (Some(e), _) => format!("{}: now down: {e}", n.name),
                (None, None) => format!("{}: {}{}", n.name, obs.state, on_timeline(obs.timeline)),
                (None, Some(old)) => format!(
                    "{}: now {}{} (was {old})",
                    n.name,
                    obs.state,
                    on_timeline(obs.timeline)
                ),
            };
            if ok {
                info!("{text}");
            } else {
                warn!("{text}");
            }
            events::record(&self.status, Kind::State, Some(&n.name), text);
            n.state = Some(obs.state);
            n.since = Some(now);
            n.refuses_new = None;
        } else if let (Some(new), Some(old)) = (obs.timeline, n.timeline)
            && new.timeline != old.timeline
        {
            info!(
                "{}: now on timeline {} (was {})",
                n.name, new.timeline, old.timeline
            );
        }
        if obs.timeline_note != n.timeline_note {
            if let Some(note) = &obs.timeline_note {
                warn!("{}: {note}", n.name);
            }
            n.timeline_note = obs.timeline_note;
        }
        if obs.state != NodeState::Down {
            n.timeline = obs.timeline.or(n.timeline);
        }
        match obs.fresh {
            Some(Err(e)) => {
                if n.refuses_new.is_none() {
                    warn!(
                        "{}: answers as {} on rebouncer's kept session, but a new connection failed: {e}",
                        n.name, obs.state
                    );
                }
                n.refuses_new = Some(e);
            }
            Some(Ok(())) if n.refuses_new.take().is_some() => {
                info!("{}: accepts new connections again", n.name);
            }
            _ => {}
        }
        if obs.state == NodeState::Down {
            n.failures = n.failures.saturating_add(1);
            let backoff = fast
                .saturating_mul(1u32 << (n.failures - 1).min(16))
                .min(interval);
            n.next_try = Instant::now() + backoff;
        } else {
            n.failures = 0;
            n.next_try = Instant::now();
        }
        n.error = obs.error;
        if changed {
            let this = index;
            let at = Instant::now();
            for (id, other) in self.nodes.iter_mut().enumerate() {
                if id != this && other.failures > 0 {
                    other.next_try = other.next_try.min(at);
                }
            }
        }
        self.status
            .send_modify(|s| s.nodes[index].counters.record(report.took, ok, now));
        self.publish();
        changed
    }

    fn observed(&self) -> Vec<Seen> {
        self.nodes
            .iter()
            .map(|n| Seen {
                state: n.state.unwrap_or(NodeState::Down),
                timeline: n.timeline.filter(|_| n.state != Some(NodeState::Down)),
                refuses_new: n.refuses_new.is_some(),
                silent: n.state.is_none() || (n.state == Some(NodeState::Down) && n.hung),
            })
            .collect()
    }

    async fn decide_and_act(&mut self) {
        let mut decision = decide::decide(self.believed, &self.observed(), &self.memory);
        let recheck: Vec<NodeId> = match (&decision.cluster, &decision.refusal) {
            (Cluster::SplitBrain(masters), _) => masters.clone(),
            (_, Some(Refusal::RefusesNewLogins(m))) => vec![*m],
            _ => Vec::new(),
        };
        if !recheck.is_empty() && self.cfg.keep_connections && self.recheck_fresh(recheck).await {
            // Kept sessions can outlive a postmaster that refuses everyone else; what a new
            // connection finds may only make the verdict more cautious (see decide).
            decision = decide::decide(self.believed, &self.observed(), &self.memory);
        }
        self.remember(&decision).await;
        self.log_decision(&decision);
        self.note_master(&decision);
        if self.hold.is_none() && self.lost_master(&decision).is_some() {
            self.start_hold(&decision).await;
        }

        self.unsettled = !matches!(decision.cluster, Cluster::OneMaster(_))
            || decision.refusal.is_some()
            || self.hold.is_some();
        if let Action::Switch(to) = decision.action {
            self.unsettled = true;
            // A failed switch, or a switch to the same node again (something keeps undoing
            // it), waits before it is tried again; a failover to another node right after a
            // successful switch goes at once.
            let again = self.switch_failure.is_some() || self.last_switch_to == Some(to);
            let too_soon = again
                && self
                    .last_switch_attempt
                    .is_some_and(|t| t.elapsed() < SWITCH_RETRY_MIN);
            if !too_soon {
                self.switch(to).await;
            }
            if self
                .hold
                .as_ref()
                .is_some_and(|h| h.deadline <= Instant::now())
            {
                // The switch keeps failing: clients get errors rather than wait longer.
                self.end_hold(
                    &format!(
                        "no switch to {} succeeded within pause_timeout ({} s)",
                        self.nodes[to].name,
                        self.cfg.pause_timeout.as_secs()
                    ),
                    Ending::GiveUp,
                )
                .await;
            }
        } else {
            if let Some((why, how)) = self.hold_over(&decision) {
                self.end_hold(&why, how).await;
            }
            // Not while clients are held: a reset RESUMEs what the state file lists as
            // held, which would end the pause; the KILL waits for the pause to end.
            if self.hold.is_none() && !self.state.state().unreset.is_empty() {
                self.reset_not_reset().await;
            }
            if self.hold.is_none() && !self.state.state().held.is_empty() {
                self.resume_held("left paused by an earlier RESUME that failed")
                    .await;
            }
        }
        self.last_decision = Some(decision);
        self.publish();
    }

    /// Keep the decision's memory; write the timelines to the state file when they rose.
    async fn remember(&mut self, decision: &Decision) {
        let rose = decision.memory.timelines != self.memory.timelines;
        self.memory = decision.memory.clone();
        if rose {
            let timelines = self.memory.timelines.clone();
            let had_error = self.state.write_error().is_some();
            if let Err(e) = self.state.update(|s| s.timelines = timelines).await {
                if !had_error {
                    warn!("{e}");
                }
            } else if had_error {
                info!("state file {} written again", self.state.path().display());
            }
        }
    }

    fn log_decision(&mut self, decision: &Decision) {
        let names = |ids: &[NodeId]| -> Vec<String> {
            ids.iter().map(|i| self.nodes[*i].name.clone()).collect()
        };
        let condition = match &decision.cluster {
            Cluster::OneMaster(_) => None,
            Cluster::NoMaster => Some(Condition::NoMaster),
            Cluster::SplitBrain(m) => Some(Condition::SplitBrain(names(m))),
        };
        let now = Instant::now().into_std();
        for say in self.conditions.observe(condition, now) {
            self.log_condition(say);
        }

        let stale: Vec<String> = decision
            .stale
            .iter()
            .map(|s| self.nodes[s.node].name.clone())
            .collect();
        let active = self.active_name();
        for say in self
            .stale_log
            .observe((!stale.is_empty()).then(|| stale.clone()), now)
        {
            match say {
                Say::Started(_) => {
                    for s in &decision.stale {
                        let name = &self.nodes[s.node].name;
                        events::record(
                            &self.status,
                            Kind::StalePrimaryStart,
                            Some(name),
                            format!(
                                "stale primary: {name} answers as master on timeline {}, but {}; never routed to",
                                s.timeline,
                                self.fence_text(s)
                            ),
                        );
                        let what = match s.standby {
                            None => "an old primary that was not rewound",
                            Some(_) => {
                                "an old primary, or a standby ahead of the primary: a promoted clone \
                                 restarted as a standby, or one following a shared archive; the fence \
                                 lifts when that standby no longer reports the newer timeline"
                            }
                        };
                        error!(
                            "stale primary: {} answers as master on timeline {}, but {} ({what}); \
                             refusing to route to it, PgBouncer stays pointed at {active}. \
                             Stop it, or rewind it (pg_rewind) and start it as a standby",
                            self.nodes[s.node].name,
                            s.timeline,
                            self.fence_text(s)
                        );
                    }
                }
                Say::Reminder { key, lasted, .. } => error!(
                    "stale primary {} still running after {} s; never routed to, PgBouncer stays pointed at {active}",
                    key.join(", "),
                    lasted.as_secs()
                ),
                Say::Ended { key, lasted } => {
                    let text = format!(
                        "stale primary {} no longer answers as master (after {} s)",
                        key.join(", "),
                        lasted.as_secs()
                    );
                    info!("{text}");
                    for name in &key {
                        events::record(
                            &self.status,
                            Kind::StalePrimaryEnd,
                            Some(name),
                            text.clone(),
                        );
                    }
                }
            }
        }

        let refusal = decision.refusal.as_ref().map(|r| self.refusal_text(r));
        for say in self.refusal_log.observe(refusal, now) {
            match say {
                Say::Started(text) => {
                    error!("{text}");
                    events::record(&self.status, Kind::RefusalStart, None, text);
                }
                Say::Reminder { key, lasted, .. } => {
                    error!("still, after {} s: {key}", lasted.as_secs())
                }
                Say::Ended { lasted, .. } => {
                    let text =
                        format!("the refusal to switch is over after {} s", lasted.as_secs());
                    info!("{text}");
                    events::record(&self.status, Kind::RefusalEnd, None, text);
                }
            }
        }
    }

    /// What makes a stale primary stale: the remembered timeline, or a standby's.
    fn fence_text(&self, s: &Stale) -> String {
        match s.standby {
            Some(b) => format!(
                "standby {} reports timeline {}",
                self.nodes[b].name, s.highest
            ),
            None => format!("the cluster has reached timeline {}", s.highest),
        }
    }

    fn refusal_text(&self, r: &Refusal) -> String {
        let active = self.active_name();
        match r {
            Refusal::RefusesNewLogins(m) => {
                let n = &self.nodes[*m];
                format!(
                    "{} is the only master but refuses new connections ({}); not pointing PgBouncer at it, \
                     which could not log in either; PgBouncer stays pointed at {active}",
                    n.name,
                    n.refuses_new.as_deref().unwrap_or("new connection failed")
                )
            }
            Refusal::LinkedSilentSinceStart { master, linked } => {
                let (m, l) = (&self.nodes[*master].name, &self.nodes[*linked].name);
                format!(
                    "waiting for {l}: rebouncer started with no remembered timeline and PgBouncer points at {l}, \
                     which has only timed out since; it may be the real primary, hung, and {m} an old primary \
                     that came back, which nothing here can tell apart yet. Not moving PgBouncer to {m} until \
                     {l} answers or refuses connections; if {l} is gone for good, stop it or take it out of \
                     the configuration"
                )
            }
            Refusal::Unresolved {
                master,
                unreachable,
            } => {
                let others: Vec<&str> = unreachable
                    .iter()
                    .map(|i| self.nodes[*i].name.as_str())
                    .collect();
                format!(
                    "split brain not resolved: {} is the only master answering, but {} stopped answering instead of \
                     coming back as a standby and may still be the real primary; refusing to switch to {}, PgBouncer \
                     stays pointed at {active}. Once {} is stopped for good, start it as a standby or restart rebouncer",
                    self.nodes[*master].name,
                    others.join(", "),
                    self.nodes[*master].name,
                    others.join(", ")
                )
            }
        }
    }

    /// Ask these masters on a new connection, each at most every [`RECHECK_EVERY`]; true
    /// if any was asked.
    async fn recheck_fresh(&mut self, masters: Vec<NodeId>) -> bool {
        let deadline = Instant::now() + self.cfg.timeout + Duration::from_millis(250);
        let mut awaited = Vec::new();
        for id in masters {
            let n = &mut self.nodes[id];
            if n.rechecked.is_some_and(|t| t.elapsed() < RECHECK_EVERY) {
                continue;
            }
            if !n.busy && n.requests.send(Request::Fresh).is_ok() {
                n.busy = true;
                n.rechecked = Some(Instant::now());
                awaited.push(n.key);
            }
        }
        let asked = !awaited.is_empty();
        self.collect(&mut awaited, deadline).await;
        asked
    }

    /// PgBouncer must be where rebouncer put it. The symlink is read every round; the
    /// routes PgBouncer uses are compared with the active node's file every few rounds,
    /// and at once when PgBouncer closed the admin session (a restart). Any difference
    /// unconfirms the active node, and the decision then switches back through the
    /// normal, confirmed switch.
    async fn check_drift(&mut self) {
        let Some(active) = self.believed.active.filter(|_| self.believed.confirmed) else {
            return;
        };
        let behind = self.node_behind_symlink();
        if behind != Some(active) {
            let now_at = match behind {
                Some(n) => format!("{}'s config", self.nodes[n].name),
                None => match switch::link_target(&self.cfg.symlink) {
                    Some(t) => format!("{}, no node's config", t.display()),
                    None => "nothing (it is missing or not a symlink)".to_string(),
                },
            };
            let what = format!(
                "the symlink {} now points at {now_at}, not at {}'s config where rebouncer put it",
                self.cfg.symlink.display(),
                self.nodes[active].name
            );
            self.drifted(what, behind);
            return;
        }

        let restarted = self.watch_session.as_ref().is_some_and(|s| s.is_closed());
        self.rounds_since_drift_check += 1;
        if !restarted && self.rounds_since_drift_check < DRIFT_CHECK_ROUNDS {
            return;
        }
        self.rounds_since_drift_check = 0;
        if restarted {
            info!(
                "PgBouncer closed rebouncer's admin session (restarted?); checking where it routes now"
            );
            self.watch_session = None;
        }
        if self.watch_session.is_none() {
            match self.console.session().await {
                Ok(s) => self.watch_session = Some(s),
                Err(e) => {
                    warn!("cannot check where PgBouncer routes: {e}");
                    return;
                }
            }
        }
        let Some(session) = &self.watch_session else {
            return;
        };
        let databases = match admin::databases(session).await {
            Ok(d) => d,
            Err(e) => {
                warn!("cannot check where PgBouncer routes: {e}");
                self.watch_session = None;
                return;
            }
        };
        self.note_paused(&databases);
        let node_file = self.cfg.servers[active].node_file.clone();
        let node =
            match tokio::task::spawn_blocking(move || config::read_node_file(&node_file)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    warn!("cannot check where PgBouncer routes: {e}");
                    return;
                }
                Err(_) => return,
            };
        for want in &node.databases {
            let route = admin::Route {
                host: want.host.clone(),
                port: want.port,
            };
            let got = databases.iter().find(|d| d.name == want.name);
            if got.is_some_and(|d| d.route == route) {
                continue;
            }
            let what = match got {
                Some(d) => format!(
                    "PgBouncer sends database {} to {}, not to {route} as {} says",
                    want.name,
                    d.route,
                    node.path.display()
                ),
                None => format!(
                    "PgBouncer has no database {} although {} defines it",
                    want.name,
                    node.path.display()
                ),
            };
            self.drifted(what, behind);
            return;
        }
        self.last_confirmed = Some(databases);
    }

    fn drifted(&mut self, what: String, behind: Option<NodeId>) {
        let active = self.active_name();
        events::record(
            &self.status,
            Kind::Drift,
            None,
            format!("PgBouncer drifted: {what}; rebouncer had pointed it at {active}"),
        );
        error!(
            "PgBouncer drifted: {what}; rebouncer had pointed it at {active}, and will switch it back to the master now"
        );
        self.drift = Some(Drift {
            what,
            since: SystemTime::now(),
        });
        self.believed = Believed {
            active: behind,
            confirmed: false,
        };
        self.unsettled = true;
    }

    fn note_paused(&mut self, databases: &[Database]) {
        let held = &self.state.state().held;
        let paused: Vec<Paused> = databases
            .iter()
            .filter(|d| d.paused)
            .map(|d| Paused {
                name: d.name.clone(),
                by_rebouncer: held.contains(&d.name),
            })
            .collect();
        if paused != self.paused {
            for p in paused.iter().filter(|p| !p.by_rebouncer) {
                if !self.paused.contains(p) {
                    events::record(
                        &self.status,
                        Kind::Paused,
                        None,
                        format!(
                            "database {} is paused in PgBouncer, not by rebouncer",
                            p.name
                        ),
                    );
                    warn!(
                        "database {} is paused in PgBouncer, not by rebouncer (an operator's PAUSE?); its clients wait until someone sends RESUME {} on the admin console",
                        p.name, p.name
                    );
                }
            }
            self.paused = paused;
        }
    }

    fn log_condition(&self, say: Say<Condition>) {
        let active = self.active_name();
        let event = match &say {
            Say::Started(Condition::NoMaster) => Some((
                Kind::NoMasterStart,
                "no master: no server answers as master (stale primaries aside)".to_string(),
            )),
            Say::Started(Condition::SplitBrain(names)) => Some((
                Kind::SplitBrainStart,
                format!("split brain: {} all answer as master", names.join(", ")),
            )),
            Say::Ended { key, lasted } => Some(match key {
                Condition::NoMaster => (
                    Kind::NoMasterEnd,
                    format!("no master is over after {} s", lasted.as_secs()),
                ),
                Condition::SplitBrain(n) => (
                    Kind::SplitBrainEnd,
                    format!(
                        "split brain ({}) is over after {} s",
                        n.join(", "),
                        lasted.as_secs()
                    ),
                ),
            }),
            Say::Reminder { .. } => None,
        };
        if let Some((kind, text)) = event {
            events::record(&self.status, kind, None, text);
        }
        match say {
            Say::Started(Condition::NoMaster) => warn!(
                "no master: no server answers as master (stale primaries aside); not touching PgBouncer, which stays pointed at {active}"
            ),
            Say::Started(Condition::SplitBrain(names)) => error!(
                "split brain: {} all answer as master (on the same timeline, or one that cannot be read); refusing to switch, PgBouncer stays pointed at {active}. \
                 Find the real primary and stop or demote the other",
                names.join(", ")
            ),
            Say::Reminder {
                key,
                lasted,
                rounds,
            } => {
                let what = match key {
                    Condition::NoMaster => "no master".to_string(),
                    Condition::SplitBrain(n) => format!("split brain ({})", n.join(", ")),
                };
                error!(
                    "{what} for {} s now ({rounds} rounds since the last reminder); PgBouncer stays pointed at {active}",
                    lasted.as_secs()
                )
            }
            Say::Ended { key, lasted } => {
                let what = match key {
                    Condition::NoMaster => "no master".to_string(),
                    Condition::SplitBrain(n) => format!("split brain ({})", n.join(", ")),
                };
                info!("{what} is over after {} s", lasted.as_secs())
            }
        }
    }

    async fn switch(&mut self, to: NodeId) {
        let name = self.nodes[to].name.clone();
        let node_file = self.cfg.servers[to].node_file.clone();
        let from = self.believed.active;
        match from {
            Some(f) if f == to => info!(
                "master is {name}, and PgBouncer's config already points at it; reloading PgBouncer to confirm"
            ),
            Some(f) => info!(
                "master changed from {} to {name}; switching PgBouncer",
                self.nodes[f].name
            ),
            None => info!("master is {name}; pointing PgBouncer at it"),
        }
        let reason = match from {
            _ if self.drift.is_some() => SwitchReason::Drift,
            None => SwitchReason::Initial,
            Some(f) if f == to => SwitchReason::Confirm,
            Some(_) => SwitchReason::Failover,
        };
        // The need arose when the new master was first seen as one, or the drift found.
        let needed_since = self
            .drift
            .as_ref()
            .map(|d| d.since)
            .or(self.nodes[to].since);
        let started = Instant::now();
        self.last_switch_attempt = Some(started);
        self.last_switch_to = Some(to);
        let waiting = match &self.hold {
            Some(h) => self.waiting_clients(&h.databases).await,
            None => None,
        };
        let held_paused = self
            .hold
            .as_ref()
            .map(|h| h.databases.clone())
            .unwrap_or_default();
        let plan = SwitchPlan {
            symlink: &self.cfg.symlink,
            node_file: &node_file,
            last_confirmed: self.last_confirmed.as_deref(),
            paused: &held_paused,
        };
        let result = switch::run(&self.console, &mut self.state, plan).await;
        match result {
            Ok(done) => {
                let ms = started.elapsed().as_millis();
                let reset = if done.resets.reset.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; connections to the old server dropped for database(s) {}",
                        done.resets.reset.join(", ")
                    )
                };
                info!(
                    "PgBouncer now points at {name} ({}), confirmed by SHOW DATABASES in {ms} ms{reset}",
                    node_file.display()
                );
                metrics::record_switch(
                    &self.status,
                    metrics::SwitchDone {
                        reason,
                        to: &name,
                        from: from.map(|f| self.nodes[f].name.as_str()),
                        relinked: done.relinked,
                        needed_since,
                        step: started.elapsed(),
                    },
                );
                for w in done.link_warning.iter().chain(&done.resets.warnings) {
                    warn!("{w}");
                }
                if !done.resets.resumed.is_empty() && self.hold.is_none() {
                    info!(
                        "resumed database(s) {}, left paused by an earlier attempt",
                        done.resets.resumed.join(", ")
                    );
                }
                self.last_confirmed = Some(done.confirmed);
                self.loss_handled = false;
                if let Some(h) = self.hold.take() {
                    let outcome = format!("switched to {name}");
                    if done.resets.still_held.is_empty() {
                        self.log_hold_end(h, &outcome, waiting);
                    } else {
                        // The warning above says which RESUME failed; the round retries it.
                        self.log_hold_end(h, &format!("{outcome}, but RESUME failed"), waiting);
                    }
                }
                self.believed = Believed {
                    active: Some(to),
                    confirmed: true,
                };
                if let Some(d) = self.drift.take() {
                    info!("PgBouncer is back on {name} after drifting ({})", d.what);
                }
                // Check the routes at the next round: that also opens the admin session
                // whose closing tells of a PgBouncer restart.
                self.rounds_since_drift_check = DRIFT_CHECK_ROUNDS;
                self.last_switch = done.relinked.then(SystemTime::now).or(self.last_switch);
                self.switch_failure = None;
                for say in self.switch_errors.observe(None, Instant::now().into_std()) {
                    if let Say::Ended { lasted, .. } = say {
                        info!(
                            "switch to {name} succeeded after failing for {} s",
                            lasted.as_secs()
                        );
                    }
                }
            }
            Err(e) => {
                let error = e.to_string();
                let reason = metrics::failure_reason(&e);
                self.status
                    .send_modify(|s| s.counters.switch_failed(reason));
                // The link may or may not have moved; believe only what it says now.
                self.believed = Believed {
                    active: self.node_behind_symlink(),
                    confirmed: false,
                };
                let since = self
                    .switch_failure
                    .as_ref()
                    .filter(|f| f.wanted == name)
                    .map_or_else(SystemTime::now, |f| f.since);
                self.switch_failure = Some(SwitchFailure {
                    wanted: name.clone(),
                    error: error.clone(),
                    since,
                });
                let key = format!("{name}: {error}");
                for say in self
                    .switch_errors
                    .observe(Some(key), Instant::now().into_std())
                {
                    match say {
                        Say::Started(_) => {
                            let text = format!(
                                "switch to {name} failed: {error}; the symlink points at {}; retrying every round",
                                self.active_name()
                            );
                            error!("{text}");
                            events::record(&self.status, Kind::SwitchFailed, Some(&name), text);
                        }
                        Say::Reminder { lasted, rounds, .. } => error!(
                            "switch to {name} still failing after {} s ({rounds} attempts since the last reminder): {error}",
                            lasted.as_secs()
                        ),
                        Say::Ended { .. } => {}
                    }
                }
            }
        }
    }

    /// Forget that the active master's loss was handled once it answers as master again.
    fn note_master(&mut self, decision: &Decision) {
        if let Some(a) = self.believed.active
            && self.nodes[a].state == Some(NodeState::Master)
            && !decision.stale.iter().any(|s| s.node == a)
        {
            self.loss_handled = false;
        }
    }

    /// Why the active, confirmed master no longer is one, when clients should be held for
    /// a new one: pausing is on, its loss was not handled yet, and there is nothing to
    /// switch to right now (then the switch itself is quicker than a pause).
    fn lost_master(&self, decision: &Decision) -> Option<String> {
        if !self.cfg.pause_on_failover || self.loss_handled {
            return None;
        }
        let a = self.believed.active.filter(|_| self.believed.confirmed)?;
        if matches!(decision.action, Action::Switch(_)) {
            return None;
        }
        // A pause that the same verdict would end at once helps nobody.
        if self.no_hold_verdict(decision, a).is_some() {
            return None;
        }
        let n = &self.nodes[a];
        let why = match n.state {
            Some(NodeState::Master) if decision.stale.iter().any(|s| s.node == a) => {
                "it turned out to be a stale primary".to_string()
            }
            Some(NodeState::Master) | None => return None,
            Some(NodeState::Standby) => "it answers as a standby".to_string(),
            // The line logged when it went down has the error.
            Some(NodeState::Down) => "it is down".to_string(),
        };
        Some(why)
    }

    /// Why a hold must end without a switch, if it must.
    fn hold_over(&self, decision: &Decision) -> Option<(String, Ending)> {
        let h = self.hold.as_ref()?;
        let lost = &self.nodes[h.lost];
        if lost.state == Some(NodeState::Master) && !decision.stale.iter().any(|s| s.node == h.lost)
        {
            return Some((
                format!("{} answers as master again", lost.name),
                Ending::MasterBack,
            ));
        }
        if let Some(why) = self.no_hold_verdict(decision, h.lost) {
            return Some((why, Ending::GiveUp));
        }
        if h.deadline <= Instant::now() {
            return Some((
                format!(
                    "no master appeared within pause_timeout ({} s)",
                    self.cfg.pause_timeout.as_secs()
                ),
                Ending::GiveUp,
            ));
        }
        None
    }

    /// A verdict that will not end in a switch by itself soon, so clients are better off
    /// with their errors now: split brain, only a stale primary, a refused master. The
    /// lost master itself turning out stale is the loss, not such a verdict.
    fn no_hold_verdict(&self, decision: &Decision, lost: NodeId) -> Option<String> {
        if let Cluster::SplitBrain(m) = &decision.cluster {
            let names: Vec<&str> = m.iter().map(|i| self.nodes[*i].name.as_str()).collect();
            return Some(format!(
                "split brain ({}): no switch until it is resolved",
                names.join(", ")
            ));
        }
        if let Some(r) = &decision.refusal {
            return Some(self.refusal_text(r));
        }
        let stale: Vec<&str> = decision
            .stale
            .iter()
            .filter(|s| s.node != lost)
            .map(|s| self.nodes[s.node].name.as_str())
            .collect();
        if !stale.is_empty() {
            let names = stale;
            return Some(format!(
                "only a stale primary ({}) answers as master, never switched to",
                names.join(", ")
            ));
        }
        None
    }

    /// `PAUSE` the active node's databases, recorded in the state file first. Bounded:
    /// a `PAUSE` that does not complete in time is given up and resumed at once.
    async fn start_hold(&mut self, decision: &Decision) {
        let Some(why) = self.lost_master(decision) else {
            return;
        };
        let Some(lost) = self.believed.active else {
            return;
        };
        self.loss_handled = true;
        let name = self.nodes[lost].name.clone();
        let skip = |e: &dyn std::fmt::Display| {
            warn!(
                "{name} stopped being master ({why}), but its clients are not held in PgBouncer: {e}; they get errors until a new master is switched to"
            )
        };
        let node_file = self.cfg.servers[lost].node_file.clone();
        let node =
            match tokio::task::spawn_blocking(move || config::read_node_file(&node_file)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return skip(&e),
                Err(e) => return skip(&e),
            };
        let now = match self.console.session().await {
            Ok(s) => admin::databases(&s).await,
            Err(e) => Err(e),
        };
        let now = match now {
            Ok(d) => d,
            Err(e) => return skip(&e),
        };
        let held = self.state.state().held.clone();
        // A database already paused is someone else's (an operator's maintenance PAUSE)
        // unless rebouncer holds it: resuming it later would end their pause.
        let databases: Vec<String> = node
            .databases
            .iter()
            .map(|d| d.name.clone())
            .filter(|db| {
                now.iter()
                    .any(|d| d.name == *db && (!d.paused || held.contains(db)))
            })
            .collect();
        if databases.is_empty() {
            return skip(&"none of its databases is there to pause");
        }
        let add = databases.clone();
        let recorded = self.state.update(|s| s.hold(add)).await;
        if let Err(e) = recorded {
            // Unrecorded, a rebouncer killed during the pause would leave them paused.
            return skip(&e);
        }
        let bound = self.cfg.timeout.min(PAUSE_BOUND);
        let started = Instant::now();
        let mut pauses = tokio::task::JoinSet::new();
        for db in &databases {
            let console = self.console.clone();
            let command = format!("PAUSE {}", admin::quote_ident(db));
            pauses.spawn(async move {
                let s = console.session().await?;
                s.command(&command).await.map(|_| ())
            });
        }
        let outcome = tokio::time::timeout(bound, async {
            while let Some(r) = pauses.join_next().await {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        })
        .await;
        // Dropping the set closes the sessions of unfinished PAUSEs: a RESUME must not be
        // sent while one still waits on its session (pgbouncer/pgbouncer#715).
        drop(pauses);
        match outcome {
            Ok(Ok(())) => {
                warn!(
                    "{name} stopped being master ({why}): PAUSE {} in PgBouncer done in {} ms; clients wait up to {} s (pause_timeout) for a new master",
                    databases.join(", "),
                    started.elapsed().as_millis(),
                    self.cfg.pause_timeout.as_secs()
                );
                self.hold = Some(Hold {
                    databases,
                    lost,
                    started,
                    since: SystemTime::now(),
                    deadline: started + self.cfg.pause_timeout,
                });
                self.publish();
            }
            Ok(Err(e)) => {
                warn!(
                    "{name} stopped being master ({why}), but PAUSE {} failed: {e}; resumed, the failover goes on without holding clients",
                    databases.join(", ")
                );
                self.resume_and_verify(&databases).await;
            }
            Err(_) => {
                warn!(
                    "{name} stopped being master ({why}), but PAUSE {} did not complete within {} ms (running queries hold server connections: a hung primary, long transactions or session-pooled clients); resumed, the failover goes on without holding clients",
                    databases.join(", "),
                    bound.as_millis()
                );
                self.resume_and_verify(&databases).await;
            }
        }
    }

    /// RESUME on a new session, then check with `SHOW DATABASES` that none stays paused;
    /// what does stays listed in the state file and is retried every round.
    async fn resume_and_verify(&mut self, databases: &[String]) {
        self.resume_held("after a PAUSE that did not complete")
            .await;
        let still: Vec<String> = match self.console.session().await {
            Ok(s) => match admin::databases(&s).await {
                Ok(now) => now
                    .iter()
                    .filter(|d| d.paused && databases.contains(&d.name))
                    .map(|d| d.name.clone())
                    .collect(),
                Err(_) => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        if !still.is_empty() {
            let again = still.clone();
            let _ = self.state.update(|s| s.hold(again)).await;
            warn!(
                "database(s) {} still paused in PgBouncer after RESUME; retrying every round (by hand: RESUME <db> on the admin console)",
                still.join(", ")
            );
        }
        self.publish();
    }

    /// End the hold without a switch.
    async fn end_hold(&mut self, why: &str, how: Ending) {
        let Some(h) = self.hold.take() else {
            return;
        };
        let waiting = self.waiting_clients(&h.databases).await;
        let result = match how {
            Ending::MasterBack => {
                switch::resume_paused(&self.console, &mut self.state, &h.databases)
                    .await
                    .map(|done| done.warning.into_iter().collect::<Vec<_>>())
                    .map_err(|e| e.to_string())
            }
            // Held clients are waiting for a server that is gone; after RESUME PgBouncer
            // fails new clients at once ("server login has been failing") and the held
            // ones at query_wait_timeout. KILL would fail the held ones now, but the pool
            // it leaves has no cached server parameters, so every new client would then
            // wait for a server login instead of failing: worse for all later clients.
            Ending::GiveUp | Ending::Shutdown => {
                switch::resume_held(&self.console, &mut self.state)
                    .await
                    .map(|done| done.warning.into_iter().collect())
                    .map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(warnings) => {
                for w in warnings {
                    warn!("{w}");
                }
                self.log_hold_end(h, &format!("resumed without a switch: {why}"), waiting);
            }
            Err(e) => {
                error!(
                    "ending the pause ({why}) failed: {e}; clients keep waiting until RESUME gets through (retried every round)"
                );
                self.log_hold_end(h, &format!("RESUME failed ({why})"), waiting);
            }
        }
        self.publish();
    }

    fn log_hold_end(&mut self, h: Hold, outcome: &str, waiting: Option<u64>) {
        let lasted = h.started.elapsed();
        // Shown until the next comparison of routes would notice.
        self.paused.retain(|p| !h.databases.contains(&p.name));
        let clients = waiting.map_or("an unknown number of".to_string(), |w| w.to_string());
        let line = format!(
            "pause of database(s) {} in PgBouncer ended after {} ms, {clients} client(s) were waiting: {outcome}",
            h.databases.join(", "),
            lasted.as_millis()
        );
        // Released without a new master, the held clients get errors: worth a warning.
        if outcome.starts_with("switched to") && !outcome.contains("failed") {
            info!("{line}");
        } else {
            warn!("{line}");
        }
        self.last_hold = Some(HoldStatus {
            databases: h.databases,
            lost: self.nodes[h.lost].name.clone(),
            since: h.since,
            timeout: self.cfg.pause_timeout,
            ended: Some((lasted, outcome.to_string(), waiting)),
        });
    }

    async fn waiting_clients(&self, databases: &[String]) -> Option<u64> {
        let s = self.console.session().await.ok()?;
        admin::waiting_clients(&s, databases).await.ok()
    }

    /// The node whose config file the symlink points at now, if any.
    fn node_behind_symlink(&self) -> Option<NodeId> {
        let target = switch::link_target(&self.cfg.symlink)?;
        self.cfg
            .servers
            .iter()
            .position(|s| switch::same_file(&s.node_file, &target))
    }

    fn active_name(&self) -> String {
        match self.believed.active {
            Some(n) => self.nodes[n].name.clone(),
            None => "no node's config".to_string(),
        }
    }

    /// Apply a configuration re-read on SIGHUP, or refuse it; true when something changed
    /// (a round is then due at once). Everything is checked before anything is changed:
    /// a reload applies whole or not at all.
    async fn reload(&mut self, r: Reload) -> bool {
        let changed = match r.config {
            Err(e) => {
                self.reload_refused(e.to_string());
                false
            }
            Ok(new) => match self.prepare_reload(new) {
                Err(e) => {
                    self.reload_refused(e);
                    false
                }
                Ok(plan) => self.apply_reload(plan).await,
            },
        };
        if let Some(done) = r.done {
            let _ = done.send(());
        }
        changed
    }

    fn reload_refused(&mut self, error: String) {
        let text =
            format!("configuration reload refused, the running configuration stays: {error}");
        error!("{text}");
        self.status.send_modify(|s| {
            s.counters.reloads_failed += 1;
            let at = SystemTime::now();
            s.reload = Some(ReloadStatus {
                at,
                error: Some(error),
                changes: Vec::new(),
                not_applied: Vec::new(),
            });
            s.events.push(at, Kind::ConfigReloadFailed, None, text);
        });
    }

    /// What a valid new configuration changes, and the configuration as it will run:
    /// the settings that cannot change live keep their running values.
    fn prepare_reload(&self, mut new: Config) -> Result<ReloadPlan, String> {
        let old = &self.cfg;
        let mut not_applied = Vec::new();
        if new.symlink != old.symlink {
            not_applied.push(format!(
                "symlink (the file says {}, rebouncer keeps {})",
                new.symlink.display(),
                old.symlink.display()
            ));
            new.symlink = old.symlink.clone();
        }
        if new.state_file != old.state_file {
            not_applied.push(format!(
                "state_file (the file says {}, rebouncer keeps {})",
                new.state_file.display(),
                old.state_file.display()
            ));
            new.state_file = old.state_file.clone();
        }
        if new.configdir != old.configdir {
            not_applied.push(format!(
                "configdir (the file says {}, rebouncer keeps {})",
                new.configdir.display(),
                old.configdir.display()
            ));
            // The node files the switch will use are the kept directory's: they must be
            // there and valid, as at start.
            for s in &mut new.servers {
                s.node_file = old.configdir.join(format!("{}.ini", s.name));
                config::read_node_file(&s.node_file).map_err(|e| {
                    format!(
                        "{e} (server {}: configdir {} is kept until a restart, so its node file must be there)",
                        s.name,
                        old.configdir.display()
                    )
                })?;
            }
            new.configdir = old.configdir.clone();
        }

        let mut changes = Vec::new();
        let secs = |d: Duration| format!("{} s", d.as_secs_f64());
        let mut setting = |name: &str, was: String, now: String| {
            if was != now {
                changes.push(format!("{name} {was} -> {now}"));
            }
        };
        setting("interval", secs(old.interval), secs(new.interval));
        setting("timeout", secs(old.timeout), secs(new.timeout));
        setting(
            "fast_interval",
            secs(old.fast_interval),
            secs(new.fast_interval),
        );
        setting(
            "keep_connections",
            old.keep_connections.to_string(),
            new.keep_connections.to_string(),
        );
        setting(
            "pause_on_failover",
            old.pause_on_failover.to_string(),
            new.pause_on_failover.to_string(),
        );
        setting(
            "pause_timeout",
            secs(old.pause_timeout),
            secs(new.pause_timeout),
        );
        let new_console = new.pgbouncer_conninfo != old.pgbouncer_conninfo;
        if new_console {
            changes.push(format!(
                "pgbouncer {} -> {}",
                old.pgbouncer.endpoint, new.pgbouncer.endpoint
            ));
        }
        // Both are settings of every monitor (and of its connections).
        let restart_all =
            new.timeout != old.timeout || new.keep_connections != old.keep_connections;
        let named = |list: &[Server], name: &str| list.iter().position(|s| s.name == name);
        let added: Vec<String> = new
            .servers
            .iter()
            .filter(|s| named(&old.servers, &s.name).is_none())
            .map(|s| s.name.clone())
            .collect();
        let removed: Vec<String> = old
            .servers
            .iter()
            .filter(|s| named(&new.servers, &s.name).is_none())
            .map(|s| s.name.clone())
            .collect();
        let reconnected: Vec<String> = new
            .servers
            .iter()
            .filter(|s| {
                named(&old.servers, &s.name).is_some_and(|i| old.servers[i].conninfo != s.conninfo)
            })
            .map(|s| s.name.clone())
            .collect();
        let order = |list: &[Server]| list.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let reordered =
            added.is_empty() && removed.is_empty() && order(&old.servers) != order(&new.servers);
        if !added.is_empty() {
            changes.push(format!("server(s) {} added", added.join(", ")));
        }
        if !removed.is_empty() {
            changes.push(format!("server(s) {} removed", removed.join(", ")));
        }
        if !reconnected.is_empty() {
            changes.push(format!(
                "connection string of {} changed (monitor restarted)",
                reconnected.join(", ")
            ));
        }
        if reordered {
            changes.push("servers reordered".to_string());
        }
        if restart_all && !new.servers.is_empty() {
            changes.push("every monitor restarted (timeout or keep_connections)".to_string());
        }
        Ok(ReloadPlan {
            new,
            changes,
            not_applied,
            restart_all,
            new_console,
            removed,
        })
    }

    async fn apply_reload(&mut self, plan: ReloadPlan) -> bool {
        let ReloadPlan {
            new,
            changes,
            not_applied,
            restart_all,
            new_console,
            removed,
        } = plan;
        // A hold waits for its lost master to come back; one that is no longer
        // configured never will: its clients are let go first (through the console they
        // were paused on).
        if let Some(h) = &self.hold
            && removed.contains(&self.nodes[h.lost].name)
        {
            let why = format!(
                "{} was removed from the configuration",
                self.nodes[h.lost].name
            );
            self.end_hold(&why, Ending::GiveUp).await;
        }

        // The nodes in the new file order; `moved[old index]` is the new one.
        let mut old: Vec<Option<Node>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        let mut moved: Vec<Option<NodeId>> = vec![None; old.len()];
        let mut nodes = Vec::with_capacity(new.servers.len());
        for (i, server) in new.servers.iter().enumerate() {
            let prev = old
                .iter()
                .position(|n| n.as_ref().is_some_and(|n| n.name == server.name));
            let same_server = prev.is_some_and(|p| self.cfg.servers[p].conninfo == server.conninfo);
            let node = match prev.and_then(|p| old[p].take().map(|n| (p, n))) {
                Some((p, n)) if same_server && !restart_all => {
                    moved[p] = Some(i);
                    n
                }
                Some((p, n)) if same_server => {
                    // The same server with new monitor settings: what it was stays known
                    // until the new monitor says otherwise.
                    moved[p] = Some(i);
                    let key = self.next_key;
                    self.next_key += 1;
                    Node {
                        key,
                        requests: (self.spawn)(key, server, &new),
                        busy: false,
                        hung: false,
                        next_try: Instant::now(),
                        ..n
                    }
                }
                other => {
                    if let Some((p, _dropped)) = other {
                        moved[p] = Some(i);
                    }
                    let key = self.next_key;
                    self.next_key += 1;
                    Node::new(server.name.clone(), key, (self.spawn)(key, server, &new))
                }
            };
            nodes.push(node);
        }
        // Dropping the removed nodes drops their request channels: their monitors end
        // and close their kept connections.
        drop(old);
        self.nodes = nodes;

        let remap = |id: NodeId| moved.get(id).copied().flatten();
        let active_removed = self.believed.active.is_some_and(|a| remap(a).is_none());
        self.believed.active = self.believed.active.and_then(remap);
        self.memory.contested = self
            .memory
            .contested
            .iter()
            .filter_map(|c| remap(*c))
            .collect();
        self.memory.unheard_link = self.memory.unheard_link.and_then(remap);
        self.last_switch_to = self.last_switch_to.and_then(remap);
        if let Some(h) = &mut self.hold {
            // Not removed: that hold ended above.
            h.lost = remap(h.lost).unwrap_or(h.lost);
        }
        // Its node ids are the old ones; the next round decides again.
        self.last_decision = None;

        if new_console || restart_all {
            self.console = self.console.reconfigured(&new.pgbouncer, new.timeout);
            // Routes are checked through the new console at the next round.
            self.watch_session = None;
            self.rounds_since_drift_check = DRIFT_CHECK_ROUNDS;
        }
        let pause_changed = new.pause_on_failover != self.cfg.pause_on_failover
            || new.pause_timeout != self.cfg.pause_timeout;
        let file = new.file.display().to_string();
        for w in new
            .warnings
            .iter()
            .filter(|w| !self.cfg.warnings.contains(w))
        {
            warn!("{w}");
        }
        self.cfg = new;
        if let Some(h) = &mut self.hold {
            // A pause under way is measured against the new limit from when it began:
            // an operator who shortens pause_timeout during an outage means now.
            h.deadline = h.started + self.cfg.pause_timeout;
        }
        if active_removed {
            // The switch goes through the normal, confirmed path at the next round.
            self.believed = Believed {
                active: self.node_behind_symlink(),
                confirmed: false,
            };
        }

        let summary = if changes.is_empty() {
            "no changes".to_string()
        } else {
            changes.join("; ")
        };
        let text = format!("configuration reloaded from {file}: {summary}");
        info!("{text}");
        if active_removed {
            warn!(
                "the active node was removed from the configuration; PgBouncer's symlink points at {}, the next round switches to the master",
                self.active_name()
            );
        }
        let kept_text = (!not_applied.is_empty()).then(|| {
            format!(
                "configuration reload: NOT applied, needs a restart: {}",
                not_applied.join("; ")
            )
        });
        if let Some(t) = &kept_text {
            warn!("{t}");
        }
        let warnings = self.cfg.warnings.clone();
        let interval = self.cfg.interval;
        let endpoint = self.cfg.pgbouncer.endpoint.clone();
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let any_change = !changes.is_empty();
        self.status.send_modify(|s| {
            let mut old = std::mem::take(&mut s.nodes);
            s.nodes = names
                .iter()
                .map(|name| match old.iter().position(|n| n.name == *name) {
                    // Its counters go on (monotonic series per node name).
                    Some(p) => old.swap_remove(p),
                    None => NodeStatus::new(name),
                })
                .collect();
            s.interval = interval;
            s.pgbouncer = endpoint;
            s.config_warnings = warnings;
            s.counters.reloads_ok += 1;
            let at = SystemTime::now();
            s.reload = Some(ReloadStatus {
                at,
                error: None,
                changes,
                not_applied,
            });
            s.events.push(at, Kind::ConfigReload, None, text);
            if let Some(t) = kept_text {
                s.events.push(at, Kind::ConfigReload, None, t);
            }
        });
        self.publish();
        if pause_changed {
            self.check_pause_settings().await;
        }
        any_change
    }

    fn publish(&self) {
        let active = self.believed.active.map(|n| self.nodes[n].name.clone());
        let (stale, refusal) = match &self.last_decision {
            Some(d) => (
                d.stale
                    .iter()
                    .map(|s| StaleStatus {
                        name: self.nodes[s.node].name.clone(),
                        timeline: s.timeline,
                        highest: s.highest,
                        standby: s.standby.map(|b| self.nodes[b].name.clone()),
                    })
                    .collect(),
                d.refusal.as_ref().map(|r| self.refusal_text(r)),
            ),
            None => (Vec::new(), None),
        };
        let now = Instant::now();
        self.status.send_modify(|s| {
            for (dst, src) in s.nodes.iter_mut().zip(&self.nodes) {
                dst.state = src.state;
                dst.last_check = src.last_check;
                dst.since = src.since;
                dst.error = src.error.clone();
                dst.took = src.took;
                dst.timeline = src.timeline.map(|t| t.timeline);
                dst.timeline_note = src.timeline_note.clone();
                dst.refuses_new = src.refuses_new.clone();
                dst.next_try = (src.failures > 1 && src.next_try > now)
                    .then(|| src.next_try.duration_since(now));
            }
            s.last_round = self.last_round;
            s.active = active;
            s.confirmed = self.believed.confirmed;
            s.last_switch = self.last_switch;
            s.switch_failure = self.switch_failure.clone();
            s.stale = stale;
            s.refusal = refusal;
            s.drift = self.drift.clone();
            s.paused = self.paused.clone();
            s.held = self.state.state().held.clone();
            s.unreset = self.state.state().unreset.clone();
            s.hold = match &self.hold {
                Some(h) => Some(HoldStatus {
                    databases: h.databases.clone(),
                    lost: self.nodes[h.lost].name.clone(),
                    since: h.since,
                    timeout: self.cfg.pause_timeout,
                    ended: None,
                }),
                // A hold whose RESUME keeps failing still holds clients: shown as lasting,
                // so /nagios turns CRITICAL once it outlasts pause_timeout.
                None => self.last_hold.clone().map(|mut h| {
                    let stuck = h.databases.iter().any(|d| s.held.contains(d));
                    if stuck
                        && h.ended
                            .as_ref()
                            .is_some_and(|e| e.1.contains("RESUME failed"))
                    {
                        h.ended = None;
                    }
                    h
                }),
            };
            s.state_file = self.state.path().display().to_string();
            s.state_error = self.state.write_error().map(str::to_string);
        });
    }
}

/// A reload validated against the running configuration, not applied yet.
struct ReloadPlan {
    new: Config,
    changes: Vec<String>,
    not_applied: Vec<String>,
    restart_all: bool,
    new_console: bool,
    removed: Vec<String>,
}

async fn next_reload(reloads: &mut Option<mpsc::UnboundedReceiver<Reload>>) -> Option<Reload> {
    match reloads {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

fn on_timeline(t: Option<Timeline>) -> String {
    t.map(|t| format!(" on timeline {}", t.timeline))
        .unwrap_or_default()
}

/// One server's monitor: checks when asked, reports back. Runs until the daemon drops its
/// request channel.
async fn run_monitor<P: Probe>(
    key: MonitorKey,
    mut probe: P,
    mut requests: mpsc::UnboundedReceiver<Request>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut last_fresh = Instant::now();
    while let Some(req) = requests.recv().await {
        let due = last_fresh.elapsed() >= FRESH_CHECK_EVERY;
        let started = Instant::now();
        let mut obs = probe.check().await;
        if probe.keeps_connections()
            && (req == Request::Fresh || due)
            && obs.state != NodeState::Down
        {
            last_fresh = Instant::now();
            let fresh = probe.check_fresh().await;
            obs.fresh = Some(match fresh.state {
                NodeState::Down => Err(fresh
                    .error
                    .unwrap_or_else(|| "new connection failed".to_string())),
                _ => Ok(()),
            });
        }
        let took = started.elapsed();
        if reports.send(Report { key, obs, took }).is_err() {
            break;
        }
    }
}

/// The loop over time, on a fake cluster and a fake PgBouncer, on tokio's paused clock:
/// every rule of the loop (rounds, back-off, re-checks, drift, the state file at start)
/// is exercised here without a process; the integration tests cover the real I/O.
#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::time::sleep;

    use super::*;
    use crate::conninfo::Env;
    use crate::fake_bouncer::FakeBouncer;
    use crate::state::State;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Is {
        Master(u32),
        Standby(u32),
        /// Refuses connections at once.
        Down,
        /// Accepts, never answers.
        Hung,
    }

    #[derive(Debug)]
    struct Server {
        is: Is,
        /// New connections are refused (pg_hba.conf, too many clients), kept ones live on.
        refuses_new: bool,
        /// Connection attempts (a fork and a log line each on a real server).
        attempts: usize,
        /// Bumped to close kept sessions (a restart).
        generation: u64,
        /// Probes alive for it (monitors running).
        probes: usize,
    }

    type Shared = Arc<Mutex<Server>>;

    struct FakeProbe {
        server: Shared,
        connected: Option<u64>,
        timeout: Duration,
    }

    impl FakeProbe {
        fn answer(is: Is) -> Observation {
            let on = |t| {
                Some(Timeline {
                    timeline: t,
                    system: Some(42),
                })
            };
            match is {
                Is::Master(t) => Observation::up(NodeState::Master, on(t)),
                Is::Standby(t) => Observation::up(NodeState::Standby, on(t)),
                Is::Down | Is::Hung => unreachable!(),
            }
        }
        async fn connect(&mut self) -> Result<Is, Observation> {
            let (is, refused) = {
                let mut s = self.server.lock().unwrap();
                s.attempts += 1;
                (s.is, s.refuses_new)
            };
            match is {
                Is::Hung => {
                    sleep(self.timeout).await;
                    Err(Observation::hung("no answer (timeout)".into()))
                }
                Is::Down => Err(Observation::down("connection refused".into())),
                _ if refused => Err(Observation::down("pg_hba.conf rejects connection".into())),
                is => Ok(is),
            }
        }
    }

    impl Drop for FakeProbe {
        fn drop(&mut self) {
            self.server.lock().unwrap().probes -= 1;
        }
    }

    impl Probe for FakeProbe {
        async fn check(&mut self) -> Observation {
            let (is, generation) = {
                let s = self.server.lock().unwrap();
                (s.is, s.generation)
            };
            if self.connected == Some(generation) {
                match is {
                    Is::Hung => {
                        sleep(self.timeout).await;
                        self.connected = None;
                        return Observation::hung("no answer (timeout)".into());
                    }
                    Is::Down => self.connected = None,
                    is => return FakeProbe::answer(is),
                }
            }
            match self.connect().await {
                Ok(is) => {
                    self.connected = Some(generation);
                    FakeProbe::answer(is)
                }
                Err(obs) => {
                    self.connected = None;
                    obs
                }
            }
        }
        async fn check_fresh(&mut self) -> Observation {
            match self.connect().await {
                Ok(is) => FakeProbe::answer(is),
                Err(obs) => obs,
            }
        }
        fn keeps_connections(&self) -> bool {
            true
        }
    }

    struct World {
        _dir: tempfile::TempDir,
        root: std::path::PathBuf,
        servers: Vec<Shared>,
        /// Every fake server by name, as the probe factory finds them (a reload may add
        /// one: [`World::add_server`]).
        cluster: Arc<Mutex<Vec<(String, Shared)>>>,
        /// The names probes were made for, in order (one per monitor started).
        made: Arc<Mutex<Vec<String>>>,
        bouncer: FakeBouncer,
        status: watch::Receiver<Snapshot>,
        stop: watch::Sender<bool>,
        reloads: mpsc::UnboundedSender<Reload>,
        task: tokio::task::JoinHandle<()>,
    }

    const PORT: u16 = 5430;

    /// A cluster of servers in the given states, a PgBouncer whose symlink points at
    /// `linked`'s file, and the daemon running with `interval` 2 s and `timeout` 2 s.
    async fn world(start: &[Is], linked: usize, state: State) -> World {
        world_with(start, linked, state, "").await
    }

    fn new_server(is: Is) -> Shared {
        Arc::new(Mutex::new(Server {
            is,
            refuses_new: false,
            attempts: 0,
            generation: 0,
            probes: 0,
        }))
    }

    /// `pg<i>`'s node file and its line in `[servers]`.
    fn node_file_and_line(root: &std::path::Path, i: usize) -> String {
        std::fs::write(
            root.join(format!("nodes/pg{i}.ini")),
            format!(
                "[databases]\nappdb = host=127.0.0.1 port={} dbname=appdb\n[pgbouncer]\nlisten_port = 6432\n",
                PORT + i as u16
            ),
        )
        .unwrap();
        format!(
            "pg{i}=host=127.0.0.1 port={} dbname=postgres user=postgres sslmode=disable\n",
            PORT + i as u16
        )
    }

    /// The text of rebouncer.ini with these `[global]` lines and `[servers]` lines.
    fn ini_text(root: &std::path::Path, global: &str, servers_ini: &str) -> String {
        format!(
            "[global]\npgbouncer=host=127.0.0.1 port=6432 dbname=pgbouncer user=pgbouncer sslmode=disable\n\
             symlink={0}/pgbouncer.ini\nconfigdir={0}/nodes\ninterval=2\ntimeout=2\nstate_file={0}/rebouncer.state\n{global}\
             [servers]\n{servers_ini}",
            root.display()
        )
    }

    fn test_env() -> Env {
        Env {
            os_user: Some("postgres".into()),
            ..Env::default()
        }
    }

    /// [`world`] with more `[global]` lines.
    async fn world_with(start: &[Is], linked: usize, state: State, global: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("nodes")).unwrap();
        let mut servers_ini = String::new();
        for i in 1..=start.len() {
            servers_ini += &node_file_and_line(&root, i);
        }
        std::os::unix::fs::symlink(
            root.join(format!("nodes/pg{linked}.ini")),
            root.join("pgbouncer.ini"),
        )
        .unwrap();
        std::fs::write(
            root.join("rebouncer.ini"),
            ini_text(&root, global, &servers_ini),
        )
        .unwrap();
        let cfg = config::load(&root.join("rebouncer.ini"), &root, &test_env()).unwrap();
        let mut file = StateFile::load(&cfg.state_file).unwrap();
        file.update(|s| *s = state).await.unwrap();

        let bouncer = FakeBouncer::new(root.join("pgbouncer.ini"));
        let servers: Vec<Shared> = start.iter().map(|is| new_server(*is)).collect();
        let cluster = Arc::new(Mutex::new(
            servers
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("pg{}", i + 1), s.clone()))
                .collect::<Vec<_>>(),
        ));
        let made = Arc::new(Mutex::new(Vec::new()));
        let probes = {
            let cluster = cluster.clone();
            let made = made.clone();
            move |_key: MonitorKey, server: &config::Server, cfg: &Config| {
                let shared = cluster
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(n, _)| *n == server.name)
                    .map(|(_, s)| s.clone())
                    .expect("a fake server for every configured one");
                shared.lock().unwrap().probes += 1;
                made.lock().unwrap().push(server.name.clone());
                FakeProbe {
                    server: shared,
                    connected: None,
                    timeout: cfg.timeout,
                }
            }
        };
        let names: Vec<String> = cfg.servers.iter().map(|s| s.name.clone()).collect();
        let (status_tx, status) =
            watch::channel(Snapshot::new(&names, cfg.interval, "fake".into()));
        let (stop, stop_rx) = watch::channel(false);
        let (_lost_tx, lost) = mpsc::unbounded_channel();
        let (reloads, reload_rx) = mpsc::unbounded_channel();
        let daemon =
            Daemon::with_parts(cfg, bouncer.clone(), probes, lost, file, status_tx, stop_rx)
                .reloads(reload_rx);
        let task = tokio::spawn(async move {
            let _keep = _lost_tx;
            daemon.run().await
        });
        World {
            _dir: dir,
            root,
            servers,
            cluster,
            made,
            bouncer,
            status,
            stop,
            reloads,
            task,
        }
    }

    impl World {
        fn set(&self, node: usize, is: Is) {
            let mut s = self.servers[node - 1].lock().unwrap();
            if matches!(is, Is::Down) || matches!(s.is, Is::Down) {
                s.generation += 1;
            }
            s.is = is;
        }
        fn refuse_new(&self, node: usize, on: bool) {
            self.servers[node - 1].lock().unwrap().refuses_new = on;
        }
        fn attempts(&self, node: usize) -> usize {
            self.servers[node - 1].lock().unwrap().attempts
        }
        /// The node PgBouncer routes `appdb` to.
        fn routed(&self) -> Option<usize> {
            let port = self.bouncer.databases().first()?.route.port;
            Some((port - PORT) as usize)
        }
        fn snapshot(&self) -> Snapshot {
            self.status.borrow().clone()
        }
        fn nagios(&self) -> String {
            crate::status::render_nagios(&self.snapshot(), SystemTime::now())
        }
        /// Advance the paused clock in steps of 50 ms, checking `ok` at every step.
        async fn during(&self, d: Duration, mut ok: impl FnMut(&World) -> bool, what: &str) {
            let end = Instant::now() + d;
            while Instant::now() < end {
                sleep(Duration::from_millis(50)).await;
                assert!(
                    ok(self),
                    "{what}, at {:?}: {}",
                    end - Instant::now(),
                    self.nagios()
                );
            }
        }
        async fn until(&self, d: Duration, mut ok: impl FnMut(&World) -> bool, what: &str) {
            let end = Instant::now() + d;
            while !ok(self) {
                assert!(
                    Instant::now() < end,
                    "{what} not within {d:?}: {}",
                    self.nagios()
                );
                sleep(Duration::from_millis(50)).await;
            }
        }
        async fn stop(self) {
            self.stop.send(true).unwrap();
            self.task.await.unwrap();
        }
        /// A new fake server `pg<i>` with its node file; its line for `[servers]`.
        fn add_server(&self, i: usize, is: Is) -> String {
            self.cluster
                .lock()
                .unwrap()
                .push((format!("pg{i}"), new_server(is)));
            node_file_and_line(&self.root, i)
        }
        /// The `[servers]` lines of these existing servers (node files rewritten as made).
        fn lines(&self, ids: &[usize]) -> String {
            ids.iter()
                .map(|i| node_file_and_line(&self.root, *i))
                .collect()
        }
        fn server(&self, name: &str) -> Shared {
            let c = self.cluster.lock().unwrap();
            c.iter().find(|(n, _)| n == name).unwrap().1.clone()
        }
        /// Monitors running for the server.
        fn probes(&self, name: &str) -> usize {
            self.server(name).lock().unwrap().probes
        }
        /// Monitors ever started for the server.
        fn made(&self, name: &str) -> usize {
            self.made
                .lock()
                .unwrap()
                .iter()
                .filter(|n| *n == name)
                .count()
        }
        fn names(&self) -> Vec<String> {
            self.snapshot()
                .nodes
                .iter()
                .map(|n| n.name.clone())
                .collect()
        }
        /// Write rebouncer.ini, load it as SIGHUP does, hand it to the daemon and wait
        /// until it is applied or refused.
        async fn reload_text(&self, text: &str) {
            std::fs::write(self.root.join("rebouncer.ini"), text).unwrap();
            let config = config::load(&self.root.join("rebouncer.ini"), &self.root, &test_env());
            let (done, applied) = oneshot::channel();
            self.reloads
                .send(Reload {
                    config,
                    done: Some(done),
                })
                .unwrap_or_else(|_| panic!("daemon gone"));
            applied.await.unwrap();
        }
        async fn reload(&self, global: &str, servers_ini: &str) {
            self.reload_text(&ini_text(&self.root, global, servers_ini))
                .await;
        }
    }

    use Is::{Down, Hung, Master, Standby};
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[tokio::test(start_paused = true)]
    async fn a_promotion_is_followed_within_a_fast_round() {
        let w = world(&[Master(1), Standby(1), Standby(1)], 2, State::default()).await;
        w.until(S(1), |w| w.routed() == Some(1), "initial switch to pg1")
            .await;
        w.until(S(1), |w| w.nagios().starts_with("OK"), "settled")
            .await;
        w.set(1, Down);
        sleep(S(1)).await;
        w.set(2, Master(2));
        let promoted = Instant::now();
        w.until(S(3), |w| w.routed() == Some(2), "switch to pg2")
            .await;
        // Rounds come every `interval` (2 s) while settled, then fast once pg1 is gone.
        assert!(promoted.elapsed() <= S(2) + Duration::from_millis(200));
        assert_eq!(
            w.bouncer.paused(),
            Vec::<String>::new(),
            "KILL was followed by RESUME"
        );
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failover_is_counted_and_kept_in_the_event_history() {
        let w = world(&[Master(1), Standby(1)], 2, State::default()).await;
        w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
            .await;
        w.set(1, Down);
        w.set(2, Master(2));
        w.until(S(4), |w| w.routed() == Some(2), "failover to pg2")
            .await;
        let s = w.snapshot();
        let reason = |r: SwitchReason| {
            let i = SwitchReason::ALL.iter().position(|x| *x == r).unwrap();
            s.counters.switches[i]
        };
        assert_eq!(
            reason(SwitchReason::Failover),
            2,
            "pg2 at start, then pg1... {:?}",
            s.counters
        );
        assert!(s.counters.rounds >= 2);
        assert!(s.counters.last_switch.is_some());
        assert!(s.nodes[0].counters.failures >= 1);
        assert!(s.nodes[1].counters.last_success.is_some());
        let kinds: Vec<(Kind, Option<&str>)> = s
            .events
            .iter()
            .map(|e| (e.kind, e.node.as_deref()))
            .collect();
        let at = |k: (Kind, Option<&str>)| kinds.iter().position(|x| *x == k);
        let down = at((Kind::State, Some("pg1"))).unwrap();
        let switched = kinds
            .iter()
            .rposition(|x| *x == (Kind::Switch, Some("pg2")))
            .unwrap();
        assert!(down < switched, "{kinds:?}");
        let text = &s.events.iter().nth(switched).unwrap().text;
        assert!(
            text.starts_with("PgBouncer now points at pg2 (failover from pg1)"),
            "{text}"
        );
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_primary_is_never_switched_to_while_the_new_primary_hangs() {
        // Issue 8 case 1: pg1 fails over to pg2; pg1 comes back unchanged (timeline 1);
        // then pg2 hangs for 15 s.
        let w = world(&[Master(1), Standby(1), Standby(1)], 1, State::default()).await;
        w.until(S(2), |w| w.routed() == Some(1), "pg1").await;
        w.set(1, Down);
        w.set(2, Master(2));
        w.set(3, Standby(2));
        w.until(S(4), |w| w.routed() == Some(2), "failover to pg2")
            .await;
        w.set(1, Master(1));
        w.until(
            S(4),
            |w| !w.snapshot().stale.is_empty(),
            "pg1 seen as stale",
        )
        .await;
        assert!(
            w.nagios()
                .starts_with("CRITICAL: stale primary pg1 (timeline 1, the cluster is on 2)"),
            "{}",
            w.nagios()
        );
        w.set(2, Hung);
        w.during(
            S(15),
            |w| w.routed() == Some(2),
            "PgBouncer must stay off the stale pg1",
        )
        .await;
        assert!(w.nagios().contains("stale primary pg1"), "{}", w.nagios());
        w.set(2, Master(2));
        w.during(S(5), |w| w.routed() == Some(2), "and after pg2 recovers")
            .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_remembered_timeline_protects_after_a_restart() {
        // The daemon restarts while pg2 (timeline 2) is down and the old pg1 is back:
        // only the state file knows that pg1 is behind.
        let mut state = State::default();
        state.raise(Some(42), 2);
        let w = world(&[Master(1), Down, Standby(1)], 2, state).await;
        w.during(
            S(10),
            |w| w.routed() == Some(2),
            "no switch to the stale pg1",
        )
        .await;
        assert_eq!(w.snapshot().stale.len(), 1);
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_split_brain_master_refusing_new_logins_does_not_make_the_other_a_target() {
        // Issue 8 case 2 without timelines to help: both masters on timeline 2; pg2, the
        // true primary PgBouncer is on, refuses new logins. Nothing may move.
        let w = world(&[Standby(2), Master(2), Standby(2)], 2, State::default()).await;
        w.until(S(2), |w| w.routed() == Some(2), "pg2").await;
        w.set(1, Master(2));
        w.until(
            S(3),
            |w| w.nagios().starts_with("CRITICAL: split brain"),
            "split brain",
        )
        .await;
        w.refuse_new(2, true);
        w.during(
            S(20),
            |w| w.routed() == Some(2),
            "PgBouncer must stay on pg2",
        )
        .await;
        // pg2 then stops answering altogether: pg1 alone is still not evidence.
        w.set(2, Down);
        w.during(S(10), |w| w.routed() == Some(2), "still on pg2")
            .await;
        assert!(
            w.nagios().contains("split brain not resolved"),
            "{}",
            w.nagios()
        );
        // pg2 comes back as a standby (demoted): now pg1 is the primary.
        w.refuse_new(2, false);
        w.set(2, Standby(2));
        w.until(S(3), |w| w.routed() == Some(1), "pg1 once pg2 is demoted")
            .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusing_server_is_asked_less_and_less_often() {
        // Issue 8 case 7: no master for 20 s and a standby whose pg_hba.conf rejects the
        // monitoring login. Fast rounds (0.1 s) would try it 200 times.
        let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
        w.until(S(2), |w| w.routed() == Some(1), "pg1").await;
        w.set(1, Down);
        w.set(2, Standby(1));
        w.refuse_new(2, true);
        w.set(2, Down); // closes the kept session; Down now, refusing afterwards
        w.set(2, Standby(1));
        let before = w.attempts(2);
        sleep(S(20)).await;
        let attempts = w.attempts(2) - before;
        // 0.1, 0.2, 0.4, 0.8, 1.6, then every 2 s (interval): about 14 in 20 s.
        assert!((8..=20).contains(&attempts), "{attempts} attempts in 20 s");
        // Something else changes (a promotion elsewhere would): it is asked at once again.
        w.refuse_new(2, false);
        w.set(1, Standby(1));
        w.until(
            S(3),
            |w| w.snapshot().nodes[1].state == Some(NodeState::Standby),
            "pg2 re-checked",
        )
        .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_symlink_changed_by_hand_is_switched_back() {
        // Issue 8 case 3.
        let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
        w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
            .await;
        crate::switch::replace_symlink(
            &w.root.join("pgbouncer.ini"),
            &w.root.join("nodes/pg2.ini"),
        )
        .unwrap();
        w.bouncer
            .session()
            .await
            .unwrap()
            .command("RELOAD")
            .await
            .unwrap();
        assert_eq!(w.routed(), Some(2));
        w.until(S(3), |w| w.routed() == Some(1), "back on pg1")
            .await;
        w.until(S(1), |w| w.snapshot().drift.is_none(), "drift cleared")
            .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn routes_changed_behind_the_symlink_are_found_after_a_pgbouncer_restart() {
        let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
        w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
            .await;
        sleep(S(1)).await;
        // PgBouncer restarts on pg2's config (started by hand with another file, say);
        // the symlink itself still points at pg1's.
        let link = w.root.join("pgbouncer.ini");
        crate::switch::replace_symlink(&link, &w.root.join("nodes/pg2.ini")).unwrap();
        w.bouncer.restart();
        crate::switch::replace_symlink(&link, &w.root.join("nodes/pg1.ini")).unwrap();
        assert_eq!(w.routed(), Some(2));
        // Found at the next round (every 2 s here) because the admin session closed, not
        // only at the periodic comparison (every 3 rounds), and switched back.
        w.until(
            Duration::from_millis(2500),
            |w| w.routed() == Some(1),
            "back on pg1 after the restart",
        )
        .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn databases_a_killed_rebouncer_left_paused_are_resumed_at_start_and_no_others() {
        let state = State {
            held: vec!["appdb".into()],
            ..State::default()
        };
        let w = world(&[Master(1), Standby(1)], 1, state).await;
        // What a SIGKILL between KILL and RESUME leaves behind.
        w.bouncer.pause_by_hand("appdb");
        w.until(S(2), |w| w.bouncer.paused().is_empty(), "appdb resumed")
            .await;
        let file = StateFile::load(&w.root.join("rebouncer.state")).unwrap();
        assert!(file.state().held.is_empty(), "{:?}", file.state());
        // An operator's own pause is left alone, and shown.
        w.bouncer.pause_by_hand("appdb");
        w.until(S(10), |w| !w.snapshot().paused.is_empty(), "pause shown")
            .await;
        assert!(
            w.nagios()
                .starts_with("WARNING: database(s) appdb paused in PgBouncer (not by rebouncer"),
            "{}",
            w.nagios()
        );
        sleep(S(10)).await;
        assert_eq!(w.bouncer.paused(), vec!["appdb".to_string()]);
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn databases_a_killed_rebouncer_moved_but_did_not_kill_are_killed_at_start() {
        // What a SIGKILL between a switch's RELOAD and its KILL leaves behind: PgBouncer
        // already routes to the new master, but session clients may still be on the old
        // server. The next rebouncer KILLs (and RESUMEs) them once, and only them.
        let state = State {
            held: vec!["appdb".into()],
            unreset: vec!["appdb".into()],
            ..State::default()
        };
        let w = world(&[Master(1), Standby(1)], 1, state).await;
        w.until(
            S(2),
            |w| w.bouncer.count("KILL appdb") == 1 && w.bouncer.paused().is_empty(),
            "appdb killed and resumed at start",
        )
        .await;
        let log = w.bouncer.log();
        let k = log.iter().position(|c| c == "KILL appdb").unwrap();
        assert_eq!(log[k + 1], "RESUME appdb", "{log:?}");
        let file = StateFile::load(&w.root.join("rebouncer.state")).unwrap();
        assert!(file.state().unreset.is_empty(), "{:?}", file.state());
        assert!(file.state().held.is_empty(), "{:?}", file.state());
        sleep(S(10)).await;
        assert_eq!(w.bouncer.count("KILL"), 1, "{:?}", w.bouncer.log());
        assert!(w.nagios().starts_with("OK"), "{}", w.nagios());
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_kill_that_fails_is_shown_kept_on_disk_and_retried_until_it_works() {
        let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
        w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
            .await;
        w.bouncer.fail("KILL", Some("permission denied"));
        w.set(1, Down);
        w.set(2, Master(2));
        w.until(S(3), |w| w.routed() == Some(2), "switched to pg2")
            .await;
        w.until(
            S(3),
            |w| {
                w.nagios()
                    .starts_with("WARNING: database(s) appdb moved to pg2 but KILL failing")
            },
            "the failed KILL on /nagios",
        )
        .await;
        let file = || {
            StateFile::load(&w.root.join("rebouncer.state"))
                .unwrap()
                .state()
                .clone()
        };
        assert_eq!(
            file().unreset,
            ["appdb"],
            "a restarted rebouncer would KILL it"
        );
        let tries = w.bouncer.count("KILL");
        sleep(S(5)).await;
        assert!(w.bouncer.count("KILL") > tries, "retried every round");
        w.bouncer.fail("KILL", None);
        w.until(
            S(5),
            |w| !w.nagios().contains("KILL failing"),
            "the KILL through, /nagios back to the cluster's state",
        )
        .await;
        assert!(file().unreset.is_empty(), "{:?}", file());
        assert!(w.bouncer.paused().is_empty());
        w.stop().await;
    }

    const PAUSING: &str = "pause_on_failover=on\npause_timeout=10\n";

    #[tokio::test(start_paused = true)]
    async fn a_kill_still_failing_does_not_end_a_pause() {
        let w = world_with(
            &[Master(1), Standby(1), Standby(1)],
            1,
            State::default(),
            PAUSING,
        )
        .await;
        w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
            .await;
        w.bouncer.fail("KILL", Some("permission denied"));
        w.set(1, Down);
        w.set(2, Master(2));
        w.set(3, Standby(2));
        w.until(
            S(3),
            |w| w.routed() == Some(2) && w.nagios().contains("KILL failing"),
            "switched to pg2 with its KILL failing",
        )
        .await;
        // pg2 is lost in turn: clients are held, and the failing KILL's retry must not
        // RESUME them.
        w.set(2, Down);
        w.until(S(3), |w| w.bouncer.paused() == ["appdb"], "appdb paused")
            .await;
        w.during(
            S(4),
            |w| w.bouncer.paused() == ["appdb"],
            "held while there is no master",
        )
        .await;
        w.bouncer.fail("KILL", None);
        w.set(3, Master(3));
        w.until(
            S(3),
            |w| w.routed() == Some(3) && w.bouncer.paused().is_empty(),
            "switched to pg3 and resumed",
        )
        .await;
        w.until(
            S(5),
            |w| !w.nagios().contains("KILL failing"),
            "the old KILL through once the pause is over",
        )
        .await;
        w.stop().await;
    }

    fn held_in_file(w: &World) -> Vec<String> {
        StateFile::load(&w.root.join("rebouncer.state"))
            .unwrap()
            .state()
            .held
            .clone()
    }

    fn last_hold_outcome(w: &World) -> Option<String> {
        w.snapshot()
            .hold
            .and_then(|h| h.ended)
            .map(|(_, outcome, _)| outcome)
    }

    /// Settled on pg1 with pausing on, then pg1 goes down: PgBouncer is paused.
    async fn paused_after_pg1_is_lost(w: &World) {
        w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
            .await;
        w.bouncer.watch_file(w.root.join("rebouncer.state"));
        w.set(1, Down);
        w.until(
            S(2),
            |w| w.bouncer.paused() == ["appdb"],
            "appdb paused once pg1 is down",
        )
        .await;
        assert_eq!(held_in_file(w), ["appdb"], "recorded before PAUSE");
        assert_eq!(
            w.bouncer
                .file_at("PAUSE")
                .as_deref()
                .map(|f| f.contains("held appdb")),
            Some(true),
            "the state file listed appdb when PAUSE arrived"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn clients_are_held_while_there_is_no_master_and_released_by_the_switch() {
        let w = world_with(
            &[Master(1), Standby(1), Standby(1)],
            1,
            State::default(),
            PAUSING,
        )
        .await;
        paused_after_pg1_is_lost(&w).await;
        assert!(
            w.nagios()
                .starts_with("WARNING: database(s) appdb paused by rebouncer for 0 s"),
            "{}",
            w.nagios()
        );
        // The HA manager takes 3 s to promote: clients keep waiting, nothing moves.
        w.during(
            S(3),
            |w| w.bouncer.paused() == ["appdb"] && w.routed() == Some(1),
            "held on pg1's config while there is no master",
        )
        .await;
        w.set(2, Master(2));
        w.set(3, Standby(2));
        w.until(
            S(1),
            |w| w.routed() == Some(2) && w.bouncer.paused().is_empty(),
            "switched to pg2 and resumed",
        )
        .await;
        // The waiting clients are what the pause was for: KILL would drop them.
        assert_eq!(w.bouncer.count("KILL"), 0, "{:?}", w.bouncer.log());
        assert!(held_in_file(&w).is_empty());
        assert_eq!(last_hold_outcome(&w).as_deref(), Some("switched to pg2"));
        assert!(
            w.nagios()
                .starts_with("WARNING: 1 server down (pg1); 1 master (pg2)"),
            "{}",
            w.nagios()
        );
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_that_shortens_pause_timeout_applies_to_the_pause_under_way() {
        let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
        paused_after_pg1_is_lost(&w).await;
        w.reload("pause_on_failover=on\npause_timeout=3\n", &w.lines(&[1, 2]))
            .await;
        w.until(
            S(4),
            |w| w.bouncer.paused().is_empty(),
            "released at the new pause_timeout, not the old 10 s",
        )
        .await;
        assert!(
            last_hold_outcome(&w).is_some_and(|o| o.contains("pause_timeout (3 s)")),
            "{:?}",
            last_hold_outcome(&w)
        );
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_master_within_pause_timeout_clients_are_released_to_their_errors() {
        let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
        paused_after_pg1_is_lost(&w).await;
        let paused = Instant::now();
        w.until(S(11), |w| w.bouncer.paused().is_empty(), "resumed")
            .await;
        let held = paused.elapsed();
        assert!(
            held >= Duration::from_millis(9800) && held <= Duration::from_millis(10300),
            "held {held:?}"
        );
        assert_eq!(w.routed(), Some(1));
        assert!(held_in_file(&w).is_empty());
        assert!(
            last_hold_outcome(&w)
                .is_some_and(|o| o.contains("no master appeared within pause_timeout (10 s)")),
            "{:?}",
            w.snapshot().hold
        );
        assert!(
            w.nagios().starts_with("CRITICAL: no master"),
            "{}",
            w.nagios()
        );
        // The same loss is not paused for again.
        w.during(S(5), |w| w.bouncer.paused().is_empty(), "no second pause")
            .await;
        assert_eq!(w.bouncer.count("PAUSE"), 1);
        // A promotion later is still followed.
        w.set(2, Master(2));
        w.until(S(3), |w| w.routed() == Some(2), "pg2").await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_split_brain_while_paused_releases_the_clients_without_a_switch() {
        let w = world_with(
            &[Master(1), Standby(1), Standby(1)],
            1,
            State::default(),
            PAUSING,
        )
        .await;
        paused_after_pg1_is_lost(&w).await;
        w.set(2, Master(2));
        w.set(3, Master(2));
        w.until(S(1), |w| w.bouncer.paused().is_empty(), "resumed")
            .await;
        assert_eq!(w.routed(), Some(1));
        assert!(
            last_hold_outcome(&w).is_some_and(|o| o.contains("split brain (pg2, pg3)")),
            "{:?}",
            w.snapshot().hold
        );
        w.during(S(5), |w| w.routed() == Some(1), "no switch in split brain")
            .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_stale_primary_while_paused_releases_the_clients_without_a_switch() {
        let mut state = State::default();
        state.raise(Some(42), 2);
        let w = world_with(&[Master(2), Standby(2), Standby(2)], 1, state, PAUSING).await;
        paused_after_pg1_is_lost(&w).await;
        // An old primary, restored from a backup on timeline 1, starts as a master.
        w.set(3, Master(1));
        w.until(S(2), |w| w.bouncer.paused().is_empty(), "resumed")
            .await;
        assert_eq!(w.routed(), Some(1));
        assert!(
            last_hold_outcome(&w).is_some_and(|o| o.contains("only a stale primary (pg3)")),
            "{:?}",
            w.snapshot().hold
        );
        w.during(S(5), |w| w.routed() == Some(1), "never to the stale pg3")
            .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_master_that_comes_back_ends_the_pause_without_a_switch() {
        let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
        paused_after_pg1_is_lost(&w).await;
        w.set(1, Master(1));
        w.until(S(1), |w| w.bouncer.paused().is_empty(), "resumed")
            .await;
        assert_eq!(w.routed(), Some(1));
        assert!(
            last_hold_outcome(&w).is_some_and(|o| o.contains("pg1 answers as master again")),
            "{:?}",
            w.snapshot().hold
        );
        // A second loss pauses again.
        w.set(1, Down);
        w.until(S(2), |w| w.bouncer.paused() == ["appdb"], "paused again")
            .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_that_hangs_is_given_up_and_resumed() {
        let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
        w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
            .await;
        // A real PAUSE waits for running transactions; this one never completes.
        w.bouncer.hang("PAUSE", true);
        w.set(1, Down);
        w.until(S(2), |w| w.bouncer.count("PAUSE") == 1, "PAUSE sent")
            .await;
        let sent = Instant::now();
        w.until(S(3), |w| w.bouncer.paused().is_empty(), "resumed")
            .await;
        assert!(
            sent.elapsed() <= Duration::from_millis(2100),
            "{:?}",
            sent.elapsed()
        );
        assert!(held_in_file(&w).is_empty());
        // Going on without a pause: the promotion is followed as before.
        w.bouncer.hang("PAUSE", false);
        w.set(2, Master(2));
        w.until(S(3), |w| w.routed() == Some(2), "pg2").await;
        assert_eq!(w.bouncer.count("PAUSE"), 1);
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutting_down_while_paused_resumes_first() {
        let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
        paused_after_pg1_is_lost(&w).await;
        let bouncer = w.bouncer.clone();
        let root = w.root.clone();
        let dir = w.root.clone();
        w.stop().await;
        assert!(bouncer.paused().is_empty(), "{:?}", bouncer.log());
        let file = StateFile::load(&root.join("rebouncer.state")).unwrap();
        assert!(
            file.state().held.is_empty(),
            "{:?} in {}",
            file.state(),
            dir.display()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_resume_that_fails_at_the_end_of_a_pause_is_retried_every_round() {
        let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
        paused_after_pg1_is_lost(&w).await;
        // The admin console breaks just as the hold ends.
        w.bouncer.fail_after("RESUME", "connection closed", 0, 4);
        w.set(1, Master(1));
        w.until(
            S(5),
            |w| w.bouncer.paused().is_empty(),
            "resumed in the end",
        )
        .await;
        assert!(held_in_file(&w).is_empty());
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn clients_still_held_after_pause_timeout_because_resume_fails_are_critical() {
        let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
        paused_after_pg1_is_lost(&w).await;
        w.bouncer.fail("RESUME", Some("connection closed"));
        w.set(2, Master(2));
        w.until(S(2), |w| w.routed() == Some(2), "switched to pg2")
            .await;
        assert_eq!(w.bouncer.paused(), ["appdb"]);
        assert!(
            w.nagios()
                .starts_with("WARNING: database(s) appdb paused by rebouncer"),
            "{}",
            w.nagios()
        );
        // The status pages run on the wall clock, which the paused test clock does not move.
        let later = crate::status::render_nagios(&w.snapshot(), SystemTime::now() + S(11));
        assert!(
            later.starts_with("CRITICAL: database(s) appdb paused by rebouncer for 11 s"),
            "{later}"
        );
        w.bouncer.fail("RESUME", None);
        w.until(
            S(3),
            |w| w.bouncer.paused().is_empty(),
            "resumed in the end",
        )
        .await;
        w.until(
            S(1),
            |w| !w.nagios().contains("paused by rebouncer"),
            "no longer shown as paused",
        )
        .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn no_pause_without_a_record_of_it_in_the_state_file() {
        let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
        w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
            .await;
        // The state file cannot be replaced any more (here: a directory took its name).
        let file = w.root.join("rebouncer.state");
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        w.set(1, Down);
        sleep(S(3)).await;
        assert_eq!(w.bouncer.count("PAUSE"), 0, "{:?}", w.bouncer.log());
        w.set(2, Master(2));
        w.until(S(3), |w| w.routed() == Some(2), "pg2 as without pausing")
            .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn with_pausing_off_nothing_is_ever_paused() {
        let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
        w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
            .await;
        w.set(1, Down);
        sleep(S(5)).await;
        w.set(2, Master(2));
        w.until(S(3), |w| w.routed() == Some(2), "pg2").await;
        assert_eq!(w.bouncer.count("PAUSE"), 0, "{:?}", w.bouncer.log());
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_file_that_cannot_be_written_is_a_warning_not_a_stop() {
        let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
        w.until(S(3), |w| w.nagios().starts_with("OK"), "settled")
            .await;
        // A directory now stands where the file was: the next timeline change cannot be
        // written, and rebouncer goes on with it in memory.
        let path = w.root.join("rebouncer.state");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), "").unwrap();
        w.set(1, Down);
        w.set(2, Master(2));
        w.until(
            S(4),
            |w| w.routed() == Some(2),
            "failover followed all the same",
        )
        .await;
        w.until(
            S(1),
            |w| w.snapshot().state_error.is_some(),
            "write error shown",
        )
        .await;
        let root = crate::status::render_root(&w.snapshot(), SystemTime::now());
        assert!(
            root.contains("State file: cannot write state file"),
            "{root}"
        );
        w.stop().await;
    }

    // Configuration reloads (SIGHUP).

    async fn settled_on_pg1(w: &World) {
        w.until(S(3), |w| w.routed() == Some(1), "pg1").await;
        w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_adds_and_removes_servers_and_keeps_the_active_node_and_other_monitors() {
        let w = world(&[Master(1), Standby(1), Standby(1)], 1, State::default()).await;
        settled_on_pg1(&w).await;
        let reloads_before = w.bouncer.count("RELOAD");
        let switches_before = w.snapshot().counters.switches;
        let pg4 = w.add_server(4, Standby(1));
        w.reload("", &(w.lines(&[1, 2]) + &pg4)).await;
        assert_eq!(w.names(), ["pg1", "pg2", "pg4"]);
        assert_eq!(
            w.probes("pg3"),
            0,
            "pg3's monitor stopped, its connection closed"
        );
        assert_eq!((w.made("pg1"), w.made("pg2")), (1, 1), "kept monitors");
        assert_eq!((w.made("pg4"), w.probes("pg4")), (1, 1));
        w.until(
            S(1),
            |w| w.snapshot().nodes[2].state == Some(NodeState::Standby),
            "pg4 checked",
        )
        .await;
        let s = w.snapshot();
        assert_eq!((s.active.as_deref(), s.confirmed), (Some("pg1"), true));
        assert_eq!(s.counters.reloads_ok, 1);
        assert_eq!(s.counters.switches, switches_before, "no switch");
        assert_eq!(
            w.bouncer.count("RELOAD"),
            reloads_before,
            "PgBouncer untouched"
        );
        let r = s.reload.clone().unwrap();
        assert_eq!(r.error, None);
        assert_eq!(r.changes, ["server(s) pg4 added", "server(s) pg3 removed"]);
        assert!(
            s.events
                .iter()
                .any(|e| e.kind == Kind::ConfigReload && e.text.contains("pg4 added")),
        );
        assert!(
            w.nagios().starts_with("OK: 1 master (pg1"),
            "{}",
            w.nagios()
        );
        w.during(S(6), |w| w.routed() == Some(1), "stays on pg1")
            .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_reload_that_reorders_servers_a_failover_still_goes_to_the_right_node() {
        let w = world(&[Master(1), Standby(1), Standby(1)], 1, State::default()).await;
        settled_on_pg1(&w).await;
        w.reload("", &w.lines(&[3, 2, 1])).await;
        assert_eq!(w.names(), ["pg3", "pg2", "pg1"]);
        let s = w.snapshot();
        assert_eq!((s.active.as_deref(), s.confirmed), (Some("pg1"), true));
        assert_eq!(w.made("pg1") + w.made("pg2") + w.made("pg3"), 3);
        w.during(S(4), |w| w.routed() == Some(1), "stays on pg1")
            .await;
        w.set(1, Down);
        w.set(3, Master(2));
        w.until(S(4), |w| w.routed() == Some(3), "failover to pg3")
            .await;
        assert_eq!(w.snapshot().active.as_deref(), Some("pg3"));
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_connection_string_restarts_that_monitor_only() {
        let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
        settled_on_pg1(&w).await;
        let changed = w.lines(&[1, 2]).replace(
            "pg2=host=127.0.0.1 port=5432 dbname=postgres",
            "pg2=host=127.0.0.1 port=5432 application_name=x dbname=postgres",
        );
        assert!(changed.contains("application_name=x"), "{changed}");
        w.reload("", &changed).await;
        assert_eq!((w.made("pg1"), w.probes("pg1")), (1, 1));
        assert_eq!((w.made("pg2"), w.probes("pg2")), (2, 1), "pg2 restarted");
        let r = w.snapshot().reload.unwrap();
        assert_eq!(
            r.changes,
            ["connection string of pg2 changed (monitor restarted)"]
        );
        w.until(
            S(1),
            |w| w.snapshot().nodes[1].state == Some(NodeState::Standby),
            "pg2 checked again",
        )
        .await;
        assert!(w.nagios().starts_with("OK"), "{}", w.nagios());
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn removing_the_active_node_unconfirms_and_the_next_master_is_switched_to() {
        let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
        settled_on_pg1(&w).await;
        w.reload("", &w.lines(&[2])).await;
        assert_eq!(w.probes("pg1"), 0);
        let s = w.snapshot();
        assert_eq!(w.names(), ["pg2"]);
        assert_eq!((s.active, s.confirmed), (None, false));
        // pg2 is a standby: no master among the configured servers, nothing switched.
        w.during(
            S(4),
            |w| w.routed() == Some(1),
            "no switch without a master",
        )
        .await;
        w.set(2, Master(2));
        w.until(S(4), |w| w.routed() == Some(2), "switch to pg2")
            .await;
        let s = w.snapshot();
        assert_eq!((s.active.as_deref(), s.confirmed), (Some("pg2"), true));
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_config_is_refused_and_the_running_one_stays() {
        let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
        settled_on_pg1(&w).await;
        let text = ini_text(&w.root, "", &w.lines(&[1, 2])).replace("interval=2", "interval=soon");
        w.reload_text(&text).await;
        let s = w.snapshot();
        let r = s.reload.clone().unwrap();
        let e = r.error.unwrap();
        assert!(
            e.starts_with("config error: ") && e.contains("interval"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
        assert_eq!((s.counters.reloads_ok, s.counters.reloads_failed), (0, 1));
        assert_eq!(w.names(), ["pg1", "pg2"]);
        assert_eq!(s.interval, S(2));
        assert!(s.events.iter().any(|e| e.kind == Kind::ConfigReloadFailed));
        let root = crate::status::render_root(&s, SystemTime::now());
        assert!(root.contains("Last config reload: "), "{root}");
        assert!(root.contains("FAILED, the running configuration stays: config error"));
        let metrics = crate::metrics::render(&s);
        assert!(metrics.contains("rebouncer_config_reloads_total{result=\"failed\"} 1"));
        assert!(metrics.contains("rebouncer_config_last_reload_successful 0"));
        // A server whose node file is missing: refused as at start, nothing half-applied.
        let text = ini_text(
            &w.root,
            "",
            &(w.lines(&[1, 2]) + "pg9=host=127.0.0.1 port=5439 dbname=postgres sslmode=disable\n"),
        );
        w.reload_text(&text).await;
        let s = w.snapshot();
        assert!(
            s.reload
                .unwrap()
                .error
                .unwrap()
                .contains("pg9.ini does not exist")
        );
        assert_eq!(w.names(), ["pg1", "pg2"]);
        // Still running and switching as before; /nagios warns that the file on disk is
        // broken (the next start would stop on it).
        w.during(
            S(4),
            |w| {
                w.routed() == Some(1)
                    && w.nagios().starts_with("WARNING: configuration reload at ")
                    && w.nagios().contains("pg9.ini does not exist")
            },
            "still running",
        )
        .await;
        w.set(1, Down);
        w.set(2, Master(2));
        w.until(S(3), |w| w.routed() == Some(2), "a failover still followed")
            .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn settings_change_live_and_a_new_symlink_is_not_applied() {
        let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
        settled_on_pg1(&w).await;
        std::fs::create_dir(w.root.join("elsewhere")).unwrap();
        let text = ini_text(&w.root, "fast_interval=0.5\n", &w.lines(&[1, 2]))
            .replace("interval=2\n", "interval=10\n")
            .replace(
                &format!("symlink={}/pgbouncer.ini", w.root.display()),
                &format!("symlink={}/elsewhere/pgbouncer.ini", w.root.display()),
            );
        w.reload_text(&text).await;
        let s = w.snapshot();
        let r = s.reload.clone().unwrap();
        assert_eq!(r.error, None);
        assert_eq!(
            r.changes,
            ["interval 2 s -> 10 s", "fast_interval 0.1 s -> 0.5 s"]
        );
        assert_eq!(r.not_applied.len(), 1, "{:?}", r.not_applied);
        assert!(r.not_applied[0].starts_with("symlink (the file says "));
        assert_eq!(s.interval, S(10));
        assert_eq!((w.made("pg1"), w.made("pg2")), (1, 1), "monitors kept");
        let root = crate::status::render_root(&s, SystemTime::now());
        assert!(root.contains("Config reload NOT applied (needs a restart): symlink"));
        // Rounds now every 10 s: pg1's attempts grow by about one per round.
        let before = w.snapshot().counters.rounds;
        sleep(S(31)).await;
        let rounds = w.snapshot().counters.rounds - before;
        assert!((3..=4).contains(&rounds), "{rounds} rounds in 31 s");
        // The old symlink is still the one switched.
        w.set(1, Down);
        w.set(2, Master(2));
        w.until(
            S(12),
            |w| w.routed() == Some(2),
            "failover to pg2 through the kept symlink",
        )
        .await;
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_change_restarts_every_monitor_and_keeps_what_is_known() {
        let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
        settled_on_pg1(&w).await;
        let text = ini_text(&w.root, "", &w.lines(&[1, 2])).replace("timeout=2\n", "timeout=3\n");
        w.reload_text(&text).await;
        assert_eq!((w.made("pg1"), w.probes("pg1")), (2, 1));
        assert_eq!((w.made("pg2"), w.probes("pg2")), (2, 1));
        // Known states stay until the new monitors answer: no "starting up" gap.
        assert!(w.nagios().starts_with("OK"), "{}", w.nagios());
        let r = w.snapshot().reload.unwrap();
        assert_eq!(
            r.changes,
            [
                "timeout 2 s -> 3 s",
                "every monitor restarted (timeout or keep_connections)"
            ]
        );
        w.during(S(5), |w| w.nagios().starts_with("OK"), "still settled")
            .await;
        assert_eq!(w.snapshot().active.as_deref(), Some("pg1"));
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_for_a_server_the_reload_removes_ends_at_once() {
        let w = world_with(
            &[Master(1), Standby(1), Standby(1)],
            1,
            State::default(),
            PAUSING,
        )
        .await;
        paused_after_pg1_is_lost(&w).await;
        w.reload(PAUSING, &w.lines(&[2, 3])).await;
        assert!(w.bouncer.paused().is_empty(), "resumed");
        assert!(held_in_file(&w).is_empty());
        let outcome = last_hold_outcome(&w).unwrap();
        assert!(
            outcome.contains("pg1 was removed from the configuration"),
            "{outcome}"
        );
        // No new pause (no active node known), and the next master is switched to.
        w.during(S(3), |w| w.bouncer.paused().is_empty(), "no pause again")
            .await;
        w.set(2, Master(2));
        w.set(3, Standby(2));
        w.until(S(3), |w| w.routed() == Some(2), "switch to pg2")
            .await;
        assert_eq!(w.bouncer.count("PAUSE"), 1);
        w.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_while_pgbouncer_is_awaited_applies_before_the_first_round() {
        let w = world(&[Master(1), Standby(1)], 2, State::default()).await;
        w.bouncer.set_up(false);
        sleep(S(6)).await;
        assert!(w.nagios().starts_with("CRITICAL: waiting for PgBouncer"));
        let pg3 = w.add_server(3, Standby(1));
        w.reload("", &(w.lines(&[1, 2]) + &pg3)).await;
        assert_eq!(w.names(), ["pg1", "pg2", "pg3"]);
        assert_eq!(w.snapshot().counters.reloads_ok, 1);
        w.bouncer.set_up(true);
        w.until(
            S(7),
            |w| w.routed() == Some(1),
            "switch to pg1 once PgBouncer answers",
        )
        .await;
        w.until(
            S(3),
            |w| {
                w.nagios()
                    .starts_with("OK: 1 master (pg1, PgBouncer points at it), 2 standbys")
            },
            "pg3 checked",
        )
        .await;
        w.stop().await;
    }
}
