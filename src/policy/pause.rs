//! When clients are held in PgBouncer (`pause_on_failover`) while the active master is
//! gone, and when the hold ends.
//!
//! In etcd mode Patroni's leader key counts too: a key deleted, or naming another
//! server than the active master, is the loss of that master (see [`key_left`]). In a
//! switchover Patroni stops the old primary's PostgreSQL about a second before it
//! deletes the key, and the servers are not checked until the key names the next leader;
//! clients that connect meanwhile wait in PgBouncer for the old server, and the switch
//! drops them with its `KILL` unless they are held. So the hold starts when the key
//! leaves, lasts while it names no one or another server, and ends with the switch to the
//! leader (which then only resumes them), when the key names the old master again and it
//! answers as one, or at `pause_timeout`.

use std::time::{Duration, Instant};

use crate::decide::{Action, Believed, Cluster, Decision, NodeId, NodeState, Refusal};
use crate::policy::leader::Key;

/// Whether a failover pause can be made now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pausing {
    /// `pause_on_failover` is off.
    Off,
    On,
    /// `pause_on_failover` is on, but the state file cannot be written: a pause the file
    /// does not list would be left behind by a rebouncer killed during it, so none is made
    /// until a write works again.
    NeedsStateFile,
}

impl Pausing {
    pub fn new(configured: bool, state_writable: bool) -> Pausing {
        match (configured, state_writable) {
            (false, _) => Pausing::Off,
            (true, true) => Pausing::On,
            (true, false) => Pausing::NeedsStateFile,
        }
    }
}

/// How the active master stopped being one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    Stale,
    Standby,
    Down,
    /// etcd mode: Patroni's leader key was deleted or names another member, whatever
    /// the server answered last.
    NotLeader,
}

impl Loss {
    pub fn why(self) -> &'static str {
        match self {
            Loss::Stale => "it turned out to be a stale primary",
            Loss::Standby => "it answers as a standby",
            // The line logged when it went down has the error.
            Loss::Down => "it is down",
            Loss::NotLeader => "Patroni's leader key no longer names it",
        }
    }
}

/// What to do about the loss of the active master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Hold its clients (record them in the state file, then `PAUSE`).
    Hold(Loss),
    /// Pausing is on but cannot be recorded: say that the clients are not held.
    CannotRecord(Loss),
}

/// A verdict that will not end in a switch by itself soon, so held clients are better
/// off with their errors now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoHold {
    SplitBrain(Vec<NodeId>),
    Refused(Refusal),
    /// Only stale primaries (other than the lost master) answer as master.
    OnlyStale(Vec<NodeId>),
}

/// Why a hold ends without a switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldEnd {
    /// The lost master answers as master again: clients go on where they were.
    MasterBack,
    Verdict(NoHold),
    /// `pause_timeout` passed with no single master to switch to.
    TimedOut,
}

fn is_stale(decision: &Decision, node: NodeId) -> bool {
    decision.stale.iter().any(|s| s.node == node)
}

/// etcd mode: Patroni's leader key no longer names `node`: it was deleted (no leader) or
/// names the member of another server. `key`: None in polling mode. A key naming a member
/// with no server, or etcd unheard, says nothing about `node`: a hold on those grounds
/// could only end at `pause_timeout`.
pub fn key_left(key: Option<&Key>, node: NodeId) -> bool {
    match key {
        Some(Key::Deleted) => true,
        Some(Key::Names {
            server: Some(s), ..
        }) => *s != node,
        _ => false,
    }
}

