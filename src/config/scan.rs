//! The configuration file split into sections by a strict line pass, which is also the
//! source of every value.
//!
//! Not rust-ini (which reads the node files): the Go tool parsed the file line by line
//! (trim; skip blank, `#` and `;` lines; `[section]`; `key=value` split at the first
//! `=`), and rust-ini 0.21 silently reads inputs of that grammar differently: a line
//! without `=` is glued to the next key, an indented comment swallows the next key, a
//! trailing `\` joins two lines, `:` splits keys, keys outside a section are accepted, and
//! of duplicated keys the first wins where Go took the last. Our pass knows every value's
//! line number, which the error messages need anyway.

use std::io;
use std::path::Path;

use super::error::{ConfigError, at, in_file};
use crate::ini_text::{Line, ReadError, classify, read_text, shown};

pub(super) fn read_config_file(path: &Path, cwd: &Path) -> Result<String, ConfigError> {
    read_text(&cwd.join(path)).map_err(|e| match e {
        ReadError::Io(e) => {
            let hint = match e.kind() {
                io::ErrorKind::PermissionDenied => {
                    "make it readable for the user rebouncer runs as"
                }
                _ => "give its path with -config=FILE",
            };
            in_file(
                path,
                format!("cannot read the configuration file: {e} ({hint})"),
            )
        }
        ReadError::NotUtf8(line) => at(
            path,
            line,
            "this line is not UTF-8 text; save the file as UTF-8",
        ),
    })
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) line: usize,
    pub(super) key: String,
    pub(super) value: String,
}

#[derive(Debug)]
pub(super) struct Section {
    pub(super) name: String,
    pub(super) line: usize,
    pub(super) entries: Vec<Entry>,
}

/// Split the config into sections, rejecting every line whose meaning is not certain.
pub(super) fn scan(file: &Path, text: &str) -> Result<Vec<Section>, ConfigError> {
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        match classify(raw) {
            Line::Blank => {}
            Line::UnclosedSection => {
                return Err(at(
                    file,
                    no,
                    "a section header must end with \"]\"; write it as [global] or [servers] on a line of its own",
                ));
            }
            Line::Section { name, rest } => {
                sections.push(new_section(file, no, name, rest, &sections)?);
            }
            Line::NoEquals => {
                return Err(at(
                    file,
                    no,
                    "this line has no \"=\"; settings are written key=value, \
                     comments start with # or ; (fix the line or remove it)",
                ));
            }
            Line::Entry { key, value } => {
                check_entry_line(file, no, raw, key)?;
                let Some(section) = sections.last_mut() else {
                    return Err(at(
                        file,
                        no,
                        format!(
                            "{} is outside any section; put it under [global] (settings) \
                             or [servers] (one line per server)",
                            shown(key)
                        ),
                    ));
                };
                if let Some(first) = section.entries.iter().find(|e| e.key == key) {
                    // Go silently took the last of the two.
                    return Err(at(
                        file,
                        no,
                        format!(
                            "{} is set twice in [{}] (lines {} and {no}); keep one of the two lines",
                            shown(key),
                            section.name,
                            first.line
                        ),
                    ));
                }
                section.entries.push(Entry {
                    line: no,
                    key: key.to_string(),
                    value: value.to_string(),
                });
            }
        }
    }
    Ok(sections)
}

fn new_section(
    file: &Path,
    no: usize,
    name: &str,
    rest: &str,
    seen: &[Section],
) -> Result<Section, ConfigError> {
    if !rest.is_empty() {
        // Go: "Missing = sign"; rust-ini: glued to the next line or "inline comment".
        return Err(at(
            file,
            no,
            format!(
                "text after \"[{name}]\"; a section header stands alone on its line (put a comment on a line of its own)"
            ),
        ));
    }
    if name.is_empty() {
        return Err(at(
            file,
            no,
            "empty section name \"[]\"; the sections are [global] and [servers]",
        ));
    }
    if let Some(first) = seen.iter().find(|s| s.name == name) {
        // Go silently let the second replace the first: servers listed in the first vanished.
        return Err(at(
            file,
            no,
            format!(
                "[{name}] appears a second time (first at line {}); merge the two into one section",
                first.line
            ),
        ));
    }
    Ok(Section {
        name: name.to_string(),
        line: no,
        entries: Vec::new(),
    })
}

