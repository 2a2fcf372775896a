//! etcd's JSON gateway, as text: the request bodies the client sends and the answers it
//! reads. Pure: no I/O, so every quirk of the format is tested here.
//!
//! The gateway (etcd 3.4: `POST /v3/kv/range`, `/v3/watch`, `/v3/auth/authenticate`)
//! writes protobuf messages as JSON with three habits a reader must know: keys and values
//! are base64; 64-bit integers (revisions, leases) are strings; fields holding their
//! default value are left out (a PUT event has no `type`, a first revision no `version`).
//! A watch answers with one JSON object per line, `{"result": {...}}` or `{"error": {...}}`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

/// `POST /v3/kv/range` for one key.
pub fn range_request(key: &str) -> String {
    serde_json::json!({ "key": B64.encode(key) }).to_string()
}

/// `POST /v3/watch` for one key from `start_revision` on, asking for progress
/// notifications (an idle watch then still tells its revision now and then).
pub fn watch_request(key: &str, start_revision: i64) -> String {
    serde_json::json!({
        "create_request": {
            "key": B64.encode(key),
            "start_revision": start_revision.to_string(),
            "progress_notify": true,
        }
    })
    .to_string()
}

/// `POST /v3/auth/authenticate`.
pub fn authenticate_request(user: &str, password: &str) -> String {
    serde_json::json!({ "name": user, "password": password }).to_string()
}

/// A 64-bit integer as the gateway writes it: a string, or (from other encoders) a number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct I64(pub i64);

impl<'de> Deserialize<'de> for I64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            S(String),
            N(i64),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(I64(n)),
            Either::S(s) => s
                .parse()
                .map(I64)
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an integer"))),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default)]
    revision: I64,
}

#[derive(Debug, Deserialize)]
struct Kv {
    #[serde(default)]
    value: String,
    #[serde(default)]
    mod_revision: I64,
}

#[derive(Debug, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
}

/// What a read of one key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The value, None when the key does not exist.
    pub value: Option<String>,
    /// The revision the key last changed at (0 when it does not exist).
    pub mod_revision: i64,
    /// The store's revision when the read was served.
    pub revision: i64,
}

/// Why an answer could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError(pub String);

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "etcd answered something that is not a v3 JSON gateway answer ({}); is the endpoint an etcd 3.4 or later client URL?",
            self.0
        )
    }
}

fn decode(field: &str, b64: &str) -> Result<String, FormatError> {
    let bytes = B64
        .decode(b64)
        .map_err(|e| FormatError(format!("{field} is not base64: {e}")))?;
    String::from_utf8(bytes).map_err(|_| FormatError(format!("{field} is not UTF-8")))
}

pub fn parse_range(body: &str) -> Result<Read, FormatError> {
    let r: RangeResponse = serde_json::from_str(body)
        .map_err(|e| FormatError(format!("range: {e}: {}", excerpt(body))))?;
    let (value, mod_revision) = match r.kvs.first() {
        Some(kv) => (Some(decode("value", &kv.value)?), kv.mod_revision.0),
        None => (None, 0),
    };
    Ok(Read {
        value,
        mod_revision,
        revision: r.header.revision.0,
    })
}

/// The token of `POST /v3/auth/authenticate`.
pub fn parse_token(body: &str) -> Result<String, FormatError> {
    #[derive(Deserialize)]
    struct Auth {
        #[serde(default)]
        token: String,
    }
    let a: Auth = serde_json::from_str(body)
        .map_err(|e| FormatError(format!("authenticate: {e}: {}", excerpt(body))))?;
    if a.token.is_empty() {
        return Err(FormatError("authenticate: no token".into()));
    }
    Ok(a.token)
}

/// The gateway's error body (`{"error": "...", "code": N, "message": "..."}`), as text.
pub fn error_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct E {
        #[serde(default)]
        message: String,
        #[serde(default)]
        error: serde_json::Value,
    }
    match serde_json::from_str::<E>(body) {
        Ok(e) if !e.message.is_empty() => e.message,
        Ok(E {
            error: serde_json::Value::String(s),
            ..
        }) => s,
        Ok(E {
            error: serde_json::Value::Object(o),
            ..
        }) => o
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => excerpt(body),
    }
}

fn excerpt(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// One change of the watched key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The new value; None when the key was deleted (or expired with its lease).
    pub value: Option<String>,
    pub revision: i64,
}