/// Whether the loss of the active, confirmed master calls for a hold: pausing is on, the
/// loss was not handled yet, and there is nothing to switch to right now (then the switch
/// itself is quicker than a pause). `states`: what each node answered last; `key`: the
/// leader key in etcd mode. Once the key has left the active master, a switch possible
/// now is held for as well: it would drop the clients waiting in PgBouncer for the old
/// server, which a hold keeps and hands to the new one.
pub fn on_loss(
    pausing: Pausing,
    loss_handled: bool,
    believed: Believed,
    decision: &Decision,
    states: &[Option<NodeState>],
    key: Option<&Key>,
) -> Option<Start> {
    if pausing == Pausing::Off || loss_handled {
        return None;
    }
    let a = believed.active.filter(|_| believed.confirmed)?;
    let left = key_left(key, a);
    if matches!(decision.action, Action::Switch(_)) && !left {
        return None;
    }
    // A pause that the same verdict would end at once helps nobody.
    if no_hold_verdict(decision, a).is_some() {
        return None;
    }
    let loss = match states.get(a).copied().flatten() {
        Some(NodeState::Master) if is_stale(decision, a) => Loss::Stale,
        Some(NodeState::Master) | None if left => Loss::NotLeader,
        Some(NodeState::Master) | None => return None,
        Some(NodeState::Standby) => Loss::Standby,
        Some(NodeState::Down) => Loss::Down,
    };
    Some(match pausing {
        Pausing::NeedsStateFile => Start::CannotRecord(loss),
        _ => Start::Hold(loss),
    })
}

/// The verdict that makes a hold pointless, if any. The lost master itself turning out
/// stale is the loss, not such a verdict.
pub fn no_hold_verdict(decision: &Decision, lost: NodeId) -> Option<NoHold> {
    if let Cluster::SplitBrain(m) = &decision.cluster {
        return Some(NoHold::SplitBrain(m.clone()));
    }
    if let Some(r) = &decision.refusal {
        return Some(NoHold::Refused(r.clone()));
    }
    let stale: Vec<NodeId> = decision
        .stale
        .iter()
        .map(|s| s.node)
        .filter(|n| *n != lost)
        .collect();
    (!stale.is_empty()).then_some(NoHold::OnlyStale(stale))
}

/// Why a hold for the loss of `lost` must end without a switch at `now`, if it must.
pub fn hold_over(
    lost: NodeId,
    deadline: Instant,
    now: Instant,
    decision: &Decision,
    states: &[Option<NodeState>],
    key: Option<&Key>,
) -> Option<HoldEnd> {
    if master_back(Some(lost), decision, states, key) {
        return Some(HoldEnd::MasterBack);
    }
    if let Some(v) = no_hold_verdict(decision, lost) {
        return Some(HoldEnd::Verdict(v));
    }
    (deadline <= now).then_some(HoldEnd::TimedOut)
}

/// A switch still failing when the hold's time is up: the clients get errors rather than
/// wait longer.
pub fn switch_outlasted_hold(deadline: Instant, now: Instant) -> bool {
    deadline <= now
}

/// Whether `node` answers as a master that is not stale and, in etcd mode, the leader key
/// has not left it: the loss of the active master is forgotten then (a later loss gets its
/// own pause). What a server answered before the key left it proves nothing: the servers
/// are checked again only when the key names a leader.
pub fn master_back(
    node: Option<NodeId>,
    decision: &Decision,
    states: &[Option<NodeState>],
    key: Option<&Key>,
) -> bool {
    node.is_some_and(|n| {
        states.get(n).copied().flatten() == Some(NodeState::Master)
            && !is_stale(decision, n)
            && !key_left(key, n)
    })
}

/// Since when a hold about to start keeps clients waiting already: the earliest pause of
/// a database rebouncer still holds paused (a `RESUME` that failed), if any. While clients
/// are held, no `RESUME` of what the state file lists is retried, so a new hold keeps
/// every such database paused, whether or not it pauses it again. `listed`: each database
/// the state file lists as resume pending, with when it was listed (before its `PAUSE` or
/// `KILL`); `now`: PgBouncer's databases. One PgBouncer does not show paused (it was
/// restarted, or resumed by hand) has no clients waiting.
pub fn held_since(listed: &[(String, Instant)], now: &[crate::admin::Database]) -> Option<Instant> {
    listed
        .iter()
        .filter(|(db, _)| now.iter().any(|d| d.name == *db && d.paused))
        .map(|(_, since)| *since)
        .min()
}

