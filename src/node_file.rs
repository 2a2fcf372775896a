//! The per-node PgBouncer configs the rebouncer config points at: `<configdir>/<node>.ini`,
//! each a complete PgBouncer config whose `[databases]` route to that node. rebouncer reads
//! only where each named database goes, to confirm after a switch that PgBouncer routes
//! there (`SHOW DATABASES`).
//!
//! The file goes through rust-ini, the project's INI crate, after a pass
//! (`prepare_node_text`) that neutralises exactly those quirks where PgBouncer's own parser
//! differs, so rust-ini sees what PgBouncer will see. No message repeats a connection
//! string: it may hold a password.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use ini::{Ini, ParseOption};

use crate::ini_text::{Line, ReadError, classify, read_text, shown};

/// One entry of a node file's `[databases]` section, as PgBouncer will use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseEntry {
    pub name: String,
    /// `None` when the entry names no host (PgBouncer then uses its unix socket default).
    pub host: Option<String>,
    pub port: u16,
}

/// A precooked PgBouncer config for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    pub path: PathBuf,
    /// Named databases in file order, at least one; the `*` fallback entry is not listed.
    pub databases: Vec<DatabaseEntry>,
}

/// What is wrong with a node file; Display: `<path>[:<line>]: <message>`.
#[derive(Debug)]
pub struct NodeFileError {
    path: PathBuf,
    line: Option<usize>,
    msg: String,
    not_found: bool,
}

impl NodeFileError {
    /// The file does not exist (as opposed to existing and being unusable).
    pub fn not_found(&self) -> bool {
        self.not_found
    }
}

impl std::error::Error for NodeFileError {}

impl fmt::Display for NodeFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        write!(f, ": {}", self.msg)
    }
}

/// rust-ini as close to PgBouncer (and Go) as it goes: values verbatim.
fn go_like() -> ParseOption {
    ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        enabled_indented_mutiline_value: false,
        enabled_preserve_key_leading_whitespace: false,
    }
}

/// The node file text made safe for rust-ini, line for line (so its line numbers stay
/// right), plus what the pass learned.
#[derive(Debug)]
struct Prepared {
    text: String,
    /// Line of each key in `[databases]`; a repeated name keeps its last line.
    database_lines: HashMap<String, usize>,
    /// `%include` was used: sections may come from another file.
    includes: bool,
    /// Line of the first `[databases]` header.
    databases_header: Option<usize>,
}

/// Where PgBouncer's parser (libusual `parse_ini_file`) and rust-ini part ways:
/// - an indented `#`/`;` comment is a comment for PgBouncer, a key prefix for rust-ini;
/// - `%include FILE` is a PgBouncer directive, a glued-on key for rust-ini; blanked here
///   (its contents are not read, so a database defined there is not listed);
/// - a trailing `\` is literal for PgBouncer, a line join for rust-ini, even with escapes
///   off; a space after it stops the join and rust-ini trims it from the value;
/// - a line without `=` and a key before any section are syntax errors for PgBouncer but
///   silently accepted (glued to the next line, or put in a general section) by rust-ini;
/// - `:` ends a key for rust-ini; PgBouncer's unquoted keys cannot contain it.
fn prepare_node_text(text: &str) -> Result<Prepared, (usize, String)> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut database_lines = HashMap::new();
    let mut includes = false;
    let mut databases_header = None;
    let mut section: Option<&str> = None;
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let mut line = raw.to_string();
        if raw.trim_start().starts_with("%include") {
            includes = true;
            line.clear();
        }
        match classify(raw) {
            _ if line.is_empty() => {}
            Line::Blank => line.clear(),
            Line::Section { name, rest } => {
                section = Some(name);
                if name == "databases" && databases_header.is_none() {
                    databases_header = Some(no);
                }
                // PgBouncer reads on after the `]`: a comment there is fine for it, while
                // rust-ini calls it an inline comment and fails.
                if rest.starts_with('#') || rest.starts_with(';') {
                    line = format!("[{name}]");
                } else if !rest.is_empty() {
                    return Err((
                        no,
                        format!("text after \"[{name}]\"; put it on a line of its own"),
                    ));
                }
            }
            Line::UnclosedSection => {
                return Err((no, "a section header must end with \"]\"; PgBouncer rejects the file too (syntax error)".into()));
            }
            Line::NoEquals => {
                return Err((no, "this line has no \"=\"; PgBouncer rejects the file too (syntax error): fix or remove the line".into()));
            }
            Line::Entry { key, .. } => {
                let Some(section) = section else {
                    return Err((
                        no,
                        format!(
                            "{} comes before any section; PgBouncer rejects a value without section: move it under [databases] or [pgbouncer]",
                            shown(key)
                        ),
                    ));
                };
                if key.contains(':') {
                    return Err((
                        no,
                        format!(
                            "{} contains \":\"; PgBouncer does not accept it in a name (syntax error)",
                            shown(key)
                        ),
                    ));
                }
                if section == "databases" {
                    database_lines.insert(key.to_string(), no);
                }
            }
        }
        out.push_str(&line);
        if line.ends_with('\\') {
            out.push(' ');
        }
        out.push('\n');
    }
    Ok(Prepared {
        text: out,
        database_lines,
        includes,
        databases_header,
    })
}

