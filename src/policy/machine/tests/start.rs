//! The start-up as the policy orders it: from [`Input::Start`] to the first round, with
//! PgBouncer answering late, a reload and a shutdown while it is awaited.

use super::*;
use crate::policy::messages::{Condition, Lasting};
use crate::policy::persist::Said;
use crate::throttle::Say;

/// A new process's policy, before [`Input::Start`], remembering `timelines`.
fn new_process(settings: Settings, timelines: Timelines) -> Run {
    let now = Instant::now();
    Run {
        p: Policy::new(settings, 2, timelines, now),
        now,
    }
}

/// Started with the symlink on node 0 and no timeline remembered, up to PgBouncer's
/// first answer.
fn pinging(settings: Settings) -> Run {
    let mut r = new_process(settings, Timelines::default());
    r.tell(Input::Start);
    let cmds = r.tell(Input::Linked { behind: Some(0) });
    if settings.pause_on_failover {
        assert_eq!(cmds.last(), Some(&Command::TryStateFile));
        r.tell(Input::Written { error: None });
    }
    r
}

fn refused() -> Input {
    Input::PgBouncer(Err("connection refused".into()))
}

fn answers() -> Input {
    Input::PgBouncer(Ok("PgBouncer 1.18.0".into()))
}

#[test]
fn a_start_clears_temp_links_then_believes_and_says_the_link_then_asks_pgbouncer() {
    let mut timelines = Timelines::default();
    timelines.raise(None, 3);
    let mut r = new_process(settings(true, false), timelines);
    assert!(!r.p.polling());
    assert_eq!(
        r.tell(Input::Start),
        [Command::RemoveTempLinks, Command::FindLinked]
    );
    assert_eq!(
        r.tell(Input::Linked { behind: Some(1) }),
        [
            Command::SayLinked(Some(1)),
            Command::SayRemembered(vec![3]),
            Command::Publish,
            Command::PingPgBouncer
        ]
    );
    assert_eq!(
        r.p.believed(),
        Believed {
            active: Some(1),
            confirmed: false
        }
    );
    assert_eq!(r.p.memory().unheard_link, None, "a timeline is remembered");
    assert!(!r.p.polling());
    assert_eq!(r.p.next_ping(), None, "the answer is awaited, not a timer");
    // Started once only.
    assert_eq!(r.tell(Input::Start), []);
}

#[test]
fn with_nothing_remembered_the_link_is_waited_for_and_no_timeline_is_said() {
    let mut r = new_process(settings(true, false), Timelines::default());
    r.tell(Input::Start);
    assert_eq!(
        r.tell(Input::Linked { behind: Some(0) }),
        [
            Command::SayLinked(Some(0)),
            Command::Publish,
            Command::PingPgBouncer
        ]
    );
    assert_eq!(r.p.memory().unheard_link, Some(0));
}

#[test]
fn with_pause_on_failover_the_state_file_is_tried_before_pgbouncer_is_asked() {
    let mut r = new_process(settings(true, true), Timelines::default());
    r.tell(Input::Start);
    assert_eq!(
        r.tell(Input::Linked { behind: None }),
        [Command::SayLinked(None), Command::TryStateFile]
    );
    let e = "cannot write state file /x: Permission denied";
    assert_eq!(
        r.tell(Input::Written {
            error: Some(e.into())
        }),
        [
            Command::SayStateFile(vec![Said::Failing(e.into())]),
            Command::Publish,
            Command::PingPgBouncer
        ]
    );
    assert_eq!(r.p.pausing(), Pausing::new(true, false));
}

#[test]
fn pgbouncer_not_answering_is_asked_again_after_the_retry_and_nothing_is_polled() {
    let mut r = pinging(settings(true, false));
    let t0 = r.now;
    assert_eq!(
        r.tell(refused()),
        [Command::PgBouncerSilent {
            error: "connection refused".into(),
            retry: PGBOUNCER_RETRY
        }]
    );
    assert_eq!(r.p.next_ping(), Some(t0 + PGBOUNCER_RETRY));
    assert!(!r.p.polling());
    // No round and no heartbeat before PgBouncer answers.
    r.at(PGBOUNCER_RETRY);
    assert_eq!(r.tell(Input::RoundDue), []);
    assert_eq!(r.tell(Input::HeartbeatDue), []);
    assert_eq!(r.tell(Input::PingDue), [Command::PingPgBouncer]);
    assert_eq!(r.p.next_ping(), None);
    r.tell(refused());
    assert_eq!(r.p.next_ping(), Some(t0 + PGBOUNCER_RETRY * 2));
    assert!(!r.p.polling());
}

