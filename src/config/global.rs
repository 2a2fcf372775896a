//! The `[global]` keys: which there are, their defaults and limits, and how each value is
//! read and checked.

use std::path::Path;
use std::time::Duration;

use super::error::{ConfigError, at};
use super::scan::{Entry, Section};
use crate::etcd_settings;
use crate::ini_text::shown;

/// Defaults and limits of the `[global]` keys.
pub const DEFAULT_INTERVAL_SECS: u64 = 30;
pub const DEFAULT_TIMEOUT_SECS: u64 = 3;
pub const DEFAULT_FAST_INTERVAL: Duration = Duration::from_millis(100);
pub(super) const INTERVAL_RANGE: (u64, u64) = (1, 86_400);
/// At least 2: the network timeout is one second less (as in the Go tool), and must not be 0.
pub(super) const TIMEOUT_RANGE: (u64, u64) = (2, 3_600);
const MIN_FAST_INTERVAL: Duration = Duration::from_millis(50);
pub const DEFAULT_PAUSE_TIMEOUT_SECS: u64 = 10;
/// Clients wait this long at most; PgBouncer's own `query_wait_timeout` (120 s by default)
/// must stay above it, so more than a few minutes is a mistake.
pub(super) const PAUSE_TIMEOUT_RANGE: (u64, u64) = (1, 300);

/// The keys of `[global]`, in the order the error message lists them: the polling
/// mode's, then the etcd mode's ([`crate::etcd_settings::KEYS`], read there).
const GLOBAL_KEYS: [&str; POLLING_KEYS.len() + etcd_settings::KEYS.len()] =
    concat(POLLING_KEYS, etcd_settings::KEYS);

const POLLING_KEYS: [&str; 10] = [
    "pgbouncer",
    "symlink",
    "configdir",
    "interval",
    "timeout",
    "fast_interval",
    "keep_connections",
    "state_file",
    "pause_on_failover",
    "pause_timeout",
];

