//! libpq's two connection-string syntaxes, tokenised by libpq's rules: `key=value` words
//! and `postgres://` URLs. Only the syntax: which keys are known and what their values mean
//! is decided later.

use super::params::ConnInfoError;

/// The part after `postgres://` or `postgresql://`, if the string is a URL.
pub fn url_rest(s: &str) -> Option<&str> {
    let s = s.trim();
    s.strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
}

/// libpq's isspace (C locale).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// libpq's key/value syntax: `key = value` separated by whitespace; values either
/// single-quoted (with `\` escaping any character) or bare up to the next whitespace (with
/// `\` escaping too). `#`, `;` and `=` inside a value are part of it.
pub fn parse_keyword_value(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut it = s.char_indices().peekable();
    let skip_space = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
        while it.next_if(|(_, c)| is_space(*c)).is_some() {}
    };
    // After a password, a stray word is most likely the rest of an unquoted password with
    // a space: say so, and do not echo it.
    let after_secret = |out: &Vec<(String, String)>| matches!(out.last(), Some((k, _)) if k == "password" || k == "sslpassword");
    loop {
        skip_space(&mut it);
        let Some(&(start, _)) = it.peek() else { break };
        let mut key = String::new();
        while let Some((_, c)) = it.next_if(|(_, c)| *c != '=' && !is_space(*c)) {
            key.push(c);
        }
        skip_space(&mut it);
        if it.next_if(|(_, c)| *c == '=').is_none() {
            return Err(ConnInfoError(if after_secret(&out) {
                format!(
                    "a word without \"=\" follows the {} (at byte {start}): a value with spaces \
                     must be quoted, e.g. password='a b'",
                    out.last().map_or("", |(k, _)| k.as_str())
                )
            } else {
                format!(
                    "missing \"=\" after {key:?} (at byte {start}): write key=value, and quote \
                     values with spaces: key='a b'"
                )
            }));
        }
        if key.is_empty() {
            let mut msg = format!(
                "\"=\" without a keyword before it (at byte {start}): write key=value \
                 (tokio-postgres would silently ignore everything from here on)"
            );
            if after_secret(&out) {
                msg.push_str("; a value with spaces must be quoted, e.g. password='a b'");
            }
            return Err(ConnInfoError(msg));
        }
        skip_space(&mut it);
        let mut value = String::new();
        if it.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match it.next() {
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => match it.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err(unterminated(&key)),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err(unterminated(&key)),
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|(_, c)| !is_space(*c)) {
                if c == '\\' {
                    // libpq drops a trailing lone backslash.
                    if let Some((_, n)) = it.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

fn unterminated(key: &str) -> ConnInfoError {
    ConnInfoError(format!(
        "unterminated quoted value for {key:?}: add the closing ' (write a ' inside a value as \\')"
    ))
}

/// libpq's URL syntax after the scheme:
/// `[user[:password]@][host][:port][,host[:port]...][/dbname][?key=value&...]`, every part
/// percent-decoded, `[...]` around IPv6 addresses; query keys override the earlier parts.
pub fn parse_url(rest: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut s = rest;
    // As libpq: the user info ends at the first '@' before any '/'.
    if let Some(at) = s.find(['@', '/']).filter(|&i| s[i..].starts_with('@')) {
        let info = &s[..at];
        let (user, password) = match info.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (info, None),
        };
        if !user.is_empty() {
            out.push(("user".into(), decode(user, "user name", false)?));
        }
        if let Some(pw) = password.filter(|p| !p.is_empty()) {
            out.push(("password".into(), decode(pw, "password", true)?));
        }
        s = &s[at + 1..];
    }

    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    loop {
        let host;
        if let Some(r) = s.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| {
                ConnInfoError("URL: missing \"]\" after an IPv6 address: write [::1]".into())
            })?;
            if end == 0 {
                return Err(ConnInfoError(
                    "URL: empty IPv6 address \"[]\": write e.g. [::1]".into(),
                ));
            }
            host = &r[..end];
            s = &r[end + 1..];
            if !(s.is_empty() || s.starts_with([':', '/', '?', ','])) {
                return Err(ConnInfoError(format!(
                    "URL: unexpected {:?} after \"[{host}]\": a port follows as :5432",
                    s.chars().next().unwrap_or(' ')
                )));
            }
        } else {
            let end = s.find([':', '/', '?', ',']).unwrap_or(s.len());
            host = &s[..end];
            s = &s[end..];
        }
        hosts.push(decode(host, "host", false)?);
        let mut port = "";
        if let Some(r) = s.strip_prefix(':') {
            let end = r.find(['/', '?', ',']).unwrap_or(r.len());
            port = &r[..end];
            s = &r[end..];
        }
        ports.push(decode(port, "port", false)?);
        match s.strip_prefix(',') {
            Some(r) => s = r,
            None => break,
        }
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        out.push(("host".into(), hosts.join(",")));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        out.push(("port".into(), ports.join(",")));
    }

    if let Some(r) = s.strip_prefix('/') {
        let end = r.find('?').unwrap_or(r.len());
        let db = decode(&r[..end], "database name", false)?;
        if !db.is_empty() {
            out.push(("dbname".into(), db));
        }
        s = &r[end..];
    }
    if let Some(q) = s.strip_prefix('?') {
        for piece in q.split('&').filter(|x| !x.is_empty()) {
            let (k, v) = piece.split_once('=').ok_or_else(|| {
                ConnInfoError(format!(
                    "URL parameter {:?} has no \"=\": write ?key=value&key=value",
                    piece
                ))
            })?;
            let k = decode(k, "parameter name", false)?;
            let secret = k == "password" || k == "sslpassword";
            if v.contains('=') {
                let shown = if secret { "" } else { piece };
                return Err(ConnInfoError(format!(
                    "URL parameter {k:?} has a second \"=\"{}{shown}: percent-encode it as %3D",
                    if secret { "" } else { " in " }
                )));
            }
            let v = decode(v, &format!("value of {k}"), secret)?;
            // libpq: ssl=true in a URL means sslmode=require.
            if k == "ssl" && v == "true" {
                out.push(("sslmode".into(), "require".into()));
            } else {
                out.push((k, v));
            }
        }
    } else if !s.is_empty() {
        return Err(ConnInfoError(format!(
            "URL: unexpected {s:?} after the host list: the database name follows as /dbname"
        )));
    }
    Ok(out)
}

