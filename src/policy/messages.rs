//! What the [`Policy`](super::machine::Policy) is told ([`Input`]) and what it asks its
//! executor to do ([`Command`]). Both are plain values: a test feeds inputs and reads the
//! commands, the daemon performs the commands and feeds back what came of them.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::counters::SwitchReason;
use crate::decide::{NodeId, NodeState, Refusal, Stale, Timeline, Timelines};
use crate::policy::leader::{Held, Key};
use crate::policy::pause::{HoldEnd, Loss};
use crate::policy::persist::Said;
use crate::throttle::Say;

/// The settings the rules read; taken from the configuration at start and at each reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub keep_connections: bool,
    pub interval: Duration,
    pub fast_interval: Duration,
    pub timeout: Duration,
    pub pause_on_failover: bool,
    pub pause_timeout: Duration,
}

impl Settings {
    pub fn of(cfg: &Config) -> Settings {
        Settings {
            keep_connections: cfg.keep_connections,
            interval: cfg.interval,
            fast_interval: cfg.fast_interval,
            timeout: cfg.timeout,
            pause_on_failover: cfg.pause_on_failover,
            pause_timeout: cfg.pause_timeout,
        }
    }
}

/// A server's answer to a check, as far as the rules care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub state: NodeState,
    pub timeline: Option<Timeline>,
    /// The check timed out (no answer at all), rather than being refused.
    pub hung: bool,
    /// What a check on a new connection found, when one was made.
    pub fresh: Option<Result<(), String>>,
}

/// Clients held in PgBouncer while the active master is gone (`pause_on_failover`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// Paused by rebouncer, listed in the state file's `resume_pending`.
    pub databases: Vec<String>,
    /// The master whose loss started it.
    pub lost: NodeId,
    pub started: Instant,
    /// When it started, as the pages show it.
    pub since: SystemTime,
    /// See [`Paused::held_since`]: the deadline counts from there if earlier.
    pub held_since: Option<Instant>,
    pub deadline: Instant,
}

/// A `PAUSE` that went through: its databases and when it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paused {
    pub databases: Vec<String>,
    pub started: Instant,
    pub since: SystemTime,
    /// Since when clients already waited on a database an earlier pause left paused (a
    /// `RESUME` that failed), which this hold keeps paused (see
    /// [`crate::policy::pause::held_since`]).
    pub held_since: Option<Instant>,
}

/// How a switch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Switched {
    /// PgBouncer confirmed it routes to `to`.
    Done {
        to: NodeId,
        started: Instant,
        /// Clients waiting in a hold when the switch began, if counted.
        waiting: Option<u64>,
        /// The switch worked but the `RESUME` of the held databases did not.
        resume_failed: bool,
    },
    Failed {
        to: NodeId,
        /// Why, as the operator reads it.
        error: String,
        started: Instant,
        /// PgBouncer reloaded but runs a file other than the symlink.
        not_taken: bool,
        /// The node whose file the symlink names now (the link may or may not have moved).
        behind: Option<NodeId>,
    },
}

/// What a comparison of PgBouncer's routes with the active node's file found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routes {
    Same,
    /// How they differ.
    Differ(String),
    /// The comparison could not be made (the executor said why).
    Unknown,
}

/// A lasting state of the cluster that is said when it starts and when it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    NoMaster,
    SplitBrain(Vec<NodeId>),
}

/// A refusal to switch, as it is said: said anew when the node PgBouncer points at, or
/// why the refused master turns new logins away, changes (the line names both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    pub active: Option<NodeId>,
    /// What a new connection to the refused master found ([`Refusal::RefusesNewLogins`]).
    pub refuses_new: Option<String>,
}

/// A switch that failed: said anew when the target or the error changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchError {
    pub to: NodeId,
    pub error: String,
}

/// What to log of the verdict's lasting conditions now: each once when it starts, as a
/// reminder every [`REMINDER_EVERY`](super::machine::REMINDER_EVERY) while it lasts, and
/// once when it ends. Empty when nothing is due.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lasting {
    pub cluster: Vec<Say<Condition>>,
    pub stale: Vec<Say<Vec<NodeId>>>,
    /// The verdict's stale primaries, which a `stale` that starts names one by one.
    pub stale_found: Vec<Stale>,
    pub refusal: Vec<Say<Refused>>,
}

