//! The etcd mode in the policy: the leader key told as an input, with plain values.

use super::*;
use crate::policy::leader::{Held, IDLE, Key};

fn names(server: NodeId) -> Key {
    Key::Names {
        member: format!("pg{server}"),
        server: Some(server),
    }
}

/// A policy following the leader key (etcd mode keeps no monitoring connection), with
/// PgBouncer's symlink on node 0.
fn following() -> Run {
    let now = Instant::now();
    let mut p = Policy::new(settings(false, false), 3, Timelines::default(), now);
    p.follow_leader();
    p.start(Some(0));
    p.start_polling(now);
    Run { p, now }
}

impl Run {
    /// The checks `cmds` begins with, answered as given; the commands of the pass, every
    /// other command that needs an answer answered as `reply_until_done` does.
    fn answer_checks(&mut self, cmds: Vec<Command>, answers: &[Answer]) -> Vec<Command> {
        let Some(Command::Check {
            nodes, round: true, ..
        }) = cmds.first()
        else {
            panic!("expected a round's checks, got {cmds:?}");
        };
        for node in nodes.clone() {
            self.tell(Input::Answer {
                node,
                answer: answers[node].clone(),
            });
        }
        let cmds = self.tell(Input::ChecksOver);
        self.reply_until_done(cmds, None)
    }
}

/// The servers a round's checks ask.
fn asked(cmds: &[Command]) -> Vec<NodeId> {
    match cmds.first() {
        Some(Command::Check {
            nodes, round: true, ..
        }) => nodes.clone(),
        _ => panic!("expected a round's checks, got {cmds:?}"),
    }
}

fn held_in(cmds: &[Command]) -> Option<Option<Held>> {
    cmds.iter().find_map(|c| match c {
        Command::LeaderHeld(h) => Some(h.clone()),
        _ => None,
    })
}

#[test]
fn the_key_naming_a_standby_that_then_answers_master_switches_to_it() {
    let mut r = following();
    // Before the key is heard, the servers alone move nothing.
    let cmds = r.round(&[down(), master(1), standby(1)]);
    let cmds = r.reply_until_done(cmds, None);
    assert_eq!(switch_in(&cmds), None, "{cmds:?}");
    assert_eq!(held_in(&cmds), Some(Some(Held::NotHeard)));

    // The key names node 1, still a standby: every server is checked at once.
    r.at(MS(50));
    let cmds = r.tell(Input::Leader(names(1)));
    let Some(Command::Check { nodes, .. }) = cmds.first() else {
        panic!("{cmds:?}")
    };
    assert_eq!(nodes, &[0, 1, 2]);
    let cmds = r.answer_checks(cmds, &[down(), standby(1), standby(1)]);
    assert_eq!(switch_in(&cmds), None, "{cmds:?}");
    assert_eq!(
        held_in(&cmds),
        Some(Some(Held::NotConfirmed { candidate: 1 }))
    );
    assert_eq!(
        r.p.next_round(),
        r.now + MS(200),
        "rechecked after fast_interval"
    );

    // Checked again, alone, still in recovery: the next check backs off.
    r.at(MS(200));
    let cmds = r.tell(Input::RoundDue);
    assert_eq!(asked(&cmds), vec![1], "only the candidate: {cmds:?}");
    let cmds = r.answer_checks(cmds, &[down(), standby(1), standby(1)]);
    assert_eq!(switch_in(&cmds), None);
    assert_eq!(held_in(&cmds), None, "said once");
    assert_eq!(r.p.next_round(), r.now + MS(400));

    // Now it answers as master on the new timeline: the other servers are asked at once,
    // and that round's verdict switches to it.
    r.at(MS(400));
    let cmds = r.tell(Input::RoundDue);
    assert_eq!(asked(&cmds), vec![1]);
    let cmds = r.answer_checks(cmds, &[down(), master(2), standby(2)]);
    assert_eq!(
        switch_in(&cmds),
        None,
        "not on the candidate's answer alone"
    );
    assert_eq!(r.p.next_round(), r.now, "the others asked at once");
    let cmds = r.tell(Input::RoundDue);
    assert_eq!(
        asked(&cmds),
        vec![0, 2],
        "the probe's answer counts for node 1"
    );
    let cmds = r.answer_checks(cmds, &[down(), master(2), standby(2)]);
    assert_eq!(switch_in(&cmds), Some((1, SwitchReason::Failover)));
    assert_eq!(held_in(&cmds), Some(None), "the key and the servers agree");
    r.switched(1);
    // PgBouncer confirmed it: no confirming round; node 0 down is checked every interval.
    assert_eq!(r.p.next_round(), r.now + S(5));

    // Node 0 back as a standby: a settled cluster on the leader costs no check at all.
    r.at(S(5));
    let cmds = r.round(&[standby(2), master(2), standby(2)]);
    let cmds = r.reply_until_done(cmds, Some(1));
    assert_eq!(switch_in(&cmds), None);
    assert_eq!(r.p.next_round(), r.now + IDLE);
}

