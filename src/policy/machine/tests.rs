//! The loop's rules driven with plain values: inputs in, commands out. No runtime, no
//! fakes, no clock but the `Instant`s handed in.

use super::*;
use crate::decide::{Cluster, Timeline};
use crate::policy::messages::{Answer, Carry};
use crate::policy::pause::{HoldEnd, Loss};
use std::time::SystemTime;

const MS: fn(u64) -> Duration = Duration::from_millis;
const S: fn(u64) -> Duration = Duration::from_secs;

fn settings(keep_connections: bool, pause_on_failover: bool) -> Settings {
    Settings {
        keep_connections,
        interval: S(5),
        fast_interval: MS(200),
        timeout: S(2),
        pause_on_failover,
        pause_timeout: S(10),
    }
}

fn master(timeline: u32) -> Answer {
    Answer {
        state: NodeState::Master,
        timeline: Some(Timeline {
            timeline,
            system: None,
        }),
        hung: false,
        fresh: None,
    }
}

fn standby(timeline: u32) -> Answer {
    Answer {
        state: NodeState::Standby,
        ..master(timeline)
    }
}

fn down() -> Answer {
    Answer {
        state: NodeState::Down,
        timeline: None,
        hung: false,
        fresh: None,
    }
}

fn hung() -> Answer {
    Answer {
        hung: true,
        ..down()
    }
}

/// A policy and its own clock, with the executor's side played by hand.
struct Run {
    p: Policy,
    now: Instant,
}

impl Run {
    fn new(nodes: usize, settings: Settings, linked: Option<NodeId>) -> Run {
        let now = Instant::now();
        let mut p = Policy::new(settings, nodes, Timelines::default(), now);
        p.start(linked);
        p.start_polling(now);
        Run { p, now }
    }

    fn at(&mut self, later: Duration) -> &mut Self {
        self.now += later;
        self
    }

    fn tell(&mut self, input: Input) -> Vec<Command> {
        self.p.handle(input, self.now)
    }

    /// A round whose checks all answer as given (in node order), up to the first command
    /// that needs an answer other than the checks'.
    fn round(&mut self, answers: &[Answer]) -> Vec<Command> {
        let asked = self.tell(Input::RoundDue);
        let Some(Command::Check { nodes, .. }) = asked.first() else {
            panic!("a round begins with checks, got {asked:?}");
        };
        for node in nodes.clone() {
            assert!(
                self.tell(Input::Answer {
                    node,
                    answer: answers[node].clone()
                })
                .is_empty()
            );
        }
        self.tell(Input::ChecksOver)
    }

    /// The commands until the pass stops for something other than what `reply` answers.
    /// A check on a new connection finds each server as it was, accepting.
    fn reply_until_done(&mut self, cmds: Vec<Command>, link: Option<NodeId>) -> Vec<Command> {
        self.reply_until_done_with(cmds, link, |k| Answer {
            state: k.state.unwrap_or(NodeState::Down),
            timeline: k.timeline,
            hung: false,
            fresh: Some(Ok(())),
        })
    }

    /// As [`Run::reply_until_done`], each server asked on a new connection answering
    /// what `fresh` makes of what the policy knows of it.
    fn reply_until_done_with(
        &mut self,
        mut cmds: Vec<Command>,
        link: Option<NodeId>,
        fresh: impl Fn(&Known) -> Answer,
    ) -> Vec<Command> {
        let mut all = Vec::new();
        loop {
            let mut next = None;
            for c in &cmds {
                next = match c {
                    Command::CheckLink => Some(Input::Link {
                        behind: link,
                        target: None,
                        session_closed: false,
                    }),
                    Command::CompareRoutes { .. } => Some(Input::Routes(Routes::Same)),
                    Command::WriteTimelines(_) => Some(Input::Written { error: None }),
                    Command::Check {
                        nodes, fresh: true, ..
                    } => {
                        for &node in nodes {
                            let answer = fresh(&self.p.nodes()[node]);
                            self.tell(Input::Answer { node, answer });
                        }
                        Some(Input::ChecksOver)
                    }
                    _ => next,
                };
            }
            all.extend(cmds);
            match next {
                Some(i) => cmds = self.tell(i),
                None => return all,
            }
        }
    }

