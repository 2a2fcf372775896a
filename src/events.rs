//! The last few hundred things that happened, for `/`, `/events` and whoever asks "what
//! did it do at 03:12?" without the log file at hand. The log says everything; this
//! keeps what changed (a node's state, a switch, the start and end of a condition), in a
//! bounded ring so that a flapping server cannot grow the daemon's memory.

use std::collections::VecDeque;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use crate::json_format;

/// Events kept; the oldest goes first.
pub const CAPACITY: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// rebouncer started (with its version).
    Started,
    /// A problem in the configuration that did not stop rebouncer.
    ConfigWarning,
    /// A server's state changed (master, standby, down).
    State,
    /// PgBouncer now points at a node, confirmed.
    Switch,
    /// A switch failed (once per run of the same failure, not at every retry).
    SwitchFailed,
    SplitBrainStart,
    SplitBrainEnd,
    NoMasterStart,
    NoMasterEnd,
    StalePrimaryStart,
    StalePrimaryEnd,
    /// The single master is not switched to (it refuses new logins, or a split brain did
    /// not resolve cleanly).
    RefusalStart,
    RefusalEnd,
    /// PgBouncer was found not where rebouncer put it.
    Drift,
    /// A database was found paused in PgBouncer by someone else.
    Paused,
    /// The configuration was re-read (SIGHUP) and applied.
    ConfigReload,
    /// A re-read configuration was refused; the running one stays.
    ConfigReloadFailed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Started => "started",
            Kind::ConfigWarning => "config_warning",
            Kind::State => "state",
            Kind::Switch => "switch",
            Kind::SwitchFailed => "switch_failed",
            Kind::SplitBrainStart => "split_brain_start",
            Kind::SplitBrainEnd => "split_brain_end",
            Kind::NoMasterStart => "no_master_start",
            Kind::NoMasterEnd => "no_master_end",
            Kind::StalePrimaryStart => "stale_primary_start",
            Kind::StalePrimaryEnd => "stale_primary_end",
            Kind::RefusalStart => "refusal_start",
            Kind::RefusalEnd => "refusal_end",
            Kind::Drift => "drift",
            Kind::Paused => "paused",
            Kind::ConfigReload => "config_reload",
            Kind::ConfigReloadFailed => "config_reload_failed",
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Increases by one per event since start: a script polling `/events` keeps the last
    /// one it saw and knows whether it missed some (the ring dropped them).
    pub seq: u64,
    #[serde(rename = "time", serialize_with = "json_format::time")]
    pub at: SystemTime,
    pub kind: Kind,
    /// The server it is about, if one.
    pub node: Option<String>,
    /// What the log says, in one line.
    pub text: String,
    /// A switch's timings.
    #[serde(flatten)]
    pub timing: Option<SwitchTiming>,
}

/// How long a confirmed switch took, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SwitchTiming {
    /// The switch itself: admin check, symlink, RELOAD, confirmation.
    pub switch_seconds: f64,
    /// From the need (the new master first seen, the drift found) to the confirmation.
    pub since_needed_seconds: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Events {
    ring: VecDeque<Event>,
    next_seq: u64,
}

impl Events {
    pub fn push(&mut self, at: SystemTime, kind: Kind, node: Option<&str>, text: String) {
        self.push_timed(at, kind, node, text, None);
    }

    pub fn push_timed(
        &mut self,
        at: SystemTime,
        kind: Kind,
        node: Option<&str>,
        text: String,
        timing: Option<SwitchTiming>,
    ) {
        if self.ring.len() == CAPACITY {
            self.ring.pop_front();
        }
        self.next_seq += 1;
        self.ring.push_back(Event {
            seq: self.next_seq,
            at,
            kind,
            node: node.map(str::to_string),
            text,
            timing,
        });
    }

    /// Oldest first.
    pub fn iter(&self) -> std::collections::vec_deque::Iter<'_, Event> {
        self.ring.iter()
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_ring_keeps_the_last_200_in_order_with_their_numbers() {
        let mut e = Events::default();
        let t0 = SystemTime::UNIX_EPOCH;
        for i in 0..250u64 {
            e.push(
                t0 + Duration::from_secs(i),
                Kind::State,
                Some("pg1"),
                format!("event {i}"),
            );
        }
        assert_eq!(e.len(), CAPACITY);
        let first = e.iter().next().unwrap();
        assert_eq!((first.seq, first.text.as_str()), (51, "event 50"));
        let last = e.iter().next_back().unwrap();
        assert_eq!((last.seq, last.text.as_str()), (250, "event 249"));
        assert!(
            e.iter()
                .zip(e.iter().skip(1))
                .all(|(a, b)| a.seq + 1 == b.seq)
        );
    }
}