/// Read one node file and list where its `[databases]` entries point.
pub fn read(path: &Path) -> Result<NodeFile, NodeFileError> {
    let problem = |line: Option<usize>, msg: String| NodeFileError {
        path: path.to_path_buf(),
        line,
        msg,
        not_found: false,
    };
    let text = read_text(path).map_err(|e| match e {
        ReadError::Io(err) => NodeFileError {
            not_found: err.kind() == io::ErrorKind::NotFound,
            ..problem(None, format!("cannot read the node file: {err}"))
        },
        ReadError::NotUtf8(line) => problem(
            Some(line),
            "this line is not UTF-8 text; is this really a PgBouncer config? Save it as UTF-8"
                .into(),
        ),
    })?;
    let prepared = prepare_node_text(&text).map_err(|(line, msg)| problem(Some(line), msg))?;
    let ini = Ini::load_from_str_opt(&prepared.text, go_like()).map_err(|e| {
        problem(
            Some(e.line),
            // rust-ini's column points past the offending character; the line is enough.
            format!(
                "not a valid INI file ({}); PgBouncer would not load it either",
                e.msg
            ),
        )
    })?;
    if ini.section(Some("databases")).is_none() {
        return Err(problem(
            None,
            "no [databases] section; a node file is a complete PgBouncer config whose [databases] point at that node".into(),
        ));
    }
    // Without [pgbouncer], a RELOAD would keep or reset settings unpredictably; an included
    // file may supply it, which we do not read.
    if ini.section(Some("pgbouncer")).is_none() && !prepared.includes {
        return Err(problem(
            None,
            "no [pgbouncer] section; a node file is a complete PgBouncer config: add the [pgbouncer] settings PgBouncer runs with".into(),
        ));
    }
    let mut databases: Vec<DatabaseEntry> = Vec::new();
    for props in ini.section_all(Some("databases")) {
        for (key, value) in props.iter() {
            // `*` is the fallback for databases not listed; it names no database to check.
            if key == "*" {
                continue;
            }
            let line = prepared.database_lines.get(key).copied();
            let entry = database_entry(key, value).map_err(|msg| problem(line, msg))?;
            // PgBouncer: a repeated name redefines the database; the last definition counts.
            match databases.iter_mut().find(|d| d.name == entry.name) {
                Some(d) => *d = entry,
                None => databases.push(entry),
            }
        }
    }
    if databases.is_empty() {
        // A switch is confirmed by finding each named database in SHOW DATABASES, routed
        // where this file says; with none named, any config PgBouncer ends up with would
        // pass as confirmed.
        let has_star = prepared.database_lines.contains_key("*");
        let what = match (has_star, prepared.includes) {
            (true, true) => "only the \"*\" fallback, and databases in %include files are not read",
            (true, false) => "only the \"*\" fallback",
            (false, true) => "databases in %include files are not read",
            (false, false) => "the section is empty",
        };
        return Err(problem(
            prepared.databases_header,
            format!(
                "[databases] names no database ({what}); rebouncer confirms a switch by \
                 finding these databases in PgBouncer's SHOW DATABASES, so with none a wrong \
                 config would pass: add a line for each database the applications use, \
                 e.g. appdb = host=<this node> port=5432 dbname=appdb"
            ),
        ));
    }
    Ok(NodeFile {
        path: path.to_path_buf(),
        databases,
    })
}

/// One `[databases]` line as PgBouncer reads it (`parse_database` in src/loader.c).
fn database_entry(key: &str, value: &str) -> Result<DatabaseEntry, String> {
    // PgBouncer 1.21+ allows a quoted name, `'my db' = ...`, with no escapes inside.
    let name = key
        .strip_prefix('\'')
        .and_then(|k| k.strip_suffix('\''))
        .unwrap_or(key);
    let shown_name = shown(name);
    let pairs = pgbouncer_connstr_pairs(value).map_err(|why| {
        format!("database {shown_name}: {why}; PgBouncer would reject this entry")
    })?;
    let mut host = None;
    let mut port = 5432;
    // Like PgBouncer: the last of repeated keys wins.
    for (k, v) in pairs {
        match k {
            "host" => host = Some(v),
            "port" => {
                port = v.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
                    format!(
                        "database {shown_name}: port={} is not a port number (1 to 65535); correct it",
                        if v.len() <= 16 { v.as_str() } else { "..." }
                    )
                })?;
            }
            _ => {}
        }
    }
    Ok(DatabaseEntry {
        name: name.to_string(),
        host,
        port,
    })
}