    fn switched(&mut self, to: NodeId) -> Vec<Command> {
        let started = self.now;
        self.tell(Input::Switched(Switched::Done {
            to,
            started,
            waiting: None,
            resume_failed: false,
        }))
    }
}

fn switch_in(cmds: &[Command]) -> Option<(NodeId, SwitchReason)> {
    cmds.iter().find_map(|c| match c {
        Command::Switch { to, reason, .. } => Some((*to, *reason)),
        _ => None,
    })
}

/// The first switch's target and the held databases it carries (resumes, not kills).
fn held_switch_in(cmds: &[Command]) -> Option<(NodeId, Option<Vec<String>>)> {
    cmds.iter().find_map(|c| match c {
        Command::Switch { to, held, .. } => Some((*to, held.clone())),
        _ => None,
    })
}

fn pause_in(cmds: &[Command]) -> Option<(NodeId, Loss)> {
    cmds.iter().find_map(|c| match c {
        Command::Pause { lost, why } => Some((*lost, *why)),
        _ => None,
    })
}

fn release_in(cmds: &[Command]) -> Option<Release> {
    cmds.iter().find_map(|c| match c {
        Command::EndHold { release, .. } => Some(release.clone()),
        _ => None,
    })
}

/// Node 0 is the confirmed master on timeline 1, nodes 1 and 2 standbys; settled.
fn settled_on_node0(settings: Settings) -> Run {
    let mut r = Run::new(3, settings, Some(0));
    let healthy = [master(1), standby(1), standby(1)];
    let cmds = r.round(&healthy);
    let cmds = r.reply_until_done(cmds, None);
    assert_eq!(switch_in(&cmds), Some((0, SwitchReason::Confirm)));
    r.switched(0);
    r.at(MS(200));
    let cmds = r.round(&healthy);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(switch_in(&cmds), None);
    assert!(cmds.contains(&Command::RoundDone), "{cmds:?}");
    assert!(!r.p.unsettled());
    r
}

#[test]
fn a_round_asks_every_due_server_and_waits_only_for_those_not_hung() {
    let mut r = Run::new(3, settings(false, false), None);
    let cmds = r.tell(Input::RoundDue);
    let [
        Command::Check {
            nodes,
            wait_for,
            until,
            round: true,
            fresh: false,
        },
    ] = cmds.as_slice()
    else {
        panic!("{cmds:?}");
    };
    assert_eq!(nodes, &[0, 1, 2]);
    assert_eq!(wait_for, &[0, 1, 2]);
    assert_eq!(*until, Some(r.now + S(2) + MS(250)));
    for (node, a) in [hung(), standby(1), standby(1)].into_iter().enumerate() {
        r.tell(Input::Answer { node, answer: a });
    }
    r.tell(Input::ChecksOver);
    // The hung server is asked again (its back-off is one fast round) but not waited for.
    r.at(MS(200));
    let cmds = r.tell(Input::RoundDue);
    let Some(Command::Check {
        nodes, wait_for, ..
    }) = cmds.first()
    else {
        panic!("{cmds:?}");
    };
    assert_eq!(nodes, &[0, 1, 2]);
    assert_eq!(wait_for, &[1, 2]);
}

