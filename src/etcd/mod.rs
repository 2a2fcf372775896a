//! Patroni's leader key in etcd, followed with a watch: which member Patroni says leads,
//! as it changes, and whether etcd can be heard at all.
//!
//! Talks to etcd's v3 JSON gateway over HTTP/1.1 (see `wire` for the format and
//! `transport` for the connections), so no gRPC stack and no `protoc`. The watch is a
//! stream: `POST /v3/watch` answers one line per change. Around it:
//!
//! - **Resuming.** Every change carries its revision; after a lost connection the watch
//!   restarts at the last revision seen + 1, so a change made while the client was away is
//!   replayed, in order, not skipped.
//! - **Endpoints.** A session that fails moves on to the next endpoint at once; etcd is
//!   reported unreachable only when every endpoint has failed in a row. One member down
//!   is no outage: the watch resumes on the next one from the last revision seen + 1.
//! - **Compaction.** When that history is gone (etcd compacted it), etcd cancels the watch
//!   with the compaction's revision: the key is read again and watched from that read.
//! - **Silence.** A partition can leave a TCP connection open with nothing coming through,
//!   and an idle watch sends nothing either. So the key is also read every
//!   `check_interval` on a second connection; a read that fails or takes longer than
//!   `timeout` counts as etcd lost.
//! - **Authentication.** With a user, a token from `/v3/auth/authenticate` goes with every
//!   request (a new one at each reconnection, so an expired token heals itself).
//!
//! Design and rules of use: `docs/etcd.md`.

mod transport;
pub mod wire;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use transport::Conn;
use wire::{Read, WatchMessage};

/// One etcd client URL: `http://host:port`, `https://host:port`, or `host:port` (http).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// A setting that cannot work, with what to write instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsError(pub String);

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, SettingsError> {
        let bad = |why: &str| {
            SettingsError(format!(
                "etcd endpoint {s:?}: {why}; write it as http://host:port or https://host:port (etcd's client URL, usually port 2379)"
            ))
        };
        let s = s.trim();
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if s.contains("://") {
            return Err(bad("only http and https are supported"));
        } else {
            (false, s)
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(bad("a path is not allowed"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad(&format!("{p:?} is not a port")))?,
            ),
            None => (rest, 2379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

/// How to reach etcd and which Patroni cluster to follow.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Tried in turn: the next one at once after each failure, back-off only once every
    /// one has failed.
    pub endpoints: Vec<Endpoint>,
    /// Patroni's `namespace` (default `/service`).
    pub namespace: String,
    /// Patroni's `scope` (the cluster name).
    pub scope: String,
    /// User and password for etcd's authentication.
    pub user: Option<(String, String)>,
    /// PEM file of the CA that signed etcd's certificate (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM, key in PKCS#8) when etcd asks for one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Limit of one request (connect, read, authenticate, opening the watch).
    pub timeout: Duration,
    /// How often the key is also read, to notice a silent partition.
    pub check_interval: Duration,
    /// Waits between reconnections: from `backoff_min`, doubling up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Watch from this revision on (replaying what came after it) instead of starting with
    /// a read of the current value: for a caller that remembers where it stopped.
    pub start_revision: Option<i64>,
}

impl Settings {
    /// `endpoints` comma-separated; the rest at its default.
    pub fn new(endpoints: &str, namespace: &str, scope: &str) -> Result<Settings, SettingsError> {
        let endpoints = endpoints
            .split(',')
            .filter(|e| !e.trim().is_empty())
            .map(Endpoint::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(SettingsError(
                "no etcd endpoint given; list etcd's client URLs, comma-separated (http://10.0.0.1:2379,http://10.0.0.2:2379)".into(),
            ));
        }
        if scope.trim().is_empty() || scope.contains('/') {
            return Err(SettingsError(format!(
                "Patroni scope {scope:?}: it must be the cluster's name as in Patroni's `scope:` setting, without slashes"
            )));
        }
        Ok(Settings {
            endpoints,
            namespace: namespace.to_string(),
            scope: scope.trim().to_string(),
            user: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout: Duration::from_secs(2),
            check_interval: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            start_revision: None,
        })
    }

    /// `<namespace>/<scope>/leader`
    pub fn leader_key(&self) -> String {
        format!(
            "{}leader",
            wire::cluster_prefix(&self.namespace, &self.scope)
        )
    }

    /// `<namespace>/<scope>/members/<name>`
    pub fn member_key(&self, name: &str) -> String {
        format!(
            "{}members/{name}",
            wire::cluster_prefix(&self.namespace, &self.scope)
        )
    }

    /// The TLS settings as a connector (the files read now); None without https.
    pub fn tls_connector(&self) -> Result<Option<tokio_native_tls::TlsConnector>, SettingsError> {
        if !self.endpoints.iter().any(|e| e.tls) {
            return Ok(None);
        }
        let read = |what: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| {
                SettingsError(format!("cannot read the etcd {what} {}: {e}", p.display()))
            })
        };
        let mut b = native_tls::TlsConnector::builder();
        if let Some(ca) = &self.ca_file {
            let pem = read("CA file", ca)?;
            let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| {
                SettingsError(format!(
                    "etcd CA file {} is not a PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            b.add_root_certificate(cert);
        }
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                let (cert, key) = (read("client certificate", c)?, read("client key", k)?);
                let id = native_tls::Identity::from_pkcs8(&cert, &key).map_err(|e| {
                    SettingsError(format!(
                        "etcd client certificate {} with key {}: {e} (both PEM, the key in PKCS#8: `openssl pkcs8 -topk8 -nocrypt`)",
                        c.display(),
                        k.display()
                    ))
                })?;
                b.identity(id);
            }
            (None, None) => {}
            _ => {
                return Err(SettingsError(
                    "an etcd client certificate needs both the certificate and the key file".into(),
                ));
            }
        }
        let c = b
            .build()
            .map_err(|e| SettingsError(format!("etcd TLS settings: {e}")))?;
        Ok(Some(tokio_native_tls::TlsConnector::from(c)))
    }
}

/// A Patroni member as its record in etcd describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// `conn_url` of `members/<name>` (None when the record is missing or has none).
    pub conn_url: Option<String>,
}

