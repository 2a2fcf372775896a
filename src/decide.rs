//! The decision, kept pure: given what rebouncer believes about PgBouncer and what one
//! round observed, say what the cluster looks like and whether to switch. No I/O, no
//! clock, so every rule can be tested on its own.

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

/// The shape of the cluster after a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cluster {
    /// Exactly one master: the only case in which rebouncer ever acts.
    OneMaster(NodeId),
    /// No server answered as master.
    NoMaster,
    /// More than one master, in file order. Acting on this could send writes to an old
    /// primary that came back after a failover, so rebouncer refuses.
    SplitBrain(Vec<NodeId>),
}

/// What rebouncer believes PgBouncer points at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Believed {
    /// The node whose config the symlink points at, if any.
    pub active: Option<NodeId>,
    /// True once a switch (or, at start-up, a reload) to `active` was confirmed by asking
    /// PgBouncer where it points. False at start-up and after a failed switch, so the
    /// next round tries again.
    pub confirmed: bool,
}

/// What to do after a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Leave PgBouncer alone.
    Nothing,
    /// Point PgBouncer at this node and confirm it.
    Switch(NodeId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub cluster: Cluster,
    pub action: Action,
}

/// Classify a round's observations (in file order).
pub fn classify(observed: &[NodeState]) -> Cluster {
    let masters: Vec<NodeId> = observed
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == NodeState::Master)
        .map(|(i, _)| i)
        .collect();
    match masters.as_slice() {
        [] => Cluster::NoMaster,
        [one] => Cluster::OneMaster(*one),
        _ => Cluster::SplitBrain(masters),
    }
}

/// Decide after a round. A switch happens only with exactly one master, and only when
/// PgBouncer is not already confirmed to point at it. Split brain and "no master"
/// never change anything, however long they last.
pub fn decide(believed: Believed, observed: &[NodeState]) -> Decision {
    let cluster = classify(observed);
    let action = match cluster {
        Cluster::OneMaster(m) if believed.active != Some(m) || !believed.confirmed => {
            Action::Switch(m)
        }
        _ => Action::Nothing,
    };
    Decision { cluster, action }
}

#[cfg(test)]
mod tests {
    use super::NodeState::{Down, Master, Standby};
    use super::*;

    fn at(active: usize) -> Believed {
        Believed {
            active: Some(active),
            confirmed: true,
        }
    }

    #[test]
    fn one_master_already_active_does_nothing() {
        let d = decide(at(0), &[Master, Standby, Standby]);
        assert_eq!(d.cluster, Cluster::OneMaster(0));
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn master_moved_switches_to_the_new_one() {
        let d = decide(at(0), &[Down, Master, Standby]);
        assert_eq!(d.cluster, Cluster::OneMaster(1));
        assert_eq!(d.action, Action::Switch(1));
    }

    #[test]
    fn old_primary_coming_back_beside_new_one_is_split_brain() {
        let d = decide(at(1), &[Master, Master, Standby]);
        assert_eq!(d.cluster, Cluster::SplitBrain(vec![0, 1]));
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn three_masters_are_split_brain_and_named_in_file_order() {
        let d = decide(at(2), &[Master, Master, Master]);
        assert_eq!(d.cluster, Cluster::SplitBrain(vec![0, 1, 2]));
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn split_brain_never_switches_even_when_unconfirmed() {
        let believed = Believed {
            active: None,
            confirmed: false,
        };
        let d = decide(believed, &[Master, Standby, Master]);
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn no_master_changes_nothing() {
        let d = decide(at(0), &[Down, Standby, Standby]);
        assert_eq!(d.cluster, Cluster::NoMaster);
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn all_down_changes_nothing() {
        let d = decide(at(0), &[Down, Down, Down]);
        assert_eq!(d.cluster, Cluster::NoMaster);
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn first_round_switches_when_symlink_points_elsewhere() {
        let start = Believed {
            active: Some(1),
            confirmed: false,
        };
        assert_eq!(
            decide(start, &[Master, Standby, Standby]).action,
            Action::Switch(0)
        );
    }

    #[test]
    fn first_round_with_symlink_already_on_master_still_confirms_it() {
        // At start-up nothing proves PgBouncer loaded the file the link points at, so the
        // first round reloads and checks even though the link is already right.
        let start = Believed {
            active: Some(0),
            confirmed: false,
        };
        assert_eq!(
            decide(start, &[Master, Standby, Standby]).action,
            Action::Switch(0)
        );
    }

    #[test]
    fn first_round_with_no_symlink_and_no_master_waits() {
        let d = decide(Believed::default(), &[Down, Standby]);
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn failed_switch_is_retried_next_round() {
        let after_failure = Believed {
            active: Some(1),
            confirmed: false,
        };
        assert_eq!(
            decide(after_failure, &[Down, Master]).action,
            Action::Switch(1)
        );
    }

    #[test]
    fn flapping_follows_each_single_master_and_ignores_the_gaps() {
        // Round by round: master 0; gone; 1 promoted; 0 back beside 1; 1 alone again.
        let mut believed = at(0);
        let rounds: [(&[NodeState], Action); 5] = [
            (&[Master, Standby], Action::Nothing),
            (&[Down, Standby], Action::Nothing),
            (&[Down, Master], Action::Switch(1)),
            (&[Master, Master], Action::Nothing),
            (&[Down, Master], Action::Nothing),
        ];
        for (i, (observed, want)) in rounds.iter().enumerate() {
            let d = decide(believed, observed);
            assert_eq!(&d.action, want, "round {i}");
            if let Action::Switch(to) = d.action {
                believed = at(to);
            }
        }
        assert_eq!(believed, at(1));
    }

    #[test]
    fn an_empty_cluster_has_no_master() {
        assert_eq!(classify(&[]), Cluster::NoMaster);
    }
}
