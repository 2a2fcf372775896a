//! Listening and serving: where to bind, the accept loop within the connection slots,
//! each connection's time limits, and the shutdown with its grace.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::slots::{Answering, Held, Waiting, make_room};
use crate::throttle::{Say, Throttle};

/// Connections served at once. A monitoring system, a script and a person looking need a
/// handful; every connection costs a descriptor, and under systemd's default limit of 1024
/// open files the checks, the admin console and the symlink swap need theirs. While all
/// are taken by connections with a request in progress, the server stops accepting and
/// new connections wait in the kernel's backlog (served, in order, as slots free up).
/// While some of them only wait for a request, one more connection is accepted and the
/// one that has waited longest is closed to make room for it: the server never holds
/// more than `MAX_CONNECTIONS + 1` descriptors.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client has to send a complete request head, counted from when the server
/// starts waiting for it: on a new connection and between requests on a kept-alive one
/// (hyper arms the same timer in both cases). Without it a client that sends half a
/// request, or nothing, or one byte now and then, holds a slot forever. A real client
/// sends its few hundred bytes at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest any one connection is kept, whatever it does: a client that never reads
/// its responses, or keeps a connection busy with request after request, gives its slot
/// back after this. Clients reconnect; the pages are cheap.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30);

/// Largest request head (and buffered response) per connection. The pages are requested
/// with a few hundred bytes; hyper's default (about 400 KiB) times every slot is memory
/// the daemon has no use for. Larger request heads are answered with 431.
const MAX_BUF_SIZE: usize = 32 * 1024;

/// After an accept error that is not about one connection (out of descriptors, out of
/// memory), wait this long before trying again: the listener stays readable, so retrying
/// at once would spin on the one thread the checks run on.
const ACCEPT_RETRY: Duration = Duration::from_millis(500);

/// A lasting accept error is logged when it starts, then at most this often.
const ACCEPT_ERROR_REMINDER: Duration = Duration::from_secs(60);

/// It is over (and logged as such) once connections have been accepted without an error for
/// this long. Under a flood at the descriptor limit, accepts alternate with errors every
/// few seconds as connections time out; this keeps that to one line, not two per cycle.
const ACCEPT_ERROR_QUIET: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct BindError {
    addr: String,
    detail: String,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot listen on -http={}: {}", self.addr, self.detail)
    }
}

impl std::error::Error for BindError {}

/// Bind where the Go tool would have: a name resolves to its first IPv4 address (on a
/// stock Debian `/etc/hosts` Rust would pick `::1` for `localhost`, and the Nagios
/// plugin connects over IPv4), and an empty host (`:7100`) means every interface.
pub async fn bind(addr: &str) -> Result<TcpListener, BindError> {
    let err = |detail: String| BindError {
        addr: addr.to_string(),
        detail,
    };
    let candidates: Vec<SocketAddr> = if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| err(format!("{port:?} is not a port number")))?;
        vec![
            SocketAddr::from(([0u16; 8], port)),
            SocketAddr::from(([0u8; 4], port)),
        ]
    } else {
        let all: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| err(format!("{e} (write it as HOST:PORT, e.g. localhost:7100)")))?
            .collect();
        let first_v4 = all.iter().find(|a| a.is_ipv4()).copied();
        first_v4.or(all.first().copied()).into_iter().collect()
    };
    let mut last = String::from("the name resolved to no address");
    for a in candidates {
        match TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(err(format!(
                    "{a} is already in use (is another rebouncer running? choose another port with -http)"
                )));
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(err(last))
}

/// The bounds of one server; the daemon always uses [`LIMITS`], tests smaller ones.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) connections: usize,
    pub(super) header_read: Duration,
    pub(super) age: Duration,
}

const LIMITS: Limits = Limits {
    connections: MAX_CONNECTIONS,
    header_read: HEADER_READ_TIMEOUT,
    age: MAX_CONNECTION_AGE,
};

/// Serve `router` on `listener` until `shutdown` turns true (or its sender is gone), then
/// stop accepting, let requests in progress finish for at most `grace`, and close what is
/// left. Returns how many connections had to be closed at the end of the grace.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> usize {
    serve_with(listener, router, shutdown, grace, LIMITS).await
}