/// One line of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// The watch is in place; `revision` is the store's revision at that moment.
    Created { revision: i64 },
    /// Changes, oldest first.
    Changes { changes: Vec<Change>, revision: i64 },
    /// Nothing changed up to `revision` (a progress notification).
    Progress { revision: i64 },
    /// The history from the requested revision is gone: read again and watch from the
    /// revision of that read.
    Compacted { compact_revision: i64 },
    /// etcd ended the watch for another reason (a revoked permission, an expired token).
    Canceled { reason: String },
    /// The gateway reported an error instead of a result.
    Error { message: String },
}

pub fn parse_watch_line(line: &str) -> Result<WatchMessage, FormatError> {
    #[derive(Deserialize)]
    struct Event {
        #[serde(default, rename = "type")]
        kind: String,
        kv: Option<Kv>,
    }
    #[derive(Deserialize)]
    struct Result_ {
        #[serde(default)]
        header: Header,
        #[serde(default)]
        created: bool,
        #[serde(default)]
        canceled: bool,
        #[serde(default)]
        compact_revision: I64,
        #[serde(default)]
        cancel_reason: String,
        #[serde(default)]
        events: Vec<Event>,
    }
    #[derive(Deserialize)]
    struct Line {
        result: Option<Result_>,
        error: Option<serde_json::Value>,
    }
    let l: Line = serde_json::from_str(line)
        .map_err(|e| FormatError(format!("watch: {e}: {}", excerpt(line))))?;
    if let Some(e) = l.error {
        return Ok(WatchMessage::Error {
            message: error_message(&serde_json::json!({ "error": e }).to_string()),
        });
    }
    let Some(r) = l.result else {
        return Err(FormatError(format!(
            "watch: neither result nor error: {}",
            excerpt(line)
        )));
    };
    let revision = r.header.revision.0;
    if r.canceled {
        if r.compact_revision.0 > 0 {
            return Ok(WatchMessage::Compacted {
                compact_revision: r.compact_revision.0,
            });
        }
        return Ok(WatchMessage::Canceled {
            reason: if r.cancel_reason.is_empty() {
                "no reason given".into()
            } else {
                r.cancel_reason
            },
        });
    }
    if r.created {
        return Ok(WatchMessage::Created { revision });
    }
    if r.events.is_empty() {
        return Ok(WatchMessage::Progress { revision });
    }
    let mut changes = Vec::with_capacity(r.events.len());
    for e in r.events {
        let kv =
            e.kv.ok_or_else(|| FormatError("watch: an event without kv".into()))?;
        let value = match e.kind.as_str() {
            "" | "PUT" => Some(decode("value", &kv.value)?),
            "DELETE" => None,
            other => return Err(FormatError(format!("watch: event type {other:?}"))),
        };
        changes.push(Change {
            value,
            revision: kv.mod_revision.0,
        });
    }
    Ok(WatchMessage::Changes { changes, revision })
}

/// Where Patroni keeps a cluster's keys: `<namespace>/<scope>/`, namespace with one
/// leading and no trailing slash (Patroni's default namespace is `/service`).
pub fn cluster_prefix(namespace: &str, scope: &str) -> String {
    let ns = namespace.trim_matches('/');
    if ns.is_empty() {
        format!("/{scope}/")
    } else {
        format!("/{ns}/{scope}/")
    }
}

