//! PgBouncer's admin console, behind a small seam ([`Console`], [`Session`]) so that the
//! switch and the main loop can be driven by a fake PgBouncer in unit tests, while the real
//! one ([`Bouncer`]) is exercised end to end by the integration tests.
//!
//! Facts about the real console (docs/pgbouncer.md): it speaks only the simple
//! query protocol and only its own commands; any extended-protocol call makes it drop the
//! connection ("bad packet").

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::conninfo::{ConnectError, Target, error_chain};

/// A failure talking to the admin console.
#[derive(Debug)]
pub enum AdminError {
    Connect(ConnectError),
    Command {
        endpoint: String,
        command: String,
        detail: String,
    },
    Timeout {
        endpoint: String,
        what: String,
        after: Duration,
    },
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Connect(e) => write!(f, "PgBouncer admin console {e}"),
            AdminError::Command {
                endpoint,
                command,
                detail,
            } => write!(
                f,
                "PgBouncer admin console {endpoint}: {command} failed: {detail}"
            ),
            AdminError::Timeout {
                endpoint,
                what,
                after,
            } => write!(
                f,
                "PgBouncer admin console {endpoint}: no answer to {what} within {} s",
                after.as_secs_f32()
            ),
        }
    }
}

impl std::error::Error for AdminError {}

/// One row of an admin command's answer, column name -> text value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    columns: Vec<(String, Option<String>)>,
}

impl Row {
    pub fn new(columns: Vec<(String, Option<String>)>) -> Row {
        Row { columns }
    }

    /// The value of a named column; `None` when absent or NULL.
    pub fn get(&self, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The value of the first column.
    pub fn first(&self) -> Option<&str> {
        self.columns.first().and_then(|(_, v)| v.as_deref())
    }
}

/// A way to open sessions on PgBouncer's admin console.
pub trait Console: Clone + Send + Sync + 'static {
    type Session: Session;
    /// Where the console is, for messages.
    fn endpoint(&self) -> &str;
    /// Log in; the session is closed when dropped.
    fn session(&self) -> impl Future<Output = Result<Self::Session, AdminError>> + Send;
    /// The console as a reloaded configuration names it (new connection string or
    /// timeout); sessions already open stay as they are.
    fn reconfigured(&self, target: &Target, timeout: Duration) -> Self;
}

/// One logged-in admin session.
pub trait Session: Send + Sync {
    /// Run one admin command (`SHOW DATABASES`, `RELOAD`, `KILL db`, ...).
    fn command(&self, command: &str) -> impl Future<Output = Result<Vec<Row>, AdminError>> + Send;
    /// True once the server closed this session (PgBouncer restarted or shut down).
    fn is_closed(&self) -> bool;
}

/// Whether the admin console answers; returns PgBouncer's version string.
pub async fn ping<C: Console>(console: &C) -> Result<String, AdminError> {
    let s = console.session().await?;
    let rows = s.command("SHOW VERSION").await?;
    Ok(rows
        .first()
        .and_then(Row::first)
        .unwrap_or("unknown version")
        .to_string())
}

/// Where PgBouncer says one database goes (a row of `SHOW DATABASES`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub host: Option<String>,
    pub port: u16,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(h) => write!(f, "{h}:{}", self.port),
            None => write!(f, "the default unix socket, port {}", self.port),
        }
    }
}

/// One database as `SHOW DATABASES` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Database {
    pub name: String,
    pub route: Route,
    /// `paused` column: 1 after `PAUSE` or `KILL`, until `RESUME`.
    pub paused: bool,
}

/// `SHOW DATABASES`, parsed. PgBouncer's own `pgbouncer` pseudo-database is left out.
pub async fn databases<S: Session>(s: &S) -> Result<Vec<Database>, AdminError> {
    let rows = s.command("SHOW DATABASES").await?;
    let mut out = Vec::new();
    for r in rows {
        let Some(name) = r.get("name") else { continue };
        if name == "pgbouncer" {
            continue;
        }
        let port = r.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
        let host = r.get("host").filter(|h| !h.is_empty()).map(str::to_string);
        out.push(Database {
            name: name.to_string(),
            route: Route { host, port },
            paused: r.get("paused").is_some_and(|p| p == "1"),
        });
    }
    Ok(out)
}

