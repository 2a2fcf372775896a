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
mod tests {
    use super::NodeState::{Down, Master, Standby};
    use super::*;

    fn at(active: usize) -> Believed {
        Believed {
            active: Some(active),
            confirmed: true,
        }
    }

    fn plain(states: &[NodeState]) -> Vec<Seen> {
        states.iter().map(|s| Seen::new(*s)).collect()
    }

    fn run(believed: Believed, states: &[NodeState]) -> Decision {
        decide(believed, &plain(states), &Memory::default())
    }

    fn remembering(timeline: u32) -> Memory {
        let mut m = Memory::default();
        m.timelines.raise(None, timeline);
        m
    }

    // --- the rules without timelines (a role that may not read them) ------------------

    #[test]
    fn one_master_already_active_does_nothing() {
        let d = run(at(0), &[Master, Standby, Standby]);
        assert_eq!(d.cluster, Cluster::OneMaster(0));
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn master_moved_switches_to_the_new_one() {
        let d = run(at(0), &[Down, Master, Standby]);
        assert_eq!(d.cluster, Cluster::OneMaster(1));
        assert_eq!(d.action, Action::Switch(1));
    }

    #[test]
    fn old_primary_coming_back_beside_new_one_is_split_brain_without_timelines() {
        let d = run(at(1), &[Master, Master, Standby]);
        assert_eq!(d.cluster, Cluster::SplitBrain(vec![0, 1]));
        assert_eq!(d.action, Action::Nothing);
        assert_eq!(d.memory.contested, vec![0, 1]);
    }

    #[test]
    fn three_masters_are_split_brain_and_named_in_file_order() {
        let d = run(at(2), &[Master, Master, Master]);
        assert_eq!(d.cluster, Cluster::SplitBrain(vec![0, 1, 2]));
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn split_brain_never_switches_even_when_unconfirmed() {
        let d = run(Believed::default(), &[Master, Standby, Master]);
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn no_master_changes_nothing() {
        let d = run(at(0), &[Down, Standby, Standby]);
        assert_eq!(d.cluster, Cluster::NoMaster);
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn all_down_changes_nothing() {
        let d = run(at(0), &[Down, Down, Down]);
        assert_eq!(d.cluster, Cluster::NoMaster);
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn first_round_switches_when_symlink_points_elsewhere() {
        let start = Believed {
            active: Some(1),
            confirmed: false,
        };
        assert_eq!(
            run(start, &[Master, Standby, Standby]).action,
            Action::Switch(0)
        );
    }

    #[test]
    fn first_round_with_symlink_already_on_master_still_confirms_it() {
        // At start-up nothing proves PgBouncer loaded the file the link points at, so the
        // first round reloads and checks even though the link is already right.
        let start = Believed {
            active: Some(0),
            confirmed: false,
        };
        assert_eq!(
            run(start, &[Master, Standby, Standby]).action,
            Action::Switch(0)
        );
    }

    #[test]
    fn first_round_with_no_symlink_and_no_master_waits() {
        let d = run(Believed::default(), &[Down, Standby]);
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn failed_switch_is_retried_next_round() {
        let after_failure = Believed {
            active: Some(1),
            confirmed: false,
        };
        assert_eq!(
            run(after_failure, &[Down, Master]).action,
            Action::Switch(1)
        );
    }

    #[test]
    fn an_empty_cluster_has_no_master() {
        assert_eq!(run(at(0), &[]).cluster, Cluster::NoMaster);
    }

    /// Round by round, carrying the memory and the belief as the daemon does.
    fn rounds(mut believed: Believed, steps: &[(Vec<Seen>, Action)]) -> (Believed, Memory) {
        let mut memory = Memory::default();
        for (i, (seen, want)) in steps.iter().enumerate() {
            let d = decide(believed, seen, &memory);
            assert_eq!(&d.action, want, "round {i}: {d:?}");
            if let Action::Switch(to) = d.action {
                believed = at(to);
            }
            memory = d.memory;
        }
        (believed, memory)
    }

    #[test]
    fn flapping_follows_each_single_master_and_ignores_the_gaps() {
        // Master 0; gone; 1 promoted; 0 back beside 1 (no timelines: split brain); 0 demoted.
        let (b, _) = rounds(
            at(0),
            &[
                (plain(&[Master, Standby]), Action::Nothing),
                (plain(&[Down, Standby]), Action::Nothing),
                (plain(&[Down, Master]), Action::Switch(1)),
                (plain(&[Master, Master]), Action::Nothing),
                (plain(&[Standby, Master]), Action::Nothing),
            ],
        );
        assert_eq!(b, at(1));
    }

    // --- a failed check never produces a switch by itself ------------------------------

    #[test]
    fn split_brain_ended_by_the_active_master_going_silent_does_not_switch() {
        // The old primary returns and the new one hangs, without timelines to tell them
        // apart: PgBouncer on node1 (the new primary); node0,
        // the old primary, comes back; then node1 hangs. node0 alone is not evidence.
        let (b, memory) = rounds(
            at(1),
            &[
                (plain(&[Master, Master, Standby]), Action::Nothing),
                (plain(&[Master, Down, Standby]), Action::Nothing),
                (plain(&[Master, Down, Standby]), Action::Nothing),
            ],
        );
        assert_eq!(b, at(1));
        assert_eq!(memory.contested, vec![0, 1]);
        let d = decide(at(1), &plain(&[Master, Down, Standby]), &memory);
        assert_eq!(
            d.refusal,
            Some(Refusal::Unresolved {
                master: 0,
                unreachable: vec![1]
            })
        );
    }

    #[test]
    fn split_brain_resolved_by_a_demotion_lets_the_other_master_be_followed() {
        // node1 is demoted and follows as a standby: positive evidence, so node0 is the
        // primary and PgBouncer follows it.
        rounds(
            at(1),
            &[
                (plain(&[Master, Master]), Action::Nothing),
                (plain(&[Master, Down]), Action::Nothing),
                (plain(&[Master, Standby]), Action::Switch(0)),
            ],
        );
    }

    #[test]
    fn an_unreachable_master_of_an_earlier_split_brain_stays_contested_in_the_next() {
        // node0 and node1 split; node1 stops answering and node2 is promoted beside node0:
        // a new split brain, and node1, never seen demoted, still counts against node0.
        let (b, memory) = rounds(
            at(1),
            &[
                (plain(&[Master, Master, Standby, Standby]), Action::Nothing),
                (plain(&[Master, Down, Master, Standby]), Action::Nothing),
            ],
        );
        assert_eq!(b, at(1));
        assert_eq!(memory.contested, vec![0, 1, 2]);
        // node2 demoted: node0 is the only master, but node1 may still be the primary.
        let d = decide(at(1), &plain(&[Master, Down, Standby, Standby]), &memory);
        assert_eq!(
            d.refusal,
            Some(Refusal::Unresolved {
                master: 0,
                unreachable: vec![1]
            })
        );
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn a_master_of_an_earlier_split_brain_seen_demoted_is_not_carried_into_the_next() {
        let (_, memory) = rounds(
            at(1),
            &[
                (plain(&[Master, Master, Standby]), Action::Nothing),
                (plain(&[Master, Standby, Master]), Action::Nothing),
            ],
        );
        assert_eq!(memory.contested, vec![0, 2]);
        let d = decide(at(1), &plain(&[Master, Standby, Standby]), &memory);
        assert_eq!(d.refusal, None);
        assert_eq!(d.action, Action::Switch(0));
    }

    #[test]
    fn a_new_master_outside_the_split_brain_is_followed() {
        rounds(
            at(1),
            &[
                (plain(&[Master, Master, Standby]), Action::Nothing),
                (plain(&[Down, Down, Master]), Action::Switch(2)),
            ],
        );
    }

    #[test]
    fn a_master_that_refuses_new_logins_is_no_target_but_still_a_master() {
        let mut seen = plain(&[Down, Master]);
        seen[1].refuses_new = true;
        let d = decide(at(0), &seen, &Memory::default());
        assert_eq!(d.cluster, Cluster::OneMaster(1));
        assert_eq!(d.refusal, Some(Refusal::RefusesNewLogins(1)));
        assert_eq!(d.action, Action::Nothing);

        // Beside another master it keeps the split brain: refusing logins is no demotion.
        let mut seen = plain(&[Master, Master]);
        seen[1].refuses_new = true;
        let d = decide(at(1), &seen, &Memory::default());
        assert_eq!(d.cluster, Cluster::SplitBrain(vec![0, 1]));
        assert_eq!(d.action, Action::Nothing);
    }

    // --- a start without memory ------------------------------------------------------

    /// A new process with an empty state file and the symlink on `linked`.
    fn blank_start(linked: NodeId) -> (Believed, Memory) {
        let believed = Believed {
            active: Some(linked),
            confirmed: false,
        };
        (
            believed,
            Memory::at_start(Timelines::default(), Some(linked)),
        )
    }

    #[test]
    fn a_start_without_memory_does_not_leave_a_linked_node_that_only_times_out() {
        // The true primary node1 (timeline 2) is hung, the old primary node0 is back on
        // timeline 1, the standby still reports timeline 1: nothing tells them apart.
        let (believed, memory) = blank_start(1);
        let seen = [Seen::on(Master, 1), Seen::silent(), Seen::on(Standby, 1)];
        let d = decide(believed, &seen, &memory);
        assert_eq!(d.cluster, Cluster::OneMaster(0));
        assert_eq!(
            d.refusal,
            Some(Refusal::LinkedSilentSinceStart {
                master: 0,
                linked: 1
            })
        );
        assert_eq!(d.action, Action::Nothing);
        // Round after round while it stays silent, though node0's timeline is remembered.
        let again = decide(believed, &seen, &d.memory);
        assert_eq!(again.action, Action::Nothing);
        assert_eq!(again.memory.unheard_link, Some(1));
        // It comes back: it is the primary on the higher timeline, confirmed where it is.
        let back = decide(
            believed,
            &[
                Seen::on(Master, 1),
                Seen::on(Master, 2),
                Seen::on(Standby, 1),
            ],
            &again.memory,
        );
        assert_eq!(back.cluster, Cluster::OneMaster(1));
        assert_eq!(back.action, Action::Switch(1));
        assert_eq!(back.memory.unheard_link, None);
    }

    #[test]
    fn a_start_without_memory_moves_once_the_linked_node_was_heard_from() {
        let seen = |linked: Seen| [Seen::on(Master, 1), linked, Seen::on(Standby, 1)];
        let (believed, memory) = blank_start(1);
        for heard in [
            Seen::new(Down), // refused the connection, or failed with an error
            Seen::on(Standby, 1),
            Seen::on(Master, 0), // a stale master
        ] {
            let d = decide(believed, &seen(heard), &memory);
            assert_eq!(d.refusal, None, "{heard:?}");
            assert_eq!(d.action, Action::Switch(0), "{heard:?}");
            assert_eq!(d.memory.unheard_link, None);
            // Heard once is enough: a later silence is an ordinary failure.
            let later = decide(believed, &seen(Seen::silent()), &d.memory);
            assert_eq!(later.action, Action::Switch(0), "{heard:?}");
        }
        // A linked master that refuses new logins answered too.
        let mut refusing = Seen::on(Master, 1);
        refusing.refuses_new = true;
        let d = decide(
            believed,
            &[Seen::on(Master, 1), refusing, Seen::new(Down)],
            &memory,
        );
        assert_eq!(d.memory.unheard_link, None);
        assert_eq!(d.cluster, Cluster::SplitBrain(vec![0, 1]));
    }

    #[test]
    fn only_a_blank_start_with_a_linked_node_waits() {
        let seen = [Seen::on(Master, 2), Seen::silent()];
        let believed = blank_start(1).0;
        // A remembered timeline: node0 is on it, so it is the primary.
        let memory = Memory::at_start(remembering(2).timelines, Some(1));
        assert_eq!(memory.unheard_link, None);
        assert_eq!(decide(believed, &seen, &memory).action, Action::Switch(0));
        // No symlink on any node: nothing to wait for.
        let memory = Memory::at_start(Timelines::default(), None);
        assert_eq!(
            decide(Believed::default(), &seen, &memory).action,
            Action::Switch(0)
        );
        // The linked node taken out of the configuration (a reload): no longer waited for.
        let memory = Memory::at_start(Timelines::default(), Some(1));
        let d = decide(Believed::default(), &seen, &memory);
        assert_eq!(d.action, Action::Switch(0));
        assert_eq!(d.memory.unheard_link, None);
        let d = decide(believed, &seen[..1], &memory);
        assert_eq!(d.action, Action::Switch(0));
    }

    #[test]
    fn a_healthy_cluster_at_first_start_is_followed_in_the_first_round() {
        // The upgrade from the Go tool: no state file, the symlink on the master, or on an
        // old node that is now a standby, or stopped.
        let seen = [Seen::on(Master, 3), Seen::on(Standby, 3), Seen::new(Down)];
        for linked in [0, 1, 2] {
            let (believed, memory) = blank_start(linked);
            assert_eq!(
                decide(believed, &seen, &memory).action,
                Action::Switch(0),
                "symlink on node{linked}"
            );
        }
    }

    // --- timelines --------------------------------------------------------------------

    #[test]
    fn a_master_behind_the_highest_timeline_is_stale_and_never_a_target() {
        // The old primary returns and the new one hangs: node1 promoted (timeline 2), node0
        // back on timeline 1, node1 hung.
        let d = decide(
            at(1),
            &[Seen::on(Master, 1), Seen::new(Down), Seen::on(Standby, 2)],
            &remembering(2),
        );
        assert_eq!(d.cluster, Cluster::NoMaster);
        assert_eq!(
            d.stale,
            vec![Stale {
                node: 0,
                timeline: 1,
                highest: 2,
                standby: None,
            }]
        );
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn a_standby_on_a_newer_timeline_is_enough_to_make_a_master_stale() {
        // rebouncer never saw the promotion (it was down), but a standby already follows
        // timeline 2: the master on timeline 1 is an old primary.
        let d = decide(
            Believed::default(),
            &[Seen::on(Master, 1), Seen::on(Standby, 2)],
            &Memory::default(),
        );
        assert_eq!(d.cluster, Cluster::NoMaster);
        assert_eq!(
            d.stale,
            vec![Stale {
                node: 0,
                timeline: 1,
                highest: 2,
                standby: Some(1),
            }]
        );
        // Only the master's timeline is remembered.
        assert_eq!(d.memory.timelines.highest(None), Some(1));
    }

    #[test]
    fn a_standby_ahead_fences_only_while_it_reports_its_timeline() {
        // A clone promoted by mistake and restarted as a standby reports timeline 2; the
        // real primary is on 1. Once that standby stops, the primary is followed again.
        let ahead = decide(
            at(1),
            &[
                Seen::on(Master, 1),
                Seen::on(Standby, 2),
                Seen::on(Standby, 1),
            ],
            &Memory::default(),
        );
        assert_eq!(ahead.cluster, Cluster::NoMaster);
        assert_eq!(ahead.stale[0].standby, Some(1));
        let gone = decide(
            at(1),
            &[Seen::on(Master, 1), Seen::new(Down), Seen::on(Standby, 1)],
            &ahead.memory,
        );
        assert_eq!(gone.cluster, Cluster::OneMaster(0));
        assert!(gone.stale.is_empty());
        assert_eq!(gone.action, Action::Switch(0));
    }

    #[test]
    fn a_standby_ahead_is_forgotten_across_a_restart() {
        let ahead = decide(
            at(0),
            &[Seen::on(Master, 1), Seen::on(Standby, 2)],
            &Memory::default(),
        );
        let text = crate::state::State {
            timelines: ahead.memory.timelines.clone(),
            ..Default::default()
        }
        .render();
        let file = crate::state::State::parse(std::path::Path::new("s"), &text).unwrap();
        let restarted = Memory {
            timelines: file.timelines,
            ..Memory::default()
        };
        let d = decide(
            Believed::default(),
            &[Seen::on(Master, 1), Seen::new(Down)],
            &restarted,
        );
        assert_eq!(d.action, Action::Switch(0));
    }

    #[test]
    fn a_standby_beyond_the_remembered_timeline_is_named_as_the_fence() {
        // The remembered master timeline fences on its own: no standby is named.
        let d = decide(
            at(1),
            &[
                Seen::on(Master, 1),
                Seen::on(Master, 2),
                Seen::on(Standby, 2),
            ],
            &remembering(2),
        );
        assert_eq!(d.stale[0].standby, None);
        assert_eq!(d.action, Action::Nothing);
        // A standby further ahead than every master: it is the fence, with its timeline;
        // of two standbys ahead, the one furthest ahead.
        let d = decide(
            at(0),
            &[
                Seen::on(Standby, 3),
                Seen::on(Master, 2),
                Seen::on(Standby, 4),
                Seen::on(Standby, 4),
            ],
            &remembering(2),
        );
        assert_eq!(
            d.stale,
            vec![Stale {
                node: 1,
                timeline: 2,
                highest: 4,
                standby: Some(2),
            }]
        );
        assert_eq!(d.memory.timelines.highest(None), Some(2));
    }

    #[test]
    fn a_standby_of_another_cluster_fences_nothing() {
        let on = |state, timeline, system| Seen {
            timeline: Some(Timeline { timeline, system }),
            ..Seen::new(state)
        };
        let d = decide(
            at(0),
            &[on(Master, 1, Some(1)), on(Standby, 5, Some(2))],
            &Memory::default(),
        );
        assert!(d.stale.is_empty());
        assert_eq!(d.cluster, Cluster::OneMaster(0));
    }

    #[test]
    fn of_several_masters_the_one_on_the_highest_timeline_is_the_primary() {
        let d = decide(
            at(0),
            &[
                Seen::on(Master, 1),
                Seen::on(Master, 2),
                Seen::on(Standby, 2),
            ],
            &Memory::default(),
        );
        assert_eq!(d.cluster, Cluster::OneMaster(1));
        assert_eq!(d.stale.iter().map(|s| s.node).collect::<Vec<_>>(), vec![0]);
        assert_eq!(d.action, Action::Switch(1));
    }

    #[test]
    fn several_masters_on_the_same_highest_timeline_are_split_brain() {
        // Two standbys promoted from the same primary both start timeline 2.
        let d = decide(
            at(1),
            &[Seen::on(Master, 2), Seen::on(Master, 2), Seen::on(Down, 1)],
            &Memory::default(),
        );
        assert_eq!(d.cluster, Cluster::SplitBrain(vec![0, 1]));
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn a_master_whose_timeline_cannot_be_read_keeps_the_split_brain() {
        let d = decide(
            at(1),
            &[Seen::new(Master), Seen::on(Master, 2)],
            &remembering(2),
        );
        assert_eq!(d.cluster, Cluster::SplitBrain(vec![0, 1]));
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn a_stale_primary_stays_stale_whatever_else_is_down() {
        let d = decide(
            Believed::default(),
            &[Seen::on(Master, 3), Seen::new(Down), Seen::new(Down)],
            &remembering(4),
        );
        assert_eq!(d.action, Action::Nothing);
        assert_eq!(d.stale[0].highest, 4);
    }

    #[test]
    fn the_remembered_timeline_survives_a_restart_through_the_state() {
        // Round 1 of the first run sees the promotion; the memory is what the state file
        // keeps; a new run starting from it still refuses the old primary.
        let first = decide(
            at(0),
            &[Seen::on(Standby, 1), Seen::on(Master, 2)],
            &Memory::default(),
        );
        let restarted = Memory::at_start(first.memory.timelines.clone(), None);
        let d = decide(
            Believed::default(),
            &[Seen::on(Master, 1), Seen::new(Down)],
            &restarted,
        );
        assert_eq!(d.cluster, Cluster::NoMaster);
        assert_eq!(d.stale.len(), 1);
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn a_rebuilt_cluster_with_a_new_identity_starts_again_at_timeline_one() {
        let mut memory = Memory::default();
        memory.timelines.raise(Some(111), 5);
        let new = |state, timeline| Seen {
            state,
            timeline: Some(Timeline {
                timeline,
                system: Some(222),
            }),
            refuses_new: false,
            silent: false,
        };
        let d = decide(
            Believed::default(),
            &[new(Master, 1), new(Standby, 1)],
            &memory,
        );
        assert_eq!(d.cluster, Cluster::OneMaster(0));
        assert!(d.stale.is_empty());
        assert_eq!(d.action, Action::Switch(0));
        assert_eq!(d.memory.timelines.highest(Some(111)), Some(5));
        assert_eq!(d.memory.timelines.highest(Some(222)), Some(1));
    }

    #[test]
    fn stale_primary_with_the_true_one_refusing_new_logins_switches_nowhere() {
        // A stale primary and the true one refusing logins: PgBouncer on node1 (timeline 2), which refuses new logins now;
        // node0 is back on timeline 1.
        let mut seen = vec![
            Seen::on(Master, 1),
            Seen::on(Master, 2),
            Seen::on(Standby, 2),
        ];
        seen[1].refuses_new = true;
        let d = decide(at(1), &seen, &Memory::default());
        assert_eq!(d.cluster, Cluster::OneMaster(1));
        assert_eq!(d.stale.len(), 1);
        assert_eq!(d.action, Action::Nothing);
        // And while node1 is down for good: still nothing.
        let d = decide(
            at(1),
            &[Seen::on(Master, 1), Seen::new(Down), Seen::on(Standby, 2)],
            &d.memory,
        );
        assert_eq!(d.action, Action::Nothing);
    }
}