/// The `conn_url` of a Patroni member record (`members/<name>`, JSON).
pub fn member_conn_url(value: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct M {
        conn_url: Option<String>,
    }
    serde_json::from_str::<M>(value).ok()?.conn_url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_of_a_present_key_gives_value_and_revisions() {
        // As etcd 3.4.23 answered for Patroni's leader key.
        let body = r#"{"header":{"cluster_id":"7801232528081817440","member_id":"13458989633860879742","revision":"108","raft_term":"2"},"kvs":[{"key":"L3NlcnZpY2UvcmJ0ZXN0L2xlYWRlcg==","create_revision":"42","mod_revision":"42","version":"1","value":"bTI=","lease":"5007618286775333901"}],"count":"1"}"#;
        assert_eq!(
            parse_range(body).unwrap(),
            Read {
                value: Some("m2".into()),
                mod_revision: 42,
                revision: 108
            }
        );
    }

    #[test]
    fn range_of_a_missing_key_has_no_value() {
        let body =
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"2"}}"#;
        assert_eq!(
            parse_range(body).unwrap(),
            Read {
                value: None,
                mod_revision: 0,
                revision: 7
            }
        );
    }

    #[test]
    fn garbage_is_a_format_error_that_names_the_gateway() {
        let e = parse_range("<html>404</html>").unwrap_err();
        assert!(e.to_string().contains("JSON gateway"), "{e}");
        assert!(parse_range(r#"{"kvs":[{"value":"***"}]}"#).is_err());
    }

    #[test]
    fn watch_lines_of_every_kind() {
        let created = r#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"31","raft_term":"2"},"created":true}}"#;
        assert_eq!(
            parse_watch_line(created).unwrap(),
            WatchMessage::Created { revision: 31 }
        );
        let delete = r#"{"result":{"header":{"revision":"40"},"events":[{"type":"DELETE","kv":{"key":"L3NlcnZpY2UvcmJ0ZXN0L2xlYWRlcg==","mod_revision":"40"}}]}}"#;
        assert_eq!(
            parse_watch_line(delete).unwrap(),
            WatchMessage::Changes {
                changes: vec![Change {
                    value: None,
                    revision: 40
                }],
                revision: 40
            }
        );
        // A PUT has no "type": it is the enum's default value.
        let put = r#"{"result":{"header":{"revision":"42"},"events":[{"kv":{"key":"eA==","create_revision":"42","mod_revision":"42","version":"1","value":"bTI=","lease":"5"}}]}}"#;
        assert_eq!(
            parse_watch_line(put).unwrap(),
            WatchMessage::Changes {
                changes: vec![Change {
                    value: Some("m2".into()),
                    revision: 42
                }],
                revision: 42
            }
        );
        let compacted = r#"{"result":{"header":{"cluster_id":"1","raft_term":"2"},"canceled":true,"compact_revision":"5"}}"#;
        assert_eq!(
            parse_watch_line(compacted).unwrap(),
            WatchMessage::Compacted {
                compact_revision: 5
            }
        );
        let canceled = r#"{"result":{"header":{"revision":"9"},"canceled":true,"cancel_reason":"permission denied"}}"#;
        assert_eq!(
            parse_watch_line(canceled).unwrap(),
            WatchMessage::Canceled {
                reason: "permission denied".into()
            }
        );
        let progress = r#"{"result":{"header":{"revision":"77"}}}"#;
        assert_eq!(
            parse_watch_line(progress).unwrap(),
            WatchMessage::Progress { revision: 77 }
        );
        let error = r#"{"error":{"grpc_code":16,"http_code":401,"message":"etcdserver: invalid auth token","http_status":"Unauthorized"}}"#;
        assert_eq!(
            parse_watch_line(error).unwrap(),
            WatchMessage::Error {
                message: "etcdserver: invalid auth token".into()
            }
        );
    }

    #[test]
    fn requests_carry_base64_keys_and_string_revisions() {
        let w: serde_json::Value =
            serde_json::from_str(&watch_request("/service/x/leader", 43)).unwrap();
        assert_eq!(w["create_request"]["key"], "L3NlcnZpY2UveC9sZWFkZXI=");
        assert_eq!(w["create_request"]["start_revision"], "43");
        let r: serde_json::Value = serde_json::from_str(&range_request("a")).unwrap();
        assert_eq!(r["key"], "YQ==");
    }

    #[test]
    fn gateway_errors_read_as_their_message() {
        assert_eq!(
            error_message(
                r#"{"error":"etcdserver: user name is empty","code":3,"message":"etcdserver: user name is empty"}"#
            ),
            "etcdserver: user name is empty"
        );
        assert_eq!(error_message("plain text"), "plain text");
        assert_eq!(
            parse_token(r#"{"header":{},"token":"abc.12"}"#).unwrap(),
            "abc.12"
        );
        assert!(parse_token(r#"{"header":{}}"#).is_err());
    }

    #[test]
    fn patroni_prefix_and_member_record() {
        assert_eq!(cluster_prefix("/service/", "main"), "/service/main/");
        assert_eq!(cluster_prefix("service", "main"), "/service/main/");
        assert_eq!(cluster_prefix("/", "main"), "/main/");
        let rec = r#"{"conn_url":"postgres://127.0.0.1:23812/postgres","api_url":"http://127.0.0.1:23802/patroni","state":"running","role":"replica","version":"3.0.2","xlog_location":67108864,"timeline":1}"#;
        assert_eq!(
            member_conn_url(rec).as_deref(),
            Some("postgres://127.0.0.1:23812/postgres")
        );
        assert_eq!(member_conn_url("not json"), None);
    }
}
