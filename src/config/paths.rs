//! `symlink` and `configdir`: resolved against the working directory once, at start, and
//! checked then, so that a wrong path stops the start rather than the first switch.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::error::{ConfigError, at};
use super::scan::Entry;
use super::servers::Server;

/// Resolve against the working directory at start, lexically: `.` components and a
/// trailing `/` go, `..` stays (removing it is wrong when the part before is a symlink).
/// Not canonicalized: the symlink itself must stay the symlink's path.
pub(super) fn absolute(cwd: &Path, value: &str) -> PathBuf {
    cwd.join(value)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The link may be missing (rebouncer creates it), but its directory must exist, and an
/// existing path must be a link: rebouncer replaces it at the first switch.
pub(super) fn check_symlink(file: &Path, e: &Entry, symlink: &Path) -> Result<(), ConfigError> {
    let fail = |msg: String| Err(at(file, e.line, msg));
    let Some(dir) = symlink.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return fail(format!(
            "symlink {} is not a file path; give the path of the symbolic link PgBouncer is started with as its config file",
            symlink.display()
        ));
    };
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return fail(format!(
                "the directory of symlink {}, {}, is not a directory; correct symlink=",
                symlink.display(),
                dir.display()
            ));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return fail(format!(
                "the directory of symlink {}, {}, does not exist; create it or correct symlink=",
                symlink.display(),
                dir.display()
            ));
        }
        Err(err) => {
            return fail(format!(
                "cannot check the directory of symlink {}, {}: {err}",
                symlink.display(),
                dir.display()
            ));
        }
    }
    let kind = match fs::symlink_metadata(symlink) {
        Ok(m) if m.file_type().is_symlink() => return Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return fail(format!("cannot check symlink {}: {err}", symlink.display())),
        Ok(m) if m.is_dir() => "a directory",
        Ok(m) if m.is_file() => "a regular file",
        Ok(_) => "a special file",
    };
    fail(format!(
        "symlink {p} is {kind}, not a symbolic link, and rebouncer refuses to replace it; \
         move it away (a PgBouncer config belongs in configdir as <node>.ini) and start PgBouncer \
         with {p} as its config file: rebouncer creates the link",
        p = symlink.display()
    ))
}

pub(super) fn check_configdir(file: &Path, e: &Entry, dir: &Path) -> Result<(), ConfigError> {
    let msg = match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => format!(
            "configdir {} is not a directory; correct configdir=",
            dir.display()
        ),
        Err(err) if err.kind() == io::ErrorKind::NotFound => format!(
            "configdir {} does not exist; create it with one complete PgBouncer config per node, <node>.ini, or correct configdir=",
            dir.display()
        ),
        Err(err) => format!("cannot check configdir {}: {err}", dir.display()),
    };
    Err(at(file, e.line, msg))
}

