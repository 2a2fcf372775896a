//! The rules of the main loop around the verdict, kept pure: each is given the time and
//! what happened, and answers with what to do. None does I/O or reads a clock, so each
//! rule is tested on its own with plain values; the daemon (`daemon.rs`) performs what
//! they ask and feeds the results back. [`crate::decide`] judges the cluster; these decide
//! everything around that judgement:
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
pub mod pacing;
pub mod pause;
pub mod persist;
pub mod reload_plan;