#[test]
fn once_pgbouncer_answers_the_last_run_is_finished_and_the_first_round_is_due_at_once() {
    let mut r = pinging(settings(true, false));
    r.tell(refused());
    r.at(PGBOUNCER_RETRY);
    r.tell(Input::PingDue);
    assert_eq!(
        r.tell(answers()),
        [
            Command::PgBouncerAnswers {
                version: "PgBouncer 1.18.0".into()
            },
            Command::FinishLastRun
        ]
    );
    assert!(r.p.polling());
    assert_eq!(r.p.next_ping(), None);
    assert_eq!(r.p.next_round(), r.now);
    assert_eq!(r.p.next_heartbeat(), r.now + HEARTBEAT);
    let cmds = r.tell(Input::RoundDue);
    assert!(matches!(cmds[..], [Command::Check { round: true, .. }]));
    // A late or repeated answer starts nothing more.
    assert_eq!(r.tell(answers()), []);
}

#[test]
fn the_leader_watch_and_the_pause_settings_come_after_the_last_run_is_finished() {
    let mut r = new_process(settings(false, true), Timelines::default());
    r.p.follow_leader();
    r.tell(Input::Start);
    r.tell(Input::Linked { behind: Some(0) });
    r.tell(Input::Written { error: None });
    assert_eq!(
        r.tell(answers()),
        [
            Command::PgBouncerAnswers {
                version: "PgBouncer 1.18.0".into()
            },
            Command::FinishLastRun,
            Command::StartLeader,
            Command::CheckPauseSettings
        ]
    );
    assert!(r.p.polling());
}

#[test]
fn a_reload_while_pgbouncer_is_awaited_asks_it_again_at_once() {
    let mut r = pinging(settings(true, false));
    r.tell(refused());
    r.at(S(2));
    let cmds = r.tell(Input::Reloaded {
        from: vec![Carry::Kept(0), Carry::Kept(1)],
        old_count: 2,
        settings: settings(true, false),
        console_changed: true,
        changed: true,
    });
    assert_eq!(cmds, []);
    assert_eq!(r.p.next_ping(), Some(r.now), "not 3 s later");
    assert!(!r.p.polling(), "the reload starts no round");
    assert_eq!(r.tell(Input::PingDue), [Command::PingPgBouncer]);
}

#[test]
fn a_reload_that_removes_the_linked_node_while_pgbouncer_is_awaited_only_moves_the_belief() {
    let mut r = pinging(settings(true, false));
    r.tell(refused());
    let cmds = r.tell(Input::Reloaded {
        from: vec![Carry::Kept(1)],
        old_count: 2,
        settings: settings(true, false),
        console_changed: false,
        changed: true,
    });
    assert_eq!(cmds, [Command::FindLinked]);
    assert_eq!(r.tell(Input::Linked { behind: Some(0) }), []);
    assert_eq!(r.p.believed().active, Some(0));
    assert!(!r.p.polling());
}

#[test]
fn a_shutdown_while_pgbouncer_is_awaited_ends_without_a_round() {
    let mut r = pinging(settings(true, false));
    r.tell(refused());
    assert_eq!(r.tell(Input::Shutdown), []);
    assert!(!r.p.polling());
}

#[test]
fn a_shutdown_once_polling_says_where_pgbouncer_stays() {
    let mut r = pinging(settings(true, false));
    r.tell(answers());
    assert_eq!(r.tell(Input::Shutdown), [Command::SayShutdown]);
}

// When a lasting condition is said: the executor logs what it is told.

/// What a pass asks to log of its verdict's lasting conditions.
fn lasting(cmds: &[Command]) -> Lasting {
    let mut found = cmds.iter().filter_map(|c| match c {
        Command::LogDecision(l) => Some(l.clone()),
        _ => None,
    });
    let Some(l) = found.next() else {
        panic!("no LogDecision in {cmds:?}")
    };
    assert_eq!(found.next(), None, "one LogDecision per pass: {cmds:?}");
    l
}

/// The commands of a round whose servers answer as given.
fn round_of(r: &mut Run, answers: &[Answer]) -> Vec<Command> {
    let cmds = r.round(answers);
    r.reply_until_done(cmds, None)
}

#[test]
fn a_split_brain_is_said_at_its_first_round_then_only_when_a_reminder_is_due_then_when_over() {
    let mut r = Run::new(2, settings(false, false), None);
    let t0 = r.now;
    let split = Condition::SplitBrain(vec![0, 1]);
    let cmds = round_of(&mut r, &[master(1), master(1)]);
    assert_eq!(lasting(&cmds).cluster, [Say::Started(split.clone())]);
    r.at(REMINDER_EVERY - S(1));
    let cmds = round_of(&mut r, &[master(1), master(1)]);
    assert_eq!(lasting(&cmds), Lasting::default(), "not due yet");
    r.at(S(1));
    let cmds = round_of(&mut r, &[master(1), master(1)]);
    assert_eq!(
        lasting(&cmds).cluster,
        [Say::Reminder {
            key: split.clone(),
            lasted: REMINDER_EVERY,
            rounds: 2
        }]
    );
    r.at(S(1));
    let cmds = round_of(&mut r, &[master(1), master(1)]);
    assert!(lasting(&cmds).is_empty());
    r.now = t0 + S(70);
    let cmds = round_of(&mut r, &[master(1), standby(1)]);
    assert_eq!(
        lasting(&cmds).cluster,
        [Say::Ended {
            key: split,
            lasted: S(70)
        }]
    );
    assert_eq!(switch_in(&cmds), Some((0, SwitchReason::Initial)));
}

