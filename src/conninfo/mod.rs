//! Connection strings as the Go tool's users wrote them (lib/pq, i.e. libpq syntax), turned
//! into a tokio-postgres `Config` plus a native-tls connector.
//!
//! tokio-postgres's own parser is not libpq (docs/postgresql.md): it knows no
//! `verify-*`/`allow` modes, no `sslrootcert`/`sslcert`/`sslkey`/`passfile`, no `PG*`
//! variables and no `.pgpass`; it accumulates repeated `host`/`port` keys and silently stops
//! parsing at a token that starts with `=`. So the string is tokenised here with libpq's rules,
//! libpq's defaults are filled in, the TLS keys are turned into a `native_tls::TlsConnector`,
//! and only the keys tokio-postgres understands are re-emitted (quoted) to
//! `tokio_postgres::Config::from_str`, which still validates every value.
//!
//! The parts: `syntax` tokenises the two forms of the string, `keywords` says which keys
//! are known, `env` brings the `PG*` variables, the OS user and the password file, `tls`
//! builds the connector, and `hints` says what to do when a connection fails. This file
//! puts them together: the host list, sslmode, the credentials, and what tokio-postgres
//! is given.
//!
//! Defaults that differ from libpq, on purpose:
//! - `sslmode` defaults to `require`, as in lib/pq (the Go tool's driver), not libpq's `prefer`.
//! - the host defaults to `localhost`, as in lib/pq, not libpq's unix socket directory: a
//!   config that worked with the Go tool without `host=` was using TCP to localhost, and
//!   switching it to a socket would change which pg_hba.conf line (and password) applies.
//! - `sslmode=allow` connects in plaintext only (libpq tries plaintext first and retries
//!   with TLS only if the server refuses; tokio-postgres has no such mode).
//! - `sslrootcert` turns certificate checking on for `prefer`/`require` only when it is given
//!   explicitly (string or PGSSLROOTCERT), as lib/pq does; libpq also does it when the default
//!   `~/.postgresql/root.crt` merely exists, which would surprise an operator.

mod env;
mod hints;
mod keywords;
mod params;
mod syntax;
#[cfg(test)]
mod testing;
mod tls;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use postgres_native_tls::MakeTlsConnector;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres::{Client, NoTls};

pub use env::Env;
pub use params::{ConnInfoError, error_chain};

use env::{ENV_DEFAULTS, PasswordFrom, passfile_match, read_passfile};
use hints::{Cause, Facts};
use keywords::check_keyword;
use params::{Mode, Params, SSLMODES, Source, Sourced, one_line, origin};
use syntax::{parse_keyword_value, parse_url, url_rest};
use tls::build_tls;

/// A parsed, validated connection string, ready to connect. Debug never shows the password.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    /// Where this connects, for messages: `127.0.0.1:5432` or `/tmp/.s.PGSQL.5432`.
    /// Never contains a password.
    pub endpoint: String,
    /// Built once here and cloned per connect; `None` means plaintext (`NoTls`).
    tls: Option<MakeTlsConnector>,
    /// Where its settings came from, for the hint of a failed connection.
    facts: Facts,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({})", self.endpoint)
    }
}

/// Connecting failed. Display: `<endpoint>: <whole error chain>[; <hint>]`.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub endpoint: String,
    pub detail: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.detail)?;
        if let Some(h) = &self.hint {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}
impl std::error::Error for ConnectError {}

impl Target {
    /// Parses a libpq key/value string or a `postgres://`/`postgresql://` URL, fills libpq's
    /// defaults from `env` (values in the string win), reads the password file and the TLS
    /// files, and builds the TLS connector. Every problem is a one-line `ConnInfoError`.
    pub fn parse(s: &str, env: &Env) -> Result<Target, ConnInfoError> {
        build(params(s, env)?, env)
    }

