//! The rules of the main loop around the verdict, kept pure: given the time and what
//! happened, they answer with what to do. None does I/O or reads a clock.
//!
//! [`machine::Policy`] is the loop's one decision-maker, in the manner of a protocol state
//! machine that leaves all I/O to its caller: it owns everything the rules remember (what
//! each server answered, the verdict and its memory, the pause, back-off and switch
//! pacing, drift cadence, how the state file stands). The executor (`daemon.rs`) feeds
//! it [`messages::Input`]s with the time (a server's answer, the round and heartbeat
//! timers, a closed connection, the result of a switch, a pause or a state-file write, a
//! reload, SIGTERM) and performs the [`messages::Command`]s it answers with (check these
//! servers, switch, pause, end a hold, write the timelines, publish, log), feeding each
//! result back as the next input. A step that needs an answer before the rules can go on
//! is a command whose answer the policy waits for; so a whole failover, from the answers
//! of a round to the confirmed switch, is a unit test of plain values
//! (`machine/tests.rs`). A source of evidence beside the servers' answers (Patroni's leader
//! key in etcd) is one `Input` variant and its rules here (`machine/leader.rs`,
//! [`leader`]); the executor only plumbs it in.
//!
//! [`crate::decide`] judges the cluster; the policy wraps it with these rules, each also
//! usable on its own:
//!
//! - [`checks`]: when a server is asked again, and when on a new connection.
//! - [`pacing`]: when a switch may be tried again.
//! - [`pause`]: when clients are held in PgBouncer, and when the hold ends.
//! - [`persist`]: when the state file is written again, and what is said about it.
//! - [`drift`]: when PgBouncer's routes are compared with the active node's file, and
//!   how they differ.
//! - [`reload_plan`]: what a configuration re-read on SIGHUP changes.
//! - [`leader`]: in etcd mode, Patroni's leader key combined with the verdict.
//!
//! Times are `std::time::Instant`s handed in by the caller (on tokio's paused clock in
//! the daemon's tests, so those run in virtual time too).

pub mod checks;
pub mod drift;
pub mod leader;
pub mod machine;
pub mod messages;
pub mod pacing;
pub mod pause;
pub mod persist;
pub mod reload_plan;
