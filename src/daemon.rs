//! The main loop, the executor of the rules. Every decision is made by the
//! [`Policy`](crate::policy::machine::Policy): this feeds it what happened (answers,
//! timers, closed connections, the results of switches and pauses) and performs the
//! [`Command`]s it answers with, feeding each result back. Each server has its own
//! monitor task behind the [`Probe`] seam, and PgBouncer sits behind the [`Console`]
//! seam, so the loop's behaviour over time is also unit-tested with a fake cluster on
//! tokio's paused clock (`daemon/tests/`); the integration tests drive the real
//! processes. The monitor tasks are in `daemon/monitor.rs`, PgBouncer's side (switch,
//! drift) in `daemon/bouncer.rs`, the pause in `daemon/hold.rs`, reloads in
//! `daemon/reload.rs`, the log lines in `daemon/say.rs`.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

use crate::admin::{self, Bouncer, Console, Database, Session};
use crate::config::{self, Config, ConfigError, Server};
use crate::counters::{self, SwitchReason};
use crate::decide::{NodeId, NodeState, Refusal, Stale, Timeline};
use crate::events::Kind;
use crate::policy::machine::Policy;
use crate::policy::messages::{
    Answer, Carry, Command, Condition, Hold, Input, Lasting, Paused, Release, Routes, Settings,
    SwitchError, Switched,
};
use crate::policy::pause::{self, HoldEnd, NoHold};
use crate::policy::persist::Said;
use crate::policy::reload_plan::{self, ReloadPlan};
use crate::probe::{ConnectionLost, Monitor, Observation, Probe};
use crate::state::StateFile;
use crate::switch::{self, SwitchPlan};
use crate::throttle::Say;
use crate::view::{
    self, Drift, FailoverPause, NodeStatus, NotTaken, PauseEnd, PausedDatabase, Phase,
    ReloadStatus, RoundStats, Snapshot, SwitchFailure, Verdict,
};

// The loop's tests on the paused clock name the switch pacing's bounds.
#[cfg(test)]
use crate::policy::pacing;

mod bouncer;
mod hold;
use hold::HoldEnded;
mod leader;
mod monitor;
mod reload;
mod say;

use monitor::{Report, Request, run_monitor};

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

/// What the executor keeps of one server: its monitor, and what the pages show beyond
/// what the policy knows ([`crate::policy::machine::Known`]).
struct Node {
    name: String,
    key: MonitorKey,
    error: Option<String>,
    last_check: Option<SystemTime>,
    since: Option<SystemTime>,
    took: Option<Duration>,
    timeline_note: Option<String>,
    requests: mpsc::UnboundedSender<Request>,
}

impl Node {
    fn new(name: String, key: MonitorKey, requests: mpsc::UnboundedSender<Request>) -> Node {
        Node {
            name,
            key,
            error: None,
            last_check: None,
            since: None,
            took: None,
            timeline_note: None,
            requests,
        }
    }
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
    /// Every decision, and all it remembers.
    policy: Policy,
    state: StateFile,
    last_switch: Option<SystemTime>,
    switch_failure: Option<SwitchFailure>,
    /// What PgBouncer runs while it does not take the file the symlink names.
    not_taken: Option<NotTaken>,
    last_round: Option<RoundStats>,
    /// A kept admin session: when PgBouncer closes it (a restart), its routes are checked
    /// at once.
    watch_session: Option<C::Session>,
    /// The drift shown on the pages, until a switch ends it.
    drift: Option<Drift>,
    paused: Vec<PausedDatabase>,
    /// The routes PgBouncer was last confirmed to use.
    last_confirmed: Option<Vec<Database>>,
    last_hold: Option<FailoverPause>,
    /// etcd mode: the watch of Patroni's leader key (see `daemon/leader.rs`).
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
        let mut policy = Policy::new(
            Settings::of(&cfg),
            nodes.len(),
            state.state().timelines.clone(),
            Instant::now().into_std(),
        );
        if cfg.etcd.is_some() {
            policy.follow_leader();
        }
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
            policy,
            state,
            last_switch: None,
            switch_failure: None,
            not_taken: None,
            last_round: None,
            watch_session: None,
            drift: None,
            paused: Vec::new(),
            last_confirmed: None,
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