/// PgBouncer's admin parser takes a database name as a bare word or in double quotes.
/// Clients waiting for a server in these databases (`SHOW POOLS`, `cl_waiting` summed
/// over users): the clients a pause is holding.
pub async fn waiting_clients<S: Session>(s: &S, databases: &[String]) -> Result<u64, AdminError> {
    let rows = s.command("SHOW POOLS").await?;
    Ok(rows
        .iter()
        .filter(|r| {
            r.get("database")
                .is_some_and(|d| databases.iter().any(|x| x == d))
        })
        .filter_map(|r| r.get("cl_waiting").and_then(|w| w.parse::<u64>().ok()))
        .sum())
}

/// A setting's current value (`SHOW CONFIG`).
pub async fn setting<S: Session>(s: &S, key: &str) -> Result<Option<String>, AdminError> {
    let rows = s.command("SHOW CONFIG").await?;
    Ok(rows
        .iter()
        .find(|r| r.get("key") == Some(key))
        .and_then(|r| r.get("value"))
        .map(str::to_string))
}

pub fn quote_ident(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The real PgBouncer admin console.
#[derive(Clone, Debug)]
pub struct Bouncer {
    target: Target,
    timeout: Duration,
}

impl Bouncer {
    pub fn new(target: Target, timeout: Duration) -> Bouncer {
        Bouncer { target, timeout }
    }
}

/// One connection to PgBouncer's admin console, closed when dropped.
pub struct AdminSession {
    client: Client,
    task: AbortHandle,
    endpoint: String,
    timeout: Duration,
}

impl Drop for AdminSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session for AdminSession {
    /// Only `simple_query`: any extended-protocol call makes PgBouncer drop the connection.
    async fn command(&self, command: &str) -> Result<Vec<Row>, AdminError> {
        let work = self.client.simple_query(command);
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(messages)) => Ok(messages
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(Row::new(
                        r.columns()
                            .iter()
                            .enumerate()
                            .map(|(i, c)| (c.name().to_string(), r.get(i).map(str::to_string)))
                            .collect(),
                    )),
                    _ => None,
                })
                .collect()),
            Ok(Err(e)) => Err(AdminError::Command {
                endpoint: self.endpoint.clone(),
                command: command.to_string(),
                detail: error_chain(&e),
            }),
            Err(_) => Err(AdminError::Timeout {
                endpoint: self.endpoint.clone(),
                what: command.to_string(),
                after: self.timeout,
            }),
        }
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

impl Console for Bouncer {
    type Session = AdminSession;

    fn endpoint(&self) -> &str {
        &self.target.endpoint
    }

    fn reconfigured(&self, target: &Target, timeout: Duration) -> Bouncer {
        Bouncer::new(target.clone(), timeout)
    }

    async fn session(&self) -> Result<AdminSession, AdminError> {
        let endpoint = self.target.endpoint.clone();
        let connect = tokio::time::timeout(self.timeout, self.target.connect()).await;
        let (client, handle) = match connect {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(AdminError::Connect(e)),
            Err(_) => {
                return Err(AdminError::Timeout {
                    endpoint,
                    what: "the login".into(),
                    after: self.timeout,
                });
            }
        };
        let session = AdminSession {
            client,
            task: handle.abort_handle(),
            endpoint,
            timeout: self.timeout,
        };
        // `SHOW VERSION` proves this is an admin console we may use, not just an open port.
        session.command("SHOW VERSION").await?;
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_quoted_for_the_admin_console_when_needed() {
        assert_eq!(quote_ident("appdb"), "appdb");
        assert_eq!(quote_ident("App-DB"), "\"App-DB\"");
    }

    #[test]
    fn rows_are_read_by_column_name() {
        let r = Row::new(vec![
            ("name".into(), Some("appdb".into())),
            ("host".into(), None),
        ]);
        assert_eq!(r.get("name"), Some("appdb"));
        assert_eq!(r.get("host"), None);
        assert_eq!(r.first(), Some("appdb"));
    }
}
