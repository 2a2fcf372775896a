//! The configuration file: the Go tool's format, read the Go way.
//!
//! Everything is checked here, before anything runs: `load` returns either a complete
//! [`Config`] or the first problem, as one line for an operator:
//! `config error: <file>:<line>: <what is wrong>; <what to do>`. That includes every
//! server's node file ([`crate::node_file`]).
//!
//! One job a file: `scan` splits the file into sections by a strict line pass, `global`
//! reads and checks the `[global]` keys, `paths` resolves and checks `symlink` and
//! `configdir`, `servers` reads `[servers]` and each server's node file, and `error`
//! words every message. This file holds the result, [`Config`], and puts it together.
//!
//! No message ever repeats a connection string: it may hold a password. Messages name the
//! key or the server instead.

pub(crate) mod error;
mod global;
mod paths;
mod scan;
mod servers;
#[cfg(test)]
mod testing;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::conninfo::{Env, Target};

pub use crate::node_file::{DatabaseEntry, NodeFile};
pub use error::ConfigError;
pub use global::{
    DEFAULT_FAST_INTERVAL, DEFAULT_INTERVAL_SECS, DEFAULT_PAUSE_TIMEOUT_SECS, DEFAULT_TIMEOUT_SECS,
};
pub use servers::{Server, read_node_file};

use global::{Global, INTERVAL_RANGE, PAUSE_TIMEOUT_RANGE, TIMEOUT_RANGE};
use paths::{absolute, check_configdir, check_symlink, check_symlink_is_no_node_file};
use scan::{known_sections, read_config_file, scan};
use servers::{load_servers, parse_target};

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

///
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

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

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
}
