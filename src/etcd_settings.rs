//! The `etcd_*` keys of `[global]`: whether rebouncer follows Patroni's leader key in
//! etcd instead of polling, and how to reach etcd. Off unless `etcd_endpoints` is given;
//! polling stays the default. Design and rules: `docs/etcd.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::error::ConfigError;
use crate::etcd;

/// The keys, in the order the parser lists them (after the polling keys).
pub const KEYS: [&str; 11] = [
    "etcd_endpoints",
    "etcd_scope",
    "etcd_namespace",
    "etcd_members",
    "etcd_user",
    "etcd_password",
    "etcd_ca_file",
    "etcd_cert_file",
    "etcd_key_file",
    "etcd_timeout",
    "etcd_check_interval",
];

pub const DEFAULT_NAMESPACE: &str = "/service";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(60));
const CHECK_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(3600));

/// The etcd mode as configured.
#[derive(Clone)]
pub struct EtcdMode {
    /// What the watch is started with.
    pub settings: etcd::Settings,
    /// Patroni member name -> `[servers]` name, for the members whose names differ.
    pub members: BTreeMap<String, String>,
    /// The line of `etcd_endpoints`, for messages about the mode itself.
    pub line: usize,
    /// A digest of the TLS files' contents as read with the configuration: a certificate
    /// renewed under the same name is a change a reload applies.
    tls_digest: Option<u64>,
}

// By hand: the password must not reach a log line or a test's failure message.
impl fmt::Debug for EtcdMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("EtcdMode")
            .field(
                "endpoints",
                &s.endpoints
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>(),
            )
            .field("namespace", &s.namespace)
            .field("scope", &s.scope)
            .field("user", &s.user.as_ref().map(|(u, _)| u))
            .field("ca_file", &s.ca_file)
            .field("cert_file", &s.cert_file)
            .field("key_file", &s.key_file)
            .field("timeout", &s.timeout)
            .field("check_interval", &s.check_interval)
            .field("members", &self.members)
            .finish()
    }
}

impl EtcdMode {
    /// The `[servers]` name of a Patroni member: its mapping, else the same name.
    pub fn server_for<'a>(&'a self, member: &'a str) -> &'a str {
        self.members.get(member).map_or(member, String::as_str)
    }

