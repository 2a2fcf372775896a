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

    // Checked again, still in recovery: the next check backs off.
    r.at(MS(200));
    let cmds = r.round(&[down(), standby(1), standby(1)]);
    let cmds = r.reply_until_done(cmds, None);
    assert_eq!(switch_in(&cmds), None);
    assert_eq!(held_in(&cmds), None, "said once");
    assert_eq!(r.p.next_round(), r.now + MS(400));

    // Now it answers as master on the new timeline: switched to.
    r.at(MS(400));
    let cmds = r.round(&[down(), master(2), standby(2)]);
    let cmds = r.reply_until_done(cmds, None);
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