#[test]
fn a_whole_failover_from_answers_to_a_confirmed_switch() {
    let mut r = settled_on_node0(settings(false, false));
    assert_eq!(
        r.p.next_round(),
        r.now + S(5),
        "settled: rounds every interval"
    );

    // Node 0 stops; node 1 is promoted to timeline 2.
    r.at(S(5));
    let cmds = r.round(&[down(), master(2), standby(1)]);
    assert_eq!(cmds, [Command::CheckLink]);
    let cmds = r.tell(Input::Link {
        behind: Some(0),
        target: None,
        session_closed: false,
    });
    // The new timeline is on disk before anything is switched to it.
    let mut expected = Timelines::default();
    expected.raise(None, 2);
    assert_eq!(cmds, [Command::WriteTimelines(expected)]);
    let cmds = r.tell(Input::Written { error: None });
    assert!(matches!(cmds[0], Command::LogDecision(_)), "{cmds:?}");
    assert_eq!(
        cmds.last(),
        Some(&Command::Switch {
            to: 1,
            from: Some(0),
            reason: SwitchReason::Failover,
            held: None
        })
    );
    let cmds = r.switched(1);
    assert_eq!(cmds, [Command::Publish, Command::RoundDone]);
    assert_eq!(
        r.p.believed(),
        Believed {
            active: Some(1),
            confirmed: true
        }
    );
    assert_eq!(
        r.p.next_round(),
        r.now + MS(200),
        "a switch is followed fast"
    );

    // The old primary comes back on timeline 1: stale, never switched to.
    r.at(MS(200));
    let cmds = r.round(&[master(1), master(2), standby(2)]);
    let cmds = r.reply_until_done(cmds, Some(1));
    assert_eq!(switch_in(&cmds), None);
    let Some(d) = r.p.decision() else {
        panic!("no verdict")
    };
    assert_eq!(d.cluster, Cluster::OneMaster(1));
    assert_eq!(d.stale.iter().map(|s| s.node).collect::<Vec<_>>(), [0]);
}

#[test]
fn a_failed_switch_believes_the_link_and_is_tried_again_after_its_pace() {
    let mut r = Run::new(2, settings(false, false), None);
    let cmds = r.round(&[standby(1), master(1)]);
    let cmds = r.reply_until_done(cmds, None);
    assert_eq!(switch_in(&cmds), Some((1, SwitchReason::Initial)));
    let started = r.now;
    let error = "RELOAD failed".to_string();
    let cmds = r.tell(Input::Switched(Switched::Failed {
        to: 1,
        error: error.clone(),
        started,
        not_taken: false,
        behind: None,
    }));
    assert_eq!(
        cmds,
        [
            Command::SwitchFailing(crate::throttle::Say::Started(SwitchError { to: 1, error })),
            Command::Publish,
            Command::RoundDone
        ]
    );
    assert_eq!(r.p.believed(), Believed::default());
    // The next fast round comes too soon for another attempt; a second later it is made.
    r.at(MS(200));
    let cmds = r.round(&[standby(1), master(1)]);
    let cmds = r.reply_until_done(cmds, None);
    assert_eq!(switch_in(&cmds), None);
    r.at(MS(800));
    let cmds = r.round(&[standby(1), master(1)]);
    let cmds = r.reply_until_done(cmds, None);
    assert_eq!(switch_in(&cmds), Some((1, SwitchReason::Initial)));
}

#[test]
fn drift_unconfirms_the_active_node_and_the_switch_back_says_drift() {
    let mut r = settled_on_node0(settings(false, false));
    r.at(S(5));
    let cmds = r.round(&[master(1), standby(1), standby(1)]);
    assert_eq!(cmds, [Command::CheckLink]);
    // Someone pointed the symlink at node 1's file.
    let cmds = r.tell(Input::Link {
        behind: Some(1),
        target: None,
        session_closed: false,
    });
    assert_eq!(
        cmds[0],
        Command::Drifted {
            was: Some(0),
            behind: Some(1),
            target: None,
            routes: None
        }
    );
    assert_eq!(switch_in(&cmds), Some((0, SwitchReason::Drift)));
    let Some(Command::Switch { from, .. }) = cmds.last() else {
        panic!("{cmds:?}")
    };
    assert_eq!(*from, Some(1));
    r.switched(0);
    // Back where it belongs: the next switch is no drift.
    assert!(!r.p.drifted);
}

#[test]
fn routes_are_compared_every_few_rounds_and_at_once_after_a_pgbouncer_restart() {
    let mut r = settled_on_node0(settings(false, false));
    let healthy = [master(1), standby(1), standby(1)];
    let link = |closed| Input::Link {
        behind: Some(0),
        target: None,
        session_closed: closed,
    };
    let mut compared = Vec::new();
    for round in 0..4 {
        r.at(S(5));
        assert_eq!(r.round(&healthy), [Command::CheckLink]);
        let cmds = r.tell(link(false));
        if cmds
            .iter()
            .any(|c| matches!(c, Command::CompareRoutes { .. }))
        {
            compared.push(round);
            r.tell(Input::Routes(Routes::Same));
        }
    }
    assert_eq!(compared, [2], "the third round after the last comparison");
    r.at(S(5));
    r.round(&healthy);
    assert_eq!(
        r.tell(link(true)),
        [Command::CompareRoutes {
            node: 0,
            restarted: true
        }]
    );
    let cmds = r.tell(Input::Routes(Routes::Differ(
        "appdb routes elsewhere".into(),
    )));
    assert!(matches!(&cmds[0], Command::Drifted { routes: Some(w), .. } if w.contains("appdb")));
    assert_eq!(switch_in(&cmds), Some((0, SwitchReason::Drift)));
}

