//! The etcd mode's plumbing: Patroni's leader key, followed with a watch ([`crate::etcd`]),
//! is told to the policy as [`Input::Leader`]; the rules (when the servers are checked,
//! what may be switched to) are the policy's ([`crate::policy::leader`]). No monitoring
//! connection is kept: each check is made on a new connection. This keeps the watch, the
//! log lines and what the pages show of the key.

use tokio::task::JoinHandle;

use super::*;
use crate::etcd::{self, Event};
use crate::etcd_settings::EtcdMode;
use crate::policy::leader::{self as rule, Held, Key, LeaderView};

pub(super) struct Follower {
    settings: etcd::Settings,
    events: Option<mpsc::Receiver<Event>>,
    task: Option<JoinHandle<()>>,
    view: LeaderView,
}

impl Follower {
    pub(super) fn new(mode: &EtcdMode) -> Follower {
        Follower {
            view: LeaderView {
                key: mode.settings.leader_key(),
                endpoints: mode
                    .settings
                    .endpoints
                    .iter()
                    .map(|e| e.to_string())
                    .collect(),
                ..LeaderView::default()
            },
            settings: mode.settings.clone(),
            events: None,
            task: None,
        }
    }

    /// What the pages show of the key.
    pub(super) fn view(&self) -> &LeaderView {
        &self.view
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
                    "etcd mode: cannot start following the leader key: {e}; nothing will be switched until a reload or a restart with working etcd settings"
                );
            }
        }
        self.publish();
    }

    /// The etcd settings changed (a reload): the running watch is stopped and one with
    /// the new settings started. The policy keeps the key as last heard until the new
    /// watch reports it (at once when etcd answers, or as unreachable). What the pages
    /// show of it is kept when the key is the same one (endpoints, credentials, files or
    /// the members' map changed); the count of lost watches and the last error always.
    pub(super) fn restart_leader(&mut self) {
        let Some(mode) = self.cfg.etcd.as_ref() else {
            return;
        };
        let mut f = Follower::new(mode);
        if let Some(mut old) = self.leader.take() {
            // Dropping it at the end of this block ends the old watch.
            let was = std::mem::take(&mut old.view);
            let fresh = std::mem::take(&mut f.view);
            f.view = if was.key == fresh.key {
                LeaderView {
                    endpoints: fresh.endpoints,
                    ..was
                }
            } else {
                LeaderView {
                    watch_lost: was.watch_lost,
                    last_error: was.last_error,
                    last_event: was.last_event,
                    ..fresh
                }
            };
        }
        self.leader = Some(f);
        self.start_leader();
    }

    /// One event of the watch: log it, show it, and tell the policy.
    pub(super) async fn on_leader(&mut self, event: Event) {
        let active = self.active_name();
        let Some(f) = self.leader.as_mut() else {
            return;
        };
        let now = SystemTime::now();
        f.view.last_event = Some(now);
        let key = match event {
            Event::Leader { member, revision } => {
                let name = member.map(|m| m.name);
                // After an outage the same leader is reported again: not a change.
                let changed = !f.view.heard || f.view.leader != name;
                let back = f.view.unreachable.is_some();
                if changed {
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
                if changed {
                    let text = match &name {
                        Some(n) => format!("Patroni's leader key names {n} (revision {revision})"),
                        None => format!("Patroni's leader key is gone (revision {revision})"),
                    };
                    view::record_event(&self.status, Kind::State, name.as_deref(), text);
                }
                let node = name.as_deref().and_then(|n| {
                    let server = self.cfg.etcd.as_ref().map_or(n, |m| m.server_for(n));
                    self.nodes.iter().position(|x| x.name == server)
                });
                f.view.server = node.map(|i| self.nodes[i].name.clone());
                f.view.leader = name.clone();
                f.view.heard = true;
                f.view.revision = Some(revision);
                f.view.unreachable = None;
                match name {
                    Some(member) => Key::Names {
                        member,
                        server: node,
                    },
                    None => Key::Deleted,
                }
            }
            Event::Unreachable { reason } => {
                warn!(
                    "etcd unreachable: {reason}; nothing is switched until it answers again, PgBouncer stays on {active}"
                );
                f.view.watch_lost += 1;
                f.view.last_error = Some((now, reason.clone()));
                f.view.unreachable = Some((now, reason));
                Key::Unreachable
            }
        };
        self.publish();
        self.feed(Input::Leader(key)).await;
    }

    /// Say why nothing is switched, now that it changed (see [`Command::LeaderHeld`]).
    pub(super) fn say_leader_held(&mut self, held: Option<Held>) {
        let pointed = self.active_name();
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let Some(f) = self.leader.as_mut() else {
            return;
        };
        let said = held.as_ref().map(|h| rule::held_text(h, &pointed, &names));
        match &said {
            Some((_, text)) => info!("{text}"),
            None if f.view.held.is_some() => {
                info!("Patroni's leader and the servers agree again")
            }
            None => {}
        }
        f.view.held_level = said.as_ref().map(|(l, _)| *l);
        f.view.held = said.map(|(_, t)| t);
        self.publish();
    }
}
