//! Steps that many scenarios share: the failover from pg1 to pg2, and clean-up that
//! must run even when a test fails.

use std::time::Duration;

use super::{Cluster, Daemon};

/// Runs `body`, then `cleanup` even if `body` panicked: a stopped server must be
/// resumed, a pg_hba.conf restored, before the failure is reported, or the teardown
/// waits on it.
pub fn finally<T>(body: impl FnOnce() -> T, cleanup: impl FnOnce()) -> T {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    cleanup();
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

impl Cluster {
    /// The failover: pg1 stopped (fast shutdown), pg2 promoted; returns once PgBouncer
    /// routes to pg2, failing after `within`.
    pub fn fail_over_to_pg2(&self, d: &mut Daemon, within: Duration) {
        self.stop_fast(1);
        self.promote(2);
        d.wait_for(within, "PgBouncer on pg2 after the failover", |_| {
            self.bouncer_target_node() == Some(2)
        });
    }

    /// The failover as [`Cluster::fail_over_to_pg2`], done once a write tagged `tag`
    /// through PgBouncer lands on pg2: what a client sees.
    pub fn fail_over_until_a_write_lands_on_pg2(
        &self,
        d: &mut Daemon,
        within: Duration,
        tag: &str,
    ) {
        self.stop_fast(1);
        self.promote(2);
        d.wait_for(within, "a write through PgBouncer landing on pg2", |_| {
            self.bouncer_write(tag) == Ok(2)
        });
    }
}
