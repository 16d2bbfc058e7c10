//! `/health` and `/metrics` for a subscriber process, without an HTTP stack: a small HTTP/1.1
//! server on tokio's `TcpListener`, so that feature `consumer` stays free of axum and hyper.
//!
//! - `GET /health` answers the groups' state as JSON, `{"status": .., "groups": {"<group>":
//!   GroupStats::health()}}`: 200 when every group [is healthy](GroupStats::is_healthy) (active
//!   or standby, breaker closed), 503 otherwise (a group still setting up, stopped, or with its
//!   breaker open or half-open). The overall `status` is `ok` or the first group's that is not.
//! - `GET /metrics` answers the groups' [`ConsumerMetrics`] as OpenMetrics text, with the content
//!   type of the service's own `/metrics`.
//! - `HEAD` answers the same without a body; another method on those paths 405 (with `Allow`),
//!   another path 404, a request line that is not HTTP/1.x 400.
//!
//! One request per connection, answered with `Connection: close`. It cannot be starved by a
//! client: the request head is at most [`MAX_HEAD`] bytes (431 beyond), the whole head must
//! arrive within a deadline (408 after it, so a client trickling bytes gains nothing), writing the
//! answer has a deadline too, and at most [`MAX_CONNECTIONS`] connections are open at once: one
//! more closes the oldest (a request is answered in milliseconds, so the oldest is an idle
//! socket, a trickler or a client that does not read), so idle sockets in every slot do not keep
//! a probe waiting for their deadline.
//! It stops when its `stop` future completes; connections in progress are dropped then.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::metrics::ConsumerMetrics;
use super::stats::GroupStats;

/// The longest request head (request line and headers) read: a longer one is answered 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// How many connections are served at once by default.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client has by default to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing an answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After answering, how long the rest of what a client sends is read and dropped: closing with
/// unread bytes would reset the connection and could destroy the answer before it is read.
const LINGER: Duration = Duration::from_secs(1);
/// The most bytes read and dropped while lingering.
const LINGER_BYTES: usize = 64 * 1024;
/// How long to wait before accepting again after `accept` failed (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The `/health` and `/metrics` endpoints of a subscriber process: which groups they report and the
/// limits that keep them safe. [`Group::health`](crate::consumer::Group::health) makes one for a
/// group; [`Health::group`] adds others.
#[derive(Debug, Clone)]
pub struct Health {
    groups: Vec<(String, Arc<GroupStats>)>,
    metrics: Arc<ConsumerMetrics>,
    head_timeout: Duration,
    max_connections: usize,
}

