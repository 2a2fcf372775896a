//! The words every other module uses about the servers: which one, what it answered, and
//! where it stands in the cluster's history. This module imports nothing from the crate,
//! so anything may import it without making a circle.

/// Index of a server in the configuration file (file order).
pub type NodeId = usize;

/// What one check found a server to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Answered `pg_is_in_recovery() = false`.
    Master,
    /// Answered `pg_is_in_recovery() = true`.
    Standby,
    /// No answer within the timeout, refused, or any error.
    Down,
}

impl NodeState {
    /// The words the Go tool used on `/nodes`; monitoring scripts match on them.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Master => "master",
            NodeState::Standby => "standby",
            NodeState::Down => "down",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cluster's identity: `pg_control_system()`'s system identifier, shared by a primary and
/// every standby cloned from it, new for every `initdb`. `None` when the monitoring role may
/// not read it.
pub type SystemId = Option<u64>;

/// A server's place in the cluster's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeline {
    pub timeline: u32,
    /// The cluster's system identifier, when the monitoring role may read it.
    pub system: SystemId,
}

/// The highest timeline remembered for one cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Highest {
    pub system: SystemId,
    pub timeline: u32,
}

/// The highest timeline remembered per cluster identity, in the order first seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timelines(Vec<Highest>);

impl Timelines {
    /// The highest timeline remembered for a cluster.
    pub fn highest(&self, system: SystemId) -> Option<u32> {
        self.0
            .iter()
            .find(|h| h.system == system)
            .map(|h| h.timeline)
    }

    /// Remember `timeline` for `system` if it is higher than what is known; true if it was.
    pub fn raise(&mut self, system: SystemId, timeline: u32) -> bool {
        match self.0.iter_mut().find(|h| h.system == system) {
            Some(h) if h.timeline >= timeline => false,
            Some(h) => {
                h.timeline = timeline;
                true
            }
            None => {
                self.0.push(Highest { system, timeline });
                true
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Highest> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_keeps_the_highest_timeline_per_cluster() {
        let mut t = Timelines::default();
        assert!(t.is_empty());
        assert!(t.raise(Some(7), 2));
        assert!(!t.raise(Some(7), 1));
        assert!(!t.raise(Some(7), 2));
        assert!(t.raise(Some(7), 3));
        assert!(t.raise(Some(8), 1));
        assert!(t.raise(None, 4));
        assert!(!t.is_empty());
        assert_eq!(t.highest(Some(7)), Some(3));
        assert_eq!(t.highest(Some(8)), Some(1));
        assert_eq!(t.highest(None), Some(4));
        assert_eq!(t.highest(Some(9)), None);
        let order: Vec<SystemId> = t.iter().map(|h| h.system).collect();
        assert_eq!(order, vec![Some(7), Some(8), None]);
    }

    #[test]
    fn the_words_on_nodes_are_the_go_tools() {
        assert_eq!(NodeState::Master.to_string(), "master");
        assert_eq!(NodeState::Standby.to_string(), "standby");
        assert_eq!(NodeState::Down.to_string(), "down");
    }
}