/// Pointing the link at a node file that is the link itself would destroy that node's config.
pub(super) fn check_symlink_is_no_node_file(
    file: &Path,
    e: &Entry,
    symlink: &Path,
    servers: &[Server],
) -> Result<(), ConfigError> {
    match servers.iter().find(|s| s.node_file == symlink) {
        Some(s) => Err(at(
            file,
            e.line,
            format!(
                "symlink {} is also the node file of server {}; the link must be a path of its own, outside the node files",
                symlink.display(),
                s.name
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::{Config, load};
    use std::fs;
    use std::os::unix::fs::symlink as make_symlink;
    use std::path::Path;

    #[test]
    fn relative_paths_are_resolved_against_the_working_directory() {
        let d = Dir::new();
        let text = GLOBAL
            .replace("symlink=pgbouncer.ini", "symlink=./etc/../pgbouncer.ini")
            .replace("configdir=nodes", "configdir=./nodes/");
        fs::create_dir(d.path().join("etc")).unwrap();
        let c = d.load(&format!("{text}\n{SERVERS}")).unwrap();
        assert_eq!(c.symlink, d.path().join("etc/../pgbouncer.ini"));
        assert_eq!(c.configdir, d.path().join("nodes"));
        assert_eq!(c.servers[1].node_file, d.path().join("nodes/db1.ini"));
        assert!(c.symlink.is_absolute() && c.configdir.is_absolute());
    }

    #[test]
    fn absolute_paths_are_kept() {
        let d = Dir::new();
        let link = d.path().join("pg.ini");
        let text = GLOBAL
            .replace(
                "symlink=pgbouncer.ini",
                &format!("symlink={}", link.display()),
            )
            .replace(
                "configdir=nodes",
                &format!("configdir={}/nodes", d.path().display()),
            );
        let c = load_text_elsewhere(&d, &format!("{text}\n{SERVERS}"));
        assert_eq!(c.symlink, link);
        assert_eq!(c.configdir, d.path().join("nodes"));
    }

    /// Loaded with `/` as the working directory: only absolute paths can work.
    fn load_text_elsewhere(d: &Dir, text: &str) -> Config {
        d.write("abs.ini", text);
        load(&d.path().join("abs.ini"), Path::new("/"), &test_env()).unwrap()
    }

    #[test]
    fn an_existing_regular_file_at_the_symlink_path_is_not_replaced() {
        let d = Dir::new();
        d.write("pgbouncer.ini", NODE);
        let e = d.err(&with_global(""));
        let p = d.path().join("pgbouncer.ini");
        assert_eq!(
            e,
            format!(
                "config error: rebouncer.ini:3: symlink {p} is a regular file, not a symbolic link, and rebouncer \
                 refuses to replace it; move it away (a PgBouncer config belongs in configdir as <node>.ini) and \
                 start PgBouncer with {p} as its config file: rebouncer creates the link",
                p = p.display()
            )
        );
        fs::remove_file(&p).unwrap();
        fs::create_dir(&p).unwrap();
        assert!(
            d.err(&with_global(""))
                .contains("is a directory, not a symbolic link")
        );
    }

    #[test]
    fn an_existing_symlink_even_a_dangling_one_is_fine() {
        let d = Dir::new();
        make_symlink(
            d.path().join("nodes/gone.ini"),
            d.path().join("pgbouncer.ini"),
        )
        .unwrap();
        assert!(d.load(&with_global("")).is_ok());
    }

    #[test]
    fn the_symlink_directory_must_exist() {
        let d = Dir::new();
        let e =
            d.err(&with_global("").replace("symlink=pgbouncer.ini", "symlink=etc/pgbouncer.ini"));
        assert_eq!(
            e,
            format!(
                "config error: rebouncer.ini:3: the directory of symlink {}, {}, does not exist; \
                 create it or correct symlink=",
                d.path().join("etc/pgbouncer.ini").display(),
                d.path().join("etc").display()
            )
        );
    }

    #[test]
    fn configdir_must_be_a_directory() {
        let d = Dir::new();
        let e = d.err(&with_global("").replace("configdir=nodes", "configdir=nodez"));
        assert!(
            e.starts_with(&format!(
                "config error: rebouncer.ini:4: configdir {} does not exist; create it",
                d.path().join("nodez").display()
            )),
            "{e}"
        );
    }

    #[test]
    fn the_symlink_cannot_be_a_node_file() {
        let d = Dir::new();
        fs::remove_file(d.path().join("nodes/db1.ini")).unwrap();
        make_symlink(
            d.path().join("nodes/db2.ini"),
            d.path().join("nodes/db1.ini"),
        )
        .unwrap();
        let e = d.err(&with_global("").replace("symlink=pgbouncer.ini", "symlink=nodes/db1.ini"));
        assert!(
            e.starts_with("config error: rebouncer.ini:3: symlink "),
            "{e}"
        );
        assert!(e.contains("is also the node file of server db1"), "{e}");
    }
}