#[test]
fn the_heartbeat_asks_the_confirmed_master_between_rounds_of_a_settled_cluster_only() {
    let mut r = settled_on_node0(settings(true, false));
    let beat = r.tell(Input::HeartbeatDue);
    assert_eq!(
        beat,
        [Command::Check {
            nodes: vec![0],
            fresh: false,
            wait_for: vec![],
            until: None,
            round: false
        }]
    );
    assert_eq!(r.p.next_heartbeat(), r.now + HEARTBEAT);
    // Its check is still under way: not asked twice.
    r.at(HEARTBEAT);
    assert_eq!(r.tell(Input::HeartbeatDue), []);
    // Its answer: unchanged, nothing to do.
    assert_eq!(
        r.tell(Input::Answer {
            node: 0,
            answer: master(1)
        }),
        []
    );
    r.at(HEARTBEAT);
    assert_eq!(r.tell(Input::HeartbeatDue), beat);
    // It hung: the timeout marks it down, which decides at once and polls fast.
    let cmds = r.tell(Input::Answer {
        node: 0,
        answer: hung(),
    });
    assert!(matches!(cmds[0], Command::LogDecision(_)), "{cmds:?}");
    assert!(r.p.unsettled());
    assert_eq!(r.p.next_round(), r.now + MS(200));
    r.at(HEARTBEAT);
    assert_eq!(
        r.tell(Input::HeartbeatDue),
        [],
        "unsettled: rounds are fast"
    );

    // With an interval of a second or less the rounds are the heartbeat.
    let mut r = settled_on_node0(Settings {
        interval: S(1),
        ..settings(true, false)
    });
    assert_eq!(r.tell(Input::HeartbeatDue), []);
    // Without kept connections there is no cheap check to make.
    let mut r = settled_on_node0(settings(false, false));
    assert_eq!(r.tell(Input::HeartbeatDue), []);
}

#[test]
fn the_target_of_a_switch_is_first_asked_on_a_new_connection_and_one_refusing_is_not_switched_to() {
    let mut r = Run::new(2, settings(true, false), Some(0));
    let cmds = r.round(&[standby(1), master(1)]);
    assert_eq!(
        cmds,
        [Command::Check {
            nodes: vec![1],
            fresh: true,
            wait_for: vec![1],
            until: Some(r.now + S(2) + MS(250)),
            round: false
        }]
    );
    r.tell(Input::Answer {
        node: 1,
        answer: Answer {
            fresh: Some(Err("too many connections".into())),
            ..master(1)
        },
    });
    let cmds = r.tell(Input::ChecksOver);
    let cmds = r.reply_until_done(cmds, None);
    assert_eq!(switch_in(&cmds), None);
    assert_eq!(
        r.p.nodes()[1].refuses_new.as_deref(),
        Some("too many connections")
    );
}

