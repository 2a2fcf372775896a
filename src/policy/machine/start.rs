//! The start-up, from a new process to its first round. In order:
//!
//! 1. [`Input::Start`]: remove the temporary links a switch cut short left behind, and
//!    find the node whose file the symlink names ([`Command::FindLinked`]).
//! 2. [`Input::Linked`]: that node is believed (to be confirmed by the first switch);
//!    say it, and the timelines the state file remembers. With `pause_on_failover`, the
//!    state file is written once first ([`Command::TryStateFile`]): a pause must be on
//!    disk before it is made, so whether it can be is found out now, not at the first
//!    failover.
//! 3. PgBouncer's admin console is asked ([`Command::PingPgBouncer`]). While it does not
//!    answer it is asked again every [`PGBOUNCER_RETRY`] (PgBouncer may start after
//!    rebouncer), at once after a reload (a fixed `pgbouncer` line), and a shutdown then
//!    ends the process without a round.
//! 4. Once it answers: finish what the last run left (a `KILL` or `RESUME` the state
//!    file lists), start following the leader key (etcd mode), check PgBouncer's
//!    settings against `pause_on_failover`, and the first round is due at once.

use std::time::{Duration, Instant};

use super::{HEARTBEAT, Policy};
use crate::decide::{Believed, Memory, NodeId};
use crate::policy::messages::Command;

/// How often PgBouncer's admin console is asked at start-up until it answers.
pub const PGBOUNCER_RETRY: Duration = Duration::from_secs(5);

/// Where the start-up stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Boot {
    /// Not begun: [`Input::Start`](crate::policy::messages::Input::Start) is awaited.
    New,
    /// The node behind the symlink is being found.
    Linking,
    /// The state file is being written once, to learn whether it can be.
    TryingStateFile,
    /// PgBouncer's admin console was asked; its answer is awaited.
    Pinging,
    /// PgBouncer did not answer; it is asked again at this time.
    Waiting(Instant),
    /// Polling.
    Running,
}

impl Policy {
    /// PgBouncer's symlink names `linked`'s file at start: believed, to be confirmed by
    /// the first switch, and (with no timeline remembered) waited for (see `decide`).
    pub fn start(&mut self, linked: Option<NodeId>) {
        self.believed.active = linked;
        self.memory = Memory::at_start(self.memory.timelines.clone(), linked);
    }

    /// Polling begins now: the first round at once, the first heartbeat a beat later.
    pub fn start_polling(&mut self, now: Instant) {
        self.boot = Boot::Running;
        self.next_round = now;
        self.next_heartbeat = now + HEARTBEAT;
    }

    /// Whether the rounds have begun (the round and heartbeat timers run only then).
    pub fn polling(&self) -> bool {
        self.boot == Boot::Running
    }

    /// When [`Input::PingDue`](crate::policy::messages::Input::PingDue) is due, while
    /// PgBouncer is awaited.
    pub fn next_ping(&self) -> Option<Instant> {
        match self.boot {
            Boot::Waiting(at) => Some(at),
            _ => None,
        }
    }

    /// Step 1.
    pub(super) fn begin_start(&mut self, out: &mut Vec<Command>) {
        if self.boot != Boot::New {
            return;
        }
        self.boot = Boot::Linking;
        out.push(Command::RemoveTempLinks);
        out.push(Command::FindLinked);
    }

    /// The symlink names `behind`'s file: at start, step 2; later (a reload removed the
    /// active node), only believed.
    pub(super) fn linked(&mut self, behind: Option<NodeId>, out: &mut Vec<Command>) {
        if self.boot != Boot::Linking {
            self.believed = Believed {
                active: behind,
                confirmed: false,
            };
            return;
        }
        self.start(behind);
        out.push(Command::SayLinked(behind));
        let remembered: Vec<u32> = self.memory.timelines.iter().map(|h| h.timeline).collect();
        if !remembered.is_empty() {
            out.push(Command::SayRemembered(remembered));
        }
        if self.settings.pause_on_failover {
            self.boot = Boot::TryingStateFile;
            out.push(Command::TryStateFile);
        } else {
            self.ask_pgbouncer(out);
        }
    }

    /// The state file's first write ended (its outcome is already said): step 3.
    pub(super) fn state_file_tried(&mut self, out: &mut Vec<Command>) {
        if self.boot == Boot::TryingStateFile {
            self.ask_pgbouncer(out);
        }
    }

    fn ask_pgbouncer(&mut self, out: &mut Vec<Command>) {
        self.boot = Boot::Pinging;
        out.push(Command::Publish);
        out.push(Command::PingPgBouncer);
    }

    /// The retry timer fired.
    pub(super) fn ping_due(&mut self, out: &mut Vec<Command>) {
        if matches!(self.boot, Boot::Waiting(_)) {
            self.boot = Boot::Pinging;
            out.push(Command::PingPgBouncer);
        }
    }

    /// PgBouncer's answer: its version, or why it did not give one. Step 4, or wait.
    pub(super) fn pgbouncer_answered(
        &mut self,
        answer: Result<String, String>,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        if self.boot != Boot::Pinging {
            return;
        }
        match answer {
            Err(error) => {
                self.boot = Boot::Waiting(now + PGBOUNCER_RETRY);
                out.push(Command::PgBouncerSilent {
                    error,
                    retry: PGBOUNCER_RETRY,
                });
            }
            Ok(version) => {
                out.push(Command::PgBouncerAnswers { version });
                out.push(Command::FinishLastRun);
                if self.leader.is_some() {
                    out.push(Command::StartLeader);
                }
                if self.settings.pause_on_failover {
                    out.push(Command::CheckPauseSettings);
                }
                self.start_polling(now);
            }
        }
    }

    /// A reload was applied while PgBouncer is awaited: it is asked again at once, in
    /// case the reload fixed its address.
    pub(super) fn reloaded_while_waiting(&mut self, now: Instant) {
        if matches!(self.boot, Boot::Waiting(_)) {
            self.boot = Boot::Waiting(now);
        }
    }
}
