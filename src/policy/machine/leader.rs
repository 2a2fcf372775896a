//! The etcd mode in the policy: news of Patroni's leader key starts the checks, the key's
//! rule ([`crate::policy::leader`]) is applied to every verdict (see `Policy::verdict`),
//! and the round timer follows the rule instead of `interval`.

use std::time::{Duration, Instant};

use super::{End, Pass, Policy, Stage};
use crate::decide::NodeState;
use crate::policy::leader::{Ask, Following, Key};
use crate::policy::messages::Command;

impl Policy {
    /// Follow Patroni's leader key: nothing is switched until it is heard.
    pub fn follow_leader(&mut self) {
        self.leader = Some(Following::default());
    }

    /// The leader key as the rule last saw it (etcd mode only).
    pub fn leader(&self) -> Option<&Following> {
        self.leader.as_ref()
    }

    /// The watch said `key`. With a leader named (or etcd gone or back), every server
    /// is checked now: the leader to confirm it, the others for the split-brain and
    /// stale-primary rules, and with etcd away whether PgBouncer's server still answers
    /// as the master. With no key, nothing can be switched: the verdict only is taken
    /// again (a switchover deletes the key just before naming the next leader).
    pub(super) fn leader_heard(&mut self, key: Key, now: Instant, out: &mut Vec<Command>) {
        let Some(f) = &mut self.leader else {
            return;
        };
        f.heard(key);
        if self.pass.is_some() {
            // A verdict still to come reads the key as it is now; one already taken does
            // not, so the key is acted on again when the pass ends (see `finish`).
            self.key_news = true;
            return;
        }
        self.key_changed(now, out);
    }

    pub(super) fn key_changed(&mut self, now: Instant, out: &mut Vec<Command>) {
        let Some(f) = &self.leader else {
            return;
        };
        if f.key == Key::Deleted {
            self.pass = Some(Pass {
                end: End::Key,
                stage: Stage::Deciding,
            });
            self.decide(now, out);
        } else {
            self.retry_failing_now(now);
            self.begin_round(now, out);
        }
    }

    /// The wait until the next round: the leader rule's in etcd mode, else `interval`,
    /// or `fast_interval` while unsettled.
    pub(super) fn round_pause(&self) -> Duration {
        let s = &self.settings;
        let Some(f) = &self.leader else {
            return if self.unsettled {
                s.fast_interval
            } else {
                s.interval
            };
        };
        let (on_leader, down) = self.leader_standing(f);
        f.round_pause(on_leader, down, s.fast_interval, s.interval)
    }

    /// When the next round is due, a round having ended at `now`: in etcd mode as the
    /// leader rule says (timed from the round's start), else after [`Policy::round_pause`].
    pub(super) fn round_over_next(&self, now: Instant) -> Instant {
        let Some(f) = &self.leader else {
            return now + self.round_pause();
        };
        let s = &self.settings;
        let (on_leader, down) = self.leader_standing(f);
        f.next_round_at(now, on_leader, down, s.fast_interval, s.interval)
    }

    /// PgBouncer is confirmed on the candidate, which answered as master; some server is
    /// down (or not heard yet).
    fn leader_standing(&self, f: &Following) -> (bool, bool) {
        let down = self
            .nodes
            .iter()
            .any(|n| n.state.is_none_or(|s| s == NodeState::Down));
        let on_leader = f.candidate().is_some_and(|c| {
            self.believed.active == Some(c)
                && self.believed.confirmed
                && self.nodes.get(c).and_then(|n| n.state) == Some(NodeState::Master)
        });
        (on_leader, down)
    }

    /// A round begins: which servers it asks (in etcd mode, see
    /// [`Following::round_begins`]; else every server due).
    pub(super) fn leader_round_begins(&mut self, now: Instant) -> Ask {
        let Some(f) = self.leader.as_mut() else {
            return Ask::Every;
        };
        let state = f
            .candidate()
            .and_then(|c| self.nodes.get(c))
            .and_then(|n| n.state);
        f.round_begins(
            now,
            state,
            self.settings.fast_interval,
            self.settings.interval,
        )
    }

    /// The round's checks are over: true when it was a probe of the candidate alone,
    /// which ends the pass without a verdict (see [`Following::probe_over`]).
    pub(super) fn leader_probe_over(&mut self, out: &mut Vec<Command>) -> bool {
        let Some(f) = &mut self.leader else {
            return false;
        };
        let Some(c) = f.probing() else {
            return false;
        };
        let state = self.nodes.get(c).and_then(|n| n.state);
        if let Some(held) = f.probe_over(state) {
            out.push(Command::LeaderHeld(held));
        }
        true
    }
}
