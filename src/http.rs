//! The status web server: `/`, `/nodes`, `/nagios`, `/metrics`, `/events`, rendered from
//! the shared snapshot. `/` and `/nodes` answer JSON when asked (`Accept:
//! application/json` or `?format=json`), plain text otherwise.
//!
//! The status port is open to every local process, and the daemon shares one process
//! (one open-files limit, one thread) with the checks and the switch. So the server is
//! bounded: a fixed number of connections at a time, each closed when its client is slow
//! or idle, and only GET and HEAD. A flood of connections then waits in the kernel's
//! backlog instead of eating the descriptors a failover needs. When every slot is held,
//! the connection that has waited longest for a request gives its slot to the newest
//! one (as nginx reuses its idle connections when it runs short), so a flood of idle
//! sockets cannot keep a monitoring check from being answered.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::pages::{json, metrics, nagios, text};
use crate::throttle::{Say, Throttle};
use crate::view::Snapshot;

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

pub fn router(snapshot: watch::Receiver<Snapshot>) -> Router {
    Router::new()
        .route("/nodes", get(nodes))
        .route("/nagios", get(nagios))
        .route("/metrics", get(metrics))
        .route("/events", get(events))
        .route("/", get(root))
        // The Go tool answered every other path with the overview.
        .fallback(root)
        .with_state(snapshot)
}

/// What the client asked for. Plain text unless it says JSON, so `curl host:7100/nodes`
/// and every Go-era script get what they always got, byte for byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

fn format(uri: &Uri, headers: &HeaderMap) -> Format {
    let query = uri.query().unwrap_or("");
    for pair in query.split('&') {
        match pair {
            "format=json" => return Format::Json,
            "format=text" => return Format::Text,
            _ => {}
        }
    }
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if prefers_json(&accept) {
        Format::Json
    } else {
        Format::Text
    }
}

/// True when `Accept` lists `application/json` with a weight above zero and no higher
/// weight for plain text. `*/*` alone (what curl sends) stays text.
fn prefers_json(accept: &str) -> bool {
    let mut json: Option<f32> = None;
    let mut text: f32 = 0.0;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                (k.trim().eq_ignore_ascii_case("q")).then(|| v.trim().parse::<f32>().ok())?
            })
            .next()
            .unwrap_or(1.0);
        match media.as_str() {
            "application/json" => json = Some(json.map_or(q, |j: f32| j.max(q))),
            "text/plain" | "text/*" => text = text.max(q),
            _ => {}
        }
    }
    json.is_some_and(|j| j > 0.0 && j >= text)
}

fn json_response(body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

// The request by value rather than `Uri` and `HeaderMap` extractors, which clone them:
// `/nodes` is polled by scripts, and that copy was a measurable share of its cost.
async fn root(State(s): State<watch::Receiver<Snapshot>>, req: Request<Body>) -> Response<Body> {
    match format(req.uri(), req.headers()) {
        Format::Text => text::root(&s.borrow(), SystemTime::now()).into_response(),
        Format::Json => json_response(json::root(&s.borrow(), SystemTime::now())),
    }
}

async fn nodes(State(s): State<watch::Receiver<Snapshot>>, req: Request<Body>) -> Response<Body> {
    match format(req.uri(), req.headers()) {
        Format::Text => text::nodes(&s.borrow()).into_response(),
        Format::Json => json_response(json::nodes(&s.borrow())),
    }
}

async fn nagios(State(s): State<watch::Receiver<Snapshot>>) -> String {
    let mut line = nagios::render(&s.borrow(), SystemTime::now());
    line.push('\n');
    line
}

/// The content type Prometheus expects of the text format.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(s): State<watch::Receiver<Snapshot>>) -> Response<Body> {
    let mut r = Response::new(Body::from(metrics::render(&s.borrow())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(METRICS_TYPE),
    );
    r
}

/// JSON unless plain text is asked for (`?format=text`): the history is for scripts;
/// people see the last few on `/`.
async fn events(State(s): State<watch::Receiver<Snapshot>>, uri: Uri) -> Response<Body> {
    let as_text = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "format=text"));
    let snap = s.borrow();
    if as_text {
        text::events(&snap).into_response()
    } else {
        json_response(json::events(&snap))
    }
}

