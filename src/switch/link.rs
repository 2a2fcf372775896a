//! The managed symlink: read where it points, swap it atomically, and clean up after a
//! swap that was cut short. PgBouncer is started with the symlink as its config file, so
//! the swap is what a `RELOAD` (or a restart) picks up.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the symlink points, as a switch found or left it: every error names it, so the
/// operator knows whether PgBouncer's next reload (or restart) would pick up the new node.
#[derive(Clone, Debug)]
pub struct LinkState {
    pub symlink: PathBuf,
    /// The absolute target, or why the path is not a readable link.
    pub target: Result<PathBuf, String>,
}

impl LinkState {
    pub fn read(symlink: &Path) -> LinkState {
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

    pub fn at(symlink: &Path, target: &Path) -> LinkState {
        LinkState {
            symlink: symlink.to_path_buf(),
            target: Ok(target.to_path_buf()),
        }
    }

    pub fn unknown(symlink: &Path, why: &str) -> LinkState {
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

pub type SyncDir = fn(&Path) -> io::Result<()>;

pub fn sync_dir(dir: &Path) -> io::Result<()> {
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

pub fn replace_symlink_with(symlink: &Path, target: &Path, sync: SyncDir) -> io::Result<Replaced> {
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
}
