//! The simulation's seams: the fake servers rebouncer's monitors ask (through [`Probe`])
//! and the PgBouncer console it drives (through [`Console`]), both faulted on demand, and
//! the books where every answer and every admin command is kept for the rules to read.

use super::*;
/// What a probe told rebouncer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    Master(u32),
    Standby(u32),
    Silent,
    Down,
}

/// The simulation's own books, shared with the probes and the console.
pub(super) struct Books {
    /// Which rebouncer is running (bumped at every restart).
    pub(super) run: u32,
    /// Every answer a probe returned: (when, which run, node index from 0, answer).
    pub(super) answers: Vec<(Instant, u32, usize, Answer)>,
    /// Faults in force: (command prefix, hushed rather than failed).
    pub(super) faults: Vec<(&'static str, bool)>,
    /// PgBouncer refuses logins.
    pub(super) down: bool,
    /// Until when the console or rebouncer could not be counted on; the bound of rule c
    /// runs from there.
    pub(super) unreliable_until: Instant,
    pub(super) state_file: PathBuf,
    pub(super) symlink: PathBuf,
    pub(super) root: PathBuf,
    pub(super) violations: Vec<String>,
    /// Since when a database has been paused in PgBouncer, from the command that paused
    /// it (a pause can end and start again between two looks).
    pub(super) paused_since: Option<Instant>,
    /// When the running rebouncer started.
    pub(super) run_started: Instant,
    /// What the histories exercised, for the benchmark's figures: moves of PgBouncer
    /// checked, `PAUSE`s sent, kills of rebouncer that left a database paused.
    pub(super) moves: u64,
    pub(super) pauses: u64,
    pub(super) kills_mid_pause: u64,
}

impl Books {
    fn latest(&self, node: usize, at: Instant) -> Option<Answer> {
        self.answers
            .iter()
            .rev()
            .find(|(t, run, n, _)| *run == self.run && *n == node && *t <= at)
            .map(|a| a.3)
    }

    /// Rules a and b, when PgBouncer is about to re-read a file that routes to `to`.
    fn check_move(&mut self, to: usize, at: Instant) {
        self.moves += 1;
        let seen_top = self
            .answers
            .iter()
            .filter(|(t, run, _, _)| *run == self.run && *t <= at)
            .filter_map(|a| match a.3 {
                Answer::Master(tl) => Some(tl),
                _ => None,
            })
            .max();
        let remembered = std::fs::read_to_string(&self.state_file)
            .ok()
            .and_then(|text| State::parse(&self.state_file, &text).ok())
            .and_then(|s| s.timelines.highest(Some(42)));
        let top = seen_top.max(remembered);
        let latest: Vec<Option<Answer>> = (0..NODES).map(|n| self.latest(n, at)).collect();
        match latest[to] {
            Some(Answer::Master(tl)) => {
                if Some(tl) < top {
                    self.violations.push(format!(
                        "a: PgBouncer moved to pg{} on timeline {tl}, below timeline {top:?} \
                         (a master showed {seen_top:?}, the state file says {remembered:?})",
                        to + 1
                    ));
                }
                let peers = latest
                    .iter()
                    .enumerate()
                    .filter(|(n, a)| *n != to && **a == Some(Answer::Master(tl)))
                    .count();
                if peers > 0 && Some(tl) >= top {
                    self.violations.push(format!(
                        "b: PgBouncer moved to pg{} while {} other master(s) share its timeline {tl}: {latest:?}",
                        to + 1,
                        peers
                    ));
                }
            }
            other => self.violations.push(format!(
                "a: PgBouncer moved to pg{}, whose last answer was {other:?}",
                to + 1
            )),
        }
    }
}

pub(super) type BooksRef = Arc<Mutex<Books>>;

/// A probe that notes every answer in the books.
pub(super) struct SimProbe {
    pub(super) inner: FakeProbe,
    pub(super) node: usize,
    pub(super) books: BooksRef,
}

impl SimProbe {
    fn note(&self, o: &Observation) {
        let answer = match (o.state, o.timeline) {
            _ if o.hung => Answer::Silent,
            (NodeState::Master, Some(t)) => Answer::Master(t.timeline),
            (NodeState::Standby, Some(t)) => Answer::Standby(t.timeline),
            _ => Answer::Down,
        };
        let mut b = self.books.lock().unwrap();
        let run = b.run;
        b.answers.push((Instant::now(), run, self.node, answer));
    }
}

impl Probe for SimProbe {
    async fn check(&mut self) -> Observation {
        let o = self.inner.check().await;
        self.note(&o);
        o
    }
    async fn check_fresh(&mut self) -> Observation {
        let o = self.inner.check_fresh().await;
        self.note(&o);
        o
    }
    fn keeps_connections(&self) -> bool {
        self.inner.keeps_connections()
    }
}

/// The fake PgBouncer seen through the simulation: faults injected per command, a
/// command answered within `timeout` or not at all (as the real console's client does),
/// and every `RELOAD` that would move PgBouncer checked against rules a and b.
#[derive(Clone)]
pub(super) struct SimConsole {
    pub(super) bouncer: FakeBouncer,
    pub(super) books: BooksRef,
}

pub(super) struct SimSession {
    pub(super) inner: FakeSession,
    pub(super) books: BooksRef,
    pub(super) bouncer: FakeBouncer,
}

pub(super) fn fault(books: &BooksRef, command: &str) -> Option<bool> {
    let b = books.lock().unwrap();
    b.faults
        .iter()
        .find(|(prefix, _)| command.starts_with(prefix))
        .map(|f| f.1)
}

pub(super) fn timed_out(what: &str) -> AdminError {
    AdminError::Timeout {
        endpoint: "sim-pgbouncer".into(),
        what: what.into(),
        after: TIMEOUT,
    }
}

impl Console for SimConsole {
    type Session = SimSession;

