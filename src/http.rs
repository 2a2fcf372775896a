//! The status web server: `/`, `/nodes`, `/nagios`, rendered from the shared snapshot.

use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::status::{self, Snapshot};

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
        .route("/", get(root))
        // The Go tool answered every other path with the overview.
        .fallback(root)
        .with_state(snapshot)
}

async fn root(State(s): State<watch::Receiver<Snapshot>>) -> String {
    status::render_root(&s.borrow(), SystemTime::now())
}

async fn nodes(State(s): State<watch::Receiver<Snapshot>>) -> String {
    status::render_nodes(&s.borrow())
}

async fn nagios(State(s): State<watch::Receiver<Snapshot>>) -> String {
    let mut line = status::render_nagios(&s.borrow(), SystemTime::now());
    line.push('\n');
    line
}
