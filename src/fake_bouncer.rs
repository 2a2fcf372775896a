//! A PgBouncer admin console in memory, for unit tests of the switch and the main loop.
//! It keeps its own books and behaves like PgBouncer 1.18 where rebouncer depends on it
//! (checked against the real one; see docs/pgbouncer.md): `RELOAD` re-reads the file the
//! symlink points at with its own small reader (never rebouncer's), answers success even
//! when it cannot read it, and puts settings changed by `SET` back to the file's values;
//! `KILL` and `PAUSE` leave a database paused until `RESUME`; `RESUME` of a database that
//! is not paused is an error; a global `PAUSE` refuses `KILL` and `PAUSE` of a database;
//! `SHOW CONFIG` and `SET` know `server_login_retry`. Faults are injected per command.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::admin::{AdminError, Console, Database, Route, Row, Session};

/// PgBouncer's default `server_login_retry`, in seconds.
pub const DEFAULT_LOGIN_RETRY: &str = "15";

#[derive(Debug, Default)]
struct Inner {
    symlink: PathBuf,
    up: bool,
    databases: Vec<Database>,
    /// Every command received, in order (logins as "LOGIN").
    log: Vec<String>,
    /// Injected faults, for every session; the first that matches a command decides.
    faults: Vec<Fault>,
    /// A file whose contents are noted with every command (see `watch_file`).
    watched: Option<PathBuf>,
    /// (command, contents of the watched file when the command arrived).
    seen: Vec<(String, String)>,
    /// (command, `server_login_retry` when the command arrived).
    retry_seen: Vec<(String, String)>,
    /// Incremented by `restart`: sessions from before it count as closed.
    generation: u64,
    /// Commands starting with one of these take effect but are never answered, as a real
    /// `PAUSE` waits for server connections that are never released.
    hangs: Vec<String>,
    /// A global `PAUSE` is in force (apart from each database's own `paused`).
    paused_all: bool,
    /// `server_login_retry` now: the file's value (or the default) until a `SET`.
    login_retry: String,
}

#[derive(Debug)]
struct Fault {
    prefix: String,
    detail: String,
    /// Matching commands still to let through before failing.
    skip: usize,
    /// Failures left; None: for ever.
    times: Option<usize>,
}

impl Inner {
    fn arrived(&mut self, command: &str) {
        self.log.push(command.to_string());
        self.retry_seen
            .push((command.to_string(), self.login_retry.clone()));
        if let Some(p) = &self.watched {
            let contents = std::fs::read_to_string(p).unwrap_or_default();
            self.seen.push((command.to_string(), contents));
        }
    }

    /// The error detail if an injected fault hits `command` (`LOGIN` for a login).
    fn fault(&mut self, command: &str) -> Option<String> {
        let f = self
            .faults
            .iter_mut()
            .find(|f| command.starts_with(f.prefix.as_str()) && f.times != Some(0))?;
        if f.skip > 0 {
            f.skip -= 1;
            return None;
        }
        if let Some(t) = &mut f.times {
            *t -= 1;
        }
        Some(f.detail.clone())
    }
}

#[derive(Clone, Debug)]
pub struct FakeBouncer {
    inner: Arc<Mutex<Inner>>,
}

impl FakeBouncer {
    /// A running PgBouncer started with `symlink` as its config file (loaded now).
    pub fn new(symlink: PathBuf) -> FakeBouncer {
        let b = FakeBouncer {
            inner: Arc::new(Mutex::new(Inner {
                symlink,
                up: true,
                ..Inner::default()
            })),
        };
        b.load();
        b
    }

    fn load(&self) {
        let mut i = self.inner.lock().unwrap();
        // PgBouncer opens the path it was started with; the kernel follows the link.
        let Ok(text) = std::fs::read_to_string(&i.symlink) else {
            return; // like PgBouncer: a file it cannot read changes nothing here
        };
        let file = read_config(&text);
        let old = std::mem::take(&mut i.databases);
        i.databases = file
            .databases
            .into_iter()
            .map(|(name, route)| Database {
                paused: old.iter().any(|o| o.name == name && o.paused),
                name,
                route,
            })
            .collect();
        i.login_retry = file
            .login_retry
            .unwrap_or_else(|| DEFAULT_LOGIN_RETRY.to_string());
    }

