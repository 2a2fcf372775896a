//! When the state file is written again, and what is said about it. A file that could
//! not be written is retried at every round until it works: the fence against a stale
//! primary must be on disk before the restart that needs it. The failure is said once,
//! then reminded at the throttle's pace, and once more when a write works again.

use std::time::{Duration, Instant};

use crate::throttle::{Say, Throttle};

/// How often a state file that still cannot be written is mentioned again.
pub const REMINDER_EVERY: Duration = Duration::from_secs(60);

/// What to log about the state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Said {
    /// A write failed after the last one worked.
    Failing(String),
    /// Still failing; `attempts` since the last line.
    StillFailing {
        error: String,
        lasted: Duration,
        attempts: u64,
    },
    /// A write worked after failing for `lasted`.
    Written { lasted: Duration },
}

#[derive(Debug)]
pub struct Persist {
    log: Throttle<()>,
}

impl Default for Persist {
    fn default() -> Self {
        Persist {
            log: Throttle::new(REMINDER_EVERY),
        }
    }
}

impl Persist {
    /// Whether the state is written now: it `changed`, or the last write `failing`.
    pub fn must_write(changed: bool, failing: bool) -> bool {
        changed || failing
    }

    /// Report how the state file stands after a round (`Some`: why the last write failed)
    /// and get what to log.
    pub fn observe(&mut self, error: Option<&str>, now: Instant) -> Vec<Said> {
        self.log
            .observe(error.map(|_| ()), now)
            .into_iter()
            .map(|say| match say {
                Say::Started(()) => Said::Failing(error.unwrap_or_default().to_string()),
                Say::Reminder { lasted, rounds, .. } => Said::StillFailing {
                    error: error.unwrap_or_default().to_string(),
                    lasted,
                    attempts: rounds,
                },
                Say::Ended { lasted, .. } => Said::Written { lasted },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_failed_write_is_retried_even_when_nothing_changed() {
        assert!(Persist::must_write(false, true));
        assert!(Persist::must_write(true, false));
        assert!(!Persist::must_write(false, false));
    }

    #[test]
    fn a_failing_state_file_is_said_once_then_once_a_minute_then_when_written() {
        let t0 = Instant::now();
        let mut p = Persist::default();
        let e = "cannot write state file /x: No such file or directory";
        assert_eq!(p.observe(Some(e), t0), [Said::Failing(e.into())]);
        for s in 1..60 {
            assert_eq!(p.observe(Some(e), t0 + S(s)), [], "second {s}");
        }
        assert_eq!(
            p.observe(Some(e), t0 + S(60)),
            [Said::StillFailing {
                error: e.into(),
                lasted: S(60),
                attempts: 60
            }]
        );
        assert_eq!(
            p.observe(None, t0 + S(75)),
            [Said::Written { lasted: S(75) }]
        );
        assert_eq!(p.observe(None, t0 + S(76)), []);
    }

    #[test]
    fn another_error_text_is_the_same_failure_going_on() {
        let t0 = Instant::now();
        let mut p = Persist::default();
        p.observe(Some("disk full"), t0);
        assert_eq!(p.observe(Some("timed out"), t0 + S(1)), []);
    }
}
