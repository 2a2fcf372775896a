//! The main loop: rounds of checks, the decision, the switch, and the snapshot the status
//! pages read. Each server has its own monitor task; this loop asks them to check, waits
//! for their answers within the timeout, decides, and acts.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;
use tracing::{error, info, warn};

use crate::admin::{self, Bouncer};
use crate::config::Config;
use crate::decide::{self, Action, Believed, Cluster, NodeId, NodeState};
use crate::probe::{ConnectionLost, Monitor, Observation};
use crate::status::{Phase, RoundStats, Snapshot, SwitchFailure};
use crate::switch;
use crate::throttle::{Say, Throttle};

/// How often PgBouncer's admin console is tried at start-up until it answers.
const PGBOUNCER_RETRY: Duration = Duration::from_secs(5);
/// How often a lasting condition is logged again.
const REMINDER_EVERY: Duration = Duration::from_secs(60);
/// With kept connections, each server is also checked with a new connection this often,
/// so a server that no longer accepts logins is not trusted on its old session.
const FRESH_CHECK_EVERY: Duration = Duration::from_secs(300);
/// With kept connections and an `interval` longer than this, the active master is also
/// asked this often between rounds, on its kept connection (one query, no new backend):
/// a primary that hangs closes no connection, and would otherwise be noticed only at the
/// next round, up to `interval` later.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// While a split brain lasts (rounds come every `fast_interval`), each master is asked on
/// a new connection at most this often: the first round that sees two masters always
/// asks, so a sick old primary is still found at once.
const SPLIT_BRAIN_RECHECK: Duration = Duration::from_secs(5);
/// A failed switch is retried at every round, but not more often than this.
const SWITCH_RETRY_MIN: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Check,
    Fresh,
}

struct Report {
    node: NodeId,
    obs: Observation,
    /// How long the check took, fresh re-check included.
    took: Duration,
}

/// What the loop knows of one server.
struct Node {
    name: String,
    state: Option<NodeState>,
    error: Option<String>,
    hung: bool,
    busy: bool,
    last_check: Option<SystemTime>,
    since: Option<SystemTime>,
    took: Option<Duration>,
    /// When it was last asked on a new connection before a split-brain verdict.
    rechecked: Option<Instant>,
    requests: mpsc::UnboundedSender<Request>,
}

/// A lasting condition worth one log line when it starts and ends.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Condition {
    NoMaster,
    SplitBrain(Vec<String>),
}

pub struct Daemon {
    cfg: Config,
    bouncer: Bouncer,
    status: watch::Sender<Snapshot>,
    shutdown: watch::Receiver<bool>,
    nodes: Vec<Node>,
    reports: mpsc::UnboundedReceiver<Report>,
    lost: mpsc::UnboundedReceiver<ConnectionLost>,
    believed: Believed,
    /// Set by a round that switched, failed to switch or found no single master: the
    /// next round comes after `fast_interval` instead of `interval`.
    unsettled: bool,
    last_switch: Option<SystemTime>,
    switch_failure: Option<SwitchFailure>,
    last_switch_attempt: Option<Instant>,
    conditions: Throttle<Condition>,
    switch_errors: Throttle<String>,
    last_round: Option<RoundStats>,
    /// Databases a switch told PgBouncer to `KILL` and could not `RESUME`: their new
    /// clients wait until a `RESUME` gets through, so it is retried every round.
    left_killed: Vec<String>,
}

impl Daemon {
    pub fn new(
        cfg: Config,
        status: watch::Sender<Snapshot>,
        shutdown: watch::Receiver<bool>,
    ) -> Daemon {
        let bouncer = Bouncer::new(cfg.pgbouncer.clone(), cfg.timeout);
        let (report_tx, reports) = mpsc::unbounded_channel();
        let (lost_tx, lost) = mpsc::unbounded_channel();
        let mut nodes = Vec::new();
        for (id, server) in cfg.servers.iter().enumerate() {
            let monitor = Monitor::new(
                id,
                server.target.clone(),
                cfg.timeout,
                cfg.keep_connections,
                Some(lost_tx.clone()),
            );
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_monitor(id, monitor, rx, report_tx.clone()));
            nodes.push(Node {
                name: server.name.clone(),
                state: None,
                error: None,
                hung: false,
                busy: false,
                last_check: None,
                since: None,
                took: None,
                rechecked: None,
                requests: tx,
            });
        }
        Daemon {
            bouncer,
            status,
            shutdown,
            nodes,
            reports,
            lost,
            believed: Believed::default(),
            unsettled: true,
            last_switch: None,
            switch_failure: None,
            last_switch_attempt: None,
            conditions: Throttle::new(REMINDER_EVERY),
            switch_errors: Throttle::new(REMINDER_EVERY),
            last_round: None,
            left_killed: Vec::new(),
            cfg,
        }
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
        self.publish();
        if !self.wait_for_pgbouncer().await {
            return;
        }
        let mut next_round = Instant::now();
        let mut next_beat = Instant::now() + HEARTBEAT;
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                Some(lost) = self.lost.recv() => {
                    let n = &self.nodes[lost.node];
                    info!(
                        "{}: monitoring connection closed by the server (was {}); checking all servers now",
                        n.name,
                        n.state.map_or("unchecked", NodeState::as_str)
                    );
                    self.unsettled = true;
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
                _ = sleep_until(next_beat.into()) => {
                    self.heartbeat();
                    next_beat = Instant::now() + HEARTBEAT;
                    continue;
                }
                _ = sleep_until(next_round.into()) => self.round().await,
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
        info!(
            "shutting down; PgBouncer stays pointed at {}",
            self.active_name()
        );
    }

