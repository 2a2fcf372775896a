//! The whole loop's decisions as one value. [`Policy`] keeps everything the rules remember
//! between rounds (what each server answered, the verdict and its memory, the pause,
//! back-off and switch pacing, drift cadence, how the state file stands) and is driven by
//! [`Input`]s, each told with the time; it answers with the [`Command`]s to perform, in
//! order. A step that needs I/O before the rules can go on (checks awaited within a
//! deadline, a state-file write, a `PAUSE`, a switch) is a command whose answer is the
//! next input: the policy keeps where it stopped ([`Stage`]) and resumes there.
//!
//! It does no I/O and reads no clock, so every rule of the loop, and whole sequences of
//! them (a failover from the first answer to the switch), are tested with plain values.

use std::time::{Duration, Instant};

use crate::counters::SwitchReason;
use crate::decide::{self, Action, Believed, Decision, Memory, NodeId, NodeState, Seen, Timelines};
use crate::policy::checks;
use crate::policy::drift::DriftCadence;
use crate::policy::leader::Following;
use crate::policy::messages::{
    Command, Hold, Input, Paused, Release, Routes, Settings, SwitchError, Switched,
};
use crate::policy::pacing::{self, SwitchPacing};
use crate::policy::pause::{self, Pausing, Start};
use crate::policy::persist::Persist;

/// With kept connections and an `interval` longer than this, the active master is also
/// asked this often between rounds, on its kept connection (one query, no new backend):
/// a primary that hangs closes no connection, and would otherwise be noticed only at the
/// next round, up to `interval` later.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Checks are waited for this much beyond `timeout`: a monitor's own deadline is
/// `timeout`, and its report must still get through.
const COLLECT_GRACE: Duration = Duration::from_millis(250);

/// What ends a pass of the rules, for the round timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// A round: the next one comes after `interval`, or `fast_interval` if unsettled.
    Round,
    /// News between rounds: if it unsettled the cluster, poll fast from now.
    Report,
    /// The timers stay as they are.
    Timers,
    /// A decision on news of the leader key (etcd mode): the round timer restarts from
    /// the leader rule.
    Key,
}

