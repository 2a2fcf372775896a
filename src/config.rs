//! The configuration file: the Go tool's format, read the Go way.
//!
//! Everything is checked here, before anything runs: `load` returns either a complete
//! [`Config`] or the first problem, as one line for an operator:
//! `config error: <file>:<line>: <what is wrong>; <what to do>`. That includes every
//! server's node file ([`crate::node_file`]).
//!
//! The file is read by our own line pass (`scan`), which is also the source of its
//! values, and not by rust-ini (which reads the node files): the Go tool parsed it line by
//! line (trim; skip blank, `#` and `;` lines; `[section]`; `key=value` split at the first
//! `=`), and rust-ini 0.21 silently reads inputs of that grammar differently: a line
//! without `=` is glued to the next key, an indented comment swallows the next key, a
//! trailing `\` joins two lines, `:` splits keys, keys outside a section are accepted, and
//! of duplicated keys the first wins where Go took the last. Our pass knows every value's
//! line number, which the error messages need anyway.
//!
//! No message ever repeats a connection string: it may hold a password. Messages name the
//! key or the server instead.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::conninfo::{Env, Target};
use crate::ini_text::{Line, ReadError, classify, read_text, shown};
use crate::node_file;
pub use crate::node_file::{DatabaseEntry, NodeFile};

/// The validated configuration. Built once at start; nothing in it is a default that
/// stands in for a value the operator gave.
#[derive(Debug, Clone)]
pub struct Config {
    /// The configuration file as named on the command line.
    pub file: PathBuf,
    /// PgBouncer's admin console (database `pgbouncer`).
    pub pgbouncer: Target,
    /// `pgbouncer` as written in the file: a reload compares it to tell a change.
    pub pgbouncer_conninfo: String,
    /// Absolute path of the symlink PgBouncer was started with.
    pub symlink: PathBuf,
    /// Absolute directory holding `<node>.ini`.
    pub configdir: PathBuf,
    pub interval: Duration,
    pub timeout: Duration,
    /// Poll rate while there is no single stable master (optional key `fast_interval`).
    pub fast_interval: Duration,
    /// Keep one monitoring connection per server open across rounds (optional key
    /// `keep_connections`, default true). `false` reconnects at every check, as the Go tool did.
    pub keep_connections: bool,
    /// Where rebouncer remembers timelines and held databases across restarts (optional
    /// key `state_file`; default `$STATE_DIRECTORY/rebouncer.state`, else
    /// `/var/lib/rebouncer/rebouncer.state`).
    pub state_file: PathBuf,
    /// Hold clients with `PAUSE` while the active master is gone, until a new one is
    /// switched to or `pause_timeout` passes (optional key `pause_on_failover`, default off).
    pub pause_on_failover: bool,
    /// The longest rebouncer keeps PgBouncer paused (optional key `pause_timeout`).
    pub pause_timeout: Duration,
    /// In file order.
    pub servers: Vec<Server>,
    /// Follow Patroni's leader key in etcd instead of polling (keys `etcd_*`).
    pub etcd: Option<crate::etcd_settings::EtcdMode>,
    /// Things that do not stop rebouncer but an operator should see (log at start,
    /// `-check`, `/`): one line each, `file:line: message`, never a connection string.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    /// Connection timeout already set to `timeout - 1s`.
    pub target: Target,
    /// The connection string as written in the file: a reload compares it to tell a
    /// changed server from an unchanged one.
    pub conninfo: String,
    /// `<configdir>/<name>.ini`, absolute.
    pub node_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigError {}

/// Defaults and limits of the `[global]` keys.
pub const DEFAULT_INTERVAL_SECS: u64 = 30;
pub const DEFAULT_TIMEOUT_SECS: u64 = 3;
pub const DEFAULT_FAST_INTERVAL: Duration = Duration::from_millis(100);
const INTERVAL_RANGE: (u64, u64) = (1, 86_400);
/// At least 2: the network timeout is one second less (as in the Go tool), and must not be 0.
const TIMEOUT_RANGE: (u64, u64) = (2, 3_600);
const MIN_FAST_INTERVAL: Duration = Duration::from_millis(50);
pub const DEFAULT_PAUSE_TIMEOUT_SECS: u64 = 10;
/// Clients wait this long at most; PgBouncer's own `query_wait_timeout` (120 s by default)
/// must stay above it, so more than a few minutes is a mistake.
const PAUSE_TIMEOUT_RANGE: (u64, u64) = (1, 300);

/// The keys of `[global]`, in the order the error message lists them.
const GLOBAL_KEYS: [&str; 21] = [
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
    "etcd_endpoints",
    "etcd_scope",
    "etcd_namespace",
    "etcd_members",
    "etcd_user",
    "etcd_password",
    "etcd_ca_file",
    "etcd_cert_file",
    "etcd_key_file",
    "etcd_timeout",
    "etcd_check_interval",
];

/// Read and validate the configuration file and every node file it names.
///
/// `cwd` resolves a relative `path`, `symlink` and `configdir` (once, at start: the link
/// target must be absolute); `env` is what connection strings may take from the environment.
pub fn load(path: &Path, cwd: &Path, env: &Env) -> Result<Config, ConfigError> {
    let text = read_config_file(path, cwd)?;
    let sections = scan(path, &text)?;
    let (global, servers) = known_sections(path, &sections)?;
    let mut warnings = Vec::new();
    let g = Global::new(path, global, &mut warnings)?;
    // The three keys without a default first: a file missing one is not a rebouncer config.
    let (pgbouncer_entry, symlink_entry, configdir_entry) = (
        g.required("pgbouncer")?,
        g.required("symlink")?,
        g.required("configdir")?,
    );

    let interval = g.whole_seconds("interval", DEFAULT_INTERVAL_SECS, INTERVAL_RANGE)?;
    // Not bounded by interval, as in Go: rounds run one after the other, so a check that
    // takes longer than interval only delays the next round.
    let timeout = g.whole_seconds("timeout", DEFAULT_TIMEOUT_SECS, TIMEOUT_RANGE)?;
    let fast_interval = g.fast_interval(interval)?;
    let keep_connections = g.boolean("keep_connections", true)?;
    let pause_on_failover = g.boolean("pause_on_failover", false)?;
    let pause_timeout = g.whole_seconds(
        "pause_timeout",
        DEFAULT_PAUSE_TIMEOUT_SECS,
        PAUSE_TIMEOUT_RANGE,
    )?;
    // The Go tool passed `connect_timeout=<timeout-1>` to the driver and gave up on the whole
    // check at `timeout`; the same split for PgBouncer's console and every server.
    let connect_timeout = Duration::from_secs(timeout.as_secs() - 1);

    let pgbouncer = parse_target(path, pgbouncer_entry, "pgbouncer", env, connect_timeout)?;
    let symlink = absolute(cwd, &symlink_entry.value);
    check_symlink(path, symlink_entry, &symlink)?;
    let configdir = absolute(cwd, &configdir_entry.value);
    check_configdir(path, configdir_entry, &configdir)?;

    let state_file = match g.optional("state_file", "(see the README)", "a file path")? {
        Some(e) => absolute(cwd, &e.value),
        None => env
            .state_directory
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::state::DEFAULT_STATE_DIR))
            .join(crate::state::STATE_FILE_NAME),
    };

    let servers = load_servers(path, servers, env, connect_timeout, &configdir)?;
    check_symlink_is_no_node_file(path, symlink_entry, &symlink, &servers)?;
    let etcd_lines: Vec<_> = global
        .entries
        .iter()
        .map(|e| crate::etcd_settings::Line {
            line: e.line,
            key: &e.key,
            value: &e.value,
        })
        .collect();
    let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    let etcd = crate::etcd_settings::parse(path, global.line, &etcd_lines, &names, cwd)?;

    Ok(Config {
        file: path.to_path_buf(),
        pgbouncer,
        pgbouncer_conninfo: pgbouncer_entry.value.clone(),
        symlink,
        configdir,
        interval,
        timeout,
        fast_interval,
        // The leader key says when to look: no monitoring connection is kept.
        keep_connections: keep_connections && etcd.is_none(),
        state_file,
        pause_on_failover,
        pause_timeout,
        servers,
        etcd,
        warnings,
    })
}