fn check_entry_line(file: &Path, no: usize, raw: &str, key: &str) -> Result<(), ConfigError> {
    if key.is_empty() {
        return Err(at(
            file,
            no,
            "nothing before the \"=\"; write key=value (in [servers]: name=connection string)",
        ));
    }
    if raw.trim_end().ends_with('\\') {
        // Go took the backslash literally; rust-ini and other INI readers join the next
        // line onto this one, whatever the escape options. Refuse rather than guess.
        return Err(at(
            file,
            no,
            "the line ends with a backslash, which INI readers take as \"continued on the next line\"; \
             remove the trailing backslash or quote the value",
        ));
    }
    Ok(())
}

/// `[global]` and `[servers]`; any other section is a typo that must not be ignored.
pub(super) fn known_sections<'a>(
    file: &Path,
    sections: &'a [Section],
) -> Result<(&'a Section, Option<&'a Section>), ConfigError> {
    for s in sections {
        if s.name != "global" && s.name != "servers" {
            let hint = ["global", "servers"]
                .iter()
                .find(|k| k.eq_ignore_ascii_case(&s.name))
                .map(|k| format!(" (names are case-sensitive: [{k}])"))
                .unwrap_or_default();
            return Err(at(
                file,
                s.line,
                format!(
                    "unknown section [{}]{hint}; a rebouncer config has only [global] and [servers]",
                    s.name
                ),
            ));
        }
    }
    let global = sections
        .iter()
        .find(|s| s.name == "global")
        .ok_or_else(|| {
            in_file(
                file,
                "no [global] section; add one with pgbouncer=, symlink= and configdir=",
            )
        })?;
    Ok((global, sections.iter().find(|s| s.name == "servers")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use crate::config::testing::*;
    use std::fs;
    use std::time::Duration;

    #[test]
    fn spaces_around_keys_and_values_are_trimmed_unlike_go() {
        let d = Dir::new();
        let c = d
            .load(&format!(
                "  [ global ]  \n{}  interval  =  7  \n\n{SERVERS}",
                &GLOBAL[9..]
            ))
            .unwrap();
        assert_eq!(c.interval, Duration::from_secs(7));
    }

    #[test]
    fn comments_blank_lines_and_crlf_are_ignored_and_an_indented_comment_is_a_comment() {
        let d = Dir::new();
        let text = with_global("   # an indented comment, which rust-ini would glue to the next key\ninterval=12\n\t; another\n\n")
            .replace('\n', "\r\n");
        let c = d.load(&text).unwrap();
        assert_eq!(c.interval, Duration::from_secs(12));
        assert_eq!(c.servers.len(), 2);
    }

    #[test]
    fn hash_semicolon_quotes_and_backslashes_inside_values_are_kept_verbatim() {
        let text = "[servers]\nsrv1=host=/tmp password='p#w;d\\'x' # not a comment\n";
        let sections = scan(Path::new("r.ini"), text).unwrap();
        assert_eq!(
            sections[0].entries[0].value,
            "host=/tmp password='p#w;d\\'x' # not a comment"
        );
        let d = Dir::new();
        let c = d
            .load(&with_global("").replace("symlink=pgbouncer.ini", "symlink=pg#b;1.ini"))
            .unwrap();
        assert_eq!(c.symlink, d.path().join("pg#b;1.ini"));
    }

    #[test]
    fn a_value_is_everything_after_the_first_equals_sign() {
        let text = "[servers]\ndb1 = host=a port=5 options='-c x=y'\n";
        let s = scan(Path::new("r.ini"), text).unwrap();
        assert_eq!(s[0].entries[0].key, "db1");
        assert_eq!(s[0].entries[0].value, "host=a port=5 options='-c x=y'");
    }

    #[test]
    fn a_missing_config_file_says_how_to_name_it() {
        let d = Dir::new();
        let e = load(Path::new("nope.ini"), d.path(), &test_env())
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("config error: nope.ini: cannot read the configuration file: No such file or directory"),
            "{e}"
        );
        assert!(e.ends_with("(give its path with -config=FILE)"), "{e}");
    }

    #[test]
    fn a_config_file_that_is_not_utf8_names_the_line() {
        let d = Dir::new();
        fs::write(d.path().join("rebouncer.ini"), b"[global]\n\xff\xfe\n").unwrap();
        let e = load(Path::new("rebouncer.ini"), d.path(), &test_env())
            .unwrap_err()
            .0;
        assert_eq!(
            e,
            "config error: rebouncer.ini:2: this line is not UTF-8 text; save the file as UTF-8"
        );
    }

    #[test]
    fn a_line_without_equals_is_refused_with_its_line_number() {
        let e = Dir::new().err(&with_global("garbage line"));
        assert_eq!(
            e,
            "config error: rebouncer.ini:5: this line has no \"=\"; settings are written key=value, \
             comments start with # or ; (fix the line or remove it)"
        );
    }

    #[test]
    fn a_line_without_equals_is_not_echoed_since_it_may_hold_a_password() {
        let e = Dir::new().err(&format!(
            "{GLOBAL}\n[servers]\npostgresql://u:s3cret@h/db\n"
        ));
        assert!(
            e.starts_with("config error: rebouncer.ini:7: this line has no"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        let e = Dir::new().err(&format!(
            "{GLOBAL}\n[servers]\npostgresql://u:s3cret@h/db?sslmode=require\n"
        ));
        assert!(
            e.starts_with("config error: rebouncer.ini:7: server name this key cannot be used"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn a_key_outside_any_section_is_refused() {
        let e = Dir::new().err(&format!("interval=10\n{GLOBAL}\n{SERVERS}"));
        assert_eq!(
            e,
            "config error: rebouncer.ini:1: \"interval\" is outside any section; \
             put it under [global] (settings) or [servers] (one line per server)"
        );
    }

    #[test]
    fn no_global_section_at_all() {
        let e = Dir::new().err(&format!("; nothing\n{SERVERS}"));
        assert_eq!(
            e,
            "config error: rebouncer.ini: no [global] section; add one with pgbouncer=, symlink= and configdir="
        );
        let e = Dir::new().err("");
        assert!(e.contains("no [global] section"), "{e}");
    }

    #[test]
    fn an_unknown_section_is_refused() {
        let e = Dir::new().err(&format!("{GLOBAL}\n[server]\ndb1=host=x\n"));
        assert_eq!(
            e,
            "config error: rebouncer.ini:6: unknown section [server]; a rebouncer config has only [global] and [servers]"
        );
        let e = Dir::new().err(&format!("{GLOBAL}\n[Servers]\ndb1=host=x\n"));
        assert!(e.contains("(names are case-sensitive: [servers])"), "{e}");
    }

    #[test]
    fn a_key_set_twice_names_both_lines() {
        assert_eq!(
            Dir::new().err(&with_global("interval=10\ninterval=20")),
            "config error: rebouncer.ini:6: \"interval\" is set twice in [global] (lines 5 and 6); \
             keep one of the two lines"
        );
        let e = Dir::new().err(&format!("{GLOBAL}\n{SERVERS}db2=host=10.0.0.3\n"));
        assert_eq!(
            e,
            "config error: rebouncer.ini:9: \"db2\" is set twice in [servers] (lines 7 and 9); keep one of the two lines"
        );
    }

    #[test]
    fn a_section_given_twice_is_refused_instead_of_dropping_the_first() {
        let e = Dir::new().err(&format!("{GLOBAL}\n{SERVERS}\n[servers]\ndb3=host=x\n"));
        assert_eq!(
            e,
            "config error: rebouncer.ini:10: [servers] appears a second time (first at line 6); \
             merge the two into one section"
        );
    }

    #[test]
    fn section_headers_must_stand_alone() {
        let d = Dir::new();
        let e = d.err(&format!("{GLOBAL}\n[servers] # the cluster\ndb1=host=x\n"));
        assert!(
            e.starts_with("config error: rebouncer.ini:6: text after \"[servers]\""),
            "{e}"
        );
        let e = d.err(&format!("{GLOBAL}\n[servers\ndb1=host=x\n"));
        assert!(
            e.starts_with("config error: rebouncer.ini:6: a section header must end with \"]\""),
            "{e}"
        );
        let e = d.err(&format!("{GLOBAL}\n[]\n"));
        assert!(
            e.starts_with("config error: rebouncer.ini:6: empty section name"),
            "{e}"
        );
    }

    #[test]
    fn a_server_without_a_name_is_refused() {
        assert_eq!(
            Dir::new().err(&format!("{GLOBAL}\n[servers]\n=host=x\n")),
            "config error: rebouncer.ini:7: nothing before the \"=\"; write key=value \
             (in [servers]: name=connection string)"
        );
    }

    #[test]
    fn a_trailing_backslash_is_refused() {
        let e = Dir::new().err(&format!(
            "{GLOBAL}\n[servers]\ndb1=host=x password=abc\\\ndb2=host=y\n"
        ));
        assert_eq!(
            e,
            "config error: rebouncer.ini:7: the line ends with a backslash, which INI readers take as \
             \"continued on the next line\"; remove the trailing backslash or quote the value"
        );
    }
}
