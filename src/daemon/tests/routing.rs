//! Following the master: promotions, stale primaries, split brains, targets that
//! refuse logins, and PgBouncer running another file than the symlink.

use std::sync::{Arc, Mutex};

use tokio::time::sleep;

use super::world::*;
use crate::daemon::*;
use crate::state::State;

#[tokio::test(start_paused = true)]
async fn a_promotion_is_followed_within_a_fast_round() {
    let w = world(&[Master(1), Standby(1), Standby(1)], 2, State::default()).await;
    w.until(S(1), |w| w.routed() == Some(1), "initial switch to pg1")
        .await;
    w.until(S(1), |w| w.nagios().starts_with("OK"), "settled")
        .await;
    w.set(1, Down);
    sleep(S(1)).await;
    w.set(2, Master(2));
    let promoted = Instant::now();
    w.until(S(3), |w| w.routed() == Some(2), "switch to pg2")
        .await;
    // Rounds come every `interval` (2 s) while settled, then fast once pg1 is gone.
    assert!(promoted.elapsed() <= S(2) + Duration::from_millis(200));
    assert_eq!(
        w.bouncer.paused(),
        Vec::<String>::new(),
        "KILL was followed by RESUME"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failover_is_counted_and_kept_in_the_event_history() {
    let w = world(&[Master(1), Standby(1)], 2, State::default()).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    w.fail_over_to_pg2().await;
    let s = w.snapshot();
    let reason = |r: SwitchReason| {
        let i = SwitchReason::ALL.iter().position(|x| *x == r).unwrap();
        s.counters.switches[i]
    };
    assert_eq!(
        reason(SwitchReason::Failover),
        2,
        "pg2 at start, then pg1... {:?}",
        s.counters
    );
    assert!(s.counters.rounds >= 2);
    assert!(s.counters.last_switch.is_some());
    assert!(s.nodes[0].counters.failures >= 1);
    assert!(s.nodes[1].counters.last_success.is_some());
    let kinds: Vec<(Kind, Option<&str>)> = s
        .events
        .iter()
        .map(|e| (e.kind, e.node.as_deref()))
        .collect();
    let at = |k: (Kind, Option<&str>)| kinds.iter().position(|x| *x == k);
    let down = at((Kind::State, Some("pg1"))).unwrap();
    let switched = kinds
        .iter()
        .rposition(|x| *x == (Kind::Switch, Some("pg2")))
        .unwrap();
    assert!(down < switched, "{kinds:?}");
    let text = &s.events.iter().nth(switched).unwrap().text;
    assert!(
        text.starts_with("PgBouncer now points at pg2 (failover from pg1)"),
        "{text}"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stale_primary_is_never_switched_to_while_the_new_primary_hangs() {
    // The old primary returns, then the new one hangs: pg1 fails over to pg2; pg1 comes
    // back unchanged (timeline 1); then pg2 hangs for 15 s.
    let w = world(&[Master(1), Standby(1), Standby(1)], 1, State::default()).await;
    w.until(S(2), |w| w.routed() == Some(1), "pg1").await;
    w.fail_over_to_pg2().await;
    w.set(1, Master(1));
    w.until(
        S(4),
        |w| !w.snapshot().stale().is_empty(),
        "pg1 seen as stale",
    )
    .await;
    assert!(
        w.nagios()
            .starts_with("CRITICAL: stale primary pg1 (timeline 1, the cluster is on 2)"),
        "{}",
        w.nagios()
    );
    w.set(2, Hung);
    w.during(
        S(15),
        |w| w.routed() == Some(2),
        "PgBouncer must stay off the stale pg1",
    )
    .await;
    assert!(w.nagios().contains("stale primary pg1"), "{}", w.nagios());
    w.set(2, Master(2));
    w.during(S(5), |w| w.routed() == Some(2), "and after pg2 recovers")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_returning_stale_primary_never_shows_as_a_split_brain() {
    let w = world(&[Master(1), Standby(1), Standby(1)], 1, State::default()).await;
    w.until(S(2), |w| w.routed() == Some(1), "pg1").await;
    w.fail_over_to_pg2().await;
    // Every version of the view published from here on, as a page reader sees it.
    let mut rx = w.status.clone();
    rx.borrow_and_update();
    let shown = Arc::new(Mutex::new(Vec::new()));
    let log = shown.clone();
    let watcher = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let view = rx.borrow_and_update().clone();
            let metrics = crate::pages::metrics::render(&view);
            let split = metrics
                .lines()
                .find_map(|l| l.strip_prefix("rebouncer_split_brain "))
                .map(str::to_string);
            // Every server shown as master is in the verdict: the master, a master
            // of the split brain or a stale primary.
            let in_verdict: Vec<&str> = view
                .master()
                .into_iter()
                .chain(view.split_brain())
                .chain(view.stale().iter().map(|s| s.name))
                .collect();
            let unjudged: Vec<String> = view
                .nodes
                .iter()
                .filter(|n| n.state == Some(NodeState::Master))
                .filter(|n| !in_verdict.contains(&n.name.as_str()))
                .map(|n| n.name.clone())
                .collect();
            log.lock().unwrap().push((
                crate::pages::nagios::render(&view, SystemTime::now()),
                split,
                unjudged,
            ));
        }
    });
    // pg3 hangs as pg1 comes back: the round that finds pg1 waits for pg3 until its
    // deadline, long after pg1's answer came in.
    w.set(3, Hung);
    w.set(1, Master(1));
    w.until(
        S(6),
        |w| !w.snapshot().stale().is_empty(),
        "pg1 seen as stale",
    )
    .await;
    w.during(S(3), |_| true, "a few more rounds").await;
    watcher.abort();
    let shown = shown.lock().unwrap().clone();
    assert!(
        shown
            .iter()
            .any(|(n, _, _)| n.starts_with("CRITICAL: stale primary pg1")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .all(|(n, split, unjudged)| !n.contains("split brain")
                && split.as_deref() == Some("0")
                && unjudged.is_empty()),
        "{shown:#?}"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_remembered_timeline_protects_after_a_restart() {
    // The daemon restarts while pg2 (timeline 2) is down and the old pg1 is back:
    // only the state file knows that pg1 is behind.
    let mut state = State::default();
    state.raise(Some(42), 2);
    let w = world(&[Master(1), Down, Standby(1)], 2, state).await;
    w.during(
        S(10),
        |w| w.routed() == Some(2),
        "no switch to the stale pg1",
    )
    .await;
    assert_eq!(w.snapshot().stale().len(), 1);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_split_brain_master_refusing_new_logins_does_not_make_the_other_a_target() {
    // A split brain without timelines to help: both masters on timeline 2; pg2, the
    // true primary PgBouncer is on, refuses new logins. Nothing may move.
    let w = world(&[Standby(2), Master(2), Standby(2)], 2, State::default()).await;
    w.until(S(2), |w| w.routed() == Some(2), "pg2").await;
    w.set(1, Master(2));
    w.until(
        S(3),
        |w| w.nagios().starts_with("CRITICAL: split brain"),
        "split brain",
    )
    .await;
    w.refuse_new(2, true);
    w.during(
        S(20),
        |w| w.routed() == Some(2),
        "PgBouncer must stay on pg2",
    )
    .await;
    // pg2 then stops answering altogether: pg1 alone is still not evidence.
    w.set(2, Down);
    w.during(S(10), |w| w.routed() == Some(2), "still on pg2")
        .await;
    assert!(
        w.nagios().contains("split brain not resolved"),
        "{}",
        w.nagios()
    );
    // pg2 comes back as a standby (demoted): now pg1 is the primary.
    w.refuse_new(2, false);
    w.set(2, Standby(2));
    w.until(S(3), |w| w.routed() == Some(1), "pg1 once pg2 is demoted")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_refusing_server_is_asked_less_and_less_often() {
    // No master for 20 s and a standby whose pg_hba.conf rejects the
    // monitoring login. Fast rounds (0.1 s) would try it 200 times.
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    w.until(S(2), |w| w.routed() == Some(1), "pg1").await;
    w.set(1, Down);
    w.set(2, Standby(1));
    w.refuse_new(2, true);
    w.set(2, Down); // closes the kept session; Down now, refusing afterwards
    w.set(2, Standby(1));
    let before = w.attempts(2);
    sleep(S(20)).await;
    let attempts = w.attempts(2) - before;
    // 0.1, 0.2, 0.4, 0.8, 1.6, then every 2 s (interval): about 14 in 20 s.
    assert!((8..=20).contains(&attempts), "{attempts} attempts in 20 s");
    // Something else changes (a promotion elsewhere would): it is asked at once again.
    w.refuse_new(2, false);
    w.set(1, Standby(1));
    w.until(
        S(3),
        |w| w.snapshot().nodes[1].state == Some(NodeState::Standby),
        "pg2 re-checked",
    )
    .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_symlink_changed_by_hand_is_switched_back() {
    // PgBouncer moved to a standby by hand (the link changed and a RELOAD sent).
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    crate::switch::replace_symlink(&w.root.join("pgbouncer.ini"), &w.root.join("nodes/pg2.ini"))
        .unwrap();
    w.bouncer
        .session()
        .await
        .unwrap()
        .command("RELOAD")
        .await
        .unwrap();
    assert_eq!(w.routed(), Some(2));
    w.until(S(3), |w| w.routed() == Some(1), "back on pg1")
        .await;
    w.until(S(1), |w| w.snapshot().drift.is_none(), "drift cleared")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn routes_changed_behind_the_symlink_are_found_after_a_pgbouncer_restart() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    sleep(S(1)).await;
    // PgBouncer restarts on pg2's config (started by hand with another file, say);
    // the symlink itself still points at pg1's.
    let link = w.root.join("pgbouncer.ini");
    crate::switch::replace_symlink(&link, &w.root.join("nodes/pg2.ini")).unwrap();
    w.bouncer.restart();
    crate::switch::replace_symlink(&link, &w.root.join("nodes/pg1.ini")).unwrap();
    assert_eq!(w.routed(), Some(2));
    // Found at the next round (every 2 s here) because the admin session closed, not
    // only at the periodic comparison (every 3 rounds), and switched back.
    w.until(
        Duration::from_millis(2500),
        |w| w.routed() == Some(1),
        "back on pg1 after the restart",
    )
    .await;
    w.stop().await;
}

/// A new master whose kept session answers while new logins are refused (pg_hba.conf,
/// max_connections) is not given PgBouncer, which could not log in either.
#[tokio::test(start_paused = true)]
async fn a_failover_target_that_refuses_new_logins_is_not_switched_to() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    w.refuse_new(2, true);
    w.set(1, Down);
    w.set(2, Master(2));
    w.during(S(4), |w| w.routed() == Some(1), "PgBouncer kept off pg2")
        .await;
    let nagios = w.nagios();
    assert!(nagios.contains("refuses new connections"), "{nagios}");
    w.refuse_new(2, false);
    w.until(
        S(6),
        |w| w.routed() == Some(2),
        "pg2 once it accepts logins",
    )
    .await;
    w.stop().await;
}

/// PgBouncer was started with another file than the symlink: every RELOAD re-reads
/// that file, so the switch is never confirmed. The RELOADs come less and less often,
/// up to one per `interval`, and /nagios names both files.
#[tokio::test(start_paused = true)]
async fn a_switch_pgbouncer_does_not_take_backs_off_up_to_interval() {
    let w = world_running(
        &[Master(1), Standby(1)],
        1,
        State::default(),
        "",
        "other.ini",
    )
    .await;
    settled_on_pg1(&w).await;
    w.set(1, Down);
    w.set(2, Master(2));
    let first = w.bouncer.count("RELOAD");
    let mut reloads_at = Vec::new();
    let end = Instant::now() + S(14);
    while Instant::now() < end {
        let n = w.bouncer.count("RELOAD");
        if n > first + reloads_at.len() {
            reloads_at.push(Instant::now());
        }
        sleep(Duration::from_millis(50)).await;
    }
    let gaps: Vec<Duration> = reloads_at.windows(2).map(|p| p[1] - p[0]).collect();
    let interval = S(2);
    assert!(gaps.len() >= 4, "still retried: {gaps:?}");
    assert!(gaps[0] >= pacing::SWITCH_RETRY_MIN, "{gaps:?}");
    for g in &gaps[1..] {
        assert!(*g >= interval, "backed off to interval: {gaps:?}");
        assert!(*g < interval + S(1), "not beyond interval: {gaps:?}");
    }
    assert_eq!(w.routed(), Some(1), "PgBouncer still runs other.ini");
    let nagios = w.nagios();
    let link = w.root.join("pgbouncer.ini");
    let names = w.root.join("nodes/pg2.ini");
    assert!(
        nagios.contains(&format!(
            "the symlink {} names {}",
            link.display(),
            names.display()
        )),
        "{nagios}"
    );
    assert!(nagios.contains("PgBouncer runs"), "{nagios}");
    w.stop().await;
}
