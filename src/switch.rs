//! Point PgBouncer at a node: swap the config symlink atomically, `RELOAD`, confirm with
//! `SHOW DATABASES` that PgBouncer really uses the node's config, then drop the clients of
//! the databases that moved (`KILL`, then `RESUME`).
//!
//! PgBouncer facts this relies on (measured, CRATES.md section 2): the admin console speaks
//! only the simple query protocol and only its own commands; `RELOAD` answers success even
//! when the file is missing or broken (the error is only in PgBouncer's log), so success
//! is never taken from the `RELOAD` reply.
//!
//! `KILL` leaves a database paused until `RESUME`, and the pause outlives the admin session
//! that made it (CRATES.md section 0, item 15): a rebouncer that dies between the two would
//! hold those clients forever. So a database is written to the state file (`held`) before
//! its `KILL` and taken off after its `RESUME`, and [`resume_held`] resumes what a killed
//! rebouncer left there. Only those: a database someone else paused (an operator's
//! maintenance `PAUSE`) is never resumed by rebouncer.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::admin::{self, AdminError, Console, Database, Route, Session, quote_ident};
use crate::config::{self, ConfigError, DatabaseEntry, NodeFile};
use crate::state::StateFile;

mod hooks;

use hooks::Holds;

/// What to switch to, and what PgBouncer was known to use before.
#[derive(Clone, Copy, Debug)]
pub struct SwitchPlan<'a> {
    /// The config file PgBouncer is started with.
    pub symlink: &'a Path,
    /// The node's complete PgBouncer config, `<configdir>/<node>.ini`.
    pub node_file: &'a Path,
    /// Routes PgBouncer was last confirmed to use (after the last confirmed switch or drift
    /// check); `None` when nothing was confirmed yet (start-up).
    pub last_confirmed: Option<&'a [Database]>,
    /// Databases rebouncer holds with a `PAUSE` that completed (`pause_on_failover`):
    /// PgBouncer has closed all their server connections, and the clients waiting in them
    /// are the ones the pause is for, whom a `KILL` would drop. They are only resumed.
    pub paused: &'a [String],
}

/// Where the symlink points, as a switch found or left it: every error names it, so the
/// operator knows whether PgBouncer's next reload (or restart) would pick up the new node.
#[derive(Clone, Debug)]
pub struct LinkState {
    pub symlink: PathBuf,
    /// The absolute target, or why the path is not a readable link.
    pub target: Result<PathBuf, String>,
}

impl LinkState {
    fn read(symlink: &Path) -> LinkState {
        let target = match fs::read_link(symlink) {
            Ok(t) => Ok(match symlink.parent() {
                Some(dir) if t.is_relative() => dir.join(t),
                _ => t,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err("does not exist".into()),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err("is not a symlink".into()),
            Err(e) => Err(format!("cannot be read ({e})")),
        };
        LinkState {
            symlink: symlink.to_path_buf(),
            target,
        }
    }

    fn at(symlink: &Path, target: &Path) -> LinkState {
        LinkState {
            symlink: symlink.to_path_buf(),
            target: Ok(target.to_path_buf()),
        }
    }

    fn unknown(symlink: &Path, why: &str) -> LinkState {
        LinkState {
            symlink: symlink.to_path_buf(),
            target: Err(format!("is in an unknown state ({why})")),
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Ok(t) => write!(f, "{} points at {}", self.symlink.display(), t.display()),
            Err(why) => write!(f, "{} {why}", self.symlink.display()),
        }
    }
}

/// Why a switch did not complete; the next round tries again. Each message says where it
/// stopped and where the symlink points.
#[derive(Debug)]
pub enum SwitchError {
    /// The node's config cannot be used; stopped before touching the link.
    NodeFile { error: ConfigError, link: LinkState },
    /// PgBouncer's admin console did not answer; stopped before touching the link.
    Admin { error: AdminError, link: LinkState },
    /// The new link could not be put in place; `link` is the path as found afterwards.
    Symlink {
        target: PathBuf,
        error: io::Error,
        link: LinkState,
    },
    /// The link points at the node, but `RELOAD` failed.
    Reload { link: LinkState, error: AdminError },
    /// The link points at the node and `RELOAD` was sent, but PgBouncer does not (provably)
    /// route as the node's config says.
    NotApplied { link: LinkState, why: String },
}

impl fmt::Display for SwitchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchError::NodeFile { error, link } => {
                write!(f, "{error}; stopped before touching the symlink: {link}")
            }
            SwitchError::Admin { error, link } => {
                write!(f, "{error}; stopped before touching the symlink: {link}")
            }
            SwitchError::Symlink {
                target,
                error,
                link,
            } => {
                let fix = match error.kind() {
                    io::ErrorKind::PermissionDenied => {
                        "; make its directory writable for the user rebouncer runs as"
                    }
                    _ => "",
                };
                // "cannot replace symlink <path>: <error>" is what the README tells operators to look for.
                write!(
                    f,
                    "cannot replace symlink {} to point it at {}: {error}{fix}; stopped before RELOAD: {link}, \
                     and PgBouncer keeps its old config",
                    link.symlink.display(),
                    target.display()
                )
            }
            SwitchError::Reload { link, error } => write!(
                f,
                "{link}, but RELOAD failed: {error}; PgBouncer may still use its old config until a RELOAD gets through"
            ),
            SwitchError::NotApplied { link, why } => {
                write!(f, "{link} and RELOAD was sent, but {why}")
            }
        }
    }
}

impl std::error::Error for SwitchError {}

/// What a completed switch did. Everything in it is also worth a log line.
#[derive(Debug, Default)]
pub struct Switched {
    /// False when the link already pointed at the node (start-up convergence, a retry).
    pub relinked: bool,
    /// `SHOW DATABASES` right after the confirmed `RELOAD`: keep it as the next
    /// [`SwitchPlan::last_confirmed`]. (`paused` is as it was before the `KILL`s.)
    pub confirmed: Vec<Database>,
    /// The link is in place but its directory could not be synced (a power cut could bring
    /// the old link back); the switch went on. One line for the log.
    pub link_warning: Option<String>,
    /// The `KILL`s and `RESUME`s.
    pub resets: Resets,
}

/// What the `KILL`s and `RESUME`s of a switch (or of [`reset`]) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resets {
    /// Databases whose client and server connections were dropped (`KILL` went through).
    pub reset: Vec<String>,
    /// Databases that moved but whose `KILL` failed: their clients may stay on the old
    /// server. The state file lists them (`unreset`) until [`reset`] gets them through.
    pub not_reset: Vec<String>,
    /// Databases an earlier attempt or an earlier rebouncer left held, resumed now.
    pub resumed: Vec<String>,
    /// Databases still paused by rebouncer because `RESUME` failed; the state file lists
    /// them, and [`resume_held`] at the next rounds resumes them.
    pub still_held: Vec<String>,
    /// Databases someone else had paused: `KILL`ed so that their clients leave the old
    /// server, but left paused for whoever paused them.
    pub left_paused: Vec<String>,
    /// One line each for the log (warning level): failed `KILL`/`RESUME`, the state file
    /// not written, databases left paused.
    pub warnings: Vec<String>,
}

