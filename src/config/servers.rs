//! `[servers]`: one line per cluster member, `name=connection string`, each with its node
//! file `<configdir>/<name>.ini` read and checked at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{ConfigError, at, in_file};
use super::scan::{Entry, Section};
use crate::conninfo::{Env, Target};
use crate::ini_text::shown;
use crate::node_file::{self, NodeFile};

#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    /// Connection timeout already set to `timeout - 1s`.
    pub target: Target,
    /// The connection string as written in the file: a reload compares it to tell a
    /// changed server from an unchanged one.
    pub conninfo: String,
    /// `<configdir>/<name>.ini`, absolute.
    pub node_file: PathBuf,
}

/// Read one node file (a complete PgBouncer config) and list where its `[databases]`
/// entries point, or say what is wrong as a config error. Used at start for every node,
/// and again before each switch.
pub fn read_node_file(path: &Path) -> Result<NodeFile, ConfigError> {
    node_file::read(path).map_err(|p| ConfigError(format!("config error: {p}")))
}

/// A connection string through conninfo; its message already says what to change and never
/// contains the password. `who` is `pgbouncer` or `server <name>`.
pub(super) fn parse_target(
    file: &Path,
    e: &Entry,
    who: &str,
    env: &Env,
    connect_timeout: Duration,
) -> Result<Target, ConfigError> {
    let mut target = Target::parse_one_server(&e.value, env)
        .map_err(|err| at(file, e.line, format!("{who}: {err}")))?;
    target.set_connect_timeout(connect_timeout);
    Ok(target)
}

/// A node file name is `<name>.ini`, and the name is printed as `name: state` on `/nodes`,
/// which scripts split at `: `.
const NAME_RULE: &str = "use letters, digits, \"_\", \"-\" and \".\", starting with a letter or digit \
                         (it names the node file <configdir>/<name>.ini and the node on the status pages)";
/// A file name has at most 255 bytes, `.ini` included.
const MAX_NAME_LEN: usize = 251;

fn valid_server_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

pub(super) fn load_servers(
    file: &Path,
    section: Option<&Section>,
    env: &Env,
    connect_timeout: Duration,
    configdir: &Path,
) -> Result<Vec<Server>, ConfigError> {
    let Some(section) = section else {
        return Err(in_file(
            file,
            "no [servers] section; add [servers] with one line per cluster member: name=connection string",
        ));
    };
    if section.entries.is_empty() {
        return Err(at(
            file,
            section.line,
            "[servers] lists no server; add one line per cluster member: name=connection string",
        ));
    }
    section
        .entries
        .iter()
        .map(|e| load_server(file, e, env, connect_timeout, configdir))
        .collect()
}