const fn concat<const A: usize, const B: usize, const C: usize>(
    a: [&'static str; A],
    b: [&'static str; B],
) -> [&'static str; C] {
    assert!(A + B == C);
    let mut out = [""; C];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < C {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

fn unknown_key(key: &str) -> String {
    match shown(key).as_str() {
        "this key" => "an unknown key".to_string(),
        name => format!("unknown key {name}"),
    }
}

pub(super) struct Global<'a> {
    file: &'a Path,
    section: &'a Section,
}

impl<'a> Global<'a> {
    /// The Go tool ignored keys it did not know, so a config that ran under it may carry
    /// some: those only warn. A near miss of a known key is refused, though: ignoring
    /// `intervall=5` would silently run with the default interval.
    pub(super) fn new(
        file: &'a Path,
        section: &'a Section,
        warnings: &mut Vec<String>,
    ) -> Result<Global<'a>, ConfigError> {
        for e in &section.entries {
            if GLOBAL_KEYS.contains(&e.key.as_str()) {
                continue;
            }
            if let Some(meant) = near_miss(&e.key) {
                let how = if meant.eq_ignore_ascii_case(&e.key) {
                    "keys are case-sensitive"
                } else {
                    "a misspelling"
                };
                return Err(at(
                    file,
                    e.line,
                    format!(
                        "{} in [global], probably {meant} ({how}); write {meant}= \
                         (the keys are {})",
                        unknown_key(&e.key),
                        GLOBAL_KEYS.join(", ")
                    ),
                ));
            }
            warnings.push(format!(
                "{}:{}: {} in [global] is ignored, as the Go tool did; \
                 remove it or check its spelling",
                file.display(),
                e.line,
                unknown_key(&e.key)
            ));
        }
        Ok(Global { file, section })
    }

    fn get(&self, key: &str) -> Option<&'a Entry> {
        self.section.entries.iter().find(|e| e.key == key)
    }

    /// A key that must be given, with a value.
    pub(super) fn required(&self, key: &str) -> Result<&'a Entry, ConfigError> {
        let what = match key {
            "pgbouncer" => "the connection string of PgBouncer's admin console (dbname=pgbouncer)",
            "symlink" => {
                "the path of the symbolic link PgBouncer is started with as its config file"
            }
            _ => "the directory holding one complete PgBouncer config per node, <node>.ini",
        };
        match self.get(key) {
            None => Err(at(
                self.file,
                self.section.line,
                format!("[global] has no {key}=; add {key}=<{what}>"),
            )),
            Some(e) if e.value.is_empty() => Err(at(
                self.file,
                e.line,
                format!("{key}= is empty; give {what}"),
            )),
            Some(e) => Ok(e),
        }
    }

    /// An optional key that was given must have a value: never a silent default.
    pub(super) fn optional(
        &self,
        key: &str,
        default: &str,
        form: &str,
    ) -> Result<Option<&'a Entry>, ConfigError> {
        match self.get(key) {
            Some(e) if e.value.is_empty() => Err(at(
                self.file,
                e.line,
                format!(
                    "{key}= has no value; give {form}, or remove the line for the default {default}"
                ),
            )),
            other => Ok(other),
        }
    }

    pub(super) fn whole_seconds(
        &self,
        key: &str,
        default: u64,
        (min, max): (u64, u64),
    ) -> Result<Duration, ConfigError> {
        let form = format!("{min} to {max} seconds");
        let Some(e) = self.optional(key, &default.to_string(), &form)? else {
            return Ok(Duration::from_secs(default));
        };
        // Go fell back to the default on anything unparsable (`interval=10s` meant 30).
        let n: u64 = e.value.parse().map_err(|_| {
            at(
                self.file,
                e.line,
                format!("{key}={} is not a whole number of seconds; write e.g. {key}={default} ({form})", e.value),
            )
        })?;
        if n < min && key == "timeout" {
            return Err(at(
                self.file,
                e.line,
                format!(
                    "timeout={n} is too small: it must be at least {min} (the network timeout is one second less)"
                ),
            ));
        }
        if !(min..=max).contains(&n) {
            return Err(at(
                self.file,
                e.line,
                format!("{key}={n} is out of range; it must be {form}"),
            ));
        }
        Ok(Duration::from_secs(n))
    }

    /// Seconds with up to 9 decimals (`0.2`), from 0.05 up to `interval`.
    pub(super) fn fast_interval(&self, interval: Duration) -> Result<Duration, ConfigError> {
        let form = format!("0.05 to {} seconds (at most interval)", interval.as_secs());
        let Some(e) = self.optional("fast_interval", "0.1", &form)? else {
            return Ok(DEFAULT_FAST_INTERVAL.min(interval));
        };
        let d = parse_decimal_seconds(&e.value).ok_or_else(|| {
            at(
                self.file,
                e.line,
                format!(
                    "fast_interval={} is not a number of seconds; write e.g. fast_interval=0.2 ({form})",
                    e.value
                ),
            )
        })?;
        if d < MIN_FAST_INTERVAL || d > interval {
            return Err(at(
                self.file,
                e.line,
                format!(
                    "fast_interval={} is out of range; it must be {form}",
                    e.value
                ),
            ));
        }
        Ok(d)
    }

    pub(super) fn boolean(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        let form = "true or false (also on/off, yes/no, 1/0)";
        let Some(e) = self.optional(key, &default.to_string(), form)? else {
            return Ok(default);
        };
        match e.value.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Ok(true),
            "false" | "off" | "no" | "0" => Ok(false),
            _ => Err(at(
                self.file,
                e.line,
                format!("{key}={} is not a yes/no value; write {form}", e.value),
            )),
        }
    }
}

/// `12`, `0.2`, `.5`, `1.` as an exact Duration (no float rounding: `0.05` is 50 ms).
fn parse_decimal_seconds(s: &str) -> Option<Duration> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
    if whole.len() + frac.len() == 0 || !digits(whole) || !digits(frac) || frac.len() > 9 {
        return None;
    }
    let secs: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(Duration::new(secs, nanos))
}