/// Make PgBouncer use `plan.node_file`. Order matters: the node file is checked and the
/// admin console must answer before the link is touched, so a switch that cannot complete
/// leaves PgBouncer's config as it was. After a confirmed `RELOAD` the databases that moved
/// are `KILL`ed and `RESUME`d, and so is every database `state` still lists as held. The
/// databases about to move are recorded in `state` before the `RELOAD`, both as to be
/// reset and as held, so that a rebouncer killed anywhere between the `RELOAD` and the
/// `RESUME` leaves the next one enough to finish: `KILL` what may still have clients on the
/// old server, `RESUME` what may still be paused.
///
/// What moved is decided against `plan.last_confirmed` and against `SHOW DATABASES` taken
/// before this attempt's `RELOAD`: a retry after a `RELOAD` that went through sees no move
/// in the latter, and PgBouncer changed by hand since the last confirmation shows only in
/// the latter. A database listed in neither did not move.
pub async fn run<C: Console>(
    console: &C,
    state: &mut StateFile,
    plan: SwitchPlan<'_>,
) -> Result<Switched, SwitchError> {
    run_with(console, state, plan, sync_dir, Holds::from_env()).await
}

async fn run_with<C: Console>(
    console: &C,
    state: &mut StateFile,
    plan: SwitchPlan<'_>,
    sync: SyncDir,
    holds: Holds,
) -> Result<Switched, SwitchError> {
    let SwitchPlan {
        symlink,
        node_file,
        last_confirmed,
        paused,
    } = plan;
    let (sl, nf) = (symlink.to_path_buf(), node_file.to_path_buf());
    let (node, link, already) = off_thread(move || {
        (
            config::read_node_file(&nf),
            LinkState::read(&sl),
            points_at(&sl, &nf),
        )
    })
    .await
    .map_err(|why| SwitchError::NodeFile {
        error: ConfigError(format!("cannot read {}: {why}", node_file.display())),
        link: LinkState::unknown(symlink, "not read"),
    })?;
    let node = node.map_err(|error| SwitchError::NodeFile {
        error,
        link: link.clone(),
    })?;
    let session = console
        .session()
        .await
        .map_err(|error| SwitchError::Admin {
            error,
            link: link.clone(),
        })?;
    let before = admin::databases(&session)
        .await
        .map_err(|error| SwitchError::Admin {
            error,
            link: link.clone(),
        })?;

    // What moves is known before the RELOAD: `before` is PgBouncer's routes until then.
    let mut moved = moved(&node, last_confirmed, &before);
    moved.retain(|db| !paused.contains(db));
    let held_before = state.state().held.clone();
    let ours = paused_by_us(&moved, &held_before, &before);
    let mut record_warning = None;
    if !moved.is_empty() {
        let (m, o) = (moved.clone(), ours.clone());
        if let Err(e) = state
            .update(|s| {
                s.must_reset(m);
                s.hold(o);
            })
            .await
        {
            record_warning = Some(format!(
                "{e}; the switch of database(s) {} goes ahead unrecorded: if rebouncer dies before their KILL and \
                 RESUME, send KILL <db> and then RESUME <db> on the admin console by hand",
                moved.join(", ")
            ));
        }
    }

    let mut link_warning = None;
    let link = if already {
        link
    } else {
        let (sl, nf) = (symlink.to_path_buf(), node_file.to_path_buf());
        let (result, now) = off_thread(move || {
            let r = replace_symlink_with(&sl, &nf, sync);
            (r, LinkState::read(&sl))
        })
        .await
        .map_err(|why| SwitchError::Symlink {
            target: node_file.to_path_buf(),
            error: io::Error::other(why.clone()),
            link: LinkState::unknown(symlink, &why),
        })?;
        match result {
            Ok(Replaced { unsynced }) => {
                link_warning = unsynced.map(|e| {
                    format!(
                        "{} now points at {}, but syncing its directory failed: {e}; the switch went on, \
                         but a power cut could bring the old link back (check the disk and rebouncer's open-file limit)",
                        symlink.display(),
                        node_file.display()
                    )
                });
            }
            Err(error) => {
                return Err(SwitchError::Symlink {
                    target: node_file.to_path_buf(),
                    error,
                    link: now,
                });
            }
        }
        LinkState::at(symlink, node_file)
    };
    session
        .command("RELOAD")
        .await
        .map_err(|error| SwitchError::Reload {
            link: link.clone(),
            error,
        })?;
    drop(session);

    // A fresh login: a RELOAD of a broken file can reset PgBouncer's settings so that
    // the admin user is refused from then on; the old session would not notice.
    let check = console
        .session()
        .await
        .map_err(|e| SwitchError::NotApplied {
            link: link.clone(),
            why: format!(
                "a new admin login then failed: {e}; PgBouncer may have loaded a broken config: see PgBouncer's log"
            ),
        })?;
    let after = admin::databases(&check)
        .await
        .map_err(|e| SwitchError::NotApplied {
            link: link.clone(),
            why: format!("{e}; cannot confirm where PgBouncer routes now"),
        })?;
    confirm(&node, symlink, &after).map_err(|why| SwitchError::NotApplied {
        link: link.clone(),
        why,
    })?;

    if !moved.is_empty() {
        holds.after_reload().await;
    }

    // Databases that moved: drop every client and server connection to the old server and
    // resume at once. A session-mode client would otherwise stay on the old primary until
    // it disconnects, and PgBouncer would keep delaying new logins after the failed ones
    // to the old primary (server_login_retry) although the new one is up.
    let mut resets = kill_and_resume(
        console,
        Some(check),
        state,
        Held {
            before: &held_before,
            moved: &moved,
            now: &after,
            paused,
        },
        holds,
    )
    .await;
    resets.warnings.splice(0..0, record_warning);
    Ok(Switched {
        relinked: !already,
        confirmed: after,
        link_warning,
        resets,
    })
}

/// The node file's databases whose route differs from the last confirmed one or from the
/// one PgBouncer used just before this attempt's `RELOAD`.
fn moved(node: &NodeFile, last_confirmed: Option<&[Database]>, before: &[Database]) -> Vec<String> {
    node.databases
        .iter()
        .filter(|db| {
            let now = Route {
                host: db.host.clone(),
                port: db.port,
            };
            let differs = |list: &[Database]| {
                list.iter()
                    .find(|d| d.name == db.name)
                    .is_some_and(|d| d.route != now)
            };
            last_confirmed.is_some_and(differs) || differs(before)
        })
        .map(|db| db.name.clone())
        .collect()
}