/// Pausing on, node 0 lost 5 s after settling, the `Pause` it asks for made on `appdb`.
/// Returns the run, when the pause started and what the policy asked after it.
fn paused_at_the_loss_of_node0() -> (Run, Instant, Vec<Command>) {
    let mut r = settled_on_node0(settings(false, true));
    r.at(S(5));
    let cmds = r.round(&[down(), standby(1), standby(1)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(pause_in(&cmds), Some((0, Loss::Down)));
    let started = r.now;
    let cmds = r.tell(Input::Paused(Some(Paused {
        databases: vec!["appdb".into()],
        started,
        since: SystemTime::UNIX_EPOCH,
        held_since: None,
    })));
    (r, started, cmds)
}

#[test]
fn a_lost_master_starts_a_pause_that_its_return_ends() {
    let (mut r, started, cmds) = paused_at_the_loss_of_node0();
    assert_eq!(cmds[0], Command::Publish);
    // Held: nothing pending is finished (its RESUME would end the pause), rounds are fast.
    assert!(!cmds.contains(&Command::FinishPending), "{cmds:?}");
    assert_eq!(r.p.hold_deadline(), Some(started + S(10)));
    assert!(r.p.unsettled());

    // Still down: the same loss gets no second pause.
    r.at(MS(200));
    let cmds = r.round(&[down(), standby(1), standby(1)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(pause_in(&cmds), None);
    assert_eq!(release_in(&cmds), None);

    // Backing off after two failed checks, it is asked again after 0.4 s.
    r.at(MS(400));
    let cmds = r.round(&[master(1), standby(1), standby(1)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(release_in(&cmds), Some(Release::End(HoldEnd::MasterBack)));
    assert!(cmds.contains(&Command::FinishPending));
    assert_eq!(r.p.hold(), None);

    // Its next loss has a pause of its own.
    r.at(S(5));
    let cmds = r.round(&[down(), standby(1), standby(1)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(pause_in(&cmds), Some((0, Loss::Down)));
}

#[test]
fn a_pause_ends_with_the_switch_to_the_new_master_or_at_pause_timeout() {
    let mut r = settled_on_node0(settings(false, true));
    r.at(S(5));
    let cmds = r.round(&[down(), standby(1), standby(1)]);
    r.reply_until_done(cmds, Some(0));
    let started = r.now;
    let paused = Paused {
        databases: vec!["appdb".into()],
        started,
        since: SystemTime::UNIX_EPOCH,
        held_since: None,
    };
    r.tell(Input::Paused(Some(paused.clone())));

    // The standby is promoted: the switch carries the held databases and ends the hold.
    r.at(MS(200));
    let cmds = r.round(&[down(), master(2), standby(1)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(
        held_switch_in(&cmds),
        Some((1, Some(paused.databases.clone()))),
        "{cmds:?}"
    );
    let cmds = r.switched(1);
    assert!(
        matches!(&cmds[0], Command::HoldSwitched { to: 1, hold, .. } if hold.lost == 0),
        "{cmds:?}"
    );
    assert_eq!(r.p.hold(), None);

    // Another loss with nothing to switch to: the deadline ends it.
    let mut r = settled_on_node0(settings(false, true));
    r.at(S(5));
    let cmds = r.round(&[down(), standby(1), standby(1)]);
    r.reply_until_done(cmds, Some(0));
    let started = r.now;
    r.tell(Input::Paused(Some(Paused { started, ..paused })));
    r.at(S(10));
    let cmds = r.tell(Input::HoldDeadline);
    assert_eq!(release_in(&cmds), Some(Release::End(HoldEnd::TimedOut)));
    assert_eq!(r.p.hold_deadline(), None);
}

#[test]
fn a_pause_that_could_not_be_made_is_not_tried_again_for_the_same_loss() {
    let mut r = settled_on_node0(settings(false, true));
    r.at(S(5));
    let cmds = r.round(&[down(), standby(1), standby(1)]);
    r.reply_until_done(cmds, Some(0));
    let cmds = r.tell(Input::Paused(None));
    assert!(cmds.contains(&Command::FinishPending), "{cmds:?}");
    assert_eq!(r.p.hold(), None);
    r.at(MS(200));
    let cmds = r.round(&[down(), standby(1), standby(1)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(pause_in(&cmds), None);
}

#[test]
fn with_the_state_file_unwritable_a_loss_is_said_unheld_instead_of_paused() {
    let mut r = settled_on_node0(settings(false, true));
    let cmds = r.tell(Input::Written {
        error: Some("cannot write state file /x: Read-only file system".into()),
    });
    assert!(matches!(&cmds[..], [Command::SayStateFile(_)]), "{cmds:?}");
    assert_eq!(r.p.pausing(), Pausing::NeedsStateFile);
    r.at(S(5));
    let cmds = r.round(&[down(), standby(1), standby(1)]);
    assert_eq!(cmds, [Command::CheckLink]);
    let cmds = r.tell(Input::Link {
        behind: Some(0),
        target: None,
        session_closed: false,
    });
    // The failed write is retried first, before the verdict is acted on.
    let [Command::WriteTimelines(_)] = &cmds[..] else {
        panic!("{cmds:?}")
    };
    let cmds = r.tell(Input::Written {
        error: Some("cannot write state file /x: Read-only file system".into()),
    });
    assert!(cmds.contains(&Command::CannotHold(Loss::Down)), "{cmds:?}");
    assert_eq!(pause_in(&cmds), None);
}

#[test]
fn shutdown_and_the_removal_of_the_lost_master_end_a_hold() {
    for input in [Input::Shutdown, Input::Reloading { removed: vec![0] }] {
        let mut r = settled_on_node0(settings(false, true));
        r.at(S(5));
        let cmds = r.round(&[down(), standby(1), standby(1)]);
        r.reply_until_done(cmds, Some(0));
        let started = r.now;
        r.tell(Input::Paused(Some(Paused {
            databases: vec!["appdb".into()],
            started,
            since: SystemTime::UNIX_EPOCH,
            held_since: None,
        })));
        let expected = match input {
            Input::Shutdown => Release::Shutdown,
            _ => Release::Removed(0),
        };
        assert_eq!(release_in(&r.tell(input)), Some(expected));
        assert_eq!(r.p.hold(), None);
    }
    // Removing another server leaves the hold alone.
    let mut r = settled_on_node0(settings(false, true));
    assert_eq!(r.tell(Input::Reloading { removed: vec![2] }), []);
}

#[test]
fn a_reload_carries_what_is_known_to_the_new_order_and_finds_the_link_if_the_active_node_went() {
    let mut r = settled_on_node0(settings(false, false));
    // Node 0 removed, node 2 first, node 1 replaced by another server of that name.
    let cmds = r.tell(Input::Reloaded {
        from: vec![Carry::Kept(2), Carry::Replaced(1)],
        old_count: 3,
        settings: settings(false, false),
        console_changed: false,
        changed: true,
    });
    assert_eq!(cmds, [Command::FindLinked]);
    assert_eq!(r.p.nodes().len(), 2);
    assert_eq!(r.p.nodes()[0].state, Some(NodeState::Standby));
    assert_eq!(r.p.nodes()[1].state, None);
    assert_eq!(r.p.decision(), None, "node ids moved: decide again");
    assert_eq!(r.p.next_round(), r.now, "a change is checked at once");
    r.tell(Input::Linked { behind: None });
    assert_eq!(r.p.believed(), Believed::default());
}

#[test]
fn a_closed_monitoring_connection_checks_every_server_now_even_one_backing_off() {
    let mut r = settled_on_node0(settings(true, false));
    // Node 2 fails a few checks and backs off beyond the next round.
    for _ in 0..4 {
        r.tell(Input::Answer {
            node: 2,
            answer: down(),
        });
    }
    r.at(MS(300));
    let cmds = r.tell(Input::ConnectionClosed { node: 0 });
    let Some(Command::Check { nodes, .. }) = cmds.first() else {
        panic!("{cmds:?}")
    };
    assert_eq!(nodes, &[0, 1, 2]);
    assert!(r.p.unsettled());
}

mod leader;
mod leader_pause;
mod pause_takeover;
mod rules;
mod start;
#[test]
fn a_master_gone_at_its_target_check_still_raises_the_timeline() {
    let mut r = settled_on_node0(settings(true, false));
    r.at(S(5));
    // Node 1 answers as master on timeline 3, then is gone at the check on a new
    // connection that a switch to it needs.
    let cmds = r.round(&[down(), master(3), standby(1)]);
    let all = r.reply_until_done_with(cmds, Some(0), |_| down());
    assert_eq!(switch_in(&all), None, "{all:?}");
    let written: Vec<u32> = all
        .iter()
        .filter_map(|c| match c {
            Command::WriteTimelines(t) => t.highest(None),
            _ => None,
        })
        .collect();
    assert_eq!(written, [3], "{all:?}");
    // A master on timeline 2 later is stale: timeline 3 was seen.
    r.at(S(1));
    let cmds = r.round(&[down(), down(), master(2)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(switch_in(&cmds), None, "{cmds:?}");
}
