//! The loop over time, on a fake cluster and a fake PgBouncer, on tokio's paused clock:
//! every rule of the loop (rounds, back-off, re-checks, drift, the state file at start)
//! is exercised here without a process; the integration tests cover the real I/O.

mod after_a_kill;
mod pause;
mod reload;
mod routing;
mod simulation;
mod state_file;
mod world;
