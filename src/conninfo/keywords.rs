//! Which libpq keywords rebouncer accepts: handed to tokio-postgres as they are, read and
//! translated here, or refused with what to do instead.

use super::params::ConnInfoError;

/// Handed to tokio-postgres as they are; it validates the values.
pub const PASSED: &[&str] = &[
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
pub const HANDLED: &[&str] = &[
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
pub const REFUSED: &[(&str, &str)] = &[
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

pub fn check_keyword(k: &str) -> Result<(), ConnInfoError> {
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

#[cfg(test)]
mod tests {
    use crate::conninfo::testing::*;

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
}