/// Percent-decoding as libpq: `%XX` with two hex digits, no `%00`, result must be UTF-8.
/// `+` stays `+`. A secret is never quoted in the message.
fn decode(s: &str, what: &str, secret: bool) -> Result<String, ConnInfoError> {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let v = match (bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(&a), Some(&b)) => hex(a).zip(hex(b)).map(|(a, b)| (a * 16 + b) as u8),
            _ => None,
        };
        let shown = if secret {
            String::new()
        } else {
            format!(" {s:?}")
        };
        match v {
            Some(0) => {
                return Err(ConnInfoError(format!(
                    "URL: %00 is not allowed in the {what}{shown}"
                )));
            }
            Some(b) => out.push(b),
            None => {
                return Err(ConnInfoError(format!(
                    "URL: bad percent-encoding in the {what}{shown}: write % as %25 and \
                     other bytes as %XX with two hex digits"
                )));
            }
        }
        i += 3;
    }
    String::from_utf8(out).map_err(|_| {
        ConnInfoError(format!(
            "URL: the {what} does not decode to UTF-8 text: check its %XX sequences"
        ))
    })
}

#[cfg(test)]
mod tests {
    use crate::conninfo::testing::*;

    #[test]
    fn key_value_form() {
        let t = parse("host=db1.example.com port=6543 dbname=app user=alice password=secret");
        assert_eq!(hosts(&t), ["db1.example.com"]);
        assert_eq!(t.config.get_ports(), [6543]);
        assert_eq!(t.config.get_dbname(), Some("app"));
        assert_eq!(t.config.get_user(), Some("alice"));
        assert_eq!(password(&t).as_deref(), Some("secret"));
        assert_eq!(t.endpoint, "db1.example.com:6543");
    }

