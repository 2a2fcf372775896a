//! The etcd mode: Patroni's leader key, followed with a watch ([`crate::etcd`]), says when
//! to look at the servers. No monitoring connection is kept: the servers are checked, each
//! on a new connection, at start, when the key changes or etcd comes and goes, and while
//! the member the key names is not yet confirmed. The rule combining the key with the
//! servers' answers is [`crate::policy::leader`].

use tokio::task::JoinHandle;

use super::*;
use crate::etcd::{self, Event};
use crate::etcd_settings::EtcdMode;
use crate::policy::leader::{self as rule, Held, Key, LeaderView};

/// With the key settled and PgBouncer on its leader, no round is due: the next change of
/// the key starts one. This only keeps the timer finite.
const IDLE: Duration = Duration::from_secs(86_400);

/// What the key says, as last heard.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Heard {
    NotYet,
    Leader(Option<String>),
    Unreachable,
}

pub(super) struct Follower {
    settings: etcd::Settings,
    events: Option<mpsc::Receiver<Event>>,
    task: Option<JoinHandle<()>>,
    heard: Heard,
    /// Checks of an unconfirmed candidate since the key last changed (they back off).
    rechecks: u32,
    /// The servers are checked again (see [`rule::recheck_in`]).
    recheck: bool,
    held: Option<Held>,
    view: LeaderView,
}

impl Follower {
    pub(super) fn new(mode: &EtcdMode) -> Follower {
        Follower {
            view: LeaderView {
                key: mode.settings.leader_key(),
                ..LeaderView::default()
            },
            settings: mode.settings.clone(),
            events: None,
            task: None,
            heard: Heard::NotYet,
            rechecks: 0,
            recheck: false,
            held: None,
        }
    }

