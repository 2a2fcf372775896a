//! Connection strings as the Go tool's users wrote them (lib/pq, i.e. libpq syntax), turned
//! into a tokio-postgres `Config` plus a native-tls connector.
//!
//! tokio-postgres's own parser is not libpq (see CRATES.md §0.7, §3): it knows no
//! `verify-*`/`allow` modes, no `sslrootcert`/`sslcert`/`sslkey`/`passfile`, no `PG*`
//! variables and no `.pgpass`; it accumulates repeated `host`/`port` keys and silently stops
//! parsing at a token that starts with `=`. So the string is tokenised here with libpq's rules,
//! libpq's defaults are filled in, the TLS keys are turned into a `native_tls::TlsConnector`,
//! and only the keys tokio-postgres understands are re-emitted (quoted) to
//! `tokio_postgres::Config::from_str`, which still validates every value.
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

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use native_tls::{Certificate, Identity, Protocol, TlsConnector};
use postgres_native_tls::MakeTlsConnector;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

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
    fn var(&self, name: &str) -> Option<&str> {
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

/// A parsed, validated connection string, ready to connect. Debug never shows the password.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    /// Where this connects, for messages: `127.0.0.1:5432` or `/tmp/.s.PGSQL.5432`.
    /// Never contains a password.
    pub endpoint: String,
    /// Built once here and cloned per connect; `None` means plaintext (`NoTls`).
    tls: Option<MakeTlsConnector>,
    mode: Mode,
    mode_from: Source,
    /// Set when `user` was not given and the OS user name was used.
    os_user_default: Option<String>,
    password_from: PasswordFrom,
    /// The password file that was looked at (for hints), and why it was not used, if so.
    passfile: Option<PathBuf>,
    notes: Vec<String>,
    /// What verifies the server certificate: a file name or `system`; None = nothing.
    rootcert: Option<String>,
    /// First TCP host name, for the hostname-mismatch hint.
    first_host: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({})", self.endpoint)
    }
}

/// The connection string cannot be used as written. The message says what to change and
/// never contains the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfoError(pub String);

