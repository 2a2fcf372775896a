//! Clients held in PgBouncer while there is no master (`pause_on_failover`).

use tokio::time::sleep;

use super::world::*;
use crate::daemon::*;
use crate::state::State;

/// The pause ends within `within` with `outcome`, PgBouncer still on pg1's config.
async fn resumed_on_pg1(w: &World, within: Duration, outcome: &str) {
    w.until(within, |w| w.bouncer.paused().is_empty(), "resumed")
        .await;
    assert_eq!(w.routed(), Some(1));
    assert!(
        last_hold_outcome(w).is_some_and(|o| o.contains(outcome)),
        "{:?}",
        w.snapshot().failover_pause
    );
}

#[tokio::test(start_paused = true)]
async fn clients_are_held_while_there_is_no_master_and_released_by_the_switch() {
    let w = paused_without_pg1(&[Master(1), Standby(1), Standby(1)]).await;
    assert!(
        w.nagios()
            .starts_with("WARNING: database(s) appdb paused by rebouncer for 0 s"),
        "{}",
        w.nagios()
    );
    // The HA manager takes 3 s to promote: clients keep waiting, nothing moves.
    w.during(
        S(3),
        |w| w.bouncer.paused() == ["appdb"] && w.routed() == Some(1),
        "held on pg1's config while there is no master",
    )
    .await;
    w.set(2, Master(2));
    w.set(3, Standby(2));
    w.until(
        S(1),
        |w| w.routed() == Some(2) && w.bouncer.paused().is_empty(),
        "switched to pg2 and resumed",
    )
    .await;
    // The waiting clients are what the pause was for: KILL would drop them.
    assert_eq!(w.bouncer.count("KILL"), 0, "{:?}", w.bouncer.log());
    assert!(held_in_file(&w).is_empty());
    assert_eq!(last_hold_outcome(&w).as_deref(), Some("switched to pg2"));
    assert!(
        w.nagios()
            .starts_with("WARNING: 1 server down (pg1); 1 master (pg2)"),
        "{}",
        w.nagios()
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_shortens_pause_timeout_applies_to_the_pause_under_way() {
    let w = paused_without_pg1(&[Master(1), Standby(1)]).await;
    w.reload("pause_on_failover=on\npause_timeout=3\n", &w.lines(&[1, 2]))
        .await;
    w.until(
        S(4),
        |w| w.bouncer.paused().is_empty(),
        "released at the new pause_timeout, not the old 10 s",
    )
    .await;
    assert!(
        last_hold_outcome(&w).is_some_and(|o| o.contains("pause_timeout (3 s)")),
        "{:?}",
        last_hold_outcome(&w)
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_master_within_pause_timeout_clients_are_released_to_their_errors() {
    let w = paused_without_pg1(&[Master(1), Standby(1)]).await;
    let paused = Instant::now();
    w.until(S(11), |w| w.bouncer.paused().is_empty(), "resumed")
        .await;
    let held = paused.elapsed();
    assert!(
        held >= Duration::from_millis(9800) && held <= Duration::from_millis(10300),
        "held {held:?}"
    );
    assert_eq!(w.routed(), Some(1));
    assert!(held_in_file(&w).is_empty());
    assert!(
        last_hold_outcome(&w)
            .is_some_and(|o| o.contains("no master appeared within pause_timeout (10 s)")),
        "{:?}",
        w.snapshot().failover_pause
    );
    assert!(
        w.nagios().starts_with("CRITICAL: no master"),
        "{}",
        w.nagios()
    );
    // The same loss is not paused for again.
    w.during(S(5), |w| w.bouncer.paused().is_empty(), "no second pause")
        .await;
    assert_eq!(w.bouncer.count("PAUSE"), 1);
    // A promotion later is still followed.
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "pg2").await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_split_brain_while_paused_releases_the_clients_without_a_switch() {
    let w = paused_without_pg1(&[Master(1), Standby(1), Standby(1)]).await;
    w.set(2, Master(2));
    w.set(3, Master(2));
    resumed_on_pg1(&w, S(1), "split brain (pg2, pg3)").await;
    w.during(S(5), |w| w.routed() == Some(1), "no switch in split brain")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn only_a_stale_primary_while_paused_releases_the_clients_without_a_switch() {
    let mut state = State::default();
    state.raise(Some(42), 2);
    let w = world_with(&[Master(2), Standby(2), Standby(2)], 1, state, PAUSING).await;
    paused_after_pg1_is_lost(&w).await;
    // An old primary, restored from a backup on timeline 1, starts as a master.
    w.set(3, Master(1));
    resumed_on_pg1(&w, S(2), "only a stale primary (pg3)").await;
    w.during(S(5), |w| w.routed() == Some(1), "never to the stale pg3")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_master_that_comes_back_ends_the_pause_without_a_switch() {
    let w = paused_without_pg1(&[Master(1), Standby(1)]).await;
    w.set(1, Master(1));
    resumed_on_pg1(&w, S(1), "pg1 answers as master again").await;
    // A second loss pauses again.
    w.set(1, Down);
    w.until(S(2), |w| w.bouncer.paused() == ["appdb"], "paused again")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pause_that_hangs_is_given_up_and_resumed() {
    let w = pausing(&[Master(1), Standby(1)]).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    // A real PAUSE waits for running transactions; this one never completes.
    w.bouncer.hang("PAUSE", true);
    w.set(1, Down);
    w.until(S(2), |w| w.bouncer.count("PAUSE") == 1, "PAUSE sent")
        .await;
    let sent = Instant::now();
    w.until(S(3), |w| w.bouncer.paused().is_empty(), "resumed")
        .await;
    assert!(
        sent.elapsed() <= Duration::from_millis(2100),
        "{:?}",
        sent.elapsed()
    );
    assert!(held_in_file(&w).is_empty());
    // Going on without a pause: the promotion is followed as before.
    w.bouncer.hang("PAUSE", false);
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "pg2").await;
    assert_eq!(w.bouncer.count("PAUSE"), 1);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutting_down_while_paused_resumes_first() {
    let w = paused_without_pg1(&[Master(1), Standby(1)]).await;
    let bouncer = w.bouncer.clone();
    let root = w.root.clone();
    let dir = w.root.clone();
    w.stop().await;
    assert!(bouncer.paused().is_empty(), "{:?}", bouncer.log());
    let file = StateFile::load(&root.join("rebouncer.state")).unwrap();
    assert!(
        file.state().resume_pending.is_empty(),
        "{:?} in {}",
        file.state(),
        dir.display()
    );
}

#[tokio::test(start_paused = true)]
async fn a_resume_that_fails_at_the_end_of_a_pause_is_retried_every_round() {
    let w = paused_without_pg1(&[Master(1), Standby(1)]).await;
    // The admin console breaks just as the hold ends.
    w.bouncer.fail_after("RESUME", "connection closed", 0, 4);
    w.set(1, Master(1));
    w.until(
        S(5),
        |w| w.bouncer.paused().is_empty(),
        "resumed in the end",
    )
    .await;
    assert!(held_in_file(&w).is_empty());
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn clients_still_held_after_pause_timeout_because_resume_fails_are_critical() {
    let w = paused_without_pg1(&[Master(1), Standby(1)]).await;
    w.bouncer.fail("RESUME", Some("connection closed"));
    w.set(2, Master(2));
    w.until(S(2), |w| w.routed() == Some(2), "switched to pg2")
        .await;
    assert_eq!(w.bouncer.paused(), ["appdb"]);
    assert!(
        w.nagios()
            .starts_with("WARNING: database(s) appdb paused by rebouncer"),
        "{}",
        w.nagios()
    );
    // The status pages run on the wall clock, which the paused test clock does not move.
    let later = crate::pages::nagios::render(&w.snapshot(), SystemTime::now() + S(11));
    assert!(
        later.starts_with("CRITICAL: database(s) appdb paused by rebouncer for 11 s"),
        "{later}"
    );
    w.bouncer.fail("RESUME", None);
    w.until(
        S(3),
        |w| w.bouncer.paused().is_empty(),
        "resumed in the end",
    )
    .await;
    w.until(
        S(1),
        |w| !w.nagios().contains("paused by rebouncer"),
        "no longer shown as paused",
    )
    .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn no_pause_without_a_record_of_it_in_the_state_file() {
    let w = pausing(&[Master(1), Standby(1)]).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    w.block_state_file();
    w.set(1, Down);
    sleep(S(3)).await;
    assert_eq!(w.bouncer.count("PAUSE"), 0, "{:?}", w.bouncer.log());
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "pg2 as without pausing")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn with_pausing_off_nothing_is_ever_paused() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    w.set(1, Down);
    sleep(S(5)).await;
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "pg2").await;
    assert_eq!(w.bouncer.count("PAUSE"), 0, "{:?}", w.bouncer.log());
    w.stop().await;
}
