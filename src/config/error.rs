//! The configuration error and the two shapes of its message: every problem is one line,
//! `config error: <file>[:<line>]: <what is wrong>; <what to do>`.

use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigError {}

pub(super) fn at(file: &Path, line: usize, msg: impl fmt::Display) -> ConfigError {
    ConfigError(format!("config error: {}:{line}: {msg}", file.display()))
}

pub(super) fn in_file(file: &Path, msg: impl fmt::Display) -> ConfigError {
    ConfigError(format!("config error: {}: {msg}", file.display()))
}
