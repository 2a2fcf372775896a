//! Configuration reloads (SIGHUP).

use tokio::time::sleep;

use super::world::*;
use crate::daemon::*;
use crate::state::State;

#[tokio::test(start_paused = true)]
async fn a_reload_adds_and_removes_servers_and_keeps_the_active_node_and_other_monitors() {
    let w = world(&[Master(1), Standby(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    let reloads_before = w.bouncer.count("RELOAD");
    let switches_before = w.snapshot().counters.switches;
    let pg4 = w.add_server(4, Standby(1));
    w.reload("", &(w.lines(&[1, 2]) + &pg4)).await;
    assert_eq!(w.names(), ["pg1", "pg2", "pg4"]);
    assert_eq!(
        w.probes("pg3"),
        0,
        "pg3's monitor stopped, its connection closed"
    );
    assert_eq!((w.made("pg1"), w.made("pg2")), (1, 1), "kept monitors");
    assert_eq!((w.made("pg4"), w.probes("pg4")), (1, 1));
    w.until(
        S(1),
        |w| w.snapshot().nodes[2].state == Some(NodeState::Standby),
        "pg4 checked",
    )
    .await;
    let s = w.snapshot();
    assert_eq!((s.active.as_deref(), s.confirmed), (Some("pg1"), true));
    assert_eq!(s.counters.reloads_ok, 1);
    assert_eq!(s.counters.switches, switches_before, "no switch");
    assert_eq!(
        w.bouncer.count("RELOAD"),
        reloads_before,
        "PgBouncer untouched"
    );
    let r = s.reload.clone().unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.changes, ["server(s) pg4 added", "server(s) pg3 removed"]);
    assert!(
        s.events
            .iter()
            .any(|e| e.kind == Kind::ConfigReload && e.text.contains("pg4 added")),
    );
    assert!(
        w.nagios().starts_with("OK: 1 master (pg1"),
        "{}",
        w.nagios()
    );
    w.during(S(6), |w| w.routed() == Some(1), "stays on pg1")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn after_a_reload_that_reorders_servers_a_failover_still_goes_to_the_right_node() {
    let w = world(&[Master(1), Standby(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    w.reload("", &w.lines(&[3, 2, 1])).await;
    assert_eq!(w.names(), ["pg3", "pg2", "pg1"]);
    let s = w.snapshot();
    assert_eq!((s.active.as_deref(), s.confirmed), (Some("pg1"), true));
    assert_eq!(w.made("pg1") + w.made("pg2") + w.made("pg3"), 3);
    w.during(S(4), |w| w.routed() == Some(1), "stays on pg1")
        .await;
    w.set(1, Down);
    w.set(3, Master(2));
    w.until(S(4), |w| w.routed() == Some(3), "failover to pg3")
        .await;
    assert_eq!(w.snapshot().active.as_deref(), Some("pg3"));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_connection_string_restarts_that_monitor_only() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    let changed = w.lines(&[1, 2]).replace(
        "pg2=host=127.0.0.1 port=5432 dbname=postgres",
        "pg2=host=127.0.0.1 port=5432 application_name=x dbname=postgres",
    );
    assert!(changed.contains("application_name=x"), "{changed}");
    w.reload("", &changed).await;
    assert_eq!((w.made("pg1"), w.probes("pg1")), (1, 1));
    assert_eq!((w.made("pg2"), w.probes("pg2")), (2, 1), "pg2 restarted");
    let r = w.snapshot().reload.unwrap();
    assert_eq!(
        r.changes,
        ["connection string of pg2 changed (monitor restarted)"]
    );
    w.until(
        S(1),
        |w| w.snapshot().nodes[1].state == Some(NodeState::Standby),
        "pg2 checked again",
    )
    .await;
    assert!(w.nagios().starts_with("OK"), "{}", w.nagios());
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn removing_the_active_node_unconfirms_and_the_next_master_is_switched_to() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    w.reload("", &w.lines(&[2])).await;
    assert_eq!(w.probes("pg1"), 0);
    let s = w.snapshot();
    assert_eq!(w.names(), ["pg2"]);
    assert_eq!((s.active, s.confirmed), (None, false));
    // pg2 is a standby: no master among the configured servers, nothing switched.
    w.during(
        S(4),
        |w| w.routed() == Some(1),
        "no switch without a master",
    )
    .await;
    w.set(2, Master(2));
    w.until(S(4), |w| w.routed() == Some(2), "switch to pg2")
        .await;
    let s = w.snapshot();
    assert_eq!((s.active.as_deref(), s.confirmed), (Some("pg2"), true));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_bad_config_is_refused_and_the_running_one_stays() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    let text = ini_text(&w.root, "", &w.lines(&[1, 2])).replace("interval=2", "interval=soon");
    w.reload_text(&text).await;
    let s = w.snapshot();
    let r = s.reload.clone().unwrap();
    let e = r.error.unwrap();
    assert!(
        e.starts_with("config error: ") && e.contains("interval"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
    assert_eq!((s.counters.reloads_ok, s.counters.reloads_failed), (0, 1));
    assert_eq!(w.names(), ["pg1", "pg2"]);
    assert_eq!(s.interval, S(2));
    assert!(s.events.iter().any(|e| e.kind == Kind::ConfigReloadFailed));
    let root = crate::pages::text::root(&s, SystemTime::now());
    assert!(root.contains("Last config reload: "), "{root}");
    assert!(root.contains("FAILED, the running configuration stays: config error"));
    let metrics = crate::pages::metrics::render(&s);
    assert!(metrics.contains("rebouncer_config_reloads_total{result=\"failed\"} 1"));
    assert!(metrics.contains("rebouncer_config_last_reload_successful 0"));
    // A server whose node file is missing: refused as at start, nothing half-applied.
    let text = ini_text(
        &w.root,
        "",
        &(w.lines(&[1, 2]) + "pg9=host=127.0.0.1 port=5439 dbname=postgres sslmode=disable\n"),
    );
    w.reload_text(&text).await;
    let s = w.snapshot();
    assert!(
        s.reload
            .unwrap()
            .error
            .unwrap()
            .contains("pg9.ini does not exist")
    );
    assert_eq!(w.names(), ["pg1", "pg2"]);
    // Still running and switching as before; /nagios warns that the file on disk is
    // broken (the next start would stop on it).
    w.during(
        S(4),
        |w| {
            w.routed() == Some(1)
                && w.nagios().starts_with("WARNING: configuration reload at ")
                && w.nagios().contains("pg9.ini does not exist")
        },
        "still running",
    )
    .await;
    w.set(1, Down);
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "a failover still followed")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn settings_change_live_and_a_new_symlink_is_not_applied() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    std::fs::create_dir(w.root.join("elsewhere")).unwrap();
    let text = ini_text(&w.root, "fast_interval=0.5\n", &w.lines(&[1, 2]))
        .replace("interval=2\n", "interval=10\n")
        .replace(
            &format!("symlink={}/pgbouncer.ini", w.root.display()),
            &format!("symlink={}/elsewhere/pgbouncer.ini", w.root.display()),
        );
    w.reload_text(&text).await;
    let s = w.snapshot();
    let r = s.reload.clone().unwrap();
    assert_eq!(r.error, None);
    assert_eq!(
        r.changes,
        ["interval 2 s -> 10 s", "fast_interval 0.1 s -> 0.5 s"]
    );
    assert_eq!(r.not_applied.len(), 1, "{:?}", r.not_applied);
    assert!(r.not_applied[0].starts_with("symlink (the file says "));
    assert_eq!(s.interval, S(10));
    assert_eq!((w.made("pg1"), w.made("pg2")), (1, 1), "monitors kept");
    let root = crate::pages::text::root(&s, SystemTime::now());
    assert!(root.contains("Config reload NOT applied (needs a restart): symlink"));
    // Rounds now every 10 s: pg1's attempts grow by about one per round.
    let before = w.snapshot().counters.rounds;
    sleep(S(31)).await;
    let rounds = w.snapshot().counters.rounds - before;
    assert!((3..=4).contains(&rounds), "{rounds} rounds in 31 s");
    // The old symlink is still the one switched.
    w.set(1, Down);
    w.set(2, Master(2));
    w.until(
        S(12),
        |w| w.routed() == Some(2),
        "failover to pg2 through the kept symlink",
    )
    .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_timeout_change_restarts_every_monitor_and_keeps_what_is_known() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    let text = ini_text(&w.root, "", &w.lines(&[1, 2])).replace("timeout=2\n", "timeout=3\n");
    w.reload_text(&text).await;
    assert_eq!((w.made("pg1"), w.probes("pg1")), (2, 1));
    assert_eq!((w.made("pg2"), w.probes("pg2")), (2, 1));
    // Known states stay until the new monitors answer: no "starting up" gap.
    assert!(w.nagios().starts_with("OK"), "{}", w.nagios());
    let r = w.snapshot().reload.unwrap();
    assert_eq!(
        r.changes,
        [
            "timeout 2 s -> 3 s",
            "every monitor restarted (timeout or keep_connections)"
        ]
    );
    w.during(S(5), |w| w.nagios().starts_with("OK"), "still settled")
        .await;
    assert_eq!(w.snapshot().active.as_deref(), Some("pg1"));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pause_for_a_server_the_reload_removes_ends_at_once() {
    let w = paused_without_pg1(&[Master(1), Standby(1), Standby(1)]).await;
    w.reload(PAUSING, &w.lines(&[2, 3])).await;
    assert!(w.bouncer.paused().is_empty(), "resumed");
    assert!(held_in_file(&w).is_empty());
    let outcome = last_hold_outcome(&w).unwrap();
    assert!(
        outcome.contains("pg1 was removed from the configuration"),
        "{outcome}"
    );
    // No new pause (no active node known), and the next master is switched to.
    w.during(S(3), |w| w.bouncer.paused().is_empty(), "no pause again")
        .await;
    w.set(2, Master(2));
    w.set(3, Standby(2));
    w.until(S(3), |w| w.routed() == Some(2), "switch to pg2")
        .await;
    assert_eq!(w.bouncer.count("PAUSE"), 1);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_while_pgbouncer_is_awaited_applies_before_the_first_round() {
    let w = world(&[Master(1), Standby(1)], 2, State::default()).await;
    w.bouncer.set_up(false);
    sleep(S(6)).await;
    assert!(w.nagios().starts_with("CRITICAL: waiting for PgBouncer"));
    let pg3 = w.add_server(3, Standby(1));
    w.reload("", &(w.lines(&[1, 2]) + &pg3)).await;
    assert_eq!(w.names(), ["pg1", "pg2", "pg3"]);
    assert_eq!(w.snapshot().counters.reloads_ok, 1);
    w.bouncer.set_up(true);
    w.until(
        S(7),
        |w| w.routed() == Some(1),
        "switch to pg1 once PgBouncer answers",
    )
    .await;
    w.until(
        S(3),
        |w| {
            w.nagios()
                .starts_with("OK: 1 master (pg1, PgBouncer points at it), 2 standbys")
        },
        "pg3 checked",
    )
    .await;
    w.stop().await;
}