/// Read one node file (a complete PgBouncer config) and list where its `[databases]`
/// entries point, or say what is wrong as a config error. Used at start for every node,
/// and again before each switch.
pub fn read_node_file(path: &Path) -> Result<NodeFile, ConfigError> {
    node_file::read(path).map_err(|p| ConfigError(format!("config error: {p}")))
}

// ---------------------------------------------------------------------------------------
// Messages

fn at(file: &Path, line: usize, msg: impl fmt::Display) -> ConfigError {
    ConfigError(format!("config error: {}:{line}: {msg}", file.display()))
}

fn in_file(file: &Path, msg: impl fmt::Display) -> ConfigError {
    ConfigError(format!("config error: {}: {msg}", file.display()))
}

fn unknown_key(key: &str) -> String {
    match shown(key).as_str() {
        "this key" => "an unknown key".to_string(),
        name => format!("unknown key {name}"),
    }
}

// ---------------------------------------------------------------------------------------
// Reading files

fn read_config_file(path: &Path, cwd: &Path) -> Result<String, ConfigError> {
    read_text(&cwd.join(path)).map_err(|e| match e {
        ReadError::Io(e) => {
            let hint = match e.kind() {
                io::ErrorKind::PermissionDenied => {
                    "make it readable for the user rebouncer runs as"
                }
                _ => "give its path with -config=FILE",
            };
            in_file(
                path,
                format!("cannot read the configuration file: {e} ({hint})"),
            )
        }
        ReadError::NotUtf8(line) => at(
            path,
            line,
            "this line is not UTF-8 text; save the file as UTF-8",
        ),
    })
}

// ---------------------------------------------------------------------------------------
// The rebouncer config: a strict line pass

#[derive(Debug)]
struct Entry {
    line: usize,
    key: String,
    value: String,
}

#[derive(Debug)]
struct Section {
    name: String,
    line: usize,
    entries: Vec<Entry>,
}