    /// What the rule is given: the member's node among the servers configured now.
    fn key(&self, mode: Option<&EtcdMode>, nodes: &[Node]) -> Key {
        match &self.heard {
            Heard::NotYet => Key::NotHeard,
            Heard::Unreachable => Key::Unreachable,
            Heard::Leader(None) => Key::Deleted,
            Heard::Leader(Some(member)) => {
                let server = mode.map_or(member.as_str(), |m| m.server_for(member));
                Key::Names {
                    member: member.clone(),
                    server: nodes.iter().position(|n| n.name == server),
                }
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The next event of the watch; never, outside etcd mode or once the watch ended.
pub(super) async fn next_event(f: &mut Option<Follower>) -> Option<Event> {
    match f.as_mut().and_then(|f| f.events.as_mut()) {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl<C: Console> Daemon<C> {
    /// Starts the watch (etcd mode only).
    pub(super) fn start_leader(&mut self) {
        let Some(f) = self.leader.as_mut() else {
            return;
        };
        match etcd::watch_leader(f.settings.clone()) {
            Ok((rx, task)) => {
                info!(
                    "etcd mode: following Patroni's leader key {} at {}; the servers are checked on new connections \
                     when it changes, no monitoring connection is kept",
                    f.view.key,
                    f.settings
                        .endpoints
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                f.events = Some(rx);
                f.task = Some(task);
            }
            Err(e) => {
                // The files were read when the configuration was; this is a change since.
                error!(
                    "etcd mode: cannot start following the leader key: {e}; nothing will be switched until rebouncer is restarted with working etcd settings"
                );
            }
        }
        self.publish_leader();
    }

    /// One event of the watch: note it, then check the servers.
    pub(super) async fn on_leader(&mut self, event: Event) {
        let Some(f) = self.leader.as_mut() else {
            return;
        };
        let now = SystemTime::now();
        match event {
            Event::Leader { member, revision } => {
                let name = member.map(|m| m.name);
                // After an outage the same leader is reported again: not a change.
                let changed = !f.view.heard || f.view.leader != name;
                let back = f.heard == Heard::Unreachable;
                if changed {
                    f.rechecks = 0;
                    f.view.changed = Some(now);
                    match &name {
                        Some(n) => info!(
                            "Patroni's leader key names {n} (revision {revision}); checking the servers on new connections"
                        ),
                        None => warn!(
                            "Patroni's leader key {} is gone (revision {revision}): Patroni reports no leader; nothing is switched until it names one",
                            f.view.key
                        ),
                    }
                }
                if back {
                    info!(
                        "etcd answers again; Patroni's leader key names {}",
                        name.as_deref().unwrap_or("no member (no leader)")
                    );
                }
                let text = match &name {
                    Some(n) => format!("Patroni's leader key names {n} (revision {revision})"),
                    None => format!("Patroni's leader key is gone (revision {revision})"),
                };
                if changed {
                    view::record_event(&self.status, Kind::State, name.as_deref(), text);
                }
                f.heard = Heard::Leader(name.clone());
                f.view.server = name.as_deref().map(|n| {
                    self.cfg
                        .etcd
                        .as_ref()
                        .map_or(n, |m| m.server_for(n))
                        .to_string()
                });
                f.view.leader = name;
                f.view.heard = true;
                f.view.revision = Some(revision);
                f.view.unreachable = None;
            }
            Event::Unreachable { reason } => {
                warn!(
                    "etcd unreachable: {reason}; nothing is switched until it answers again, PgBouncer stays on {}",
                    match self.believed.active {
                        Some(n) => self.nodes[n].name.as_str(),
                        None => "what it uses now",
                    }
                );
                f.heard = Heard::Unreachable;
                f.view.unreachable = Some((now, reason));
            }
        }
        self.publish_leader();
        if self
            .leader
            .as_ref()
            .is_some_and(|f| f.heard == Heard::Leader(None))
        {
            // No leader: nothing can be switched; the servers are checked when one is
            // named (a switchover deletes the key just before naming the next leader).
            self.decide_and_act().await;
            return;
        }
        // Check every server now: the new leader to confirm it, the others for the
        // split-brain and stale-primary rules, and with etcd away whether PgBouncer's
        // server still answers as the master (for /nagios).
        self.retry_failing_now();
        self.round().await;
    }

    /// decide's verdict, with the leader key's rule applied in etcd mode.
    pub(super) fn judge(&mut self) -> Decision {
        let mut decision = decide::decide(self.believed, &self.observed(), &self.memory);
        let Some(f) = self.leader.as_mut() else {
            return decision;
        };
        let key = f.key(self.cfg.etcd.as_ref(), &self.nodes);
        let follow = rule::follow(&key, &decision);
        decision.action = follow.action;
        f.recheck = follow.recheck;
        if follow.recheck {
            f.rechecks = f.rechecks.saturating_add(1);
        }
        if f.held != follow.held {
            let pointed = match self.believed.active {
                Some(n) => self.nodes[n].name.clone(),
                None => "no node's config".to_string(),
            };
            let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
            let said = follow
                .held
                .as_ref()
                .map(|h| rule::held_text(h, &pointed, &names));
            match &said {
                Some((_, text)) => info!("{text}"),
                None if f.held.is_some() => {
                    info!("Patroni's leader and the servers agree again")
                }
                None => {}
            }
            f.view.held_level = said.as_ref().map(|(l, _)| *l);
            f.view.held = said.map(|(_, t)| t);
            f.held = follow.held;
        }
        self.publish_leader();
        decision
    }

    /// How long until the next round: in etcd mode none is due unless the leader is
    /// still to be confirmed or a server is down (the key's changes start rounds).
    pub(super) fn round_pause(&self, polling: Duration) -> Duration {
        let Some(f) = &self.leader else {
            return polling;
        };
        let down = self
            .nodes
            .iter()
            .any(|n| n.state.is_none_or(|s| s == NodeState::Down));
        // A switch that went through needs no round to confirm it: PgBouncer confirmed it.
        let on_leader = matches!(
            f.key(self.cfg.etcd.as_ref(), &self.nodes),
            Key::Names { server: Some(c), .. }
                if self.believed.active == Some(c)
                    && self.believed.confirmed
                    && self.nodes[c].state == Some(NodeState::Master)
        );
        rule::next_round(
            f.recheck && !on_leader,
            f.rechecks.saturating_sub(1),
            down,
            self.cfg.fast_interval,
            self.cfg.interval,
        )
        .unwrap_or(IDLE)
    }

    fn publish_leader(&self) {
        if let Some(f) = &self.leader {
            let v = f.view.clone();
            self.status.send_modify(|s| s.etcd = Some(v));
        }
    }
}
