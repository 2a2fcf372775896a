//! The decision, kept pure: given what rebouncer believes about PgBouncer, what it
//! remembers, and what the servers answered, say what the cluster looks like and whether
//! to switch. No I/O, no clock, so every rule can be tested on its own.
//!
//! The rules, most cautious first:
//! - A master on a lower timeline than the highest the cluster has shown is a **stale
//!   primary** (an old primary that came back without being rewound): never a target.
//! - Several masters that are not stale: **split brain**, refuse.
//! - A master that answered on its kept session but refuses new logins is not a target
//!   (PgBouncer could not log in either); it still counts as a master for split brain.
//! - A failed check may only make a verdict more cautious: when a split brain "ends"
//!   because one of its masters stopped answering (not because it became a standby), the
//!   other one is not switched to.
//! - Only a master's timeline is remembered (and written to the state file). A standby
//!   that reports a newer timeline makes the masters below it stale too, but only while it
//!   reports it: a standby can run ahead of the primary for reasons that say nothing about
//!   the primary, and remembering it would fence the real primary for good.
//! - **A start without memory waits for the linked node.** With no remembered timeline
//!   (first install, the upgrade from the Go tool, a lost state directory), nothing tells
//!   an old primary that came back from the real one if the real one is hung: both facts
//!   that would (its timeline, or our memory of it) are missing. So PgBouncer is not
//!   moved away from the node the symlink points at while that node only times out; it
//!   is moved as soon as that node has been heard from once since start: it answered
//!   (as a standby, as a stale master, while refusing new logins) or it refused the
//!   connection or failed with an error, which a hung server cannot do. A cluster that is
//!   healthy at start is therefore followed in the first round, as before: the linked
//!   node answers at once, or is stopped and refuses, or the symlink names no node. The
//!   wait only lasts while the linked node stays silent; stopping it for good, or taking
//!   it out of the configuration, ends it.

pub use crate::node::{NodeId, NodeState, SystemId, Timeline, Timelines};

/// What the loop knows of one server when it decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub state: NodeState,
    pub timeline: Option<Timeline>,
    /// Its kept session answers, but a new connection was refused or timed out.
    pub refuses_new: bool,
    /// Down without any answer: the check ran out of time, or the server was never
    /// checked yet. A server that refused the connection or failed with an error is down
    /// but not silent: a hung server could not have done either.
    pub silent: bool,
}

impl Seen {
    pub fn new(state: NodeState) -> Seen {
        Seen {
            state,
            timeline: None,
            refuses_new: false,
            silent: false,
        }
    }
    /// Down with no answer at all within the timeout.
    pub fn silent() -> Seen {
        Seen {
            silent: true,
            ..Seen::new(NodeState::Down)
        }
    }
    /// It answered, or it failed in a way a hung server cannot (refused, an error).
    fn heard(&self) -> bool {
        self.state != NodeState::Down || !self.silent
    }
    pub fn on(state: NodeState, timeline: u32) -> Seen {
        Seen {
            timeline: Some(Timeline {
                timeline,
                system: None,
            }),
            ..Seen::new(state)
        }
    }
}

/// The shape of the cluster after a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cluster {
    /// Exactly one master that is not stale.
    OneMaster(NodeId),
    /// No server answered as a master that is not stale.
    NoMaster,
    /// More than one master on the same, highest timeline (or whose timelines cannot be
    /// compared), in file order. Acting on this could send writes to the wrong one.
    SplitBrain(Vec<NodeId>),
}

/// Why the one master is not switched to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It answers on the kept session but refuses new logins: PgBouncer could not use it.
    RefusesNewLogins(NodeId),
    /// It was one of the masters of a split brain that has not been resolved: the others
    /// stopped answering, none of them came back as a standby.
    Unresolved {
        master: NodeId,
        unreachable: Vec<NodeId>,
    },
    /// rebouncer started with no remembered timeline and the node PgBouncer points at has
    /// only timed out since: it may be the real primary, hung, and `master` an old one.
    LinkedSilentSinceStart { master: NodeId, linked: NodeId },
}

/// A master on a lower timeline than the cluster has shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stale {
    pub node: NodeId,
    pub timeline: u32,
    /// The highest timeline seen for its cluster.
    pub highest: u32,
    /// The standby that reports `highest` this round, when no master's remembered
    /// timeline is that high: the fence lasts only while that standby reports it.
    pub standby: Option<NodeId>,
}

/// What rebouncer believes PgBouncer points at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Believed {
    /// The node whose config the symlink points at, if any.
    pub active: Option<NodeId>,
    /// True once a switch (or, at start-up, a reload) to `active` was confirmed by asking
    /// PgBouncer where it points. False at start-up and after a failed switch, so the
    /// next round tries again.
    pub confirmed: bool,
}

/// What the decision remembers from one round to the next. The timelines also survive
/// restarts (the state file); the contested masters only live as long as the process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// The highest timeline seen per cluster.
    pub timelines: Timelines,
    /// The masters of the last split brain that has not been resolved.
    pub contested: Vec<NodeId>,
    /// At a start with no remembered timeline: the node the symlink pointed at, until it
    /// has been heard from (see the module's rules).
    pub unheard_link: Option<NodeId>,
}

