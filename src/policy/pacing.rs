//! When a switch may be tried again.

use std::time::{Duration, Instant};

use crate::decide::NodeId;

/// A failed switch is retried at every round, but not more often than this.
pub const SWITCH_RETRY_MIN: Duration = Duration::from_secs(1);

/// How a switch attempt ended, as far as pacing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// PgBouncer confirmed it routes as the node's file says.
    Done,
    /// Stopped on the way (node file, admin console, symlink, `RELOAD`).
    Failed,
    /// The symlink names the node and `RELOAD` went through, but PgBouncer does not route
    /// as the node's file says: it runs another file (started with another path) or
    /// cannot read this one. Another `RELOAD` changes nothing until someone acts.
    NotTaken,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attempt {
    /// None once a reload removed the node.
    to: Option<NodeId>,
    at: Instant,
    outcome: Outcome,
    /// Attempts in a row to `to` that ended [`Outcome::NotTaken`].
    not_taken: u32,
}

/// The last switch attempt, and what it tells about the next.
#[derive(Clone, Debug, Default)]
pub struct SwitchPacing {
    last: Option<Attempt>,
}

impl SwitchPacing {
    /// Whether a switch to `to` may be tried at `now`. A failover to another node right
    /// after a successful switch goes at once. A failed switch, or a switch to the same
    /// node again (something keeps undoing it), waits [`SWITCH_RETRY_MIN`]. One that
    /// PgBouncer keeps not taking waits twice as long after each attempt, up to
    /// `interval`, as a failing server is asked: each attempt is a `RELOAD` for nothing.
    pub fn may_switch(&self, to: NodeId, now: Instant, interval: Duration) -> bool {
        let Some(last) = self.last else {
            return true;
        };
        let again = last.outcome != Outcome::Done || last.to == Some(to);
        !again || now.duration_since(last.at) >= self.wait(to, interval)
    }

    /// The wait after the last attempt before another switch to `to`.
    pub fn wait(&self, to: NodeId, interval: Duration) -> Duration {
        match self.last {
            Some(l) if l.to == Some(to) && l.not_taken > 0 => SWITCH_RETRY_MIN
                .saturating_mul(1u32 << (l.not_taken - 1).min(16))
                .min(interval.max(SWITCH_RETRY_MIN)),
            _ => SWITCH_RETRY_MIN,
        }
    }

    /// Record an attempt to `to` that started at `at`.
    pub fn attempted(&mut self, to: NodeId, at: Instant, outcome: Outcome) {
        let before = self
            .last
            .filter(|l| l.to == Some(to))
            .map_or(0, |l| l.not_taken);
        let not_taken = match outcome {
            Outcome::NotTaken => before.saturating_add(1),
            Outcome::Done => 0,
            // PgBouncer unreachable for a while says nothing about the file it runs.
            Outcome::Failed => before,
        };
        self.last = Some(Attempt {
            to: Some(to),
            at,
            outcome,
            not_taken,
        });
    }

    /// Attempts in a row to the last node that PgBouncer did not take.
    pub fn not_taken(&self) -> u32 {
        self.last.map_or(0, |l| l.not_taken)
    }

    /// A reload renumbered the nodes (`None`: removed).
    pub fn remap(&mut self, new_id: impl Fn(NodeId) -> Option<NodeId>) {
        if let Some(l) = &mut self.last {
            l.to = l.to.and_then(new_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_failover_right_after_a_switch_goes_at_once() {
        let t0 = Instant::now();
        let mut p = SwitchPacing::default();
        assert!(p.may_switch(1, t0, S(5)));
        p.attempted(1, t0, Outcome::Done);
        assert!(p.may_switch(2, t0 + MS(10), S(5)));
        assert!(!p.may_switch(1, t0 + MS(999), S(5)), "the same node again");
        assert!(p.may_switch(1, t0 + S(1), S(5)));
    }

    #[test]
    fn a_failed_switch_is_retried_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut p = SwitchPacing::default();
        for i in 0..5 {
            let at = t0 + S(i);
            assert!(p.may_switch(2, at, S(5)));
            p.attempted(2, at, Outcome::Failed);
            assert!(!p.may_switch(2, at + MS(999), S(5)));
            assert!(
                !p.may_switch(3, at + MS(999), S(5)),
                "any node after a failure"
            );
        }
    }

    /// PgBouncer runs a file other than the symlink: every confirmation fails. The
    /// RELOADs come ever more slowly, at most one per `interval`, and a switch that works
    /// starts over.
    #[test]
    fn a_switch_pgbouncer_keeps_not_taking_backs_off_up_to_interval() {
        let t0 = Instant::now();
        let mut p = SwitchPacing::default();
        let mut at = t0;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            p.attempted(1, at, Outcome::NotTaken);
            let mut next = at;
            while !p.may_switch(1, next, S(5)) {
                next += MS(100);
                // Fail rather than wait for ever when no retry is ever allowed.
                assert!(next - at <= S(60), "no retry within a minute");
            }
            gaps.push(next - at);
            at = next;
        }
        assert_eq!(gaps, [S(1), S(2), S(4), S(5), S(5), S(5)]);
        assert_eq!(p.not_taken(), 6);
        p.attempted(1, at, Outcome::Failed);
        assert_eq!(
            p.wait(1, S(5)),
            S(5),
            "PgBouncer gone meanwhile changes nothing"
        );
        p.attempted(1, at, Outcome::Done);
        assert_eq!(p.wait(1, S(5)), SWITCH_RETRY_MIN);
        assert!(p.may_switch(2, at, S(5)), "a failover goes at once");
    }

    #[test]
    fn with_an_interval_below_a_second_the_retry_stays_at_a_second() {
        let mut p = SwitchPacing::default();
        let t0 = Instant::now();
        p.attempted(1, t0, Outcome::NotTaken);
        p.attempted(1, t0, Outcome::NotTaken);
        assert_eq!(p.wait(1, MS(500)), SWITCH_RETRY_MIN);
    }

    #[test]
    fn a_node_removed_by_a_reload_is_no_longer_the_same_node() {
        let t0 = Instant::now();
        let mut p = SwitchPacing::default();
        p.attempted(1, t0, Outcome::Done);
        p.remap(|_| None);
        assert!(p.may_switch(1, t0, S(5)));
        let mut q = SwitchPacing::default();
        q.attempted(1, t0, Outcome::Done);
        q.remap(|i| Some(i + 1));
        assert!(!q.may_switch(2, t0, S(5)));
    }
}