/// What the watch reports, in the order it learnt it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The leader key as of `revision`: at the start, at every change, and again after
    /// etcd was unreachable (then possibly unchanged). `None`: no key, so Patroni says
    /// there is no primary.
    Leader {
        member: Option<Member>,
        revision: i64,
    },
    /// etcd cannot be heard (refused, timed out, cut off); what the key says now is
    /// unknown until the next `Leader`. Reported once per outage.
    Unreachable { reason: String },
    /// The endpoint the watch is in place on (its URL), when it changes: `None` once the
    /// watch on it is lost, until one is in place again. An operator who sees the watch
    /// sit on another member than the first listed knows that one failed.
    Endpoint(Option<String>),
}

/// Starts following the leader key. Events come on the receiver; the task ends when the
/// receiver is dropped.
pub fn watch_leader(
    settings: Settings,
) -> Result<(mpsc::Receiver<Event>, JoinHandle<()>), SettingsError> {
    let tls = settings.tls_connector()?;
    let (tx, rx) = mpsc::channel(64);
    let w = Watcher {
        leader_key: settings.leader_key(),
        watch_rev: settings.start_revision.map(|r| r - 1),
        resync: settings.start_revision.is_some(),
        s: settings,
        tls,
        tx,
        endpoint: 0,
        token: None,
        unary: None,
        emitted: None,
        reachable: false,
        reported_unreachable: false,
        watching: None,
    };
    Ok((rx, tokio::spawn(w.run())))
}

struct Watcher {
    s: Settings,
    tls: Option<tokio_native_tls::TlsConnector>,
    tx: mpsc::Sender<Event>,
    leader_key: String,
    endpoint: usize,
    token: Option<String>,
    /// The connection for reads (the watch has its own).
    unary: Option<Conn>,
    /// The next watch starts after this revision; None: read the key first.
    watch_rev: Option<i64>,
    /// The watch resumes from history: once it is in place, decide whether to report the
    /// key as it is now or wait for the replayed changes (see `resynced`).
    resync: bool,
    /// The last reported leader and its revision.
    emitted: Option<(Option<String>, i64)>,
    reachable: bool,
    reported_unreachable: bool,
    /// The endpoint the watch was last reported in place on (see [`Event::Endpoint`]).
    watching: Option<usize>,
}

/// Why a session ended.
struct Lost {
    reason: String,
    /// The watch had been in place: the next wait starts from the shortest back-off.
    watched: bool,
}