    fn endpoint(&self) -> &str {
        "sim-pgbouncer"
    }

    fn reconfigured(&self, _: &crate::conninfo::Target, _: Duration) -> SimConsole {
        self.clone()
    }

    async fn session(&self) -> Result<SimSession, AdminError> {
        match fault(&self.books, "LOGIN") {
            Some(false) => {
                return Err(AdminError::Command {
                    endpoint: "sim-pgbouncer".into(),
                    command: "the login".into(),
                    detail: "no more connections allowed (max_client_conn)".into(),
                });
            }
            Some(true) => {
                sleep(TIMEOUT).await;
                return Err(timed_out("the login"));
            }
            None => {}
        }
        let inner = self.bouncer.session().await?;
        Ok(SimSession {
            inner,
            books: self.books.clone(),
            bouncer: self.bouncer.clone(),
        })
    }
}

impl SimSession {
    /// The node the symlink's file routes to, and the one PgBouncer routes to now.
    fn routes(&self) -> (Option<usize>, Option<usize>) {
        let b = self.books.lock().unwrap();
        let linked = std::fs::read_link(&b.symlink).ok().and_then(|p| {
            let p = if p.is_absolute() { p } else { b.root.join(p) };
            (0..NODES).find(|n| p == b.root.join(format!("nodes/pg{}.ini", n + 1)))
        });
        let routed = self
            .bouncer
            .databases()
            .first()
            .map(|d| (d.route.port - PORT) as usize - 1);
        (linked, routed)
    }
}

impl crate::admin::Session for SimSession {
    async fn command(&self, command: &str) -> Result<Vec<Row>, AdminError> {
        if command == "RELOAD"
            && !self.inner.is_closed()
            && let (Some(to), routed) = self.routes()
            && routed != Some(to)
        {
            self.books.lock().unwrap().check_move(to, Instant::now());
        }
        if command.starts_with("PAUSE") {
            self.books.lock().unwrap().pauses += 1;
        }
        let hushed = match fault(&self.books, command) {
            Some(false) => {
                return Err(AdminError::Command {
                    endpoint: "sim-pgbouncer".into(),
                    command: command.into(),
                    detail: "injected failure".into(),
                });
            }
            Some(true) => true,
            None => false,
        };
        let was_paused = !self.bouncer.paused().is_empty();
        let sent = Instant::now();
        let result = self.inner.command(command).await;
        let paused = !self.bouncer.paused().is_empty();
        if paused != was_paused {
            // Clients wait from the command that paused the database.
            self.books.lock().unwrap().paused_since = paused.then_some(sent);
        } else if paused && command.starts_with("PAUSE") {
            // A new hold keeps a database an earlier pause left paused (its RESUME failed):
            // the clock runs on from that pause. Only a later rebouncer, whose state file
            // says what is paused but not since when, counts from its own start.
            let mut b = self.books.lock().unwrap();
            let run_started = b.run_started;
            if let Some(since) = &mut b.paused_since {
                *since = (*since).max(run_started);
            }
        }
        if hushed {
            sleep(TIMEOUT).await;
            return Err(timed_out(command));
        }
        result
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
}