    pub fn set_up(&self, up: bool) {
        self.inner.lock().unwrap().up = up;
    }

    /// A restart: sessions are closed, pauses are forgotten, the file is re-read.
    pub fn restart(&self) {
        {
            let mut i = self.inner.lock().unwrap();
            i.generation += 1;
            i.databases.clear();
            i.paused_all = false;
        }
        self.load();
    }

    /// Make every command starting with `prefix` fail with `detail` (None: stop failing).
    /// "LOGIN" makes logins fail.
    pub fn fail(&self, prefix: &str, detail: Option<&str>) {
        let mut i = self.inner.lock().unwrap();
        i.faults.retain(|f| f.prefix != prefix);
        if let Some(d) = detail {
            i.faults.push(Fault {
                prefix: prefix.into(),
                detail: d.into(),
                skip: 0,
                times: None,
            });
        }
    }

    /// Make commands starting with `prefix` take effect and then hang (false: answer again).
    pub fn hang(&self, prefix: &str, on: bool) {
        let mut i = self.inner.lock().unwrap();
        i.hangs.retain(|h| h != prefix);
        if on {
            i.hangs.push(prefix.into());
        }
    }

    /// Let the next `skip` commands starting with `prefix` through, then fail `times` of them.
    pub fn fail_after(&self, prefix: &str, detail: &str, skip: usize, times: usize) {
        self.inner.lock().unwrap().faults.push(Fault {
            prefix: prefix.into(),
            detail: detail.into(),
            skip,
            times: Some(times),
        });
    }

    /// Note the contents of `path` (empty when unreadable) as every later command arrives:
    /// what a crash at that command would leave on disk.
    pub fn watch_file(&self, path: PathBuf) {
        self.inner.lock().unwrap().watched = Some(path);
    }

    /// The watched file's contents when the first command starting with `prefix` arrived.
    pub fn file_at(&self, prefix: &str) -> Option<String> {
        let i = self.inner.lock().unwrap();
        i.seen
            .iter()
            .find(|(c, _)| c.starts_with(prefix))
            .map(|(_, f)| f.clone())
    }

    pub fn log(&self) -> Vec<String> {
        self.inner.lock().unwrap().log.clone()
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.log().iter().filter(|c| c.starts_with(prefix)).count()
    }

    pub fn databases(&self) -> Vec<Database> {
        self.inner.lock().unwrap().databases.clone()
    }

    pub fn paused(&self) -> Vec<String> {
        self.databases()
            .into_iter()
            .filter(|d| d.paused)
            .map(|d| d.name)
            .collect()
    }

    /// Pause a database as an operator would on the console.
    pub fn pause_by_hand(&self, db: &str) {
        let mut i = self.inner.lock().unwrap();
        for d in i.databases.iter_mut().filter(|d| d.name == db) {
            d.paused = true;
        }
    }

    /// `PAUSE` without a database, as an operator would type it on the console.
    pub fn pause_all_by_hand(&self) {
        self.inner.lock().unwrap().paused_all = true;
    }

    /// Whether a global `PAUSE` is in force.
    pub fn paused_all(&self) -> bool {
        self.inner.lock().unwrap().paused_all
    }

    /// `server_login_retry` when the first command starting with `prefix` arrived.
    pub fn server_login_retry_at(&self, prefix: &str) -> Option<String> {
        let i = self.inner.lock().unwrap();
        i.retry_seen
            .iter()
            .find(|(c, _)| c.starts_with(prefix))
            .map(|(_, v)| v.clone())
    }

    /// `server_login_retry` as `SHOW CONFIG` would show it now.
    pub fn server_login_retry(&self) -> String {
        self.inner.lock().unwrap().login_retry.clone()
    }
}

/// What the fake reads of a PgBouncer config file: the `[databases]` entries' host and
/// port (in file order, a repeated name redefining the entry in place) and
/// `server_login_retry` from `[pgbouncer]`. Enough for files the tests write, not a
/// validator: lines it does not understand are skipped.
#[derive(Debug, Default, PartialEq)]
struct ConfigFile {
    databases: Vec<(String, Route)>,
    login_retry: Option<String>,
}

