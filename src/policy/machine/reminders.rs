//! When a lasting condition is said: the verdict's (no master, split brain, stale
//! primaries, a refusal to switch) and a switch that keeps failing. Each is said once when
//! it starts, then reminded at most every [`REMINDER_EVERY`], and once when it ends; the
//! executor logs what it is told, when it is told.

use std::time::{Duration, Instant};

use super::{Known, Policy};
use crate::decide::{Cluster, Decision, NodeId, Refusal};
use crate::policy::messages::{Command, Condition, Lasting, Refused, SwitchError};
use crate::throttle::{Say, Throttle};

/// How often a lasting condition is said again.
pub const REMINDER_EVERY: Duration = Duration::from_secs(60);

/// What is going on, and when it was last said.
#[derive(Debug)]
pub(super) struct Reminders {
    cluster: Throttle<Condition>,
    stale: Throttle<Vec<NodeId>>,
    refusal: Throttle<Refused>,
    switch: Throttle<SwitchError>,
}

impl Default for Reminders {
    fn default() -> Self {
        Reminders {
            cluster: Throttle::new(REMINDER_EVERY),
            stale: Throttle::new(REMINDER_EVERY),
            refusal: Throttle::new(REMINDER_EVERY),
            switch: Throttle::new(REMINDER_EVERY),
        }
    }
}

impl Reminders {
    /// What is due of the verdict's conditions, with PgBouncer pointed at `active`.
    pub(super) fn verdict(
        &mut self,
        decision: &Decision,
        active: Option<NodeId>,
        nodes: &[Known],
        now: Instant,
    ) -> Lasting {
        let condition = match &decision.cluster {
            Cluster::OneMaster(_) => None,
            Cluster::NoMaster => Some(Condition::NoMaster),
            Cluster::SplitBrain(m) => Some(Condition::SplitBrain(m.clone())),
        };
        let stale: Vec<NodeId> = decision.stale.iter().map(|s| s.node).collect();
        let refused = decision.refusal.clone().map(|refusal| Refused {
            refuses_new: match &refusal {
                Refusal::RefusesNewLogins(m) => nodes.get(*m).and_then(|n| n.refuses_new.clone()),
                _ => None,
            },
            refusal,
            active,
        });
        Lasting {
            cluster: self.cluster.observe(condition, now),
            stale: self
                .stale
                .observe((!stale.is_empty()).then_some(stale), now),
            stale_found: decision.stale.clone(),
            refusal: self.refusal.observe(refused, now),
        }
    }

    /// A reload is about to drop `removed`: a condition that names one of them ends now,
    /// while its names can still be said.
    pub(super) fn removing(&mut self, removed: &[NodeId], now: Instant) -> Lasting {
        let gone = |id: &NodeId| removed.contains(id);
        let mut out = Lasting::default();
        if let Some(Condition::SplitBrain(m)) = self.cluster.ongoing()
            && m.iter().any(gone)
        {
            out.cluster.extend(self.cluster.end(now));
        }
        if self.stale.ongoing().is_some_and(|s| s.iter().any(gone)) {
            out.stale.extend(self.stale.end(now));
        }
        if self.refusal.ongoing().is_some_and(|r| {
            r.active.is_some_and(|a| gone(&a)) || refusal_nodes(&r.refusal).any(|n| gone(&n))
        }) {
            out.refusal.extend(self.refusal.end(now));
        }
        out
    }

    /// A reload moved the nodes: what is going on names them by their new places. A
    /// switch failure to a node no longer there is forgotten unsaid; the verdict's
    /// conditions that named one were said to end at [`Reminders::removing`].
    pub(super) fn remap(&mut self, remap: impl Fn(NodeId) -> Option<NodeId>) {
        let all = |ids: &[NodeId]| ids.iter().map(|i| remap(*i)).collect::<Option<Vec<_>>>();
        self.cluster.rename(|c| match c {
            Condition::NoMaster => Some(Condition::NoMaster),
            Condition::SplitBrain(m) => all(m).map(Condition::SplitBrain),
        });
        self.stale.rename(|s| all(s));
        self.refusal.rename(|r| {
            let refusal = match &r.refusal {
                Refusal::RefusesNewLogins(m) => Refusal::RefusesNewLogins(remap(*m)?),
                Refusal::Unresolved {
                    master,
                    unreachable,
                } => Refusal::Unresolved {
                    master: remap(*master)?,
                    unreachable: all(unreachable)?,
                },
                Refusal::LinkedSilentSinceStart { master, linked } => {
                    Refusal::LinkedSilentSinceStart {
                        master: remap(*master)?,
                        linked: remap(*linked)?,
                    }
                }
            };
            let active = match r.active {
                Some(a) => Some(remap(a)?),
                None => None,
            };
            Some(Refused {
                refusal,
                active,
                refuses_new: r.refuses_new.clone(),
            })
        });
        self.switch.rename(|e| {
            Some(SwitchError {
                to: remap(e.to)?,
                error: e.error.clone(),
            })
        });
    }

    /// A switch failed: its first failure, or a reminder when one is due.
    pub(super) fn switch_failed(&mut self, error: SwitchError, now: Instant) -> Option<Command> {
        self.switch
            .observe(Some(error), now)
            .into_iter()
            // An earlier failure that another replaces is not said to end: it did not work.
            .find(|say| !matches!(say, Say::Ended { .. }))
            .map(Command::SwitchFailing)
    }

    /// A switch to `to` worked: if switches were failing, that it works again.
    pub(super) fn switch_worked(&mut self, to: NodeId, now: Instant) -> Option<Command> {
        match self.switch.end(now)? {
            Say::Ended { lasted, .. } => Some(Command::SwitchRecovered { to, lasted }),
            _ => None,
        }
    }
}

fn refusal_nodes(r: &Refusal) -> impl Iterator<Item = NodeId> + '_ {
    let (first, others): (Vec<NodeId>, &[NodeId]) = match r {
        Refusal::RefusesNewLogins(m) => (vec![*m], &[]),
        Refusal::Unresolved {
            master,
            unreachable,
        } => (vec![*master], unreachable),
        Refusal::LinkedSilentSinceStart { master, linked } => (vec![*master, *linked], &[]),
    };
    first.into_iter().chain(others.iter().copied())
}

impl Policy {
    /// A reload is about to drop `removed`: say the end of what names them.
    pub(super) fn say_removed(&mut self, removed: &[NodeId], now: Instant, out: &mut Vec<Command>) {
        let ended = self.reminders.removing(removed, now);
        if !ended.is_empty() {
            out.push(Command::LogDecision(ended));
        }
    }
}
