//! A PgBouncer admin console in memory, for unit tests of the switch and the main loop.
//! It behaves like the real one where rebouncer depends on it (measured, CRATES.md
//! section 2): `RELOAD` re-reads the file the symlink points at and answers success even
//! when it cannot; `KILL` and `PAUSE` leave a database paused until `RESUME`; `RESUME` of a
//! database that is not paused is an error. Faults are injected per command.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::admin::{AdminError, Console, Database, Route, Row, Session};
use crate::config;
use crate::switch;

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
    /// Incremented by `restart`: sessions from before it count as closed.
    generation: u64,
    /// Commands starting with one of these take effect but are never answered, as a real
    /// `PAUSE` waits for server connections that are never released.
    hangs: Vec<String>,
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
        let Some(target) = switch::link_target(&i.symlink) else {
            return;
        };
        let Ok(node) = config::read_node_file(&target) else {
            return; // like PgBouncer: a file it cannot read changes nothing here
        };
        let old = std::mem::take(&mut i.databases);
        i.databases = node
            .databases
            .into_iter()
            .map(|d| Database {
                paused: old.iter().any(|o| o.name == d.name && o.paused),
                name: d.name,
                route: Route {
                    host: d.host,
                    port: d.port,
                },
            })
            .collect();
    }

    pub fn set_up(&self, up: bool) {
        self.inner.lock().unwrap().up = up;
    }

    /// A restart: sessions are closed, paused databases are forgotten, the file is re-read.
    pub fn restart(&self) {
        {
            let mut i = self.inner.lock().unwrap();
            i.generation += 1;
            i.databases.clear();
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
                "SHOW" => return Ok(Vec::new()),
                "KILL" | "PAUSE" => {
                    let db = word(command);
                    match i.databases.iter_mut().find(|d| d.name == db) {
                        Some(d) => d.paused = true,
                        None => return Err(error(command, &format!("no such database: {db}"))),
                    }
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
                "SET" => false,
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