    /// The settings that differ from `old`, one phrase each ("etcd_scope main -> other";
    /// the password only named): the watch must be started again when any does.
    pub fn changes_from(&self, old: &EtcdMode) -> Vec<String> {
        let (a, b) = (&old.settings, &self.settings);
        let mut out = Vec::new();
        let mut setting = |key: &str, was: String, now: String| {
            if was != now {
                out.push(format!("{key} {was} -> {now}"));
            }
        };
        let list = |s: &etcd::Settings| {
            s.endpoints
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let file = |f: &Option<PathBuf>| {
            f.as_ref()
                .map_or("(none)".to_string(), |p| p.display().to_string())
        };
        let secs = |d: Duration| format!("{} s", d.as_secs_f64());
        setting("etcd_endpoints", list(a), list(b));
        setting("etcd_namespace", a.namespace.clone(), b.namespace.clone());
        setting("etcd_scope", a.scope.clone(), b.scope.clone());
        let pairs = |m: &BTreeMap<String, String>| {
            let p: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            if p.is_empty() {
                "(same names)".to_string()
            } else {
                p.join(",")
            }
        };
        setting("etcd_members", pairs(&old.members), pairs(&self.members));
        let user = |s: &etcd::Settings| {
            s.user
                .as_ref()
                .map_or("(none)".to_string(), |(u, _)| u.clone())
        };
        setting("etcd_user", user(a), user(b));
        setting("etcd_ca_file", file(&a.ca_file), file(&b.ca_file));
        setting("etcd_cert_file", file(&a.cert_file), file(&b.cert_file));
        setting("etcd_key_file", file(&a.key_file), file(&b.key_file));
        setting("etcd_timeout", secs(a.timeout), secs(b.timeout));
        setting(
            "etcd_check_interval",
            secs(a.check_interval),
            secs(b.check_interval),
        );
        let password = |s: &etcd::Settings| s.user.as_ref().map(|(_, p)| p.clone());
        if a.user.is_some() && b.user.is_some() && password(a) != password(b) {
            out.push("etcd_password changed".to_string());
        }
        let same_files =
            a.ca_file == b.ca_file && a.cert_file == b.cert_file && a.key_file == b.key_file;
        if same_files && old.tls_digest != self.tls_digest {
            out.push("the contents of the etcd TLS files changed".to_string());
        }
        out
    }
}

/// A digest of the files' contents (unreadable ones count as empty: reading them for the
/// connector has already succeeded or failed).
fn digest(files: &[&Option<PathBuf>]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files.iter().copied().flatten() {
        std::fs::read(f).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

/// One `[global]` line as the config reader found it.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    pub line: usize,
    pub key: &'a str,
    pub value: &'a str,
}

/// Reads the `etcd_*` keys among `lines`. `servers`: the `[servers]` names; `cwd`
/// resolves relative file paths. `None`: polling mode.
pub fn parse(
    file: &Path,
    section_line: usize,
    lines: &[Line<'_>],
    servers: &[&str],
    cwd: &Path,
) -> Result<Option<EtcdMode>, ConfigError> {
    let at = |line: usize, msg: String| {
        ConfigError(format!("config error: {}:{line}: {msg}", file.display()))
    };
    let get = |key: &str| lines.iter().find(|l| l.key == key).copied();
    for l in lines.iter().filter(|l| KEYS.contains(&l.key)) {
        if l.value.trim().is_empty() {
            return Err(at(
                l.line,
                format!("{}= has no value; give one, or remove the line", l.key),
            ));
        }
    }
    let Some(endpoints) = get("etcd_endpoints") else {
        // Keys that only mean something in etcd mode, and have no default one could be
        // writing on purpose, say the mode is not on.
        let stray = ["etcd_scope", "etcd_members", "etcd_user", "etcd_password"]
            .into_iter()
            .chain(["etcd_ca_file", "etcd_cert_file", "etcd_key_file"])
            .find_map(get);
        if let Some(l) = stray {
            return Err(at(
                l.line,
                format!(
                    "{} is set but etcd_endpoints is not, so rebouncer polls the servers and would ignore it; \
                     add etcd_endpoints=<etcd client URLs> to follow Patroni's leader key, or remove the line",
                    l.key
                ),
            ));
        }
        // Those with a default are checked all the same: a typo should not wait for the
        // day the mode is turned on.
        for key in ["etcd_timeout", "etcd_check_interval"] {
            if let Some(l) = get(key) {
                seconds(l, TIMEOUT_RANGE.0, CHECK_RANGE.1).map_err(|m| at(l.line, m))?;
            }
        }
        return Ok(None);
    };
    let Some(scope) = get("etcd_scope") else {
        return Err(at(
            section_line,
            "etcd_endpoints is set but etcd_scope is not; add etcd_scope=<the cluster name, Patroni's `scope:` setting>"
                .into(),
        ));
    };
    let namespace = get("etcd_namespace").map_or(DEFAULT_NAMESPACE, |l| l.value.trim());
    if let Some(l) = get("etcd_namespace")
        && !namespace.starts_with('/')
    {
        return Err(at(
            l.line,
            format!(
                "etcd_namespace={namespace} must start with \"/\", as Patroni's `namespace:` does; write e.g. etcd_namespace=/service"
            ),
        ));
    }
    let mut settings =
        etcd::Settings::new(endpoints.value, namespace, scope.value).map_err(|e| {
            let line = if e.0.contains("scope") {
                scope.line
            } else {
                endpoints.line
            };
            at(line, e.0)
        })?;
    match (get("etcd_user"), get("etcd_password")) {
        (Some(u), Some(p)) => settings.user = Some((u.value.to_string(), p.value.to_string())),
        (None, None) => {}
        (Some(l), None) | (None, Some(l)) => {
            return Err(at(
                l.line,
                "etcd authentication needs both etcd_user and etcd_password; add the missing one, or remove this line"
                    .into(),
            ));
        }
    }
    let path = |l: Line<'_>| -> PathBuf {
        let p = Path::new(l.value.trim());
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        }
    };
    settings.ca_file = get("etcd_ca_file").map(path);
    settings.cert_file = get("etcd_cert_file").map(path);
    settings.key_file = get("etcd_key_file").map(path);
    let tls_line = ["etcd_ca_file", "etcd_cert_file", "etcd_key_file"]
        .into_iter()
        .find_map(get);
    let mut tls_digest = None;
    if let Some(l) = tls_line {
        // Read the files now: a wrong path stops the start, not the first connection.
        settings.tls_connector().map_err(|e| at(l.line, e.0))?;
        tls_digest = Some(digest(&[
            &settings.ca_file,
            &settings.cert_file,
            &settings.key_file,
        ]));
    }
    if let Some(l) = get("etcd_timeout") {
        settings.timeout =
            seconds(l, TIMEOUT_RANGE.0, TIMEOUT_RANGE.1).map_err(|m| at(l.line, m))?;
    }
    if let Some(l) = get("etcd_check_interval") {
        settings.check_interval =
            seconds(l, CHECK_RANGE.0, CHECK_RANGE.1).map_err(|m| at(l.line, m))?;
    }
    let members = match get("etcd_members") {
        Some(l) => members(l.value, servers).map_err(|m| at(l.line, m))?,
        None => BTreeMap::new(),
    };
    Ok(Some(EtcdMode {
        settings,
        members,
        line: endpoints.line,
        tls_digest,
    }))
}

/// `etcd_members = pg-a:db1, pg-b:db2`: Patroni member name, colon, `[servers]` name.
fn members(value: &str, servers: &[&str]) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((member, server)) = pair.split_once(':') else {
            return Err(format!(
                "etcd_members: {pair:?} has no \":\"; write member:server pairs, comma-separated \
                 (Patroni member name, then its [servers] name: etcd_members = pg-a:db1, pg-b:db2)"
            ));
        };
        let (member, server) = (member.trim(), server.trim());
        if member.is_empty() || server.is_empty() {
            return Err(format!(
                "etcd_members: {pair:?} lacks a name; write member:server (etcd_members = pg-a:db1)"
            ));
        }
        if !servers.contains(&server) {
            return Err(format!(
                "etcd_members: {member}:{server} names no server in [servers] (they are {}); fix the name after the \":\"",
                servers.join(", ")
            ));
        }
        if map.insert(member.to_string(), server.to_string()).is_some() {
            return Err(format!(
                "etcd_members: member {member} is mapped twice; keep one {member}:<server> pair"
            ));
        }
    }
    let mut targets: Vec<&String> = map.values().collect();
    targets.sort();
    if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "etcd_members: two members map to server {}; each server is one Patroni member",
            w[0]
        ));
    }
    Ok(map)
}

