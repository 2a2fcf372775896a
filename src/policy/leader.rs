//! The etcd mode's rule: Patroni's leader key names the candidate, the servers confirm it.
//!
//! In this mode the servers are checked (each on a new connection) when the key changes,
//! at start, and while the candidate is not yet confirmed; [`crate::decide`] judges those
//! answers as in polling mode, and [`follow`] then lets a switch through only to the
//! member the key names. So:
//!
//! - the key alone never moves PgBouncer: its member must answer as a master that is not
//!   stale and not part of a split brain (decide's rules, unchanged);
//! - the servers alone never move it either: a master the key does not name is not
//!   switched to (a PostgreSQL whose Patroni was killed stays writable, and is not the
//!   leader);
//! - no key (Patroni: no primary), a key naming a member with no `[servers]` entry, or etcd
//!   unreachable: nothing is switched, and the status says why.
//!
//! A stale primary beside the leader (a Patroni killed alone: its PostgreSQL stays a
//! writable primary on the old timeline while another member is promoted to a new one)
//! is fenced by decide's stale-primary rule in both modes; the key only adds that the
//! promoted member is the one to follow. Two masters on the same timeline stay a split
//! brain even when the key names one of them: the key says who should be primary, not
//! that the other one takes no writes.
//!
//! News of the key starts a round of every server. After it, while the server the key
//! names still answers as a standby (or not at all), a round asks it alone (a probe,
//! [`Following::round_begins`]): a probe never leads to a verdict, since the other
//! servers' answers are not fresh. Once it answers as a master, every server is asked at
//! once, and that round's verdict decides as above. Rounds of an unconfirmed candidate
//! are timed from the start of the one before ([`Following::next_round_at`]), so a slow
//! check does not slow the pace.
//!
//! Pure: the caller passes what it knows and the times.

use std::time::{Duration, Instant, SystemTime};

use crate::decide::{Action, Cluster, Decision, NodeId, NodeState};
use crate::level::Level;

/// What the leader key says, as last heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// etcd not heard from yet since start.
    NotHeard,
    /// The key names `member`; `server` is its node, None when it maps to no configured
    /// server.
    Names {
        member: String,
        server: Option<NodeId>,
    },
    /// No key: Patroni says there is no primary.
    Deleted,
    /// etcd cannot be heard: what the key says now is unknown.
    Unreachable,
}

/// Why nothing is switched although the key or the servers might suggest it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    NotHeard,
    Unreachable,
    NoLeader,
    /// The key names a member that maps to no `[servers]` entry.
    Unmapped(String),
    /// The key names `candidate`, which the servers' answers do not confirm (not a
    /// master, stale, in a split brain, refused by one of decide's rules).
    NotConfirmed {
        candidate: NodeId,
    },
    /// The servers would switch to `master`, which the key does not name.
    NotTheLeader {
        master: NodeId,
    },
}

/// What the etcd mode does with a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Follow {
    pub action: Action,
    pub held: Option<Held>,
    /// PgBouncer is not yet on the confirmed leader: check the servers again (see
    /// [`recheck_in`]).
    pub recheck: bool,
}

/// Combine the leader key with decide's verdict on the servers' answers.
pub fn follow(key: &Key, decision: &Decision) -> Follow {
    let nothing = |held: Held, recheck: bool| Follow {
        action: Action::Nothing,
        held: Some(held),
        recheck,
    };
    let candidate = match key {
        Key::NotHeard => return nothing(Held::NotHeard, false),
        Key::Unreachable => return nothing(Held::Unreachable, false),
        Key::Deleted => return nothing(Held::NoLeader, false),
        Key::Names {
            member,
            server: None,
        } => {
            return nothing(Held::Unmapped(member.clone()), false);
        }
        Key::Names {
            server: Some(c), ..
        } => *c,
    };
    match (&decision.action, &decision.cluster, &decision.refusal) {
        (Action::Switch(to), _, _) if *to == candidate => Follow {
            action: Action::Switch(candidate),
            held: None,
            recheck: true,
        },
        (Action::Switch(to), _, _) => nothing(Held::NotTheLeader { master: *to }, true),
        // Already there and confirmed.
        (Action::Nothing, Cluster::OneMaster(m), None) if *m == candidate => Follow {
            action: Action::Nothing,
            held: None,
            recheck: false,
        },
        _ => nothing(Held::NotConfirmed { candidate }, true),
    }
}

/// Which servers a round asks (see [`Following::round_begins`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Every server due.
    Every,
    /// The candidate alone: a probe, which decides nothing.
    Only(NodeId),
    /// Every server due but the candidate, which a probe found a master on a new
    /// connection just before: its answer counts with theirs.
    AllBut(NodeId),
}

impl Ask {
    pub fn includes(self, node: NodeId) -> bool {
        match self {
            Ask::Every => true,
            Ask::Only(c) => node == c,
            Ask::AllBut(c) => node != c,
        }
    }
}

/// When to check the servers again while the candidate is unconfirmed, after
/// `rechecks` checks since the key last changed: `fast_interval`, doubling, at most
/// `interval`. The key names a new leader 0.1-0.2 s before it answers as a master (longer
/// on a loaded server), and a fleet of app servers checking it at a fixed fast pace would
/// bury the new primary under new connections just as it starts.
pub fn recheck_in(rechecks: u32, fast_interval: Duration, interval: Duration) -> Duration {
    fast_interval
        .saturating_mul(1u32 << rechecks.min(20))
        .min(interval)
}

