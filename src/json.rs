//! Just enough JSON to write the status pages: a value tree and its serialisation.
//! The pages only ever write JSON, never read it, and a hand-written escaper of a few lines
//! is easier to audit than a serde dependency tree (see the commit that added it).

use std::fmt::Write as _;
use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// Written as `null` when not finite: JSON has no NaN or infinity.
    Num(f64),
    Str(String),
    Arr(Vec<Value>),
    /// Keys in the order given: people read these pages too.
    Obj(Vec<(&'static str, Value)>),
}

impl Value {
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    pub fn opt_str(s: Option<impl Into<String>>) -> Value {
        s.map_or(Value::Null, |s| Value::Str(s.into()))
    }

    /// RFC 3339 in UTC with milliseconds: sortable as text, parsed by every language.
    pub fn time(t: SystemTime) -> Value {
        Value::Str(rfc3339(t))
    }

    pub fn opt_time(t: Option<SystemTime>) -> Value {
        t.map_or(Value::Null, Value::time)
    }

    pub fn write(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            // Rust's `Display` for f64 never uses an exponent and round-trips: valid JSON.
            Value::Num(n) if n.is_finite() => {
                let _ = write!(out, "{n}");
            }
            Value::Num(_) => out.push_str("null"),
            Value::Str(s) => escape_into(out, s),
            Value::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Value::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    escape_into(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// The document with a trailing newline, so `curl` output ends cleanly in a terminal.
    pub fn to_document(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out.push('\n');
        out
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A JSON string literal (RFC 8259 section 7): quotes, backslashes and every control
/// character escaped. Error texts from servers and PgBouncer carry quotes, and a
/// connection error can carry a newline.
pub fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            // U+2028/2029 are valid JSON but end a line in JavaScript source.
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn doc(v: &Value) -> String {
        let mut s = String::new();
        v.write(&mut s);
        s
    }

    #[test]
    fn strings_are_escaped() {
        let v = Value::str(
            "FATAL:  password authentication failed for user \"app\"\n\t\\ \u{1} \u{7f} é \u{2028}",
        );
        assert_eq!(
            doc(&v),
            r#""FATAL:  password authentication failed for user \"app\"\n\t\\ \u0001 \u007f é \u2028""#
        );
    }

    #[test]
    fn values_and_nesting() {
        let v = Value::Obj(vec![
            ("a", Value::Null),
            ("b", Value::Bool(true)),
            ("c", Value::Int(-3)),
            ("d", Value::Num(0.0015)),
            ("e", Value::Num(f64::NAN)),
            ("f", Value::Arr(vec![Value::Int(1), Value::str("x")])),
            ("g", Value::Obj(vec![])),
            ("h", Value::Num(1e21)),
        ]);
        assert_eq!(
            doc(&v),
            r#"{"a":null,"b":true,"c":-3,"d":0.0015,"e":null,"f":[1,"x"],"g":{},"h":1000000000000000000000}"#
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_748_800_123);
        assert_eq!(rfc3339(t), "2025-12-03T08:00:00.123Z");
    }
}
