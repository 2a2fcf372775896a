//! Clients of the cluster: `psql` queries on each server and through PgBouncer, writers
//! and route samplers running in the background, plain HTTP requests, and a TCP proxy
//! whose connections a test can cut.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::pgbouncer::route_port;
use super::process::{pg_bin, run_timeout};

/// Runs one statement with `psql -X -A -t -q -v ON_ERROR_STOP=1 -w -d <conninfo> -c <sql>`
/// as the current OS user, with PGCONNECT_TIMEOUT=3 (covers the whole connection start-up
/// in libpq) and `PGAPPNAME=rebouncer-fixture` (so fixture connections can be told apart
/// in the server log), the whole run killed after `timeout`. Ok(stdout without the
/// trailing newline; rows on lines, columns separated by `|`), Err(stderr or timeout).
pub fn psql_conninfo(conninfo: &str, sql: &str, timeout: Duration) -> Result<String, String> {
    psql_run(conninfo, sql, timeout, "-t")
}

/// [`psql_conninfo`] with the column names: one map per row, column name to value. For
/// the admin console's `SHOW` commands, whose columns move between PgBouncer versions
/// (docs/versions.md), so that a test reads a column by its name, not its position.
pub fn psql_rows(
    conninfo: &str,
    sql: &str,
    timeout: Duration,
) -> Result<Vec<std::collections::HashMap<String, String>>, String> {
    let out = psql_run(conninfo, sql, timeout, "--pset=footer=off")?;
    let mut lines = out.lines();
    let names: Vec<&str> = lines.next().unwrap_or_default().split('|').collect();
    Ok(lines
        .map(|l| {
            names
                .iter()
                .zip(l.split('|'))
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        })
        .collect())
}

/// `form`: `-t` (rows only) or `--pset=footer=off` (a header line, no row count).
fn psql_run(conninfo: &str, sql: &str, timeout: Duration, form: &str) -> Result<String, String> {
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.args([
        "-X",
        "-A",
        form,
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-w",
        "-d",
        conninfo,
        "-c",
        sql,
    ])
    .env("PGCONNECT_TIMEOUT", "3")
    .env("PGAPPNAME", "rebouncer-fixture");
    for v in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGSSLMODE",
        "PGOPTIONS",
        "PGSERVICE",
        "PGPASSWORD",
    ] {
        cmd.env_remove(v);
    }
    let o = run_timeout(&mut cmd, timeout)?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout)
            .trim_end_matches('\n')
            .to_string())
    } else {
        let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
        Err(if err.is_empty() {
            format!("psql exited with {}", o.status)
        } else {
            err
        })
    }
}

pub fn tcp_conninfo(port: u16, db: &str) -> String {
    format!("host=127.0.0.1 port={port} dbname={db} user=postgres sslmode=disable")
}

/// Default time limit of a fixture query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One write attempted by a [`BouncerWriter`].
#[derive(Clone, Debug)]
pub struct WriteRecord {
    /// When the attempt started.
    pub at: Instant,
    /// How long it took.
    pub took: Duration,
    /// Node that took the write (from `inet_server_port()`), None when it failed.
    pub node: Option<usize>,
    /// The error when it failed (psql's stderr, or a timeout).
    pub error: Option<String>,
}

/// What a [`BouncerWriter`] saw.
#[derive(Clone, Debug, Default)]
pub struct WriteLog {
    pub records: Vec<WriteRecord>,
}

