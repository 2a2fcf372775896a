//! `pause_on_failover` in etcd mode: the hold starts when Patroni's leader key leaves
//! PgBouncer's server, lasts until the switch to the leader, and is bounded as in polling
//! mode.

use super::*;
use crate::policy::leader::Key;

fn names(server: NodeId) -> Key {
    Key::Names {
        member: format!("pg{server}"),
        server: Some(server),
    }
}

/// Following the leader key with `pause_on_failover` on, PgBouncer confirmed on node 0,
/// the key's leader.
fn on_node0_pausing() -> Run {
    let now = Instant::now();
    let mut p = Policy::new(settings(false, true), 3, Timelines::default(), now);
    p.follow_leader();
    p.start(Some(0));
    p.start_polling(now);
    let mut r = Run { p, now };
    let cmds = r.tell(Input::Leader(names(0)));
    let cmds = r.checks_answered(cmds, &[master(1), standby(1), standby(1)]);
    assert_eq!(switch_in(&cmds), Some((0, SwitchReason::Confirm)));
    r.switched(0);
    r
}

impl Run {
    /// The round's checks `cmds` begins with, answered as given, and the rest of the pass.
    fn checks_answered(&mut self, cmds: Vec<Command>, answers: &[Answer]) -> Vec<Command> {
        let Some(Command::Check { nodes, .. }) = cmds.first() else {
            panic!("expected checks, got {cmds:?}");
        };
        for node in nodes.clone() {
            self.tell(Input::Answer {
                node,
                answer: answers[node].clone(),
            });
        }
        let cmds = self.tell(Input::ChecksOver);
        self.reply_until_done(cmds, Some(0))
    }

    fn hold_made(&mut self) -> Vec<Command> {
        let started = self.now;
        self.tell(Input::Paused(Some(Paused {
            databases: vec!["appdb".into()],
            started,
            since: SystemTime::UNIX_EPOCH,
            held_since: None,
        })))
    }
}

#[test]
fn a_patroni_switchover_holds_clients_from_the_key_deleted_to_the_switch() {
    let mut r = on_node0_pausing();
    // Patroni stopped node 0's PostgreSQL and deleted the key; nothing was checked since,
    // so node 0 is still known as the master.
    r.at(S(1));
    let cmds = r.tell(Input::Leader(Key::Deleted));
    assert_eq!(pause_in(&cmds), Some((0, Loss::NotLeader)), "{cmds:?}");
    let cmds = r.hold_made();
    assert_eq!(
        release_in(&cmds),
        None,
        "the old answer does not end it: {cmds:?}"
    );
    assert!(r.p.hold().is_some());

    // The key names node 1, still in recovery; node 0 is down.
    r.at(MS(100));
    let cmds = r.tell(Input::Leader(names(1)));
    let cmds = r.checks_answered(cmds, &[down(), standby(1), standby(1)]);
    assert_eq!(
        (pause_in(&cmds), release_in(&cmds)),
        (None, None),
        "{cmds:?}"
    );
    assert_eq!(switch_in(&cmds), None);

    // Promoted: a probe of node 1 finds it a master, the round of the others that
    // follows at once decides, and the switch carries the held databases (resumed, not
    // killed).
    r.at(MS(200));
    let cmds = r.round(&[down(), master(2), standby(1)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(switch_in(&cmds), None, "a probe decides nothing: {cmds:?}");
    assert_eq!(r.p.next_round(), r.now);
    let cmds = r.round(&[down(), master(2), standby(1)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(
        held_switch_in(&cmds),
        Some((1, Some(vec!["appdb".to_string()]))),
        "{cmds:?}"
    );
    let cmds = r.switched(1);
    assert!(
        matches!(&cmds[0], Command::HoldSwitched { to: 1, hold, .. } if hold.lost == 0),
        "{cmds:?}"
    );
    assert_eq!(r.p.hold(), None);
}

#[test]
fn a_key_that_moves_straight_to_a_promoted_leader_still_holds_before_the_switch() {
    let mut r = on_node0_pausing();
    r.at(S(1));
    let cmds = r.tell(Input::Leader(names(1)));
    let cmds = r.checks_answered(cmds, &[down(), master(2), standby(1)]);
    assert_eq!(pause_in(&cmds), Some((0, Loss::Down)), "{cmds:?}");
    assert_eq!(switch_in(&cmds), None, "the pause comes first");
    let cmds = r.hold_made();
    assert!(
        matches!(held_switch_in(&cmds), Some((1, Some(_)))),
        "{cmds:?}"
    );
}

#[test]
fn a_hold_on_the_key_ends_at_pause_timeout_or_when_the_key_names_the_old_master_again() {
    // No leader for pause_timeout: clients are let go.
    let mut r = on_node0_pausing();
    r.at(S(1));
    r.tell(Input::Leader(Key::Deleted));
    r.hold_made();
    assert_eq!(r.p.hold_deadline(), Some(r.now + S(10)));
    r.at(S(10));
    let cmds = r.tell(Input::HoldDeadline);
    assert_eq!(release_in(&cmds), Some(Release::End(HoldEnd::TimedOut)));
    // The same loss gets no second pause while the key stays away.
    r.at(S(1));
    let cmds = r.tell(Input::Leader(names(2)));
    let cmds = r.checks_answered(cmds, &[down(), standby(1), standby(1)]);
    assert_eq!(pause_in(&cmds), None, "{cmds:?}");

    // A switchover that failed: Patroni gives the key back to node 0, a master again.
    let mut r = on_node0_pausing();
    r.at(S(1));
    r.tell(Input::Leader(Key::Deleted));
    r.hold_made();
    r.at(S(1));
    let cmds = r.tell(Input::Leader(names(0)));
    let cmds = r.checks_answered(cmds, &[master(1), standby(1), standby(1)]);
    assert_eq!(release_in(&cmds), Some(Release::End(HoldEnd::MasterBack)));
    assert_eq!(r.p.hold(), None);
}

#[test]
fn the_next_leader_heard_while_the_pause_is_being_made_gets_its_checks_after_it() {
    // A daemon that hears the key late gets the deletion and the next leader back to back:
    // the second arrives while the PAUSE asked for the first is under way.
    let mut r = on_node0_pausing();
    r.at(S(1));
    let cmds = r.tell(Input::Leader(Key::Deleted));
    assert_eq!(pause_in(&cmds), Some((0, Loss::NotLeader)));
    assert_eq!(r.tell(Input::Leader(names(1))), []);
    let cmds = r.hold_made();
    let cmds = r.checks_answered(
        cmds.into_iter()
            .skip_while(|c| !matches!(c, Command::Check { .. }))
            .collect(),
        &[down(), master(2), standby(1)],
    );
    assert!(
        matches!(held_switch_in(&cmds), Some((1, Some(_)))),
        "{cmds:?}"
    );
}
