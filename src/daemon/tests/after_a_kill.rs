//! What a killed rebouncer left in PgBouncer, and a `KILL` that keeps failing.

use tokio::time::sleep;

use super::world::*;
use crate::daemon::*;
use crate::state::State;

#[tokio::test(start_paused = true)]
async fn databases_a_killed_rebouncer_left_paused_are_resumed_at_start_and_no_others() {
    let state = State {
        resume_pending: vec!["appdb".into()],
        ..State::default()
    };
    let w = world(&[Master(1), Standby(1)], 1, state).await;
    // What a SIGKILL between KILL and RESUME leaves behind.
    w.bouncer.pause_by_hand("appdb");
    w.until(S(2), |w| w.bouncer.paused().is_empty(), "appdb resumed")
        .await;
    let file = StateFile::load(&w.root.join("rebouncer.state")).unwrap();
    assert!(file.state().resume_pending.is_empty(), "{:?}", file.state());
    // An operator's own pause is left alone, and shown.
    w.bouncer.pause_by_hand("appdb");
    w.until(S(10), |w| !w.snapshot().paused.is_empty(), "pause shown")
        .await;
    assert!(
        w.nagios()
            .starts_with("WARNING: database(s) appdb paused in PgBouncer (not by rebouncer"),
        "{}",
        w.nagios()
    );
    sleep(S(10)).await;
    assert_eq!(w.bouncer.paused(), vec!["appdb".to_string()]);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn databases_a_killed_rebouncer_moved_but_did_not_kill_are_killed_at_start() {
    // What a SIGKILL between a switch's RELOAD and its KILL leaves behind: PgBouncer
    // already routes to the new master, but session clients may still be on the old
    // server. The next rebouncer KILLs (and RESUMEs) them once, and only them.
    let state = State {
        resume_pending: vec!["appdb".into()],
        kill_pending: vec!["appdb".into()],
        ..State::default()
    };
    let w = world(&[Master(1), Standby(1)], 1, state).await;
    w.until(
        S(2),
        |w| w.bouncer.count("KILL appdb") == 1 && w.bouncer.paused().is_empty(),
        "appdb killed and resumed at start",
    )
    .await;
    let log = w.bouncer.log();
    let k = log.iter().position(|c| c == "KILL appdb").unwrap();
    assert_eq!(log[k + 1], "RESUME appdb", "{log:?}");
    let file = StateFile::load(&w.root.join("rebouncer.state")).unwrap();
    assert!(file.state().kill_pending.is_empty(), "{:?}", file.state());
    assert!(file.state().resume_pending.is_empty(), "{:?}", file.state());
    sleep(S(10)).await;
    assert_eq!(w.bouncer.count("KILL"), 1, "{:?}", w.bouncer.log());
    assert!(w.nagios().starts_with("OK"), "{}", w.nagios());
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_kill_that_fails_is_shown_kept_on_disk_and_retried_until_it_works() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    w.bouncer.fail("KILL", Some("permission denied"));
    w.set(1, Down);
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "switched to pg2")
        .await;
    w.until(
        S(3),
        |w| {
            w.nagios()
                .starts_with("WARNING: database(s) appdb moved to pg2, KILL pending")
        },
        "the failed KILL on /nagios",
    )
    .await;
    let file = || {
        StateFile::load(&w.root.join("rebouncer.state"))
            .unwrap()
            .state()
            .clone()
    };
    assert_eq!(
        file().kill_pending,
        ["appdb"],
        "a restarted rebouncer would KILL it"
    );
    let tries = w.bouncer.count("KILL");
    sleep(S(5)).await;
    assert!(w.bouncer.count("KILL") > tries, "retried every round");
    w.bouncer.fail("KILL", None);
    w.until(
        S(5),
        |w| !w.nagios().contains("KILL pending"),
        "the KILL through, /nagios back to the cluster's state",
    )
    .await;
    assert!(file().kill_pending.is_empty(), "{:?}", file());
    assert!(w.bouncer.paused().is_empty());
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_kill_still_failing_does_not_end_a_pause() {
    let w = world_with(
        &[Master(1), Standby(1), Standby(1)],
        1,
        State::default(),
        PAUSING,
    )
    .await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    w.bouncer.fail("KILL", Some("permission denied"));
    w.set(1, Down);
    w.set(2, Master(2));
    w.set(3, Standby(2));
    w.until(
        S(3),
        |w| w.routed() == Some(2) && w.nagios().contains("KILL pending"),
        "switched to pg2 with its KILL pending",
    )
    .await;
    // pg2 is lost in turn: clients are held, and the failing KILL's retry must not
    // RESUME them.
    w.set(2, Down);
    w.until(S(3), |w| w.bouncer.paused() == ["appdb"], "appdb paused")
        .await;
    w.during(
        S(4),
        |w| w.bouncer.paused() == ["appdb"],
        "held while there is no master",
    )
    .await;
    w.bouncer.fail("KILL", None);
    w.set(3, Master(3));
    w.until(
        S(3),
        |w| w.routed() == Some(3) && w.bouncer.paused().is_empty(),
        "switched to pg3 and resumed",
    )
    .await;
    w.until(
        S(5),
        |w| !w.nagios().contains("KILL pending"),
        "the old KILL through once the pause is over",
    )
    .await;
    w.stop().await;
}
