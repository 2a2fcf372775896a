//! Log a lasting condition (split brain, no master, a switch that keeps failing) once
//! when it starts, then as a reminder at most once per period, and once when it ends.
//! The Go tool logged the same line at every round, forever, which buried everything
//! else and filled disks. Pure: the caller passes the time in.

use std::time::{Duration, Instant};

/// What the caller should log after telling the throttle the current condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Say<K> {
    /// A new condition started.
    Started(K),
    /// The condition is still there; `rounds` observations since the last line.
    Reminder {
        key: K,
        lasted: Duration,
        rounds: u64,
    },
    /// The condition is over (also sent before `Started` when one condition replaces
    /// another).
    Ended { key: K, lasted: Duration },
}

#[derive(Debug)]
struct Ongoing<K> {
    key: K,
    since: Instant,
    last_said: Instant,
    rounds_since_said: u64,
}

#[derive(Debug)]
pub struct Throttle<K> {
    every: Duration,
    ongoing: Option<Ongoing<K>>,
}

impl<K: Clone + PartialEq> Throttle<K> {
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            ongoing: None,
        }
    }

    /// Report the condition seen now (`None`: all clear) and get the lines to log.
    pub fn observe(&mut self, now: Option<K>, at: Instant) -> Vec<Say<K>> {
        let mut out = Vec::new();
        match (&mut self.ongoing, now) {
            (Some(o), Some(k)) if o.key == k => {
                o.rounds_since_said += 1;
                if at.duration_since(o.last_said) >= self.every {
                    out.push(Say::Reminder {
                        key: k,
                        lasted: at.duration_since(o.since),
                        rounds: o.rounds_since_said,
                    });
                    o.last_said = at;
                    o.rounds_since_said = 0;
                }
            }
            (_, now) => {
                if let Some(o) = self.ongoing.take() {
                    out.push(Say::Ended {
                        key: o.key,
                        lasted: at.duration_since(o.since),
                    });
                }
                if let Some(k) = now {
                    out.push(Say::Started(k.clone()));
                    self.ongoing = Some(Ongoing {
                        key: k,
                        since: at,
                        last_said: at,
                        rounds_since_said: 0,
                    });
                }
            }
        }
        out
    }

    /// The condition going on, if one is.
    pub fn ongoing(&self) -> Option<&K> {
        self.ongoing.as_ref().map(|o| &o.key)
    }

    /// End the condition going on now, whatever the next observation would be.
    pub fn end(&mut self, at: Instant) -> Option<Say<K>> {
        self.ongoing.take().map(|o| Say::Ended {
            key: o.key,
            lasted: at.duration_since(o.since),
        })
    }

    /// Rename the condition going on (its subjects moved), or forget it (`None`: its
    /// subjects are gone), without saying anything.
    pub fn rename(&mut self, f: impl FnOnce(&K) -> Option<K>) {
        if let Some(o) = &mut self.ongoing {
            match f(&o.key) {
                Some(k) => o.key = k,
                None => self.ongoing = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_start_then_once_a_minute_then_end() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut t = Throttle::new(Duration::from_secs(60));
        assert_eq!(t.observe(Some("split"), s(0)), vec![Say::Started("split")]);
        for sec in 1..60 {
            assert!(t.observe(Some("split"), s(sec)).is_empty(), "second {sec}");
        }
        assert_eq!(
            t.observe(Some("split"), s(60)),
            vec![Say::Reminder {
                key: "split",
                lasted: Duration::from_secs(60),
                rounds: 60
            }]
        );
        assert!(t.observe(Some("split"), s(61)).is_empty());
        assert_eq!(
            t.observe(None, s(70)),
            vec![Say::Ended {
                key: "split",
                lasted: Duration::from_secs(70)
            }]
        );
        assert!(t.observe(None, s(71)).is_empty());
    }

    #[test]
    fn an_ended_condition_starts_anew_and_a_renamed_one_goes_on() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut t = Throttle::new(Duration::from_secs(60));
        t.observe(Some(1), s(0));
        assert_eq!(
            t.end(s(3)),
            Some(Say::Ended {
                key: 1,
                lasted: Duration::from_secs(3)
            })
        );
        assert_eq!(t.end(s(4)), None);
        assert_eq!(t.observe(Some(1), s(5)), vec![Say::Started(1)]);
        t.rename(|k| Some(k + 1));
        assert_eq!(t.ongoing(), Some(&2));
        assert!(t.observe(Some(2), s(6)).is_empty());
        t.rename(|_| None);
        assert_eq!(t.ongoing(), None);
        assert_eq!(t.observe(Some(2), s(7)), vec![Say::Started(2)]);
    }

    #[test]
    fn a_different_condition_ends_the_old_and_starts_the_new() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(60));
        t.observe(Some(1), t0);
        assert_eq!(
            t.observe(Some(2), t0 + Duration::from_secs(5)),
            vec![
                Say::Ended {
                    key: 1,
                    lasted: Duration::from_secs(5)
                },
                Say::Started(2)
            ]
        );
    }
}
