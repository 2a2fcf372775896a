//! The few ways the text pages write times, durations and counts.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Local};

/// A time in the server's zone, as people read it.
pub fn local(t: SystemTime) -> String {
    DateTime::<Local>::from(t)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

pub fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// "1 standby", "2 standbys".
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