    /// [`Target::parse`] for a connection that must reach exactly one server: a list of
    /// hosts or ports is refused. libpq (and tokio-postgres) try the next host when one
    /// fails, so a check could get its answer from another server than the one it names.
    pub fn parse_one_server(s: &str, env: &Env) -> Result<Target, ConnInfoError> {
        let p = params(s, env)?;
        one_server(&p)?;
        build(p, env)
    }

    pub fn set_connect_timeout(&mut self, d: Duration) {
        self.config.connect_timeout(d);
    }

    /// The libpq sslmode asked for (`disable` … `verify-full`), after defaults
    /// (`require`, or PGSSLMODE). A unix-socket host still connects in plaintext.
    pub fn sslmode(&self) -> &'static str {
        self.facts.mode.name()
    }

    /// Whether connecting will try TLS (false for `disable`/`allow` and unix sockets).
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Things worth a warning that did not stop parsing, e.g. a password file that was
    /// skipped because of its permissions. One line each, no secrets.
    pub fn notes(&self) -> &[String] {
        &self.facts.notes
    }

    /// Connects and spawns the connection task. No outer timeout here (`connect_timeout`
    /// covers only the socket connect, docs/postgresql.md): the caller wraps this.
    pub async fn connect(
        &self,
    ) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), ConnectError> {
        let result = match &self.tls {
            Some(tls) => self
                .config
                .connect(tls.clone())
                .await
                .map(|(client, conn)| (client, tokio::spawn(conn))),
            None => self
                .config
                .connect(NoTls)
                .await
                .map(|(client, conn)| (client, tokio::spawn(conn))),
        };
        result.map_err(|e| {
            let detail = error_chain(&e);
            ConnectError {
                endpoint: self.endpoint.clone(),
                hint: self.hint(&Cause::of(&e)),
                detail,
            }
        })
    }
    /// What to do about a failed connection, if an operator can do something.
    fn hint(&self, cause: &Cause) -> Option<String> {
        self.facts.hint(cause)
    }
}

/// Tokenise `s` (key/value or URL) and fill libpq's defaults from `env`; values in the
/// string win.
fn params(s: &str, env: &Env) -> Result<Params, ConnInfoError> {
    let pairs = match url_rest(s) {
        Some(rest) => parse_url(rest)?,
        None => parse_keyword_value(s)?,
    };
    let mut p = Params::default();
    for (k, v) in pairs {
        check_keyword(&k)?;
        p.set(&k, v, Source::Conninfo);
    }
    for (key, var) in ENV_DEFAULTS {
        if p.get(key).is_none()
            && let Some(v) = env.var(var)
        {
            p.set(key, v.to_string(), Source::Env(var));
        }
    }
    Ok(p)
}