/// When the servers are checked next, if at all (None: when the key changes). An
/// unconfirmed candidate is checked as [`recheck_in`] says; a server that is down (or not
/// checked yet) every `interval`, so the pages see it come back (a restarted replica, an
/// old primary rejoining) without waiting for the next leader change. A healthy cluster
/// with PgBouncer on the leader costs no connection at all.
pub fn next_round(
    recheck: bool,
    rechecks: u32,
    some_server_down: bool,
    fast_interval: Duration,
    interval: Duration,
) -> Option<Duration> {
    if recheck {
        Some(recheck_in(rechecks, fast_interval, interval))
    } else if some_server_down {
        Some(interval)
    } else {
        None
    }
}

/// With the key settled and PgBouncer on its leader no round is due: the next change of
/// the key starts one. This only keeps the round timer finite.
pub const IDLE: Duration = Duration::from_secs(86_400);

/// What the [`Policy`](super::machine::Policy) remembers of the leader key in etcd mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Following {
    /// What the key says now, as the rule sees it.
    pub key: Key,
    /// The member the key last named (None: deleted), once heard; kept while etcd is
    /// away, so that the same leader reported again after an outage is no change.
    last: Option<Option<String>>,
    /// Checks of an unconfirmed candidate since the key last changed (they back off).
    pub rechecks: u32,
    /// The servers are to be checked again (see [`recheck_in`]).
    pub recheck: bool,
    /// Why nothing is switched, as last said.
    pub held: Option<Held>,
    /// The rule's answer on the verdict of the pass under way, kept when the pass keeps
    /// its verdict.
    pending: Option<Follow>,
    /// The round under way asks only this server, the candidate (see
    /// [`Following::round_begins`]).
    probing: Option<NodeId>,
    /// When the last round began: rechecks are timed from there.
    began: Option<Instant>,
    /// The next round is due as soon as the one under way is over: a probe found the
    /// candidate a master, or the key changed during a probe.
    due_now: bool,
    /// News of the key came since the last round began: the next one asks every server.
    full_next: bool,
    /// The last probe found this candidate a master: the next round asks the others.
    probed_master: Option<NodeId>,
}

impl Default for Following {
    fn default() -> Self {
        Following {
            key: Key::NotHeard,
            last: None,
            rechecks: 0,
            recheck: false,
            held: None,
            pending: None,
            probing: None,
            began: None,
            due_now: false,
            full_next: false,
            probed_master: None,
        }
    }
}

impl Following {
    /// The watch says `key` (never [`Key::NotHeard`]). A change of the member named
    /// starts the back-off of the rechecks again.
    pub fn heard(&mut self, key: Key) {
        let named = match &key {
            Key::Names { member, .. } => Some(member.clone()),
            Key::Deleted => None,
            Key::Unreachable => {
                self.key = key;
                self.full_next = true;
                return;
            }
            Key::NotHeard => return,
        };
        if self.last.as_ref() != Some(&named) {
            self.rechecks = 0;
        }
        self.last = Some(named);
        self.key = key;
        self.full_next = true;
        // A probe under way asks about the member named before: the next round follows it
        // at once.
        if self.probing.is_some() {
            self.due_now = true;
        }
    }

    /// A round begins at `now`; `candidate_state` is what the server the key names
    /// answered last. The servers it asks: every server at the first round after news of
    /// the key (so the pages and the verdict see them all when the leader changes, and
    /// when etcd comes back); after that, the candidate alone while it answers as a
    /// standby or not at all, the key names it and it is still checked faster than every
    /// `interval`; right after a probe found it a master, every other server (that
    /// probe's answer, on a new connection, is as fresh as theirs); else every server. Only a master can be switched to, so
    /// until the candidate is one the other servers' answers change nothing; once it is,
    /// every server is asked (the split-brain and stale-primary rules need them all) and
    /// that round's verdict decides. A fleet following the key thus costs the servers not
    /// named no connection while a promotion is awaited.
    pub fn round_begins(
        &mut self,
        now: Instant,
        candidate_state: Option<NodeState>,
        fast_interval: Duration,
        interval: Duration,
    ) -> Ask {
        self.began = Some(now);
        self.due_now = false;
        let full = std::mem::take(&mut self.full_next);
        let found = std::mem::take(&mut self.probed_master);
        let fast = recheck_in(self.rechecks.saturating_sub(1), fast_interval, interval) < interval;
        // A candidate not heard yet (at start) is asked with everyone: the pages need
        // every server's state anyway.
        let awaited = matches!(candidate_state, Some(NodeState::Standby | NodeState::Down));
        self.probing = self.candidate().filter(|_| !full && fast && awaited);
        match (self.probing, found) {
            (Some(c), _) => Ask::Only(c),
            (None, Some(c))
                if !full
                    && self.candidate() == Some(c)
                    && candidate_state == Some(NodeState::Master) =>
            {
                Ask::AllBut(c)
            }
            _ => Ask::Every,
        }
    }

    /// The round under way asks only the candidate.
    pub fn probing(&self) -> Option<NodeId> {
        self.probing
    }