impl Watcher {
    async fn run(mut self) {
        let mut backoff = self.s.backoff_min;
        // Why each endpoint tried since the last session that watched failed.
        let mut failures: Vec<String> = Vec::new();
        loop {
            let lost = self.session().await;
            if self.tx.is_closed() {
                return;
            }
            self.unary = None;
            self.token = None;
            self.report_endpoint(None).await;
            if lost.watched {
                backoff = self.s.backoff_min;
                failures.clear();
            }
            failures.push(lost.reason);
            if self.s.endpoints.len() > 1 {
                self.endpoint = (self.endpoint + 1) % self.s.endpoints.len();
            }
            // Another endpoint not tried yet may answer: try it now, and say nothing.
            // One member down is no outage: the watch goes on from the next member, from
            // the last revision seen + 1.
            if failures.len() < self.s.endpoints.len() {
                continue;
            }
            if !self.reported_unreachable {
                self.reported_unreachable = true;
                self.reachable = false;
                let _ = self
                    .tx
                    .send(Event::Unreachable {
                        reason: failures.join("; "),
                    })
                    .await;
            }
            failures.clear();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.s.backoff_max);
        }
    }

    /// Reports the endpoint the watch is in place on, when that changed.
    async fn report_endpoint(&mut self, on: Option<usize>) {
        if self.watching == on {
            return;
        }
        self.watching = on;
        let url = on.map(|i| self.s.endpoints[i].to_string());
        let _ = self.tx.send(Event::Endpoint(url)).await;
    }

    fn ep(&self) -> &Endpoint {
        &self.s.endpoints[self.endpoint]
    }

    async fn connect(&self) -> Result<Conn, String> {
        transport::connect(self.ep(), self.tls.as_ref(), self.s.timeout).await
    }

    /// A read on the reads' connection (made, and authenticated, when missing).
    async fn post(&mut self, path: &str, body: String) -> Result<String, String> {
        if self.unary.as_ref().is_none_or(|c| c.is_closed()) {
            self.unary = Some(self.connect().await?);
        }
        if self.token.is_none()
            && let Some((user, password)) = self.s.user.clone()
        {
            let conn = self.unary.as_mut().expect("connected above");
            let body = wire::authenticate_request(&user, &password);
            let answer = conn
                .post("/v3/auth/authenticate", body, None, self.s.timeout)
                .await
                .map_err(|e| format!("{e} (check etcd_user and etcd_password)"))?;
            self.token = Some(wire::parse_token(&answer).map_err(|e| e.to_string())?);
        }
        let token = self.token.clone();
        let conn = self.unary.as_mut().expect("connected above");
        let r = conn
            .post(path, body, token.as_deref(), self.s.timeout)
            .await;
        if r.is_err() {
            self.unary = None;
        }
        r
    }

    async fn read(&mut self, key: &str) -> Result<Read, String> {
        let body = self.post("/v3/kv/range", wire::range_request(key)).await?;
        wire::parse_range(&body).map_err(|e| e.to_string())
    }

    /// Reports the leader `name` as of `revision`, with its member record.
    async fn emit(&mut self, name: Option<String>, revision: i64) {
        let member = match &name {
            Some(n) => {
                let key = self.s.member_key(n);
                let conn_url = match self.read(&key).await {
                    Ok(r) => r.value.as_deref().and_then(wire::member_conn_url),
                    Err(_) => None,
                };
                Some(Member {
                    name: n.clone(),
                    conn_url,
                })
            }
            None => None,
        };
        self.emitted = Some((name, revision));
        self.reachable = true;
        self.reported_unreachable = false;
        let _ = self.tx.send(Event::Leader { member, revision }).await;
    }

    /// The key as read now becomes the state: reported when it differs from what was
    /// reported, or when etcd was away.
    async fn adopt(&mut self, r: Read) {
        let same = self.emitted.as_ref().is_some_and(|(v, _)| *v == r.value);
        if !same || !self.reachable {
            self.emit(r.value, r.revision).await;
        } else if let Some(e) = self.emitted.as_mut() {
            e.1 = r.revision;
        }
        self.watch_rev = Some(r.revision);
    }

    /// The watch resumed from history and is in place. If the key has not changed since
    /// the last report, say so now (etcd is back, nothing new). If it has, the replayed
    /// changes that follow on the stream report it, oldest first.
    async fn resynced(&mut self) -> Result<(), String> {
        let r = self.read(&self.leader_key.clone()).await?;
        let last = self.watch_rev.unwrap_or(0);
        let reported = self.emitted.as_ref().map(|(v, _)| v.clone());
        let unchanged = match (&r.value, reported) {
            // Present: it changed after `last` exactly when its mod_revision says so.
            (Some(_), Some(v)) => v == r.value && r.mod_revision <= last,
            // Deleted and reported deleted: a put and delete in between would end the
            // same; the replay of those is dropped as older than this report.
            (None, Some(None)) => true,
            // Nothing reported yet (a start from a remembered revision): the replay tells.
            _ => false,
        };
        if unchanged {
            self.emit(r.value, r.revision).await;
        }
        Ok(())
    }

    async fn session(&mut self) -> Lost {
        let mut watched = false;
        let lost = |reason: String, watched: bool| Lost { reason, watched };
        loop {
            if self.watch_rev.is_none() {
                match self.read(&self.leader_key.clone()).await {
                    Ok(r) => self.adopt(r).await,
                    Err(e) => return lost(e, watched),
                }
            }
            let from = self.watch_rev.unwrap_or(0) + 1;
            let conn = match self.connect().await {
                Ok(c) => c,
                Err(e) => return lost(e, watched),
            };
            if self.s.user.is_some()
                && self.token.is_none()
                && let Err(e) = self.read(&self.leader_key.clone()).await
            {
                return lost(e, watched);
            }
            let mut lines = match conn
                .stream(
                    "/v3/watch",
                    wire::watch_request(&self.leader_key, from),
                    self.token.clone().as_deref(),
                    self.s.timeout,
                )
                .await
            {
                Ok(l) => l,
                Err(e) => return lost(e, watched),
            };
            let mut check = tokio::time::interval(self.s.check_interval);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            check.tick().await;
            loop {
                tokio::select! {
                    line = lines.next() => {
                        let line = match line {
                            Ok(l) => l,
                            Err(e) => return lost(e, watched),
                        };
                        let msg = match wire::parse_watch_line(&line) {
                            Ok(m) => m,
                            Err(e) => return lost(e.to_string(), watched),
                        };
                        match msg {
                            WatchMessage::Created { .. } => {
                                watched = true;
                                self.report_endpoint(Some(self.endpoint)).await;
                                if (std::mem::take(&mut self.resync) || !self.reachable)
                                    && let Err(e) = self.resynced().await
                                {
                                    return lost(e, watched);
                                }
                            }
                            WatchMessage::Changes { changes, .. } => {
                                for c in changes {
                                    let newer = self.emitted.as_ref().is_none_or(|(_, r)| c.revision > *r);
                                    if newer {
                                        self.emit(c.value, c.revision).await;
                                    }
                                    self.watch_rev = Some(self.watch_rev.unwrap_or(0).max(c.revision));
                                }
                            }
                            WatchMessage::Progress { revision } => {
                                self.watch_rev = Some(self.watch_rev.unwrap_or(0).max(revision));
                            }
                            WatchMessage::Compacted { .. } => {
                                // Read again, then watch from that read (outer loop).
                                self.watch_rev = None;
                                break;
                            }
                            WatchMessage::Canceled { reason } => {
                                return lost(format!("etcd at {} ended the watch: {reason}", self.ep()), watched);
                            }
                            WatchMessage::Error { message } => {
                                return lost(format!("etcd at {} ended the watch with an error: {message}", self.ep()), watched);
                            }
                        }
                    }
                    _ = check.tick() => {
                        let key = self.leader_key.clone();
                        if let Err(e) = self.read(&key).await {
                            return lost(format!("{e}; the watch may be cut off, so the leader key is no longer known"), watched);
                        }
                    }
                }
                if self.tx.is_closed() {
                    return lost("nobody listens any more".into(), watched);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_in_the_forms_etcd_users_write() {
        assert_eq!(
            Endpoint::parse("http://10.0.0.1:2379").unwrap(),
            Endpoint {
                host: "10.0.0.1".into(),
                port: 2379,
                tls: false
            }
        );
        assert_eq!(
            Endpoint::parse("https://etcd1.example:2379/").unwrap(),
            Endpoint {
                host: "etcd1.example".into(),
                port: 2379,
                tls: true
            }
        );
        assert_eq!(Endpoint::parse("etcd1").unwrap().port, 2379);
        assert_eq!(Endpoint::parse("[::1]:2379").unwrap().host, "::1");
        let e = Endpoint::parse("unix:///run/etcd.sock").unwrap_err();
        assert!(e.0.contains("http://host:port"), "{e}");
        assert!(Endpoint::parse("http://h:99999").is_err());
        assert!(Endpoint::parse("http://h:2379/v3").is_err());
    }

    #[test]
    fn settings_name_patroni_keys() {
        let s = Settings::new("http://a:2379, http://b:2379", "/service/", "main").unwrap();
        assert_eq!(s.endpoints.len(), 2);
        assert_eq!(s.leader_key(), "/service/main/leader");
        assert_eq!(s.member_key("pg1"), "/service/main/members/pg1");
        assert!(Settings::new("", "/service", "main").is_err());
        assert!(Settings::new("http://a:2379", "/service", "").is_err());
        assert!(Settings::new("http://a:2379", "/service", "a/b").is_err());
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let mut s = Settings::new("https://a:2379", "/service", "main").unwrap();
        s.cert_file = Some("/nonexistent.pem".into());
        let e = s.tls_connector().err().unwrap();
        assert!(e.0.contains("both"), "{e}");
        s.key_file = Some("/nonexistent.key".into());
        let e = s.tls_connector().err().unwrap();
        assert!(e.0.contains("/nonexistent.pem"), "{e}");
    }
}
