//! HTTP/1.1 to one etcd endpoint, plain or TLS, with hyper's connection-level client: one
//! connection for short requests (reused), one per watch stream. Every call is bounded by
//! the caller's deadline; a connection whose task is dropped is closed at once.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::Endpoint;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One HTTP connection; the connection task ends when this is dropped.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
    authority: String,
    /// What to add to a connection closed before any answer: over TLS that is how a
    /// refused client certificate shows.
    hint: &'static str,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn connect(
    ep: &Endpoint,
    tls: Option<&tokio_native_tls::TlsConnector>,
    deadline: Duration,
) -> Result<Conn, String> {
    let work = async {
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| format!("cannot connect to etcd at {ep}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if ep.tls {
            let Some(tls) = tls else {
                return Err(format!("{ep}: https without TLS settings"));
            };
            let s = tls.connect(&ep.host, tcp).await.map_err(|e| {
                format!("TLS handshake with etcd at {ep} failed: {e} (check etcd_ca_file, and that the certificate names {})", ep.host)
            })?;
            Box::new(s)
        } else {
            Box::new(tcp)
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake with etcd at {ep}: {e}"))?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            task,
            authority: format!("{}:{}", ep.host, ep.port),
            hint: if ep.tls {
                " (etcd closed the TLS connection: if it requires client certificates (--client-cert-auth), set the client certificate and key)"
            } else {
                ""
            },
        })
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| format!("etcd at {ep} did not accept a connection within {deadline:?}"))?
}

fn request(
    conn: &Conn,
    path: &str,
    body: String,
    token: Option<&str>,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let mut b = hyper::Request::post(path)
        .header(hyper::header::HOST, &conn.authority)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        b = b.header(hyper::header::AUTHORIZATION, t);
    }
    b.body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("building a request for {path}: {e}"))
}

impl Conn {
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// `POST path` and the whole answer: Ok(body) on HTTP 200, Err(etcd's message)
    /// otherwise.
    pub async fn post(
        &mut self,
        path: &str,
        body: String,
        token: Option<&str>,
        deadline: Duration,
    ) -> Result<String, String> {
        let req = request(self, path, body, token)?;
        let authority = self.authority.clone();
        let work = async {
            let hint = self.hint;
            self.sender
                .ready()
                .await
                .map_err(|e| format!("etcd at {authority}: {e}{hint}"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("etcd at {authority}: {path}: {e}{hint}"))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("etcd at {authority}: reading {path}: {e}"))?
                .to_bytes();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if status == hyper::StatusCode::OK {
                Ok(text)
            } else {
                Err(format!(
                    "etcd at {authority} refused {path} (HTTP {}): {}",
                    status.as_u16(),
                    super::wire::error_message(&text)
                ))
            }
        };
        tokio::time::timeout(deadline, work)
            .await
            .map_err(|_| format!("etcd at {authority} did not answer {path} within {deadline:?}"))?
    }

    /// `POST path` whose answer is a stream of lines (a watch). The request is sent and the
    /// status checked within `deadline`; the lines come from [`Lines::next`].
    pub async fn stream(
        mut self,
        path: &str,
        body: String,
        token: Option<&str>,
        deadline: Duration,
    ) -> Result<Lines, String> {
        let req = request(&self, path, body, token)?;
        let authority = self.authority.clone();
        let hint = self.hint;
        let work = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("etcd at {authority}: {e}{hint}"))?;
            self.sender
                .send_request(req)
                .await
                .map_err(|e| format!("etcd at {authority}: {path}: {e}{hint}"))
        };
        let resp = tokio::time::timeout(deadline, work).await.map_err(|_| {
            format!("etcd at {authority} did not answer {path} within {deadline:?}")
        })??;
        if resp.status() != hyper::StatusCode::OK {
            let status = resp.status().as_u16();
            let text = tokio::time::timeout(deadline, resp.into_body().collect())
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(format!(
                "etcd at {authority} refused {path} (HTTP {status}): {}",
                super::wire::error_message(&text)
            ));
        }
        Ok(Lines {
            body: resp.into_body(),
            buf: Vec::new(),
            _conn: self,
            authority,
        })
    }
}

/// The lines of a streamed answer.
pub struct Lines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    _conn: Conn,
    authority: String,
}

impl Lines {
    /// The next complete line; Err when the stream ended or broke.
    pub async fn next(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line).trim().to_string();
                if line.is_empty() {
                    continue;
                }
                return Ok(line);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(format!(
                        "the watch stream from etcd at {} broke: {e}",
                        self.authority
                    ));
                }
                None => {
                    return Err(format!("etcd at {} ended the watch stream", self.authority));
                }
            }
        }
    }
}
