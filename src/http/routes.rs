//! Which page each path gets, and in which format.

use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, Uri, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::pages::{json, metrics, nagios, text};
use crate::view::Snapshot;

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
        Format::Json => json_response(json::nodes(&s.borrow(), SystemTime::now())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::server::serve_with;
    use crate::http::testing::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

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
}