impl Health {
    /// Endpoints serving `metrics` at `/metrics`, with no group yet.
    pub fn new(metrics: Arc<ConsumerMetrics>) -> Health {
        Health {
            groups: Vec::new(),
            metrics,
            head_timeout: HEAD_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }

    /// Reports the group named `name`, whose counters are `stats` ([`Group::stats`]), too. The
    /// groups of one process should share their metrics ([`Group::with_metrics`]): only the
    /// registry given to [`Health::new`] is served.
    ///
    /// [`Group::stats`]: crate::consumer::Group::stats
    /// [`Group::with_metrics`]: crate::consumer::Group::with_metrics
    pub fn group(mut self, name: impl Into<String>, stats: Arc<GroupStats>) -> Health {
        self.groups.push((name.into(), stats));
        self
    }

    /// How long a client has to send its request head ([`HEAD_TIMEOUT`] by default).
    pub fn head_timeout(mut self, timeout: Duration) -> Health {
        self.head_timeout = timeout;
        self
    }

    /// How many connections are open at once ([`MAX_CONNECTIONS`] by default, at least one);
    /// one more closes the oldest.
    pub fn max_connections(mut self, n: usize) -> Health {
        self.max_connections = n.max(1);
        self
    }

    /// The status and JSON body of `/health` now.
    pub fn report(&self) -> (u16, serde_json::Value) {
        let mut status = "ok";
        let mut groups = serde_json::Map::new();
        for (name, stats) in &self.groups {
            let health = stats.health();
            if status == "ok"
                && let Some(s) = health["status"].as_str()
                && s != "ok"
            {
                status = if s == "degraded" { "degraded" } else { "down" };
            }
            groups.insert(name.clone(), health);
        }
        let code = if status == "ok" { 200 } else { 503 };
        (
            code,
            serde_json::json!({ "status": status, "groups": groups }),
        )
    }

    /// Serves the endpoints on `listener` until `stop` completes. Failing accepts (e.g. out of
    /// file descriptors) are logged and retried; nothing a client does ends it.
    pub async fn serve(self, listener: TcpListener, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let health = Arc::new(self);
        let open = Arc::new(Open::default());
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let accepted = tokio::select! {
                () = &mut stop => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let (id, evicted) = open.admit(health.max_connections);
                    let (health, open) = (health.clone(), open.clone());
                    connections.spawn(async move {
                        tokio::select! {
                            () = health.connection(stream) => {}
                            () = evicted.notified() => {}
                        }
                        open.leave(id);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the health endpoint could not accept a connection");
                    tokio::select! {
                        () = &mut stop => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
        connections.shutdown().await;
    }

    /// Reads one request, answers it, and closes.
    async fn connection(&self, mut stream: TcpStream) {
        let head = tokio::time::timeout(self.head_timeout, read_head(&mut stream)).await;
        let answer = match head {
            Err(_) => Answer::text(408, "request head not received in time"),
            Ok(Err(_)) => return,
            Ok(Ok(None)) => return,
            Ok(Ok(Some(head))) => match parse_head(&head) {
                Parsed::TooLarge => Answer::text(431, "request head too large"),
                // Incomplete here: the client ended its side before the head did.
                Parsed::Incomplete | Parsed::Bad => Answer::text(400, "not an HTTP/1.x request"),
                Parsed::Request { method, path } => self.answer(method, path),
            },
        };
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(&answer.bytes).await?;
            stream.shutdown().await
        })
        .await;
        if matches!(written, Ok(Ok(()))) {
            linger(&mut stream).await;
        }
    }

    /// The answer to a parsed request.
    fn answer(&self, method: &str, path: &str) -> Answer {
        let head_only = method == "HEAD";
        let mut answer = match route(method, path) {
            Route::Health => {
                let (code, body) = self.report();
                Answer::new(code, "application/json", body.to_string())
            }
            Route::Metrics => Answer::new(200, crate::metrics::CONTENT_TYPE, self.metrics.render()),
            Route::NotFound => Answer::text(404, "not found: /health and /metrics are served"),
            Route::MethodNotAllowed => Answer::text(405, "only GET and HEAD are served"),
        };
        if head_only {
            answer.drop_body();
        }
        answer
    }
}

/// The connections being served, oldest first, each with what tells it to close.
#[derive(Default)]
struct Open {
    state: Mutex<OpenState>,
}

#[derive(Default)]
struct OpenState {
    /// The last connection's number.
    last: u64,
    /// Each open connection's number and its signal to close, oldest first.
    open: VecDeque<(u64, Arc<Notify>)>,
}

impl Open {
    /// Takes a new connection in; when `max` are open already, the oldest is told to close. A
    /// connection answered takes milliseconds, so the oldest is one that sent nothing, trickles
    /// its head or does not read its answer: a probe is not kept waiting behind idle sockets.
    fn admit(&self, max: usize) -> (u64, Arc<Notify>) {
        let mut state = self.state.lock().expect("health connections lock");
        while state.open.len() >= max {
            let Some((_, oldest)) = state.open.pop_front() else {
                break;
            };
            oldest.notify_one();
        }
        state.last += 1;
        let (id, evicted) = (state.last, Arc::new(Notify::new()));
        state.open.push_back((id, evicted.clone()));
        (id, evicted)
    }

    /// Forgets a connection that ended (or was told to).
    fn leave(&self, id: u64) {
        let mut state = self.state.lock().expect("health connections lock");
        state.open.retain(|(open, _)| *open != id);
    }
}

/// Reads until the end of the request head, at most [`MAX_HEAD`] bytes and one more (so that a
/// head too large is told apart); `None` when the client closed before sending anything.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok((!head.is_empty()).then_some(head));
        }
        head.extend_from_slice(&chunk[..n]);
        if head.len() > MAX_HEAD || !matches!(parse_head(&head), Parsed::Incomplete) {
            return Ok(Some(head));
        }
    }
}