fn read_config(text: &str) -> ConfigFile {
    let mut out = ConfigFile::default();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_ascii_lowercase();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match section.as_str() {
            // `*` is the fallback for unlisted names, not a database of its own.
            "databases" if key != "*" => {
                let name = key.trim_matches('\'').to_string();
                let route = route_of(value);
                match out.databases.iter_mut().find(|(n, _)| *n == name) {
                    Some(entry) => entry.1 = route,
                    None => out.databases.push((name, route)),
                }
            }
            "pgbouncer" if key == "server_login_retry" => {
                out.login_retry = Some(value.to_string());
            }
            _ => {}
        }
    }
    out
}

/// `host` and `port` of a connection string (`key=value` words; a value may be in single
/// quotes); no host means the default socket, no port 5432, as in PgBouncer.
fn route_of(connstr: &str) -> Route {
    let mut route = Route {
        host: None,
        port: 5432,
    };
    let mut rest = connstr.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('\'') {
            Some(q) => q.split_once('\'').unwrap_or((q, "")),
            None => after.split_once(' ').unwrap_or((after, "")),
        };
        match key.trim() {
            "host" => route.host = Some(value.to_string()),
            "port" => route.port = value.parse().unwrap_or(0),
            _ => {}
        }
        rest = next.trim_start();
    }
    route
}

/// `SET key = value` as PgBouncer's console parses it: the value a quoted string or one
/// word. None: not that shape (PgBouncer answers "invalid command").
fn parse_set(command: &str) -> Option<(&str, &str)> {
    let rest = command.strip_prefix("SET")?.trim_start();
    let (key, value) = rest.split_once('=')?;
    let (key, value) = (key.trim(), value.trim());
    let word = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !word(key) {
        return None;
    }
    match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(quoted) => Some((key, quoted)),
        None if word(value) => Some((key, value)),
        None => None,
    }
}

/// A `server_login_retry` PgBouncer takes: a number of seconds, not negative.
fn login_retry_value(v: &str) -> Option<String> {
    let n: f64 = v.trim().parse().ok()?;
    (n >= 0.0 && n.is_finite()).then(|| v.trim().to_string())
}

pub struct FakeSession {
    inner: Arc<Mutex<Inner>>,
    bouncer: FakeBouncer,
    generation: u64,
    closed: AtomicBool,
}

fn error(command: &str, detail: &str) -> AdminError {
    AdminError::Command {
        endpoint: "fake-pgbouncer".into(),
        command: command.into(),
        detail: detail.into(),
    }
}

impl Console for FakeBouncer {
    type Session = FakeSession;

    fn endpoint(&self) -> &str {
        "fake-pgbouncer"
    }

    fn reconfigured(&self, _: &crate::conninfo::Target, _: std::time::Duration) -> FakeBouncer {
        self.clone()
    }

    async fn session(&self) -> Result<FakeSession, AdminError> {
        let mut i = self.inner.lock().unwrap();
        i.arrived("LOGIN");
        if !i.up {
            return Err(error("the login", "connection refused"));
        }
        if let Some(d) = i.fault("LOGIN") {
            return Err(error("the login", &d));
        }
        Ok(FakeSession {
            inner: self.inner.clone(),
            bouncer: self.clone(),
            generation: i.generation,
            closed: AtomicBool::new(false),
        })
    }
}

