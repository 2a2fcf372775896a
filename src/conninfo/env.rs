//! What the process environment contributes to a connection string, as libpq reads it:
//! the `PG*` variables, the OS user name, the home directory, and the password file
//! (`passfile`, `PGPASSFILE` or `~/.pgpass`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What the process environment contributes to a connection string: `PG*` variables,
/// the home directory (for `~/.pgpass`, `~/.postgresql/root.crt`) and the OS user name.
/// Captured once, so parsing is a function of (string, Env) and testable without touching
/// the real environment.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub vars: HashMap<String, String>,
    pub home: Option<PathBuf>,
    pub os_user: Option<String>,
    /// `$STATE_DIRECTORY`, set by systemd's `StateDirectory=` (first entry): where the
    /// state file goes when the config names none.
    pub state_directory: Option<PathBuf>,
}

impl Env {
    /// The real environment:
    /// - `vars`: every `PG*` variable whose name and value are UTF-8.
    /// - `home`: `$HOME`, else the home field of the process's passwd entry.
    /// - `os_user`: the passwd name of the process's effective uid (what libpq and lib/pq use,
    ///   and what tokio-postgres would send), else `$USER`, else `$LOGNAME`. The uid is read
    ///   from the owner of `/proc/self` (Linux) because the crate has no libc binding; the
    ///   passwd entry from `/etc/passwd`, so users known only via NSS/LDAP fall back to
    ///   `$USER`/`$LOGNAME`.
    pub fn from_process() -> Env {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("PG"))
            .collect();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let passwd = passwd_entry_of_self();
        let home = var("HOME")
            .map(PathBuf::from)
            .or_else(|| passwd.as_ref().map(|(_, h)| h.clone()));
        let os_user = passwd
            .map(|(u, _)| u)
            .or_else(|| var("USER"))
            .or_else(|| var("LOGNAME"));
        let state_directory = var("STATE_DIRECTORY")
            .and_then(|v| v.split(':').next().map(PathBuf::from))
            .filter(|p| p.is_absolute());
        Env {
            vars,
            home,
            os_user,
            state_directory,
        }
    }

    /// A variable, with an empty value treated as unset (libpq would use `PGHOST=""` as an
    /// empty host; nobody means that).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// (user name, home directory) of the effective uid, from `/etc/passwd`.
fn passwd_entry_of_self() -> Option<(String, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 6 && f[2].parse::<u32>().ok()? == uid && !f[0].is_empty())
            .then(|| (f[0].to_string(), PathBuf::from(f[5])))
    })
}

/// libpq's environment variables, as (keyword, variable). Only these are read; libpq's
/// others (PGOPTIONS, PGSERVICE, ...) are ignored so that a stray shell variable cannot
/// break the PgBouncer admin connection.
pub const ENV_DEFAULTS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("application_name", "PGAPPNAME"),
];

#[derive(Clone, Debug)]
pub enum PasswordFrom {
    None,
    Conninfo,
    Env,
    Passfile { path: PathBuf, line: usize },
}

/// The password file's text; Ok(None) when it does not exist (libpq: silently no
/// password); Err(note) when it is skipped, as libpq does (with a warning) for a file that
/// is not a plain file or that group/others may access.
pub fn read_passfile(path: &Path) -> Result<Option<String>, String> {
    use std::os::unix::fs::MetadataExt;
    let name = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("password file \"{name}\" skipped: {e}")),
    };
    if !meta.is_file() {
        return Err(format!(
            "password file \"{name}\" skipped: not a plain file"
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "password file \"{name}\" skipped: it has group or world access; chmod 600 it"
        ));
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| format!("password file \"{name}\" skipped: {e}"))
}

/// The first line of a `.pgpass` text matching host:port:dbname:user, as (password,
/// 1-based line number). libpq format: `*` alone matches anything, `\` escapes `:` and `\`,
/// lines starting with `#` are comments, the password ends at an unescaped `:`.
pub fn passfile_match(
    text: &str,
    host: &str,
    port: &str,
    db: &str,
    user: &str,
) -> Option<(String, usize)> {
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rest = [host, port, db, user]
            .iter()
            .try_fold(line, |rest, want| match_field(rest, want));
        if let Some(rest) = rest {
            let mut pw = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    ':' => break,
                    '\\' => match chars.next() {
                        Some(n) => pw.push(n),
                        None => pw.push('\\'),
                    },
                    c => pw.push(c),
                }
            }
            return Some((pw, i + 1));
        }
    }
    None
}