impl fmt::Display for ConnInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConnInfoError {}

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
        self.mode.name()
    }

    /// Whether connecting will try TLS (false for `disable`/`allow` and unix sockets).
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Things worth a warning that did not stop parsing, e.g. a password file that was
    /// skipped because of its permissions. One line each, no secrets.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Connects and spawns the connection task. No outer timeout here (`connect_timeout`
    /// covers only the socket connect, CRATES.md §0.4): the caller wraps this.
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

    /// A short "what to do" for the failures an operator can fix, chosen from what went
    /// wrong as codes and types say it: the server's message is in its `lc_messages`.
    fn hint(&self, cause: &Cause) -> Option<String> {
        let mode = self.mode.name();
        let os_user_hint = || {
            self.os_user_default.as_ref().map(|u| {
                format!("no user= was given, so the OS user \"{u}\" was used: add user=<name>")
            })
        };
        match cause {
            Cause::ServerRefusedTls => Some(match self.mode_from {
                Source::Default => "the server does not offer TLS: add sslmode=disable to this \
                     connection string (rebouncer, like the Go tool, defaults to sslmode=require)"
                    .to_string(),
                Source::Env(var) => format!(
                    "the server does not offer TLS but {var}={mode} asks for it: add \
                     sslmode=disable to this connection string or unset {var}"
                ),
                Source::Conninfo => format!(
                    "the server does not offer TLS but this connection string says \
                     sslmode={mode}: enable ssl on the server, or use sslmode=disable"
                ),
            }),
            Cause::Server(code) if *code == SqlState::INVALID_PASSWORD => {
                os_user_hint().or_else(|| {
                    Some(match &self.password_from {
                        PasswordFrom::Conninfo => {
                            "wrong password (SQLSTATE 28P01): check password= in this connection string"
                                .to_string()
                        }
                        PasswordFrom::Env => {
                            "wrong password (SQLSTATE 28P01): it came from PGPASSWORD, check it"
                                .to_string()
                        }
                        PasswordFrom::Passfile { path, line } => format!(
                            "wrong password (SQLSTATE 28P01): it came from line {line} of {}, check it",
                            path.display()
                        ),
                        PasswordFrom::None => {
                            "wrong password or user (SQLSTATE 28P01): check both".to_string()
                        }
                    })
                })
            }
            // pg_hba.conf matched no line or a reject line, a hostssl/hostnossl mismatch, or
            // an unknown role: the server says which in its own language, the code is the same.
            Cause::Server(code) if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                os_user_hint().or_else(|| {
                    let mut h = "the server refused this login (SQLSTATE 28000): no pg_hba.conf \
                         line admits this user, database and address, a reject line matches, or \
                         the role does not exist; fix pg_hba.conf on the server and reload it, or \
                         user=/dbname= here"
                        .to_string();
                    // A fact, not a diagnosis: the code cannot say whether a hostssl line
                    // was what failed to match (and a socket never matches one).
                    if self.tls.is_none() && !self.endpoint.contains("/.s.PGSQL.") {
                        h.push_str(&format!(
                            " (sslmode={mode}: no TLS, so hostssl lines do not match)"
                        ));
                    }
                    Some(h)
                })
            }
            Cause::Server(code) if *code == SqlState::TOO_MANY_CONNECTIONS => Some(
                "the server has no free connection slot (SQLSTATE 53300: max_connections, or a \
                 role or database connection limit): free connections or raise the limit there"
                    .into(),
            ),
            Cause::Server(code) if *code == SqlState::INVALID_CATALOG_NAME => Some(
                "SQLSTATE 3D000: set dbname= to a database that exists there, e.g. \
                 dbname=postgres (without dbname= the user name is used)"
                    .into(),
            ),
            Cause::Server(code) if *code == SqlState::INSUFFICIENT_PRIVILEGE => Some(
                "the user may not connect to this database (SQLSTATE 42501): GRANT CONNECT ON \
                 DATABASE to it on the server, or use another dbname="
                    .into(),
            ),
            Cause::Server(code) if *code == SqlState::CANNOT_CONNECT_NOW => Some(
                "the server does not accept connections now (SQLSTATE 57P03): it is starting or \
                 stopping, or is a standby with hot_standby=off, which cannot be told from down"
                    .into(),
            ),
            Cause::Server(_) => None,
            Cause::PasswordMissing => {
                let file = self
                    .passfile
                    .as_ref()
                    .map_or("~/.pgpass".to_string(), |p| p.display().to_string());
                let mut h = format!(
                    "the server wants a password: add password=... or a line \
                     host:port:dbname:user:password to {file} (chmod 600)"
                );
                for n in &self.notes {
                    h.push_str("; ");
                    h.push_str(n);
                }
                Some(h)
            }
            Cause::Certificate => {
                let roots = match self.rootcert.as_deref() {
                    Some("system") => "the system's trusted CAs".to_string(),
                    Some(f) => f.to_string(),
                    None => "the trusted CAs".to_string(),
                };
                // OpenSSL names the reason (expired, unknown CA, hostname mismatch) in the
                // detail; the hint says what each mode requires.
                Some(if self.mode == Mode::VerifyFull {
                    format!(
                        "the server's certificate was not accepted (OpenSSL's reason is in \
                         parentheses): sslmode=verify-full needs it valid, signed by a CA in \
                         {roots}, and issued for \"{}\" (set host= to a name in it, hostaddr= \
                         can keep the IP, or use sslmode=verify-ca)",
                        self.first_host
                    )
                } else {
                    format!(
                        "the server's certificate was not accepted (OpenSSL's reason is in \
                         parentheses): it must be valid and signed by a CA in {roots}; point \
                         sslrootcert= at the CA that signed it"
                    )
                })
            }
            Cause::Io(kind) => {
                let socket = self.endpoint.contains("/.s.PGSQL.");
                match kind {
                    io::ErrorKind::ConnectionRefused => Some(
                        "nothing listens there: is the server running, is the port right?".into(),
                    ),
                    io::ErrorKind::NotFound if socket => Some(
                        "no socket there: is the server running, are the socket directory and \
                         port right?"
                            .into(),
                    ),
                    io::ErrorKind::PermissionDenied if socket => Some(
                        "no permission to open the socket: the user rebouncer runs as needs \
                         access to the socket directory and the socket (unix_socket_permissions)"
                            .into(),
                    ),
                    io::ErrorKind::TimedOut => Some(
                        "no answer to the connection attempt: is the host up, the address \
                         right, and the port open in the firewall?"
                            .into(),
                    ),
                    io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Some(
                        "no route to the host: check the address and the network".into(),
                    ),
                    _ => None,
                }
            }
            Cause::Other => None,
        }
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

/// What made a connection fail, as far as a hint needs to know: from SQLSTATE codes, I/O
/// error kinds and error types, never from the server's message text (which is in its
/// `lc_messages`, and the same code covers messages that need different fixes).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cause {
    /// The server (PostgreSQL or PgBouncer) answered with an error.
    Server(SqlState),
    /// The socket failed.
    Io(io::ErrorKind),
    /// The server answered the TLS request with "no" while TLS was required.
    ServerRefusedTls,
    /// The server asked for a password and there is none.
    PasswordMissing,
    /// The TLS handshake failed on the server's certificate.
    Certificate,
    Other,
}

/// tokio-postgres raises these two as boxed strings without a type or code of their own;
/// they are its constants (never translated, never from the server), and the tests
/// `server_without_tls_gets_the_sslmode_hint` and `a_missing_password_gets_the_password_hint`
/// fail if a new version words them differently.
const TOKIO_POSTGRES_NO_TLS: &str = "server does not support TLS";
const TOKIO_POSTGRES_NO_PASSWORD: &str = "password missing";

/// OpenSSL's `ERR_LIB_SSL` and `SSL_R_CERTIFICATE_VERIFY_FAILED` (ssl.h, sslerr.h).
const OPENSSL_LIB_SSL: i32 = 20;
const OPENSSL_CERTIFICATE_VERIFY_FAILED: i32 = 134;

