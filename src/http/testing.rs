//! What the server tests share: small bounds, a few fixed pages, a server started on a
//! free port, and a raw exchange of bytes with it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::server::{Limits, serve_with};

pub(super) const SMALL: Limits = Limits {
    connections: 2,
    header_read: Duration::from_millis(300),
    age: Duration::from_secs(3),
};

pub(super) fn pages() -> Router {
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

pub(super) async fn start(
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
pub(super) async fn exchange(
    addr: SocketAddr,
    request: &str,
    limit: Duration,
) -> Result<String, String> {
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