/// PgBouncer's connection-string syntax (`cstr_get_pair`, src/loader.c): `key=value`
/// separated by spaces (only spaces, not tabs), spaces allowed around `=`, a value in single
/// quotes may contain spaces and `''` for a quote; no backslash escapes; no empty values.
fn pgbouncer_connstr_pairs(s: &str) -> Result<Vec<(&str, String)>, &'static str> {
    let mut pairs = Vec::new();
    let mut rest = s.trim_start_matches(' ');
    while !rest.is_empty() {
        let key_end = rest.find(['=', ' ']).unwrap_or(rest.len());
        let key = &rest[..key_end];
        let after_key = rest[key_end..].trim_start_matches(' ');
        let Some(after_eq) = after_key.strip_prefix('=') else {
            return Err("a word without \"=\" in the connection string (expected key=value)");
        };
        if key.is_empty() {
            return Err("\"=\" without a key in the connection string");
        }
        let v = after_eq.trim_start_matches(' ');
        let (value, next) = match v.strip_prefix('\'') {
            Some(quoted) => unquote(quoted)?,
            None => {
                let end = v.find(' ').unwrap_or(v.len());
                (v[..end].to_string(), &v[end..])
            }
        };
        if value.is_empty() {
            return Err("an empty value in the connection string");
        }
        pairs.push((key, value));
        rest = next.trim_start_matches(' ');
    }
    Ok(pairs)
}

