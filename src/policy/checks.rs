//! When a server is asked again, and when on a new connection.

use std::time::{Duration, Instant};

use crate::decide::{Action, Cluster, Decision, NodeId, Refusal};

/// While a split brain lasts (rounds come every `fast_interval`), or while the one master
/// refuses new logins, each such master is asked on a new connection at most this often.
pub const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// A server's failed checks in a row, and when it may be asked again: a server that keeps
/// failing is not hammered at the fast rate (on a server that refuses, each attempt is a
/// fork and a FATAL line in its log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub failures: u32,
    pub next_try: Instant,
}

impl Backoff {
    pub fn new(now: Instant) -> Backoff {
        Backoff {
            failures: 0,
            next_try: now,
        }
    }

    /// Count a check that failed (`down`) or answered.
    pub fn checked(&mut self, down: bool, now: Instant, fast: Duration, interval: Duration) {
        if down {
            self.failures = self.failures.saturating_add(1);
            self.next_try = now + wait(self.failures, fast, interval);
        } else {
            self.failures = 0;
            self.next_try = now;
        }
    }

    /// Something changed in the cluster and this server may be part of it: a server that
    /// was backing off is asked at the next round.
    pub fn retry_now(&mut self, now: Instant) {
        if self.failures > 0 {
            self.next_try = self.next_try.min(now);
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        self.next_try <= now
    }

    /// The wait shown on the status pages: only once it backs off beyond one round.
    pub fn shown_wait(&self, now: Instant) -> Option<Duration> {
        (self.failures > 1 && self.next_try > now).then(|| self.next_try.duration_since(now))
    }
}

/// After `failures` failed checks in a row: `fast` doubling with every failure, up to
/// `interval`.
pub fn wait(failures: u32, fast: Duration, interval: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    fast.saturating_mul(1u32 << (failures - 1).min(16))
        .min(interval)
}

/// Whether a master whose verdict depends on new connections (split brain, refusing new
/// logins) is asked on one now, given when it last was.
pub fn recheck_due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.duration_since(t) >= RECHECK_EVERY)
}

/// Whether the node about to receive PgBouncer is first asked on a new connection. With
/// kept connections, its answer may come from a session that outlived a server that now
/// refuses every new login (pg_hba.conf, `max_connections`), and PgBouncer could not log
/// in either. One new connection since it last changed state is enough: a failover pays
/// one connection set-up, a repeated confirmation nothing. Without kept connections every
/// check already is a new connection.
pub fn target_needs_fresh_check(keep_connections: bool, accepted_since_change: bool) -> bool {
    keep_connections && !accepted_since_change
}

/// The masters whose verdict depends on what a new connection finds: those of a split
/// brain, and the one master that refuses new logins. Kept sessions can outlive a
/// postmaster that refuses everyone else.
pub fn masters_to_recheck(decision: &Decision) -> Vec<NodeId> {
    match (&decision.cluster, &decision.refusal) {
        (Cluster::SplitBrain(masters), _) => masters.clone(),
        (_, Some(Refusal::RefusesNewLogins(m))) => vec![*m],
        _ => Vec::new(),
    }
}

/// Whether the next round comes after `fast_interval` rather than `interval`: anything
/// but one usable master that PgBouncer already uses, or clients held.
pub fn fast_rounds(decision: &Decision, holding: bool) -> bool {
    !matches!(decision.cluster, Cluster::OneMaster(_))
        || decision.refusal.is_some()
        || matches!(decision.action, Action::Switch(_))
        || holding
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Memory;

    fn verdict(cluster: Cluster, refusal: Option<Refusal>, action: Action) -> Decision {
        Decision {
            cluster,
            stale: Vec::new(),
            refusal,
            action,
            memory: Memory::default(),
        }
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_failing_server_waits_twice_as_long_each_time_up_to_interval() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        let mut waits = Vec::new();
        for _ in 0..6 {
            b.checked(true, t0, MS(250), MS(2000));
            waits.push(b.next_try - t0);
        }
        assert_eq!(
            waits,
            [MS(250), MS(500), MS(1000), MS(2000), MS(2000), MS(2000)]
        );
        assert!(!b.due(t0 + MS(1999)));
        assert!(b.due(t0 + MS(2000)));
        assert_eq!(b.shown_wait(t0 + MS(500)), Some(MS(1500)));
        b.checked(false, t0 + MS(2000), MS(250), MS(2000));
        assert_eq!(b, Backoff::new(t0 + MS(2000)));
        assert_eq!(b.shown_wait(t0), None);
    }

    #[test]
    fn the_wait_is_shown_only_once_it_is_longer_than_one_round_and_still_ahead() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        // One failure: asked again at the next fast round, nothing worth showing.
        b.checked(true, t0, MS(250), MS(2000));
        assert_eq!(b.shown_wait(t0), None);
        // Two: backing off; shown until the moment it is due, not at it.
        b.checked(true, t0, MS(250), MS(2000));
        assert_eq!(b.shown_wait(t0), Some(MS(500)));
        assert_eq!(b.shown_wait(t0 + MS(500)), None);
    }

    #[test]
    fn a_change_elsewhere_asks_a_backing_off_server_now() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        b.checked(true, t0, MS(250), MS(2000));
        b.checked(true, t0, MS(250), MS(2000));
        b.retry_now(t0 + MS(10));
        assert!(b.due(t0 + MS(10)));
        let mut fine = Backoff::new(t0 + MS(50));
        fine.retry_now(t0);
        assert_eq!(
            fine.next_try,
            t0 + MS(50),
            "a server not failing keeps its time"
        );
    }

    #[test]
    fn a_master_is_rechecked_on_a_new_connection_at_most_every_five_seconds() {
        let t0 = Instant::now();
        assert!(recheck_due(None, t0));
        assert!(!recheck_due(Some(t0), t0 + MS(4999)));
        assert!(recheck_due(Some(t0), t0 + RECHECK_EVERY));
    }

    #[test]
    fn a_switch_target_seen_only_on_a_kept_session_is_first_asked_on_a_new_connection() {
        assert!(target_needs_fresh_check(true, false));
        assert!(!target_needs_fresh_check(true, true));
        assert!(!target_needs_fresh_check(false, false));
    }

    #[test]
    fn split_brain_masters_and_a_refusing_master_are_rechecked() {
        let split = verdict(Cluster::SplitBrain(vec![0, 2]), None, Action::Nothing);
        assert_eq!(masters_to_recheck(&split), [0, 2]);
        let refused = verdict(
            Cluster::OneMaster(1),
            Some(Refusal::RefusesNewLogins(1)),
            Action::Nothing,
        );
        assert_eq!(masters_to_recheck(&refused), [1]);
        let fine = verdict(Cluster::OneMaster(1), None, Action::Nothing);
        assert!(masters_to_recheck(&fine).is_empty());
    }

    #[test]
    fn rounds_are_fast_until_one_master_is_used_and_nothing_is_held() {
        let settled = verdict(Cluster::OneMaster(1), None, Action::Nothing);
        assert!(!fast_rounds(&settled, false));
        assert!(fast_rounds(&settled, true), "clients held");
        let switching = verdict(Cluster::OneMaster(1), None, Action::Switch(1));
        assert!(fast_rounds(&switching, false));
        assert!(fast_rounds(
            &verdict(Cluster::NoMaster, None, Action::Nothing),
            false
        ));
        let refused = verdict(
            Cluster::OneMaster(1),
            Some(Refusal::RefusesNewLogins(1)),
            Action::Nothing,
        );
        assert!(fast_rounds(&refused, false));
    }
}