/// Where a pass stopped to wait for the executor, and what it goes on with.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    /// Deciding, waiting for nothing yet (a pass that began with news, not a round).
    Deciding,
    /// The round's checks.
    Checks,
    /// Where the symlink points.
    Link,
    /// PgBouncer's routes.
    Routes,
    /// Masters asked on a new connection before the verdict.
    Recheck,
    /// The switch target asked on a new connection.
    Target,
    /// The state-file write of the verdict's timelines.
    Written(Decision),
    /// The failover pause.
    Pausing(Decision),
    /// The switch.
    Switching(NodeId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pass {
    end: End,
    stage: Stage,
}

/// The loop's rules and everything they remember. See the module's documentation.
#[derive(Debug)]
pub struct Policy {
    settings: Settings,
    nodes: Vec<Known>,
    believed: Believed,
    memory: Memory,
    last_decision: Option<Decision>,
    /// Set by a round that switched, failed to switch or found no single usable master:
    /// the next round comes after `fast_interval` instead of `interval`.
    unsettled: bool,
    pacing: SwitchPacing,
    drift_cadence: DriftCadence,
    /// PgBouncer was found elsewhere than rebouncer put it; cleared by a switch.
    drifted: bool,
    persist: Persist,
    /// How the last write of the state file ended.
    state_error: Option<String>,
    /// A verdict put off for a check on a new connection raised the timelines; the state
    /// file is written at the next verdict kept.
    timelines_unwritten: bool,
    hold: Option<Hold>,
    /// The loss of the active master already had its pause (it ended or could not be
    /// made): no second one until that master answers again or another is switched to.
    loss_handled: bool,
    pass: Option<Pass>,
    next_round: Instant,
    next_heartbeat: Instant,
    /// The start-up's progress, until polling begins.
    boot: Boot,
    /// etcd mode: Patroni's leader key and what its rule remembers.
    leader: Option<Following>,
    /// The key changed during a pass: it is acted on when the pass ends.
    key_news: bool,
    /// When each lasting condition was last said.
    reminders: Reminders,
}

impl Policy {
    /// The policy of a new process: `nodes` servers, none heard from, the timelines the
    /// state file remembers. Nothing is believed of PgBouncer, and nothing polled, until
    /// the start-up ([`Input::Start`], see `machine/start.rs`) has run.
    pub fn new(settings: Settings, nodes: usize, timelines: Timelines, now: Instant) -> Policy {
        Policy {
            settings,
            nodes: (0..nodes).map(|_| Known::new(now)).collect(),
            believed: Believed::default(),
            memory: Memory::at_start(timelines, None),
            last_decision: None,
            unsettled: true,
            pacing: SwitchPacing::default(),
            drift_cadence: DriftCadence::default(),
            drifted: false,
            persist: Persist::default(),
            state_error: None,
            timelines_unwritten: false,
            hold: None,
            loss_handled: false,
            pass: None,
            next_round: now,
            next_heartbeat: now + HEARTBEAT,
            boot: Boot::New,
            leader: None,
            key_news: false,
            reminders: Reminders::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn nodes(&self) -> &[Known] {
        &self.nodes
    }

    pub fn believed(&self) -> Believed {
        self.believed
    }

    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// The verdict the last decision reached (none yet, or since a reload reordered the
    /// nodes).
    pub fn decision(&self) -> Option<&Decision> {
        self.last_decision.as_ref()
    }

    pub fn hold(&self) -> Option<&Hold> {
        self.hold.as_ref()
    }

    pub fn unsettled(&self) -> bool {
        self.unsettled
    }

    /// When [`Input::RoundDue`] is due.
    pub fn next_round(&self) -> Instant {
        self.next_round
    }

    /// When [`Input::HeartbeatDue`] is due.
    pub fn next_heartbeat(&self) -> Instant {
        self.next_heartbeat
    }

    /// When [`Input::HoldDeadline`] is due, while clients are held.
    pub fn hold_deadline(&self) -> Option<Instant> {
        self.hold.as_ref().map(|h| h.deadline)
    }

    /// Whether a failover pause can be made now.
    pub fn pausing(&self) -> Pausing {
        Pausing::new(self.settings.pause_on_failover, self.state_error.is_none())
    }

    /// Take in what happened at `now`; the commands to perform, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        match input {
            Input::Start => self.begin_start(&mut out),
            Input::PgBouncer(answer) => self.pgbouncer_answered(answer, now, &mut out),
            Input::PingDue => self.ping_due(&mut out),
            // The timers run once polling has begun.
            Input::RoundDue | Input::HeartbeatDue if !self.polling() => {}
            Input::RoundDue => self.begin_round(now, &mut out),
            Input::ConnectionClosed { .. } => {
                // Something changed, maybe more than that server: everyone is asked now.
                self.unsettled = true;
                self.retry_failing_now(now);
                self.begin_round(now, &mut out);
            }
            Input::HeartbeatDue => self.heartbeat(now, &mut out),
            Input::HoldDeadline => {
                if self.pass.is_none() {
                    self.pass = Some(Pass {
                        end: End::Timers,
                        stage: Stage::Deciding,
                    });
                    self.decide(now, &mut out);
                }
            }
            Input::Answer { node, answer } => {
                let changed = self.record(node, answer, now);
                if self.pass.is_none() {
                    if changed {
                        self.pass = Some(Pass {
                            end: End::Report,
                            stage: Stage::Deciding,
                        });
                        self.decide(now, &mut out);
                    } else {
                        self.end_report(now);
                    }
                }
            }
            Input::NotAsked { node } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.busy = false;
                }
            }
            Input::ChecksOver => match self.stage() {
                Some(Stage::Checks) if self.leader_probe_over(&mut out) => {
                    self.finish(now, &mut out)
                }
                Some(Stage::Checks) => self.look_at_link(now, &mut out),
                Some(Stage::Recheck) => {
                    let d = self.verdict();
                    self.check_target(d, now, &mut out);
                }
                Some(Stage::Target) => {
                    let d = self.verdict();
                    self.remember(d, now, &mut out);
                }
                _ => {}
            },
            Input::Link {
                behind,
                target,
                session_closed,
            } => {
                if self.stage() == Some(Stage::Link) {
                    self.link_seen(behind, target, session_closed, now, &mut out);
                }
            }
            Input::Routes(routes) => {
                if self.stage() == Some(Stage::Routes) {
                    if let Routes::Differ(what) = routes {
                        let active = self.believed.active;
                        self.drift(active, None, Some(what), &mut out);
                    }
                    self.decide(now, &mut out);
                }
            }
            Input::Linked { behind } => self.linked(behind, &mut out),
            Input::Written { error } => {
                self.state_error = error;
                self.say_state_file(now, &mut out);
                if let Some(Stage::Written(d)) = self.stage() {
                    self.consider_loss(d, now, &mut out);
                }
                self.state_file_tried(&mut out);
            }
            Input::StateFile { error } => self.state_error = error,
            Input::Paused(paused) => {
                if let Some(Stage::Pausing(d)) = self.stage() {
                    if let Some(p) = paused {
                        self.hold_started(p);
                        out.push(Command::Publish);
                    }
                    self.act(d, now, &mut out);
                }
            }
            Input::Switched(s) => {
                if let Some(Stage::Switching(to)) = self.stage() {
                    self.switched(s, now, &mut out);
                    self.after_switch(to, now, &mut out);
                }
            }
            Input::Reloading { removed } => {
                if self
                    .hold
                    .as_ref()
                    .is_some_and(|h| removed.contains(&h.lost))
                    && let Some(hold) = self.hold.take()
                {
                    let lost = hold.lost;
                    out.push(Command::EndHold {
                        hold,
                        release: Release::Removed(lost),
                    });
                }
                self.say_removed(&removed, now, &mut out);
            }
            Input::Reloaded {
                from,
                old_count,
                settings,
                console_changed,
                changed,
            } => {
                self.reloaded(
                    &from,
                    old_count,
                    settings,
                    console_changed,
                    changed,
                    now,
                    &mut out,
                );
                self.reloaded_while_waiting(now);
            }
            Input::Leader(key) => self.leader_heard(key, now, &mut out),
            // Before the first round nothing was changed that would need undoing.
            Input::Shutdown if !self.polling() => {}
            Input::Shutdown => {
                if let Some(hold) = self.hold.take() {
                    // PgBouncer keeps a pause after its admin session is gone: nobody else
                    // would ever resume these clients.
                    out.push(Command::EndHold {
                        hold,
                        release: Release::Shutdown,
                    });
                }
                out.push(Command::SayShutdown);
            }
        }
        out
    }

    fn stage(&self) -> Option<Stage> {
        self.pass.as_ref().map(|p| p.stage.clone())
    }

    fn wait(&mut self, stage: Stage) {
        if let Some(p) = &mut self.pass {
            p.stage = stage;
        }
    }

    /// decide's verdict on what the servers answered, with the leader key's rule applied
    /// in etcd mode.
    fn verdict(&mut self) -> Decision {
        let observed: Vec<Seen> = self.nodes.iter().map(Known::seen).collect();
        let mut decision = decide::decide(self.believed, &observed, &self.memory);
        if let Some(f) = &mut self.leader {
            decision.action = f.judge(&decision);
        }
        decision
    }

    fn until(&self, now: Instant) -> Instant {
        now + self.settings.timeout + COLLECT_GRACE
    }

    /// Ask every server that is due. One that hung at its last check is asked again but
    /// not waited for, so it cannot slow down the rounds that have to notice a newly
    /// promoted standby; one that keeps failing is asked less and less often.
    fn begin_round(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.pass.is_some() {
            return;
        }
        let ask = self.leader_round_begins(now);
        let mut nodes = Vec::new();
        let mut wait_for = Vec::new();
        for (id, n) in self.nodes.iter_mut().enumerate() {
            if n.busy || !n.backoff.due(now) || !ask.includes(id) {
                continue;
            }
            n.busy = true;
            nodes.push(id);
            if !n.hung {
                wait_for.push(id);
            }
        }
        self.pass = Some(Pass {
            end: End::Round,
            stage: Stage::Checks,
        });
        out.push(Command::Check {
            nodes,
            fresh: false,
            wait_for,
            until: Some(self.until(now)),
            round: true,
        });
    }

    /// Between rounds of a settled cluster, ask the active master again on its kept
    /// connection. Its answer arrives like any late report; a timeout marks it down and
    /// starts fast rounds.
    fn heartbeat(&mut self, now: Instant, out: &mut Vec<Command>) {
        self.next_heartbeat = now + HEARTBEAT;
        let s = &self.settings;
        if !s.keep_connections || s.interval <= HEARTBEAT || self.unsettled {
            return;
        }
        let Some(active) = self.believed.active.filter(|_| self.believed.confirmed) else {
            return;
        };
        let n = &mut self.nodes[active];
        if n.state == Some(NodeState::Master) && !n.busy {
            n.busy = true;
            out.push(Command::Check {
                nodes: vec![active],
                fresh: false,
                wait_for: Vec::new(),
                until: None,
                round: false,
            });
        }
    }

    /// PgBouncer must be where rebouncer put it: once the active node is confirmed, the
    /// symlink is read every round.
    fn look_at_link(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.believed.active.is_some() && self.believed.confirmed {
            self.wait(Stage::Link);
            out.push(Command::CheckLink);
        } else {
            self.decide(now, out);
        }
    }

    /// The symlink names `behind`: anything but the active node is drift. The routes are
    /// compared every few rounds, and at once when PgBouncer closed the admin session.
    fn link_seen(
        &mut self,
        behind: Option<NodeId>,
        target: Option<std::path::PathBuf>,
        session_closed: bool,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        if behind != self.believed.active {
            self.drift(behind, target, None, out);
        } else if let Some(node) = behind
            && self.drift_cadence.round(session_closed)
        {
            self.wait(Stage::Routes);
            out.push(Command::CompareRoutes {
                node,
                restarted: session_closed,
            });
            return;
        }
        self.decide(now, out);
    }

    /// PgBouncer drifted: the active node is unconfirmed, and the decision then switches
    /// back through the normal, confirmed switch.
    fn drift(
        &mut self,
        behind: Option<NodeId>,
        target: Option<std::path::PathBuf>,
        routes: Option<String>,
        out: &mut Vec<Command>,
    ) {
        out.push(Command::Drifted {
            was: self.believed.active,
            behind,
            target,
            routes,
        });
        self.drifted = true;
        self.believed = Believed {
            active: behind,
            confirmed: false,
        };
        self.unsettled = true;
    }

    /// The verdict. Masters whose verdict depends on new connections (split brain, a
    /// master refusing new logins) are first asked on one, each at most every
    /// [`checks::RECHECK_EVERY`]: kept sessions can outlive a postmaster that refuses
    /// everyone else, and what a new connection finds may only make the verdict more
    /// cautious.
    fn decide(&mut self, now: Instant, out: &mut Vec<Command>) {
        let decision = self.verdict();
        // A master's timeline is known once it has answered, even if the verdict waits for
        // a check on a new connection that finds it gone: the verdict after that check
        // must still refuse a master on a lower timeline.
        if decision.memory.timelines != self.memory.timelines {
            self.memory.timelines = decision.memory.timelines.clone();
            self.timelines_unwritten = true;
        }
        let mut asked = Vec::new();
        if self.settings.keep_connections {
            for id in checks::masters_to_recheck(&decision) {
                let n = &mut self.nodes[id];
                if checks::recheck_due(n.rechecked, now) && !n.busy {
                    n.busy = true;
                    n.rechecked = Some(now);
                    asked.push(id);
                }
            }
        }
        if asked.is_empty() {
            return self.check_target(decision, now, out);
        }
        self.wait(Stage::Recheck);
        out.push(Command::Check {
            nodes: asked.clone(),
            fresh: true,
            wait_for: asked,
            until: Some(self.until(now)),
            round: false,
        });
    }

    /// Whether the node about to receive PgBouncer must first be asked on a new
    /// connection (see [`checks::target_needs_fresh_check`]).
    fn needs_fresh_check(&self, to: NodeId) -> bool {
        checks::target_needs_fresh_check(
            self.settings.keep_connections,
            self.nodes[to].accepted_new,
        )
    }

    fn check_target(&mut self, decision: Decision, now: Instant, out: &mut Vec<Command>) {
        if let Action::Switch(to) = decision.action
            && self.needs_fresh_check(to)
            && !self.nodes[to].busy
        {
            let n = &mut self.nodes[to];
            n.busy = true;
            n.rechecked = Some(now);
            self.wait(Stage::Target);
            out.push(Command::Check {
                nodes: vec![to],
                fresh: true,
                wait_for: vec![to],
                until: Some(self.until(now)),
                round: false,
            });
            return;
        }
        self.remember(decision, now, out);
    }

    /// Keep the verdict and its memory; write the state file when the timelines rose or
    /// the last write failed (retried every time until it works).
    fn remember(&mut self, decision: Decision, now: Instant, out: &mut Vec<Command>) {
        // Kept before acting: what the steps below publish shows this decision.
        self.last_decision = Some(decision.clone());
        if let Some(held) = self.leader.as_mut().and_then(Following::kept) {
            out.push(Command::LeaderHeld(held));
        }
        let unwritten = std::mem::take(&mut self.timelines_unwritten);
        let rose = unwritten || decision.memory.timelines != self.memory.timelines;
        self.memory = decision.memory.clone();
        if Persist::must_write(rose, self.state_error.is_some()) {
            out.push(Command::WriteTimelines(self.memory.timelines.clone()));
            self.wait(Stage::Written(decision));
            return;
        }
        self.say_state_file(now, out);
        self.consider_loss(decision, now, out);
    }

    fn say_state_file(&mut self, now: Instant, out: &mut Vec<Command>) {
        let said = self.persist.observe(self.state_error.as_deref(), now);
        if !said.is_empty() {
            out.push(Command::SayStateFile(said));
        }
    }

    /// The pause's start: when the active master is lost and nothing can be switched to
    /// right now (see [`pause::on_loss`]).
    fn consider_loss(&mut self, decision: Decision, now: Instant, out: &mut Vec<Command>) {
        let said = self
            .reminders
            .verdict(&decision, self.believed.active, &self.nodes, now);
        out.push(Command::LogDecision(said));
        let states: Vec<Option<NodeState>> = self.nodes.iter().map(|n| n.state).collect();
        let key = self.leader.as_ref().map(|f| &f.key);
        if pause::master_back(self.believed.active, &decision, &states, key) {
            self.loss_handled = false;
        }
        if self.hold.is_none() {
            let start = pause::on_loss(
                self.pausing(),
                self.loss_handled,
                self.believed,
                &decision,
                &states,
                key,
            );
            match (start, self.believed.active) {
                (Some(Start::Hold(why)), Some(lost)) => {
                    self.loss_handled = true;
                    out.push(Command::Pause { lost, why });
                    self.wait(Stage::Pausing(decision));
                    return;
                }
                (Some(Start::CannotRecord(why)), _) => {
                    self.loss_handled = true;
                    out.push(Command::CannotHold(why));
                }
                _ => {}
            }
        }
        self.act(decision, now, out);
    }

    fn hold_started(&mut self, p: Paused) {
        if let Some(lost) = self.believed.active {
            self.hold = Some(Hold {
                databases: p.databases,
                lost,
                started: p.started,
                since: p.since,
                held_since: p.held_since,
                deadline: pause::hold_deadline(
                    p.started,
                    p.held_since,
                    self.settings.pause_timeout,
                ),
            });
        }
    }

    /// Switch when the verdict says so and pacing allows; otherwise end a hold the
    /// verdict or the clock has made pointless, and finish what earlier steps left.
    fn act(&mut self, decision: Decision, now: Instant, out: &mut Vec<Command>) {
        self.unsettled = checks::fast_rounds(&decision, self.hold.is_some());
        if let Action::Switch(to) = decision.action {
            // A target still unproven on a new connection (its check is under way or did
            // not answer in time) is not switched to: its report decides again.
            if !self.needs_fresh_check(to)
                && self.pacing.may_switch(to, now, self.settings.interval)
            {
                let from = self.believed.active;
                let reason = match from {
                    _ if self.drifted => SwitchReason::Drift,
                    None => SwitchReason::Initial,
                    Some(f) if f == to => SwitchReason::Confirm,
                    Some(_) => SwitchReason::Failover,
                };
                out.push(Command::Switch {
                    to,
                    from,
                    reason,
                    held: self.hold.as_ref().map(|h| h.databases.clone()),
                });
                self.wait(Stage::Switching(to));
                return;
            }
            return self.after_switch(to, now, out);
        }
        let states: Vec<Option<NodeState>> = self.nodes.iter().map(|n| n.state).collect();
        let key = self.leader.as_ref().map(|f| &f.key);
        let over = self
            .hold
            .as_ref()
            .and_then(|h| pause::hold_over(h.lost, h.deadline, now, &decision, &states, key));
        if let Some(end) = over
            && let Some(hold) = self.hold.take()
        {
            out.push(Command::EndHold {
                hold,
                release: Release::End(end),
            });
        }
        // Not while clients are held: the retry RESUMEs what the state file lists as
        // resume pending, which would end the pause; the KILL waits for the pause to end.
        if self.hold.is_none() {
            out.push(Command::FinishPending);
        }
        self.finish(now, out);
    }

    fn switched(&mut self, s: Switched, now: Instant, out: &mut Vec<Command>) {
        match s {
            Switched::Done {
                to,
                started,
                waiting,
                resume_failed,
            } => {
                out.extend(self.reminders.switch_worked(to, now));
                self.pacing.attempted(to, started, pacing::Outcome::Done);
                self.loss_handled = false;
                if let Some(hold) = self.hold.take() {
                    out.push(Command::HoldSwitched {
                        hold,
                        to,
                        waiting,
                        resume_failed,
                    });
                }
                self.believed = Believed {
                    active: Some(to),
                    confirmed: true,
                };
                self.drifted = false;
                // Check the routes at the next round: that also opens the admin session
                // whose closing tells of a PgBouncer restart.
                self.drift_cadence.soon();
            }
            Switched::Failed {
                to,
                error,
                started,
                not_taken,
                behind,
            } => {
                out.extend(self.reminders.switch_failed(SwitchError { to, error }, now));
                let outcome = if not_taken {
                    pacing::Outcome::NotTaken
                } else {
                    pacing::Outcome::Failed
                };
                self.pacing.attempted(to, started, outcome);
                // The link may or may not have moved; believe only what it says now.
                self.believed = Believed {
                    active: behind,
                    confirmed: false,
                };
            }
        }
    }

    fn after_switch(&mut self, to: NodeId, now: Instant, out: &mut Vec<Command>) {
        if self
            .hold
            .as_ref()
            .is_some_and(|h| pause::switch_outlasted_hold(h.deadline, now))
            && let Some(hold) = self.hold.take()
        {
            // The switch keeps failing: clients get errors rather than wait longer.
            out.push(Command::EndHold {
                hold,
                release: Release::NoSwitch(to),
            });
        }
        self.finish(now, out);
    }

    /// The pass is over: show it, and set the round timer.
    fn finish(&mut self, now: Instant, out: &mut Vec<Command>) {
        out.push(Command::Publish);
        let Some(pass) = self.pass.take() else {
            return;
        };
        match pass.end {
            End::Round => {
                out.push(Command::RoundDone);
                self.next_round = self.round_over_next(now);
            }
            End::Key => self.next_round = now + self.round_pause(),
            End::Report => self.end_report(now),
            End::Timers => {}
        }
        if std::mem::take(&mut self.key_news) {
            self.key_changed(now, out);
        }
    }

    fn end_report(&mut self, now: Instant) {
        if self.unsettled {
            self.next_round = self.next_round.min(now + self.settings.fast_interval);
        }
    }
}

mod known;
mod leader;
mod reload;
mod reminders;
mod start;

pub use known::Known;
pub use reminders::REMINDER_EVERY;
use reminders::Reminders;
use start::Boot;
pub use start::PGBOUNCER_RETRY;

#[cfg(test)]
mod tests;
