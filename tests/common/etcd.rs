//! A real etcd (Debian's `etcd-server`, 3.4) on two free loopback ports, for the tests of
//! the etcd client and for the Patroni fixture ([`super::patroni`]).
//!
//! One member (or an [`EtcdCluster`] of several), `http://127.0.0.1:<client port>`, data in `<dir>/etcd`, log in
//! `<dir>/etcd.log`. Run as the server user when the tests run as root, like PostgreSQL.
//! [`Etcd::stop`] and [`Etcd::start_again`] keep the ports and the data directory, so a
//! client sees "the same etcd, down for a while". Dropping the handle kills the process;
//! the directory belongs to whoever made it ([`Etcd::start`] makes its own temporary one,
//! removed on drop, also when the test panicked).
//!
//! Keys are read and written through etcd's JSON gateway (`POST /v3/kv/...`, keys and
//! values base64) with a plain HTTP/1.0 request, so the fixture shares no code with the
//! client under test.

use super::{alloc_port, base_dir, command_as, server_user, signal, tail};
use base64::Engine;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Overridable with `REBOUNCER_ETCD` (default `/usr/bin/etcd`).
pub fn etcd_bin() -> PathBuf {
    PathBuf::from(std::env::var("REBOUNCER_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into()))
}

pub struct Etcd {
    /// Own temporary directory when started with [`Etcd::start`].
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Mutex<Option<Child>>,
    /// With TLS: the https client port (the plain one stays for the fixture's own calls).
    tls: Option<EtcdTls>,
    /// The member's name, `e1` alone.
    name: String,
    /// etcd's `--initial-cluster` when a member of an [`EtcdCluster`] (None: alone).
    initial_cluster: Option<String>,
}

/// Certificates made by [`Etcd::start_tls`].
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub port: u16,
    /// etcd's self-signed server certificate (CN=localhost, SAN IP 127.0.0.1): the CA to trust.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A self-signed client certificate and its key (PKCS#8), which etcd trusts as its
    /// own CA for client certificates.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn self_signed(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let o = super::run_timeout(
        std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            ])
            .args(["-subj", &format!("/CN={cn}")])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        Duration::from_secs(60),
    )
    .expect("openssl");
    assert!(
        o.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for p in [&cert, &key] {
        if let Some(u) = server_user() {
            let _ = std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid));
        }
    }
    (cert, key)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Etcd {
    /// etcd in a temporary directory of its own (removed on drop).
    pub fn start() -> Etcd {
        // The same prefix as the PostgreSQL fixture's directories, so a test process that
        // was killed leaves nothing the next run's sweep does not remove.
        let tmp = tempfile::Builder::new()
            .prefix(&format!("rebouncer-it-{}-etcd-", std::process::id()))
            .tempdir_in(base_dir())
            .expect("create etcd temp dir");
        let dir = tmp.path().to_path_buf();
        let mut e = Etcd::start_in(&dir);
        e.tmp = Some(tmp);
        e
    }

    /// etcd that also serves https on [`EtcdTls::port`] with a self-signed certificate
    /// and requires a client certificate there (`--client-cert-auth`); the plain port
    /// stays open for the fixture.
    pub fn start_tls() -> Etcd {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("rebouncer-it-{}-etcd-", std::process::id()))
            .tempdir_in(base_dir())
            .expect("create etcd temp dir");
        let dir = tmp.path().to_path_buf();
        let (server_cert, server_key) = self_signed(&dir, "server", "localhost");
        let (client_cert, client_key) = self_signed(&dir, "client", "rebouncer");
        let tls = EtcdTls {
            port: alloc_port(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        };
        let mut e = Etcd::start_with(&dir, Some(tls));
        e.tmp = Some(tmp);
        e
    }

    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// etcd with its data and log in `dir` (which the caller removes).
    pub fn start_in(dir: &Path) -> Etcd {
        Etcd::start_with(dir, None)
    }

    fn start_with(dir: &Path, tls: Option<EtcdTls>) -> Etcd {
        if let Some(u) = server_user() {
            let _ = std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid));
        }
        let mut e = Etcd {
            tmp: None,
            dir: dir.to_path_buf(),
            client_port: 0,
            peer_port: 0,
            child: Mutex::new(None),
            tls,
            name: "e1".into(),
            initial_cluster: None,
        };
        let mut last = String::new();
        for _ in 0..4 {
            e.client_port = alloc_port();
            e.peer_port = alloc_port();
            match e.try_start() {
                Ok(()) => return e,
                Err(err) if err.contains("address already in use") => last = err,
                Err(err) => panic!("{err}"),
            }
        }
        panic!("etcd did not start in 4 tries on port collisions: {last}")
    }

    fn try_start(&self) -> Result<(), String> {
        let mark = self.spawn()?;
        self.wait_ready(mark)
    }

    /// Starts the process; returns how long its log was before (see [`Etcd::wait_ready`]).
    fn spawn(&self) -> Result<u64, String> {
        let log = self.log_path();
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mark = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let plain = format!("http://127.0.0.1:{}", self.client_port);
        let client = match &self.tls {
            Some(t) => format!("{plain},https://127.0.0.1:{}", t.port),
            None => plain,
        };
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = command_as(etcd_bin(), server_user(), &self.dir);
        if let Some(t) = &self.tls {
            // etcd's JSON gateway reaches etcd's own gRPC server with etcd's server
            // certificate as its client certificate: the trusted CAs must cover it too.
            let bundle = self.dir.join("client-ca.pem");
            let mut pem = fs::read(&t.client_cert).unwrap();
            pem.extend(fs::read(&t.server_cert).unwrap());
            fs::write(&bundle, pem).unwrap();
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&bundle);
        }
        let child = cmd
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args([
                "--initial-cluster",
                &self
                    .initial_cluster
                    .clone()
                    .unwrap_or_else(|| format!("{}={peer}", self.name)),
            ])
            .args(["--log-level", "warn", "--logger", "zap"])
            // A member back from a freeze asks before it calls an election, so it does
            // not unseat the leader the others kept.
            .args(self.initial_cluster.as_ref().map(|_| "--pre-vote"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", etcd_bin().display()))?;
        *self.child.lock().unwrap() = Some(child);
        Ok(mark)
    }

    /// Waits until etcd answers a read (for a member of a cluster: once a quorum runs).
    fn wait_ready(&self, mark: u64) -> Result<(), String> {
        let log = self.log_path();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if !self.running() {
                let text = fs::read(&log).unwrap_or_default();
                let text = String::from_utf8_lossy(&text[(mark as usize).min(text.len())..])
                    .to_lowercase();
                *self.child.lock().unwrap() = None;
                return Err(format!("etcd exited at start-up:\n{text}"));
            }
            if self.get("/rebouncer-fixture/ping").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err(format!(
            "etcd did not answer within 20 s:\n{}",
            tail(&log, 20)
        ))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }
    /// `http://127.0.0.1:<client port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    /// `127.0.0.1:<client port>` (Patroni's `etcd3: hosts:` form).
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn pid(&self) -> Option<u32> {
        let mut g = self.child.lock().unwrap();
        let ch = g.as_mut()?;
        match ch.try_wait() {
            Ok(None) => Some(ch.id()),
            _ => None,
        }
    }
    pub fn running(&self) -> bool {
        self.pid().is_some()
    }

    /// SIGTERM (SIGKILL after 10 s); returns once it has exited and its port is closed.
    pub fn stop(&self) {
        let mut g = self.child.lock().unwrap();
        if let Some(mut ch) = g.take() {
            if matches!(ch.try_wait(), Ok(None)) {
                let _ = signal(&ch.id().to_string(), "TERM");
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(10) && matches!(ch.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = ch.kill();
            }
            let _ = ch.wait();
        }
    }

    pub fn kill(&self) {
        if let Some(mut ch) = self.child.lock().unwrap().take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }

    /// SIGSTOP / SIGCONT: etcd keeps its connections open but answers nothing, which is
    /// what a client sees of a silent network partition.
    pub fn freeze(&self) {
        let pid = self.pid().expect("etcd is not running");
        signal(&pid.to_string(), "STOP").unwrap();
    }
    pub fn thaw(&self) {
        let pid = self.pid().expect("etcd is not running");
        signal(&pid.to_string(), "CONT").unwrap();
    }

    /// Starts the stopped etcd again, same ports and data.
    pub fn start_again(&self) {
        assert!(!self.running(), "etcd is already running");
        if let Err(e) = self.try_start() {
            panic!("restarting etcd: {e}");
        }
    }

    // --- the JSON gateway ---------------------------------------------------------

    /// `POST <path>` with a JSON body; Ok(the response body) on HTTP 200.
    pub fn gateway(&self, path: &str, body: &str) -> Result<String, String> {
        let addr = format!("127.0.0.1:{}", self.client_port);
        let t = Duration::from_secs(3);
        let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), t)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(t)).unwrap();
        s.set_write_timeout(Some(t)).unwrap();
        // HTTP/1.0: the answer is delimited by the connection's end, never chunked.
        write!(
            s,
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| format!("write to {addr}: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .map_err(|e| format!("read {addr}{path}: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        if head.split_whitespace().nth(1) == Some("200") {
            Ok(body.to_string())
        } else {
            Err(format!("{path}: {head} {body}"))
        }
    }

    fn json(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
        let text = self.gateway(path, &body.to_string())?;
        serde_json::from_str(&text).map_err(|e| format!("{path}: {e}: {text}"))
    }

    /// Writes `key = value`; returns the revision of the write.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let v = self
            .json(
                "/v3/kv/put",
                serde_json::json!({"key": b64(key), "value": b64(value)}),
            )
            .unwrap_or_else(|e| panic!("etcd put {key}: {e}"));
        header_revision(&v)
    }

    /// [`Etcd::put`] through a cluster that may be electing a leader (a member frozen or
    /// stopped): retried for up to `within`. A write whose answer timed out may still have
    /// been made, so before each retry the key is read, and a write found made is not made
    /// twice (a second one would be a change of its own).
    pub fn put_retrying(&self, key: &str, value: &str, within: Duration) -> i64 {
        let t = Instant::now();
        let mod_revision = || loop {
            match self.get(key) {
                Ok(v) => return v,
                Err(e) if t.elapsed() > within => panic!("etcd get {key}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let before = mod_revision().map_or(0, |(_, r)| r);
        loop {
            let body = serde_json::json!({"key": b64(key), "value": b64(value)});
            match self.json("/v3/kv/put", body) {
                Ok(v) => return header_revision(&v),
                Err(e) if t.elapsed() > within => panic!("etcd put {key}: {e}"),
                Err(_) => {}
            }
            if let Some((v, r)) = mod_revision()
                && v == value
                && r > before
            {
                return r;
            }
        }
    }

    /// The member leads the Raft group (`/v3/maintenance/status`).
    pub fn raft_leader(&self) -> bool {
        let v = self
            .json("/v3/maintenance/status", serde_json::json!({}))
            .unwrap_or_else(|e| panic!("etcd status: {e}"));
        // 64-bit ids, written as strings.
        v["leader"]
            .as_str()
            .is_some_and(|l| l != "0" && Some(l) == v["header"]["member_id"].as_str())
    }

    /// Deletes `key`; returns the revision after the delete.
    pub fn delete(&self, key: &str) -> i64 {
        let v = self
            .json("/v3/kv/deleterange", serde_json::json!({"key": b64(key)}))
            .unwrap_or_else(|e| panic!("etcd delete {key}: {e}"));
        header_revision(&v)
    }

    /// Ok(Some((value, mod_revision))) or Ok(None) when the key does not exist.
    pub fn get(&self, key: &str) -> Result<Option<(String, i64)>, String> {
        let v = self.json("/v3/kv/range", serde_json::json!({"key": b64(key)}))?;
        let Some(kv) = v["kvs"].as_array().and_then(|a| a.first()) else {
            return Ok(None);
        };
        let value = kv["value"].as_str().unwrap_or_default();
        let value = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|e| format!("{key}: value is not base64: {e}"))?;
        Ok(Some((
            String::from_utf8_lossy(&value).into_owned(),
            as_i64(&kv["mod_revision"]),
        )))
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let v = self
            .json("/v3/kv/range", serde_json::json!({"key": b64("/")}))
            .unwrap_or_else(|e| panic!("etcd range: {e}"));
        header_revision(&v)
    }

    /// Compacts the history up to `revision` (watches from before it are cancelled).
    pub fn compact(&self, revision: i64) {
        self.json(
            "/v3/kv/compaction",
            serde_json::json!({"revision": revision.to_string(), "physical": true}),
        )
        .unwrap_or_else(|e| panic!("etcd compaction at {revision}: {e}"));
    }

    /// Turns on etcd's authentication with `user` as the all-powerful root user (etcd
    /// requires that user to be called `root`). The fixture's own reads and writes carry
    /// no token, so they are refused from then on.
    pub fn enable_auth(&self, user: &str, password: &str) {
        assert_eq!(
            user, "root",
            "etcd enables authentication only with a root user"
        );
        for (path, body) in [
            (
                "/v3/auth/user/add",
                serde_json::json!({"name": user, "password": password}),
            ),
            ("/v3/auth/role/add", serde_json::json!({"name": "root"})),
            (
                "/v3/auth/user/grant",
                serde_json::json!({"user": user, "role": "root"}),
            ),
            ("/v3/auth/enable", serde_json::json!({})),
        ] {
            self.json(path, body)
                .unwrap_or_else(|e| panic!("enabling etcd authentication: {e}"));
        }
    }

    /// Every key under `prefix` with its value (for panic messages).
    pub fn dump(&self, prefix: &str) -> String {
        let end = {
            let mut b = prefix.as_bytes().to_vec();
            if let Some(last) = b.last_mut() {
                *last += 1;
            }
            String::from_utf8_lossy(&b).into_owned()
        };
        match self.json(
            "/v3/kv/range",
            serde_json::json!({"key": b64(prefix), "range_end": b64(&end)}),
        ) {
            Ok(v) => v["kvs"]
                .as_array()
                .map(|kvs| {
                    kvs.iter()
                        .map(|kv| {
                            let d = |f: &str| {
                                base64::engine::general_purpose::STANDARD
                                    .decode(kv[f].as_str().unwrap_or_default())
                                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                                    .unwrap_or_default()
                            };
                            format!("{} = {}\n", d("key"), d("value"))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Err(e) => format!("<etcd does not answer: {e}>"),
        }
    }
}

/// etcd's JSON gateway writes 64-bit integers as strings.
fn as_i64(v: &serde_json::Value) -> i64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_i64().unwrap_or(0),
    }
}

fn header_revision(v: &serde_json::Value) -> i64 {
    as_i64(&v["header"]["revision"])
}

/// Several etcd members forming one cluster, each in its own directory under a
/// temporary one (removed on drop): for a client that lists every member and must carry
/// on when the one it talks to is gone.
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
    tmp: Option<tempfile::TempDir>,
}

impl EtcdCluster {
    /// `n` members `e1..e<n>`; returns once every one answers.
    pub fn start(n: usize) -> EtcdCluster {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("rebouncer-it-{}-etcd-", std::process::id()))
            .tempdir_in(base_dir())
            .expect("create etcd temp dir");
        let mut members: Vec<Etcd> = (1..=n)
            .map(|i| {
                let dir = tmp.path().join(format!("e{i}"));
                fs::create_dir(&dir).unwrap();
                if let Some(u) = server_user() {
                    let _ = std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid));
                }
                Etcd {
                    tmp: None,
                    dir,
                    client_port: alloc_port(),
                    peer_port: alloc_port(),
                    child: Mutex::new(None),
                    tls: None,
                    name: format!("e{i}"),
                    initial_cluster: None,
                }
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        for m in members.iter_mut() {
            m.initial_cluster = Some(initial.clone());
        }
        let c = EtcdCluster {
            members,
            tmp: Some(tmp),
        };
        // Every member must be running before any can answer: they need a quorum.
        let marks: Vec<u64> = c
            .members
            .iter()
            .map(|m| m.spawn().unwrap_or_else(|e| panic!("etcd {}: {e}", m.name)))
            .collect();
        for (m, mark) in c.members.iter().zip(marks) {
            if let Err(e) = m.wait_ready(mark) {
                panic!("etcd cluster member {}: {e}", m.name);
            }
        }
        c
    }

    /// Every member's client URL, comma-separated, in order.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.endpoint())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &self.members {
            m.kill();
        }
        if let Some(tmp) = self.tmp.take() {
            let _ = tmp.close();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process too; nothing to SIGCONT first.
        self.kill();
        if let Some(tmp) = self.tmp.take() {
            let _ = tmp.close();
        }
    }
}