/// When a hold whose `PAUSE` was sent at `started` must end: `pause_timeout` after the
/// earliest pause it keeps in force. An operator sets `pause_timeout` as the longest any
/// client waits, so a hold that took over an earlier pause gets only what is left of it.
pub fn hold_deadline(
    started: Instant,
    held_since: Option<Instant>,
    pause_timeout: Duration,
) -> Instant {
    held_since.map_or(started, |h| h.min(started)) + pause_timeout
}

/// Which of the lost master's databases (`wanted`, from its node file) a hold pauses,
/// given what PgBouncer has (`now`) and what rebouncer already holds (`held`, the state
/// file's resume pending). A database already paused is someone else's (an operator's
/// maintenance `PAUSE`) unless rebouncer holds it: resuming it later would end their
/// pause. One PgBouncer does not have is not there to pause.
pub fn databases_to_hold(
    wanted: &[String],
    now: &[crate::admin::Database],
    held: &[String],
) -> Vec<String> {
    wanted
        .iter()
        .filter(|db| {
            now.iter()
                .any(|d| d.name == **db && (!d.paused || held.contains(db)))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::decide::{Memory, Stale};

    const M: Option<NodeState> = Some(NodeState::Master);
    const S: Option<NodeState> = Some(NodeState::Standby);
    const D: Option<NodeState> = Some(NodeState::Down);

    fn on(active: NodeId) -> Believed {
        Believed {
            active: Some(active),
            confirmed: true,
        }
    }

    fn verdict(cluster: Cluster, action: Action) -> Decision {
        Decision {
            cluster,
            action,
            stale: Vec::new(),
            refusal: None,
            memory: Memory::default(),
        }
    }

    fn no_master() -> Decision {
        verdict(Cluster::NoMaster, Action::Nothing)
    }

    #[test]
    fn the_loss_of_the_active_master_with_nothing_to_switch_to_is_held() {
        let d = no_master();
        assert_eq!(
            on_loss(Pausing::On, false, on(0), &d, &[D, S], None),
            Some(Start::Hold(Loss::Down))
        );
        assert_eq!(
            on_loss(Pausing::On, false, on(0), &d, &[S, S], None),
            Some(Start::Hold(Loss::Standby))
        );
        assert_eq!(on_loss(Pausing::Off, false, on(0), &d, &[D, S], None), None);
        assert_eq!(
            on_loss(Pausing::On, true, on(0), &d, &[D, S], None),
            None,
            "handled"
        );
        let unconfirmed = Believed {
            active: Some(0),
            confirmed: false,
        };
        assert_eq!(
            on_loss(Pausing::On, false, unconfirmed, &d, &[D, S], None),
            None
        );
        let switch = verdict(Cluster::OneMaster(1), Action::Switch(1));
        assert_eq!(
            on_loss(Pausing::On, false, on(0), &switch, &[D, M], None),
            None
        );
    }

    #[test]
    fn an_active_master_that_still_answers_as_master_is_no_loss() {
        let same = verdict(Cluster::OneMaster(0), Action::Nothing);
        assert_eq!(
            on_loss(Pausing::On, false, on(0), &same, &[M, S], None),
            None
        );
    }

    #[test]
    fn each_loss_says_how_the_master_was_lost() {
        // These words end the log line that says why clients are held.
        assert_eq!(Loss::Down.why(), "it is down");
        assert_eq!(Loss::Standby.why(), "it answers as a standby");
        assert_eq!(Loss::Stale.why(), "it turned out to be a stale primary");
    }

    #[test]
    fn no_pause_is_made_that_the_state_file_cannot_record() {
        assert_eq!(Pausing::new(true, false), Pausing::NeedsStateFile);
        assert_eq!(Pausing::new(false, false), Pausing::Off);
        assert_eq!(
            on_loss(
                Pausing::NeedsStateFile,
                false,
                on(0),
                &no_master(),
                &[D, S],
                None
            ),
            Some(Start::CannotRecord(Loss::Down))
        );
    }

    #[test]
    fn a_split_brain_or_an_only_stale_primary_is_not_worth_a_pause() {
        let split = verdict(Cluster::SplitBrain(vec![1, 2]), Action::Nothing);
        assert_eq!(
            on_loss(Pausing::On, false, on(0), &split, &[D, M, M], None),
            None
        );
        let mut stale = no_master();
        stale.stale = vec![Stale {
            node: 1,
            timeline: 1,
            highest: 2,
            standby: None,
        }];
        assert_eq!(
            on_loss(Pausing::On, false, on(0), &stale, &[D, M], None),
            None
        );
        assert_eq!(no_hold_verdict(&stale, 0), Some(NoHold::OnlyStale(vec![1])));
        // The lost master itself found stale is the loss.
        stale.stale[0].node = 0;
        assert_eq!(
            on_loss(Pausing::On, false, on(0), &stale, &[M, S], None),
            Some(Start::Hold(Loss::Stale))
        );
    }

    #[test]
    fn a_hold_ends_when_the_master_is_back_on_a_verdict_or_at_its_deadline() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(10);
        let d = no_master();
        assert_eq!(hold_over(0, deadline, t0, &d, &[D, S], None), None);
        assert_eq!(
            hold_over(0, deadline, t0, &d, &[M, S], None),
            Some(HoldEnd::MasterBack)
        );
        assert_eq!(
            hold_over(0, deadline, deadline, &d, &[D, S], None),
            Some(HoldEnd::TimedOut)
        );
        let split = verdict(Cluster::SplitBrain(vec![1, 2]), Action::Nothing);
        assert_eq!(
            hold_over(0, deadline, t0, &split, &[D, M, M], None),
            Some(HoldEnd::Verdict(NoHold::SplitBrain(vec![1, 2])))
        );
        assert!(!switch_outlasted_hold(deadline, t0));
        assert!(switch_outlasted_hold(deadline, deadline));
    }

    fn db(name: &str, paused: bool) -> crate::admin::Database {
        crate::admin::Database {
            name: name.to_string(),
            route: crate::admin::Route {
                host: None,
                port: 5432,
            },
            paused,
        }
    }

    #[test]
    fn a_hold_keeps_clients_waiting_since_the_earliest_pause_still_in_force() {
        let t0 = Instant::now();
        let listed = [
            ("appdb".to_string(), t0 + Duration::from_secs(3)),
            ("gone".to_string(), t0),
            ("ops".to_string(), t0 + Duration::from_secs(1)),
        ];
        // "gone" is listed but no longer paused (PgBouncer restarted): nobody waits on it.
        let now = [db("appdb", true), db("gone", false), db("ops", true)];
        assert_eq!(held_since(&listed, &now), Some(t0 + Duration::from_secs(1)));
        assert_eq!(held_since(&listed, &[db("appdb", false)]), None);
        assert_eq!(held_since(&[], &now), None);
    }

    #[test]
    fn a_hold_ends_pause_timeout_after_the_earliest_pause_it_keeps() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let started = t0 + Duration::from_secs(6);
        assert_eq!(hold_deadline(started, None, timeout), started + timeout);
        assert_eq!(hold_deadline(started, Some(t0), timeout), t0 + timeout);
        // Listed after the PAUSE was sent: the PAUSE counts.
        assert_eq!(
            hold_deadline(started, Some(started + Duration::from_secs(1)), timeout),
            started + timeout
        );
    }

    #[test]
    fn a_hold_pauses_only_databases_pgbouncer_has_and_no_one_elses_pause() {
        let wanted: Vec<String> = ["appdb", "ops", "mine", "gone"].map(String::from).into();
        let now = [db("appdb", false), db("ops", true), db("mine", true)];
        assert_eq!(
            databases_to_hold(&wanted, &now, &["mine".to_string()]),
            ["appdb", "mine"]
        );
        assert!(databases_to_hold(&wanted, &[], &[]).is_empty());
    }

    fn names(server: Option<NodeId>) -> Key {
        Key::Names {
            member: "m".into(),
            server,
        }
    }

    #[test]
    fn the_leader_key_leaving_the_active_master_is_its_loss_whatever_it_answered_last() {
        // Patroni deleted the key (a switchover) before the servers were checked again.
        let same = verdict(Cluster::OneMaster(0), Action::Nothing);
        let held = |key: Key| on_loss(Pausing::On, false, on(0), &same, &[M, S], Some(&key));
        assert_eq!(held(Key::Deleted), Some(Start::Hold(Loss::NotLeader)));
        assert_eq!(held(names(Some(1))), Some(Start::Hold(Loss::NotLeader)));
        for key in [names(Some(0)), names(None), Key::Unreachable, Key::NotHeard] {
            assert_eq!(held(key.clone()), None, "{key:?}");
        }
        // Down by the time the key names the next leader: that is how it was lost.
        assert_eq!(
            on_loss(
                Pausing::On,
                false,
                on(0),
                &no_master(),
                &[D, S],
                Some(&names(Some(1)))
            ),
            Some(Start::Hold(Loss::Down))
        );
        assert_eq!(
            on_loss(
                Pausing::On,
                true,
                on(0),
                &same,
                &[M, S],
                Some(&Key::Deleted)
            ),
            None,
            "handled"
        );
        assert_eq!(
            on_loss(
                Pausing::Off,
                false,
                on(0),
                &same,
                &[M, S],
                Some(&Key::Deleted)
            ),
            None
        );
        assert_eq!(
            on_loss(
                Pausing::NeedsStateFile,
                false,
                on(0),
                &same,
                &[M, S],
                Some(&Key::Deleted)
            ),
            Some(Start::CannotRecord(Loss::NotLeader))
        );
        assert_eq!(
            Loss::NotLeader.why(),
            "Patroni's leader key no longer names it"
        );
    }

    #[test]
    fn with_the_key_gone_from_the_active_master_a_switch_possible_now_is_held_for_too() {
        // The switch alone would drop the clients waiting in PgBouncer for the old server.
        let switch = verdict(Cluster::OneMaster(1), Action::Switch(1));
        assert_eq!(
            on_loss(
                Pausing::On,
                false,
                on(0),
                &switch,
                &[D, M],
                Some(&names(Some(1)))
            ),
            Some(Start::Hold(Loss::Down))
        );
        assert_eq!(
            on_loss(
                Pausing::On,
                false,
                on(0),
                &switch,
                &[D, M],
                Some(&names(Some(0)))
            ),
            None
        );
    }

    #[test]
    fn a_master_whose_leader_key_left_is_not_back_until_the_key_names_it_again() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(10);
        let d = verdict(Cluster::OneMaster(0), Action::Nothing);
        assert_eq!(
            hold_over(0, deadline, t0, &d, &[M, S], Some(&Key::Deleted)),
            None
        );
        assert_eq!(
            hold_over(0, deadline, t0, &d, &[M, S], Some(&names(Some(1)))),
            None
        );
        assert_eq!(
            hold_over(0, deadline, deadline, &d, &[M, S], Some(&Key::Deleted)),
            Some(HoldEnd::TimedOut)
        );
        assert_eq!(
            hold_over(0, deadline, t0, &d, &[M, S], Some(&names(Some(0)))),
            Some(HoldEnd::MasterBack)
        );
        assert!(!master_back(Some(0), &d, &[M, S], Some(&Key::Deleted)));
        assert!(master_back(Some(0), &d, &[M, S], Some(&Key::Unreachable)));
        assert!(!key_left(None, 0));
    }
}