/// Split the config into sections, rejecting every line whose meaning is not certain.
fn scan(file: &Path, text: &str) -> Result<Vec<Section>, ConfigError> {
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        match classify(raw) {
            Line::Blank => {}
            Line::UnclosedSection => {
                return Err(at(
                    file,
                    no,
                    "a section header must end with \"]\"; write it as [global] or [servers] on a line of its own",
                ));
            }
            Line::Section { name, rest } => {
                sections.push(new_section(file, no, name, rest, &sections)?);
            }
            Line::NoEquals => {
                return Err(at(
                    file,
                    no,
                    "this line has no \"=\"; settings are written key=value, \
                     comments start with # or ; (fix the line or remove it)",
                ));
            }
            Line::Entry { key, value } => {
                check_entry_line(file, no, raw, key)?;
                let Some(section) = sections.last_mut() else {
                    return Err(at(
                        file,
                        no,
                        format!(
                            "{} is outside any section; put it under [global] (settings) \
                             or [servers] (one line per server)",
                            shown(key)
                        ),
                    ));
                };
                if let Some(first) = section.entries.iter().find(|e| e.key == key) {
                    // Go silently took the last of the two.
                    return Err(at(
                        file,
                        no,
                        format!(
                            "{} is set twice in [{}] (lines {} and {no}); keep one of the two lines",
                            shown(key),
                            section.name,
                            first.line
                        ),
                    ));
                }
                section.entries.push(Entry {
                    line: no,
                    key: key.to_string(),
                    value: value.to_string(),
                });
            }
        }
    }
    Ok(sections)
}

fn new_section(
    file: &Path,
    no: usize,
    name: &str,
    rest: &str,
    seen: &[Section],
) -> Result<Section, ConfigError> {
    if !rest.is_empty() {
        // Go: "Missing = sign"; rust-ini: glued to the next line or "inline comment".
        return Err(at(
            file,
            no,
            format!(
                "text after \"[{name}]\"; a section header stands alone on its line (put a comment on a line of its own)"
            ),
        ));
    }
    if name.is_empty() {
        return Err(at(
            file,
            no,
            "empty section name \"[]\"; the sections are [global] and [servers]",
        ));
    }
    if let Some(first) = seen.iter().find(|s| s.name == name) {
        // Go silently let the second replace the first: servers listed in the first vanished.
        return Err(at(
            file,
            no,
            format!(
                "[{name}] appears a second time (first at line {}); merge the two into one section",
                first.line
            ),
        ));
    }
    Ok(Section {
        name: name.to_string(),
        line: no,
        entries: Vec::new(),
    })
}

fn check_entry_line(file: &Path, no: usize, raw: &str, key: &str) -> Result<(), ConfigError> {
    if key.is_empty() {
        return Err(at(
            file,
            no,
            "nothing before the \"=\"; write key=value (in [servers]: name=connection string)",
        ));
    }
    if raw.trim_end().ends_with('\\') {
        // Go took the backslash literally; rust-ini and other INI readers join the next
        // line onto this one, whatever the escape options. Refuse rather than guess.
        return Err(at(
            file,
            no,
            "the line ends with a backslash, which INI readers take as \"continued on the next line\"; \
             remove the trailing backslash or quote the value",
        ));
    }
    Ok(())
}

/// `[global]` and `[servers]`; any other section is a typo that must not be ignored.
fn known_sections<'a>(
    file: &Path,
    sections: &'a [Section],
) -> Result<(&'a Section, Option<&'a Section>), ConfigError> {
    for s in sections {
        if s.name != "global" && s.name != "servers" {
            let hint = ["global", "servers"]
                .iter()
                .find(|k| k.eq_ignore_ascii_case(&s.name))
                .map(|k| format!(" (names are case-sensitive: [{k}])"))
                .unwrap_or_default();
            return Err(at(
                file,
                s.line,
                format!(
                    "unknown section [{}]{hint}; a rebouncer config has only [global] and [servers]",
                    s.name
                ),
            ));
        }
    }
    let global = sections
        .iter()
        .find(|s| s.name == "global")
        .ok_or_else(|| {
            in_file(
                file,
                "no [global] section; add one with pgbouncer=, symlink= and configdir=",
            )
        })?;
    Ok((global, sections.iter().find(|s| s.name == "servers")))
}

// ---------------------------------------------------------------------------------------
// [global]

struct Global<'a> {
    file: &'a Path,
    section: &'a Section,
}