impl Cause {
    fn of(e: &tokio_postgres::Error) -> Cause {
        if let Some(code) = e.code() {
            return Cause::Server(code.clone());
        }
        let mut cur = std::error::Error::source(e);
        if let Some(first) = cur {
            match first.to_string().as_str() {
                TOKIO_POSTGRES_NO_TLS => return Cause::ServerRefusedTls,
                TOKIO_POSTGRES_NO_PASSWORD => return Cause::PasswordMissing,
                _ => {}
            }
        }
        while let Some(c) = cur {
            if let Some(io) = c.downcast_ref::<io::Error>() {
                return Cause::Io(io.kind());
            }
            if let Some(stack) = c.downcast_ref::<openssl::error::ErrorStack>() {
                let verify = stack.errors().iter().any(|x| {
                    x.library_code() == OPENSSL_LIB_SSL
                        && x.reason_code() == OPENSSL_CERTIFICATE_VERIFY_FAILED
                });
                return if verify {
                    Cause::Certificate
                } else {
                    Cause::Other
                };
            }
            cur = c.source();
        }
        Cause::Other
    }
}

/// The whole `source()` chain of an error joined with ": ", because tokio-postgres's own
/// Display is only the kind ("db error").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

// ---------------------------------------------------------------------------------------
// Keywords

/// Handed to tokio-postgres as they are; it validates the values.
const PASSED: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries", // tokio-postgres's name for libpq's keepalives_count
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
    "sslnegotiation",
];

/// Read here: host/port lists, TLS, password file, and libpq keys tokio-postgres rejects
/// that can be translated or safely ignored:
/// - `tcp_user_timeout` is milliseconds in libpq, seconds in tokio-postgres: converted.
/// - `keepalives_count` becomes tokio-postgres's `keepalives_retries`.
/// - `fallback_application_name` is used when no application_name/PGAPPNAME is set (libpq).
/// - `client_encoding`: tokio-postgres always speaks UTF8, so only UTF8 is accepted.
/// - `gssencmode` disable/prefer, `krbsrvname`, `gsslib`: only matter for GSSAPI, which
///   tokio-postgres cannot do; a server demanding it fails with its own message anyway.
///   `gssencmode=require` is refused.
/// - `sslcompression`: ignored by libpq itself since PostgreSQL 14.
const HANDLED: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslsni",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "passfile",
    "tcp_user_timeout",
    "keepalives_count",
    "fallback_application_name",
    "client_encoding",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "sslcompression",
];

/// libpq keywords refused with what to do. `sslcrl` is refused rather than ignored: a
/// revocation check the operator asked for must not be skipped silently.
const REFUSED: &[(&str, &str)] = &[
    (
        "service",
        "pg_service.conf is not read: write the service's options into the string",
    ),
    (
        "sslcrl",
        "certificate revocation lists are not supported: remove it",
    ),
    (
        "sslcrldir",
        "certificate revocation lists are not supported: remove it",
    ),
    ("sslcertmode", "not supported: remove it"),
    ("sslkeylogfile", "not supported: remove it"),
    (
        "requirepeer",
        "unix-socket peer checks are not supported: remove it",
    ),
    (
        "require_auth",
        "not supported: remove it (channel_binding=require insists on SCRAM)",
    ),
    (
        "replication",
        "rebouncer needs no replication connection: remove it",
    ),
    ("gssdelegation", "GSSAPI is not supported: remove it"),
    ("min_protocol_version", "not supported: remove it"),
    ("max_protocol_version", "not supported: remove it"),
    ("requiressl", "obsolete: use sslmode=require instead"),
];

/// libpq's environment variables, as (keyword, variable). Only these are read; libpq's
/// others (PGOPTIONS, PGSERVICE, ...) are ignored so that a stray shell variable cannot
/// break the PgBouncer admin connection.
const ENV_DEFAULTS: &[(&str, &str)] = &[
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

fn check_keyword(k: &str) -> Result<(), ConnInfoError> {
    if PASSED.contains(&k) || HANDLED.contains(&k) {
        return Ok(());
    }
    if let Some((_, what)) = REFUSED.iter().find(|(r, _)| *r == k) {
        return Err(ConnInfoError(format!(
            "connection option \"{k}\" is not supported by rebouncer: {what}"
        )));
    }
    let mut known: Vec<&str> = PASSED.iter().chain(HANDLED).copied().collect();
    known.sort_unstable();
    Err(ConnInfoError(format!(
        "unknown connection option {k:?}: not a libpq connection option (keys are case-sensitive; \
         known: {}). lib/pq sent unknown keys to the server as settings: write those as \
         options='-c name=value'",
        known.join(" ")
    )))
}

// ---------------------------------------------------------------------------------------
// Parameters after tokenising

/// Where a value came from, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Conninfo,
    Env(&'static str),
    Default,
}

/// A value and where it came from.
type Sourced = (String, Source);

/// Keyword → value, last one wins (libpq; tokio-postgres would accumulate hosts and ports).
#[derive(Default)]
struct Params(Vec<(String, String, Source)>);

impl Params {
    fn set(&mut self, k: &str, v: String, src: Source) {
        match self.0.iter_mut().find(|(key, _, _)| key == k) {
            Some(e) => (e.1, e.2) = (v, src),
            None => self.0.push((k.to_string(), v, src)),
        }
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|e| e.0 == k).map(|e| e.1.as_str())
    }
    fn take(&mut self, k: &str) -> Option<Sourced> {
        let i = self.0.iter().position(|e| e.0 == k)?;
        let (_, v, s) = self.0.remove(i);
        Some((v, s))
    }
    fn take_value(&mut self, k: &str) -> Option<String> {
        self.take(k).map(|(v, _)| v)
    }
}