/// Node 0 confirmed as the leader's server.
fn on_leader_node0() -> Run {
    let mut r = following();
    let cmds = r.tell(Input::Leader(names(0)));
    let cmds = r.answer_checks(cmds, &[master(1), standby(1), standby(1)]);
    assert_eq!(switch_in(&cmds), Some((0, SwitchReason::Confirm)));
    r.switched(0);
    r
}

#[test]
fn the_key_gone_switches_nothing_and_checks_nothing() {
    let mut r = on_leader_node0();
    r.at(S(1));
    let cmds = r.tell(Input::Leader(Key::Deleted));
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::Check { .. })),
        "a decision only: {cmds:?}"
    );
    assert_eq!(switch_in(&cmds), None);
    assert_eq!(held_in(&cmds), Some(Some(Held::NoLeader)));
    // Node 0 lost, node 1 a master on a new timeline: without a leader, not switched to.
    r.at(S(5));
    let cmds = r.round(&[down(), master(2), standby(2)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(switch_in(&cmds), None, "{cmds:?}");
    assert_eq!(
        r.p.next_round(),
        r.now + S(5),
        "a server down: every interval"
    );
}

#[test]
fn etcd_unreachable_checks_every_server_and_switches_nothing() {
    let mut r = on_leader_node0();
    r.at(S(1));
    let cmds = r.tell(Input::Leader(Key::Unreachable));
    let cmds = r.answer_checks(cmds, &[down(), master(2), standby(2)]);
    assert_eq!(switch_in(&cmds), None, "{cmds:?}");
    assert_eq!(held_in(&cmds), Some(Some(Held::Unreachable)));
    // etcd back with the same leader: no change of key, but node 1 still not named.
    r.at(S(1));
    let cmds = r.tell(Input::Leader(names(0)));
    let cmds = r.answer_checks(cmds, &[down(), master(2), standby(2)]);
    assert_eq!(switch_in(&cmds), None);
    assert_eq!(held_in(&cmds), Some(Some(Held::NotTheLeader { master: 1 })));
}

#[test]
fn a_member_with_no_server_switches_nothing() {
    let mut r = on_leader_node0();
    let cmds = r.tell(Input::Leader(Key::Names {
        member: "pg9".into(),
        server: None,
    }));
    let cmds = r.answer_checks(cmds, &[down(), master(2), standby(2)]);
    assert_eq!(switch_in(&cmds), None);
    assert_eq!(held_in(&cmds), Some(Some(Held::Unmapped("pg9".into()))));
}

#[test]
fn with_etcd_off_the_key_is_ignored_and_polling_goes_on() {
    let mut r = settled_on_node0(settings(false, false));
    assert!(r.p.leader().is_none());
    assert!(r.tell(Input::Leader(names(1))).is_empty());
    assert!(r.tell(Input::Leader(Key::Deleted)).is_empty());
    assert_eq!(r.p.next_round(), r.now + S(5), "rounds every interval");
    r.at(S(5));
    let cmds = r.round(&[down(), master(2), standby(1)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(switch_in(&cmds), Some((1, SwitchReason::Failover)));
    assert_eq!(held_in(&cmds), None);
}

#[test]
fn the_key_as_heard_is_what_the_pages_read() {
    let mut r = following();
    assert_eq!(r.p.leader().map(|f| &f.key), Some(&Key::NotHeard));
    r.tell(Input::Leader(names(1)));
    assert_eq!(r.p.leader().map(|f| &f.key), Some(&names(1)));
}

#[test]
fn the_leaders_server_not_yet_a_master_is_checked_again_fast_though_pgbouncer_points_at_it() {
    let mut r = following();
    // The symlink names node 0, not yet confirmed; the key names node 0, still in recovery.
    let cmds = r.tell(Input::Leader(names(0)));
    let cmds = r.answer_checks(cmds, &[standby(1), standby(1), standby(1)]);
    assert_eq!(switch_in(&cmds), None);
    assert_eq!(r.p.next_round(), r.now + MS(200));
}

#[test]
fn a_switch_to_the_leader_that_failed_is_checked_again_fast() {
    let mut r = following();
    let cmds = r.tell(Input::Leader(names(1)));
    let cmds = r.answer_checks(cmds, &[down(), master(2), standby(2)]);
    assert_eq!(switch_in(&cmds), Some((1, SwitchReason::Failover)));
    let started = r.now;
    r.tell(Input::Switched(Switched::Failed {
        to: 1,
        error: "RELOAD: connection refused".into(),
        started,
        not_taken: false,
        behind: Some(0),
    }));
    assert_eq!(
        r.p.next_round(),
        r.now + MS(200),
        "not the interval of a server down"
    );
}

#[test]
fn with_the_key_gone_no_round_is_due_until_it_changes_or_a_server_is_down() {
    let mut r = on_leader_node0();
    r.at(S(1));
    r.tell(Input::Leader(Key::Deleted));
    assert_eq!(r.p.next_round(), r.now + IDLE);
}

/// The key names node 1, still in recovery, with node 0 (the old primary) stopped: the
/// first round, every server, is over; the next is a probe of node 1.
fn awaiting_node1() -> Run {
    let mut r = following();
    let cmds = r.tell(Input::Leader(names(1)));
    assert_eq!(asked(&cmds), vec![0, 1, 2]);
    let cmds = r.answer_checks(cmds, &[down(), standby(1), standby(1)]);
    assert_eq!(
        held_in(&cmds),
        Some(Some(Held::NotConfirmed { candidate: 1 }))
    );
    r
}

#[test]
fn rechecks_are_timed_from_the_start_of_the_check_before() {
    let mut r = following();
    let began = r.now;
    let cmds = r.tell(Input::Leader(names(1)));
    // The answers take 150 ms (a fleet's burst of new connections).
    r.at(MS(150));
    let cmds = r.answer_checks(cmds, &[down(), standby(1), standby(1)]);
    assert_eq!(switch_in(&cmds), None);
    assert_eq!(
        r.p.next_round(),
        began + MS(200),
        "not 200 ms after its end"
    );
    // A probe that takes longer than the pause: the next one at once, not later.
    r.at(MS(50));
    let began = r.now;
    let cmds = r.tell(Input::RoundDue);
    r.at(MS(500));
    r.answer_checks(cmds, &[down(), standby(1), standby(1)]);
    assert!(r.now > began + MS(400));
    assert_eq!(r.p.next_round(), r.now);
}

#[test]
fn a_probe_decides_nothing_even_when_the_candidate_answers_master() {
    let mut r = awaiting_node1();
    r.at(MS(200));
    let cmds = r.tell(Input::RoundDue);
    assert_eq!(asked(&cmds), vec![1]);
    // Node 0 seen down in the first round: on the candidate's answer alone the verdict
    // would switch, without asking node 0 whether it is a master again.
    let cmds = r.answer_checks(cmds, &[down(), master(2), standby(2)]);
    assert_eq!(switch_in(&cmds), None, "{cmds:?}");
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::LogDecision(_))),
        "no verdict: {cmds:?}"
    );
    // The round that follows at once asks node 0 and node 2; node 0 turns out a master
    // on the same timeline: a split brain, nothing switched.
    let cmds = r.tell(Input::RoundDue);
    assert_eq!(asked(&cmds), vec![0, 2]);
    let cmds = r.answer_checks(cmds, &[master(2), master(2), standby(2)]);
    assert_eq!(switch_in(&cmds), None, "{cmds:?}");
    assert_eq!(
        held_in(&cmds),
        None,
        "still the candidate not confirmed, already said"
    );
    assert_eq!(
        r.p.decision().map(|d| d.cluster.clone()),
        Some(Cluster::SplitBrain(vec![0, 1]))
    );
}

