//! The main loop, the executor of the rules: rounds of checks, the decision, and the
//! snapshot the status pages read. What to do is decided by [`crate::decide`] and the
//! pure rules in [`crate::policy`]; this performs it and feeds the results back. Each
//! server has its own monitor task behind the [`Probe`] seam, and PgBouncer sits behind
//! the [`Console`] seam, so the loop's behaviour over time is unit-tested with a fake
//! cluster on tokio's paused clock (`daemon/tests.rs`); the integration tests drive the
//! real processes. The monitor tasks are in `daemon/monitor.rs`, PgBouncer's side
//! (switch, drift) in `daemon/bouncer.rs`, the pause in `daemon/hold.rs`, reloads in
//! `daemon/reload.rs`, the log lines in `daemon/say.rs`.

use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

use crate::admin::{self, Bouncer, Console, Database, Session};
use crate::config::{self, Config, ConfigError, Server};
use crate::counters::{self, SwitchReason};
use crate::decide::{
    self, Action, Believed, Cluster, Decision, Memory, NodeId, NodeState, Refusal, Seen, Stale,
    Timeline,
};
use crate::events::Kind;
use crate::policy::checks::{self, Backoff};
use crate::policy::drift::DriftCadence;
use crate::policy::pacing::{self, SwitchPacing};
use crate::policy::pause::{self, HoldEnd, NoHold, Pausing, Start};
use crate::policy::persist::{Persist, Said};
use crate::policy::reload_plan::{self, ReloadPlan};
use crate::probe::{ConnectionLost, Monitor, Observation, Probe};
use crate::state::StateFile;
use crate::switch::{self, SwitchPlan};
use crate::throttle::{Say, Throttle};
use crate::view::{
    self, Drift, FailoverPause, NodeStatus, NotTaken, PauseEnd, PausedDatabase, Phase,
    ReloadStatus, RoundStats, Snapshot, SwitchFailure, Verdict,
};

mod bouncer;
mod hold;
mod leader;
mod monitor;
mod reload;
mod say;

use hold::{Ending, Hold};
use monitor::{Report, Request, run_monitor};