pub(super) async fn serve_with(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    limits: Limits,
) -> usize {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let waiting = Arc::new(Waiting::default());
    let mut connections = JoinSet::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
        // Reap finished connections so the set holds no more than the open ones.
        while connections.try_join_next().is_some() {}
        // A free slot first, or a connection that can give its slot away, then accept:
        // while every slot is taken by a request in progress, new connections stay in
        // the kernel's backlog rather than being accepted and closed.
        let slot = tokio::select! {
            biased;
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => Some(s),
                Err(_) => break, // never closed
            },
            _ = waiting.until_one_can_give_way() => None,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, _)) => {
                accept_errors.accepted(Instant::now());
                let slot = match slot {
                    Some(s) => s,
                    None => match make_room(&slots, &waiting, &mut shutdown).await {
                        Some(s) => s,
                        None => break,
                    },
                };
                connections.spawn(serve_connection(
                    stream,
                    router.clone(),
                    shutdown.clone(),
                    Held::new(&waiting, slot),
                    limits,
                ));
            }
            // The client gave up before we took its connection: nothing to wait for.
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                accept_errors.failed(&e, Instant::now());
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_RETRY) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
            }
        }
    }

    // Refuse new connections at once; the ones we have see the shutdown themselves.
    drop(listener);
    let finish = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, finish).await.is_ok() {
        return 0;
    }
    let left = connections.len();
    connections.abort_all();
    left
}

/// Errors about one incoming connection only (it was reset before we took it).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Accept errors that are not about one connection (out of descriptors, out of memory):
/// one line when they start, a reminder at most once a minute, one line when they are over.
struct AcceptErrors {
    throttle: Throttle<String>,
    last: Option<Instant>,
}

impl Default for AcceptErrors {
    fn default() -> Self {
        AcceptErrors {
            throttle: Throttle::new(ACCEPT_ERROR_REMINDER),
            last: None,
        }
    }
}

impl AcceptErrors {
    fn failed(&mut self, e: &io::Error, now: Instant) {
        self.last = Some(now);
        let said = self.throttle.observe(Some(e.to_string()), now);
        self.log(said, now);
    }

    fn accepted(&mut self, now: Instant) {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) >= ACCEPT_ERROR_QUIET)
        {
            let said = self.throttle.observe(None, now);
            self.log(said, now);
            self.last = None;
        }
    }

    fn log(&self, said: Vec<Say<String>>, now: Instant) {
        for s in said {
            match s {
                Say::Started(e) => warn!(
                    "status web server cannot accept connections: {e}; retrying every {ACCEPT_RETRY:?}"
                ),
                Say::Reminder {
                    key,
                    lasted,
                    rounds,
                } => warn!(
                    "status web server still cannot accept connections after {} s: {key} ({rounds} failed attempts since the last line)",
                    lasted.as_secs()
                ),
                Say::Ended { lasted, .. } => {
                    let quiet = self.last.map_or(Duration::ZERO, |t| now.duration_since(t));
                    info!(
                        "status web server accepts connections again; accept errors lasted {} s",
                        lasted.saturating_sub(quiet).as_secs()
                    )
                }
            }
        }
    }
}