    /// The probe under way is over and its candidate answered `state` (None: no answer).
    /// No verdict follows a probe. A master: the other servers are asked at once. Anything else:
    /// the back-off goes on, and why nothing is switched is said (`Some` when that changed,
    /// as from [`Following::kept`]).
    pub fn probe_over(&mut self, state: Option<NodeState>) -> Option<Option<Held>> {
        let candidate = self.probing.take()?;
        if self.due_now {
            // The key changed meanwhile: this answer is about a member no longer named.
            return None;
        }
        if state == Some(NodeState::Master) {
            self.due_now = true;
            self.probed_master = Some(candidate);
            return None;
        }
        self.recheck = true;
        self.rechecks = self.rechecks.saturating_add(1);
        let held = Some(Held::NotConfirmed { candidate });
        if self.held == held {
            return None;
        }
        self.held = held.clone();
        Some(held)
    }

    /// The rule on a verdict of decide: the action to take, and the rest kept for
    /// [`Following::kept`].
    pub fn judge(&mut self, decision: &Decision) -> Action {
        let f = follow(&self.key, decision);
        let action = f.action.clone();
        self.pending = Some(f);
        action
    }

    /// The verdict last judged is the pass's: remember what it asks. `Some` when why
    /// nothing is switched changed (None inside: the key and the servers agree again).
    pub fn kept(&mut self) -> Option<Option<Held>> {
        let f = self.pending.take()?;
        self.recheck = f.recheck;
        if f.recheck {
            self.rechecks = self.rechecks.saturating_add(1);
        }
        if self.held == f.held {
            return None;
        }
        self.held = f.held.clone();
        Some(f.held)
    }

    /// The server the key names, if it maps to one.
    pub fn candidate(&self) -> Option<NodeId> {
        match self.key {
            Key::Names { server, .. } => server,
            _ => None,
        }
    }

    /// Node ids moved by a reload: a server removed maps the member to none.
    pub fn remap(&mut self, remap: impl Fn(NodeId) -> Option<NodeId>) {
        if let Key::Names { server, .. } = &mut self.key {
            *server = server.and_then(&remap);
        }
        self.pending = None;
    }

    /// How long until the next round: none is due (see [`IDLE`]) unless the leader is
    /// still to be confirmed or a server is down. `on_leader`: PgBouncer is confirmed on
    /// the candidate, which answered as master (a switch PgBouncer confirmed needs no
    /// confirming round).
    pub fn round_pause(
        &self,
        on_leader: bool,
        some_server_down: bool,
        fast_interval: Duration,
        interval: Duration,
    ) -> Duration {
        next_round(
            self.recheck && !on_leader,
            self.rechecks.saturating_sub(1),
            some_server_down,
            fast_interval,
            interval,
        )
        .unwrap_or(IDLE)
    }

    /// When the next round is due, a round having ended at `now` (see
    /// [`Following::round_pause`] for the arguments): [`Following::round_pause`] after the
    /// start of the round that ended, not after its end, so the time a check takes (longer
    /// under a fleet's burst of new connections) does not add to the pace; at once when a
    /// probe found the candidate a master, or the key changed during a probe.
    pub fn next_round_at(
        &self,
        now: Instant,
        on_leader: bool,
        some_server_down: bool,
        fast_interval: Duration,
        interval: Duration,
    ) -> Instant {
        if self.due_now {
            return now;
        }
        let pause = self.round_pause(on_leader, some_server_down, fast_interval, interval);
        let began = self.began.map_or(now, |b| b.min(now));
        (began + pause).max(now)
    }
}

/// What the status pages show of the etcd mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderView {
    /// `<namespace>/<scope>/leader`.
    pub key: String,
    /// The member the key names as last heard (None: no key, or not heard yet).
    pub leader: Option<String>,
    /// The server it maps to, if any.
    pub server: Option<String>,
    /// The key was heard at least once (so `leader: None` means deleted).
    pub heard: bool,
    pub revision: Option<i64>,
    /// When the key last changed as seen by rebouncer.
    pub changed: Option<SystemTime>,
    /// Since when etcd cannot be heard, and why; None while the watch is in place.
    pub unreachable: Option<(SystemTime, String)>,
    /// Why nothing is switched, in words, when something is held.
    pub held: Option<String>,
    /// Nothing is switched for a reason an operator must act on or wait out.
    pub held_level: Option<Level>,
    /// The etcd endpoints the watch tries, in turn.
    pub endpoints: Vec<String>,
    /// The one the watch is in place on; None while it is on none.
    pub endpoint: Option<String>,
    /// When the watch last reported anything (the key, or etcd lost).
    pub last_event: Option<SystemTime>,
    /// The last time etcd could not be heard, and why; kept after it answers again.
    pub last_error: Option<(SystemTime, String)>,
    /// How many times the watch was lost since start (each followed by reconnections).
    pub watch_lost: u64,
    /// The leader's member record advertises another address than its server's
    /// connection string (see [`address_mismatch`]): the words for it.
    pub address_mismatch: Option<String>,
}

impl LeaderView {
    /// The watch is in place: the key was heard and etcd has not been lost since.
    pub fn connected(&self) -> bool {
        self.heard && self.unreachable.is_none()
    }
}

/// "Patroni's leader key names pg2 (revision 41, 3 s ago)", or what stands in for it.
pub fn describe(v: &LeaderView, now: SystemTime) -> String {
    let ago = |t: Option<SystemTime>| {
        t.map(|t| {
            format!(
                ", {} s ago",
                now.duration_since(t).unwrap_or_default().as_secs()
            )
        })
        .unwrap_or_default()
    };
    let rev = v
        .revision
        .map(|r| format!("revision {r}"))
        .unwrap_or_default();
    let known = match (&v.leader, v.heard) {
        (_, false) => "not heard from etcd yet".to_string(),
        (Some(l), true) => {
            let server = match &v.server {
                Some(s) if s != l => format!(" (server {s})"),
                Some(_) => String::new(),
                None => " (no server in [servers])".to_string(),
            };
            format!("names {l}{server} ({rev}{})", ago(v.changed))
        }
        (None, true) => format!(
            "absent: Patroni reports no leader ({rev}{})",
            ago(v.changed)
        ),
    };
    let mut s = format!("Patroni's leader key {}: {known}", v.key);
    if let Some((since, why)) = &v.unreachable {
        s.push_str(&format!(
            "; etcd unreachable for {} s ({why}), this is the last known state",
            now.duration_since(*since).unwrap_or_default().as_secs()
        ));
    }
    s
}