impl WriteLog {
    /// Writes that landed on node `i`.
    pub fn on(&self, i: usize) -> usize {
        self.records.iter().filter(|r| r.node == Some(i)).count()
    }
    pub fn failed(&self) -> usize {
        self.records.iter().filter(|r| r.node.is_none()).count()
    }
    pub fn total(&self) -> usize {
        self.records.len()
    }
    /// Writes on node `i` that started at or after `t`.
    pub fn on_since(&self, i: usize, t: Instant) -> usize {
        self.records
            .iter()
            .filter(|r| r.node == Some(i) && r.at >= t)
            .count()
    }
    /// "N writes: pg1 x, pg2 y, failed z (first error: ...)" for messages.
    pub fn summary(&self) -> String {
        let mut nodes: Vec<usize> = self.records.iter().filter_map(|r| r.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let mut s = format!("{} writes:", self.total());
        for n in nodes {
            s += &format!(" pg{n} {},", self.on(n));
        }
        s += &format!(" failed {}", self.failed());
        if let Some(e) = self.records.iter().find_map(|r| r.error.as_deref()) {
            s += &format!(" (first error: {})", e.lines().next().unwrap_or(""));
        }
        s
    }
}

/// A client that writes through PgBouncer in a loop (one new psql connection per
/// write: `INSERT INTO t(node) VALUES (<tag>) RETURNING inet_server_port()` in `appdb`)
/// on a background thread until stopped; records per write which node took it.
pub struct BouncerWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<WriteLog>>,
    pub tag: String,
}

impl BouncerWriter {
    /// Writes rows tagged `tag` through the PgBouncer at `conninfo` (database `appdb`) in a
    /// loop, each a new connection with a `per_write` limit (psql is killed after it), then
    /// a 50 ms pause; `ports` are the servers' ports, node i at `ports[i - 1]`.
    pub fn start(
        conninfo: String,
        ports: Vec<u16>,
        tag: &str,
        per_write: Duration,
    ) -> BouncerWriter {
        Self::start_with(conninfo, ports, tag, per_write, WriteWith::Psql)
    }

    /// [`BouncerWriter::start`], each write's connection made as `with` says.
    pub fn start_with(
        conninfo: String,
        ports: Vec<u16>,
        tag: &str,
        per_write: Duration,
        with: WriteWith,
    ) -> BouncerWriter {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sql = format!(
            "INSERT INTO t(node) VALUES ('{}') RETURNING inet_server_port()",
            tag.replace('\'', "''")
        );
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut log = WriteLog::default();
            let rt = (with == WriteWith::InProcess).then(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the writer")
            });
            while !s.load(Ordering::SeqCst) {
                let at = Instant::now();
                let r = match &rt {
                    None => psql_conninfo(&conninfo, &sql, per_write),
                    Some(rt) => write_in_process(rt, &conninfo, &sql, per_write),
                };
                let took = at.elapsed();
                let (node, error) = match r {
                    Ok(out) => match out.trim().parse::<u16>() {
                        Ok(p) => match node_of(&ports, p) {
                            Some(n) => (Some(n), None),
                            None => (None, Some(format!("unknown port {p}"))),
                        },
                        Err(e) => (None, Some(format!("bad output {out:?}: {e}"))),
                    },
                    Err(e) => (None, Some(e)),
                };
                log.records.push(WriteRecord {
                    at,
                    took,
                    node,
                    error,
                });
                std::thread::sleep(Duration::from_millis(50));
            }
            log
        });
        BouncerWriter {
            stop,
            handle: Some(handle),
            tag: tag.to_string(),
        }
    }

    /// Stops the loop (after the write in flight, at most `per_write` later) and returns
    /// what it saw.
    pub fn stop(mut self) -> WriteLog {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap_or_default()
    }
}

impl Drop for BouncerWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// How a [`BouncerWriter`] makes each write's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteWith {
    /// A `psql` process per write, as a separate application process would.
    Psql,
    /// A tokio-postgres connection made in the test's own process: the same exchange with
    /// PgBouncer (a new login, the `INSERT`, the end), without starting a process per
    /// write, which on a shared two-core machine takes CPU from what a benchmark measures
    /// (about 5 ms a `psql`: ten clients writing every 50 ms cost half a core).
    InProcess,
}

