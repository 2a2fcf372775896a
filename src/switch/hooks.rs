//! Pauses inside a switch that let `tests/crash_safety.rs` kill rebouncer at the two points
//! a crash must be survivable: after the confirmed `RELOAD` (before the `KILL`s) and after
//! the `KILL`s (before the `RESUME`s).
//!
//! They exist in debug builds only: a release binary neither reads nor names the variables,
//! so an environment inherited by the daemon (the RHEL init script's `runuser` keeps the
//! caller's) cannot slow down or change a real failover. An unset, empty or zero variable is
//! no hook at all, so the pipelined `KILL`+`RESUME` stays as in production.

#[cfg(debug_assertions)]
use std::time::Duration;

/// Milliseconds a switch waits between its confirmed `RELOAD` and its `KILL`s.
#[cfg(debug_assertions)]
pub const AFTER_RELOAD_ENV: &str = "REBOUNCER_TEST_HOLD_AFTER_RELOAD_MS";
/// Milliseconds a switch waits between its `KILL`s and its `RESUME`s.
#[cfg(debug_assertions)]
pub const AFTER_KILL_ENV: &str = "REBOUNCER_TEST_HOLD_AFTER_KILL_MS";

/// The holds one switch makes. In a release build there are none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holds {
    #[cfg(debug_assertions)]
    after_reload: Option<Duration>,
    #[cfg(debug_assertions)]
    after_kill: Option<Duration>,
}

impl Holds {
    /// Read at each switch, so a test sets them in the daemon's environment only.
    #[cfg(debug_assertions)]
    pub fn from_env() -> Holds {
        let read = |name: &str| parse(std::env::var(name).ok().as_deref());
        Holds {
            after_reload: read(AFTER_RELOAD_ENV),
            after_kill: read(AFTER_KILL_ENV),
        }
    }

    #[cfg(not(debug_assertions))]
    pub fn from_env() -> Holds {
        Holds::default()
    }

    /// Whether each `RESUME` may go out right behind its `KILL`: always, unless a hold
    /// must keep the killed databases paused for a while.
    pub fn pipelined(&self) -> bool {
        #[cfg(debug_assertions)]
        {
            self.after_kill.is_none()
        }
        #[cfg(not(debug_assertions))]
        {
            true
        }
    }

    /// Wait after the confirmed `RELOAD`, before the `KILL`s.
    pub async fn after_reload(&self) {
        #[cfg(debug_assertions)]
        if let Some(d) = self.after_reload {
            tracing::warn!(
                "{AFTER_RELOAD_ENV}={} is set: holding {} ms after RELOAD before KILL; this is a test-only hook \
                 of debug builds, unset it",
                d.as_millis(),
                d.as_millis()
            );
            tokio::time::sleep(d).await;
        }
    }

    /// Wait after the `KILL`s, before the `RESUME`s.
    pub async fn after_kill(&self) {
        #[cfg(debug_assertions)]
        if let Some(d) = self.after_kill {
            tracing::warn!(
                "{AFTER_KILL_ENV}={} is set: holding killed databases {} ms before RESUME; this is a test-only \
                 hook of debug builds, unset it",
                d.as_millis(),
                d.as_millis()
            );
            tokio::time::sleep(d).await;
        }
    }
}

/// A variable's value as a hold: a positive number of milliseconds, else none.
#[cfg(debug_assertions)]
fn parse(value: Option<&str>) -> Option<Duration> {
    value?
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn only_a_positive_number_of_milliseconds_is_a_hold() {
        assert_eq!(parse(Some("250")), Some(Duration::from_millis(250)));
        assert_eq!(parse(Some(" 250 ")), Some(Duration::from_millis(250)));
        for none in [None, Some(""), Some("0"), Some("-5"), Some("soon")] {
            assert_eq!(parse(none), None, "{none:?}");
        }
    }

    #[test]
    fn a_zero_or_missing_hold_keeps_kill_and_resume_pipelined() {
        let zero = Holds {
            after_reload: parse(Some("0")),
            after_kill: parse(Some("0")),
        };
        assert!(zero.pipelined());
        assert!(Holds::default().pipelined());
        let held = Holds {
            after_reload: None,
            after_kill: parse(Some("1")),
        };
        assert!(!held.pipelined());
    }
}