#[test]
fn a_stale_primary_is_named_when_found_and_reminded_by_its_node() {
    let mut timelines = Timelines::default();
    timelines.raise(None, 2);
    let now = Instant::now();
    let mut p = Policy::new(settings(false, false), 2, timelines, now);
    p.start(Some(1));
    p.start_polling(now);
    let mut r = Run { p, now };
    let cmds = round_of(&mut r, &[master(1), master(2)]);
    let said = lasting(&cmds);
    assert_eq!(said.stale, [Say::Started(vec![0])]);
    assert_eq!(
        said.stale_found.iter().map(|s| s.node).collect::<Vec<_>>(),
        [0]
    );
    assert_eq!(switch_in(&cmds), Some((1, SwitchReason::Confirm)));
    r.switched(1);
    r.at(S(30));
    let cmds = r.round(&[master(1), master(2)]);
    let cmds = r.reply_until_done(cmds, Some(1));
    assert_eq!(lasting(&cmds).stale, []);
    r.at(S(30));
    let cmds = r.round(&[master(1), master(2)]);
    let cmds = r.reply_until_done(cmds, Some(1));
    assert!(matches!(
        &lasting(&cmds).stale[..],
        [Say::Reminder { key, .. }] if *key == [0]
    ));
}

#[test]
fn a_failing_switch_is_said_once_then_reminded_then_said_to_work_again() {
    let mut r = Run::new(2, settings(false, false), None);
    let t0 = r.now;
    let error = || "RELOAD failed: connection refused".to_string();
    let failed = |r: &mut Run| {
        let started = r.now;
        r.tell(Input::Switched(Switched::Failed {
            to: 1,
            error: error(),
            started,
            not_taken: false,
            behind: None,
        }))
    };
    let cmds = round_of(&mut r, &[standby(1), master(1)]);
    assert_eq!(switch_in(&cmds), Some((1, SwitchReason::Initial)));
    assert_eq!(
        failed(&mut r)[0],
        Command::SwitchFailing(Say::Started(SwitchError {
            to: 1,
            error: error()
        }))
    );
    r.at(S(30));
    let cmds = round_of(&mut r, &[standby(1), master(1)]);
    assert!(switch_in(&cmds).is_some());
    assert_eq!(failed(&mut r), [Command::Publish, Command::RoundDone]);
    r.now = t0 + REMINDER_EVERY;
    let cmds = round_of(&mut r, &[standby(1), master(1)]);
    assert!(switch_in(&cmds).is_some());
    assert_eq!(
        failed(&mut r)[0],
        Command::SwitchFailing(Say::Reminder {
            key: SwitchError {
                to: 1,
                error: error()
            },
            lasted: REMINDER_EVERY,
            rounds: 2
        })
    );
    r.at(S(10));
    let cmds = round_of(&mut r, &[standby(1), master(1)]);
    assert!(switch_in(&cmds).is_some());
    assert_eq!(
        r.switched(1)[0],
        Command::SwitchRecovered {
            to: 1,
            lasted: REMINDER_EVERY + S(10)
        }
    );
    // Once: the next switch that works says nothing of it.
    assert!(
        !r.switched(1)
            .iter()
            .any(|c| matches!(c, Command::SwitchRecovered { .. }))
    );
}

#[test]
fn a_split_brain_whose_node_a_reload_removes_is_said_to_end_at_the_reload() {
    let mut r = Run::new(3, settings(false, false), None);
    let cmds = round_of(&mut r, &[master(1), master(1), standby(1)]);
    assert_eq!(
        lasting(&cmds).cluster,
        [Say::Started(Condition::SplitBrain(vec![0, 1]))]
    );
    r.at(S(4));
    let cmds = r.tell(Input::Reloading { removed: vec![1] });
    assert_eq!(
        lasting(&cmds).cluster,
        [Say::Ended {
            key: Condition::SplitBrain(vec![0, 1]),
            lasted: S(4)
        }]
    );
}

#[test]
fn a_split_brain_whose_nodes_a_reload_moves_goes_on_under_their_new_places() {
    let mut r = Run::new(3, settings(false, false), None);
    let cmds = round_of(&mut r, &[standby(1), master(1), master(1)]);
    assert_eq!(
        lasting(&cmds).cluster,
        [Say::Started(Condition::SplitBrain(vec![1, 2]))]
    );
    assert_eq!(r.tell(Input::Reloading { removed: vec![0] }), []);
    r.tell(Input::Reloaded {
        from: vec![Carry::Kept(1), Carry::Kept(2)],
        old_count: 3,
        settings: settings(false, false),
        console_changed: false,
        changed: true,
    });
    r.at(S(1));
    let cmds = round_of(&mut r, &[master(1), master(1)]);
    assert!(lasting(&cmds).is_empty(), "the same split brain goes on");
}