impl Lasting {
    pub fn is_empty(&self) -> bool {
        self.cluster.is_empty() && self.stale.is_empty() && self.refusal.is_empty()
    }
}

/// Where an old node went in a reload: `Kept` and `Restarted` carry what is known of it,
/// `Replaced` (the same name, another server) and `New` start from nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carry {
    Kept(NodeId),
    /// The same server with new monitor settings: its monitor is new, what it was stays.
    Restarted(NodeId),
    Replaced(NodeId),
    New,
}

/// What happened, told to the policy with the time it is told.
///
/// A source of evidence about the cluster beside the servers' answers (Patroni's leader
/// key in etcd) is one variant here, [`Input::Leader`], with its rules in the policy; the
/// executor only plumbs it in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The process starts: the start-up steps begin (see `machine/start.rs`).
    Start,
    /// The answer to [`Command::PingPgBouncer`]: PgBouncer's version, or why its admin
    /// console did not answer.
    PgBouncer(Result<String, String>),
    /// The start-up's retry timer
    /// ([`Policy::next_ping`](super::machine::Policy::next_ping)) fired.
    PingDue,
    /// The round timer ([`Policy::next_round`](super::machine::Policy::next_round)) fired.
    RoundDue,
    /// The heartbeat timer fired.
    HeartbeatDue,
    /// A hold's `pause_timeout` passed.
    HoldDeadline,
    /// A server answered (or its check failed or timed out).
    Answer { node: NodeId, answer: Answer },
    /// A check asked for could not be sent (its monitor is gone).
    NotAsked { node: NodeId },
    /// The checks a [`Command::Check`] waits for have answered, or its deadline passed.
    ChecksOver,
    /// A kept monitoring connection was closed by the server.
    ConnectionClosed { node: NodeId },
    /// Where the symlink points now ([`Command::CheckLink`]), and whether PgBouncer closed
    /// rebouncer's admin session (a restart) since the last look.
    Link {
        behind: Option<NodeId>,
        target: Option<PathBuf>,
        session_closed: bool,
    },
    /// The answer to [`Command::CompareRoutes`].
    Routes(Routes),
    /// The node the symlink names, the answer to [`Command::FindLinked`].
    Linked { behind: Option<NodeId> },
    /// A write of the state file ended: the answer to [`Command::WriteTimelines`] or
    /// [`Command::TryStateFile`].
    Written { error: Option<String> },
    /// The state file was written by another step (a pause, a switch, a resume): only
    /// recorded, said at the next decision.
    StateFile { error: Option<String> },
    /// The answer to [`Command::Pause`]: the hold, or none (the executor said why).
    Paused(Option<Paused>),
    /// The answer to [`Command::Switch`].
    Switched(Switched),
    /// A reload is about to drop these nodes.
    Reloading { removed: Vec<NodeId> },
    /// A reload was applied: where each new node comes from (in the new order), how many
    /// nodes there were, the new settings, whether PgBouncer's console changed, and
    /// whether anything changed at all.
    Reloaded {
        from: Vec<Carry>,
        old_count: usize,
        settings: Settings,
        console_changed: bool,
        changed: bool,
    },
    /// etcd mode: the watch of Patroni's leader key says this (the member mapped to its
    /// server by the executor). Never [`Key::NotHeard`].
    Leader(Key),
    /// rebouncer is asked to stop.
    Shutdown,
}

/// Why a hold ends without a switch, and so how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// A verdict or the clock ended it ([`HoldEnd`]).
    End(HoldEnd),
    /// A switch to this node kept failing until `pause_timeout`.
    NoSwitch(NodeId),
    /// The lost master was removed from the configuration.
    Removed(NodeId),
    Shutdown,
}