/// Where a Patroni member says its PostgreSQL listens: host and port of `conn_url`
/// (`postgres://[user[:password]@]host[:port][/db][?options]`, port 5432 when left out).
/// None when it is not such a URL.
pub fn conn_url_address(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 5432,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// One place a connection string or a `conn_url` points at: the name as written, the
/// addresses it resolved to (empty when it was not resolved), the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub resolved: Vec<std::net::IpAddr>,
    pub port: u16,
}

impl Address {
    fn same_place(&self, other: &Address) -> bool {
        if self.port != other.port {
            return false;
        }
        let names = |a: &Address| {
            let mut v: Vec<String> = a.resolved.iter().map(|ip| ip.to_string()).collect();
            v.push(a.host.to_ascii_lowercase());
            v
        };
        let mine = names(self);
        names(other).iter().any(|n| mine.contains(n))
    }
}

/// The leader's member record says its PostgreSQL listens at `advertised`, and rebouncer
/// reaches its `[servers]` entry `server` at `configured` (one per host of the connection
/// string): when no host of the server is the advertised one on the same port (by name or
/// by a resolved address), the words for it. A mismatch means `etcd_members` (or the
/// server's connection string) is wrong, and rebouncer could route PgBouncer to another
/// server than the one Patroni promoted. `configured` empty (a Unix socket): nothing to
/// compare, no mismatch.
pub fn address_mismatch(
    member: &str,
    advertised: &Address,
    server: &str,
    configured: &[Address],
) -> Option<String> {
    if configured.is_empty() || configured.iter().any(|c| c.same_place(advertised)) {
        return None;
    }
    let at = |a: &Address| {
        if a.host.contains(':') {
            format!("[{}]:{}", a.host, a.port)
        } else {
            format!("{}:{}", a.host, a.port)
        }
    };
    let ours: Vec<String> = configured.iter().map(at).collect();
    Some(format!(
        "Patroni member {member} advertises {} (conn_url in its member record), but its server {server} in [servers] \
         connects to {}: check etcd_members and {server}'s connection string, or rebouncer may route PgBouncer to the \
         wrong server",
        at(advertised),
        ours.join(", ")
    ))
}

/// The words for a [`Held`], and how serious it is, given how the servers look:
/// `pointed` is the node PgBouncer points at, `names` the servers' names.
pub fn held_text(held: &Held, pointed: &str, names: &[String]) -> (Level, String) {
    let name = |id: &NodeId| names.get(*id).map_or("?", String::as_str).to_string();
    match held {
        Held::NotHeard => (
            Level::Warning,
            format!(
                "waiting for etcd's leader key; nothing is switched until it is heard; PgBouncer left pointing at {pointed}"
            ),
        ),
        Held::Unreachable => (
            Level::Warning,
            format!(
                "etcd unreachable: nothing is switched until it is back; PgBouncer left pointing at {pointed}"
            ),
        ),
        Held::NoLeader => (
            Level::Critical,
            format!(
                "Patroni reports no leader (its leader key is absent): nothing switched; PgBouncer left pointing at {pointed}"
            ),
        ),
        Held::Unmapped(m) => (
            Level::Critical,
            format!(
                "Patroni's leader key names member {m}, which is no server in [servers]: nothing switched; \
                 map it with etcd_members = {m}:<server name>; PgBouncer left pointing at {pointed}"
            ),
        ),
        Held::NotConfirmed { candidate } => (
            Level::Warning,
            format!(
                "the server of Patroni's leader, {}, does not answer as a usable master yet: nothing switched; \
                 PgBouncer left pointing at {pointed}",
                name(candidate)
            ),
        ),
        Held::NotTheLeader { master } => (
            Level::Warning,
            format!(
                "{} answers as master but Patroni's leader key does not name it: not switched to; PgBouncer left pointing at {pointed}",
                name(master)
            ),
        ),
    }
}

/// `/nagios` in etcd mode: the servers' verdict (`base`) with what the key adds. etcd
/// unreachable is a WARNING while `routed` (PgBouncer is confirmed on the server that
/// answered as the one master when last checked), CRITICAL otherwise.
pub fn nagios(
    v: &LeaderView,
    base: (Level, String),
    routed: bool,
    now: SystemTime,
) -> (Level, String) {
    let (level, text) = base;
    // A wrong map is worth saying whatever else is.
    let (level, text) = match &v.address_mismatch {
        Some(m) => (worse(level, Level::Warning), format!("{m}; {text}")),
        None => (level, text),
    };
    if let Some((since, why)) = &v.unreachable {
        let last = v.leader.as_deref().unwrap_or("none");
        let level = if routed {
            worse(level, Level::Warning)
        } else {
            Level::Critical
        };
        return (
            level,
            format!(
                "etcd unreachable for {} s ({why}): nothing is switched until it is back; last known leader {last}; {text}",
                now.duration_since(*since).unwrap_or_default().as_secs()
            ),
        );
    }
    match (&v.held, v.held_level) {
        (Some(h), Some(l)) if level == Level::Ok || l == Level::Critical => {
            (worse(level, l), format!("{h}; {text}"))
        }
        _ => (level, text),
    }
}