/// `KILL` (and then `RESUME`) the databases the state file lists as to be reset: their
/// clients may still be on the old server, because a switch's `KILL` failed or because a
/// rebouncer died between its `RELOAD` and its `KILL`. Also resumes whatever the state file
/// lists as held. Databases PgBouncer no longer has are dropped from the list. `Err` only
/// when the admin console does not answer; nothing was sent then.
pub async fn reset<C: Console>(console: &C, state: &mut StateFile) -> Result<Resets, AdminError> {
    let listed = state.state().unreset.clone();
    let session = console.session().await?;
    let now = admin::databases(&session).await?;
    let (present, gone): (Vec<String>, Vec<String>) = listed
        .into_iter()
        .partition(|db| now.iter().any(|d| d.name == *db));
    let held = state.state().held.clone();
    let mut r = kill_and_resume(
        console,
        Some(session),
        state,
        Held {
            before: &held,
            moved: &present,
            now: &now,
            paused: &[],
        },
        Holds::from_env(),
    )
    .await;
    if !gone.is_empty()
        && let Err(e) = state
            .update(|s| s.unreset.retain(|d| !gone.contains(d)))
            .await
    {
        r.warnings.push(e.to_string());
    }
    Ok(r)
}

/// What [`resume_held`] resumed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// Databases resumed (or found not paused: PgBouncer restarted, or RESUMEd by hand).
    pub resumed: Vec<String>,
    /// The state file could not be updated afterwards; one line for the log.
    pub warning: Option<String>,
}

/// Databases rebouncer holds paused that it could not resume.
#[derive(Debug)]
pub struct ResumeError {
    /// Resumed before the failure.
    pub resumed: Vec<String>,
    /// Still paused, still listed in the state file.
    pub still_held: Vec<String>,
    pub state_file: PathBuf,
    pub error: AdminError,
}

impl fmt::Display for ResumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.resumed.is_empty() {
            write!(f, "resumed {}, but ", self.resumed.join(", "))?;
        }
        write!(
            f,
            "database(s) {} stay paused by rebouncer's KILL (listed in {}): RESUME failed: {}; \
             their new clients wait until it succeeds (retried every round; by hand: RESUME <db> on the admin console)",
            self.still_held.join(", "),
            self.state_file.display(),
            self.error
        )
    }
}

impl std::error::Error for ResumeError {}

/// `RESUME` every database the state file lists as held: left by a rebouncer that died
/// between `KILL` and `RESUME`, or by a `RESUME` that failed. Call at start-up once the
/// admin console answers, and at every round while the state lists any. Nothing else is
/// resumed: a database someone else paused stays paused.
pub async fn resume_held<C: Console>(
    console: &C,
    state: &mut StateFile,
) -> Result<Resumed, ResumeError> {
    resume_held_with(console, state, &[]).await
}

/// [`resume_held`], for a hold whose `PAUSE` of `paused` completed and whose master is
/// back: PgBouncer's cached login failure is cleared first (see [`lift_login_retry`]).
pub async fn resume_paused<C: Console>(
    console: &C,
    state: &mut StateFile,
    paused: &[String],
) -> Result<Resumed, ResumeError> {
    resume_held_with(console, state, paused).await
}

async fn resume_held_with<C: Console>(
    console: &C,
    state: &mut StateFile,
    paused: &[String],
) -> Result<Resumed, ResumeError> {
    let held = state.state().held.clone();
    if held.is_empty() {
        return Ok(Resumed::default());
    }
    let mut conn = Conn {
        console,
        session: None,
    };
    let mut warnings = Vec::new();
    let (done, left, error) = resume_gated(&mut conn, &held, paused, &mut warnings).await;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let warning = forget(state, &done, &[]).await;
    match error {
        Some(error) if !left.is_empty() => Err(ResumeError {
            resumed: done,
            still_held: left,
            state_file: state.path().to_path_buf(),
            error,
        }),
        _ => Ok(Resumed {
            resumed: done,
            warning,
        }),
    }
}

/// What [`kill_and_resume`] works on.
struct Held<'a> {
    /// The databases the state file listed as held before this switch began: what an
    /// earlier attempt or an earlier rebouncer left paused.
    before: &'a [String],
    /// The databases to `KILL`.
    moved: &'a [String],
    /// PgBouncer's databases now.
    now: &'a [Database],
    /// The databases a failover `PAUSE` holds; they are resumed with PgBouncer's cached
    /// login failure cleared first.
    paused: &'a [String],
}

/// The databases of `moved` whose pause after the `KILL` is rebouncer's to end: all but
/// those someone else had paused already (paused, and not listed as held by rebouncer).
fn paused_by_us(moved: &[String], held: &[String], now: &[Database]) -> Vec<String> {
    moved
        .iter()
        .filter(|db| held.contains(db) || !now.iter().any(|d| d.name == **db && d.paused))
        .cloned()
        .collect()
}