/// One write on a new connection made by this process, within `limit`: the port of the
/// server that took it, or the server's error as `psql` would print it.
fn write_in_process(
    rt: &tokio::runtime::Runtime,
    conninfo: &str,
    sql: &str,
    limit: Duration,
) -> Result<String, String> {
    let said = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        None => e.to_string(),
    };
    rt.block_on(async {
        let write = async {
            let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
                .await
                .map_err(said)?;
            let conn = tokio::spawn(conn);
            let row = client.query_one(sql, &[]).await.map_err(said)?;
            drop(client);
            let _ = conn.await;
            Ok(row.get::<_, i32>(0).to_string())
        };
        tokio::time::timeout(limit, write)
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {limit:?}")))
    })
}

/// One sample of a [`RouteSampler`]: when, and the node PgBouncer routed to (None when it
/// did not answer or routed to an unknown port).
pub type RouteSample = (Instant, Option<usize>);

/// Samples where PgBouncer routes `postgres` (`SHOW DATABASES`) every 100 ms on a
/// background thread until stopped.
pub struct RouteSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<RouteSample>>>,
}

impl RouteSampler {
    /// Stops sampling; returns every sample (time, node or None when PgBouncer did not
    /// answer or routed to an unknown port).
    pub fn stop(mut self) -> Vec<RouteSample> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap_or_default()
    }
}

impl Drop for RouteSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub fn node_of(ports: &[u16], port: u16) -> Option<usize> {
    ports.iter().position(|p| *p == port).map(|p| p + 1)
}

/// Plain std HTTP/1.0 request with 2 s connect/read/write timeouts.
pub fn http_request(addr: &str, method: &str, path: &str) -> Result<(u16, String, String), String> {
    let sa: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .min_by_key(|a| !a.is_ipv4())
        .ok_or_else(|| format!("{addr}: no address"))?;
    let t = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&sa, t).map_err(|e| format!("connect {sa}: {e}"))?;
    s.set_read_timeout(Some(t)).unwrap();
    s.set_write_timeout(Some(t)).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("read {sa}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad HTTP response: {head:?}"))?;
    Ok((code, head.to_string(), body.to_string()))
}

