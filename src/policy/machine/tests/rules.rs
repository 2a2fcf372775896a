//! One rule of the loop per test, each pinned where a mutation of the policy showed that
//! no other test would notice it broken.

use super::*;

fn reload(r: &mut Run, from: Vec<Carry>, settings: Settings) -> Vec<Command> {
    let old_count = r.p.nodes().len();
    r.tell(Input::Reloaded {
        from,
        old_count,
        settings,
        console_changed: false,
        changed: true,
    })
}

#[test]
fn a_reload_that_keeps_every_server_in_its_place_keeps_the_verdict() {
    let mut r = settled_on_node0(settings(false, false));
    let before = r.p.decision().cloned();
    assert!(before.is_some());
    let kept = vec![Carry::Kept(0), Carry::Kept(1), Carry::Kept(2)];
    assert_eq!(reload(&mut r, kept, settings(false, false)), []);
    assert_eq!(r.p.decision().cloned(), before);
}

#[test]
fn a_reload_that_only_reorders_the_servers_decides_again() {
    let mut r = settled_on_node0(settings(false, false));
    let swapped = vec![Carry::Kept(1), Carry::Kept(0), Carry::Kept(2)];
    reload(&mut r, swapped, settings(false, false));
    assert_eq!(r.p.decision(), None, "its node ids are the old order's");
    assert_eq!(
        r.p.believed().active,
        Some(1),
        "the active node moved with it"
    );
}

#[test]
fn a_server_whose_monitor_a_reload_restarts_is_asked_and_waited_for_at_once() {
    let mut r = settled_on_node0(settings(false, false));
    r.at(S(5));
    // Node 1 hangs (and so backs off); node 2's check is still under way at the deadline.
    let Some(Command::Check { nodes, .. }) = r.tell(Input::RoundDue).first().cloned() else {
        panic!("a round begins with checks")
    };
    assert_eq!(nodes, [0, 1, 2]);
    r.tell(Input::Answer {
        node: 0,
        answer: master(1),
    });
    r.tell(Input::Answer {
        node: 1,
        answer: hung(),
    });
    let cmds = r.tell(Input::ChecksOver);
    r.reply_until_done(cmds, Some(0));
    assert!(r.p.nodes()[1].hung && r.p.nodes()[2].busy);
    assert!(!r.p.nodes()[1].backoff.due(r.now));

    // New monitor settings: every monitor is new; the old ones' checks never answer.
    let restarted = vec![
        Carry::Restarted(0),
        Carry::Restarted(1),
        Carry::Restarted(2),
    ];
    reload(&mut r, restarted, settings(false, false));
    assert_eq!(
        r.p.nodes()[1].state,
        Some(NodeState::Down),
        "what it was stays"
    );
    let cmds = r.tell(Input::RoundDue);
    let Some(Command::Check {
        nodes, wait_for, ..
    }) = cmds.first()
    else {
        panic!("{cmds:?}")
    };
    assert_eq!(nodes, &[0, 1, 2]);
    assert_eq!(wait_for, &[0, 1, 2]);
}

#[test]
fn at_a_first_start_pgbouncer_stays_on_a_linked_server_that_only_times_out() {
    // No timeline remembered: a hung linked server may be the true primary.
    let mut r = Run::new(2, settings(false, false), Some(0));
    let cmds = r.round(&[hung(), master(1)]);
    let cmds = r.reply_until_done(cmds, None);
    assert_eq!(switch_in(&cmds), None, "{cmds:?}");
}

#[test]
fn at_a_first_start_a_linked_server_that_refuses_connections_is_left_at_once() {
    let mut r = Run::new(2, settings(false, false), Some(0));
    let cmds = r.round(&[down(), master(1)]);
    let cmds = r.reply_until_done(cmds, None);
    assert_eq!(switch_in(&cmds), Some((1, SwitchReason::Failover)));
}

#[test]
fn a_server_that_changes_state_brings_the_servers_backing_off_into_the_next_round() {
    let mut r = settled_on_node0(settings(false, false));
    // Node 2 fails a few checks and backs off beyond the next round.
    for _ in 0..4 {
        r.tell(Input::Answer {
            node: 2,
            answer: down(),
        });
    }
    r.at(MS(300));
    assert!(!r.p.nodes()[2].backoff.due(r.now));
    // Node 1 goes down too: node 2 may be part of what changed.
    r.tell(Input::Answer {
        node: 1,
        answer: down(),
    });
    let cmds = r.tell(Input::RoundDue);
    let Some(Command::Check { nodes, .. }) = cmds.first() else {
        panic!("{cmds:?}")
    };
    assert!(nodes.contains(&2), "{nodes:?}");
}

#[test]
fn polling_begins_when_told_the_first_round_at_once_and_the_first_heartbeat_a_beat_later() {
    let made = Instant::now();
    let mut p = Policy::new(settings(true, false), 3, Timelines::default(), made);
    p.start(Some(0));
    // The start-up steps before polling took a while.
    let begun = made + S(3);
    p.start_polling(begun);
    assert_eq!(p.next_round(), begun);
    assert_eq!(p.next_heartbeat(), begun + HEARTBEAT);
}

#[test]
fn the_memory_holds_the_state_files_timelines_from_the_start() {
    let mut remembered = Timelines::default();
    remembered.raise(None, 3);
    let mut p = Policy::new(
        settings(false, false),
        2,
        remembered.clone(),
        Instant::now(),
    );
    p.start(Some(0));
    assert_eq!(p.memory().timelines, remembered);
}

#[test]
fn the_masters_of_a_split_brain_are_asked_on_a_new_connection_at_most_every_recheck_interval() {
    let mut r = settled_on_node0(settings(true, false));
    let split = [master(1), master(1), standby(1)];
    let fresh = |cmds: &[Command]| {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Check {
                    nodes, fresh: true, ..
                } => Some(nodes.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    r.at(S(5));
    let cmds = r.round(&split);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(fresh(&cmds), [vec![0, 1]]);
    // Still split at the next fast round: their last check on a new connection stands.
    r.at(MS(200));
    let cmds = r.round(&split);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(fresh(&cmds), Vec::<Vec<NodeId>>::new());
    r.at(checks::RECHECK_EVERY);
    let cmds = r.round(&split);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(fresh(&cmds), [vec![0, 1]]);
}
