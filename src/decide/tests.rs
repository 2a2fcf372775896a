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

/// A round in which every node reports its timeline, with nothing remembered yet.
fn run_on(believed: Believed, seen: &[(NodeState, u32)]) -> Decision {
    let seen: Vec<Seen> = seen.iter().map(|&(s, t)| Seen::on(s, t)).collect();
    decide(believed, &seen, &Memory::default())
}

fn stale(node: NodeId, timeline: u32, highest: u32, standby: Option<NodeId>) -> Stale {
    Stale {
        node,
        timeline,
        highest,
        standby,
    }
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
    assert_eq!(d.stale, vec![stale(0, 1, 2, None)]);
    assert_eq!(d.action, Action::Nothing);
}

#[test]
fn a_standby_on_a_newer_timeline_is_enough_to_make_a_master_stale() {
    // rebouncer never saw the promotion (it was down), but a standby already follows
    // timeline 2: the master on timeline 1 is an old primary.
    let d = run_on(Believed::default(), &[(Master, 1), (Standby, 2)]);
    assert_eq!(d.cluster, Cluster::NoMaster);
    assert_eq!(d.stale, vec![stale(0, 1, 2, Some(1))]);
    // Only the master's timeline is remembered.
    assert_eq!(d.memory.timelines.highest(None), Some(1));
}

#[test]
fn a_standby_ahead_fences_only_while_it_reports_its_timeline() {
    // A clone promoted by mistake and restarted as a standby reports timeline 2; the
    // real primary is on 1. Once that standby stops, the primary is followed again.
    let ahead = run_on(at(1), &[(Master, 1), (Standby, 2), (Standby, 1)]);
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
    let ahead = run_on(at(0), &[(Master, 1), (Standby, 2)]);
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
    assert_eq!(d.stale, vec![stale(1, 2, 4, Some(2))]);
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
    let d = run_on(at(0), &[(Master, 1), (Master, 2), (Standby, 2)]);
    assert_eq!(d.cluster, Cluster::OneMaster(1));
    assert_eq!(d.stale.iter().map(|s| s.node).collect::<Vec<_>>(), vec![0]);
    assert_eq!(d.action, Action::Switch(1));
}

#[test]
fn several_masters_on_the_same_highest_timeline_are_split_brain() {
    // Two standbys promoted from the same primary both start timeline 2.
    let d = run_on(at(1), &[(Master, 2), (Master, 2), (Down, 1)]);
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
    let first = run_on(at(0), &[(Standby, 1), (Master, 2)]);
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
