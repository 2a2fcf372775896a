//! How the JSON pages write what serde hands them: times as RFC 3339 text, durations as
//! seconds, and numbers and strings exactly as the pages have always written them, so a
//! monitoring script that compares bytes (or a JavaScript one that evals a line) sees no
//! change.

use std::io;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use serde_json::ser::{CharEscape, Formatter};

/// The document with a trailing newline, so `curl` output ends cleanly in a terminal.
pub fn to_document<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(1024);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Compact);
    // Writing into a Vec fails only if a Serialize impl does, and the pages' do not: the
    // maps have string keys and every number is finite or written as null.
    if value.serialize(&mut ser).is_err() {
        out.clear();
        out.extend_from_slice(b"null");
    }
    out.push(b'\n');
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_default()
}

/// serde_json's compact output with three differences of the pages' own: a float is
/// written as Rust's `Display` does (`2`, not `2.0`; never an exponent), backspace and
/// form feed as `\u0008` and `\u000c`, and DEL, U+2028 and U+2029 escaped too (the last
/// two are valid JSON but end a line in JavaScript source).
struct Compact;

impl Formatter for Compact {
    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        write!(w, "{value}")
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"\\/",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::Backspace => b"\\u0008",
            CharEscape::FormFeed => b"\\u000c",
            CharEscape::AsciiControl(c) => return write!(w, "\\u{:04x}", c),
        };
        w.write_all(s)
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escaped: &[u8] = match c {
                '\u{7f}' => b"\\u007f",
                '\u{2028}' => b"\\u2028",
                '\u{2029}' => b"\\u2029",
                _ => continue,
            };
            w.write_all(&fragment.as_bytes()[start..i])?;
            w.write_all(escaped)?;
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

/// RFC 3339 in UTC with milliseconds: sortable as text, parsed by every language.
pub fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `serialize_with` for a time.
pub fn time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// `serialize_with` for a time that may be missing (`null`).
pub fn opt_time<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => time(t, s),
        None => s.serialize_none(),
    }
}

/// `serialize_with` for a duration, in seconds.
pub fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// `serialize_with` for a duration that may be missing (`null`), in seconds.
pub fn opt_seconds<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => seconds(d, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_for_json_and_javascript() {
        let text = "FATAL:  password authentication failed for user \"app\"\n\t\\ \u{1} \u{8} \u{c} \r \u{7f} é \u{2028}\u{2029}/";
        assert_eq!(
            to_document(text),
            "\"FATAL:  password authentication failed for user \\\"app\\\"\\n\\t\\\\ \\u0001 \\u0008 \\u000c \\r \\u007f é \\u2028\\u2029/\"\n"
        );
        let back: String = serde_json::from_str(&to_document(text)).unwrap();
        assert_eq!(back, text);
    }

    #[test]
    fn floats_as_display_writes_them_and_not_finite_ones_as_null() {
        let v = [0.0015, 2.0, 1e21, 1e-7, f64::NAN, f64::INFINITY, -3.5];
        assert_eq!(
            to_document(&v),
            "[0.0015,2,1000000000000000000000,0.0000001,null,null,-3.5]\n"
        );
        let back: Vec<Option<f64>> = serde_json::from_str(&to_document(&v)).unwrap();
        assert_eq!(back[2], Some(1e21));
        assert_eq!(back[3], Some(1e-7));
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_748_800_123);
        assert_eq!(rfc3339(t), "2025-12-03T08:00:00.123Z");
    }
}