impl Session for FakeSession {
    async fn command(&self, command: &str) -> Result<Vec<Row>, AdminError> {
        if self.is_closed() {
            return Err(error(command, "connection closed"));
        }
        let hang;
        let reload = {
            let mut i = self.inner.lock().unwrap();
            hang = i.hangs.iter().any(|h| command.starts_with(h.as_str()));
            i.arrived(command);
            if !i.up || i.generation != self.generation {
                self.closed.store(true, Ordering::SeqCst);
                return Err(error(command, "connection closed"));
            }
            if let Some(d) = i.fault(command) {
                return Err(error(command, &d));
            }
            let word = |c: &str| {
                c.split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_string()
            };
            match command.split_whitespace().next().unwrap_or("") {
                "SHOW" if command == "SHOW VERSION" => {
                    return Ok(vec![Row::new(vec![(
                        "version".into(),
                        Some("PgBouncer 1.18.0 (fake)".into()),
                    )])]);
                }
                "SHOW" if command == "SHOW DATABASES" => {
                    return Ok(i
                        .databases
                        .iter()
                        .map(|d| {
                            Row::new(vec![
                                ("name".into(), Some(d.name.clone())),
                                ("host".into(), d.route.host.clone()),
                                ("port".into(), Some(d.route.port.to_string())),
                                (
                                    "paused".into(),
                                    Some(if d.paused { "1" } else { "0" }.into()),
                                ),
                            ])
                        })
                        .collect());
                }
                "SHOW" if command == "SHOW CONFIG" => {
                    return Ok(vec![Row::new(vec![
                        ("key".into(), Some("server_login_retry".into())),
                        ("value".into(), Some(i.login_retry.clone())),
                        ("default".into(), Some(DEFAULT_LOGIN_RETRY.into())),
                        ("changeable".into(), Some("yes".into())),
                    ])]);
                }
                "SHOW" => return Ok(Vec::new()),
                "PAUSE" | "KILL" if i.paused_all => {
                    return Err(error(command, "already suspended/paused"));
                }
                "PAUSE" if command == "PAUSE" => {
                    i.paused_all = true;
                    false
                }
                "KILL" | "PAUSE" => {
                    let db = word(command);
                    match i.databases.iter_mut().find(|d| d.name == db) {
                        Some(d) => d.paused = true,
                        None => return Err(error(command, &format!("no such database: {db}"))),
                    }
                    false
                }
                "RESUME" if command == "RESUME" => {
                    if !i.paused_all {
                        return Err(error(command, "pooler is not paused/suspended"));
                    }
                    i.paused_all = false;
                    false
                }
                "RESUME" => {
                    let db = word(command);
                    match i.databases.iter_mut().find(|d| d.name == db) {
                        Some(d) if d.paused => d.paused = false,
                        Some(_) => {
                            return Err(error(command, &format!("database {db} is not paused")));
                        }
                        None => return Err(error(command, &format!("no such database: {db}"))),
                    }
                    false
                }
                "RELOAD" => true,
                "SET" => {
                    let invalid = || format!("invalid command '{command}', use SHOW HELP;");
                    let (key, value) =
                        parse_set(command).ok_or_else(|| error(command, &invalid()))?;
                    match (key, login_retry_value(value)) {
                        ("server_login_retry", Some(v)) => i.login_retry = v,
                        _ => return Err(error(command, "SET failed")),
                    }
                    false
                }
                _ => return Err(error(command, "unknown command")),
            }
        };
        if hang {
            std::future::pending::<()>().await;
        }
        if reload {
            self.bouncer.load();
        }
        Ok(Vec::new())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
            || self.inner.lock().unwrap().generation != self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateFile;

    fn detail(r: Result<Vec<Row>, AdminError>) -> String {
        match r {
            Err(AdminError::Command { detail, .. }) => detail,
            other => panic!("expected an error from the console, got {other:?}"),
        }
    }

    /// A fake loaded from `text` through a symlink, as PgBouncer runs in production.
    fn bouncer(text: &str) -> (tempfile::TempDir, FakeBouncer) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node1.ini");
        std::fs::write(&file, text).unwrap();
        let link = dir.path().join("pgbouncer.ini");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let b = FakeBouncer::new(link);
        (dir, b)
    }

    const NODE: &str = "[databases]\nappdb = host=127.0.0.1 port=5433 dbname=appdb\n[pgbouncer]\nlisten_port = 6432\n";