/// How often PgBouncer's admin console is tried at start-up until it answers.
const PGBOUNCER_RETRY: Duration = Duration::from_secs(5);
/// How often a lasting condition is logged again.
const REMINDER_EVERY: Duration = Duration::from_secs(60);
/// With kept connections and an `interval` longer than this, the active master is also
/// asked this often between rounds, on its kept connection (one query, no new backend):
/// a primary that hangs closes no connection, and would otherwise be noticed only at the
/// next round, up to `interval` later.
const HEARTBEAT: Duration = Duration::from_secs(1);

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
    /// A new connection to it worked since it last changed state.
    accepted_new: bool,
    backoff: Backoff,
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
            accepted_new: false,
            backoff: Backoff::new(Instant::now().into_std()),
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
    pacing: SwitchPacing,
    /// What PgBouncer runs while it does not take the file the symlink names.
    not_taken: Option<NotTaken>,
    persist: Persist,
    conditions: Throttle<Condition>,
    stale_log: Throttle<Vec<String>>,
    refusal_log: Throttle<String>,
    switch_errors: Throttle<String>,
    last_round: Option<RoundStats>,
    last_decision: Option<Decision>,
    /// A kept admin session: when PgBouncer closes it (a restart), its routes are checked
    /// at once.
    watch_session: Option<C::Session>,
    drift_cadence: DriftCadence,
    drift: Option<Drift>,
    paused: Vec<PausedDatabase>,
    /// The routes PgBouncer was last confirmed to use.
    last_confirmed: Option<Vec<Database>>,
    hold: Option<Hold>,
    /// The loss of the active master already had its pause (it ended or could not be
    /// made): no second one until that master answers again or another is switched to.
    loss_handled: bool,
    last_hold: Option<FailoverPause>,
    /// etcd mode: Patroni's leader key, followed (see `daemon/leader.rs`).
    leader: Option<leader::Follower>,
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
        let mut state = state;
        state.bound_writes(cfg.timeout);
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
            pacing: SwitchPacing::default(),
            not_taken: None,
            persist: Persist::default(),
            conditions: Throttle::new(REMINDER_EVERY),
            stale_log: Throttle::new(REMINDER_EVERY),
            refusal_log: Throttle::new(REMINDER_EVERY),
            switch_errors: Throttle::new(REMINDER_EVERY),
            last_round: None,
            last_decision: None,
            watch_session: None,
            drift_cadence: DriftCadence::default(),
            drift: None,
            paused: Vec::new(),
            last_confirmed: None,
            hold: None,
            loss_handled: false,
            last_hold: None,
            leader: cfg.etcd.as_ref().map(leader::Follower::new),
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
        self.believed.active = self.node_behind_symlink().await;
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
        if self.cfg.pause_on_failover {
            // A pause must be on disk before it is made: find out now whether it can be,
            // not at the first failover.
            let _ = self.state.rewrite().await;
            self.say_state_file();
        }
        self.publish();
        if !self.wait_for_pgbouncer().await {
            return;
        }
        self.finish_what_the_last_run_left().await;
        self.start_leader();
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
                Some(event) = leader::next_event(&mut self.leader) => self.on_leader(event).await,
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
            next_round = Instant::now() + self.round_pause(pause);
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

    /// Ask every server that is due, wait for the answers, then decide. A server that
    /// hung at its last check is asked again but not waited for, so it cannot slow down
    /// the rounds that have to notice a newly promoted standby; one that keeps failing is
    /// asked less and less often (see [`Node::next_try`]).
    async fn round(&mut self) {
        let started = Instant::now();
        let deadline = started + self.cfg.timeout + Duration::from_millis(250);
        let mut awaited = Vec::new();
        for n in self.nodes.iter_mut() {
            if n.busy || !n.backoff.due(started.into_std()) {
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
        let now = Instant::now().into_std();
        for n in self.nodes.iter_mut() {
            n.backoff.retry_now(now);
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
            view::record_event(&self.status, Kind::State, Some(&n.name), text);
            n.state = Some(obs.state);
            n.since = Some(now);
            n.refuses_new = None;
            n.accepted_new = false;
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
            Some(Ok(())) => {
                n.accepted_new = true;
                if n.refuses_new.take().is_some() {
                    info!("{}: accepts new connections again", n.name);
                }
            }
            None => {}
        }
        let at = Instant::now().into_std();
        n.backoff
            .checked(obs.state == NodeState::Down, at, fast, interval);
        n.error = obs.error;
        if changed {
            let this = index;
            for (id, other) in self.nodes.iter_mut().enumerate() {
                if id != this {
                    other.backoff.retry_now(at);
                }
            }
        }
        // Counted at once; the state itself is published with the decision on it.
        self.status
            .send_modify(|s| s.nodes[index].counters.record(report.took, ok, now));
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

    /// What each node answered last, in node order.
    fn states(&self) -> Vec<Option<NodeState>> {
        self.nodes.iter().map(|n| n.state).collect()
    }

    fn pausing(&self) -> Pausing {
        Pausing::new(
            self.cfg.pause_on_failover,
            self.state.write_error().is_none(),
        )
    }

    async fn decide_and_act(&mut self) {
        let mut decision = self.judge();
        let recheck = checks::masters_to_recheck(&decision);
        if !recheck.is_empty()
            && self.cfg.keep_connections
            && self.recheck_fresh(recheck, false).await
        {
            // Kept sessions can outlive a postmaster that refuses everyone else; what a new
            // connection finds may only make the verdict more cautious (see decide).
            decision = self.judge();
        }
        if let Action::Switch(to) = decision.action
            && self.needs_fresh_check(to)
            && self.recheck_fresh(vec![to], true).await
        {
            decision = self.judge();
        }
        // Kept before acting: what the steps below publish shows this decision.
        self.last_decision = Some(decision.clone());
        self.remember(&decision).await;
        self.log_decision(&decision);
        let states = self.states();
        if pause::master_back(self.believed.active, &decision, &states) {
            self.loss_handled = false;
        }
        if self.hold.is_none() {
            let start = pause::on_loss(
                self.pausing(),
                self.loss_handled,
                self.believed,
                &decision,
                &states,
            );
            match start {
                Some(Start::Hold(loss)) => self.start_hold(loss.why()).await,
                Some(Start::CannotRecord(loss)) => {
                    self.loss_handled = true;
                    warn!(
                        "{} stopped being master ({}), but its clients are not held in PgBouncer: pause_on_failover is off \
                         until the state file can be written; they get errors until a new master is switched to",
                        self.active_name(),
                        loss.why()
                    );
                }
                None => {}
            }
        }

        self.unsettled = checks::fast_rounds(&decision, self.hold.is_some());
        let now = Instant::now().into_std();
        if let Action::Switch(to) = decision.action {
            // A target still unproven on a new connection (its check is under way or did
            // not answer in time) is not switched to: its report decides again.
            if !self.needs_fresh_check(to) && self.pacing.may_switch(to, now, self.cfg.interval) {
                self.switch(to).await;
            }
            if self.hold.as_ref().is_some_and(|h| {
                pause::switch_outlasted_hold(h.deadline.into_std(), Instant::now().into_std())
            }) {
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
            let over = self.hold.as_ref().and_then(|h| {
                pause::hold_over(h.lost, h.deadline.into_std(), now, &decision, &states)
            });
            if let Some(end) = over {
                let (why, how) = self.hold_end_text(end);
                self.end_hold(&why, how).await;
            }
            // Not while clients are held: the retry RESUMEs what the state file lists as
            // resume pending, which would end the pause; the KILL waits for the pause to end.
            if self.hold.is_none() && !self.state.state().kill_pending.is_empty() {
                self.retry_kill_pending().await;
            }
            if self.hold.is_none() && !self.state.state().resume_pending.is_empty() {
                self.resume_pending("left paused by an earlier RESUME that failed")
                    .await;
            }
        }
        self.last_decision = Some(decision);
        self.publish();
    }

    /// Whether the node about to receive PgBouncer must first be asked on a new
    /// connection (see [`checks::target_needs_fresh_check`]).
    fn needs_fresh_check(&self, to: NodeId) -> bool {
        checks::target_needs_fresh_check(self.cfg.keep_connections, self.nodes[to].accepted_new)
    }

    /// Keep the decision's memory; write the state file when the timelines rose or the
    /// last write failed (retried every time until it works).
    async fn remember(&mut self, decision: &Decision) {
        let rose = decision.memory.timelines != self.memory.timelines;
        self.memory = decision.memory.clone();
        if Persist::must_write(rose, self.state.write_error().is_some()) {
            let timelines = self.memory.timelines.clone();
            // The error is said below, throttled.
            let _ = self.state.update(|s| s.timelines = timelines).await;
        }
        self.say_state_file();
    }

    /// Ask these masters on a new connection, each at most every
    /// [`checks::RECHECK_EVERY`] unless `always`; true if any was asked.
    async fn recheck_fresh(&mut self, masters: Vec<NodeId>, always: bool) -> bool {
        let deadline = Instant::now() + self.cfg.timeout + Duration::from_millis(250);
        let mut awaited = Vec::new();
        for id in masters {
            let n = &mut self.nodes[id];
            if !always
                && !checks::recheck_due(
                    n.rechecked.map(Instant::into_std),
                    Instant::now().into_std(),
                )
            {
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

    fn active_name(&self) -> String {
        match self.believed.active {
            Some(n) => self.nodes[n].name.clone(),
            None => "no node's config".to_string(),
        }
    }

    /// Publish the servers' states with the decision taken on them: called after each
    /// decision (and by the steps that act on one), never between a round's answers and
    /// its decision, so no page shows states the verdict has not seen.
    fn publish(&self) {
        let active = self.believed.active.map(|n| self.nodes[n].name.clone());
        let verdict = self.last_decision.as_ref().map(|d| Verdict {
            decision: d.clone(),
            refusal: d.refusal.as_ref().map(|r| self.refusal_text(r)),
        });
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
                dst.next_try = src.backoff.shown_wait(now.into_std());
            }
            s.verdict = verdict;
            s.last_round = self.last_round;
            s.active = active;
            s.confirmed = self.believed.confirmed;
            s.last_switch = self.last_switch;
            s.switch_failure = self.switch_failure.clone();
            s.drift = self.drift.clone();
            s.paused = self.paused.clone();
            s.resume_pending = self.state.state().resume_pending.clone();
            s.kill_pending = self.state.state().kill_pending.clone();
            s.failover_pause = match &self.hold {
                Some(h) => Some(FailoverPause {
                    databases: h.databases.clone(),
                    lost: self.nodes[h.lost].name.clone(),
                    since: h.since,
                    timeout: self.cfg.pause_timeout,
                    ended: None,
                }),
                // A pause whose RESUME keeps failing still holds clients: shown as lasting,
                // so /nagios turns CRITICAL once it outlasts pause_timeout.
                None => self.last_hold.clone().map(|mut h| {
                    let stuck = h.databases.iter().any(|d| s.resume_pending.contains(d));
                    if stuck
                        && h.ended
                            .as_ref()
                            .is_some_and(|e| e.outcome.contains("RESUME failed"))
                    {
                        h.ended = None;
                    }
                    h
                }),
            };
            s.state_file = self.state.path().display().to_string();
            s.state_error = self.state.write_error().map(str::to_string);
            s.pause_on_failover = self.cfg.pause_on_failover;
            s.not_taken = self.not_taken.clone();
        });
    }
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

#[cfg(test)]
mod tests;
