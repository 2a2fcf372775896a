//! The parsed connection string as the rest of the module works on it: each keyword's
//! value and where it came from (the string, a `PG*` variable, a default), libpq's sslmode
//! values, and the error every step returns. Messages name a value's origin so that an
//! operator knows whether to edit the string or the environment.

use std::fmt;

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

/// Where a value came from, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Conninfo,
    Env(&'static str),
    Default,
}

/// A value and where it came from.
pub type Sourced = (String, Source);

/// Keyword → value, last one wins (libpq; tokio-postgres would accumulate hosts and ports).
#[derive(Default)]
pub struct Params(pub Vec<(String, String, Source)>);

impl Params {
    pub fn set(&mut self, k: &str, v: String, src: Source) {
        match self.0.iter_mut().find(|(key, _, _)| key == k) {
            Some(e) => (e.1, e.2) = (v, src),
            None => self.0.push((k.to_string(), v, src)),
        }
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|e| e.0 == k).map(|e| e.1.as_str())
    }
    pub fn take(&mut self, k: &str) -> Option<Sourced> {
        let i = self.0.iter().position(|e| e.0 == k)?;
        let (_, v, s) = self.0.remove(i);
        Some((v, s))
    }
    pub fn take_value(&mut self, k: &str) -> Option<String> {
        self.take(k).map(|(v, _)| v)
    }
}

/// How to name a value's origin in a message: `port` or `PGPORT`.
pub fn origin(key: &str, src: Source) -> String {
    match src {
        Source::Env(var) => var.to_string(),
        _ => key.to_string(),
    }
}

/// libpq's sslmode values, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

pub const SSLMODES: [(&str, Mode); 6] = [
    ("disable", Mode::Disable),
    ("allow", Mode::Allow),
    ("prefer", Mode::Prefer),
    ("require", Mode::Require),
    ("verify-ca", Mode::VerifyCa),
    ("verify-full", Mode::VerifyFull),
];

impl Mode {
    pub fn name(self) -> &'static str {
        SSLMODES
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("?", |(n, _)| n)
    }
}

/// Messages are one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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