impl<'a> Global<'a> {
    /// The Go tool ignored keys it did not know, so a config that ran under it may carry
    /// some: those only warn. A near miss of a known key is refused, though: ignoring
    /// `intervall=5` would silently run with the default interval.
    fn new(
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
    fn required(&self, key: &str) -> Result<&'a Entry, ConfigError> {
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
    fn optional(
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

    fn whole_seconds(
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
    fn fast_interval(&self, interval: Duration) -> Result<Duration, ConfigError> {
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

    fn boolean(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
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

/// A connection string through conninfo; its message already says what to change and never
/// contains the password. `who` is `pgbouncer` or `server <name>`.
fn parse_target(
    file: &Path,
    e: &Entry,
    who: &str,
    env: &Env,
    connect_timeout: Duration,
) -> Result<Target, ConfigError> {
    let mut target = Target::parse_one_server(&e.value, env)
        .map_err(|err| at(file, e.line, format!("{who}: {err}")))?;
    target.set_connect_timeout(connect_timeout);
    Ok(target)
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

// ---------------------------------------------------------------------------------------
// Paths

/// Resolve against the working directory at start, lexically: `.` components and a
/// trailing `/` go, `..` stays (removing it is wrong when the part before is a symlink).
/// Not canonicalized: the symlink itself must stay the symlink's path.
fn absolute(cwd: &Path, value: &str) -> PathBuf {
    cwd.join(value)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The link may be missing (rebouncer creates it), but its directory must exist, and an
/// existing path must be a link: rebouncer replaces it at the first switch.
fn check_symlink(file: &Path, e: &Entry, symlink: &Path) -> Result<(), ConfigError> {
    let fail = |msg: String| Err(at(file, e.line, msg));
    let Some(dir) = symlink.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return fail(format!(
            "symlink {} is not a file path; give the path of the symbolic link PgBouncer is started with as its config file",
            symlink.display()
        ));
    };
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return fail(format!(
                "the directory of symlink {}, {}, is not a directory; correct symlink=",
                symlink.display(),
                dir.display()
            ));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return fail(format!(
                "the directory of symlink {}, {}, does not exist; create it or correct symlink=",
                symlink.display(),
                dir.display()
            ));
        }
        Err(err) => {
            return fail(format!(
                "cannot check the directory of symlink {}, {}: {err}",
                symlink.display(),
                dir.display()
            ));
        }
    }
    let kind = match fs::symlink_metadata(symlink) {
        Ok(m) if m.file_type().is_symlink() => return Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return fail(format!("cannot check symlink {}: {err}", symlink.display())),
        Ok(m) if m.is_dir() => "a directory",
        Ok(m) if m.is_file() => "a regular file",
        Ok(_) => "a special file",
    };
    fail(format!(
        "symlink {p} is {kind}, not a symbolic link, and rebouncer refuses to replace it; \
         move it away (a PgBouncer config belongs in configdir as <node>.ini) and start PgBouncer \
         with {p} as its config file: rebouncer creates the link",
        p = symlink.display()
    ))
}

fn check_configdir(file: &Path, e: &Entry, dir: &Path) -> Result<(), ConfigError> {
    let msg = match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => format!(
            "configdir {} is not a directory; correct configdir=",
            dir.display()
        ),
        Err(err) if err.kind() == io::ErrorKind::NotFound => format!(
            "configdir {} does not exist; create it with one complete PgBouncer config per node, <node>.ini, or correct configdir=",
            dir.display()
        ),
        Err(err) => format!("cannot check configdir {}: {err}", dir.display()),
    };
    Err(at(file, e.line, msg))
}

/// Pointing the link at a node file that is the link itself would destroy that node's config.
fn check_symlink_is_no_node_file(
    file: &Path,
    e: &Entry,
    symlink: &Path,
    servers: &[Server],
) -> Result<(), ConfigError> {
    match servers.iter().find(|s| s.node_file == symlink) {
        Some(s) => Err(at(
            file,
            e.line,
            format!(
                "symlink {} is also the node file of server {}; the link must be a path of its own, outside the node files",
                symlink.display(),
                s.name
            ),
        )),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// [servers]

/// A node file name is `<name>.ini`, and the name is printed as `name: state` on `/nodes`,
/// which scripts split at `: `.
const NAME_RULE: &str = "use letters, digits, \"_\", \"-\" and \".\", starting with a letter or digit \
                         (it names the node file <configdir>/<name>.ini and the node on the status pages)";
/// A file name has at most 255 bytes, `.ini` included.
const MAX_NAME_LEN: usize = 251;

fn valid_server_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn load_servers(
    file: &Path,
    section: Option<&Section>,
    env: &Env,
    connect_timeout: Duration,
    configdir: &Path,
) -> Result<Vec<Server>, ConfigError> {
    let Some(section) = section else {
        return Err(in_file(
            file,
            "no [servers] section; add [servers] with one line per cluster member: name=connection string",
        ));
    };
    if section.entries.is_empty() {
        return Err(at(
            file,
            section.line,
            "[servers] lists no server; add one line per cluster member: name=connection string",
        ));
    }
    section
        .entries
        .iter()
        .map(|e| load_server(file, e, env, connect_timeout, configdir))
        .collect()
}

fn load_server(
    file: &Path,
    e: &Entry,
    env: &Env,
    connect_timeout: Duration,
    configdir: &Path,
) -> Result<Server, ConfigError> {
    let name = &e.key;
    if !valid_server_name(name) {
        return Err(at(
            file,
            e.line,
            format!("server name {} cannot be used; {NAME_RULE}", shown(name)),
        ));
    }
    if e.value.is_empty() {
        return Err(at(
            file,
            e.line,
            format!(
                "server {name} has no connection string; write {name}=host=... port=... dbname=..."
            ),
        ));
    }
    let target = parse_target(file, e, &format!("server {name}"), env, connect_timeout)?;

    let node_file = configdir.join(format!("{name}.ini"));
    node_file::read(&node_file).map_err(|p| {
        if p.not_found() {
            at(
                file,
                e.line,
                format!(
                    "server {name}: node file {f} does not exist; create {f}, a complete PgBouncer config for node {name}",
                    f = node_file.display()
                ),
            )
        } else {
            at(file, e.line, format!("server {name}: {p}"))
        }
    })?;
    Ok(Server {
        name: name.clone(),
        target,
        conninfo: e.value.clone(),
        node_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink as make_symlink;
    use tempfile::TempDir;

    const NODE: &str = "[databases]\npostgres = host=10.0.0.1 port=5432 dbname=postgres\n\n[pgbouncer]\nlisten_port = 6432\n";

    /// Nothing from the real environment; a user name, since libpq needs one.
    fn test_env() -> Env {
        Env {
            os_user: Some("rebouncer".into()),
            ..Env::default()
        }
    }

    /// A working directory with `nodes/db1.ini` and `nodes/db2.ini`; configs are written
    /// as `rebouncer.ini` there and loaded with that directory as the working directory.
    struct Dir {
        tmp: TempDir,
    }

    impl Dir {
        fn new() -> Dir {
            let tmp = tempfile::tempdir().unwrap();
            fs::create_dir(tmp.path().join("nodes")).unwrap();
            for n in ["db1", "db2"] {
                fs::write(tmp.path().join(format!("nodes/{n}.ini")), NODE).unwrap();
            }
            Dir { tmp }
        }
        fn path(&self) -> &Path {
            self.tmp.path()
        }
        fn write(&self, name: &str, text: &str) {
            fs::write(self.path().join(name), text).unwrap();
        }
        fn load(&self, text: &str) -> Result<Config, ConfigError> {
            self.write("rebouncer.ini", text);
            load(Path::new("rebouncer.ini"), self.path(), &test_env())
        }
        fn err(&self, text: &str) -> String {
            match self.load(text) {
                Ok(c) => panic!("expected an error, got {c:?}"),
                Err(e) => e.0,
            }
        }
    }

    const GLOBAL: &str = "[global]\n\
        pgbouncer=host=/tmp port=6432 dbname=pgbouncer user=pgbouncer\n\
        symlink=pgbouncer.ini\n\
        configdir=nodes\n";
    const SERVERS: &str = "[servers]\n\
        db2=host=10.0.0.2 dbname=postgres user=rebouncer\n\
        db1=host=10.0.0.1 dbname=postgres user=rebouncer\n";

    fn with_global(extra: &str) -> String {
        format!("{GLOBAL}{extra}\n{SERVERS}")
    }

    #[test]
    fn go_sample_config_loads_with_its_values_and_servers_in_file_order() {
        let d = Dir::new();
        let c = d
            .load(&with_global(
                "interval=10\ntimeout=5\nfast_interval=0.5\nkeep_connections=off",
            ))
            .unwrap();
        assert_eq!(c.file, Path::new("rebouncer.ini"));
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.fast_interval, Duration::from_millis(500));
        assert!(!c.keep_connections);
        assert_eq!(c.symlink, d.path().join("pgbouncer.ini"));
        assert_eq!(c.configdir, d.path().join("nodes"));
        let names: Vec<_> = c.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db2", "db1"]);
        assert_eq!(c.servers[0].node_file, d.path().join("nodes/db2.ini"));
        for s in &c.servers {
            assert_eq!(
                s.target.config.get_connect_timeout(),
                Some(&Duration::from_secs(4))
            );
        }
        assert_eq!(
            c.pgbouncer.config.get_connect_timeout(),
            Some(&Duration::from_secs(4))
        );
    }

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
    fn relative_paths_are_resolved_against_the_working_directory() {
        let d = Dir::new();
        let text = GLOBAL
            .replace("symlink=pgbouncer.ini", "symlink=./etc/../pgbouncer.ini")
            .replace("configdir=nodes", "configdir=./nodes/");
        fs::create_dir(d.path().join("etc")).unwrap();
        let c = d.load(&format!("{text}\n{SERVERS}")).unwrap();
        assert_eq!(c.symlink, d.path().join("etc/../pgbouncer.ini"));
        assert_eq!(c.configdir, d.path().join("nodes"));
        assert_eq!(c.servers[1].node_file, d.path().join("nodes/db1.ini"));
        assert!(c.symlink.is_absolute() && c.configdir.is_absolute());
    }

    #[test]
    fn absolute_paths_are_kept() {
        let d = Dir::new();
        let link = d.path().join("pg.ini");
        let text = GLOBAL
            .replace(
                "symlink=pgbouncer.ini",
                &format!("symlink={}", link.display()),
            )
            .replace(
                "configdir=nodes",
                &format!("configdir={}/nodes", d.path().display()),
            );
        let c = load_text_elsewhere(&d, &format!("{text}\n{SERVERS}"));
        assert_eq!(c.symlink, link);
        assert_eq!(c.configdir, d.path().join("nodes"));
    }

    /// Loaded with `/` as the working directory: only absolute paths can work.
    fn load_text_elsewhere(d: &Dir, text: &str) -> Config {
        d.write("abs.ini", text);
        load(&d.path().join("abs.ini"), Path::new("/"), &test_env()).unwrap()
    }

    #[test]
    fn spaces_around_keys_and_values_are_trimmed_unlike_go() {
        let d = Dir::new();
        let c = d
            .load(&format!(
                "  [ global ]  \n{}  interval  =  7  \n\n{SERVERS}",
                &GLOBAL[9..]
            ))
            .unwrap();
        assert_eq!(c.interval, Duration::from_secs(7));
    }

    #[test]
    fn comments_blank_lines_and_crlf_are_ignored_and_an_indented_comment_is_a_comment() {
        let d = Dir::new();
        let text = with_global("   # an indented comment, which rust-ini would glue to the next key\ninterval=12\n\t; another\n\n")
            .replace('\n', "\r\n");
        let c = d.load(&text).unwrap();
        assert_eq!(c.interval, Duration::from_secs(12));
        assert_eq!(c.servers.len(), 2);
    }

    #[test]
    fn hash_semicolon_quotes_and_backslashes_inside_values_are_kept_verbatim() {
        let text = "[servers]\nsrv1=host=/tmp password='p#w;d\\'x' # not a comment\n";
        let sections = scan(Path::new("r.ini"), text).unwrap();
        assert_eq!(
            sections[0].entries[0].value,
            "host=/tmp password='p#w;d\\'x' # not a comment"
        );
        let d = Dir::new();
        let c = d
            .load(&with_global("").replace("symlink=pgbouncer.ini", "symlink=pg#b;1.ini"))
            .unwrap();
        assert_eq!(c.symlink, d.path().join("pg#b;1.ini"));
    }

    #[test]
    fn a_value_is_everything_after_the_first_equals_sign() {
        let text = "[servers]\ndb1 = host=a port=5 options='-c x=y'\n";
        let s = scan(Path::new("r.ini"), text).unwrap();
        assert_eq!(s[0].entries[0].key, "db1");
        assert_eq!(s[0].entries[0].value, "host=a port=5 options='-c x=y'");
    }

    #[test]
    fn a_missing_config_file_says_how_to_name_it() {
        let d = Dir::new();
        let e = load(Path::new("nope.ini"), d.path(), &test_env())
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("config error: nope.ini: cannot read the configuration file: No such file or directory"),
            "{e}"
        );
        assert!(e.ends_with("(give its path with -config=FILE)"), "{e}");
    }

    #[test]
    fn a_config_file_that_is_not_utf8_names_the_line() {
        let d = Dir::new();
        fs::write(d.path().join("rebouncer.ini"), b"[global]\n\xff\xfe\n").unwrap();
        let e = load(Path::new("rebouncer.ini"), d.path(), &test_env())
            .unwrap_err()
            .0;
        assert_eq!(
            e,
            "config error: rebouncer.ini:2: this line is not UTF-8 text; save the file as UTF-8"
        );
    }

    #[test]
    fn a_line_without_equals_is_refused_with_its_line_number() {
        let e = Dir::new().err(&with_global("garbage line"));
        assert_eq!(
            e,
            "config error: rebouncer.ini:5: this line has no \"=\"; settings are written key=value, \
             comments start with # or ; (fix the line or remove it)"
        );
    }

    #[test]
    fn a_line_without_equals_is_not_echoed_since_it_may_hold_a_password() {
        let e = Dir::new().err(&format!(
            "{GLOBAL}\n[servers]\npostgresql://u:s3cret@h/db\n"
        ));
        assert!(
            e.starts_with("config error: rebouncer.ini:7: this line has no"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        let e = Dir::new().err(&format!(
            "{GLOBAL}\n[servers]\npostgresql://u:s3cret@h/db?sslmode=require\n"
        ));
        assert!(
            e.starts_with("config error: rebouncer.ini:7: server name this key cannot be used"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn a_key_outside_any_section_is_refused() {
        let e = Dir::new().err(&format!("interval=10\n{GLOBAL}\n{SERVERS}"));
        assert_eq!(
            e,
            "config error: rebouncer.ini:1: \"interval\" is outside any section; \
             put it under [global] (settings) or [servers] (one line per server)"
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
    fn no_global_section_at_all() {
        let e = Dir::new().err(&format!("; nothing\n{SERVERS}"));
        assert_eq!(
            e,
            "config error: rebouncer.ini: no [global] section; add one with pgbouncer=, symlink= and configdir="
        );
        let e = Dir::new().err("");
        assert!(e.contains("no [global] section"), "{e}");
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
    fn an_unknown_section_is_refused() {
        let e = Dir::new().err(&format!("{GLOBAL}\n[server]\ndb1=host=x\n"));
        assert_eq!(
            e,
            "config error: rebouncer.ini:6: unknown section [server]; a rebouncer config has only [global] and [servers]"
        );
        let e = Dir::new().err(&format!("{GLOBAL}\n[Servers]\ndb1=host=x\n"));
        assert!(e.contains("(names are case-sensitive: [servers])"), "{e}");
    }

    #[test]
    fn a_key_set_twice_names_both_lines() {
        assert_eq!(
            Dir::new().err(&with_global("interval=10\ninterval=20")),
            "config error: rebouncer.ini:6: \"interval\" is set twice in [global] (lines 5 and 6); \
             keep one of the two lines"
        );
        let e = Dir::new().err(&format!("{GLOBAL}\n{SERVERS}db2=host=10.0.0.3\n"));
        assert_eq!(
            e,
            "config error: rebouncer.ini:9: \"db2\" is set twice in [servers] (lines 7 and 9); keep one of the two lines"
        );
    }

    #[test]
    fn a_section_given_twice_is_refused_instead_of_dropping_the_first() {
        let e = Dir::new().err(&format!("{GLOBAL}\n{SERVERS}\n[servers]\ndb3=host=x\n"));
        assert_eq!(
            e,
            "config error: rebouncer.ini:10: [servers] appears a second time (first at line 6); \
             merge the two into one section"
        );
    }

    #[test]
    fn section_headers_must_stand_alone() {
        let d = Dir::new();
        let e = d.err(&format!("{GLOBAL}\n[servers] # the cluster\ndb1=host=x\n"));
        assert!(
            e.starts_with("config error: rebouncer.ini:6: text after \"[servers]\""),
            "{e}"
        );
        let e = d.err(&format!("{GLOBAL}\n[servers\ndb1=host=x\n"));
        assert!(
            e.starts_with("config error: rebouncer.ini:6: a section header must end with \"]\""),
            "{e}"
        );
        let e = d.err(&format!("{GLOBAL}\n[]\n"));
        assert!(
            e.starts_with("config error: rebouncer.ini:6: empty section name"),
            "{e}"
        );
    }

    #[test]
    fn a_config_without_servers_says_to_add_one() {
        let d = Dir::new();
        assert_eq!(
            d.err(GLOBAL),
            "config error: rebouncer.ini: no [servers] section; add [servers] with one line per cluster member: \
             name=connection string"
        );
        assert_eq!(
            d.err(&format!("{GLOBAL}\n[servers]\n; none yet\n")),
            "config error: rebouncer.ini:6: [servers] lists no server; add one line per cluster member: \
             name=connection string"
        );
    }

    #[test]
    fn server_names_must_be_plain_file_names() {
        let d = Dir::new();
        for bad in [
            "../x", "a/b", ".", "..", ".hidden", "-x", "db 1", "db:1", "dé",
        ] {
            let e = d.err(&format!("{GLOBAL}\n[servers]\n{bad}=host=x\n"));
            assert!(
                e.starts_with("config error: rebouncer.ini:7: server name "),
                "{bad}: {e}"
            );
            assert!(
                e.contains("cannot be used; use letters, digits"),
                "{bad}: {e}"
            );
        }
        let e = d.err(&format!("{GLOBAL}\n[servers]\n../x=host=x\n"));
        assert!(e.contains("server name this key cannot be used"), "{e}");
        let e = d.err(&format!("{GLOBAL}\n[servers]\n.hidden=host=x\n"));
        assert!(e.contains("server name \".hidden\" cannot be used"), "{e}");
    }

    #[test]
    fn a_server_without_a_name_is_refused() {
        assert_eq!(
            Dir::new().err(&format!("{GLOBAL}\n[servers]\n=host=x\n")),
            "config error: rebouncer.ini:7: nothing before the \"=\"; write key=value \
             (in [servers]: name=connection string)"
        );
    }

    #[test]
    fn a_server_without_a_connection_string_is_refused() {
        assert_eq!(
            Dir::new().err(&format!("{GLOBAL}\n[servers]\ndb1=\n")),
            "config error: rebouncer.ini:7: server db1 has no connection string; \
             write db1=host=... port=... dbname=..."
        );
    }

    #[test]
    fn a_bad_connection_string_is_reported_with_the_line_and_server_name() {
        let e = Dir::new().err(&format!(
            "{GLOBAL}\n[servers]\ndb1=host=x\ndb2=host=x port=notaport\n"
        ));
        assert!(
            e.starts_with("config error: rebouncer.ini:8: server db2: "),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn a_server_or_pgbouncer_with_several_hosts_is_refused() {
        let d = Dir::new();
        for (line, who) in [
            ("db1=host=10.0.0.1,10.0.0.9 user=r", "server db1"),
            ("db1=host=10.0.0.1 port=5432,5433 user=r", "server db1"),
            (
                "db1=postgresql://r:s3cret@10.0.0.1,10.0.0.9/postgres",
                "server db1",
            ),
        ] {
            let e = d.err(&format!("{GLOBAL}\n[servers]\n{line}\n"));
            assert!(
                e.starts_with(&format!(
                    "config error: rebouncer.ini:7: {who}: the connection string names 2 "
                )),
                "{line}: {e}"
            );
            assert!(e.contains("a check must reach one known server"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let e = d.err(&with_global("").replace(
            "host=/tmp port=6432",
            "host=/tmp,/var/run/postgresql port=6432",
        ));
        assert!(
            e.starts_with(
                "config error: rebouncer.ini:2: pgbouncer: the connection string names 2 hosts; "
            ),
            "{e}"
        );
    }

    #[test]
    fn a_trailing_backslash_is_refused() {
        let e = Dir::new().err(&format!(
            "{GLOBAL}\n[servers]\ndb1=host=x password=abc\\\ndb2=host=y\n"
        ));
        assert_eq!(
            e,
            "config error: rebouncer.ini:7: the line ends with a backslash, which INI readers take as \
             \"continued on the next line\"; remove the trailing backslash or quote the value"
        );
    }

    #[test]
    fn a_missing_node_file_says_what_to_create() {
        let d = Dir::new();
        let e = d.err(&format!("{GLOBAL}\n{SERVERS}db3=host=10.0.0.3\n"));
        let f = d.path().join("nodes/db3.ini");
        assert_eq!(
            e,
            format!(
                "config error: rebouncer.ini:9: server db3: node file {f} does not exist; \
                 create {f}, a complete PgBouncer config for node db3",
                f = f.display()
            )
        );
    }

    #[test]
    fn a_node_file_without_databases_is_refused_at_start() {
        let d = Dir::new();
        d.write("nodes/db1.ini", "[pgbouncer]\nlisten_port=6432\n");
        let e = d.err(&with_global(""));
        assert_eq!(
            e,
            format!(
                "config error: rebouncer.ini:8: server db1: {}: no [databases] section; a node file is a \
                 complete PgBouncer config whose [databases] point at that node",
                d.path().join("nodes/db1.ini").display()
            )
        );
    }

    #[test]
    fn an_unreadable_or_garbage_node_file_is_refused_at_start() {
        let d = Dir::new();
        let f = d.path().join("nodes/db1.ini");
        fs::remove_file(&f).unwrap();
        fs::create_dir(&f).unwrap();
        let e = d.err(&with_global(""));
        assert!(
            e.starts_with(&format!(
                "config error: rebouncer.ini:8: server db1: {}: cannot read the node file: ",
                f.display()
            )),
            "{e}"
        );
        fs::remove_dir(&f).unwrap();
        fs::write(&f, b"\x7fELF\x02\x01\x01\x00\xff\xff").unwrap();
        let e = d.err(&with_global(""));
        assert!(
            e.contains(&format!(
                "server db1: {}:1: this line is not UTF-8 text",
                f.display()
            )),
            "{e}"
        );
        fs::write(&f, "this is not\nan ini file\n").unwrap();
        let e = d.err(&with_global(""));
        assert!(
            e.contains(&format!(
                "server db1: {}:1: this line has no \"=\"",
                f.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn an_existing_regular_file_at_the_symlink_path_is_not_replaced() {
        let d = Dir::new();
        d.write("pgbouncer.ini", NODE);
        let e = d.err(&with_global(""));
        let p = d.path().join("pgbouncer.ini");
        assert_eq!(
            e,
            format!(
                "config error: rebouncer.ini:3: symlink {p} is a regular file, not a symbolic link, and rebouncer \
                 refuses to replace it; move it away (a PgBouncer config belongs in configdir as <node>.ini) and \
                 start PgBouncer with {p} as its config file: rebouncer creates the link",
                p = p.display()
            )
        );
        fs::remove_file(&p).unwrap();
        fs::create_dir(&p).unwrap();
        assert!(
            d.err(&with_global(""))
                .contains("is a directory, not a symbolic link")
        );
    }

    #[test]
    fn an_existing_symlink_even_a_dangling_one_is_fine() {
        let d = Dir::new();
        make_symlink(
            d.path().join("nodes/gone.ini"),
            d.path().join("pgbouncer.ini"),
        )
        .unwrap();
        assert!(d.load(&with_global("")).is_ok());
    }

    #[test]
    fn the_symlink_directory_must_exist() {
        let d = Dir::new();
        let e =
            d.err(&with_global("").replace("symlink=pgbouncer.ini", "symlink=etc/pgbouncer.ini"));
        assert_eq!(
            e,
            format!(
                "config error: rebouncer.ini:3: the directory of symlink {}, {}, does not exist; \
                 create it or correct symlink=",
                d.path().join("etc/pgbouncer.ini").display(),
                d.path().join("etc").display()
            )
        );
    }

    #[test]
    fn configdir_must_be_a_directory() {
        let d = Dir::new();
        let e = d.err(&with_global("").replace("configdir=nodes", "configdir=nodez"));
        assert!(
            e.starts_with(&format!(
                "config error: rebouncer.ini:4: configdir {} does not exist; create it",
                d.path().join("nodez").display()
            )),
            "{e}"
        );
    }

    #[test]
    fn the_symlink_cannot_be_a_node_file() {
        let d = Dir::new();
        fs::remove_file(d.path().join("nodes/db1.ini")).unwrap();
        make_symlink(
            d.path().join("nodes/db2.ini"),
            d.path().join("nodes/db1.ini"),
        )
        .unwrap();
        let e = d.err(&with_global("").replace("symlink=pgbouncer.ini", "symlink=nodes/db1.ini"));
        assert!(
            e.starts_with("config error: rebouncer.ini:3: symlink "),
            "{e}"
        );
        assert!(e.contains("is also the node file of server db1"), "{e}");
    }

    #[test]
    fn a_star_only_node_file_is_refused_at_start_naming_server_and_file() {
        let d = Dir::new();
        d.write(
            "nodes/db2.ini",
            "[databases]\n* = host=10.0.0.2 port=5432\n[pgbouncer]\nlisten_port=6432\n",
        );
        let e = d.err(&with_global(""));
        assert!(
            e.starts_with(&format!(
                "config error: rebouncer.ini:7: server db2: {}:1: [databases] names no database \
                 (only the \"*\" fallback); ",
                d.path().join("nodes/db2.ini").display()
            )),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn missing_node_file_names_its_path() {
        let e = read_node_file(Path::new("/nonexistent/db1.ini"))
            .unwrap_err()
            .0;
        assert!(
            e.starts_with(
                "config error: /nonexistent/db1.ini: cannot read the node file: No such file"
            ),
            "{e}"
        );
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
