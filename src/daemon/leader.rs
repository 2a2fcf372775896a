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
    /// The comparisons of a new leader's advertised address with its server's, made off
    /// the loop (they resolve host names).
    checks: mpsc::Receiver<AddressCheck>,
    checks_tx: mpsc::Sender<AddressCheck>,
}

/// What the loop hears of the etcd mode.
pub(super) enum News {
    Watch(Event),
    Address(AddressCheck),
}

/// A leader's `conn_url` compared with its server's connection string.
pub(super) struct AddressCheck {
    member: String,
    mismatch: Option<String>,
}

/// How long a host name may take to resolve for the comparison; an unresolved one is
/// compared by its name alone.
const RESOLVE_LIMIT: Duration = Duration::from_secs(2);

impl Follower {
    pub(super) fn new(mode: &EtcdMode) -> Follower {
        let (checks_tx, checks) = mpsc::channel(4);
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
            checks,
            checks_tx,
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

/// The next event of the watch or result of an address check; never outside etcd mode.
pub(super) async fn next_event(f: &mut Option<Follower>) -> Option<News> {
    let Some(f) = f.as_mut() else {
        return std::future::pending().await;
    };
    let watch = async {
        match f.events.as_mut() {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        Some(c) = f.checks.recv() => Some(News::Address(c)),
        e = watch => e.map(News::Watch),
    }
}

/// Where a server's connection string connects, one [`rule::Address`] per TCP host
/// (names as written, `hostaddr` as their address); none for Unix sockets.
fn configured_addresses(server: &Server) -> Vec<rule::Address> {
    use tokio_postgres::config::Host;
    let c = &server.target.config;
    let ports = c.get_ports();
    let port = |k: usize| ports.get(k).or(ports.first()).copied().unwrap_or(5432);
    let addrs = c.get_hostaddrs();
    let hosts = c.get_hosts();
    if hosts.is_empty() {
        return addrs
            .iter()
            .enumerate()
            .map(|(k, ip)| rule::Address {
                host: ip.to_string(),
                resolved: vec![*ip],
                port: port(k),
            })
            .collect();
    }
    hosts
        .iter()
        .enumerate()
        .filter_map(|(k, h)| match h {
            Host::Tcp(name) => Some(rule::Address {
                host: name.clone(),
                resolved: addrs.get(k).copied().into_iter().collect(),
                port: port(k),
            }),
            Host::Unix(_) => None,
        })
        .collect()
}

/// The addresses `a.host` resolves to, added to it (none when it does not resolve in
/// time: it is then compared by name).
async fn resolve(mut a: rule::Address) -> rule::Address {
    let lookup = tokio::net::lookup_host((a.host.as_str(), a.port));
    if let Ok(Ok(found)) = tokio::time::timeout(RESOLVE_LIMIT, lookup).await {
        for ip in found.map(|sa| sa.ip()) {
            if !a.resolved.contains(&ip) {
                a.resolved.push(ip);
            }
        }
    }
    a
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
                    endpoint: None,
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

    /// News of the etcd mode.
    pub(super) async fn on_leader(&mut self, news: News) {
        match news {
            News::Watch(event) => self.on_watch(event).await,
            News::Address(check) => self.on_address_check(check),
        }
    }

    /// Compare the leader's advertised address with its server's, off the loop.
    fn check_address(&self, member: &str, conn_url: Option<&str>, node: NodeId) {
        let (Some(f), Some(server)) = (self.leader.as_ref(), self.cfg.servers.get(node)) else {
            return;
        };
        let Some(url) = conn_url else {
            return;
        };
        let Some((host, port)) = rule::conn_url_address(url) else {
            warn!(
                "Patroni member {member}'s conn_url {url:?} is not a postgres:// URL; its address cannot be compared with server {}'s connection string",
                server.name
            );
            return;
        };
        let configured = configured_addresses(server);
        let (member, name, tx) = (member.to_string(), server.name.clone(), f.checks_tx.clone());
        tokio::spawn(async move {
            let advertised = resolve(rule::Address {
                host,
                resolved: Vec::new(),
                port,
            })
            .await;
            let mut ours = Vec::with_capacity(configured.len());
            for a in configured {
                ours.push(resolve(a).await);
            }
            let mismatch = rule::address_mismatch(&member, &advertised, &name, &ours);
            let _ = tx.send(AddressCheck { member, mismatch }).await;
        });
    }

    /// Say a mismatch once, when it appears (and when it is gone); shown while it lasts.
    fn on_address_check(&mut self, c: AddressCheck) {
        let Some(f) = self.leader.as_mut() else {
            return;
        };
        if f.view.leader.as_deref() != Some(c.member.as_str())
            || f.view.address_mismatch == c.mismatch
        {
            return;
        }
        match &c.mismatch {
            Some(m) => {
                warn!("{m}");
                view::record_event(&self.status, Kind::State, None, m.clone());
            }
            None => info!(
                "Patroni member {}'s advertised address matches its server's connection string now",
                c.member
            ),
        }
        f.view.address_mismatch = c.mismatch;
        self.publish();
    }

    /// One event of the watch: log it, show it, and tell the policy.
    async fn on_watch(&mut self, event: Event) {
        let active = self.active_name();
        let Some(f) = self.leader.as_mut() else {
            return;
        };
        let now = SystemTime::now();
        let mut compare = None;
        let key = match event {
            // Where the watch is, not what it learnt: shown, but no news of the key.
            Event::Endpoint(endpoint) => {
                if let Some(e) = &endpoint {
                    info!("etcd mode: the watch of Patroni's leader key is in place on {e}");
                }
                f.view.endpoint = endpoint;
                self.publish();
                return;
            }
            Event::Leader { member, revision } => {
                f.view.last_event = Some(now);
                let conn_url = member.as_ref().and_then(|m| m.conn_url.clone());
                let name = member.map(|m| m.name);
                // After an outage the same leader is reported again: not a change.
                let changed = !f.view.heard || f.view.leader != name;
                let back = f.view.unreachable.is_some();
                if changed {
                    f.view.changed = Some(now);
                    f.view.address_mismatch = None;
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
                if let (Some(n), Some(i)) = (&name, node) {
                    compare = Some((n.clone(), conn_url, i));
                }
                match name {
                    Some(member) => Key::Names {
                        member,
                        server: node,
                    },
                    None => Key::Deleted,
                }
            }
            Event::Unreachable { reason } => {
                f.view.last_event = Some(now);
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
        if let Some((member, url, node)) = compare {
            self.check_address(&member, url.as_deref(), node);
        }
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