/// The bounds of one server; the daemon always uses [`LIMITS`], tests smaller ones.
#[derive(Debug, Clone, Copy)]
struct Limits {
    connections: usize,
    header_read: Duration,
    age: Duration,
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

async fn serve_with(
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

/// A slot for a connection just accepted while every slot was held: the connection that
/// has waited longest for a request is asked to give its slot away, one at a time (it
/// may get a request just then and keep it; then the next is asked). None on shutdown.
async fn make_room(
    slots: &Arc<Semaphore>,
    waiting: &Waiting,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        if let Ok(s) = slots.clone().try_acquire_owned() {
            return Some(s);
        }
        waiting.ask_one_to_give_way(Instant::now());
        tokio::select! {
            slot = slots.clone().acquire_owned() => return slot.ok(),
            _ = waiting.until_one_can_give_way() => {}
            _ = shutdown.wait_for(|stop| *stop) => return None,
        }
    }
}

/// What a connection is doing, as far as giving its slot away goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    /// No complete request head yet (nothing, part of one, or idle after an answer),
    /// since then.
    Waiting(Instant),
    /// A request is being answered: it keeps its slot.
    Busy,
    /// Asked to close and give its slot to a new connection.
    GivingWay,
}

/// Which connection gives way: none while one is already doing so (one newcomer needs
/// one slot), else the one that has waited longest for a request. Busy ones never do.
fn who_gives_way(conns: &[(u64, Activity)]) -> Option<u64> {
    if conns.iter().any(|(_, a)| *a == Activity::GivingWay) {
        return None;
    }
    conns
        .iter()
        .filter_map(|(id, a)| match a {
            Activity::Waiting(since) => Some((*since, *id)),
            _ => None,
        })
        .min()
        .map(|(_, id)| id)
}

/// The connections holding a slot and what each is doing.
#[derive(Default)]
struct Waiting {
    conns: Mutex<Conns>,
    /// Woken when the answer of [`who_gives_way`] may have changed.
    changed: Notify,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    list: Vec<(u64, Activity)>,
    /// Each connection's call to close, by id.
    calls: Vec<(u64, Arc<Notify>)>,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, id: u64, activity: Activity) {
        let mut c = self.lock();
        if let Some(e) = c.list.iter_mut().find(|(i, _)| *i == id) {
            e.1 = activity;
        }
        drop(c);
        self.changed.notify_waiters();
    }

    fn ask_one_to_give_way(&self, now: Instant) {
        let mut c = self.lock();
        let Some(id) = who_gives_way(&c.list) else {
            return;
        };
        if let Some(e) = c.list.iter_mut().find(|(i, _)| *i == id) {
            if let Activity::Waiting(since) = e.1 {
                debug!(
                    "status connection waited {:?} for a request; closing it for a new one",
                    now.saturating_duration_since(since)
                );
            }
            e.1 = Activity::GivingWay;
        }
        if let Some((_, call)) = c.calls.iter().find(|(i, _)| *i == id) {
            call.notify_one();
        }
    }

    /// Returns once some connection could be asked to give way.
    async fn until_one_can_give_way(&self) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if who_gives_way(&self.lock().list).is_some() {
                return;
            }
            changed.await;
        }
    }
}

/// A connection's slot and its entry among the [`Waiting`]; both are given back on drop.
struct Held {
    id: u64,
    waiting: Arc<Waiting>,
    call: Arc<Notify>,
    _slot: OwnedSemaphorePermit,
}

impl Held {
    fn new(waiting: &Arc<Waiting>, slot: OwnedSemaphorePermit) -> Held {
        let call = Arc::new(Notify::new());
        let mut c = waiting.lock();
        let id = c.next_id;
        c.next_id += 1;
        c.list.push((id, Activity::Waiting(Instant::now())));
        c.calls.push((id, call.clone()));
        drop(c);
        waiting.changed.notify_waiters();
        Held {
            id,
            waiting: waiting.clone(),
            call,
            _slot: slot,
        }
    }

