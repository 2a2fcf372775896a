//! A state file that cannot be written.

use tokio::time::sleep;

use super::world::*;
use crate::daemon::*;
use crate::state::State;

/// The state file made unwritable, then a failover: the new timeline cannot be written,
/// and rebouncer goes on with it in memory. Returns the state file's path.
async fn failed_over_with_the_state_file_blocked(w: &World) -> std::path::PathBuf {
    let path = w.block_state_file();
    std::fs::write(path.join("x"), "").unwrap();
    w.fail_over_to_pg2().await;
    w.until(
        S(1),
        |w| w.snapshot().state_error.is_some(),
        "write error shown",
    )
    .await;
    path
}

#[tokio::test(start_paused = true)]
async fn a_state_file_that_cannot_be_written_is_a_warning_not_a_stop() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled")
        .await;
    failed_over_with_the_state_file_blocked(&w).await;
    let root = crate::pages::text::root(&w.snapshot(), SystemTime::now());
    assert!(
        root.contains("State file: cannot write state file"),
        "{root}"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_state_file_that_could_not_be_written_is_written_once_it_can_be() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    let path = failed_over_with_the_state_file_blocked(&w).await;
    w.set(1, Standby(2));
    // Nothing changes from now on; the operator fixes the file system.
    sleep(S(3)).await;
    std::fs::remove_dir_all(&path).unwrap();
    w.until(
        S(3),
        |w| w.snapshot().state_error.is_none(),
        "written at a later round",
    )
    .await;
    let on_disk = StateFile::load(&path).unwrap();
    assert_eq!(on_disk.state().timelines.highest(Some(42)), Some(2));
    w.until(S(1), |w| w.nagios().starts_with("OK"), "OK again")
        .await;
    w.stop().await;
}

/// With the state file unwritable, a pause could not be recorded: none is made, the
/// pages say pausing is off, and nothing that was never paused is "resumed".
#[tokio::test(start_paused = true)]
async fn an_unwritable_state_file_turns_pausing_off_and_says_so() {
    let w = pausing(&[Master(1), Standby(1)]).await;
    settled_on_pg1(&w).await;
    w.block_state_file();
    w.set(1, Down);
    sleep(S(3)).await;
    assert_eq!(w.bouncer.count("PAUSE"), 0, "{:?}", w.bouncer.log());
    assert_eq!(w.bouncer.count("RESUME"), 0, "{:?}", w.bouncer.log());
    let root = crate::pages::text::root(&w.snapshot(), SystemTime::now());
    assert!(
        root.contains("Pausing: off until the state file can be written"),
        "{root}"
    );
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "pg2 as without pausing")
        .await;
    w.set(1, Standby(2));
    w.until(
        S(3),
        |w| {
            w.nagios()
                .contains("pause_on_failover is off until the state file can be written")
        },
        "/nagios says pausing is off",
    )
    .await;
    w.stop().await;
}