/// Matches one `:`-terminated field at the start of `line`; returns what follows the `:`.
pub fn match_field<'a>(line: &'a str, want: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut want = want.chars();
    let mut it = line.char_indices();
    while let Some((i, c)) = it.next() {
        let c = match c {
            '\\' => it.next()?.1,
            ':' => return want.next().is_none().then(|| &line[i + 1..]),
            c => c,
        };
        if want.next() != Some(c) {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::conninfo::Target;
    use crate::conninfo::hints::Cause;
    use crate::conninfo::testing::*;

    #[test]
    fn env_defaults() {
        let t = Target::parse("", &env()).unwrap();
        assert_eq!(hosts(&t), ["localhost"]);
        assert_eq!(t.config.get_ports(), [5432]);
        assert_eq!(t.config.get_user(), Some("osuser"));
        assert_eq!(t.endpoint, "localhost:5432");
        let e = env_with(&[
            ("PGHOST", "pg.example"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGDATABASE", "envdb"),
            ("PGAPPNAME", "envapp"),
            ("PGCONNECT_TIMEOUT", "7"),
        ]);
        let t = Target::parse("", &e).unwrap();
        assert_eq!(t.endpoint, "pg.example:6000");
        assert_eq!(t.config.get_user(), Some("envuser"));
        assert_eq!(password(&t).as_deref(), Some("envpw"));
        assert_eq!(t.config.get_dbname(), Some("envdb"));
        assert_eq!(t.config.get_application_name(), Some("envapp"));
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&Duration::from_secs(7))
        );
        // the string wins
        let t = Target::parse("host=h port=1 user=u password=p dbname=d", &e).unwrap();
        assert_eq!(t.endpoint, "h:1");
        assert_eq!(t.config.get_user(), Some("u"));
        assert_eq!(password(&t).as_deref(), Some("p"));
        assert_eq!(t.config.get_dbname(), Some("d"));
        let e = env_with(&[("PGPORT", "x")]);
        assert!(Target::parse("", &e).unwrap_err().0.contains("PGPORT"));
        let e = env_with(&[("PGHOSTADDR", "127.0.0.1")]);
        let t = Target::parse("sslmode=disable", &e).unwrap();
        assert_eq!(t.endpoint, "127.0.0.1:5432");
    }

    #[test]
    fn passfile_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let text = "# comment\n\
                    other:5432:*:alice:nope\n\
                    db1:5432:app:alice:first\n\
                    *:*:*:bob:wild\\:card\\\\x:ignored\n\
                    weird\\:host:5432:*:*:escaped\n\
                    localhost:6432:*:carol:sockpw\n";
        let file = write_file(dir.path(), "pgpass", text, 0o600);
        let e = env_with(&[("PGPASSFILE", file.to_str().unwrap())]);
        let pw = |s: &str| password(&Target::parse(s, &e).unwrap());
        assert_eq!(
            pw("host=db1 dbname=app user=alice").as_deref(),
            Some("first")
        );
        assert_eq!(pw("host=db1 dbname=other user=alice"), None);
        assert_eq!(
            pw("host=any port=1 user=bob").as_deref(),
            Some("wild:card\\x")
        );
        assert_eq!(pw("host=weird:host user=x").as_deref(), Some("escaped"));
        // unix socket host matches "localhost"
        assert_eq!(
            pw("host=/var/run/postgresql port=6432 user=carol").as_deref(),
            Some("sockpw")
        );
        // a password in the string wins; an empty one counts as none
        assert_eq!(
            pw("host=db1 dbname=app user=alice password=x").as_deref(),
            Some("x")
        );
        assert_eq!(
            pw("host=db1 dbname=app user=alice password=''").as_deref(),
            Some("first")
        );
        // dbname defaults to the user name for matching
        let t = Target::parse("host=db1 user=app", &e).unwrap();
        assert_eq!(password(&t), None);
        // passfile= in the string, and <home>/.pgpass
        let t = Target::parse(
            &format!("host=db1 dbname=app user=alice passfile={}", file.display()),
            &env(),
        )
        .unwrap();
        assert_eq!(password(&t).as_deref(), Some("first"));
        std::fs::copy(&file, dir.path().join(".pgpass")).unwrap();
        let mut h = env();
        h.home = Some(dir.path().to_path_buf());
        let t = Target::parse("host=db1 dbname=app user=alice", &h).unwrap();
        assert_eq!(password(&t).as_deref(), Some("first"));
    }

    #[test]
    fn passfile_readable_by_others_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(dir.path(), "pgpass", "*:*:*:*:pw\n", 0o644);
        let e = env_with(&[("PGPASSFILE", file.to_str().unwrap())]);
        let t = Target::parse("host=h user=u", &e).unwrap();
        assert_eq!(password(&t), None);
        assert!(t.notes()[0].contains("chmod 600"), "{:?}", t.notes());
        let hint = t.hint(&Cause::PasswordMissing).unwrap();
        assert!(hint.contains("group or world access"), "{hint}");
        // a missing file is no error and no note
        let e = env_with(&[("PGPASSFILE", "/nonexistent/pgpass")]);
        let t = Target::parse("host=h user=u", &e).unwrap();
        assert!(t.notes().is_empty());
    }
}