    /// Still asked to give way (no request has arrived since it was asked)?
    fn gives_way(&self) -> bool {
        self.waiting
            .lock()
            .list
            .iter()
            .any(|(i, a)| *i == self.id && *a == Activity::GivingWay)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut c = self.waiting.lock();
        c.list.retain(|(i, _)| *i != self.id);
        c.calls.retain(|(i, _)| *i != self.id);
        drop(c);
        self.waiting.changed.notify_waiters();
    }
}

/// Marks a connection busy for as long as it lives: from a complete request head to the
/// answer handed to hyper (the pages are in memory, so it is written out at once).
struct Answering {
    id: u64,
    waiting: Arc<Waiting>,
}

impl Answering {
    fn new(id: u64, waiting: Arc<Waiting>) -> Answering {
        waiting.set(id, Activity::Busy);
        Answering { id, waiting }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.waiting.set(self.id, Activity::Waiting(Instant::now()));
    }
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SMALL: Limits = Limits {
        connections: 2,
        header_read: Duration::from_millis(300),
        age: Duration::from_secs(3),
    };

    fn pages() -> Router {
        Router::new()
            .route("/nodes", get(|| async { "pg1: master\n" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    "slow\n"
                }),
            )
            .fallback(|| async { "overview\n" })
    }