impl Memory {
    /// The memory of a new process: the timelines from the state file and the node the
    /// symlink points at. Only with no timeline remembered is that node waited for.
    pub fn at_start(timelines: Timelines, linked: Option<NodeId>) -> Memory {
        Memory {
            unheard_link: linked.filter(|_| timelines.is_empty()),
            timelines,
            contested: Vec::new(),
        }
    }
}

/// What to do after a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Leave PgBouncer alone.
    Nothing,
    /// Point PgBouncer at this node and confirm it.
    Switch(NodeId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub cluster: Cluster,
    /// Stale primaries, in file order.
    pub stale: Vec<Stale>,
    pub refusal: Option<Refusal>,
    pub action: Action,
    /// The memory to keep for the next round.
    pub memory: Memory,
}

/// The standby reporting the highest timeline of a cluster this round (the first in file
/// order among equals), with that timeline.
fn standby_ahead(observed: &[Seen], system: SystemId) -> Option<(NodeId, u32)> {
    let mut best: Option<(NodeId, u32)> = None;
    for (id, seen) in observed.iter().enumerate() {
        if seen.state != NodeState::Standby {
            continue;
        }
        if let Some(t) = seen.timeline.filter(|t| t.system == system)
            && best.is_none_or(|(_, b)| t.timeline > b)
        {
            best = Some((id, t.timeline));
        }
    }
    best
}

/// Decide after a round, from the servers' answers in file order.
pub fn decide(believed: Believed, observed: &[Seen], memory: &Memory) -> Decision {
    let mut next = memory.clone();
    // Only a master's timeline is remembered: a standby can be ahead of the primary for
    // reasons that say nothing of it (a mistaken promotion rolled back into a standby, a
    // shared archive followed with recovery_target_timeline=latest), and such a memory
    // would fence the real primary until someone edits the state file.
    for seen in observed.iter().filter(|s| s.state == NodeState::Master) {
        if let Some(t) = seen.timeline {
            next.timelines.raise(t.system, t.timeline);
        }
    }

    if let Some(l) = next.unheard_link
        && (believed.active != Some(l) || observed.get(l).is_none_or(Seen::heard))
    {
        next.unheard_link = None;
    }

    let mut stale = Vec::new();
    let mut live = Vec::new();
    for (id, seen) in observed.iter().enumerate() {
        if seen.state != NodeState::Master {
            continue;
        }
        let behind = seen.timeline.and_then(|t| {
            let remembered = next.timelines.highest(t.system);
            // A standby on a newer timeline still fences, while it reports it.
            let (highest, standby) = match standby_ahead(observed, t.system) {
                Some((s, ahead)) if remembered.is_none_or(|r| ahead > r) => (ahead, Some(s)),
                _ => (remembered?, None),
            };
            (t.timeline < highest).then_some(Stale {
                node: id,
                timeline: t.timeline,
                highest,
                standby,
            })
        });
        match behind {
            Some(s) => stale.push(s),
            None => live.push(id),
        }
    }

    let (cluster, refusal) = match live.as_slice() {
        [] => (Cluster::NoMaster, None),
        [m] => {
            let m = *m;
            // A contested master is free again once every other one was seen as a standby
            // (demoted), as stale, or was taken out of the running otherwise; one that
            // merely stopped answering may still be the real primary.
            let unreachable: Vec<NodeId> = next
                .contested
                .iter()
                .copied()
                .filter(|&c| c != m && observed.get(c).is_none_or(|s| s.state == NodeState::Down))
                .collect();
            let refusal = if next.contested.contains(&m) && !unreachable.is_empty() {
                Some(Refusal::Unresolved {
                    master: m,
                    unreachable,
                })
            } else {
                next.contested.clear();
                observed[m]
                    .refuses_new
                    .then_some(Refusal::RefusesNewLogins(m))
            };
            let refusal = refusal.or_else(|| {
                next.unheard_link
                    .filter(|&l| l != m)
                    .map(|linked| Refusal::LinkedSilentSinceStart { master: m, linked })
            });
            (Cluster::OneMaster(m), refusal)
        }
        many => {
            // Remember every master of this split brain, and those of an earlier one that
            // are still unreachable: the verdict only resolves on positive evidence.
            let mut contested: Vec<NodeId> = many.to_vec();
            for &c in &memory.contested {
                if !contested.contains(&c)
                    && observed.get(c).is_none_or(|s| s.state == NodeState::Down)
                {
                    contested.push(c);
                }
            }
            contested.sort_unstable();
            next.contested = contested;
            (Cluster::SplitBrain(many.to_vec()), None)
        }
    };

    let action = match (&cluster, &refusal) {
        (Cluster::OneMaster(m), None) if believed.active != Some(*m) || !believed.confirmed => {
            Action::Switch(*m)
        }
        _ => Action::Nothing,
    };
    Decision {
        cluster,
        stale,
        refusal,
        action,
        memory: next,
    }
}

#[cfg(test)]
mod tests;