    /// Run until shutdown is requested. A switch in progress always finishes first. The
    /// start-up's steps and their order are the policy's (`policy/machine/start.rs`).
    pub async fn run(mut self) {
        self.feed(Input::Start).await;
        loop {
            let polling = self.policy.polling();
            let next_ping = self.policy.next_ping().map(Instant::from_std);
            let next_round = Instant::from_std(self.policy.next_round());
            let next_beat = Instant::from_std(self.policy.next_heartbeat());
            let hold_deadline = self.policy.hold_deadline().map(Instant::from_std);
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                _ = async { sleep_until(hold_deadline.unwrap_or_else(Instant::now)).await }, if hold_deadline.is_some() => {
                    self.feed(Input::HoldDeadline).await;
                }
                Some(reload) = next_reload(&mut self.reloads) => self.reload(reload).await,
                _ = async { sleep_until(next_ping.unwrap_or_else(Instant::now)).await }, if next_ping.is_some() => {
                    self.feed(Input::PingDue).await;
                }
                Some(lost) = self.lost.recv() => {
                    let Some(node) = self.index_of(lost.node) else {
                        // A monitor a reload stopped.
                        continue;
                    };
                    info!(
                        "{}: monitoring connection closed by the server (was {}); checking all servers now",
                        self.nodes[node].name,
                        self.policy.nodes()[node].state.map_or("unchecked", NodeState::as_str)
                    );
                    self.feed(Input::ConnectionClosed { node }).await;
                }
                Some(report) = self.reports.recv() => {
                    // A heartbeat, or a check that outlived its round (a hung server).
                    let next = self.apply(report);
                    self.perform_all(next).await;
                }
                _ = sleep_until(next_beat), if polling => self.feed(Input::HeartbeatDue).await,
                Some(event) = leader::next_event(&mut self.leader) => self.on_leader(event).await,
                _ = sleep_until(next_round), if polling => self.feed(Input::RoundDue).await,
            }
            if self.shutting_down() {
                break;
            }
        }
        self.feed(Input::Shutdown).await;
    }

    /// Tell the policy what happened, now.
    fn tell(&mut self, input: Input) -> Vec<Command> {
        self.policy.handle(input, Instant::now().into_std())
    }

    /// Tell the policy what happened and perform what it asks, to the end.
    async fn feed(&mut self, input: Input) {
        let commands = self.tell(input);
        self.perform_all(commands).await;
    }

    /// Perform commands in order; what one's result makes the policy ask comes before
    /// the commands after it.
    async fn perform_all(&mut self, commands: Vec<Command>) {
        let mut queue: VecDeque<Command> = commands.into();
        while let Some(command) = queue.pop_front() {
            let next = self.perform(command).await;
            for c in next.into_iter().rev() {
                queue.push_front(c);
            }
        }
    }

    /// Perform one command; the policy's answer to its result.
    async fn perform(&mut self, command: Command) -> Vec<Command> {
        match command {
            Command::RemoveTempLinks => {
                for stale in switch::remove_stale_temp_links(&self.cfg.symlink) {
                    info!(
                        "removed {}, left behind by a rebouncer stopped in the middle of a switch",
                        stale.display()
                    );
                }
            }
            Command::SayLinked(linked) => match linked {
                Some(n) => info!(
                    "PgBouncer's config {} points at node {}; it will be confirmed after the first round",
                    self.cfg.symlink.display(),
                    self.nodes[n].name
                ),
                None => info!(
                    "PgBouncer's config {} does not point at any node's config yet",
                    self.cfg.symlink.display()
                ),
            },
            Command::SayRemembered(timelines) => {
                let remembered: Vec<String> =
                    timelines.iter().map(|t| format!("timeline {t}")).collect();
                info!(
                    "state file {}: the cluster has reached {}; a master on a lower timeline is a stale primary",
                    self.state.path().display(),
                    remembered.join(", ")
                );
            }
            Command::TryStateFile => {
                // The error is said by the policy's answer.
                let _ = self.state.rewrite().await;
                let error = self.state_error();
                return self.tell(Input::Written { error });
            }
            Command::PingPgBouncer => {
                let answer = admin::ping(&self.console).await.map_err(|e| e.to_string());
                return self.tell(Input::PgBouncer(answer));
            }
            Command::PgBouncerSilent { error, retry } => {
                warn!(
                    "waiting for PgBouncer: {error}; retrying in {} s",
                    retry.as_secs()
                );
                self.status
                    .send_modify(|s| s.phase = Phase::WaitingForPgBouncer { error });
            }
            Command::PgBouncerAnswers { version } => {
                info!(
                    "PgBouncer admin console at {} answers ({version}); starting to poll {} servers every {} s",
                    self.console.endpoint(),
                    self.nodes.len(),
                    self.cfg.interval.as_secs()
                );
                self.status.send_modify(|s| s.phase = Phase::Running);
            }
            Command::FinishLastRun => {
                self.finish_what_the_last_run_left().await;
                self.state_file_written();
            }
            Command::StartLeader => self.start_leader(),
            Command::CheckPauseSettings => self.check_pause_settings().await,
            Command::SayShutdown => info!(
                "shutting down; PgBouncer stays pointed at {}",
                self.active_name()
            ),
            Command::Check {
                nodes,
                fresh,
                wait_for,
                until,
                round,
            } => return self.check(nodes, fresh, wait_for, until, round).await,
            Command::CheckLink => {
                let (behind, target) = self.read_symlink().await;
                let session_closed = self.watch_session.as_ref().is_some_and(|s| s.is_closed());
                return self.tell(Input::Link {
                    behind,
                    target,
                    session_closed,
                });
            }
            Command::CompareRoutes { node, restarted } => {
                let routes = self.compare_routes(node, restarted).await;
                return self.tell(Input::Routes(routes));
            }
            Command::Drifted {
                was,
                behind,
                target,
                routes,
            } => self.drifted(was, behind, target, routes),
            Command::FindLinked => {
                let behind = self.node_behind_symlink().await;
                return self.tell(Input::Linked { behind });
            }
            Command::WriteTimelines(timelines) => {
                // The error is said by the policy's answer, throttled.
                let _ = self.state.update(|s| s.timelines = timelines).await;
                let error = self.state_error();
                return self.tell(Input::Written { error });
            }
            Command::SayStateFile(said) => self.say_state_file(said),
            Command::LogDecision(lasting) => self.log_decision(lasting),
            Command::SwitchFailing(say) => self.say_switch_failing(say),
            Command::SwitchRecovered { to, lasted } => info!(
                "switch to {} succeeded after failing for {} s",
                self.nodes[to].name,
                lasted.as_secs()
            ),
            Command::CannotHold(loss) => warn!(
                "{} stopped being master ({}), but its clients are not held in PgBouncer: pause_on_failover is off \
                 until the state file can be written; they get errors until a new master is switched to",
                self.active_name(),
                loss.why()
            ),
            Command::Pause { lost, why } => {
                let paused = self.start_hold(lost, why.why()).await;
                self.state_file_written();
                return self.tell(Input::Paused(paused));
            }
            Command::Switch {
                to,
                from,
                reason,
                held,
            } => {
                let switched = self.switch(to, from, reason, held).await;
                self.state_file_written();
                return self.tell(Input::Switched(switched));
            }
            Command::EndHold { hold, release } => {
                let (why, how) = self.release_text(&hold, &release);
                self.end_hold(hold, &why, how).await;
                self.state_file_written();
            }
            Command::HoldSwitched {
                hold,
                to,
                waiting,
                resume_failed,
            } => {
                let outcome = format!("switched to {}", self.nodes[to].name);
                if resume_failed {
                    // The switch's warning says which RESUME failed; the round retries it.
                    self.log_hold_end(
                        hold,
                        &format!("{outcome}, but RESUME failed"),
                        waiting,
                        HoldEnded::ResumeFailed,
                    );
                } else {
                    self.log_hold_end(hold, &outcome, waiting, HoldEnded::Switched);
                }
            }
            Command::FinishPending => {
                if !self.state.state().kill_pending.is_empty() {
                    self.retry_kill_pending().await;
                }
                if !self.state.state().resume_pending.is_empty() {
                    self.resume_pending("left paused by an earlier RESUME that failed")
                        .await;
                }
                self.state_file_written();
            }
            Command::LeaderHeld(held) => self.say_leader_held(held),
            Command::Publish => self.publish(),
            Command::RoundDone => self.status.send_modify(|s| s.counters.rounds += 1),
        }
        Vec::new()
    }

    fn state_error(&self) -> Option<String> {
        self.state.write_error().map(str::to_string)
    }

    /// A step that may have written the state file is over: the policy learns how the
    /// file stands.
    fn state_file_written(&mut self) {
        let error = self.state_error();
        // Only recorded: it asks nothing.
        let _ = self.tell(Input::StateFile { error });
    }

    /// Ask these servers; with `until`, apply every report until those in `wait_for`
    /// answered or the deadline passed, then tell the policy the checks are over.
    async fn check(
        &mut self,
        nodes: Vec<NodeId>,
        fresh: bool,
        wait_for: Vec<NodeId>,
        until: Option<std::time::Instant>,
        round: bool,
    ) -> Vec<Command> {
        let started = Instant::now();
        let request = if fresh {
            Request::Fresh
        } else {
            Request::Check
        };
        let mut next = Vec::new();
        let mut awaited = Vec::new();
        for node in nodes {
            if self.nodes[node].requests.send(request).is_ok() {
                if wait_for.contains(&node) {
                    awaited.push(self.nodes[node].key);
                }
            } else {
                next.extend(self.tell(Input::NotAsked { node }));
            }
        }
        let Some(until) = until else {
            return next;
        };
        let deadline = Instant::from_std(until);
        let asked = awaited.len();
        while !awaited.is_empty() {
            tokio::select! {
                Some(report) = self.reports.recv() => {
                    let key = report.key;
                    next.extend(self.apply(report));
                    awaited.retain(|k| *k != key);
                }
                _ = sleep_until(deadline) => break,
            }
        }
        if round {
            self.last_round = Some(RoundStats {
                asked,
                answered: asked - awaited.len(),
                took: started.elapsed(),
            });
        }
        next.extend(self.tell(Input::ChecksOver));
        next
    }

    /// Record one answer for the pages and the log, and tell the policy. An answer from a
    /// monitor a reload stopped is dropped.
    fn apply(&mut self, report: Report) -> Vec<Command> {
        let Some(index) = self.index_of(report.key) else {
            return Vec::new();
        };
        let now = SystemTime::now();
        let known = self.policy.nodes()[index].clone();
        let n = &mut self.nodes[index];
        let obs = report.obs;
        n.last_check = Some(now);
        n.took = Some(report.took);
        let changed = known.state != Some(obs.state);
        let ok = obs.state != NodeState::Down;
        if changed {
            let text = match (&obs.error, known.state) {
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
            n.since = Some(now);
        } else if let (Some(new), Some(old)) = (obs.timeline, known.timeline)
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
        // A change of state forgets what new connections found before it.
        let refused_before = known.refuses_new.is_some() && !changed;
        match &obs.fresh {
            Some(Err(e)) if !refused_before => warn!(
                "{}: answers as {} on rebouncer's kept session, but a new connection failed: {e}",
                n.name, obs.state
            ),
            Some(Ok(())) if refused_before => info!("{}: accepts new connections again", n.name),
            _ => {}
        }
        n.error = obs.error;
        // Counted at once; the state itself is published with the decision on it.
        self.status
            .send_modify(|s| s.nodes[index].counters.record(report.took, ok, now));
        self.tell(Input::Answer {
            node: index,
            answer: Answer {
                state: obs.state,
                timeline: obs.timeline,
                hung: obs.hung,
                fresh: obs.fresh,
            },
        })
    }

    fn active_name(&self) -> String {
        match self.policy.believed().active {
            Some(n) => self.nodes[n].name.clone(),
            None => "no node's config".to_string(),
        }
    }

    /// Publish the servers' states with the decision taken on them: called after each
    /// decision (and by the steps that act on one), never between a round's answers and
    /// its decision, so no page shows states the verdict has not seen.
    fn publish(&self) {
        let believed = self.policy.believed();
        let active = believed.active.map(|n| self.nodes[n].name.clone());
        let verdict = self.policy.decision().map(|d| Verdict {
            decision: d.clone(),
            refusal: d.refusal.as_ref().map(|r| self.refusal_text(r)),
        });
        let now = Instant::now().into_std();
        let known = self.policy.nodes();
        let hold = self.policy.hold();
        self.status.send_modify(|s| {
            for ((dst, src), k) in s.nodes.iter_mut().zip(&self.nodes).zip(known) {
                dst.state = k.state;
                dst.last_check = src.last_check;
                dst.since = src.since;
                dst.error = src.error.clone();
                dst.took = src.took;
                dst.timeline = k.timeline.map(|t| t.timeline);
                dst.timeline_note = src.timeline_note.clone();
                dst.refuses_new = k.refuses_new.clone();
                dst.next_try = k.backoff.shown_wait(now);
            }
            s.verdict = verdict;
            s.last_round = self.last_round;
            s.active = active;
            s.confirmed = believed.confirmed;
            s.last_switch = self.last_switch;
            s.switch_failure = self.switch_failure.clone();
            s.drift = self.drift.clone();
            s.paused = self.paused.clone();
            s.resume_pending = self.state.state().resume_pending.clone();
            s.kill_pending = self.state.state().kill_pending.clone();
            s.failover_pause = match hold {
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
                    if stuck && h.ended.as_ref().is_some_and(|e| e.resume_failed) {
                        h.ended = None;
                    }
                    h
                }),
            };
            s.state_file = self.state.path().display().to_string();
            s.state_error = self.state.write_error().map(str::to_string);
            s.pause_on_failover = self.cfg.pause_on_failover;
            s.not_taken = self.not_taken.clone();
            s.etcd = self.leader.as_ref().map(|f| f.view().clone());
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