fn worse(a: Level, b: Level) -> Level {
    let rank = |l: Level| match l {
        Level::Ok => 0,
        Level::Warning => 1,
        Level::Unknown => 2,
        Level::Critical => 3,
    };
    if rank(b) > rank(a) { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Believed, Memory, NodeState, Seen, decide};
    use NodeState::{Down, Master, Standby};

    fn on(states: &[(NodeState, u32)]) -> Vec<Seen> {
        states.iter().map(|(s, t)| Seen::on(*s, *t)).collect()
    }

    fn at(active: usize) -> Believed {
        Believed {
            active: Some(active),
            confirmed: true,
        }
    }

    fn names(n: usize) -> Key {
        Key::Names {
            member: format!("pg{}", n + 1),
            server: Some(n),
        }
    }

    fn follow_on(key: &Key, believed: Believed, states: &[(NodeState, u32)]) -> Follow {
        let mut memory = Memory::default();
        memory.timelines.raise(None, 1);
        follow(key, &decide(believed, &on(states), &memory))
    }

    #[test]
    fn the_leader_confirmed_as_master_is_switched_to() {
        let f = follow_on(&names(1), at(0), &[(Down, 1), (Master, 2), (Standby, 2)]);
        assert_eq!(f.action, Action::Switch(1));
        assert_eq!(f.held, None);
        assert!(f.recheck);
    }

    #[test]
    fn once_pgbouncer_is_on_the_leader_nothing_more_is_checked() {
        let f = follow_on(&names(1), at(1), &[(Standby, 2), (Master, 2), (Standby, 2)]);
        assert_eq!(f.action, Action::Nothing);
        assert_eq!(f.held, None);
        assert!(!f.recheck);
    }

    #[test]
    fn a_leader_still_in_recovery_is_not_switched_to_and_checked_again() {
        // The key leads promotion: the old primary is stopping, the new one not promoted.
        let f = follow_on(&names(1), at(0), &[(Down, 1), (Standby, 1), (Standby, 1)]);
        assert_eq!(f.action, Action::Nothing);
        assert_eq!(f.held, Some(Held::NotConfirmed { candidate: 1 }));
        assert!(f.recheck);
        // The old primary still answers as master (switchover under way): PgBouncer stays.
        let f = follow_on(&names(1), at(0), &[(Master, 1), (Standby, 1), (Standby, 1)]);
        assert_eq!(f.action, Action::Nothing);
        assert_eq!(f.held, Some(Held::NotConfirmed { candidate: 1 }));
    }

    #[test]
    fn a_master_the_key_does_not_name_is_not_switched_to() {
        let f = follow_on(&names(2), at(0), &[(Down, 1), (Master, 2), (Standby, 2)]);
        assert_eq!(f.action, Action::Nothing);
        assert_eq!(f.held, Some(Held::NotTheLeader { master: 1 }));
        assert!(f.recheck);
    }

    #[test]
    fn no_key_unmapped_member_or_etcd_away_switch_nothing() {
        let states = [(Down, 1), (Master, 2), (Standby, 2)];
        for (key, held) in [
            (Key::Deleted, Held::NoLeader),
            (Key::Unreachable, Held::Unreachable),
            (Key::NotHeard, Held::NotHeard),
            (
                Key::Names {
                    member: "pg9".into(),
                    server: None,
                },
                Held::Unmapped("pg9".into()),
            ),
        ] {
            let f = follow_on(&key, at(0), &states);
            assert_eq!(f.action, Action::Nothing, "{key:?}");
            assert_eq!(f.held, Some(held), "{key:?}");
            assert!(!f.recheck, "{key:?}: waits for the key, not the servers");
        }
    }

    #[test]
    fn a_stale_primary_beside_the_leader_is_fenced_and_the_leader_followed() {
        // Patroni killed alone on pg1: its PostgreSQL stays master on timeline 1, pg2 was
        // promoted to timeline 2 and holds the key.
        let f = follow_on(&names(1), at(0), &[(Master, 1), (Master, 2), (Standby, 2)]);
        assert_eq!(f.action, Action::Switch(1));
        // The key naming the stale one does not make it a target.
        let f = follow_on(&names(0), at(1), &[(Master, 1), (Master, 2), (Standby, 2)]);
        assert_eq!(f.action, Action::Nothing);
        assert_eq!(f.held, Some(Held::NotConfirmed { candidate: 0 }));
    }

    #[test]
    fn a_split_brain_stays_refused_when_the_key_names_one_of_its_masters() {
        let f = follow_on(&names(1), at(0), &[(Master, 2), (Master, 2), (Standby, 2)]);
        assert_eq!(f.action, Action::Nothing);
        assert_eq!(f.held, Some(Held::NotConfirmed { candidate: 1 }));
    }

    #[test]
    fn rechecks_start_fast_and_back_off_to_the_interval() {
        let (fast, slow) = (Duration::from_millis(100), Duration::from_secs(30));
        assert_eq!(recheck_in(0, fast, slow), fast);
        assert_eq!(recheck_in(1, fast, slow), Duration::from_millis(200));
        assert_eq!(recheck_in(3, fast, slow), Duration::from_millis(800));
        assert_eq!(recheck_in(9, fast, slow), slow);
        assert_eq!(recheck_in(u32::MAX, fast, slow), slow);
    }

    #[test]
    fn a_settled_cluster_is_not_checked_a_server_down_is_every_interval() {
        let (fast, slow) = (Duration::from_millis(100), Duration::from_secs(30));
        assert_eq!(next_round(false, 0, false, fast, slow), None);
        assert_eq!(next_round(false, 0, true, fast, slow), Some(slow));
        assert_eq!(next_round(true, 0, true, fast, slow), Some(fast));
        assert_eq!(next_round(true, 12, false, fast, slow), Some(slow));
    }

    fn view() -> LeaderView {
        LeaderView {
            key: "/service/main/leader".into(),
            leader: Some("pg2".into()),
            server: Some("pg2".into()),
            heard: true,
            revision: Some(41),
            changed: Some(SystemTime::UNIX_EPOCH),
            ..LeaderView::default()
        }
    }

    #[test]
    fn the_pages_keep_the_last_known_leader_and_its_age_while_etcd_is_away() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(70);
        let mut v = view();
        assert_eq!(
            describe(&v, now),
            "Patroni's leader key /service/main/leader: names pg2 (revision 41, 70 s ago)"
        );
        v.unreachable = Some((
            SystemTime::UNIX_EPOCH + Duration::from_secs(60),
            "connection refused".into(),
        ));
        assert_eq!(
            describe(&v, now),
            "Patroni's leader key /service/main/leader: names pg2 (revision 41, 70 s ago); \
             etcd unreachable for 10 s (connection refused), this is the last known state"
        );
        v.leader = None;
        v.unreachable = None;
        assert!(describe(&v, now).contains("absent: Patroni reports no leader"));
        v.heard = false;
        assert!(describe(&v, now).ends_with("not heard from etcd yet"));
    }

    #[test]
    fn nagios_etcd_away_is_a_warning_while_the_master_answers_critical_otherwise() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(70);
        let mut v = view();
        v.unreachable = Some((
            SystemTime::UNIX_EPOCH + Duration::from_secs(65),
            "timed out".into(),
        ));
        let (l, t) = nagios(&v, (Level::Ok, "1 master (pg2)".into()), true, now);
        assert_eq!(l, Level::Warning);
        assert_eq!(
            t,
            "etcd unreachable for 5 s (timed out): nothing is switched until it is back; last known leader pg2; 1 master (pg2)"
        );
        let (l, _) = nagios(&v, (Level::Warning, "1 server down".into()), true, now);
        assert_eq!(l, Level::Warning);
        let (l, _) = nagios(&v, (Level::Critical, "no master".into()), false, now);
        assert_eq!(l, Level::Critical);
        let (l, _) = nagios(
            &v,
            (Level::Warning, "switch not yet confirmed".into()),
            false,
            now,
        );
        assert_eq!(l, Level::Critical);
    }

    #[test]
    fn nagios_says_why_nothing_was_switched() {
        let now = SystemTime::UNIX_EPOCH;
        let names = vec!["pg1".to_string(), "pg2".to_string()];
        let mut v = view();
        let (level, text) = held_text(&Held::NoLeader, "pg1", &names);
        v.held = Some(text);
        v.held_level = Some(level);
        let (l, t) = nagios(&v, (Level::Critical, "no master".into()), false, now);
        assert_eq!(l, Level::Critical);
        assert!(t.starts_with("Patroni reports no leader"), "{t}");
        // A lesser reason does not hide the servers' own CRITICAL text.
        let (level, text) = held_text(&Held::NotConfirmed { candidate: 1 }, "pg1", &names);
        v.held = Some(text);
        v.held_level = Some(level);
        let (l, t) = nagios(&v, (Level::Ok, "1 master (pg1)".into()), true, now);
        assert_eq!(l, Level::Warning);
        assert!(
            t.starts_with("the server of Patroni's leader, pg2, does not answer"),
            "{t}"
        );
        let (l, t) = nagios(&v, (Level::Critical, "split brain".into()), false, now);
        assert_eq!((l, t.as_str()), (Level::Critical, "split brain"));
        v.held = None;
        v.held_level = None;
        assert_eq!(
            nagios(&v, (Level::Ok, "fine".into()), true, now),
            (Level::Ok, "fine".into())
        );
    }

    /// The rule's answer on a leader still in recovery, kept as the pass's.
    fn unconfirmed_pass(f: &mut Following) {
        let mut memory = Memory::default();
        memory.timelines.raise(None, 1);
        let states = on(&[(Down, 1), (Standby, 1), (Standby, 1)]);
        f.judge(&decide(at(0), &states, &memory));
        f.kept();
    }

    #[test]
    fn a_new_leader_restarts_the_back_off_the_same_one_heard_again_after_an_outage_does_not() {
        let (fast, slow) = (Duration::from_millis(100), Duration::from_secs(30));
        let pause = |f: &Following| f.round_pause(false, false, fast, slow);
        let mut f = Following::default();
        f.heard(names(1));
        for _ in 0..3 {
            unconfirmed_pass(&mut f);
        }
        assert_eq!(pause(&f), Duration::from_millis(400));
        // etcd away and back, naming the same member: the back-off goes on.
        f.heard(Key::Unreachable);
        f.heard(names(1));
        unconfirmed_pass(&mut f);
        assert_eq!(pause(&f), Duration::from_millis(800));
        // Another member named: checked fast again.
        f.heard(names(2));
        unconfirmed_pass(&mut f);
        assert_eq!(pause(&f), fast);
    }

    #[test]
    fn after_the_round_of_every_server_only_a_candidate_in_recovery_or_down_is_probed() {
        let (fast, slow) = (Duration::from_millis(100), Duration::from_secs(30));
        let t = Instant::now();
        let mut f = Following::default();
        f.heard(names(1));
        assert_eq!(
            f.round_begins(t, Some(Standby), fast, slow),
            Ask::Every,
            "key news"
        );
        unconfirmed_pass(&mut f);
        assert_eq!(f.round_begins(t, Some(Standby), fast, slow), Ask::Only(1));
        assert_eq!(f.probing(), Some(1));
        assert_eq!(
            f.probe_over(Some(Standby)),
            None,
            "NotConfirmed said already"
        );
        assert_eq!(f.round_begins(t, Some(Down), fast, slow), Ask::Only(1));
        assert_eq!(f.probe_over(Some(Down)), None);
        // A master, or a candidate not heard yet: every server.
        assert_eq!(f.round_begins(t, Some(Master), fast, slow), Ask::Every);
        assert_eq!(f.probe_over(Some(Master)), None, "no probe under way");
        assert_eq!(f.round_begins(t, None, fast, slow), Ask::Every);
        // etcd away and back: every server again.
        f.heard(Key::Unreachable);
        f.heard(names(1));
        assert_eq!(f.round_begins(t, Some(Standby), fast, slow), Ask::Every);
        // No candidate: nothing to probe.
        f.heard(Key::Deleted);
        f.round_begins(t, Some(Standby), fast, slow);
        assert_eq!(f.round_begins(t, Some(Standby), fast, slow), Ask::Every);
    }

    #[test]
    fn a_probe_finding_a_master_makes_the_next_round_due_at_once_else_it_backs_off_from_its_start()
    {
        let (fast, slow) = (Duration::from_millis(100), Duration::from_secs(30));
        let t = Instant::now();
        let mut f = Following::default();
        f.heard(names(1));
        f.round_begins(t, Some(Standby), fast, slow);
        unconfirmed_pass(&mut f);
        let end = t + Duration::from_millis(60);
        assert_eq!(
            f.next_round_at(end, false, false, fast, slow),
            t + fast,
            "from the start"
        );
        let p = t + fast;
        assert_eq!(f.round_begins(p, Some(Standby), fast, slow), Ask::Only(1));
        assert_eq!(f.probe_over(Some(Standby)), None);
        let end = p + Duration::from_millis(30);
        assert_eq!(
            f.next_round_at(end, false, false, fast, slow),
            p + Duration::from_millis(200)
        );
        let p = p + Duration::from_millis(200);
        assert_eq!(f.round_begins(p, Some(Standby), fast, slow), Ask::Only(1));
        // A probe slower than the pause: at once.
        let end = p + Duration::from_secs(1);
        f.probe_over(Some(Standby));
        assert_eq!(f.next_round_at(end, false, false, fast, slow), end);
        assert_eq!(f.round_begins(end, Some(Standby), fast, slow), Ask::Only(1));
        assert_eq!(f.probe_over(Some(Master)), None);
        let end = end + Duration::from_millis(10);
        assert_eq!(f.next_round_at(end, false, false, fast, slow), end);
        // The others, with the probe's answer: and after that round, every server.
        assert_eq!(
            f.round_begins(end, Some(Master), fast, slow),
            Ask::AllBut(1)
        );
        assert_eq!(f.round_begins(end, Some(Master), fast, slow), Ask::Every);
        // A probe finding a master, then news of the key: every server.
        f.heard(names(2));
        f.round_begins(end, Some(Standby), fast, slow);
        unconfirmed_pass(&mut f);
        assert_eq!(f.round_begins(end, Some(Standby), fast, slow), Ask::Only(2));
        f.probe_over(Some(Master));
        f.heard(Key::Unreachable);
        f.heard(names(2));
        assert_eq!(f.round_begins(end, Some(Master), fast, slow), Ask::Every);
    }

    #[test]
    fn a_probe_of_a_candidate_not_yet_said_held_says_it() {
        let (fast, slow) = (Duration::from_millis(100), Duration::from_secs(30));
        let t = Instant::now();
        let mut f = Following::default();
        f.heard(names(1));
        f.round_begins(t, Some(Standby), fast, slow);
        unconfirmed_pass(&mut f);
        // The key moves on to node 2, and the round of every server after it leaves no
        // verdict (the pass was dropped): the probe of node 2 says it is not confirmed.
        f.heard(names(2));
        f.round_begins(t, Some(Standby), fast, slow);
        assert_eq!(f.round_begins(t, Some(Standby), fast, slow), Ask::Only(2));
        assert_eq!(
            f.probe_over(Some(Standby)),
            Some(Some(Held::NotConfirmed { candidate: 2 }))
        );
        assert_eq!(f.held, Some(Held::NotConfirmed { candidate: 2 }));
    }

    #[test]
    fn a_reload_moves_the_leaders_server_and_drops_the_verdict_judged_on_the_old_ids() {
        let mut f = Following::default();
        f.heard(names(2));
        let mut memory = Memory::default();
        memory.timelines.raise(None, 1);
        let states = on(&[(Down, 1), (Standby, 1), (Master, 1)]);
        assert_eq!(f.judge(&decide(at(0), &states, &memory)), Action::Switch(2));
        // The first server removed: the others move up one place.
        f.remap(|id| id.checked_sub(1));
        assert_eq!(f.candidate(), Some(1));
        assert_eq!(f.kept(), None, "that verdict named the old ids");
        // The leader's server removed: its member maps to none.
        f.remap(|id| Some(id).filter(|&id| id != 1));
        assert_eq!(f.candidate(), None);
        assert_eq!(
            f.key,
            Key::Names {
                member: "pg3".into(),
                server: None
            }
        );
    }

    #[test]
    fn the_pages_name_the_server_of_a_member_only_where_the_names_differ() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(70);
        let mut v = view();
        v.leader = Some("patroni-b".into());
        v.server = Some("pg2".into());
        assert_eq!(
            describe(&v, now),
            "Patroni's leader key /service/main/leader: names patroni-b (server pg2) (revision 41, 70 s ago)"
        );
        v.server = None;
        assert_eq!(
            describe(&v, now),
            "Patroni's leader key /service/main/leader: names patroni-b (no server in [servers]) (revision 41, 70 s ago)"
        );
    }
}

