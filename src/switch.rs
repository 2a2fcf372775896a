//! Point PgBouncer at a node: swap the config symlink atomically, `RELOAD`, and confirm
//! with `SHOW DATABASES` that PgBouncer really uses the node's config.
//!
//! PgBouncer facts this relies on (measured, CRATES.md section 2): the admin console speaks
//! only the simple query protocol and only its own commands; `RELOAD` answers success even
//! when the file is missing or broken (the error is only in PgBouncer's log), so success
//! is never taken from the `RELOAD` reply.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::admin::{self, AdminError, Console, Route, Session, quote_ident};
use crate::config::{self, DatabaseEntry, NodeFile};

/// Why a switch did not complete. The next round tries again.
#[derive(Debug)]
pub enum SwitchError {
    /// The node's precooked config cannot be used; the link was left alone.
    NodeFile(config::ConfigError),
    /// PgBouncer's admin console did not answer; the link was left alone.
    Admin(AdminError),
    /// The symlink could not be replaced; PgBouncer still has its old config.
    Symlink { path: PathBuf, error: io::Error },
    /// The link was replaced but PgBouncer's `RELOAD` failed.
    Reload(AdminError),
    /// PgBouncer answered, but does not use the node's config.
    NotApplied(String),
    /// PgBouncer uses the node's config, but databases it was told to `KILL` could not be
    /// resumed: their new clients wait until a `RESUME` succeeds. Retried at once by the
    /// next attempt.
    LeftKilled {
        node_file: PathBuf,
        databases: Vec<String>,
        error: AdminError,
    },
}

impl fmt::Display for SwitchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchError::NodeFile(e) => write!(f, "{e}; the symlink was left as it was"),
            SwitchError::Admin(e) => {
                write!(f, "{e}; the symlink was left as it was")
            }
            SwitchError::Symlink { path, error } => {
                let fix = match error.kind() {
                    io::ErrorKind::PermissionDenied => {
                        "; make its directory writable for the user rebouncer runs as"
                    }
                    _ => "",
                };
                write!(f, "cannot replace symlink {}: {error}{fix}", path.display())
            }
            SwitchError::Reload(e) => write!(f, "symlink replaced but RELOAD failed: {e}"),
            SwitchError::NotApplied(m) => f.write_str(m),
            SwitchError::LeftKilled {
                node_file,
                databases,
                error,
            } => write!(
                f,
                "PgBouncer now uses {}, but after KILL the RESUME of database(s) {} failed: {error}; \
                 their new clients wait until it succeeds (retried every round; by hand: RESUME <db> \
                 on the admin console)",
                node_file.display(),
                databases.join(", ")
            ),
        }
    }
}

impl std::error::Error for SwitchError {}

/// `SHOW DATABASES` as name -> route.
async fn routes<S: Session>(s: &S) -> Result<Vec<(String, Route)>, AdminError> {
    Ok(admin::databases(s)
        .await?
        .into_iter()
        .map(|d| (d.name, d.route))
        .collect())
}

/// What a completed switch did, for the log.
#[derive(Debug, Default)]
pub struct Switched {
    /// False when the link already pointed at the node (start-up convergence).
    pub relinked: bool,
    /// Databases whose client and server connections were reset because they moved.
    pub reset: Vec<String>,
    /// Databases that moved but whose `KILL` failed, with the error: their clients may
    /// stay on the old server, and new logins may wait out `server_login_retry`.
    pub not_reset: Vec<(String, String)>,
}

/// Make PgBouncer use `node_file`. Order matters: the node file is checked and the admin
/// console must answer before the link is touched, so a switch that cannot complete
/// leaves PgBouncer's config as it was. `resume` names databases an earlier attempt left
/// killed (see [`SwitchError::LeftKilled`]); they are resumed along with this one's.
pub async fn switch_to<C: Console>(
    bouncer: &C,
    symlink: &Path,
    node_file: &Path,
    resume: &[String],
) -> Result<Switched, SwitchError> {
    let node = config::read_node_file(node_file).map_err(SwitchError::NodeFile)?;
    let session = bouncer.session().await.map_err(SwitchError::Admin)?;
    let before = routes(&session).await.map_err(SwitchError::Admin)?;

    let relinked = !points_at(symlink, node_file);
    if relinked {
        replace_symlink(symlink, node_file).map_err(|error| SwitchError::Symlink {
            path: symlink.to_path_buf(),
            error,
        })?;
    }
    session
        .command("RELOAD")
        .await
        .map_err(SwitchError::Reload)?;
    drop(session);

    // A fresh login: a RELOAD of a broken file can reset PgBouncer's settings so that
    // the admin user is refused from then on; the old session would not notice.
    let check = bouncer.session().await.map_err(|e| {
        SwitchError::NotApplied(format!(
            "after RELOAD of {}, {e}; PgBouncer may have loaded a broken config: see PgBouncer's log",
            node_file.display()
        ))
    })?;
    let after = routes(&check).await.map_err(|e| {
        SwitchError::NotApplied(format!(
            "after RELOAD of {}, {e}; cannot confirm where PgBouncer points",
            node_file.display()
        ))
    })?;
    confirm(&node, symlink, &after).map_err(SwitchError::NotApplied)?;

    // Databases that moved: drop every client and server connection to the old server and
    // resume at once. A session-mode client would otherwise stay on the old primary until
    // it disconnects, and PgBouncer would keep delaying new logins after the failed ones
    // to the old primary (server_login_retry) although the new one is up.
    let mut done = Switched {
        relinked,
        ..Switched::default()
    };
    let mut to_resume: Vec<String> = resume.to_vec();
    for db in &node.databases {
        let was = before.iter().find(|(n, _)| *n == db.name).map(|(_, r)| r);
        let now = Route {
            host: db.host.clone(),
            port: db.port,
        };
        if was.is_some_and(|w| *w != now) {
            match check
                .command(&format!("KILL {}", quote_ident(&db.name)))
                .await
            {
                Ok(_) => {
                    done.reset.push(db.name.clone());
                    if !to_resume.contains(&db.name) {
                        to_resume.push(db.name.clone());
                    }
                }
                Err(e) => done.not_reset.push((db.name.clone(), e.to_string())),
            }
        }
    }
    resume_all(bouncer, check, &to_resume)
        .await
        .map_err(|(databases, error)| SwitchError::LeftKilled {
            node_file: node_file.to_path_buf(),
            databases,
            error,
        })?;
    Ok(done)
}