/// What the executor is asked to do, in order. Those that say "answer with" wait for that
/// input before the policy goes on.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Remove the temporary links a switch cut short by a stop left beside the symlink.
    RemoveTempLinks,
    /// At start: say which node's file the symlink names (none: no node's).
    SayLinked(Option<NodeId>),
    /// At start: say the timelines the state file remembers (a master below is stale).
    SayRemembered(Vec<u32>),
    /// Write the state file as it stands, to learn whether it can be written; answer with
    /// [`Input::Written`].
    TryStateFile,
    /// Ask PgBouncer's admin console for its version; answer with [`Input::PgBouncer`].
    PingPgBouncer,
    /// PgBouncer's admin console did not answer: say so, and that it is asked again after
    /// `retry`.
    PgBouncerSilent { error: String, retry: Duration },
    /// PgBouncer's admin console answered: say so; polling begins.
    PgBouncerAnswers { version: String },
    /// Finish what the last run left: the `KILL` and `RESUME` the state file lists, and a
    /// `server_login_retry` left at 0.
    FinishLastRun,
    /// etcd mode: start following Patroni's leader key.
    StartLeader,
    /// Say which of PgBouncer's settings defeat `pause_on_failover`.
    CheckPauseSettings,
    /// Ask these servers (on a new connection if `fresh`). With `until`, wait for the
    /// answers of `wait_for` until then, feeding each as it comes, and answer with
    /// [`Input::ChecksOver`]; without, the answers come whenever they do.
    Check {
        nodes: Vec<NodeId>,
        fresh: bool,
        wait_for: Vec<NodeId>,
        until: Option<Instant>,
        /// A round's checks: their figures are the round's.
        round: bool,
    },
    /// Read where the symlink points; answer with [`Input::Link`].
    CheckLink,
    /// Compare PgBouncer's routes with the active node's file; answer with
    /// [`Input::Routes`]. `restarted`: PgBouncer closed the admin session.
    CompareRoutes { node: NodeId, restarted: bool },
    /// PgBouncer is not where rebouncer put it: say so (the symlink now names `behind`'s
    /// file, or `target`, or the routes differ as `routes` says).
    Drifted {
        /// Where rebouncer had put it.
        was: Option<NodeId>,
        behind: Option<NodeId>,
        target: Option<PathBuf>,
        routes: Option<String>,
    },
    /// Read which node's file the symlink names; answer with [`Input::Linked`].
    FindLinked,
    /// Write these timelines to the state file; answer with [`Input::Written`].
    WriteTimelines(Timelines),
    /// Log how the state file stands.
    SayStateFile(Vec<Said>),
    /// Log what is due of the verdict's lasting conditions (no master, split brain, stale
    /// primaries, a refusal to switch): after every verdict, and at a reload that removes
    /// a node one of them names (it ends).
    LogDecision(Lasting),
    /// The active master was lost but pausing cannot be recorded: say that its clients
    /// are not held.
    CannotHold(Loss),
    /// Hold the lost master's clients (record, then `PAUSE`); answer with
    /// [`Input::Paused`].
    Pause { lost: NodeId, why: Loss },
    /// Point PgBouncer at `to` and confirm it; answer with [`Input::Switched`].
    Switch {
        to: NodeId,
        from: Option<NodeId>,
        reason: SwitchReason,
        /// The databases held by the pause under way, if one is.
        held: Option<Vec<String>>,
    },
    /// A switch failed: its first failure ([`Say::Started`]) or a reminder that it still
    /// fails; say it.
    SwitchFailing(Say<SwitchError>),
    /// A switch to `to` worked after switches failed for `lasted`; say it.
    SwitchRecovered { to: NodeId, lasted: Duration },
    /// End this hold without a switch (`RESUME`), and say why.
    EndHold { hold: Hold, release: Release },
    /// A switch to `to` ended this hold: record how it ended.
    HoldSwitched {
        hold: Hold,
        to: NodeId,
        waiting: Option<u64>,
        resume_failed: bool,
    },
    /// `KILL` what the state file lists as kill pending, then `RESUME` what it lists as
    /// resume pending (each only if it lists any).
    FinishPending,
    /// etcd mode: why nothing is switched changed to this (None: the leader key and the
    /// servers agree again); say it.
    LeaderHeld(Option<Held>),
    /// Show the servers, the verdict and the hold as they stand now.
    Publish,
    /// A round ended.
    RoundDone,
    /// The last step of a shutdown: say where PgBouncer stays pointed.
    SayShutdown,
}