    async fn start(
        limits: Limits,
    ) -> (
        SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<usize>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve_with(
            listener,
            pages(),
            rx,
            Duration::from_millis(500),
            limits,
        ));
        (addr, tx, server)
    }

    /// Sends `request`, reads until the server closes; Err if that takes over `limit`.
    async fn exchange(addr: SocketAddr, request: &str, limit: Duration) -> Result<String, String> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        match tokio::time::timeout(limit, s.read_to_end(&mut out)).await {
            Ok(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
            Err(_) => Err(format!(
                "no end after {limit:?}; got {:?}",
                String::from_utf8_lossy(&out)
            )),
        }
    }

    #[tokio::test]
    async fn at_the_cap_new_connections_wait_until_a_request_in_progress_ends() {
        let limits = Limits {
            header_read: Duration::from_secs(60),
            age: Duration::from_secs(60),
            ..SMALL
        };
        let (addr, _tx, _server) = start(limits).await;
        // Both slots answer a request (which takes a second), so neither gives way.
        let slow = || exchange(addr, "GET /slow HTTP/1.0\r\n\r\n", Duration::from_secs(10));
        let (a, b) = (tokio::spawn(slow()), tokio::spawn(slow()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The third connects (the kernel queues it) but is not served meanwhile.
        let waiting = tokio::spawn(exchange(
            addr,
            "GET /nodes HTTP/1.0\r\n\r\n",
            Duration::from_secs(10),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served beyond the cap");
        for slow in [a, b] {
            assert!(slow.await.unwrap().unwrap().ends_with("\r\n\r\nslow\n"));
        }
        let answer = waiting.await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\npg1: master\n"), "{answer}");
    }

    /// True once the server has closed `s` (within `limit`), false if it is still open.
    async fn closed_by_server(s: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_connection_waiting_longest_gives_way_to_the_newest() {
        let limits = Limits {
            header_read: Duration::from_secs(60),
            age: Duration::from_secs(60),
            ..SMALL
        };
        let (addr, _tx, _server) = start(limits).await;
        // `answered` connects first but then gets an answer and idles on keep-alive: it
        // has waited for its next request for less time than `idle` for its first.
        let mut answered = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        // Half a request counts as waiting too, and it is the one that waited longest.
        idle.write_all(b"GET /nodes HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        answered
            .write_all(b"GET /nodes HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = answered.read(&mut buf).await.unwrap();
        assert!(buf[..n].ends_with(b"pg1: master\n"));
        tokio::time::sleep(Duration::from_millis(50)).await;

        let fresh = exchange(addr, "GET /nodes HTTP/1.0\r\n\r\n", Duration::from_secs(5));
        let fresh = fresh.await.expect("a fresh request at the cap is answered");
        assert!(fresh.ends_with("\r\n\r\npg1: master\n"), "{fresh}");
        assert!(closed_by_server(&mut idle, Duration::from_secs(2)).await);
        assert!(!closed_by_server(&mut answered, Duration::from_millis(300)).await);
        // The one that stayed still works.
        answered
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = answered.read(&mut buf).await.unwrap();
        assert!(buf[..n].ends_with(b"overview\n"));
    }

    #[test]
    fn the_connection_waiting_longest_gives_way_one_at_a_time_never_a_busy_one() {
        use Activity::*;
        let t = Instant::now();
        let s = |ms| Waiting(t + Duration::from_millis(ms));
        assert_eq!(who_gives_way(&[]), None);
        assert_eq!(who_gives_way(&[(1, Busy), (2, Busy)]), None);
        assert_eq!(who_gives_way(&[(1, s(30)), (2, Busy), (3, s(10))]), Some(3));
        assert_eq!(who_gives_way(&[(1, Busy), (2, s(10))]), Some(2));
        // Equal waits: the older connection (lower id) goes first.
        assert_eq!(who_gives_way(&[(5, s(10)), (4, s(10))]), Some(4));
        // One already on its way out makes room for the one newcomer there is.
        assert_eq!(who_gives_way(&[(1, s(0)), (2, GivingWay)]), None);
    }

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

    #[test]
    fn json_only_when_asked_for() {
        for (accept, json) in [
            ("", false),
            ("*/*", false),
            ("text/plain", false),
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("text/html, application/json;q=0.9, */*;q=0.8", true),
            ("application/json;q=0.5, text/plain", false),
            ("application/json;q=0", false),
            ("text/*;q=0.1, application/json", true),
        ] {
            assert_eq!(prefers_json(accept), json, "{accept:?}");
        }
    }

    /// The body of an HTTP/1.1 answer, parsed as JSON.
    fn body_json(answer: &str) -> serde_json::Value {
        let (_, body) = answer.split_once("\r\n\r\n").expect("a complete answer");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
    }

    #[tokio::test]
    async fn the_real_pages_answer_text_by_default_and_json_when_asked() {
        use crate::decide::NodeState;
        let names = vec!["pg1".to_string(), "pg2".to_string()];
        let (tx, rx) = watch::channel(Snapshot::new(&names, Duration::from_secs(30), "x".into()));
        tx.send_modify(|s| {
            s.nodes[0].state = Some(NodeState::Master);
            s.nodes[1].state = Some(NodeState::Down);
            s.nodes[1].error = Some("FATAL:  role \"x\" does not exist".into());
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(serve_with(
            listener,
            router(rx),
            stop_rx,
            Duration::from_millis(500),
            SMALL,
        ));
        let get = async |req: &str| {
            let full = format!("{req}\r\nConnection: close\r\nHost: x\r\n\r\n");
            exchange(addr, &full, Duration::from_secs(5)).await.unwrap()
        };
        let text = get("GET /nodes HTTP/1.1").await;
        assert!(
            text.contains("content-type: text/plain; charset=utf-8\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\npg1: master\npg2: down\n"), "{text}");
        for req in [
            "GET /nodes?format=json HTTP/1.1",
            "GET /nodes HTTP/1.1\r\nAccept: application/json",
        ] {
            let json = get(req).await;
            assert!(
                json.contains("content-type: application/json\r\n"),
                "{json}"
            );
            let j = body_json(&json);
            assert_eq!(j["nodes"][1]["name"], "pg2");
            assert_eq!(j["nodes"][1]["state"], "down");
            assert_eq!(j["nodes"][1]["last_check"], serde_json::Value::Null);
            assert_eq!(
                j["nodes"][1]["last_error"],
                "FATAL:  role \"x\" does not exist"
            );
        }
        let root = body_json(&get("GET /?format=json HTTP/1.1").await);
        assert_eq!(root["active"], serde_json::Value::Null);
        assert_eq!(root["confirmed"], false);
        let metrics = get("GET /metrics HTTP/1.1").await;
        assert!(
            metrics.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("rebouncer_node_state{node=\"pg1\",state=\"master\"} 1\n"),
            "{metrics}"
        );
        let events = get("GET /events HTTP/1.1").await;
        assert!(
            events.contains("content-type: application/json\r\n"),
            "{events}"
        );
        assert_eq!(
            body_json(&events),
            serde_json::json!({"capacity": 200, "events": []})
        );
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