fn load_server(
    file: &Path,
    e: &Entry,
    env: &Env,
    connect_timeout: Duration,
    configdir: &Path,
) -> Result<Server, ConfigError> {
    let name = &e.key;
    if !valid_server_name(name) {
        return Err(at(
            file,
            e.line,
            format!("server name {} cannot be used; {NAME_RULE}", shown(name)),
        ));
    }
    if e.value.is_empty() {
        return Err(at(
            file,
            e.line,
            format!(
                "server {name} has no connection string; write {name}=host=... port=... dbname=..."
            ),
        ));
    }
    let target = parse_target(file, e, &format!("server {name}"), env, connect_timeout)?;

    let node_file = configdir.join(format!("{name}.ini"));
    node_file::read(&node_file).map_err(|p| {
        if p.not_found() {
            at(
                file,
                e.line,
                format!(
                    "server {name}: node file {f} does not exist; create {f}, a complete PgBouncer config for node {name}",
                    f = node_file.display()
                ),
            )
        } else {
            at(file, e.line, format!("server {name}: {p}"))
        }
    })?;
    Ok(Server {
        name: name.clone(),
        target,
        conninfo: e.value.clone(),
        node_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use std::fs;

    #[test]
    fn a_config_without_servers_says_to_add_one() {
        let d = Dir::new();
        assert_eq!(
            d.err(GLOBAL),
            "config error: rebouncer.ini: no [servers] section; add [servers] with one line per cluster member: \
             name=connection string"
        );
        assert_eq!(
            d.err(&format!("{GLOBAL}\n[servers]\n; none yet\n")),
            "config error: rebouncer.ini:6: [servers] lists no server; add one line per cluster member: \
             name=connection string"
        );
    }

    #[test]
    fn server_names_must_be_plain_file_names() {
        let d = Dir::new();
        for bad in [
            "../x", "a/b", ".", "..", ".hidden", "-x", "db 1", "db:1", "dé",
        ] {
            let e = d.err(&format!("{GLOBAL}\n[servers]\n{bad}=host=x\n"));
            assert!(
                e.starts_with("config error: rebouncer.ini:7: server name "),
                "{bad}: {e}"
            );
            assert!(
                e.contains("cannot be used; use letters, digits"),
                "{bad}: {e}"
            );
        }
        let e = d.err(&format!("{GLOBAL}\n[servers]\n../x=host=x\n"));
        assert!(e.contains("server name this key cannot be used"), "{e}");
        let e = d.err(&format!("{GLOBAL}\n[servers]\n.hidden=host=x\n"));
        assert!(e.contains("server name \".hidden\" cannot be used"), "{e}");
    }

    #[test]
    fn a_server_without_a_connection_string_is_refused() {
        assert_eq!(
            Dir::new().err(&format!("{GLOBAL}\n[servers]\ndb1=\n")),
            "config error: rebouncer.ini:7: server db1 has no connection string; \
             write db1=host=... port=... dbname=..."
        );
    }

    #[test]
    fn a_bad_connection_string_is_reported_with_the_line_and_server_name() {
        let e = Dir::new().err(&format!(
            "{GLOBAL}\n[servers]\ndb1=host=x\ndb2=host=x port=notaport\n"
        ));
        assert!(
            e.starts_with("config error: rebouncer.ini:8: server db2: "),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn a_server_or_pgbouncer_with_several_hosts_is_refused() {
        let d = Dir::new();
        for (line, who) in [
            ("db1=host=10.0.0.1,10.0.0.9 user=r", "server db1"),
            ("db1=host=10.0.0.1 port=5432,5433 user=r", "server db1"),
            (
                "db1=postgresql://r:s3cret@10.0.0.1,10.0.0.9/postgres",
                "server db1",
            ),
        ] {
            let e = d.err(&format!("{GLOBAL}\n[servers]\n{line}\n"));
            assert!(
                e.starts_with(&format!(
                    "config error: rebouncer.ini:7: {who}: the connection string names 2 "
                )),
                "{line}: {e}"
            );
            assert!(e.contains("a check must reach one known server"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let e = d.err(&with_global("").replace(
            "host=/tmp port=6432",
            "host=/tmp,/var/run/postgresql port=6432",
        ));
        assert!(
            e.starts_with(
                "config error: rebouncer.ini:2: pgbouncer: the connection string names 2 hosts; "
            ),
            "{e}"
        );
    }

    #[test]
    fn a_missing_node_file_says_what_to_create() {
        let d = Dir::new();
        let e = d.err(&format!("{GLOBAL}\n{SERVERS}db3=host=10.0.0.3\n"));
        let f = d.path().join("nodes/db3.ini");
        assert_eq!(
            e,
            format!(
                "config error: rebouncer.ini:9: server db3: node file {f} does not exist; \
                 create {f}, a complete PgBouncer config for node db3",
                f = f.display()
            )
        );
    }

    #[test]
    fn a_node_file_without_databases_is_refused_at_start() {
        let d = Dir::new();
        d.write("nodes/db1.ini", "[pgbouncer]\nlisten_port=6432\n");
        let e = d.err(&with_global(""));
        assert_eq!(
            e,
            format!(
                "config error: rebouncer.ini:8: server db1: {}: no [databases] section; a node file is a \
                 complete PgBouncer config whose [databases] point at that node",
                d.path().join("nodes/db1.ini").display()
            )
        );
    }

    #[test]
    fn an_unreadable_or_garbage_node_file_is_refused_at_start() {
        let d = Dir::new();
        let f = d.path().join("nodes/db1.ini");
        fs::remove_file(&f).unwrap();
        fs::create_dir(&f).unwrap();
        let e = d.err(&with_global(""));
        assert!(
            e.starts_with(&format!(
                "config error: rebouncer.ini:8: server db1: {}: cannot read the node file: ",
                f.display()
            )),
            "{e}"
        );
        fs::remove_dir(&f).unwrap();
        fs::write(&f, b"\x7fELF\x02\x01\x01\x00\xff\xff").unwrap();
        let e = d.err(&with_global(""));
        assert!(
            e.contains(&format!(
                "server db1: {}:1: this line is not UTF-8 text",
                f.display()
            )),
            "{e}"
        );
        fs::write(&f, "this is not\nan ini file\n").unwrap();
        let e = d.err(&with_global(""));
        assert!(
            e.contains(&format!(
                "server db1: {}:1: this line has no \"=\"",
                f.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn a_star_only_node_file_is_refused_at_start_naming_server_and_file() {
        let d = Dir::new();
        d.write(
            "nodes/db2.ini",
            "[databases]\n* = host=10.0.0.2 port=5432\n[pgbouncer]\nlisten_port=6432\n",
        );
        let e = d.err(&with_global(""));
        assert!(
            e.starts_with(&format!(
                "config error: rebouncer.ini:7: server db2: {}:1: [databases] names no database \
                 (only the \"*\" fallback); ",
                d.path().join("nodes/db2.ini").display()
            )),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn missing_node_file_names_its_path() {
        let e = read_node_file(Path::new("/nonexistent/db1.ini"))
            .unwrap_err()
            .0;
        assert!(
            e.starts_with(
                "config error: /nonexistent/db1.ini: cannot read the node file: No such file"
            ),
            "{e}"
        );
    }
}
