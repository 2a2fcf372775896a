//! A hold that keeps a database paused which an earlier pause left paused (its `RESUME`
//! failed) is bounded by `pause_timeout` from that earlier `PAUSE`, not from its own: the
//! clients paused then have been waiting since.

use super::*;

/// Node 0 lost, held from `first`, back as master (the hold ends; the executor's RESUME of
/// it is taken to have failed: the policy is not told), then lost again `later` after
/// `first`. Returns the run at the second loss, its `Pause` asked for.
fn lost_again(later: Duration) -> (Run, Instant) {
    let (mut r, first, _) = paused_at_the_loss_of_node0();
    assert_eq!(r.p.hold_deadline(), Some(first + S(10)));
    r.at(MS(200));
    let cmds = r.round(&[down(), standby(1), standby(1)]);
    r.reply_until_done(cmds, Some(0));
    r.at(MS(400));
    let cmds = r.round(&[master(1), standby(1), standby(1)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(release_in(&cmds), Some(Release::End(HoldEnd::MasterBack)));

    r.now = first + later;
    let cmds = r.round(&[down(), standby(1), standby(1)]);
    let cmds = r.reply_until_done(cmds, Some(0));
    assert_eq!(pause_in(&cmds), Some((0, Loss::Down)), "{cmds:?}");
    (r, first)
}

/// The second hold's `PAUSE`, at `r.now`, keeping appdb paused since `first`.
fn took_over(r: &mut Run, first: Instant) -> Vec<Command> {
    let started = r.now;
    r.tell(Input::Paused(Some(Paused {
        databases: vec!["appdb".into()],
        started,
        since: SystemTime::UNIX_EPOCH,
        held_since: Some(first),
    })))
}

#[test]
fn a_hold_that_takes_over_an_earlier_pause_ends_pause_timeout_after_the_first_pause() {
    let (mut r, first) = lost_again(S(6));
    let cmds = took_over(&mut r, first);
    assert_eq!(release_in(&cmds), None, "{cmds:?}");
    // Not its own PAUSE plus 10 s, 6 s later.
    assert_eq!(r.p.hold_deadline(), Some(first + S(10)));

    r.now = first + S(10);
    let cmds = r.tell(Input::HoldDeadline);
    assert_eq!(release_in(&cmds), Some(Release::End(HoldEnd::TimedOut)));
    assert_eq!(r.p.hold(), None);
}

#[test]
fn a_hold_that_takes_over_a_pause_already_older_than_pause_timeout_ends_at_once() {
    let (mut r, first) = lost_again(S(12));
    let cmds = took_over(&mut r, first);
    assert_eq!(
        release_in(&cmds),
        Some(Release::End(HoldEnd::TimedOut)),
        "{cmds:?}"
    );
    assert_eq!(r.p.hold(), None);
}

#[test]
fn a_reload_of_pause_timeout_counts_from_the_first_pause_of_a_hold_that_took_one_over() {
    let (mut r, first) = lost_again(S(6));
    took_over(&mut r, first);
    let mut longer = settings(false, true);
    longer.pause_timeout = S(20);
    r.tell(Input::Reloaded {
        from: vec![Carry::Kept(0), Carry::Kept(1), Carry::Kept(2)],
        old_count: 3,
        settings: longer,
        console_changed: false,
        changed: false,
    });
    assert_eq!(r.p.hold_deadline(), Some(first + S(20)));
}

#[test]
fn a_hold_that_takes_nothing_over_counts_from_its_own_pause() {
    let (mut r, _) = lost_again(S(6));
    let started = r.now;
    r.tell(Input::Paused(Some(Paused {
        databases: vec!["appdb".into()],
        started,
        since: SystemTime::UNIX_EPOCH,
        held_since: None,
    })));
    assert_eq!(r.p.hold_deadline(), Some(started + S(10)));
}