/// Resume databases a failed switch left killed, outside of a switch (while there is no
/// master to switch to, their clients should not wait on us).
pub async fn resume<C: Console>(
    bouncer: &C,
    databases: &[String],
) -> Result<(), (Vec<String>, AdminError)> {
    match bouncer.session().await {
        Ok(s) => resume_all(bouncer, s, databases).await,
        Err(e) => Err((databases.to_vec(), e)),
    }
}

/// `RESUME` each database. A killed database holds every new client until it is resumed,
/// so a failed `RESUME` is tried once more on a new session before giving up. "is not
/// paused" means an earlier attempt did get through. Returns the databases still killed.
async fn resume_all<C: Console>(
    bouncer: &C,
    session: C::Session,
    databases: &[String],
) -> Result<(), (Vec<String>, AdminError)> {
    let mut session = Some(session);
    let mut left = Vec::new();
    let mut last_error = None;
    for db in databases {
        let command = format!("RESUME {}", quote_ident(db));
        let mut resumed = false;
        for _attempt in 0..2 {
            let s = match session.take() {
                Some(s) => s,
                None => match bouncer.session().await {
                    Ok(s) => s,
                    Err(e) => {
                        last_error = Some(e);
                        continue;
                    }
                },
            };
            match s.command(&command).await {
                Ok(_) => resumed = true,
                Err(AdminError::Command { detail, .. }) if detail.contains("is not paused") => {
                    resumed = true
                }
                Err(e) => {
                    last_error = Some(e);
                    continue; // drop this session; the next try logs in anew
                }
            }
            session = Some(s);
            break;
        }
        if !resumed {
            left.push(db.clone());
        }
    }
    match last_error {
        Some(e) if !left.is_empty() => Err((left, e)),
        _ => Ok(()),
    }
}

/// Every named database of the node file must be routed where the file says.
fn confirm(node: &NodeFile, symlink: &Path, routes: &[(String, Route)]) -> Result<(), String> {
    for DatabaseEntry { name, host, port } in &node.databases {
        let want = Route {
            host: host.clone(),
            port: *port,
        };
        match routes.iter().find(|(n, _)| n == name) {
            Some((_, got)) if *got == want => {}
            Some((_, got)) => {
                return Err(format!(
                    "PgBouncer still sends database {name} to {got}, not to {want} as {} says; \
                     is PgBouncer started with {} as its config file? See PgBouncer's log",
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

/// Replace the symlink so that at no instant the path is missing or points at anything but
/// a complete config: a new link beside it, then `rename` over the old one (the Go tool
/// removed and re-created it; a reader in between found no file at all). The directory is
/// synced so the switch also survives a power cut.
pub fn replace_symlink(symlink: &Path, target: &Path) -> io::Result<()> {
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
    fs::File::open(dir)?.sync_all()
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
        let routes = vec![(
            "app".to_string(),
            Route {
                host: Some("10.0.0.11".into()),
                port: 5432,
            },
        )];
        let e = confirm(&node, Path::new("/etc/pgbouncer/pgbouncer.ini"), &routes).unwrap_err();
        assert!(
            e.starts_with(
                "PgBouncer still sends database app to 10.0.0.11:5432, not to 10.0.0.12:5432"
            ),
            "{e}"
        );
        let ok = vec![(
            "app".to_string(),
            Route {
                host: Some("10.0.0.12".into()),
                port: 5432,
            },
        )];
        assert!(confirm(&node, Path::new("/x"), &ok).is_ok());
    }
}