#[test]
fn the_key_changing_during_a_probe_asks_every_server_right_after_it() {
    let mut r = awaiting_node1();
    r.at(MS(200));
    let probe = r.tell(Input::RoundDue);
    assert_eq!(asked(&probe), vec![1]);
    // Patroni names node 2 while node 1 is being asked.
    assert!(
        r.tell(Input::Leader(names(2))).is_empty(),
        "a pass is under way"
    );
    let cmds = r.answer_checks(probe, &[down(), standby(1), standby(1)]);
    assert_eq!(held_in(&cmds), None, "node 1 is no longer the candidate");
    // The round of every server begins as the probe ends.
    let cmds: Vec<Command> = cmds
        .into_iter()
        .skip_while(|c| !matches!(c, Command::Check { round: true, .. }))
        .collect();
    assert_eq!(asked(&cmds), vec![0, 1, 2]);
    let cmds = r.answer_checks(cmds, &[down(), standby(2), master(2)]);
    assert_eq!(switch_in(&cmds), Some((2, SwitchReason::Failover)));
}

#[test]
fn probes_give_way_to_rounds_of_every_server_once_they_back_off_to_the_interval() {
    let mut r = awaiting_node1();
    // fast_interval 200 ms doubling: 200, 400, 800, 1600, 3200 ms, then the interval (5 s).
    for pause in [200, 400, 800, 1600, 3200] {
        assert_eq!(r.p.next_round(), r.now + MS(pause));
        r.at(MS(pause));
        let cmds = r.tell(Input::RoundDue);
        assert_eq!(asked(&cmds), vec![1], "after {pause} ms");
        r.answer_checks(cmds, &[down(), standby(1), standby(1)]);
    }
    assert_eq!(r.p.next_round(), r.now + S(5));
    r.at(S(5));
    let cmds = r.tell(Input::RoundDue);
    assert_eq!(asked(&cmds), vec![0, 1, 2], "the pages see every server");
    let cmds = r.answer_checks(cmds, &[down(), standby(1), standby(1)]);
    assert_eq!(switch_in(&cmds), None);
    assert_eq!(r.p.next_round(), r.now + S(5));
}