    /// Make sure PgBouncer's admin console answers before anything else is done, retrying
    /// every few seconds: PgBouncer may start after rebouncer. False if asked to stop.
    async fn wait_for_pgbouncer(&mut self) -> bool {
        loop {
            match admin::ping(&self.bouncer).await {
                Ok(version) => {
                    info!(
                        "PgBouncer admin console at {} answers ({version}); starting to poll {} servers every {} s",
                        admin::Console::endpoint(&self.bouncer),
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
                _ = tokio::time::sleep(PGBOUNCER_RETRY) => {}
            }
        }
    }

    /// Ask every server, wait for the answers, then decide. A server that hung at its
    /// last check is asked again but not waited for, so it cannot slow down the rounds
    /// that have to notice a newly promoted standby.
    async fn round(&mut self) {
        let started = Instant::now();
        let deadline = started + self.cfg.timeout + Duration::from_millis(250);
        let mut awaited = Vec::new();
        for (id, n) in self.nodes.iter_mut().enumerate() {
            if n.busy {
                continue;
            }
            if n.requests.send(Request::Check).is_ok() {
                n.busy = true;
                if !n.hung {
                    awaited.push(id);
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
        self.decide_and_act().await;
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

    /// Apply reports until every awaited node answered or the deadline passed.
    async fn collect(&mut self, awaited: &mut Vec<NodeId>, deadline: Instant) {
        while !awaited.is_empty() {
            tokio::select! {
                Some(report) = self.reports.recv() => {
                    let node = report.node;
                    self.apply(report);
                    awaited.retain(|n| *n != node);
                }
                _ = sleep_until(deadline.into()) => break,
            }
        }
    }

    /// Record one answer; true if the node's state changed.
    fn apply(&mut self, report: Report) -> bool {
        let now = SystemTime::now();
        let n = &mut self.nodes[report.node];
        n.busy = false;
        n.last_check = Some(now);
        n.hung = report.obs.hung;
        n.took = Some(report.took);
        let changed = n.state != Some(report.obs.state);
        if changed {
            match (&report.obs.error, n.state) {
                (Some(e), _) => warn!("{}: now down: {e}", n.name),
                (None, None) => info!("{}: {}", n.name, report.obs.state),
                (None, Some(old)) => info!("{}: now {} (was {old})", n.name, report.obs.state),
            }
            n.state = Some(report.obs.state);
            n.since = Some(now);
        }
        n.error = report.obs.error;
        self.publish();
        changed
    }

    fn observed(&self) -> Vec<NodeState> {
        self.nodes
            .iter()
            .map(|n| n.state.unwrap_or(NodeState::Down))
            .collect()
    }

    async fn decide_and_act(&mut self) {
        let mut decision = decide::decide(self.believed, &self.observed());
        if let Cluster::SplitBrain(masters) = &decision.cluster
            && self.cfg.keep_connections
        {
            // Kept sessions can outlive a postmaster that refuses everyone else; ask each
            // master again on a new connection before calling it split brain.
            self.recheck_fresh(masters.clone()).await;
            decision = decide::decide(self.believed, &self.observed());
        }

        let condition = match &decision.cluster {
            Cluster::OneMaster(_) => None,
            Cluster::NoMaster => Some(Condition::NoMaster),
            Cluster::SplitBrain(m) => Some(Condition::SplitBrain(
                m.iter().map(|i| self.nodes[*i].name.clone()).collect(),
            )),
        };
        for say in self.conditions.observe(condition, Instant::now()) {
            self.log_condition(say);
        }

        self.unsettled = !matches!(decision.cluster, Cluster::OneMaster(_));
        if let Action::Switch(to) = decision.action {
            self.unsettled = true;
            let too_soon = self
                .last_switch_attempt
                .is_some_and(|t| t.elapsed() < SWITCH_RETRY_MIN);
            if !too_soon {
                self.switch(to).await;
            }
        } else if !self.left_killed.is_empty() {
            self.resume_left_killed().await;
        }
        self.publish();
    }

    async fn resume_left_killed(&mut self) {
        match switch::resume(&self.bouncer, &self.left_killed).await {
            Ok(()) => {
                info!(
                    "database(s) {} resumed in PgBouncer; their clients are let through again",
                    self.left_killed.join(", ")
                );
                self.left_killed.clear();
            }
            Err((left, e)) => {
                warn!(
                    "database(s) {} still killed in PgBouncer, RESUME failed: {e}; retrying next round",
                    left.join(", ")
                );
                self.left_killed = left;
            }
        }
    }

    async fn recheck_fresh(&mut self, masters: Vec<NodeId>) {
        let deadline = Instant::now() + self.cfg.timeout + Duration::from_millis(250);
        let mut awaited = Vec::new();
        for id in masters {
            let n = &mut self.nodes[id];
            if n.rechecked
                .is_some_and(|t| t.elapsed() < SPLIT_BRAIN_RECHECK)
            {
                continue;
            }
            if !n.busy && n.requests.send(Request::Fresh).is_ok() {
                n.busy = true;
                n.rechecked = Some(Instant::now());
                awaited.push(id);
            }
        }
        self.collect(&mut awaited, deadline).await;
    }

    fn log_condition(&self, say: Say<Condition>) {
        let active = self.active_name();
        match say {
            Say::Started(Condition::NoMaster) => warn!(
                "no master: no server answers as master; not touching PgBouncer, which stays pointed at {active}"
            ),
            Say::Started(Condition::SplitBrain(names)) => error!(
                "split brain: {} all answer as master; refusing to switch, PgBouncer stays pointed at {active}. \
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
        let started = Instant::now();
        self.last_switch_attempt = Some(started);
        let result = switch::switch_to(
            &self.bouncer,
            &self.cfg.symlink,
            &node_file,
            &self.left_killed,
        )
        .await;
        match result {
            Ok(done) => {
                let ms = started.elapsed().as_millis();
                let reset = if done.reset.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; connections to the old server dropped for database(s) {}",
                        done.reset.join(", ")
                    )
                };
                info!(
                    "PgBouncer now points at {name} ({}), confirmed by SHOW DATABASES in {ms} ms{reset}",
                    node_file.display()
                );
                for (db, e) in &done.not_reset {
                    warn!(
                        "KILL of database {db} failed after the switch: {e}; its clients may stay on the old server until they reconnect, and new logins may wait out PgBouncer's server_login_retry"
                    );
                }
                self.left_killed.clear();
                self.believed = Believed {
                    active: Some(to),
                    confirmed: true,
                };
                self.last_switch = done.relinked.then(SystemTime::now).or(self.last_switch);
                self.switch_failure = None;
                for say in self.switch_errors.observe(None, Instant::now()) {
                    if let Say::Ended { lasted, .. } = say {
                        info!(
                            "switch to {name} succeeded after failing for {} s",
                            lasted.as_secs()
                        );
                    }
                }
            }
            Err(e) => {
                if let switch::SwitchError::LeftKilled { databases, .. } = &e {
                    self.left_killed = databases.clone();
                }
                let error = e.to_string();
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
                for say in self.switch_errors.observe(Some(key), Instant::now()) {
                    match say {
                        Say::Started(_) => error!(
                            "switch to {name} failed: {error}; PgBouncer points at {}; retrying every round",
                            self.active_name()
                        ),
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

    fn publish(&self) {
        let active = self.believed.active.map(|n| self.nodes[n].name.clone());
        self.status.send_modify(|s| {
            for (dst, src) in s.nodes.iter_mut().zip(&self.nodes) {
                dst.state = src.state;
                dst.last_check = src.last_check;
                dst.since = src.since;
                dst.error = src.error.clone();
                dst.took = src.took;
            }
            s.last_round = self.last_round;
            s.active = active;
            s.confirmed = self.believed.confirmed;
            s.last_switch = self.last_switch;
            s.switch_failure = self.switch_failure.clone();
        });
    }
}

/// One server's monitor: checks when asked, reports back. Runs until the daemon drops its
/// request channel.
async fn run_monitor(
    node: NodeId,
    mut monitor: Monitor,
    mut requests: mpsc::UnboundedReceiver<Request>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut last_fresh = Instant::now();
    while let Some(req) = requests.recv().await {
        let due = monitor.keeps_connections() && last_fresh.elapsed() >= FRESH_CHECK_EVERY;
        let started = Instant::now();
        let mut obs = monitor.check().await;
        if (req == Request::Fresh || due) && obs.state != NodeState::Down {
            last_fresh = Instant::now();
            let fresh = monitor.check_fresh().await;
            if fresh.state == NodeState::Down {
                // Its old session still answers, but nobody else could log in: count it
                // as down, and drop the session so the next check does not trust it.
                monitor.forget_connection();
                obs = fresh;
            }
        }
        let took = started.elapsed();
        if reports.send(Report { node, obs, took }).is_err() {
            break;
        }
    }
}