async fn kill_and_resume<C: Console>(
    console: &C,
    session: Option<C::Session>,
    state: &mut StateFile,
    held: Held<'_>,
    holds: Holds,
) -> Resets {
    let Held {
        before: held_before,
        moved,
        now,
        paused,
    } = held;
    let mut r = Resets::default();
    let ours = paused_by_us(moved, held_before, now);
    let theirs: Vec<String> = moved
        .iter()
        .filter(|db| !ours.contains(db))
        .cloned()
        .collect();
    let unrecorded: Vec<String> = ours
        .iter()
        .filter(|db| !state.state().held.contains(db))
        .cloned()
        .collect();
    if !unrecorded.is_empty() {
        let add = unrecorded.clone();
        let recorded = state.update(|s| s.hold(add)).await;
        if let Err(e) = recorded {
            // Clients must leave the old primary whether or not the record is on disk.
            r.warnings.push(format!(
                "{e}; KILL of database(s) {} goes ahead unrecorded: if rebouncer dies before their RESUME, \
                 RESUME them by hand on the admin console",
                unrecorded.join(", ")
            ));
        }
    }
    let mut conn = Conn { console, session };
    let mut resumed_with_kill = Vec::new();
    for db in moved {
        let kill = format!("KILL {}", quote_ident(db));
        // KILL and RESUME are pipelined on one session, so PgBouncer reads them together
        // and no client sees the database paused. A client that arrives while it is paused
        // makes PgBouncer start a server login that the pause closes at once ("closing
        // because: pause mode"); PgBouncer counts that as a failed login, and that
        // database's next logins then wait out server_login_retry (15 s by default;
        // measured with tests/crash_safety.rs's window held open: 13 s after the RESUME).
        let killed = if holds.pipelined() && ours.contains(db) {
            let resume = format!("RESUME {}", quote_ident(db));
            match conn.pair(&kill, &resume).await {
                Ok((killed, resumed)) => {
                    if is_resumed(&resumed) {
                        resumed_with_kill.push(db.clone());
                    }
                    killed
                }
                Err(e) => Err(e),
            }
        } else {
            conn.command(&kill).await
        };
        match killed {
            Ok(()) => {
                r.reset.push(db.clone());
                if theirs.contains(db) {
                    r.left_paused.push(db.clone());
                    r.warnings.push(format!(
                        "database {db} was paused by someone else, not by rebouncer: KILLed so that its clients \
                         leave the old server, but left paused; RESUME {db} on the admin console when it may go on"
                    ));
                }
            }
            Err(e) => {
                r.not_reset.push(db.clone());
                r.warnings.push(format!(
                    "KILL of database {db} failed: {e}; its clients may stay on the old server, and new logins may \
                     wait out PgBouncer's server_login_retry; retried every round"
                ));
            }
        }
    }
    if !moved.is_empty() {
        holds.after_kill().await;
    }
    // A failed KILL may still have gone through (a lost answer), so it is resumed too:
    // "is not paused" then says it did not.
    let mut to_resume = held_before.to_vec();
    for db in &ours {
        if !to_resume.contains(db) {
            to_resume.push(db.clone());
        }
    }
    to_resume.retain(|db| !resumed_with_kill.contains(db));
    let (mut done, left, error) =
        resume_gated(&mut conn, &to_resume, paused, &mut r.warnings).await;
    done.extend(resumed_with_kill);
    r.resumed = done
        .iter()
        .filter(|db| held_before.contains(db))
        .cloned()
        .collect();
    r.warnings.extend(forget(state, &done, &r.reset).await);
    if let Some(e) = error.filter(|_| !left.is_empty()) {
        r.warnings.push(format!(
            "database(s) {} stay paused after KILL, RESUME failed: {e}; their new clients wait until it succeeds \
             (retried every round; by hand: RESUME <db> on the admin console)",
            left.join(", ")
        ));
    }
    r.still_held = left;
    r
}

/// Take resumed databases off the state file's `held` list and reset ones off its
/// `unreset` list, in one write; a warning if it cannot be written.
async fn forget(state: &mut StateFile, resumed: &[String], reset: &[String]) -> Option<String> {
    let listed = state.state();
    if !resumed.iter().any(|d| listed.held.contains(d))
        && !reset.iter().any(|d| listed.unreset.contains(d))
    {
        return None;
    }
    let (resumed_, reset_) = (resumed.to_vec(), reset.to_vec());
    match state
        .update(|s| {
            s.held.retain(|d| !resumed_.contains(d));
            s.unreset.retain(|d| !reset_.contains(d));
        })
        .await
    {
        Ok(()) => None,
        Err(e) => Some(format!(
            "{e}; the file still lists database(s) {} as paused or to be reset, so a restarted rebouncer would \
             send them KILL or RESUME again",
            {
                let mut all = resumed.to_vec();
                all.extend(reset.iter().filter(|d| !resumed.contains(d)).cloned());
                all.join(", ")
            }
        )),
    }
}

/// RESUME went through, or there was nothing to resume: "is not paused" (an earlier
/// attempt got through, or PgBouncer restarted) or "no such database" (gone from the
/// config).
fn is_resumed(result: &Result<(), AdminError>) -> bool {
    match result {
        Ok(()) => true,
        Err(AdminError::Command { detail, .. }) => {
            detail.contains("is not paused") || detail.contains("no such database")
        }
        Err(_) => false,
    }
}

/// An admin session that is opened again after a failure that may have closed it.
struct Conn<'a, C: Console> {
    console: &'a C,
    session: Option<C::Session>,
}

impl<C: Console> Conn<'_, C> {
    async fn command(&mut self, command: &str) -> Result<(), AdminError> {
        self.rows(command).await.map(|_| ())
    }

    async fn rows(&mut self, command: &str) -> Result<Vec<admin::Row>, AdminError> {
        let s = match self.session.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.console.session().await?,
        };
        let result = s.command(command).await;
        if matches!(&result, Ok(_) | Err(AdminError::Command { .. })) {
            self.session = Some(s);
        }
        result
    }

    /// Two commands sent back to back, before the first answer (`Err`: no login).
    async fn pair(
        &mut self,
        first: &str,
        second: &str,
    ) -> Result<(Result<(), AdminError>, Result<(), AdminError>), AdminError> {
        let s = match self.session.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.console.session().await?,
        };
        let (a, b) = tokio::join!(s.command(first), s.command(second));
        let (a, b) = (a.map(|_| ()), b.map(|_| ()));
        if answered(&a) && answered(&b) {
            self.session = Some(s);
        }
        Ok((a, b))
    }
}

/// PgBouncer answered (maybe with an error), so the session is fine. A timeout or a
/// closed connection: log in anew for the next command.
fn answered(result: &Result<(), AdminError>) -> bool {
    matches!(result, Ok(()) | Err(AdminError::Command { .. }))
}

/// [`resume_each`]; when any of `databases` is in `paused`, with the login gate lifted
/// around it (see [`lift_login_retry`]).
async fn resume_gated<C: Console>(
    conn: &mut Conn<'_, C>,
    databases: &[String],
    paused: &[String],
    warnings: &mut Vec<String>,
) -> (Vec<String>, Vec<String>, Option<AdminError>) {
    let ours: Vec<String> = databases
        .iter()
        .filter(|d| paused.contains(d))
        .cloned()
        .collect();
    if ours.is_empty() {
        return resume_each(conn, databases).await;
    }
    let old = lift_login_retry(conn).await;
    let result = resume_each(conn, databases).await;
    if let Some(old) = old {
        wait_for_servers(conn, &ours).await;
        let set = format!("SET server_login_retry = '{}'", old.replace('\'', ""));
        if let Err(e) = conn.command(&set).await {
            warnings.push(format!(
                "server_login_retry could not be set back to {old} after the pause: {e}; PgBouncer retries failed \
                 server logins without delay until its next RELOAD"
            ));
        }
    }
    result
}

/// A pool whose last server login failed (the old primary going down, or a login that
/// the pause itself cut off) makes PgBouncer hold back new server logins for
/// `server_login_retry` (15 s by default) and turn away clients that find no server; only
/// a successful login or `KILL` clears that, and `KILL` would drop the very clients the
/// pause held. So `server_login_retry` is set to 0 until the resumed clients have a server
/// (or a second has passed) and then set back. Returns the old value when it was changed.
async fn lift_login_retry<C: Console>(conn: &mut Conn<'_, C>) -> Option<String> {
    let rows = conn.rows("SHOW CONFIG").await.ok()?;
    let old = rows
        .iter()
        .find(|r| r.get("key") == Some("server_login_retry"))
        .and_then(|r| r.get("value"))?
        .to_string();
    if old.trim().parse::<f64>().is_ok_and(|v| v == 0.0) {
        return None;
    }
    conn.command("SET server_login_retry = '0'").await.ok()?;
    Some(old)
}

