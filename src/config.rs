//! STUB: interface only; the real module replaces this file.
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::conninfo::{Env, Target};

/// The validated configuration. Built once at start; nothing in it is a default that
/// stands in for a value the operator gave.
#[derive(Debug, Clone)]
pub struct Config {
    /// The configuration file as named on the command line.
    pub file: PathBuf,
    /// PgBouncer's admin console (database `pgbouncer`).
    pub pgbouncer: Target,
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
    /// In file order.
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    /// Connection timeout already set to `timeout - 1s`.
    pub target: Target,
    /// `<configdir>/<name>.ini`, absolute.
    pub node_file: PathBuf,
}

/// One entry of a node file's `[databases]` section, as PgBouncer will use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseEntry {
    pub name: String,
    /// `None` when the entry names no host (PgBouncer then uses its unix socket default).
    pub host: Option<String>,
    pub port: u16,
}

/// A precooked PgBouncer config for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    pub path: PathBuf,
    /// Named databases in file order; the `*` fallback entry is not listed.
    pub databases: Vec<DatabaseEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigError {}

pub fn load(_path: &Path, _cwd: &Path, _env: &Env) -> Result<Config, ConfigError> {
    unimplemented!()
}

pub fn read_node_file(_path: &Path) -> Result<NodeFile, ConfigError> {
    unimplemented!()
}
