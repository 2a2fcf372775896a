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