    #[test]
    fn reads_databases_and_login_retry_from_the_file_itself() {
        let f = read_config(
            "; comment\n[databases]\n\
             zeta = host=10.0.0.1 port=5433 dbname=z\n\
             sock = dbname=s\n\
             a = host='my host' port='6000'\n\
             * = host=10.0.0.9\n\
             zeta = host=10.0.0.2\n\
             [pgbouncer]\nlisten_port = 6432\nserver_login_retry = 3\n",
        );
        let route = |h: Option<&str>, port| Route {
            host: h.map(str::to_string),
            port,
        };
        assert_eq!(
            f.databases,
            [
                ("zeta".to_string(), route(Some("10.0.0.2"), 5432)),
                ("sock".to_string(), route(None, 5432)),
                ("a".to_string(), route(Some("my host"), 6000)),
            ]
        );
        assert_eq!(f.login_retry.as_deref(), Some("3"));
        assert_eq!(read_config(NODE).login_retry, None);
    }

    #[tokio::test]
    async fn show_config_and_set_keep_server_login_retry_until_a_reload() {
        let (_dir, b) = bouncer(NODE);
        let s = b.session().await.unwrap();
        let shown = |rows: Vec<Row>| {
            rows.iter()
                .find(|r| r.get("key") == Some("server_login_retry"))
                .and_then(|r| r.get("value").map(str::to_string))
        };
        assert_eq!(
            shown(s.command("SHOW CONFIG").await.unwrap()).as_deref(),
            Some("15")
        );
        s.command("SET server_login_retry = '0'").await.unwrap();
        assert_eq!(
            shown(s.command("SHOW CONFIG").await.unwrap()).as_deref(),
            Some("0")
        );
        // What PgBouncer 1.18 answers to values and keys it does not take.
        for bad in [
            "SET server_login_retry = 'abc'",
            "SET server_login_retry = '-1'",
            "SET nosuch = '1'",
        ] {
            assert_eq!(detail(s.command(bad).await), "SET failed", "{bad}");
        }
        assert_eq!(
            detail(s.command("SET server_login_retry = 2.5").await),
            "invalid command 'SET server_login_retry = 2.5', use SHOW HELP;"
        );
        s.command("SET server_login_retry = 7").await.unwrap();
        assert_eq!(b.server_login_retry(), "7");
        // RELOAD puts back what the file says, the default when it says nothing.
        s.command("RELOAD").await.unwrap();
        assert_eq!(b.server_login_retry(), "15");
    }

    #[tokio::test]
    async fn a_global_pause_refuses_kill_and_pause_of_a_database() {
        let (_dir, b) = bouncer(NODE);
        let s = b.session().await.unwrap();
        s.command("PAUSE").await.unwrap();
        assert!(b.paused_all());
        for c in ["KILL appdb", "PAUSE appdb", "PAUSE"] {
            assert_eq!(
                detail(s.command(c).await),
                "already suspended/paused",
                "{c}"
            );
        }
        // The global pause is not the database's own: SHOW DATABASES does not show it.
        assert_eq!(b.paused(), Vec::<String>::new());
        assert_eq!(
            detail(s.command("RESUME appdb").await),
            "database appdb is not paused"
        );
        s.command("RESUME").await.unwrap();
        assert_eq!(
            detail(s.command("RESUME").await),
            "pooler is not paused/suspended"
        );
        s.command("KILL appdb").await.unwrap();
        assert_eq!(b.paused(), ["appdb"]);
        // A global RESUME leaves a database's own pause alone.
        b.pause_all_by_hand();
        s.command("RESUME").await.unwrap();
        assert_eq!(b.paused(), ["appdb"]);
    }

    #[tokio::test]
    async fn the_resume_after_a_pause_lowers_server_login_retry_then_puts_it_back() {
        let (dir, b) = bouncer(NODE);
        let mut state = StateFile::load(&dir.path().join("rebouncer.state")).unwrap();
        state
            .update(|s| s.mark_resume_pending(["appdb".to_string()]))
            .await
            .unwrap();
        b.pause_by_hand("appdb");
        crate::switch::resume_paused(&b, &mut state, &["appdb".to_string()])
            .await
            .unwrap();
        assert_eq!(b.paused(), Vec::<String>::new());
        assert_eq!(
            b.server_login_retry_at("RESUME appdb").as_deref(),
            Some("0")
        );
        assert_eq!(b.server_login_retry(), "15", "{:?}", b.log());
    }
}