/// A loopback TCP forwarder to `127.0.0.1:target`, for cutting a daemon's connections
/// without restarting what is behind them (a broken network path, a firewall's idle
/// timeout). New connections are forwarded as long as the proxy lives.
pub struct Proxy {
    pub port: u16,
    pub open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// See [`Proxy::break_on`].
    pub break_on: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let break_on = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let (o, a, b) = (open.clone(), accepted.clone(), break_on.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                a.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                // `watch`: the client-to-server direction, where a command is seen.
                let pipe = |mut from: TcpStream, mut to: TcpStream, watch: Option<_>| {
                    std::thread::spawn(move || {
                        let _ = forward(&mut from, &mut to, watch);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                };
                if let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) {
                    o.lock().unwrap().extend([c3, s3]);
                    pipe(c2, s2, Some(b.clone()));
                    pipe(server, client, None);
                }
            }
        });
        Proxy {
            port,
            open,
            accepted,
            break_on,
        }
    }

    /// From now on, a connection whose client sends `text` (a command on PgBouncer's
    /// console, say `RESUME`) is broken both ways before that data is passed on: the
    /// command never arrives, and its sender sees the connection fail under it. `None`
    /// passes everything again.
    pub fn break_on(&self, text: Option<&str>) {
        *self.break_on.lock().unwrap() = text.map(str::to_string);
    }

    /// Breaks every connection made so far, both ways.
    pub fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` until either ends; with `watch`, a read that contains the text
/// it names (or joins one with the tail of the read before) is not passed on and ends the
/// copy.
fn forward(
    from: &mut std::net::TcpStream,
    to: &mut std::net::TcpStream,
    watch: Option<std::sync::Arc<std::sync::Mutex<Option<String>>>>,
) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if let Some(w) = &watch
            && let Some(text) = w.lock().unwrap().clone()
        {
            let mut seen = std::mem::take(&mut tail);
            seen.extend_from_slice(&buf[..n]);
            if seen
                .windows(text.len().max(1))
                .any(|x| x.eq_ignore_ascii_case(text.as_bytes()))
            {
                return Ok(());
            }
            tail = seen[seen.len().saturating_sub(text.len())..].to_vec();
        }
        to.write_all(&buf[..n])?;
    }
}

impl Cluster {
    /// `psql -Atc sql` on node i, database postgres, TCP, sslmode=disable.
    pub fn query(&self, i: usize, sql: &str) -> Result<String, String> {
        psql_conninfo(&self.conninfo(i), sql, QUERY_TIMEOUT)
    }

    pub fn query_db(&self, i: usize, db: &str, sql: &str) -> Result<String, String> {
        psql_conninfo(&tcp_conninfo(self.port(i), db), sql, QUERY_TIMEOUT)
    }

    pub fn query_timeout(&self, i: usize, sql: &str, timeout: Duration) -> Result<String, String> {
        psql_conninfo(&self.conninfo(i), sql, timeout)
    }

    /// `pg_is_in_recovery()` of node i: Ok(false) = primary, Ok(true) = standby.
    pub fn in_recovery(&self, i: usize) -> Result<bool, String> {
        self.query(i, "SELECT pg_is_in_recovery()")
            .map(|s| s == "t")
    }

    /// A statement through PgBouncer (TCP 127.0.0.1:bouncer_port), database `db`
    /// (`postgres` or `appdb`). E.g. `bouncer_query("appdb", "INSERT INTO t(node)
    /// VALUES ('x') RETURNING inet_server_port()")` gives the port of the node that took
    /// the write, or Err("ERROR:  cannot execute INSERT in a read-only transaction").
    pub fn bouncer_query(&self, db: &str, sql: &str) -> Result<String, String> {
        psql_conninfo(&tcp_conninfo(self.bouncer_port, db), sql, QUERY_TIMEOUT)
    }

    pub fn bouncer_query_timeout(
        &self,
        db: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        psql_conninfo(&tcp_conninfo(self.bouncer_port, db), sql, timeout)
    }

    /// Inserts a row into appdb's `t` through PgBouncer; Ok(node number that took it).
    pub fn bouncer_write(&self, tag: &str) -> Result<usize, String> {
        let sql = format!(
            "INSERT INTO t(node) VALUES ('{}') RETURNING inet_server_port()",
            tag.replace('\'', "''")
        );
        let port: u16 = self
            .bouncer_query("appdb", &sql)?
            .trim()
            .parse()
            .map_err(|e| format!("{e}"))?;
        self.node_of_port(port)
            .ok_or_else(|| format!("write landed on unknown port {port}"))
    }

    /// Rows of appdb's `t` with `node = tag` on node i, read directly (not through
    /// PgBouncer): proof of where writes landed, even when the client never saw an answer.
    pub fn rows_tagged(&self, i: usize, tag: &str) -> Result<usize, String> {
        self.query_db(
            i,
            "appdb",
            &format!(
                "SELECT count(*) FROM t WHERE node = '{}'",
                tag.replace('\'', "''")
            ),
        )?
        .trim()
        .parse()
        .map_err(|e| format!("{e}"))
    }

    /// Starts a [`BouncerWriter`] on this cluster's PgBouncer (see [`BouncerWriter::start`]).
    pub fn start_writer(&self, tag: &str, per_write: Duration) -> BouncerWriter {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        BouncerWriter::start(
            tcp_conninfo(self.bouncer_port, "appdb"),
            ports,
            tag,
            per_write,
        )
    }

    /// Starts a [`RouteSampler`] on PgBouncer's admin console.
    pub fn start_route_sampler(&self) -> RouteSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        let conninfo = self.pgbouncer_conninfo();
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let at = Instant::now();
                let node = psql_conninfo(&conninfo, "SHOW DATABASES", Duration::from_secs(5))
                    .ok()
                    .and_then(|out| route_port(&out, "postgres"))
                    .and_then(|p| node_of(&ports, p));
                samples.push((at, node));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        RouteSampler {
            stop,
            handle: Some(handle),
        }
    }
}