/// The rest of a single-quoted value: returns the value and what follows the closing quote.
fn unquote(s: &str) -> Result<(String, &str), &'static str> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\'' {
            value.push(c);
            continue;
        }
        if s[i + 1..].starts_with('\'') {
            value.push('\'');
            chars.next();
            continue;
        }
        let next = &s[i + 1..];
        if !next.is_empty() && !next.starts_with(' ') {
            return Err(
                "text right after a closing quote in the connection string (expected a space)",
            );
        }
        return Ok((value, next));
    }
    Err("an unterminated quote in the connection string")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// The file read, or the message an operator gets (the file's path shown as `N`), with
    /// the prefix `config::read_node_file` gives it.
    fn node(text: &str) -> Result<NodeFile, String> {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("n.ini");
        fs::write(&p, text).unwrap();
        read(&p).map_err(|e| format!("config error: {e}").replace(&p.display().to_string(), "N"))
    }

    fn db(name: &str, host: Option<&str>, port: u16) -> DatabaseEntry {
        DatabaseEntry {
            name: name.into(),
            host: host.map(Into::into),
            port,
        }
    }

    #[test]
    fn node_file_databases_with_host_and_port_in_file_order() {
        let n = node(
            "; node db1\n[databases]\n\
             zeta = host=10.0.0.1 port=5433 dbname=z\n\
             alpha = dbname=a host = 10.0.0.1\n\
             sock = host=/var/run/postgresql\n\
             * = host=10.0.0.1\n\
             [pgbouncer]\nlisten_port = 6432\n",
        )
        .unwrap();
        assert_eq!(
            n.databases,
            [
                db("zeta", Some("10.0.0.1"), 5433),
                db("alpha", Some("10.0.0.1"), 5432),
                db("sock", Some("/var/run/postgresql"), 5432),
            ]
        );
    }

    #[test]
    fn node_file_entry_without_host_uses_the_default_socket_and_port() {
        let n = node("[databases]\nappdb = dbname=app\n[pgbouncer]\n").unwrap();
        assert_eq!(n.databases, [db("appdb", None, 5432)]);
    }

    #[test]
    fn node_file_quoted_values_and_names_as_pgbouncer_reads_them() {
        let n = node(
            "[databases]\n\
             a = host='my host' port='6000' password='it''s #; \\x'\n\
             'my db' = host=h\n\
             [pgbouncer]\n",
        )
        .unwrap();
        assert_eq!(
            n.databases,
            [db("a", Some("my host"), 6000), db("my db", Some("h"), 5432)]
        );
    }

    #[test]
    fn node_file_last_definition_of_a_database_counts() {
        let n =
            node("[databases]\na = host=x\nb = host=y\na = host=z port=1\n[pgbouncer]\n").unwrap();
        assert_eq!(
            n.databases,
            [db("a", Some("z"), 1), db("b", Some("y"), 5432)]
        );
    }

    #[test]
    fn node_file_bad_port_names_the_database_and_line() {
        let e = node("[databases]\nappdb = host=x port=abc\n[pgbouncer]\n").unwrap_err();
        assert_eq!(
            e,
            "config error: N:2: database \"appdb\": port=abc is not a port number (1 to 65535); correct it"
        );
        assert!(node("[databases]\na = host=x port=0\n[pgbouncer]\n").is_err());
        assert!(node("[databases]\na = host=x port=65536\n[pgbouncer]\n").is_err());
    }

    #[test]
    fn node_file_connection_string_syntax_errors_do_not_echo_the_value() {
        for bad in [
            "host=x password='s3cret",
            "host=x password=s3cret junk",
            "host= ",
            "host=x password='s3cret'port=1",
            "=s3cret",
        ] {
            let e = node(&format!("[databases]\na = {bad}\n[pgbouncer]\n")).unwrap_err();
            assert!(
                e.starts_with("config error: N:2: database \"a\": "),
                "{bad}: {e}"
            );
            assert!(
                e.ends_with("PgBouncer would reject this entry"),
                "{bad}: {e}"
            );
            assert!(!e.contains("s3cret"), "{bad}: {e}");
        }
    }

    #[test]
    fn node_file_without_sections_is_refused() {
        let e = node("[pgbouncer]\nlisten_port=1\n").unwrap_err();
        assert!(
            e.starts_with("config error: N: no [databases] section"),
            "{e}"
        );
        let e = node("[databases]\na = host=x\n").unwrap_err();
        assert!(
            e.starts_with("config error: N: no [pgbouncer] section"),
            "{e}"
        );
        // An included file may hold [pgbouncer]; PgBouncer resolves it, we cannot check it.
        let n = node("%include /etc/pgbouncer/common.ini\n[databases]\na = host=x\n").unwrap();
        assert_eq!(n.databases, [db("a", Some("x"), 5432)]);
    }

    #[test]
    fn node_file_comments_and_backslashes_as_pgbouncer_reads_them() {
        let n = node(
            "[databases]  ; the node\n  # indented comment\n\
             a = host=x password=ab\\\n\
             b = host=y\n[pgbouncer]\n",
        )
        .unwrap();
        assert_eq!(
            n.databases,
            [db("a", Some("x"), 5432), db("b", Some("y"), 5432)]
        );
    }

    #[test]
    fn node_file_lines_rust_ini_would_misread_are_refused_with_their_line() {
        let e = node("[databases]\ngarbage line\na = host=x\n[pgbouncer]\n").unwrap_err();
        assert!(
            e.starts_with("config error: N:2: this line has no \"=\""),
            "{e}"
        );
        let e = node("a = host=x\n[databases]\n[pgbouncer]\n").unwrap_err();
        assert!(
            e.starts_with("config error: N:1: \"a\" comes before any section"),
            "{e}"
        );
        let e = node("[databases]\na:b = host=x\n[pgbouncer]\n").unwrap_err();
        assert!(
            e.starts_with("config error: N:2: this key contains \":\""),
            "{e}"
        );
        let e = node("[databases\na = host=x\n").unwrap_err();
        assert!(
            e.starts_with("config error: N:1: a section header must end with"),
            "{e}"
        );
        let e = node("[databases]\na = host=x\n= host=y\n[pgbouncer]\n").unwrap_err();
        assert_eq!(
            e,
            "config error: N:3: not a valid INI file (missing key); PgBouncer would not load it either"
        );
    }

    #[test]
    fn node_file_naming_no_database_is_refused_with_the_line_and_why() {
        for (text, what, line) in [
            (
                "[databases]\n* = host=10.0.0.1\n[pgbouncer]\n",
                "only the \"*\" fallback",
                1,
            ),
            (
                "; node db1\n\n[databases]\n%include /etc/pgbouncer/dbs.ini\n[pgbouncer]\n",
                "databases in %include files are not read",
                3,
            ),
            (
                "[pgbouncer]\nlisten_port=1\n[databases]  ; none\n\n",
                "the section is empty",
                3,
            ),
            (
                "[databases]\n* = host=x\n%include /etc/x.ini\n[pgbouncer]\n",
                "only the \"*\" fallback, and databases in %include files are not read",
                1,
            ),
        ] {
            let e = node(text).unwrap_err();
            assert_eq!(
                e,
                format!(
                    "config error: N:{line}: [databases] names no database ({what}); rebouncer confirms a switch \
                     by finding these databases in PgBouncer's SHOW DATABASES, so with none a wrong config would \
                     pass: add a line for each database the applications use, e.g. appdb = host=<this node> \
                     port=5432 dbname=appdb"
                ),
                "{text}"
            );
        }
        // One named database next to `*` is enough.
        let n = node("[databases]\n* = host=x\na = host=x\n[pgbouncer]\n").unwrap();
        assert_eq!(n.databases, [db("a", Some("x"), 5432)]);
    }
}