/// Until every one of `databases` has a server connection or no waiting client, at most
/// a second: the first successful login clears the pool's failure for good.
async fn wait_for_servers<C: Console>(conn: &mut Conn<'_, C>, databases: &[String]) {
    let end = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < end {
        let Ok(rows) = conn.rows("SHOW POOLS").await else {
            return;
        };
        let count = |r: &admin::Row, cols: &[&str]| -> u64 {
            cols.iter()
                .filter_map(|c| r.get(c).and_then(|v| v.parse::<u64>().ok()))
                .sum()
        };
        let pending = rows.iter().any(|r| {
            r.get("database")
                .is_some_and(|d| databases.iter().any(|x| x == d))
                && count(r, &["cl_waiting"]) > 0
                && count(r, &["sv_active", "sv_idle", "sv_used", "sv_tested"]) == 0
        });
        if !pending {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `RESUME` each database; a failure is tried once more (on a new session if it was
/// lost), since a database left killed holds every new client. "is not paused" (an
/// earlier attempt got through, or PgBouncer restarted) and "no such database" (gone from
/// the config) count as done. Returns (done, still paused, last error).
async fn resume_each<C: Console>(
    conn: &mut Conn<'_, C>,
    databases: &[String],
) -> (Vec<String>, Vec<String>, Option<AdminError>) {
    let (mut done, mut left, mut last_error) = (Vec::new(), Vec::new(), None);
    for db in databases {
        let command = format!("RESUME {}", quote_ident(db));
        let mut resumed = false;
        for _attempt in 0..2 {
            let result = conn.command(&command).await;
            if is_resumed(&result) {
                resumed = true;
                break;
            }
            last_error = result.err();
        }
        if resumed {
            done.push(db.clone());
        } else {
            left.push(db.clone());
        }
    }
    (done, left, last_error)
}

/// Resume `databases` (no state file involved).
pub async fn resume<C: Console>(
    bouncer: &C,
    databases: &[String],
) -> Result<(), (Vec<String>, AdminError)> {
    let mut conn = Conn {
        console: bouncer,
        session: None,
    };
    match resume_each(&mut conn, databases).await {
        (_, left, Some(e)) if !left.is_empty() => Err((left, e)),
        _ => Ok(()),
    }
}

/// Run blocking file I/O on tokio's blocking pool: the runtime is single-threaded, and a
/// slow disk must not stall the checks.
async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("the file system task failed: {e}"))
}

/// Every named database of the node file must be routed where the file says.
fn confirm(node: &NodeFile, symlink: &Path, routes: &[Database]) -> Result<(), String> {
    for DatabaseEntry { name, host, port } in &node.databases {
        let want = Route {
            host: host.clone(),
            port: *port,
        };
        match routes.iter().find(|d| d.name == *name) {
            Some(d) if d.route == want => {}
            Some(d) => {
                return Err(format!(
                    "PgBouncer still sends database {name} to {}, not to {want} as {} says; \
                     is PgBouncer started with {} as its config file? See PgBouncer's log",
                    d.route,
                    node.path.display(),
                    symlink.display()
                ));
            }
            None => {
                return Err(format!(
                    "PgBouncer has no database {name} after RELOAD, although {} defines it; \
                     is PgBouncer started with {} as its config file? See PgBouncer's log",
                    node.path.display(),
                    symlink.display()
                ));
            }
        }
    }
    Ok(())
}

/// Whether `symlink` already resolves to `target` (compared after resolving both, so a
/// link written by the Go tool with a relative or `..` path still counts).
pub fn points_at(symlink: &Path, target: &Path) -> bool {
    link_target(symlink).is_some_and(|t| same_file(&t, target))
}

/// The file the symlink points at, made absolute against the link's directory.
pub fn link_target(symlink: &Path) -> Option<PathBuf> {
    let t = fs::read_link(symlink).ok()?;
    Some(match symlink.parent() {
        Some(dir) if t.is_relative() => dir.join(t),
        _ => t,
    })
}

pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn temp_link_prefix(symlink: &Path) -> String {
    let name = symlink
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.rebouncer-tmp.")
}

/// A link put in place. `unsynced`: why its directory could not be synced afterwards (the
/// new link is in place and PgBouncer reads it, but a power cut could bring the old one back).
#[derive(Debug)]
pub struct Replaced {
    pub unsynced: Option<io::Error>,
}

type SyncDir = fn(&Path) -> io::Result<()>;

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Replace the symlink so that at no instant the path is missing or points at anything but
/// a complete config: a new link beside it, then `rename` over the old one (the Go tool
/// removed and re-created it; a reader in between found no file at all). The directory is
/// synced so the switch also survives a power cut. `Err` means the link was not replaced;
/// a failed sync after the rename is in [`Replaced::unsynced`], since the switch must go on
/// to `RELOAD` then.
pub fn replace_symlink(symlink: &Path, target: &Path) -> io::Result<Replaced> {
    replace_symlink_with(symlink, target, sync_dir)
}

fn replace_symlink_with(symlink: &Path, target: &Path, sync: SyncDir) -> io::Result<Replaced> {
    match fs::symlink_metadata(symlink) {
        Ok(m) if !m.file_type().is_symlink() => {
            return Err(io::Error::other(format!(
                "{} exists and is not a symlink; refusing to replace it (start PgBouncer with the symlink as its config file)",
                symlink.display()
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = symlink.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        "{}{}",
        temp_link_prefix(symlink),
        std::process::id()
    ));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Err(e) = fs::rename(&tmp, symlink) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Replaced {
        unsynced: sync(dir).err(),
    })
}

/// Whether a switch could create its new link beside `symlink`: makes the same temporary
/// link a switch makes, and removes it again. For `-check`, so that an unwritable
/// directory shows before the first failover, not during it.
pub fn try_link_beside(symlink: &Path) -> io::Result<()> {
    let dir = symlink.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        "{}{}",
        temp_link_prefix(symlink),
        std::process::id()
    ));
    std::os::unix::fs::symlink("rebouncer-check", &tmp)?;
    fs::remove_file(&tmp)
}

/// Remove temporary links left by a rebouncer killed in the middle of a swap.
pub fn remove_stale_temp_links(symlink: &Path) -> Vec<PathBuf> {
    let prefix = temp_link_prefix(symlink);
    let dir = symlink.parent().unwrap_or(Path::new("."));
    let mut removed = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix)
                && fs::remove_file(e.path()).is_ok()
            {
                removed.push(e.path());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_bouncer::FakeBouncer;

    /// Two nodes whose files route `appdb` and `other` to ports 5432 and 5433, the link on
    /// node 1, a fake PgBouncer that loaded it, and a state file beside them.
    struct Setup {
        dir: tempfile::TempDir,
        link: PathBuf,
        db1: PathBuf,
        db2: PathBuf,
        fake: FakeBouncer,
        state: StateFile,
    }

    fn node_text(port: u16) -> String {
        format!(
            "[databases]\nappdb = host=127.0.0.1 port={port} dbname=appdb\n\
             other = host=127.0.0.1 port={port} dbname=other\n[pgbouncer]\nlisten_port = 6432\n"
        )
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (db1, db2) = (dir.path().join("db1.ini"), dir.path().join("db2.ini"));
        fs::write(&db1, node_text(5432)).unwrap();
        fs::write(&db2, node_text(5433)).unwrap();
        let link = dir.path().join("pgbouncer.ini");
        replace_symlink(&link, &db1).unwrap();
        let fake = FakeBouncer::new(link.clone());
        let state = StateFile::load(&dir.path().join("rebouncer.state")).unwrap();
        Setup {
            dir,
            link,
            db1,
            db2,
            fake,
            state,
        }
    }

    impl Setup {
        async fn switch(
            &mut self,
            to: &Path,
            last: Option<&[Database]>,
        ) -> Result<Switched, SwitchError> {
            let plan = SwitchPlan {
                symlink: &self.link,
                node_file: to,
                last_confirmed: last,
                paused: &[],
            };
            run(&self.fake, &mut self.state, plan).await
        }

        fn state_on_disk(&self) -> String {
            fs::read_to_string(self.state.path()).unwrap_or_default()
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn kill_is_recorded_in_the_state_file_before_it_is_sent_and_cleared_after_resume() {
        let mut t = setup();
        t.fake.watch_file(t.state.path().to_path_buf());
        let last = t.fake.databases();
        let db2 = t.db2.clone();
        let done = t.switch(&db2, Some(&last)).await.unwrap();

        assert!(done.relinked);
        assert_eq!(done.resets.reset, names(&["appdb", "other"]));
        assert!(
            done.resets.warnings.is_empty(),
            "{:?}",
            done.resets.warnings
        );
        assert_eq!(done.confirmed.len(), 2);
        assert!(done.confirmed.iter().all(|d| d.route.port == 5433));
        // A crash at the KILL would have left both listed, so a restart resumes them.
        let at_kill = t.fake.file_at("KILL").unwrap();
        assert!(
            at_kill.contains("held appdb\n") && at_kill.contains("held other\n"),
            "{at_kill}"
        );
        assert!(t.fake.paused().is_empty());
        assert!(t.state.state().held.is_empty());
        assert!(!t.state_on_disk().contains("held"), "{}", t.state_on_disk());
        // Each RESUME is sent right behind its KILL, before the KILL's answer.
        let log = t.fake.log();
        for db in ["appdb", "other"] {
            let k = log.iter().position(|c| *c == format!("KILL {db}")).unwrap();
            assert_eq!(log[k + 1], format!("RESUME {db}"), "{log:?}");
        }
    }

    #[tokio::test]
    async fn a_state_file_that_cannot_be_written_still_kills_and_says_so() {
        let mut t = setup();
        t.state = StateFile::load(&t.dir.path().join("missing/rebouncer.state")).unwrap();
        let db2 = t.db2.clone();
        let done = t.switch(&db2, None).await.unwrap();
        assert_eq!(done.resets.reset, names(&["appdb", "other"]));
        assert!(t.fake.paused().is_empty());
        let w = done.resets.warnings.join("\n");
        assert!(
            w.contains("cannot write state file")
                && w.contains("the switch of database(s) appdb, other goes ahead unrecorded"),
            "{w}"
        );
    }

    #[tokio::test]
    async fn a_retry_after_a_reload_that_went_through_still_kills_what_moved() {
        let mut t = setup();
        let last = t.fake.databases();
        // The RELOAD goes through, but the login that should confirm it fails.
        t.fake.fail_after("LOGIN", "connection refused", 1, 1);
        let db2 = t.db2.clone();
        let e = t.switch(&db2, Some(&last)).await.unwrap_err();
        assert!(matches!(e, SwitchError::NotApplied { .. }), "{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "{} points at {} and RELOAD was sent, but a new admin login then failed",
                t.link.display(),
                t.db2.display()
            )),
            "{e}"
        );
        assert_eq!(t.fake.count("KILL"), 0);
        assert!(t.fake.databases().iter().all(|d| d.route.port == 5433));

        // PgBouncer already routes to 5433; the last confirmed route still says 5432.
        let done = t.switch(&db2, Some(&last)).await.unwrap();
        assert!(!done.relinked);
        assert_eq!(done.resets.reset, names(&["appdb", "other"]));
        assert_eq!(t.fake.count("KILL"), 2);
        assert!(t.fake.paused().is_empty());

        // Without a confirmed route only SHOW DATABASES before the RELOAD is known.
        let done = t.switch(&db2, None).await.unwrap();
        assert!(done.resets.reset.is_empty());
    }

    #[tokio::test]
    async fn a_route_changed_by_hand_since_the_last_confirmation_also_counts_as_moved() {
        let mut t = setup();
        let db2 = t.db2.clone();
        // Confirmed on db2 once; then someone pointed the link at db1 and reloaded.
        let confirmed_on_db2 = t.switch(&db2, None).await.unwrap().confirmed;
        replace_symlink(&t.link, &t.db1).unwrap();
        let by_hand = FakeBouncer::new(t.link.clone());
        t.fake = by_hand;
        let done = t.switch(&db2, Some(&confirmed_on_db2)).await.unwrap();
        assert_eq!(done.resets.reset, names(&["appdb", "other"]));
    }

    #[tokio::test]
    async fn what_moves_is_recorded_before_the_reload_and_forgotten_after_kill_and_resume() {
        let mut t = setup();
        t.fake.watch_file(t.state.path().to_path_buf());
        let db2 = t.db2.clone();
        let done = t.switch(&db2, None).await.unwrap();
        assert_eq!(done.resets.reset, names(&["appdb", "other"]));
        // A rebouncer killed after the RELOAD finds both: KILL what may still have
        // clients on the old server, RESUME what may still be paused.
        let at_reload = t.fake.file_at("RELOAD").unwrap_or_default();
        for line in [
            "held appdb\n",
            "held other\n",
            "reset appdb\n",
            "reset other\n",
        ] {
            assert!(at_reload.contains(line), "{line:?} missing:\n{at_reload}");
        }
        assert!(
            !t.state_on_disk().contains("held "),
            "{}",
            t.state_on_disk()
        );
        assert!(
            !t.state_on_disk().contains("reset "),
            "{}",
            t.state_on_disk()
        );
    }

    #[tokio::test]
    async fn a_switch_that_moves_nothing_records_nothing() {
        let mut t = setup();
        let db1 = t.db1.clone();
        t.fake.watch_file(t.state.path().to_path_buf());
        let done = t.switch(&db1, None).await.unwrap();
        assert!(done.resets.reset.is_empty());
        assert_eq!(
            t.fake.file_at("RELOAD").as_deref(),
            Some(""),
            "no state file written"
        );
    }

    #[tokio::test]
    async fn reset_drops_databases_pgbouncer_no_longer_has() {
        let mut t = setup();
        t.state
            .update(|s| s.must_reset(names(&["appdb", "dropped"])))
            .await
            .unwrap();
        let r = reset(&t.fake, &mut t.state).await.unwrap();
        assert_eq!(r.reset, names(&["appdb"]));
        assert_eq!(t.fake.count("KILL"), 1);
        assert!(t.state.state().unreset.is_empty());
        assert!(t.fake.paused().is_empty());
    }

    #[tokio::test]
    async fn reset_sends_nothing_when_the_console_does_not_answer() {
        let mut t = setup();
        t.state
            .update(|s| s.must_reset(names(&["appdb"])))
            .await
            .unwrap();
        t.fake.set_up(false);
        let e = reset(&t.fake, &mut t.state).await.unwrap_err();
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert_eq!(t.fake.count("KILL"), 0);
        assert!(t.state.state().held.is_empty());
        assert_eq!(
            t.state.state().unreset,
            names(&["appdb"]),
            "kept for the next try"
        );
    }

    #[tokio::test]
    async fn a_failed_kill_is_reported_and_retried_by_reset() {
        let mut t = setup();
        t.fake.fail_after("KILL appdb", "admin access needed", 0, 1);
        let db2 = t.db2.clone();
        let done = t.switch(&db2, None).await.unwrap();
        assert_eq!(done.resets.reset, names(&["other"]));
        assert_eq!(done.resets.not_reset, names(&["appdb"]));
        assert!(
            done.resets
                .warnings
                .iter()
                .any(|w| w.starts_with("KILL of database appdb failed: ")),
            "{:?}",
            done.resets.warnings
        );
        // Its RESUME was tried anyway ("not paused": the KILL did not get through).
        assert!(t.state.state().held.is_empty());
        assert!(t.fake.paused().is_empty());
        // A restarted rebouncer would know too.
        assert!(
            t.state_on_disk().contains("reset appdb\n"),
            "{}",
            t.state_on_disk()
        );
        assert!(
            !t.state_on_disk().contains("reset other"),
            "{}",
            t.state_on_disk()
        );

        let again = reset(&t.fake, &mut t.state).await.unwrap();
        assert_eq!(again.reset, names(&["appdb"]));
        assert!(again.not_reset.is_empty());
        assert_eq!(t.fake.count("KILL appdb"), 2);
        assert!(t.fake.paused().is_empty());
        assert!(t.state.state().held.is_empty());
        assert!(t.state.state().unreset.is_empty());
        assert!(
            !t.state_on_disk().contains("reset "),
            "{}",
            t.state_on_disk()
        );
    }

    #[tokio::test]
    async fn a_failed_resume_stays_held_until_resume_held_gets_through() {
        let mut t = setup();
        t.fake.fail("RESUME", Some("timeout"));
        let db2 = t.db2.clone();
        let done = t.switch(&db2, None).await.unwrap();
        assert_eq!(done.resets.still_held, names(&["appdb", "other"]));
        assert!(
            done.resets
                .warnings
                .iter()
                .any(|w| w
                    .starts_with("database(s) appdb, other stay paused after KILL, RESUME failed")),
            "{:?}",
            done.resets.warnings
        );
        assert_eq!(t.fake.paused(), names(&["appdb", "other"]));
        assert!(t.state_on_disk().contains("held appdb\nheld other\n"));

        let e = resume_held(&t.fake, &mut t.state).await.unwrap_err();
        assert_eq!(e.still_held, names(&["appdb", "other"]));
        assert!(
            e.to_string().starts_with(
                "database(s) appdb, other stay paused by rebouncer's KILL (listed in "
            ),
            "{e}"
        );
        t.fake.fail("RESUME", None);
        let ok = resume_held(&t.fake, &mut t.state).await.unwrap();
        assert_eq!(ok.resumed, names(&["appdb", "other"]));
        assert!(t.fake.paused().is_empty());
        assert!(!t.state_on_disk().contains("held"));
        // Nothing held: not even a login.
        let logins = t.fake.count("LOGIN");
        assert_eq!(
            resume_held(&t.fake, &mut t.state).await.unwrap(),
            Resumed::default()
        );
        assert_eq!(t.fake.count("LOGIN"), logins);
    }

    #[tokio::test]
    async fn resume_held_resumes_only_what_the_state_lists() {
        let mut t = setup();
        // A rebouncer killed after `KILL appdb`; an operator paused `other` for maintenance.
        t.fake.pause_by_hand("appdb");
        t.fake.pause_by_hand("other");
        t.state
            .update(|s| s.held = names(&["appdb"]))
            .await
            .unwrap();
        let again = StateFile::load(t.state.path()).unwrap();
        let mut t2_state = again;
        let done = resume_held(&t.fake, &mut t2_state).await.unwrap();
        assert_eq!(done.resumed, names(&["appdb"]));
        assert_eq!(t.fake.paused(), names(&["other"]));
        assert_eq!(t.fake.count("RESUME"), 1);
        assert!(t2_state.state().held.is_empty());
        assert!(!t.state_on_disk().contains("held"));
    }

    #[tokio::test]
    async fn a_held_database_gone_from_pgbouncer_is_forgotten() {
        let mut t = setup();
        t.state.update(|s| s.held = names(&["gone"])).await.unwrap();
        let done = resume_held(&t.fake, &mut t.state).await.unwrap();
        assert_eq!(done.resumed, names(&["gone"]));
        assert!(t.state.state().held.is_empty());
    }

    #[tokio::test]
    async fn a_switch_resumes_what_an_earlier_attempt_left_held() {
        let mut t = setup();
        t.fake.pause_by_hand("appdb");
        t.state
            .update(|s| s.held = names(&["appdb"]))
            .await
            .unwrap();
        // Nothing moves (the link already points at db1), but appdb is ours to resume.
        let db1 = t.db1.clone();
        let done = t.switch(&db1, None).await.unwrap();
        assert!(done.resets.reset.is_empty());
        assert_eq!(done.resets.resumed, names(&["appdb"]));
        assert!(t.fake.paused().is_empty());
        assert!(t.state.state().held.is_empty());
    }

    #[tokio::test]
    async fn a_database_someone_else_paused_is_killed_but_left_paused() {
        let mut t = setup();
        t.fake.watch_file(t.state.path().to_path_buf());
        t.fake.pause_by_hand("other");
        let db2 = t.db2.clone();
        let done = t.switch(&db2, None).await.unwrap();
        assert_eq!(done.resets.reset, names(&["appdb", "other"]));
        assert_eq!(done.resets.left_paused, names(&["other"]));
        assert_eq!(t.fake.paused(), names(&["other"]));
        assert_eq!(t.fake.count("RESUME other"), 0);
        assert!(
            done.resets.warnings[0].starts_with("database other was paused by someone else"),
            "{:?}",
            done.resets.warnings
        );
        // Not ours to resume, so not recorded: a restarted rebouncer must leave it paused.
        assert_eq!(t.fake.file_at("KILL").unwrap().matches("held ").count(), 1);
        assert!(t.fake.file_at("KILL").unwrap().contains("held appdb\n"));
        assert!(t.state.state().held.is_empty());
    }

    #[tokio::test]
    async fn a_failed_directory_sync_after_the_rename_still_reloads_and_warns() {
        let mut t = setup();
        fn no_fds(_: &Path) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(24)) // EMFILE
        }
        let (link, db2) = (t.link.clone(), t.db2.clone());
        let plan = SwitchPlan {
            symlink: &link,
            node_file: &db2,
            last_confirmed: None,
            paused: &[],
        };
        let done = run_with(&t.fake, &mut t.state, plan, no_fds, Holds::default())
            .await
            .unwrap();
        assert!(points_at(&t.link, &t.db2));
        assert_eq!(t.fake.count("RELOAD"), 1);
        assert!(t.fake.databases().iter().all(|d| d.route.port == 5433));
        let w = done.link_warning.unwrap();
        assert!(
            w.starts_with(&format!(
                "{} now points at {}, but syncing its directory failed: ",
                t.link.display(),
                t.db2.display()
            )) && w.contains("Too many open files"),
            "{w}"
        );
    }

    #[tokio::test]
    async fn every_failed_step_says_where_it_stopped_and_where_the_link_points() {
        let mut t = setup();
        let (link, db1, db2) = (
            t.link.display().to_string(),
            t.db1.display().to_string(),
            t.db2.display().to_string(),
        );

        t.fake.set_up(false);
        let e = t
            .switch(&t.db2.clone(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(&format!(
                "; stopped before touching the symlink: {link} points at {db1}"
            )),
            "{e}"
        );
        t.fake.set_up(true);

        let missing = t.dir.path().join("db9.ini");
        let e = t.switch(&missing, None).await.unwrap_err().to_string();
        assert!(
            e.ends_with(&format!(
                "stopped before touching the symlink: {link} points at {db1}"
            )),
            "{e}"
        );

        t.fake.fail("RELOAD", Some("timeout"));
        let e = t
            .switch(&t.db2.clone(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{link} points at {db2}, but RELOAD failed: ")),
            "{e}"
        );
        t.fake.fail("RELOAD", None);

        // The link's directory vanishes under us: the link cannot be replaced.
        let gone = t.dir.path().join("gone/pgbouncer.ini");
        let plan = SwitchPlan {
            symlink: &gone,
            node_file: &t.db1,
            last_confirmed: None,
            paused: &[],
        };
        let e = run(&t.fake, &mut t.state, plan)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "cannot replace symlink {} to point it at {db1}: ",
                gone.display()
            )) && e.ends_with(&format!(
                "stopped before RELOAD: {} does not exist, and PgBouncer keeps its old config",
                gone.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn replace_symlink_swaps_and_leaves_no_temp_link() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.ini"), d.path().join("b.ini"));
        fs::write(&a, "a").unwrap();
        fs::write(&b, "b").unwrap();
        let link = d.path().join("pgbouncer.ini");
        replace_symlink(&link, &a).unwrap();
        assert!(points_at(&link, &a));
        replace_symlink(&link, &b).unwrap();
        assert_eq!(fs::read_to_string(&link).unwrap(), "b");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 3);
    }

    #[test]
    fn replace_symlink_refuses_to_overwrite_a_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let (a, link) = (d.path().join("a.ini"), d.path().join("pgbouncer.ini"));
        fs::write(&a, "a").unwrap();
        fs::write(&link, "precious").unwrap();
        let e = replace_symlink(&link, &a).unwrap_err();
        assert!(e.to_string().contains("is not a symlink"), "{e}");
        assert_eq!(fs::read_to_string(&link).unwrap(), "precious");
    }

    #[test]
    fn try_link_beside_leaves_nothing_and_reports_a_missing_directory() {
        let d = tempfile::tempdir().unwrap();
        try_link_beside(&d.path().join("pgbouncer.ini")).unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
        let e = try_link_beside(&d.path().join("missing/pgbouncer.ini")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn stale_temp_links_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("pgbouncer.ini");
        let stale = d.path().join(".pgbouncer.ini.rebouncer-tmp.12345");
        std::os::unix::fs::symlink("/nowhere", &stale).unwrap();
        assert_eq!(remove_stale_temp_links(&link), vec![stale.clone()]);
        assert!(fs::symlink_metadata(&stale).is_err());
    }

    #[test]
    fn relative_link_targets_resolve_against_the_link_directory() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("configs")).unwrap();
        let node = d.path().join("configs/db1.ini");
        fs::write(&node, "x").unwrap();
        let link = d.path().join("pgbouncer.ini");
        std::os::unix::fs::symlink("configs/db1.ini", &link).unwrap();
        assert!(points_at(&link, &node));
    }

    #[test]
    fn confirm_names_the_database_that_did_not_move() {
        let node = NodeFile {
            path: "/etc/pgbouncer/nodes/db2.ini".into(),
            databases: vec![DatabaseEntry {
                name: "app".into(),
                host: Some("10.0.0.12".into()),
                port: 5432,
            }],
        };
        let routes = vec![Database {
            name: "app".into(),
            route: Route {
                host: Some("10.0.0.11".into()),
                port: 5432,
            },
            paused: false,
        }];
        let e = confirm(&node, Path::new("/etc/pgbouncer/pgbouncer.ini"), &routes).unwrap_err();
        assert!(
            e.starts_with(
                "PgBouncer still sends database app to 10.0.0.11:5432, not to 10.0.0.12:5432"
            ),
            "{e}"
        );
        let ok = vec![Database {
            name: "app".into(),
            route: Route {
                host: Some("10.0.0.12".into()),
                port: 5432,
            },
            paused: false,
        }];
        assert!(confirm(&node, Path::new("/x"), &ok).is_ok());
    }
}