/// The leader's advertised address against its server's (separate from the rule's tests).
#[cfg(test)]
mod address_tests {
    use super::*;
    use std::net::IpAddr;

    fn addr(host: &str, resolved: &[&str], port: u16) -> Address {
        Address {
            host: host.into(),
            resolved: resolved
                .iter()
                .map(|r| r.parse::<IpAddr>().unwrap())
                .collect(),
            port,
        }
    }

    #[test]
    fn conn_urls_as_patroni_writes_them() {
        let a = |u: &str| conn_url_address(u);
        assert_eq!(
            a("postgres://10.0.0.12:5433/postgres"),
            Some(("10.0.0.12".into(), 5433))
        );
        assert_eq!(
            a("postgresql://db2.example/postgres"),
            Some(("db2.example".into(), 5432))
        );
        assert_eq!(
            a("postgres://u:p@w@[::1]:6000/x?sslmode=require"),
            Some(("::1".into(), 6000))
        );
        assert_eq!(a("postgres://h:5432"), Some(("h".into(), 5432)));
        assert_eq!(a("http://h:5432/"), None);
        assert_eq!(a("postgres://:5432/x"), None);
        assert_eq!(a("postgres://h:port/x"), None);
    }

    #[test]
    fn the_same_place_by_name_or_by_address_is_no_mismatch() {
        let ours = [addr("db2.example", &["10.0.0.12"], 5432)];
        assert_eq!(
            address_mismatch(
                "pg-b",
                &addr("10.0.0.12", &["10.0.0.12"], 5432),
                "db2",
                &ours
            ),
            None
        );
        assert_eq!(
            address_mismatch("pg-b", &addr("DB2.example", &[], 5432), "db2", &ours),
            None
        );
        // One of the hosts of a multi-host connection string is enough.
        let two = [addr("10.0.0.11", &[], 5432), addr("10.0.0.12", &[], 5432)];
        assert_eq!(
            address_mismatch("pg-b", &addr("10.0.0.12", &[], 5432), "db2", &two),
            None
        );
        // A Unix socket cannot be compared.
        assert_eq!(
            address_mismatch("pg-b", &addr("10.0.0.99", &[], 5432), "db2", &[]),
            None
        );
    }

