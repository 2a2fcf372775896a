//! What the daemon counts since start (checks, rounds, switches, reloads), kept in the
//! published view and written out by `/metrics`.

use std::time::{Duration, SystemTime};

use crate::switch::SwitchError;

/// Upper bounds of the check duration histogram, in seconds: a healthy check on a kept
/// connection takes well under a millisecond; `timeout` is at least 2 s.
pub const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// One server's checks since start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeCounters {
    pub checks: u64,
    /// Checks that found the server down (refused, timed out, error).
    pub failures: u64,
    /// Per bucket, not cumulative (the +Inf bucket is `checks`).
    pub buckets: [u64; BUCKETS.len()],
    pub seconds: f64,
    pub last_success: Option<SystemTime>,
}

impl NodeCounters {
    pub fn record(&mut self, took: Duration, ok: bool, at: SystemTime) {
        let secs = took.as_secs_f64();
        self.checks += 1;
        self.seconds += secs;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        if ok {
            self.last_success = Some(at);
        } else {
            self.failures += 1;
        }
    }
}

/// Why PgBouncer was pointed at a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchReason {
    /// The symlink pointed at no node's config.
    Initial,
    /// The symlink already pointed at the master; the switch confirmed it (start-up).
    Confirm,
    /// The master changed.
    Failover,
    /// PgBouncer was found elsewhere than where rebouncer had put it.
    Drift,
}

impl SwitchReason {
    pub const ALL: [SwitchReason; 4] = [
        SwitchReason::Initial,
        SwitchReason::Confirm,
        SwitchReason::Failover,
        SwitchReason::Drift,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SwitchReason::Initial => "initial",
            SwitchReason::Confirm => "confirm",
            SwitchReason::Failover => "failover",
            SwitchReason::Drift => "drift",
        }
    }
}

/// Where a failed switch stopped, as a label value.
pub const FAILURE_REASONS: [&str; 5] = ["node_file", "admin", "symlink", "reload", "not_applied"];

/// No wildcard on purpose: a new way for a switch to fail needs its own label.
pub fn failure_reason(e: &SwitchError) -> &'static str {
    match e {
        SwitchError::NodeFile { .. } => "node_file",
        SwitchError::Admin { .. } => "admin",
        SwitchError::Symlink { .. } => "symlink",
        SwitchError::Reload { .. } => "reload",
        SwitchError::NotApplied { .. } => "not_applied",
    }
}

/// The daemon's counters since start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub rounds: u64,
    /// Indexed like [`SwitchReason::ALL`].
    pub switches: [u64; 4],
    /// Indexed like [`FAILURE_REASONS`]; every failed attempt counts.
    pub switch_failures: [u64; 5],
    /// The last switch that moved the symlink: when PgBouncer confirmed it, and how long
    /// after the need arose (the new master first seen as master, or the drift found).
    pub last_switch: Option<(SystemTime, Duration)>,
    /// How long the switch itself took (admin check, symlink, RELOAD, confirmation).
    pub last_switch_step: Option<Duration>,
    /// Configuration reloads (SIGHUP) applied and refused.
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

impl Counters {
    pub fn switched(&mut self, reason: SwitchReason) {
        let i = SwitchReason::ALL.iter().position(|r| *r == reason);
        if let Some(i) = i {
            self.switches[i] += 1;
        }
    }

    pub fn switch_failed(&mut self, reason: &str) {
        if let Some(i) = FAILURE_REASONS.iter().position(|r| *r == reason) {
            self.switch_failures[i] += 1;
        }
    }
}