/// Seconds with up to three decimals (`0.5`, `2`), within `min..=max`.
fn seconds(l: Line<'_>, min: Duration, max: Duration) -> Result<Duration, String> {
    let form = format!("{} to {} seconds", min.as_secs_f64(), max.as_secs_f64());
    let v = l.value.trim();
    let parsed = (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .then(|| v.parse::<f64>().ok())
        .flatten()
        .filter(|s| s.is_finite() && *s < 1e9)
        .map(|s| Duration::from_millis((s * 1000.0).round() as u64));
    let Some(d) = parsed else {
        return Err(format!(
            "{}={v} is not a number of seconds; write e.g. {}=2 ({form})",
            l.key, l.key
        ));
    };
    if d < min || d > max {
        return Err(format!("{}={v} is out of range; it must be {form}", l.key));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &'static str) -> Vec<Line<'static>> {
        text.lines()
            .enumerate()
            .filter_map(|(i, l)| {
                let (key, value) = l.split_once('=')?;
                Some(Line {
                    line: i + 2,
                    key: key.trim(),
                    value: value.trim(),
                })
            })
            .collect()
    }

    fn parse_text(text: &'static str) -> Result<Option<EtcdMode>, String> {
        parse(
            Path::new("rebouncer.ini"),
            1,
            &lines(text),
            &["db1", "db2", "db3"],
            Path::new("/etc/rebouncer"),
        )
        .map_err(|e| e.0)
    }

    #[test]
    fn without_endpoints_it_is_polling_mode() {
        assert!(parse_text("interval=5").unwrap().is_none());
        // Keys with a default may be written out.
        assert!(
            parse_text("etcd_namespace=/service\netcd_timeout=2\netcd_check_interval=2")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_key_of_the_mode_without_endpoints_is_refused() {
        let e = parse_text("etcd_scope=main").unwrap_err();
        assert_eq!(
            e,
            "config error: rebouncer.ini:2: etcd_scope is set but etcd_endpoints is not, so rebouncer polls \
             the servers and would ignore it; add etcd_endpoints=<etcd client URLs> to follow Patroni's \
             leader key, or remove the line"
        );
        let e = parse_text("etcd_timeout=soon").unwrap_err();
        assert!(
            e.starts_with(
                "config error: rebouncer.ini:2: etcd_timeout=soon is not a number of seconds"
            ),
            "{e}"
        );
    }

    #[test]
    fn the_mode_with_its_defaults() {
        let m = parse_text(
            "etcd_endpoints=http://10.0.0.1:2379, http://10.0.0.2:2379\netcd_scope=main",
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.settings.endpoints.len(), 2);
        assert_eq!(m.settings.leader_key(), "/service/main/leader");
        assert_eq!(m.settings.timeout, DEFAULT_TIMEOUT);
        assert_eq!(m.settings.check_interval, DEFAULT_CHECK_INTERVAL);
        assert!(m.settings.user.is_none());
        assert_eq!(m.server_for("db2"), "db2");
    }

    #[test]
    fn every_setting_is_taken() {
        let m = parse_text(
            "etcd_endpoints=http://e:2379\netcd_scope=main\netcd_namespace=/pg\n\
             etcd_members=pg-a:db1, pg-b : db2\netcd_user=rebouncer\netcd_password=secret\n\
             etcd_timeout=0.5\netcd_check_interval=10",
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.settings.leader_key(), "/pg/main/leader");
        assert_eq!(m.server_for("pg-a"), "db1");
        assert_eq!(m.server_for("pg-b"), "db2");
        assert_eq!(m.server_for("db3"), "db3");
        assert_eq!(
            m.settings.user,
            Some(("rebouncer".to_string(), "secret".to_string()))
        );
        assert_eq!(m.settings.timeout, Duration::from_millis(500));
        assert_eq!(m.settings.check_interval, Duration::from_secs(10));
        let shown = format!("{m:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn bad_values_name_the_line_and_the_fix() {
        let cases = [
            (
                "etcd_endpoints=http://e:2379",
                "rebouncer.ini:1: etcd_endpoints is set but etcd_scope is not; add etcd_scope=",
            ),
            (
                "etcd_endpoints=unix:///e\netcd_scope=main",
                "rebouncer.ini:2: etcd endpoint \"unix:///e\": only http and https are supported; write it as http://host:port",
            ),
            (
                "etcd_endpoints=http://e\netcd_scope=a/b",
                "rebouncer.ini:3: Patroni scope \"a/b\": it must be the cluster's name",
            ),
            (
                "etcd_endpoints=http://e\netcd_scope=main\netcd_namespace=service",
                "rebouncer.ini:4: etcd_namespace=service must start with \"/\"",
            ),
            (
                "etcd_endpoints=http://e\netcd_scope=main\netcd_user=u",
                "rebouncer.ini:4: etcd authentication needs both etcd_user and etcd_password",
            ),
            (
                "etcd_endpoints=http://e\netcd_scope=main\netcd_members=pg-a=db1",
                "rebouncer.ini:4: etcd_members: \"pg-a=db1\" has no \":\"; write member:server pairs",
            ),
            (
                "etcd_endpoints=http://e\netcd_scope=main\netcd_members=pg-a:db9",
                "rebouncer.ini:4: etcd_members: pg-a:db9 names no server in [servers] (they are db1, db2, db3)",
            ),
            (
                "etcd_endpoints=http://e\netcd_scope=main\netcd_members=pg-a:db1,pg-b:db1",
                "rebouncer.ini:4: etcd_members: two members map to server db1",
            ),
            (
                "etcd_endpoints=http://e\netcd_scope=main\netcd_timeout=0",
                "rebouncer.ini:4: etcd_timeout=0 is out of range; it must be 0.1 to 60 seconds",
            ),
            (
                "etcd_endpoints=http://e\netcd_scope=main\netcd_check_interval=2s",
                "rebouncer.ini:4: etcd_check_interval=2s is not a number of seconds; write e.g. etcd_check_interval=2",
            ),
            (
                "etcd_endpoints=https://e\netcd_scope=main\netcd_cert_file=c.pem",
                "rebouncer.ini:4: an etcd client certificate needs both the certificate and the key file",
            ),
            (
                "etcd_endpoints=https://e\netcd_scope=main\netcd_ca_file=ca.pem",
                "rebouncer.ini:4: cannot read the etcd CA file /etc/rebouncer/ca.pem",
            ),
        ];
        for (text, want) in cases {
            let e = parse_text(text).unwrap_err();
            assert!(
                e.starts_with(&format!("config error: {want}")),
                "{text}:\n  got  {e}\n  want {want}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn the_tls_digest_follows_the_files_contents() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("ca.pem"), d.path().join("client.pem"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "two").unwrap();
        let files = [Some(a.clone()), None, Some(b.clone())];
        let before = digest(&[&files[0], &files[1], &files[2]]);
        assert_eq!(before, digest(&[&files[0], &files[1], &files[2]]));
        std::fs::write(&a, "renewed").unwrap();
        assert_ne!(before, digest(&[&files[0], &files[1], &files[2]]));
    }
}