    #[test]
    fn spacing_quoting_and_escapes() {
        let t =
            parse("host = localhost\tport =  5432\ndbname='my db' password='it\\'s a #;= secret'");
        assert_eq!(t.config.get_dbname(), Some("my db"));
        assert_eq!(password(&t).as_deref(), Some("it's a #;= secret"));
        let t = parse(r"password=p@ss\ w0rd;#=x user=a\\b");
        assert_eq!(password(&t).as_deref(), Some("p@ss w0rd;#=x"));
        assert_eq!(t.config.get_user(), Some(r"a\b"));
        // libpq: a blank after '=' is skipped, so the next word is the value.
        let t = parse("password= dbname=x");
        assert_eq!(password(&t).as_deref(), Some("dbname=x"));
        // double quotes do not quote
        assert!(err("password=\"a b\"").contains("quoted"));
    }

    #[test]
    fn malformed_strings_are_rejected() {
        let e = err("host=localhost =garbage port=1 sslmode=bogus");
        assert!(e.contains("without a keyword"), "{e}");
        let e = err("user=x dbname");
        assert!(e.contains("missing \"=\" after \"dbname\""), "{e}");
        let e = err("user='unterminated");
        assert!(e.contains("unterminated quoted value for \"user\""), "{e}");
        let e = err("password='abc");
        assert!(e.contains("unterminated") && !e.contains("abc"), "{e}");
        // An unquoted password with a space: the stray word is not echoed.
        let e = err("password=hunter two host=x");
        assert!(e.contains("must be quoted") && !e.contains("two"), "{e}");
        let e = err("host=x trailing # comment");
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn url_form() {
        let t = parse(
            "postgres://alice:p%40ss%20w%3Brd@db1:6000/app?sslmode=disable&application_name=x",
        );
        assert_eq!(t.config.get_user(), Some("alice"));
        assert_eq!(password(&t).as_deref(), Some("p@ss w;rd"));
        assert_eq!(hosts(&t), ["db1"]);
        assert_eq!(t.config.get_ports(), [6000]);
        assert_eq!(t.config.get_dbname(), Some("app"));
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.sslmode(), "disable");

        let t = parse("postgresql://%2Ftmp%2Fx%2Fsock:55610/postgres");
        assert_eq!(hosts(&t), ["unix:/tmp/x/sock"]);
        assert_eq!(t.endpoint, "/tmp/x/sock/.s.PGSQL.55610");
        assert!(!t.uses_tls());

        let t = parse("postgres:///postgres?host=/var/run/postgresql&port=6432");
        assert_eq!(t.endpoint, "/var/run/postgresql/.s.PGSQL.6432");

        let t = parse("postgres://[::1]:5433/db?sslmode=disable");
        assert_eq!(hosts(&t), ["::1"]);
        assert_eq!(t.endpoint, "[::1]:5433");

        let t = parse("postgres://h1:5432,h2:5433/db?sslmode=disable");
        assert_eq!(hosts(&t), ["h1", "h2"]);
        assert_eq!(t.config.get_ports(), [5432, 5433]);
        assert_eq!(t.endpoint, "h1:5432,h2:5433");

        // libpq: the user info ends at the first '@'.
        let t = parse("postgres://u:p@ss@host/db");
        assert_eq!(hosts(&t), ["ss@host"]);
        assert_eq!(password(&t).as_deref(), Some("p"));

        // query parameters override the netloc
        let t = parse("postgres://a:1/db?host=b&port=2&ssl=true");
        assert_eq!(t.endpoint, "b:2");
        assert_eq!(t.sslmode(), "require");

        let t = parse("postgres://");
        assert_eq!(t.endpoint, "localhost:5432");
    }

    #[test]
    fn url_errors_do_not_show_the_password() {
        let e = err("postgres://u:sec%zzret@h/db");
        assert!(e.contains("password") && !e.contains("sec"), "{e}");
        let e = err("postgres://h/db?password=sec%zzret");
        assert!(!e.contains("sec"), "{e}");
        let e = err("postgres://h/db?password=a=b");
        assert!(e.contains("%3D") && !e.contains("a=b"), "{e}");
        assert!(err("postgres://h/d%00b").contains("%00"));
        assert!(err("postgres://[::1/db").contains("]"));
        assert!(err("postgres://h/db?sslmode").contains("no \"=\""));
    }
}
