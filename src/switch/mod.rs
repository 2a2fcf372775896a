//! Point PgBouncer at a node: swap the config symlink atomically, `RELOAD`, confirm with
//! `SHOW DATABASES` that PgBouncer really uses the node's config, then drop the clients of
//! the databases that moved (`KILL`, then `RESUME`).
//!
//! PgBouncer facts this relies on (docs/pgbouncer.md): the admin console speaks only the
//! simple query protocol and only its own commands; `RELOAD` answers success even when the
//! file is missing or broken (the error is only in PgBouncer's log), so success is never
//! taken from the `RELOAD` reply.
//!
//! The parts: `link` swaps the symlink, `console` holds the admin-console steps that take
//! more than one command, `records` keeps in the state file what a killed rebouncer would
//! leave unfinished and finishes it ([`retry_kill_pending`], [`resume_pending`]). This file runs a switch
//! through them in order.

mod console;
mod hooks;
mod link;
mod records;
#[cfg(test)]
mod testing;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::admin::{self, AdminError, Console, Database, Route, Session};
use crate::config::{self, ConfigError, DatabaseEntry, NodeFile};
use crate::state::StateFile;

pub use console::resume;
pub use link::{
    LinkState, Replaced, link_target, points_at, remove_stale_temp_links, replace_symlink,
    same_file, try_link_beside,
};
pub use records::{
    KillsAndResumes, ResumeError, Resumed, resume_paused, resume_pending, retry_kill_pending,
};

use hooks::Holds;
use link::{SyncDir, replace_symlink_with, sync_dir};
use records::{KillPlan, kill_and_resume, paused_by_us, record_before_reload};

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
    pub kills: KillsAndResumes,
}

/// Make PgBouncer use `plan.node_file`. Order matters: the node file is checked and the
/// admin console must answer before the link is touched, so a switch that cannot complete
/// leaves PgBouncer's config as it was. After a confirmed `RELOAD` the databases that moved
/// are `KILL`ed and `RESUME`d, and so is every database `state` still lists as resume
/// pending. The databases about to move are recorded in `state` before the `RELOAD`, both
/// as kill pending and as resume pending, so that a rebouncer killed anywhere between the `RELOAD` and the
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
    let pending_before = state.state().resume_pending.clone();
    let ours = paused_by_us(&moved, &pending_before, &before);
    let record_warning = record_before_reload(state, &moved, &ours).await;

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
    let mut kills = kill_and_resume(
        console,
        Some(check),
        state,
        KillPlan {
            before: &pending_before,
            moved: &moved,
            now: &after,
            paused,
        },
        holds,
    )
    .await;
    kills.warnings.splice(0..0, record_warning);
    Ok(Switched {
        relinked: !already,
        confirmed: after,
        link_warning,
        kills,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_bouncer::FakeBouncer;
    use crate::switch::testing::*;

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
        assert_eq!(done.kills.killed, names(&["appdb", "other"]));
        assert_eq!(t.fake.count("KILL"), 2);
        assert!(t.fake.paused().is_empty());

        // Without a confirmed route only SHOW DATABASES before the RELOAD is known.
        let done = t.switch(&db2, None).await.unwrap();
        assert!(done.kills.killed.is_empty());
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
        assert_eq!(done.kills.killed, names(&["appdb", "other"]));
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

    /// The error of a switch to `to` that must fail, as the operator reads it.
    async fn switch_error(t: &mut Setup, to: &Path) -> String {
        t.switch(to, None).await.unwrap_err().to_string()
    }

    #[tokio::test]
    async fn every_failed_step_says_where_it_stopped_and_where_the_link_points() {
        let mut t = setup();
        let db2_file = t.db2.clone();
        let (link, db1, db2) = (
            t.link.display().to_string(),
            t.db1.display().to_string(),
            t.db2.display().to_string(),
        );

        t.fake.set_up(false);
        let e = switch_error(&mut t, &db2_file).await;
        assert!(
            e.ends_with(&format!(
                "; stopped before touching the symlink: {link} points at {db1}"
            )),
            "{e}"
        );
        t.fake.set_up(true);

        let missing = t.dir.path().join("db9.ini");
        let e = switch_error(&mut t, &missing).await;
        assert!(
            e.ends_with(&format!(
                "stopped before touching the symlink: {link} points at {db1}"
            )),
            "{e}"
        );

        t.fake.fail("RELOAD", Some("timeout"));
        let e = switch_error(&mut t, &db2_file).await;
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
    fn confirm_names_the_database_that_did_not_move() {
        let node = NodeFile {
            path: "/etc/pgbouncer/nodes/db2.ini".into(),
            databases: vec![DatabaseEntry {
                name: "app".into(),
                host: Some("10.0.0.12".into()),
                port: 5432,
            }],
        };
        // What PgBouncer reports for `app` when it sends it to `host`.
        let routed_to = |host: &str| {
            vec![Database {
                name: "app".into(),
                route: Route {
                    host: Some(host.into()),
                    port: 5432,
                },
                paused: false,
            }]
        };
        let routes = routed_to("10.0.0.11");
        let e = confirm(&node, Path::new("/etc/pgbouncer/pgbouncer.ini"), &routes).unwrap_err();
        assert!(
            e.starts_with(
                "PgBouncer still sends database app to 10.0.0.11:5432, not to 10.0.0.12:5432"
            ),
            "{e}"
        );
        assert!(confirm(&node, Path::new("/x"), &routed_to("10.0.0.12")).is_ok());
    }
}
