//! STUB: interface only; the real module replaces this file.
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// What the process environment contributes to a connection string: `PG*` variables,
/// the home directory (for `~/.pgpass`, `~/.postgresql/root.crt`) and the OS user name.
/// Captured once, so parsing is a function of (string, Env) and testable without touching
/// the real environment.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub vars: HashMap<String, String>,
    pub home: Option<PathBuf>,
    pub os_user: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        unimplemented!()
    }
}

/// A parsed, validated connection string, ready to connect. Debug never shows the password.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    /// Where this connects, for messages: `127.0.0.1:5432` or `/tmp/.s.PGSQL.5432`.
    /// Never contains a password.
    pub endpoint: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({})", self.endpoint)
    }
}

/// The connection string cannot be used as written. The message says what to change and
/// never contains the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfoError(pub String);

impl fmt::Display for ConnInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConnInfoError {}

/// Connecting failed. Display: `<endpoint>: <whole error chain>[; <hint>]`.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub endpoint: String,
    pub detail: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.detail)?;
        if let Some(h) = &self.hint {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}
impl std::error::Error for ConnectError {}

impl Target {
    pub fn parse(_s: &str, _env: &Env) -> Result<Target, ConnInfoError> {
        unimplemented!()
    }
    pub fn set_connect_timeout(&mut self, d: Duration) {
        self.config.connect_timeout(d);
    }
    pub async fn connect(
        &self,
    ) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), ConnectError> {
        unimplemented!()
    }
}

/// The whole `source()` chain of an error joined with ": ", because tokio-postgres's own
/// Display is only the kind ("db error").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