/// One connection, holding its slot until it ends.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    held: Held,
    limits: Limits,
) {
    let app = TowerToHyperService::new(router);
    let (id, waiting) = (held.id, held.waiting.clone());
    let service = service_fn(move |req: Request<Incoming>| {
        let answering = Answering::new(id, waiting.clone());
        let routed = allowed(req.method()).then(|| app.call(req));
        async move {
            let r = match routed {
                Some(r) => r.await,
                None => Ok::<_, Infallible>(method_not_allowed()),
            };
            drop(answering);
            r
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(MAX_BUF_SIZE);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let too_old = tokio::time::sleep(limits.age);
    let mut too_old = std::pin::pin!(too_old);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                // Timeouts and clients that hang up are routine, not worth a log line.
                if let Err(e) = r {
                    debug!("status connection ended: {e}");
                }
                return;
            }
            _ = too_old.as_mut() => {
                debug!("status connection open for {:?}; closing it", limits.age);
                return;
            }
            // Only while no request arrived since it was asked: an answer is never cut.
            _ = held.call.notified() => {
                if held.gives_way() {
                    return;
                }
            }
            // Finish the request in progress, then close; an idle connection closes now.
            _ = shutdown.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The pages are read-only: the Go tool answered any method, which let a stray POST
/// look like it did something.
fn allowed(m: &Method) -> bool {
    m == Method::GET || m == Method::HEAD
}

fn method_not_allowed() -> Response<Body> {
    let mut r = Response::new(Body::from("405 method not allowed: use GET or HEAD\n"));
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    let h = r.headers_mut();
    h.insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::testing::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn slow_and_idle_clients_are_cut_off() {
        let (addr, _tx, _server) = start(SMALL).await;
        // Half a request: closed by the header timeout, without an answer.
        let half = exchange(
            addr,
            "GET /nodes HTTP/1.1\r\nHost: x\r\n",
            Duration::from_secs(10),
        );
        assert_eq!(half.await.unwrap(), "");
        // A kept-alive connection that goes idle after its answer: closed too.
        let idle = exchange(
            addr,
            "GET /nodes HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(10),
        );
        let answer = idle.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Nothing at all: closed as well, and the slots are free again.
        let silent = exchange(addr, "", Duration::from_secs(10)).await.unwrap();
        assert_eq!(silent, "");
        let again = exchange(addr, "GET / HTTP/1.0\r\n\r\n", Duration::from_secs(10));
        assert!(again.await.unwrap().ends_with("overview\n"));
    }

    #[tokio::test]
    async fn a_busy_connection_is_closed_at_its_age_limit() {
        let limits = Limits {
            age: Duration::from_millis(700),
            ..SMALL
        };
        let (addr, _tx, _server) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t = tokio::time::Instant::now();
        let mut buf = [0u8; 1024];
        let mut answers = 0;
        loop {
            assert!(t.elapsed() < Duration::from_secs(10), "never closed");
            if s.write_all(b"GET /nodes HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .is_err()
            {
                break;
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => answers += 1,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            answers > 1,
            "kept alive for a while first ({answers} answers)"
        );
    }

    /// The pages must not change by a byte for existing clients: answers are the same as
    /// with `axum::serve`, which served them before (apart from the `date` header).
    #[tokio::test]
    async fn answers_exactly_as_axum_serve_did() {
        let (addr, _tx, _server) = start(SMALL).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let before = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, pages()).await });
        let without_date = |s: String| -> String {
            s.split("\r\n")
                .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
                .collect::<Vec<_>>()
                .join("\r\n")
        };
        for method in ["GET", "HEAD"] {
            for path in ["/", "/nodes", "/nagios", "/x?y=1"] {
                for req in [
                    format!("{method} {path} HTTP/1.0\r\n\r\n"),
                    format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                ] {
                    let limit = Duration::from_secs(5);
                    let new = exchange(addr, &req, limit).await.unwrap();
                    let old = exchange(before, &req, limit).await.unwrap();
                    assert_eq!(without_date(new), without_date(old), "{req}");
                }
            }
        }
    }

    #[tokio::test]
    async fn only_get_and_head() {
        let (addr, _tx, _server) = start(SMALL).await;
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"] {
            for path in ["/", "/nodes", "/other"] {
                let req = format!("{method} {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
                let answer = exchange(addr, &req, Duration::from_secs(5)).await.unwrap();
                assert!(
                    answer.starts_with("HTTP/1.0 405"),
                    "{method} {path}: {answer}"
                );
                assert!(answer.contains("\r\nallow: GET, HEAD\r\n"), "{answer}");
            }
        }
        let head = exchange(addr, "HEAD /nodes HTTP/1.0\r\n\r\n", Duration::from_secs(5));
        let head = head.await.unwrap();
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "no body: {head}");
    }

    #[tokio::test]
    async fn shutdown_cuts_off_a_half_request_at_the_end_of_the_grace() {
        let limits = Limits {
            header_read: Duration::from_secs(60),
            ..SMALL
        };
        let (addr, tx, server) = start(limits).await;
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /nodes HTTP/1.1\r\n").await.unwrap();
        let _idle = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(true).unwrap();
        // The idle one closes at once; the half request is cut at the end of the grace.
        let cut = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server did not stop within its grace")
            .unwrap();
        assert_eq!(cut, 1);
        // And nothing listens any more.
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