/// A list in host, hostaddr or port means several servers; see [`Target::parse_one_server`].
fn one_server(p: &Params) -> Result<(), ConnInfoError> {
    for (key, what) in [
        ("host", "hosts"),
        ("hostaddr", "addresses"),
        ("port", "ports"),
    ] {
        let Some((_, v, src)) = p.0.iter().find(|(k, _, _)| k == key) else {
            continue;
        };
        let n = v.split(',').count();
        if n > 1 {
            let who = match src {
                Source::Env(var) => (*var).to_string(),
                _ => "the connection string".to_string(),
            };
            return Err(ConnInfoError(format!(
                "{who} names {n} {what}; a check must reach one known server, and with several \
                 a failed connection silently falls through to the next one: give exactly one \
                 host and one port"
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// From parameters to a Target

/// One entry of the host list.
struct HostSpec {
    /// `host` as given ("" when only hostaddr is given for this entry).
    name: String,
    addr: Option<IpAddr>,
    port: u16,
}

impl HostSpec {
    fn is_socket(&self) -> bool {
        self.addr.is_none() && self.name.starts_with('/')
    }
    fn endpoint(&self) -> String {
        let tcp = |h: &str| match h.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{h}]:{}", self.port),
            _ => format!("{h}:{}", self.port),
        };
        match (&self.addr, self.is_socket()) {
            (_, true) => format!("{}/.s.PGSQL.{}", self.name.trim_end_matches('/'), self.port),
            (Some(a), _) if self.name.is_empty() || self.name.starts_with('/') => {
                tcp(&a.to_string())
            }
            (Some(a), _) => format!("{} ({a})", tcp(&self.name)),
            (None, _) => tcp(&self.name),
        }
    }
    /// The host names a password file line may carry for this entry (libpq: the host, or
    /// hostaddr when no host; `localhost` for a unix socket — libpq does that only for its
    /// compiled-in socket directory; here any socket directory also matches `localhost`).
    fn passfile_names(&self) -> Vec<String> {
        if self.is_socket() {
            vec!["localhost".to_string(), self.name.clone()]
        } else if self.name.is_empty() {
            self.addr.iter().map(|a| a.to_string()).collect()
        } else {
            vec![self.name.clone()]
        }
    }
}

fn build(mut p: Params, env: &Env) -> Result<Target, ConnInfoError> {
    let (mode, mode_from, rootcert) = sslmode(&mut p)?;
    let hosts = host_list(&mut p)?;
    let wire = wire_mode(mode, &hosts)?;
    put_hosts(&mut p, &hosts, mode, wire)?;
    let creds = credentials(&mut p, env, &hosts);
    translate_libpq_keys(&mut p)?;
    if p.get("sslnegotiation") == Some("direct") && wire != WireMode::Require {
        return Err(ConnInfoError(format!(
            "sslnegotiation=direct needs TLS, but sslmode is {}{}: use sslmode=require or \
             stronger",
            mode.name(),
            if wire == WireMode::Disable && mode >= Mode::Require {
                " and the host is a unix socket"
            } else {
                ""
            }
        )));
    }
    let mut tls_params = Params::default();
    for k in TLS_KEYS {
        if let Some((v, s)) = p.take(k) {
            tls_params.set(k, v, s);
        }
    }
    let (tls, rootcert) = match wire {
        WireMode::Disable => (None, None),
        _ => {
            let (connector, roots) = build_tls(mode, rootcert.as_ref(), tls_params, env)?;
            (Some(MakeTlsConnector::new(connector)), roots)
        }
    };
    let wire_name = match wire {
        WireMode::Disable => "disable",
        WireMode::Prefer => "prefer",
        _ => "require",
    };
    p.set("sslmode", wire_name.to_string(), mode_from);
    let config = tokio_config(&p)?;

    let endpoint = hosts
        .iter()
        .map(HostSpec::endpoint)
        .collect::<Vec<_>>()
        .join(",");
    let first_host = hosts
        .iter()
        .find(|h| !h.is_socket())
        .map(|h| h.name.clone())
        .unwrap_or_default();
    let facts = Facts {
        mode,
        mode_from,
        os_user_default: creds.os_user_default,
        password_from: creds.password_from,
        passfile: creds.passfile,
        notes: creds.notes,
        rootcert,
        first_host,
        tls: tls.is_some(),
        socket: hosts.iter().any(HostSpec::is_socket),
    };
    Ok(Target {
        config,
        endpoint,
        tls,
        facts,
    })
}

/// The keys only the TLS connector reads (besides sslmode and sslrootcert).
const TLS_KEYS: [&str; 6] = [
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslsni",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
];

/// sslmode (default `require`, lib/pq's) and sslrootcert.
fn sslmode(p: &mut Params) -> Result<(Mode, Source, Option<Sourced>), ConnInfoError> {
    let (mut mode, mut from) = match p.take("sslmode") {
        None => (Mode::Require, Source::Default),
        Some((v, src)) => match SSLMODES.iter().find(|(n, _)| *n == v) {
            Some((_, m)) => (*m, src),
            None => {
                return Err(ConnInfoError(format!(
                    "invalid {} {v:?}: use one of disable, allow, prefer, require, verify-ca, \
                     verify-full",
                    origin("sslmode", src)
                )));
            }
        },
    };
    let rootcert = p.take("sslrootcert").filter(|(v, _)| !v.is_empty());
    // libpq 16: sslrootcert=system implies verify-full and refuses weaker modes.
    if let Some((rc, rc_src)) = &rootcert
        && rc == "system"
    {
        if from == Source::Default {
            (mode, from) = (Mode::VerifyFull, Source::Default);
        } else if mode != Mode::VerifyFull {
            return Err(ConnInfoError(format!(
                "{}=system trusts any certificate a public CA issued, so it needs \
                 sslmode=verify-full (got {} {})",
                origin("sslrootcert", *rc_src),
                origin("sslmode", from),
                mode.name()
            )));
        }
    }
    Ok((mode, from, rootcert))
}

/// What tokio-postgres is told. libpq never uses TLS on a unix socket, while tokio-postgres
/// would send SSLRequest there too and fail; and its one setting covers all hosts.
fn wire_mode(mode: Mode, hosts: &[HostSpec]) -> Result<WireMode, ConnInfoError> {
    let tcp_hosts = hosts.iter().filter(|h| !h.is_socket()).count();
    let wire = match mode {
        _ if tcp_hosts == 0 => WireMode::Disable,
        Mode::Disable | Mode::Allow => WireMode::Disable,
        Mode::Prefer => WireMode::Prefer,
        _ => WireMode::Require,
    };
    if wire == WireMode::Require && tcp_hosts < hosts.len() {
        return Err(ConnInfoError(format!(
            "sslmode={} cannot be applied to a list mixing unix sockets and TCP hosts \
             (tokio-postgres has one TLS setting per connection string): use separate \
             entries, or sslmode=prefer",
            mode.name()
        )));
    }
    Ok(wire)
}

/// Puts the checked host list back as tokio-postgres's host/hostaddr/port.
fn put_hosts(
    p: &mut Params,
    hosts: &[HostSpec],
    mode: Mode,
    wire: WireMode,
) -> Result<(), ConnInfoError> {
    let mut names = Vec::new();
    for h in hosts {
        match h.addr {
            // tokio-postgres takes the TLS server name from `host` and refuses TLS without
            // one (docs/postgresql.md). Below verify-full the name is not checked, so the
            // address serves; verify-full needs the real name.
            Some(a) if h.name.is_empty() || h.name.starts_with('/') => {
                if wire != WireMode::Disable && mode == Mode::VerifyFull {
                    return Err(ConnInfoError(format!(
                        "sslmode=verify-full checks the server's name, but only hostaddr={a} \
                         is given: add host=<the name in the server's certificate> (hostaddr= \
                         still decides where to connect)"
                    )));
                }
                names.push(a.to_string());
            }
            _ => names.push(h.name.clone()),
        }
    }
    p.set("host", names.join(","), Source::Default);
    let addrs: Vec<String> = hosts
        .iter()
        .filter_map(|h| h.addr)
        .map(|a| a.to_string())
        .collect();
    if !addrs.is_empty() {
        p.set("hostaddr", addrs.join(","), Source::Default);
    }
    let ports: Vec<String> = hosts.iter().map(|h| h.port.to_string()).collect();
    p.set("port", ports.join(","), Source::Default);
    Ok(())
}

/// user, password and where they came from.
struct Credentials {
    os_user_default: Option<String>,
    password_from: PasswordFrom,
    passfile: Option<PathBuf>,
    notes: Vec<String>,
}

/// Fills in user (PGUSER, else the OS user) and, when no password is given, the password
/// from the password file (passfile, PGPASSFILE, else ~/.pgpass), as libpq.
fn credentials(p: &mut Params, env: &Env, hosts: &[HostSpec]) -> Credentials {
    let mut c = Credentials {
        os_user_default: None,
        password_from: PasswordFrom::None,
        passfile: None,
        notes: Vec::new(),
    };
    if p.get("user").is_none()
        && let Some(u) = &env.os_user
    {
        c.os_user_default = Some(u.clone());
        p.set("user", u.clone(), Source::Default);
    }
    // Without any user tokio-postgres asks the OS itself; "" then matches only `*` lines.
    let user = p.get("user").unwrap_or_default().to_string();
    let dbname = p.get("dbname").unwrap_or(&user).to_string();
    c.passfile = match p.take_value("passfile").filter(|v| !v.is_empty()) {
        Some(f) => Some(PathBuf::from(f)),
        None => env.home.as_ref().map(|h| h.join(".pgpass")),
    };
    // libpq: an empty password counts as none, so the password file is consulted.
    match p.take("password").filter(|(v, _)| !v.is_empty()) {
        Some((pw, src)) => {
            c.password_from = match src {
                Source::Env(_) => PasswordFrom::Env,
                _ => PasswordFrom::Conninfo,
            };
            p.set("password", pw, src);
        }
        None => match c.passfile.as_deref().map(read_passfile) {
            Some(Ok(Some(text))) => {
                // libpq looks the password up per host; tokio-postgres has one password per
                // Config, so the first host with a matching line wins.
                let found = hosts.iter().find_map(|h| {
                    let port = h.port.to_string();
                    h.passfile_names()
                        .iter()
                        .find_map(|n| passfile_match(&text, n, &port, &dbname, &user))
                });
                if let (Some((pw, line)), Some(path)) = (found, &c.passfile) {
                    c.password_from = PasswordFrom::Passfile {
                        path: path.clone(),
                        line,
                    };
                    p.set("password", pw, Source::Default);
                }
            }
            Some(Err(note)) => c.notes.push(note),
            Some(Ok(None)) | None => {}
        },
    }
    c
}

/// libpq keys tokio-postgres does not know, translated or dropped (see HANDLED).
fn translate_libpq_keys(p: &mut Params) -> Result<(), ConnInfoError> {
    if let Some((v, src)) = p.take("tcp_user_timeout") {
        let ms: i64 = v.trim().parse().map_err(|_| {
            ConnInfoError(format!(
                "invalid {} {v:?}: give milliseconds as a whole number",
                origin("tcp_user_timeout", src)
            ))
        })?;
        // libpq: milliseconds; tokio-postgres: seconds (docs/postgresql.md). Round up.
        let secs = if ms <= 0 { 0 } else { (ms + 999) / 1000 };
        p.set("tcp_user_timeout", secs.to_string(), src);
    }
    if let Some((v, src)) = p.take("keepalives_count") {
        p.set("keepalives_retries", v, src);
    }
    if let Some((v, src)) = p.take("fallback_application_name")
        && p.get("application_name").is_none()
    {
        p.set("application_name", v, src);
    }
    if let Some(v) = p.take_value("client_encoding")
        && !matches!(
            v.to_ascii_uppercase().as_str(),
            "UTF8" | "UTF-8" | "UNICODE"
        )
    {
        return Err(ConnInfoError(format!(
            "client_encoding={v:?} is not supported: rebouncer always talks UTF8; remove it"
        )));
    }
    match p.take_value("gssencmode").as_deref() {
        None | Some("disable" | "prefer") => {}
        Some("require") => {
            return Err(ConnInfoError(
                "gssencmode=require is not supported (no GSSAPI encryption): remove it and \
                 use sslmode for encryption"
                    .into(),
            ));
        }
        Some(v) => {
            return Err(ConnInfoError(format!(
                "invalid gssencmode {v:?}: use disable, prefer or require"
            )));
        }
    }
    for k in ["krbsrvname", "gsslib", "sslcompression"] {
        p.take(k);
    }
    Ok(())
}

/// Re-emits the remaining keys, quoted, to tokio-postgres's parser, which validates every
/// value. Each value is tried alone first so that the message can name the culprit.
fn tokio_config(p: &Params) -> Result<tokio_postgres::Config, ConnInfoError> {
    for (k, v, src) in &p.0 {
        if let Err(e) = tokio_postgres::Config::from_str(&format!("{k}={}", quote(v))) {
            // Only keys tokio-postgres knows are left, so this is a bad value.
            let shown = if k == "password" {
                String::new()
            } else {
                format!(" {v:?}")
            };
            let expected = match k.as_str() {
                "connect_timeout" | "keepalives_idle" | "keepalives_interval" => {
                    "use whole seconds".to_string()
                }
                "keepalives" => "use 1 or 0".to_string(),
                "keepalives_retries" => "use a whole number".to_string(),
                "target_session_attrs" => {
                    "use any, read-write or read-only (primary/standby are not supported)"
                        .to_string()
                }
                "channel_binding" => "use disable, prefer or require".to_string(),
                "load_balance_hosts" => "use disable or random".to_string(),
                "sslnegotiation" => "use postgres or direct".to_string(),
                _ => one_line(&error_chain(&e)),
            };
            return Err(ConnInfoError(format!(
                "invalid {}{shown}: {expected}",
                origin(k, *src)
            )));
        }
    }
    let text: Vec<String> =
        p.0.iter()
            .map(|(k, v, _)| format!("{k}={}", quote(v)))
            .collect();
    tokio_postgres::Config::from_str(&text.join(" ")).map_err(|e| {
        ConnInfoError(format!(
            "connection string rejected: {}",
            one_line(&error_chain(&e))
        ))
    })
}

/// host/hostaddr/port (after env defaults) → one entry per host, checked like libpq.
fn host_list(p: &mut Params) -> Result<Vec<HostSpec>, ConnInfoError> {
    let host = p.take("host");
    let hostaddr = p.take("hostaddr");
    let port = p.take("port");

    let names: Vec<String> = match &host {
        Some((h, _)) => h.split(',').map(str::to_string).collect(),
        None => Vec::new(),
    };
    let mut addrs = Vec::new();
    if let Some((a, src)) = &hostaddr {
        for s in a.split(',') {
            let ip = s.trim().parse::<IpAddr>().map_err(|_| {
                ConnInfoError(format!(
                    "invalid {} {s:?}: hostaddr takes IP addresses only (put names in host=)",
                    origin("hostaddr", *src)
                ))
            })?;
            addrs.push(ip);
        }
    }
    let n = names.len().max(addrs.len()).max(1);
    if !names.is_empty() && !addrs.is_empty() && names.len() != addrs.len() {
        return Err(ConnInfoError(format!(
            "{} host names but {} hostaddr addresses: give one hostaddr per host, or none",
            names.len(),
            addrs.len()
        )));
    }
    let ports: Vec<u16> = match &port {
        None => vec![5432],
        Some((v, src)) => v
            .split(',')
            .map(|s| {
                if s.is_empty() {
                    return Ok(5432);
                }
                s.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    ConnInfoError(format!(
                        "invalid {} {s:?}: use a number from 1 to 65535",
                        origin("port", *src)
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    if ports.len() != 1 && ports.len() != n {
        return Err(ConnInfoError(format!(
            "{} ports for {n} hosts: give one port for all hosts or one per host",
            ports.len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let addr = addrs.get(i).copied();
        let mut name = names.get(i).cloned().unwrap_or_default();
        if name.is_empty() && addr.is_none() {
            // lib/pq's default (libpq would use its unix socket directory); see the top.
            name = "localhost".to_string();
        }
        if name.starts_with('@') && addr.is_none() {
            return Err(ConnInfoError(format!(
                "host {name:?}: abstract unix sockets are not supported; give the socket \
                 directory (host=/var/run/postgresql) or a TCP host"
            )));
        }
        let port = ports.get(i).copied().unwrap_or(ports[0]);
        out.push(HostSpec { name, addr, port });
    }
    Ok(out)
}

/// libpq quoting, for re-emitting a value to tokio-postgres.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::testing::*;

    #[test]
    fn accepted_and_translated_libpq_keys() {
        let t = parse(
            "host=x sslmode=disable tcp_user_timeout=1500 keepalives_count=4 \
             fallback_application_name=fb client_encoding=UTF8 gssencmode=prefer \
             krbsrvname=postgres sslcompression=0 connect_timeout=3",
        );
        assert_eq!(
            t.config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(2))
        );
        assert_eq!(t.config.get_keepalives_retries(), Some(4));
        assert_eq!(t.config.get_application_name(), Some("fb"));
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        let t = parse("host=x application_name=app fallback_application_name=fb");
        assert_eq!(t.config.get_application_name(), Some("app"));
        assert!(err("host=x client_encoding=LATIN1").contains("UTF8"));
        assert!(err("host=x gssencmode=require").contains("not supported"));
        assert!(err("host=x connect_timeout=2.5").contains("connect_timeout"));
        let e = err("host=x target_session_attrs=primary");
        assert!(
            e.contains("target_session_attrs") && e.contains("primary"),
            "{e}"
        );
    }

    #[test]
    fn repeated_keys_last_one_wins() {
        let t = parse("host=a host=b port=1 port=2 user=u1 user=u2");
        assert_eq!(hosts(&t), ["b"]);
        assert_eq!(t.config.get_ports(), [2]);
        assert_eq!(t.config.get_user(), Some("u2"));
        assert_eq!(t.endpoint, "b:2");
    }

    #[test]
    fn every_sslmode() {
        let mode = |s: &str| {
            let t = parse(&format!("host=h sslmode={s}"));
            (t.sslmode(), t.config.get_ssl_mode(), t.uses_tls())
        };
        assert_eq!(mode("disable"), ("disable", WireMode::Disable, false));
        assert_eq!(mode("allow"), ("allow", WireMode::Disable, false));
        assert_eq!(mode("prefer"), ("prefer", WireMode::Prefer, true));
        assert_eq!(mode("require"), ("require", WireMode::Require, true));
        let dir = tempfile::tempdir().unwrap();
        let ca = write_file(dir.path(), "ca.pem", &self_signed_pem(), 0o644);
        for m in ["verify-ca", "verify-full"] {
            let t = parse(&format!("host=h sslmode={m} sslrootcert={}", ca.display()));
            assert_eq!(
                (t.sslmode(), t.config.get_ssl_mode()),
                (m, WireMode::Require)
            );
            assert!(t.uses_tls());
        }
        let e = err("host=h sslmode=REQUIRE");
        assert!(
            e.contains("\"REQUIRE\"") && e.contains("verify-full"),
            "{e}"
        );
    }

    #[test]
    fn default_sslmode_is_require_and_pgsslmode_overrides() {
        let t = parse("host=h");
        assert_eq!(t.sslmode(), "require");
        assert_eq!(t.config.get_ssl_mode(), WireMode::Require);
        let e = env_with(&[("PGSSLMODE", "disable")]);
        let t = Target::parse("host=h", &e).unwrap();
        assert_eq!(t.config.get_ssl_mode(), WireMode::Disable);
        let t = Target::parse("host=h sslmode=prefer", &e).unwrap();
        assert_eq!(t.sslmode(), "prefer");
        let e = env_with(&[("PGSSLMODE", "bogus")]);
        assert!(
            Target::parse("host=h", &e)
                .unwrap_err()
                .0
                .contains("PGSSLMODE")
        );
    }

    #[test]
    fn unix_socket_never_uses_tls() {
        let t = parse("host=/var/run/postgresql sslmode=require port=6432");
        assert_eq!(t.config.get_ssl_mode(), WireMode::Disable);
        assert!(!t.uses_tls());
        assert_eq!(t.endpoint, "/var/run/postgresql/.s.PGSQL.6432");
        // verify-full on a socket does not even need the root certificate
        parse("host=/tmp sslmode=verify-full sslrootcert=/nonexistent.crt");
        // a mixed list cannot honour require for the TCP host
        assert!(err("host=/tmp,db1 sslmode=require").contains("mixing"));
        let t = parse("host=/tmp,db1 sslmode=prefer");
        assert_eq!(t.endpoint, "/tmp/.s.PGSQL.5432,db1:5432");
    }

    #[test]
    fn hosts_ports_and_hostaddr() {
        assert!(err("host=a,b port=1,2,3").contains("3 ports for 2 hosts"));
        assert!(err("host=a port=70000").contains("1 to 65535"));
        assert!(err("host=a,b hostaddr=127.0.0.1").contains("one hostaddr per host"));
        assert!(err("hostaddr=localhost").contains("IP addresses only"));
        assert!(err("host=@abstract").contains("abstract"));
        let t = parse("host=a,b port=1");
        assert_eq!(t.endpoint, "a:1,b:1");
        let t = parse("host=db.example hostaddr=10.0.0.1 sslmode=disable");
        assert_eq!(t.endpoint, "db.example:5432 (10.0.0.1)");
        assert_eq!(t.config.get_hostaddrs().len(), 1);
        // hostaddr alone: TLS gets the address as its name (not checked without verify-full)
        let t = parse("hostaddr=127.0.0.1 sslmode=require");
        assert_eq!(hosts(&t), ["127.0.0.1"]);
        assert_eq!(t.endpoint, "127.0.0.1:5432");
        let dir = tempfile::tempdir().unwrap();
        let ca = write_file(dir.path(), "ca.pem", &self_signed_pem(), 0o644);
        let e = err(&format!(
            "hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={}",
            ca.display()
        ));
        assert!(e.contains("add host="), "{e}");
    }

    #[test]
    fn one_server_refuses_lists_of_hosts_addresses_and_ports() {
        let one = |s: &str| Target::parse_one_server(s, &env()).map(|t| t.endpoint);
        assert_eq!(one("host=a port=5433").unwrap(), "a:5433");
        assert_eq!(one("postgresql://a:5433/db").unwrap(), "a:5433");
        assert_eq!(one("host=/tmp").unwrap(), "/tmp/.s.PGSQL.5432");
        for (s, what) in [
            ("host=a,b", "the connection string names 2 hosts"),
            ("host=a,b,c port=1", "the connection string names 3 hosts"),
            (
                "host=a port=5432,5433",
                "the connection string names 2 ports",
            ),
            ("port=5432,5433", "the connection string names 2 ports"),
            (
                "host=a hostaddr=10.0.0.1,10.0.0.2",
                "the connection string names 2 addresses",
            ),
            ("postgresql://a,b/db", "the connection string names 2 hosts"),
            (
                "postgresql://u:hunter2@a:5432,b:5433/db",
                "the connection string names 2 hosts",
            ),
            (
                "postgresql://:5432,:5433/db",
                "the connection string names 2 ports",
            ),
        ] {
            let e = one(s).unwrap_err().0;
            assert!(e.starts_with(what), "{s}: {e}");
            assert!(e.contains("falls through to the next one"), "{s}: {e}");
            assert!(
                e.ends_with("give exactly one host and one port"),
                "{s}: {e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = Target::parse_one_server("dbname=x", &env_with(&[("PGHOST", "a,b")]))
            .unwrap_err()
            .0;
        assert!(e.starts_with("PGHOST names 2 hosts"), "{e}");
        // The general parser still reads lists, as libpq does.
        assert_eq!(parse("host=a,b port=1").endpoint, "a:1,b:1");
    }

    #[test]
    fn password_never_shown() {
        let t = parse("host=h user=u password=hunter2");
        assert!(!format!("{t:?}").contains("hunter2"));
        assert!(!t.endpoint.contains("hunter2"));
        let t = parse("postgres://u:hunter2@h/db");
        assert!(!format!("{t:?}").contains("hunter2"));
        for s in [
            "host=h password=hunter2 port=x",
            "host=h password=hunter2 bogus=1",
            "host=h password=hunter2 =x",
            "postgres://u:hunter2@h/db?port=x",
            "postgres://u:hunter2@h:99999/db",
        ] {
            let e = err(s);
            assert!(!e.contains("hunter2"), "{s}: {e}");
            assert!(!e.contains('\n'), "{s}: {e}");
        }
    }
}