/// The known `[global]` key that `key` most likely means, if it is that close: the same
/// but for case, `_` and `-` (`fast-interval`, `Timeout`, `keepconnections`), or at most
/// two edits away (`intervall`, `timout`, `symlnik`). Every known key has 7 letters or
/// more, so a key that close shares most of one: `http`, `logfile` or `debug` are not.
fn near_miss(key: &str) -> Option<&'static str> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| !matches!(c, '_' | '-'))
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let lower = key.to_ascii_lowercase();
    GLOBAL_KEYS
        .iter()
        .filter_map(|k| {
            let d = if squash(key) == squash(k) {
                0
            } else {
                edit_distance(&lower, k)
            };
            (d <= 2).then_some((d, *k))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edits (insert, delete, substitute, swap two neighbours) to turn `a` into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: distance between the first i chars of a and the first j of b.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn omitted_optional_keys_take_the_go_defaults() {
        let c = Dir::new().load(&with_global("")).unwrap();
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.fast_interval, Duration::from_millis(100));
        assert!(c.keep_connections);
        assert_eq!(
            c.servers[0].target.config.get_connect_timeout(),
            Some(&Duration::from_secs(2))
        );
    }

    #[test]
    fn each_required_global_key_is_asked_for_by_name() {
        let d = Dir::new();
        for (key, line) in [
            (
                "pgbouncer",
                "pgbouncer=host=/tmp port=6432 dbname=pgbouncer user=pgbouncer\n",
            ),
            ("symlink", "symlink=pgbouncer.ini\n"),
            ("configdir", "configdir=nodes\n"),
        ] {
            let e = d.err(&with_global("").replace(line, ""));
            assert!(
                e.starts_with(&format!(
                    "config error: rebouncer.ini:1: [global] has no {key}=; add {key}=<"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn a_required_key_with_an_empty_value_is_refused() {
        let e = Dir::new().err(&with_global("").replace("symlink=pgbouncer.ini", "symlink ="));
        assert!(
            e.starts_with("config error: rebouncer.ini:3: symlink= is empty; give the path"),
            "{e}"
        );
        let e = Dir::new().err(&with_global("").replace("user=pgbouncer", "").replace(
            "pgbouncer=host=/tmp port=6432 dbname=pgbouncer ",
            "pgbouncer=",
        ));
        assert!(
            e.starts_with("config error: rebouncer.ini:2: pgbouncer= is empty"),
            "{e}"
        );
    }

    #[test]
    fn an_unparsable_interval_is_an_error_not_the_default() {
        let d = Dir::new();
        assert_eq!(
            d.err(&with_global("interval=abc")),
            "config error: rebouncer.ini:5: interval=abc is not a whole number of seconds; \
             write e.g. interval=30 (1 to 86400 seconds)"
        );
        assert!(
            d.err(&with_global("interval=10s"))
                .contains("interval=10s is not a whole number")
        );
        assert!(
            d.err(&with_global("interval=1.5"))
                .contains("interval=1.5 is not a whole number")
        );
        assert!(
            d.err(&with_global("interval=-1"))
                .contains("interval=-1 is not a whole number")
        );
    }

    #[test]
    fn interval_out_of_range() {
        let d = Dir::new();
        assert_eq!(
            d.err(&with_global("interval=0")),
            "config error: rebouncer.ini:5: interval=0 is out of range; it must be 1 to 86400 seconds"
        );
        assert!(
            d.err(&with_global("interval=86401"))
                .contains("out of range")
        );
        assert!(d.load(&with_global("interval=86400")).is_ok());
        assert!(d.load(&with_global("interval=1")).is_ok());
    }

    #[test]
    fn timeout_of_one_second_is_too_small_for_the_network_timeout() {
        let d = Dir::new();
        assert_eq!(
            d.err(&with_global("timeout=1")),
            "config error: rebouncer.ini:5: timeout=1 is too small: it must be at least 2 \
             (the network timeout is one second less)"
        );
        assert!(
            d.err(&with_global("timeout=3601"))
                .contains("timeout=3601 is out of range; it must be 2 to 3600 seconds")
        );
        // Longer than interval is allowed: rounds are sequential, a check cannot outlast one.
        let c = d.load(&with_global("interval=2\ntimeout=10")).unwrap();
        assert_eq!(c.timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_given_but_empty_number_is_an_error() {
        assert_eq!(
            Dir::new().err(&with_global("timeout=")),
            "config error: rebouncer.ini:5: timeout= has no value; give 2 to 3600 seconds, \
             or remove the line for the default 3"
        );
    }

    #[test]
    fn fast_interval_takes_decimal_seconds_up_to_interval() {
        let d = Dir::new();
        let c = d
            .load(&with_global("interval=1\nfast_interval=0.05"))
            .unwrap();
        assert_eq!(c.fast_interval, Duration::from_millis(50));
        let c = d.load(&with_global("interval=1\nfast_interval=1")).unwrap();
        assert_eq!(c.fast_interval, Duration::from_secs(1));
        let c = d.load(&with_global("fast_interval=.25")).unwrap();
        assert_eq!(c.fast_interval, Duration::from_millis(250));
        assert_eq!(
            d.err(&with_global("interval=1\nfast_interval=1.5")),
            "config error: rebouncer.ini:6: fast_interval=1.5 is out of range; \
             it must be 0.05 to 1 seconds (at most interval)"
        );
        assert!(
            d.err(&with_global("fast_interval=0.01"))
                .contains("fast_interval=0.01 is out of range")
        );
        for bad in ["abc", "1e-1", "0,2", "-0.2", ".", "inf", "0.2s"] {
            let e = d.err(&with_global(&format!("fast_interval={bad}")));
            assert!(
                e.contains(&format!("fast_interval={bad} is not a number of seconds")),
                "{e}"
            );
        }
        assert!(
            d.err(&with_global("fast_interval="))
                .contains("fast_interval= has no value")
        );
    }

    #[test]
    fn pause_on_failover_is_off_by_default_and_pause_timeout_is_checked() {
        let d = Dir::new();
        let c = d.load(&with_global("")).unwrap();
        assert!(!c.pause_on_failover);
        assert_eq!(c.pause_timeout, Duration::from_secs(10));
        let c = d
            .load(&with_global("pause_on_failover=on\npause_timeout=20"))
            .unwrap();
        assert!(c.pause_on_failover);
        assert_eq!(c.pause_timeout, Duration::from_secs(20));
        assert_eq!(
            d.err(&with_global("pause_on_failover=sometimes")),
            "config error: rebouncer.ini:5: pause_on_failover=sometimes is not a yes/no value; \
             write true or false (also on/off, yes/no, 1/0)"
        );
        assert_eq!(
            d.err(&with_global("pause_timeout=0")),
            "config error: rebouncer.ini:5: pause_timeout=0 is out of range; it must be 1 to 300 seconds"
        );
        assert!(
            d.err(&with_global("pause_timeout=2.5"))
                .contains("rebouncer.ini:5: pause_timeout=2.5 is not a whole number of seconds")
        );
    }

    #[test]
    fn keep_connections_takes_the_usual_yes_no_words() {
        let d = Dir::new();
        for (v, want) in [
            ("true", true),
            ("on", true),
            ("yes", true),
            ("1", true),
            ("TRUE", true),
            ("false", false),
            ("off", false),
            ("no", false),
            ("0", false),
            ("False", false),
        ] {
            let c = d
                .load(&with_global(&format!("keep_connections={v}")))
                .unwrap();
            assert_eq!(c.keep_connections, want, "{v}");
        }
        assert_eq!(
            d.err(&with_global("keep_connections=maybe")),
            "config error: rebouncer.ini:5: keep_connections=maybe is not a yes/no value; \
             write true or false (also on/off, yes/no, 1/0)"
        );
    }

    #[test]
    fn an_unknown_global_key_lists_the_known_ones() {
        assert_eq!(
            Dir::new().err(&with_global("intervall=5")),
            "config error: rebouncer.ini:5: unknown key \"intervall\" in [global], probably interval \
             (a misspelling); write interval= (the keys are pgbouncer, symlink, configdir, interval, \
             timeout, fast_interval, keep_connections, state_file, pause_on_failover, pause_timeout, \
             etcd_endpoints, etcd_scope, etcd_namespace, etcd_members, etcd_user, etcd_password, \
             etcd_ca_file, etcd_cert_file, etcd_key_file, etcd_timeout, etcd_check_interval)"
        );
        let e = Dir::new().err(&with_global("Interval=5"));
        assert!(
            e.contains("probably interval (keys are case-sensitive); write interval="),
            "{e}"
        );
    }

    #[test]
    fn a_near_miss_of_a_global_key_is_refused_naming_the_key_it_meant() {
        let d = Dir::new();
        for (bad, meant) in [
            ("intervall", "interval"),
            ("fast-interval", "fast_interval"),
            ("Timeout", "timeout"),
            ("TIMEOUT", "timeout"),
            ("keepconnections", "keep_connections"),
            ("keep-Connections", "keep_connections"),
            ("timout", "timeout"),
            ("intreval", "interval"),
            ("symlnik", "symlink"),
            ("config_dir", "configdir"),
            ("statefile", "state_file"),
            ("state_files", "state_file"),
            ("pg_bouncer", "pgbouncer"),
            ("fast_intervals", "fast_interval"),
        ] {
            let e = d.err(&with_global(&format!("{bad}=5")));
            assert!(
                e.starts_with(&format!(
                    "config error: rebouncer.ini:5: unknown key \"{bad}\" in [global], probably {meant} ("
                )),
                "{bad}: {e}"
            );
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn any_other_unknown_global_key_is_ignored_with_a_warning_as_the_go_tool_did() {
        let d = Dir::new();
        let c = d
            .load(&with_global(
                "logfile=/var/log/x.log
debug=1
interval=7
http=:7100",
            ))
            .unwrap();
        assert_eq!(c.interval, Duration::from_secs(7));
        assert_eq!(
            c.warnings,
            [
                "rebouncer.ini:5: unknown key \"logfile\" in [global] is ignored, as the Go tool did; \
                 remove it or check its spelling",
                "rebouncer.ini:6: unknown key \"debug\" in [global] is ignored, as the Go tool did; \
                 remove it or check its spelling",
                "rebouncer.ini:8: unknown key \"http\" in [global] is ignored, as the Go tool did; \
                 remove it or check its spelling",
            ]
        );
        // A key that may be a pasted secret is not repeated.
        let c = d
            .load(&with_global("postgresql://u:s3cret@h/db?x=1"))
            .unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].starts_with("rebouncer.ini:5: an unknown key in [global] is ignored"),
            "{:?}",
            c.warnings
        );
        assert!(!c.warnings[0].contains("s3cret"));
        // A clean config has none.
        assert!(d.load(&with_global("")).unwrap().warnings.is_empty());
    }

    #[test]
    fn near_miss_and_edit_distance() {
        assert_eq!(edit_distance("interval", "interval"), 0);
        assert_eq!(edit_distance("intreval", "interval"), 1);
        assert_eq!(edit_distance("intervall", "interval"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(near_miss("keep_connection"), Some("keep_connections"));
        assert_eq!(near_miss("timeout_"), Some("timeout"));
        // Unrelated keys, including short ones, are not near misses.
        for other in [
            "logfile", "pidfile", "http", "listen", "debug", "user", "loglevel", "port", "config",
            "",
        ] {
            assert_eq!(near_miss(other), None, "{other}");
        }
    }

    #[test]
    fn decimal_seconds_are_exact() {
        assert_eq!(
            parse_decimal_seconds("0.05"),
            Some(Duration::from_millis(50))
        );
        assert_eq!(parse_decimal_seconds("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_decimal_seconds("1."), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_decimal_seconds("0.000000001"),
            Some(Duration::from_nanos(1))
        );
        assert_eq!(parse_decimal_seconds("0.0000000001"), None);
        assert_eq!(parse_decimal_seconds(""), None);
        assert_eq!(parse_decimal_seconds("1.2.3"), None);
    }
}
