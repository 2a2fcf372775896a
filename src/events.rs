//! The last few hundred things that happened, for `/`, `/events` and whoever asks "what
//! did it do at 03:12?" without the log file at hand. The log says everything; this
//! keeps what changed (a node's state, a switch, the start and end of a condition), in a
//! bounded ring so that a flapping server cannot grow the daemon's memory.

use std::collections::VecDeque;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::json::Value;
use crate::status::Snapshot;

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

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Increases by one per event since start: a script polling `/events` keeps the last
    /// one it saw and knows whether it missed some (the ring dropped them).
    pub seq: u64,
    pub at: SystemTime,
    pub kind: Kind,
    /// The server it is about, if one.
    pub node: Option<String>,
    /// What the log says, in one line.
    pub text: String,
    /// Durations that belong to it (a switch's timings), in seconds.
    pub seconds: Vec<(&'static str, f64)>,
}

impl Event {
    pub fn to_json(&self) -> Value {
        let mut fields = vec![
            ("seq", Value::Int(self.seq as i64)),
            ("time", Value::time(self.at)),
            ("kind", Value::str(self.kind.as_str())),
            ("node", Value::opt_str(self.node.clone())),
            ("text", Value::str(self.text.clone())),
        ];
        fields.extend(self.seconds.iter().map(|(k, v)| (*k, Value::Num(*v))));
        Value::Obj(fields)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Events {
    ring: VecDeque<Event>,
    next_seq: u64,
}

impl Events {
    pub fn push(&mut self, at: SystemTime, kind: Kind, node: Option<&str>, text: String) {
        self.push_timed(at, kind, node, text, Vec::new());
    }

    pub fn push_timed(
        &mut self,
        at: SystemTime,
        kind: Kind,
        node: Option<&str>,
        text: String,
        seconds: Vec<(&'static str, f64)>,
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
            seconds,
        });
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Event> {
        self.ring.iter()
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// `/events`: every event kept, oldest first.
    pub fn to_json(&self) -> Value {
        Value::Obj(vec![
            ("capacity", Value::Int(CAPACITY as i64)),
            (
                "events",
                Value::Arr(self.ring.iter().map(Event::to_json).collect()),
            ),
        ])
    }
}

/// Record an event in the shared snapshot, stamped now. The daemon's one-line hook.
pub fn record(status: &watch::Sender<Snapshot>, kind: Kind, node: Option<&str>, text: String) {
    let at = SystemTime::now();
    status.send_modify(|s| s.events.push(at, kind, node, text));
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

    #[test]
    fn json_shape() {
        let mut e = Events::default();
        e.push_timed(
            SystemTime::UNIX_EPOCH,
            Kind::Switch,
            Some("pg2"),
            "PgBouncer now points at \"pg2\"".into(),
            vec![("switch_seconds", 0.25)],
        );
        e.push(
            SystemTime::UNIX_EPOCH,
            Kind::SplitBrainStart,
            None,
            "x".into(),
        );
        let mut s = String::new();
        e.to_json().write(&mut s);
        assert_eq!(
            s,
            r#"{"capacity":200,"events":[{"seq":1,"time":"1970-01-01T00:00:00.000Z","kind":"switch","node":"pg2","text":"PgBouncer now points at \"pg2\"","switch_seconds":0.25},{"seq":2,"time":"1970-01-01T00:00:00.000Z","kind":"split_brain_start","node":null,"text":"x"}]}"#
        );
    }
}
