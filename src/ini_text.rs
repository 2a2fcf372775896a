//! Reading INI text the way the Go tool and PgBouncer do, shared by the rebouncer config
//! ([`crate::config`]) and the node files ([`crate::node_file`]): the file as UTF-8 with the
//! line where it stops being text, the shape of each line, and how a key may be named in a
//! message without leaking a password.

use std::fs;
use std::io;
use std::path::Path;

/// A key as it may appear in a message. A line that lost its name can have a connection
/// URL before its first `=` (`postgresql://u:secret@h/db?sslmode=require`), so only keys
/// that look like names are repeated.
pub fn shown(key: &str) -> String {
    let plain = key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plain {
        format!("\"{key}\"")
    } else {
        "this key".to_string()
    }
}

pub enum ReadError {
    Io(io::Error),
    /// 1-based line of the first byte that is not UTF-8.
    NotUtf8(usize),
}

/// Read a whole file as UTF-8 text (connection strings are `&str` for tokio-postgres),
/// saying on which line it stops being text.
pub fn read_text(path: &Path) -> Result<String, ReadError> {
    let bytes = fs::read(path).map_err(ReadError::Io)?;
    match String::from_utf8(bytes) {
        Ok(mut s) => {
            // Editors on Windows write a byte order mark; Go would have read it as part of
            // the first line and failed on it. Nothing can mean it, so drop it.
            if s.starts_with('\u{feff}') {
                s.drain(..'\u{feff}'.len_utf8());
            }
            Ok(s)
        }
        Err(e) => {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
            Err(ReadError::NotUtf8(line))
        }
    }
}

/// One line of an INI file, trimmed, in the grammar of the Go tool (and, for the shapes
/// it knows, of PgBouncer).
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Empty, or a comment: `#` or `;` first, after any indentation.
    Blank,
    /// `[name]`, name trimmed; `rest` is whatever follows the `]`.
    Section { name: &'a str, rest: &'a str },
    /// Starts with `[` but has no `]`.
    UnclosedSection,
    /// `key = value`, split at the first `=`, both trimmed. Values are kept verbatim
    /// otherwise: quotes, backslashes, `#` and `;` belong to connection strings.
    Entry { key: &'a str, value: &'a str },
    /// Anything else: a line with no `=`.
    NoEquals,
}

pub fn classify(raw: &str) -> Line<'_> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
        return Line::Blank;
    }
    if let Some(inner) = line.strip_prefix('[') {
        return match inner.split_once(']') {
            Some((name, rest)) => Line::Section {
                name: name.trim(),
                rest: rest.trim(),
            },
            None => Line::UnclosedSection,
        };
    }
    match line.split_once('=') {
        Some((key, value)) => Line::Entry {
            key: key.trim(),
            value: value.trim(),
        },
        None => Line::NoEquals,
    }
}