/// Reads and drops what the client still sends, briefly, so that closing does not reset the
/// connection under the answer.
async fn linger(stream: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    let mut dropped = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while dropped < LINGER_BYTES {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
}

/// What the bytes read so far are.
#[derive(Debug, PartialEq, Eq)]
enum Parsed<'a> {
    /// The head has not ended yet.
    Incomplete,
    /// The head did not end within [`MAX_HEAD`] bytes.
    TooLarge,
    /// The request line is not `METHOD /target HTTP/1.x`, or a header line has no colon.
    Bad,
    /// A request: its method and path (the target without its query).
    Request { method: &'a str, path: &'a str },
}

/// Parses a request head: lines ending in CRLF (or a bare LF, which RFC 9112 lets a server
/// accept), the request line first, an empty line last. Only the request line is used; header
/// lines are checked for a colon and otherwise ignored.
fn parse_head(bytes: &[u8]) -> Parsed<'_> {
    let Some(end) = head_end(bytes) else {
        return if bytes.len() >= MAX_HEAD {
            Parsed::TooLarge
        } else {
            Parsed::Incomplete
        };
    };
    if end > MAX_HEAD {
        return Parsed::TooLarge;
    }
    let Ok(head) = std::str::from_utf8(&bytes[..end]) else {
        return Parsed::Bad;
    };
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(request_line) = lines.next() else {
        return Parsed::Bad;
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Bad;
    };
    let is_token = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !is_token || !target.starts_with('/') || !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Parsed::Bad;
    }
    if lines.any(|line| !line.is_empty() && !line.contains(':')) {
        return Parsed::Bad;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Parsed::Request { method, path }
}

/// Where the head ends (after its empty line), if it has.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(n) = bytes[start..].iter().position(|&b| b == b'\n') {
        let line = &bytes[start..start + n];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() && start > 0 {
            return Some(start + n + 1);
        }
        start += n + 1;
    }
    None
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Health,
    Metrics,
    NotFound,
    MethodNotAllowed,
}

fn route(method: &str, path: &str) -> Route {
    let known = match path {
        "/health" => Route::Health,
        "/metrics" => Route::Metrics,
        _ => return Route::NotFound,
    };
    if matches!(method, "GET" | "HEAD") {
        known
    } else {
        Route::MethodNotAllowed
    }
}

/// An answer, as the bytes to write.
struct Answer {
    bytes: Vec<u8>,
    body_len: usize,
}