/// How to name a value's origin in a message: `port` or `PGPORT`.
fn origin(key: &str, src: Source) -> String {
    match src {
        Source::Env(var) => var.to_string(),
        _ => key.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// sslmode

/// libpq's sslmode values, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

const SSLMODES: [(&str, Mode); 6] = [
    ("disable", Mode::Disable),
    ("allow", Mode::Allow),
    ("prefer", Mode::Prefer),
    ("require", Mode::Require),
    ("verify-ca", Mode::VerifyCa),
    ("verify-full", Mode::VerifyFull),
];

impl Mode {
    fn name(self) -> &'static str {
        SSLMODES
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("?", |(n, _)| n)
    }
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
    Ok(Target {
        config,
        endpoint,
        tls,
        mode,
        mode_from,
        os_user_default: creds.os_user_default,
        password_from: creds.password_from,
        passfile: creds.passfile,
        notes: creds.notes,
        rootcert,
        first_host,
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
            // one (CRATES.md §0.9). Below verify-full the name is not checked, so the
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
        // libpq: milliseconds; tokio-postgres: seconds (CRATES.md §3). Round up.
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

/// Messages are one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------
// TLS

/// The native-tls connector for a TLS mode, and what verifies the server (for hints).
fn build_tls(
    mode: Mode,
    rootcert: Option<&Sourced>,
    mut p: Params,
    env: &Env,
) -> Result<(TlsConnector, Option<String>), ConnInfoError> {
    let mut b = TlsConnector::builder();
    // Which file verifies the server: explicit sslrootcert (libpq and lib/pq: `require`
    // with a root certificate behaves as verify-ca; libpq does the same for `prefer`),
    // else ~/.postgresql/root.crt for the verify modes.
    let verify_file = match rootcert {
        Some((f, src)) => Some((f.clone(), origin("sslrootcert", *src))),
        None if mode >= Mode::VerifyCa => match &env.home {
            Some(h) => Some((
                h.join(".postgresql/root.crt").display().to_string(),
                "the default root certificate file".to_string(),
            )),
            None => {
                return Err(ConnInfoError(format!(
                    "sslmode={} needs the CA certificate: no home directory to find \
                     ~/.postgresql/root.crt in, so give sslrootcert=<file> (or \
                     sslrootcert=system with verify-full)",
                    mode.name()
                )));
            }
        },
        None => None,
    };
    match &verify_file {
        None => {
            // prefer/require without a root certificate: encryption without verification,
            // as libpq. native-tls would otherwise verify against the system roots and
            // fail on the usual self-signed server certificate (CRATES.md §0.8).
            b.danger_accept_invalid_certs(true);
        }
        Some((file, _)) if file == "system" => {} // keep the built-in roots
        Some((file, what)) => {
            b.disable_built_in_roots(true);
            for cert in read_root_certs(file, what)? {
                b.add_root_certificate(cert);
            }
        }
    }
    if verify_file.is_some() && mode != Mode::VerifyFull {
        b.danger_accept_invalid_hostnames(true);
    }

    // libpq's defaults: at least TLS 1.2, no maximum.
    let min = tls_version(&mut p, "ssl_min_protocol_version")?.unwrap_or(Protocol::Tlsv12);
    b.min_protocol_version(Some(min));
    b.max_protocol_version(tls_version(&mut p, "ssl_max_protocol_version")?);
    if let Some((v, src)) = p.take("sslsni") {
        match v.as_str() {
            "1" => b.use_sni(true),
            "0" => b.use_sni(false),
            _ => {
                return Err(ConnInfoError(format!(
                    "invalid {} {v:?}: use 1 or 0",
                    origin("sslsni", src)
                )));
            }
        };
    }
    if let Some(id) = client_identity(&mut p, env)? {
        b.identity(id);
    }
    let connector = b.build().map_err(|e| {
        ConnInfoError(format!(
            "could not set up TLS: {}",
            one_line(&error_chain(&e))
        ))
    })?;
    Ok((connector, verify_file.map(|(f, _)| f)))
}

fn read_root_certs(file: &str, what: &str) -> Result<Vec<Certificate>, ConnInfoError> {
    let advice = "provide the file, use sslrootcert=system with sslmode=verify-full for the \
                  system's trusted CAs, or use sslmode=require (without sslrootcert) to skip \
                  certificate checks";
    let pem = std::fs::read(file).map_err(|e| {
        ConnInfoError(format!(
            "could not read root certificate file {file:?} ({what}): {e}; {advice}"
        ))
    })?;
    let certs = Certificate::stack_from_pem(&pem).map_err(|e| {
        ConnInfoError(format!(
            "root certificate file {file:?} is not PEM: {}; it should hold \
             -----BEGIN CERTIFICATE----- blocks",
            one_line(&error_chain(&e))
        ))
    })?;
    if certs.is_empty() {
        return Err(ConnInfoError(format!(
            "root certificate file {file:?} holds no certificate; it should hold \
             -----BEGIN CERTIFICATE----- blocks"
        )));
    }
    Ok(certs)
}

fn tls_version(p: &mut Params, key: &str) -> Result<Option<Protocol>, ConnInfoError> {
    let Some((v, src)) = p.take(key) else {
        return Ok(None);
    };
    match v.as_str() {
        "" => Ok(None),
        "TLSv1" => Ok(Some(Protocol::Tlsv10)),
        "TLSv1.1" => Ok(Some(Protocol::Tlsv11)),
        "TLSv1.2" => Ok(Some(Protocol::Tlsv12)),
        "TLSv1.3" => Ok(Some(Protocol::Tlsv13)),
        _ => Err(ConnInfoError(format!(
            "invalid {} {v:?}: use TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3",
            origin(key, src)
        ))),
    }
}

/// The client certificate: `sslcert`/`sslkey` (or PGSSLCERT/PGSSLKEY), else
/// `~/.postgresql/postgresql.crt`/`.key` when the certificate file exists (libpq). An
/// explicitly named certificate that cannot be read is an error (libpq would silently go
/// on without it, and the server's refusal would not say why).
fn client_identity(p: &mut Params, env: &Env) -> Result<Option<Identity>, ConnInfoError> {
    let pg_dir = env.home.as_ref().map(|h| h.join(".postgresql"));
    let explicit = p.take("sslcert").filter(|(v, _)| !v.is_empty());
    let cert_path = match (&explicit, &pg_dir) {
        (Some((f, _)), _) => PathBuf::from(f),
        (None, Some(d)) => d.join("postgresql.crt"),
        (None, None) => return Ok(None),
    };
    let cert = match std::fs::read(&cert_path) {
        Ok(c) => c,
        Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => {
            return Err(ConnInfoError(format!(
                "could not read client certificate file \"{}\": {e}; fix sslcert= or remove it",
                cert_path.display()
            )));
        }
    };
    let key_path = match (p.take("sslkey").filter(|(v, _)| !v.is_empty()), &pg_dir) {
        (Some((f, _)), _) => PathBuf::from(f),
        (None, Some(d)) => d.join("postgresql.key"),
        (None, None) => {
            return Err(ConnInfoError(format!(
                "client certificate \"{}\" needs its private key: give sslkey=<file>",
                cert_path.display()
            )));
        }
    };
    let key_name = key_path.display();
    check_key_permissions(&key_path)?;
    let key = std::fs::read(&key_path).map_err(|e| {
        ConnInfoError(format!(
            "could not read private key file \"{key_name}\" for client certificate \"{}\": \
             {e}; give sslkey=<file>",
            cert_path.display()
        ))
    })?;
    // native-tls wants PKCS#8; libpq also takes PKCS#1 ("BEGIN RSA PRIVATE KEY") and SEC1
    // ("BEGIN EC PRIVATE KEY") keys, so convert. The passphrase variant is used even without
    // sslpassword so that OpenSSL never prompts on a terminal for an encrypted key.
    let pass = p.take_value("sslpassword").unwrap_or_default();
    let pkcs8 = openssl::pkey::PKey::private_key_from_pem_passphrase(&key, pass.as_bytes())
        .and_then(|k| k.private_key_to_pem_pkcs8())
        .map_err(|e| {
            ConnInfoError(format!(
                "could not load private key \"{key_name}\": {}; it must be a PEM key (if it \
                 is encrypted, give sslpassword=)",
                one_line(&e.to_string())
            ))
        })?;
    let id = Identity::from_pkcs8(&cert, &pkcs8).map_err(|e| {
        ConnInfoError(format!(
            "could not use client certificate \"{}\" with key \"{key_name}\": {}",
            cert_path.display(),
            one_line(&error_chain(&e))
        ))
    })?;
    Ok(Some(id))
}

/// libpq refuses a private key others can read: 0600 or less, or 0640 or less when owned
/// by root. (libpq also compares the owner with the process's uid; not done here.)
fn check_key_permissions(path: &Path) -> Result<(), ConnInfoError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(()); // reading it reports the problem
    };
    let allowed = if meta.uid() == 0 { 0o740 } else { 0o700 };
    if meta.mode() & 0o777 & !allowed != 0 {
        return Err(ConnInfoError(format!(
            "private key file \"{}\" has group or world access (mode {:o}): chmod 600 it \
             (or 640 if owned by root)",
            path.display(),
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Password file

#[derive(Clone, Debug)]
enum PasswordFrom {
    None,
    Conninfo,
    Env,
    Passfile { path: PathBuf, line: usize },
}

/// The password file's text; Ok(None) when it does not exist (libpq: silently no
/// password); Err(note) when it is skipped, as libpq does (with a warning) for a file that
/// is not a plain file or that group/others may access.
fn read_passfile(path: &Path) -> Result<Option<String>, String> {
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
fn passfile_match(
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
fn match_field<'a>(line: &'a str, want: &str) -> Option<&'a str> {
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

// ---------------------------------------------------------------------------------------
// Tokenisers

/// The part after `postgres://` or `postgresql://`, if the string is a URL.
fn url_rest(s: &str) -> Option<&str> {
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
fn parse_keyword_value(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
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
fn parse_url(rest: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
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

// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio_postgres::config::Host;

    fn env() -> Env {
        Env {
            vars: HashMap::new(),
            home: None,
            os_user: Some("osuser".into()),
            ..Env::default()
        }
    }

    fn env_with(vars: &[(&str, &str)]) -> Env {
        let mut e = env();
        for (k, v) in vars {
            e.vars.insert(k.to_string(), v.to_string());
        }
        e
    }

    fn parse(s: &str) -> Target {
        Target::parse(s, &env()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match Target::parse(s, &env()) {
            Ok(t) => panic!("{s}: parsed as {t:?}"),
            Err(e) => e.0,
        }
    }

    fn hosts(t: &Target) -> Vec<String> {
        t.config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(s) => s.clone(),
                Host::Unix(p) => format!("unix:{}", p.display()),
            })
            .collect()
    }

    fn password(t: &Target) -> Option<String> {
        t.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

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
    fn unknown_and_refused_keys() {
        let e = err("host=x Host=y");
        assert!(
            e.contains("\"Host\"") && e.contains("not a libpq connection option"),
            "{e}"
        );
        assert!(e.contains("sslrootcert"), "lists the known keys: {e}");
        let e = err("host=x statement_timeout=5");
        assert!(e.contains("options='-c name=value'"), "{e}");
        let e = err("host=x sslcrl=/etc/crl.pem");
        assert!(e.contains("revocation"), "{e}");
        let e = err("service=foo");
        assert!(e.contains("pg_service.conf"), "{e}");
        assert!(err("postgres://h/db?foo=bar").contains("\"foo\""));
    }

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

    #[test]
    fn root_certificate_files() {
        let e = err("host=h sslmode=verify-full sslrootcert=/nonexistent.crt");
        assert!(
            e.contains("\"/nonexistent.crt\"") && e.contains("provide the file"),
            "{e}"
        );
        // require + sslrootcert verifies, so the file must exist too
        assert!(
            err("host=h sslmode=require sslrootcert=/nonexistent.crt").contains("/nonexistent.crt")
        );
        // default location under home
        let dir = tempfile::tempdir().unwrap();
        let mut h = env();
        h.home = Some(dir.path().to_path_buf());
        let e = Target::parse("host=h sslmode=verify-ca", &h).unwrap_err().0;
        assert!(e.contains(".postgresql/root.crt"), "{e}");
        std::fs::create_dir(dir.path().join(".postgresql")).unwrap();
        write_file(
            &dir.path().join(".postgresql"),
            "root.crt",
            &self_signed_pem(),
            0o644,
        );
        Target::parse("host=h sslmode=verify-ca", &h).unwrap();
        // no home and no sslrootcert
        assert!(err("host=h sslmode=verify-full").contains("sslrootcert="));
        // not a certificate
        let bad = write_file(dir.path(), "bad.pem", "hello\n", 0o644);
        let e = err(&format!(
            "host=h sslmode=verify-ca sslrootcert={}",
            bad.display()
        ));
        assert!(e.contains("BEGIN CERTIFICATE"), "{e}");
        // system roots: verify-full only
        let t = parse("host=h sslrootcert=system");
        assert_eq!(t.sslmode(), "verify-full");
        assert!(err("host=h sslmode=require sslrootcert=system").contains("verify-full"));
    }

    #[test]
    fn client_certificate_keys_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, pkcs1) = self_signed_with_rsa_key();
        let cert = write_file(dir.path(), "client.crt", &cert, 0o644);
        let key = write_file(dir.path(), "client.key", &pkcs1, 0o600);
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        parse(&format!(
            "host=h sslcert={} sslkey={}",
            cert.display(),
            key.display()
        ));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = err(&format!(
            "host=h sslcert={} sslkey={}",
            cert.display(),
            key.display()
        ));
        assert!(e.contains("chmod 600"), "{e}");
        let e = err("host=h sslcert=/nonexistent.crt sslkey=/nonexistent.key");
        assert!(e.contains("/nonexistent.crt"), "{e}");
        // not loaded at all without TLS
        parse("host=h sslmode=disable sslcert=/nonexistent.crt");
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

    fn code(c: &str) -> Cause {
        Cause::Server(SqlState::from_code(c))
    }

    #[test]
    fn hints() {
        let t = parse("host=h");
        let tls = Cause::ServerRefusedTls;
        assert!(t.hint(&tls).unwrap().contains("add sslmode=disable"));
        assert!(
            t.hint(&tls)
                .unwrap()
                .contains("defaults to sslmode=require")
        );
        let t = parse("host=h sslmode=require user=u");
        assert!(
            t.hint(&tls)
                .unwrap()
                .contains("this connection string says sslmode=require")
        );
        let t = Target::parse("host=h user=u", &env_with(&[("PGSSLMODE", "require")])).unwrap();
        assert!(t.hint(&tls).unwrap().contains("PGSSLMODE"));
        // Without user=, a refused login is most likely the OS user's name.
        let t = parse("host=h");
        for c in ["28P01", "28000"] {
            assert!(
                t.hint(&code(c)).unwrap().contains("OS user \"osuser\""),
                "{c}"
            );
        }
        let t = parse("host=h user=u password=x");
        assert!(t.hint(&code("28P01")).unwrap().contains("check password="));
        let t = parse("host=h user=u");
        assert!(t.hint(&code("28P01")).unwrap().contains("SQLSTATE 28P01"));
        assert_eq!(t.hint(&code("XX000")), None);
        assert_eq!(t.hint(&Cause::Other), None);
    }

    /// The message text is the server's, in its language; only the code decides.
    #[test]
    fn server_errors_are_hinted_by_sqlstate() {
        let t = parse("host=h user=u sslmode=disable");
        let h = t.hint(&code("28000")).unwrap();
        assert!(h.contains("pg_hba.conf"), "{h}");
        assert!(
            h.contains("sslmode=disable: no TLS, so hostssl lines do not match"),
            "{h}"
        );
        assert!(!h.contains("accepts only TLS"), "{h}");
        // With TLS, or over a socket, TLS is not mentioned at all.
        for s in ["host=h user=u sslmode=require", "host=/tmp user=u"] {
            let h = parse(s).hint(&code("28000")).unwrap();
            assert!(h.contains("pg_hba.conf") && !h.contains("TLS"), "{s}: {h}");
        }
        for (c, want) in [
            ("53300", "no free connection slot"),
            ("3D000", "set dbname= to a database that exists there"),
            ("42501", "GRANT CONNECT"),
            ("57P03", "hot_standby=off"),
        ] {
            let h = t.hint(&code(c)).unwrap();
            assert!(h.contains(want) && h.contains(c), "{c}: {h}");
        }
    }

    #[test]
    fn socket_errors_are_hinted_by_io_error_kind() {
        let tcp = parse("host=h user=u");
        let sock = parse("host=/tmp user=u");
        let io = |k| Cause::Io(k);
        for t in [&tcp, &sock] {
            assert!(
                t.hint(&io(io::ErrorKind::ConnectionRefused))
                    .unwrap()
                    .contains("nothing listens there")
            );
        }
        assert!(
            sock.hint(&io(io::ErrorKind::NotFound))
                .unwrap()
                .contains("no socket there")
        );
        assert!(
            sock.hint(&io(io::ErrorKind::PermissionDenied))
                .unwrap()
                .contains("no permission to open the socket")
        );
        assert_eq!(tcp.hint(&io(io::ErrorKind::NotFound)), None);
        assert!(
            tcp.hint(&io(io::ErrorKind::TimedOut))
                .unwrap()
                .contains("firewall")
        );
        assert!(
            tcp.hint(&io(io::ErrorKind::HostUnreachable))
                .unwrap()
                .contains("no route")
        );
        assert_eq!(tcp.hint(&io(io::ErrorKind::UnexpectedEof)), None);
    }

    #[test]
    fn certificate_hints_say_what_the_mode_requires() {
        let dir = tempfile::tempdir().unwrap();
        let ca = write_file(dir.path(), "ca.pem", &self_signed_pem(), 0o644);
        let t = parse(&format!(
            "host=db.example sslmode=verify-full sslrootcert={}",
            ca.display()
        ));
        let h = t.hint(&Cause::Certificate).unwrap();
        assert!(h.contains("issued for \"db.example\""), "{h}");
        assert!(h.contains(&ca.display().to_string()), "{h}");
        let t = parse(&format!(
            "host=db.example sslmode=verify-ca sslrootcert={}",
            ca.display()
        ));
        let h = t.hint(&Cause::Certificate).unwrap();
        assert!(h.contains("point sslrootcert="), "{h}");
        assert!(!h.contains("issued for"), "{h}");
    }

    /// A server that reads one packet (the startup message, or an SSLRequest) and answers
    /// `reply`, then closes.
    async fn one_reply_server(reply: Vec<u8>) -> (u16, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut len = [0u8; 4];
            sock.read_exact(&mut len).await.unwrap();
            let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            sock.read_exact(&mut rest).await.unwrap();
            sock.write_all(&reply).await.unwrap();
            let _ = sock.shutdown().await;
        });
        (port, server)
    }

    /// A FATAL ErrorResponse as PostgreSQL sends it at login.
    fn fatal(sqlstate: &str, message: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (field, value) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', sqlstate),
            (b'M', message),
        ] {
            body.push(field);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = vec![b'E'];
        msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        msg.extend_from_slice(&body);
        msg
    }

    /// Issue 8, item 7: a pg_hba.conf reject line, reported in German; the hint used to
    /// say "the server accepts only TLS here".
    #[tokio::test]
    async fn a_pg_hba_rejection_in_another_language_gets_the_pg_hba_hint() {
        let (port, server) = one_reply_server(fatal(
            "28000",
            "pg_hba.conf lehnt Verbindung ab für Host »127.0.0.1«, Benutzer »rebouncer«, \
             Datenbank »postgres«, keine Verschlüsselung",
        ))
        .await;
        let t = parse(&format!(
            "host=127.0.0.1 port={port} user=rebouncer dbname=postgres sslmode=disable"
        ));
        let Err(e) = t.connect().await else {
            panic!("connected to a server that refuses");
        };
        server.await.unwrap();
        let text = e.to_string();
        assert!(
            text.contains("lehnt Verbindung ab"),
            "the server's words: {text}"
        );
        let hint = e.hint.unwrap();
        assert!(hint.contains("SQLSTATE 28000"), "{hint}");
        assert!(hint.contains("pg_hba.conf"), "{hint}");
        assert!(!hint.contains("accepts only TLS"), "{hint}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[tokio::test]
    async fn too_many_connections_in_another_language_gets_its_hint() {
        let (port, server) =
            one_reply_server(fatal("53300", "Es sind schon zu viele Verbindungen offen")).await;
        let t = parse(&format!(
            "host=127.0.0.1 port={port} user=u sslmode=disable"
        ));
        let Err(e) = t.connect().await else {
            panic!("connected");
        };
        server.await.unwrap();
        assert!(
            e.hint
                .as_deref()
                .unwrap()
                .contains("no free connection slot"),
            "{e}"
        );
    }

    /// tokio-postgres reports this one as text of its own; this pins that text.
    #[tokio::test]
    async fn a_missing_password_gets_the_password_hint() {
        // AuthenticationCleartextPassword.
        let (port, server) = one_reply_server(vec![b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
        let dir = tempfile::tempdir().unwrap();
        let t = parse(&format!(
            "host=127.0.0.1 port={port} user=u sslmode=disable passfile={}",
            dir.path().join("none").display()
        ));
        let Err(e) = t.connect().await else {
            panic!("connected without a password");
        };
        server.await.unwrap();
        let hint = e.hint.as_deref().unwrap_or_default();
        assert!(hint.contains("the server wants a password"), "{e}");
    }

    /// A TLS server whose certificate the client does not accept: signed by another CA, or
    /// (verify-full) not issued for the host name.
    #[tokio::test]
    async fn an_unaccepted_certificate_gets_the_certificate_hint() {
        use std::io::{Read, Write};
        let (cert, pkcs1) = self_signed_with_rsa_key();
        let key = openssl::pkey::PKey::from_rsa(
            openssl::rsa::Rsa::private_key_from_pem(pkcs1.as_bytes()).unwrap(),
        )
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
        let identity = native_tls::Identity::from_pkcs8(cert.as_bytes(), &key).unwrap();
        let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut sock, _) = listener.accept().unwrap();
                let mut req = [0u8; 8];
                sock.read_exact(&mut req).unwrap();
                sock.write_all(b"S").unwrap();
                // The client gives up in the handshake.
                let _ = acceptor.accept(sock);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let other_ca = write_file(dir.path(), "other.pem", &self_signed_pem(), 0o644);
        let own_ca = write_file(dir.path(), "own.pem", &cert, 0o644);
        for (conninfo, want) in [
            (
                format!(
                    "host=127.0.0.1 port={port} user=u sslmode=verify-ca sslrootcert={}",
                    other_ca.display()
                ),
                "point sslrootcert=",
            ),
            (
                format!(
                    "host=wrong.example hostaddr=127.0.0.1 port={port} user=u \
                     sslmode=verify-full sslrootcert={}",
                    own_ca.display()
                ),
                "issued for \"wrong.example\"",
            ),
        ] {
            let Err(e) = parse(&conninfo).connect().await else {
                panic!("connected: {conninfo}");
            };
            let hint = e.hint.as_deref().unwrap_or_default();
            assert!(
                hint.contains("the server's certificate was not accepted"),
                "{e}"
            );
            assert!(hint.contains(want), "{e}");
        }
        server.join().unwrap();
    }

    /// A throwaway self-signed certificate and its PKCS#1 RSA key, both PEM.
    fn self_signed_with_rsa_key() -> (String, String) {
        use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509};
        let rsa = Rsa::generate(2048).unwrap();
        let pkcs1 = String::from_utf8(rsa.private_key_to_pem().unwrap()).unwrap();
        let key = PKey::from_rsa(rsa).unwrap();
        let mut name = x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "rebouncer test").unwrap();
        let name = name.build();
        let mut b = x509::X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = String::from_utf8(b.build().to_pem().unwrap()).unwrap();
        (cert, pkcs1)
    }

    fn self_signed_pem() -> String {
        self_signed_with_rsa_key().0
    }
}