    #[test]
    fn another_host_or_port_is_a_mismatch_naming_both() {
        let ours = [addr("db2.example", &["10.0.0.12"], 5432)];
        let m = address_mismatch(
            "pg-b",
            &addr("10.0.0.13", &["10.0.0.13"], 5432),
            "db2",
            &ours,
        );
        assert_eq!(
            m.as_deref(),
            Some(
                "Patroni member pg-b advertises 10.0.0.13:5432 (conn_url in its member record), but its server db2 \
                 in [servers] connects to db2.example:5432: check etcd_members and db2's connection string, or \
                 rebouncer may route PgBouncer to the wrong server"
            )
        );
        let m = address_mismatch("pg-b", &addr("10.0.0.12", &[], 5433), "db2", &ours).unwrap();
        assert!(
            m.contains("advertises 10.0.0.12:5433") && m.contains("connects to db2.example:5432"),
            "{m}"
        );
        let m = address_mismatch(
            "pg-b",
            &addr("::1", &[], 5432),
            "db2",
            &[addr("::2", &[], 5432)],
        )
        .unwrap();
        assert!(
            m.contains("advertises [::1]:5432") && m.contains("connects to [::2]:5432"),
            "{m}"
        );
    }

    #[test]
    fn nagios_warns_about_a_mismatch_whatever_else_it_says() {
        let now = SystemTime::UNIX_EPOCH;
        let mut v = LeaderView {
            key: "/service/main/leader".into(),
            leader: Some("pg-b".into()),
            heard: true,
            address_mismatch: Some("Patroni member pg-b advertises 10.0.0.13:5432".into()),
            ..LeaderView::default()
        };
        let (l, t) = nagios(&v, (Level::Ok, "1 master (db2)".into()), true, now);
        assert_eq!(l, Level::Warning);
        assert_eq!(
            t,
            "Patroni member pg-b advertises 10.0.0.13:5432; 1 master (db2)"
        );
        let (l, _) = nagios(&v, (Level::Critical, "no master".into()), false, now);
        assert_eq!(l, Level::Critical);
        v.address_mismatch = None;
        assert_eq!(
            nagios(&v, (Level::Ok, "1 master (db2)".into()), true, now).0,
            Level::Ok
        );
    }
}