impl Answer {
    fn new(code: u16, content_type: &str, body: String) -> Answer {
        let reason = match code {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let allow = if code == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut bytes = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\n{allow}Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        Answer {
            bytes,
            body_len: body.len(),
        }
    }

    fn text(code: u16, message: &str) -> Answer {
        Answer::new(code, "text/plain; charset=utf-8", format!("{message}\n"))
    }

    /// Keeps the head only, for a HEAD request (its `Content-Length` stays the body's).
    fn drop_body(&mut self) {
        self.bytes.truncate(self.bytes.len() - self.body_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(bytes: &[u8]) -> (&str, &str) {
        match parse_head(bytes) {
            Parsed::Request { method, path } => (method, path),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn a_request_line_and_headers_give_the_method_and_path() {
        assert_eq!(
            request(b"GET /health HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"),
            ("GET", "/health")
        );
        assert_eq!(
            request(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            ("HEAD", "/metrics")
        );
        // Bare line feeds are accepted.
        assert_eq!(
            request(b"GET /health HTTP/1.1\nHost: x\n\n"),
            ("GET", "/health")
        );
        // What follows the head (a body, a pipelined request) is not looked at.
        assert_eq!(
            request(b"POST /health HTTP/1.1\r\n\r\nGET /x HTTP/1.1"),
            ("POST", "/health")
        );
    }

    #[test]
    fn a_head_not_ended_is_incomplete_until_it_is_too_large() {
        assert_eq!(parse_head(b""), Parsed::Incomplete);
        assert_eq!(parse_head(b"GET /health HTTP/1.1\r\n"), Parsed::Incomplete);
        assert_eq!(
            parse_head(b"GET /health HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Incomplete
        );
        let mut big = b"GET /health HTTP/1.1\r\nX-Pad: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert_eq!(parse_head(&big), Parsed::TooLarge);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&big), Parsed::TooLarge);
    }

    #[test]
    fn a_head_of_exactly_the_limit_is_read() {
        let mut head = b"GET /health HTTP/1.1\r\nX-Pad: ".to_vec();
        head.resize(MAX_HEAD - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head.len(), MAX_HEAD);
        assert_eq!(request(&head), ("GET", "/health"));
    }

    #[test]
    fn what_is_not_an_http_1_request_is_bad() {
        for bad in [
            &b"GET /health\r\n\r\n"[..],
            b"GET /health HTTP/2.0\r\n\r\n",
            b"GET  /health HTTP/1.1\r\n\r\n",
            b"GET health HTTP/1.1\r\n\r\n",
            b"get /health HTTP/1.1\r\n\r\n",
            b"GET /health HTTP/1.1 extra\r\n\r\n",
            b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n",
            b"\xff\xfe /health HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(bad),
                Parsed::Bad,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A leading empty line is not the end of the head: it is a bad request line.
        assert_eq!(parse_head(b"\r\nGET / HTTP/1.1\r\n\r\n"), Parsed::Bad);
    }

    #[test]
    fn routes_answer_get_and_head_on_their_paths_only() {
        assert_eq!(route("GET", "/health"), Route::Health);
        assert_eq!(route("HEAD", "/health"), Route::Health);
        assert_eq!(route("GET", "/metrics"), Route::Metrics);
        assert_eq!(route("POST", "/health"), Route::MethodNotAllowed);
        assert_eq!(route("DELETE", "/metrics"), Route::MethodNotAllowed);
        assert_eq!(route("GET", "/"), Route::NotFound);
        assert_eq!(route("POST", "/healthz"), Route::NotFound);
        assert_eq!(route("GET", "/health/"), Route::NotFound);
    }

    #[test]
    fn answers_close_the_connection_and_say_their_length() {
        let answer = Answer::new(503, "application/json", "{}".into());
        let text = String::from_utf8(answer.bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Length: 2\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");
        let mut head = Answer::text(405, "no");
        head.drop_body();
        let text = String::from_utf8(head.bytes).unwrap();
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn health_is_503_unless_every_group_is_active_or_standby_with_its_breaker_closed() {
        let (a, b) = (
            Arc::new(GroupStats::default()),
            Arc::new(GroupStats::default()),
        );
        let health = Health::new(Arc::default())
            .group("a", a.clone())
            .group("b", b.clone());
        let (code, body) = health.report();
        assert_eq!(
            (code, body["status"].as_str()),
            (503, Some("down")),
            "{body}"
        );
        assert_eq!(body["groups"]["a"]["role"], "starting");
        a.set_role(super::super::stats::GroupRole::Active);
        b.set_role(super::super::stats::GroupRole::Standby);
        let (code, body) = health.report();
        assert_eq!((code, body["status"].as_str()), (200, Some("ok")), "{body}");
        let outage = crate::consumer::breaker::Outage::begin(&a.breaker, Duration::from_secs(1));
        let (code, body) = health.report();
        assert_eq!(
            (code, body["status"].as_str()),
            (503, Some("degraded")),
            "{body}"
        );
        assert_eq!(body["groups"]["a"]["breaker"], "open");
        drop(outage);
        assert_eq!(health.report().0, 200);
        b.set_role(super::super::stats::GroupRole::Stopped);
        assert_eq!(health.report().0, 503);
    }

    /// Any bytes are a request, incomplete, too large or bad, never a panic; a well-formed head
    /// gives its method and path whatever header lines follow.
    #[test]
    fn any_bytes_are_a_request_or_refused() {
        use proptest::prelude::*;
        let strategy = (
            prop::collection::vec(any::<u8>(), 0..(MAX_HEAD + 64)),
            "[A-Z]{1,8}",
            "/[a-z/?=&]{0,30}",
            prop::collection::vec("[A-Za-z-]{1,12}: [ -~]{0,20}", 0..6),
            any::<bool>(),
        );
        crate::seeded::runner("health request head")
            .run(&strategy, |(bytes, method, target, headers, bare_lf)| {
                let _ = parse_head(&bytes);
                let end = if bare_lf { "\n" } else { "\r\n" };
                let mut head = format!("{method} {target} HTTP/1.1{end}");
                for header in &headers {
                    head += &format!("{header}{end}");
                }
                head += end;
                let path = target.split('?').next().unwrap();
                match parse_head(head.as_bytes()) {
                    Parsed::Request { method: m, path: p } => {
                        prop_assert_eq!((m, p), (method.as_str(), path));
                    }
                    other => prop_assert!(false, "{head:?}: {other:?}"),
                }
                Ok(())
            })
            .unwrap();
    }
}
