//! What a request carries besides its body: correlation and request ids, where it came from,
//! and its trace context. These end up in every event the request causes.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use uuid::Uuid;

use super::AppState;
use crate::auth::Caller;
use crate::domain::{Actor, EventContext};
use crate::error::ApiError;

/// `X-Correlation-ID`: links related events across services; echoed on every response.
pub static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// `X-Request-ID`: this request; the causation of its first event; echoed on every response.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The ids of one request, set by [`ids`] for every request.
#[derive(Debug, Clone, Copy)]
pub struct RequestIds {
    /// From `X-Correlation-ID`, or new.
    pub correlation_id: Uuid,
    /// From `X-Request-ID` when it is a UUID, or new.
    pub request_id: Uuid,
}

/// Middleware: reads or makes the request's ids, and echoes them on the response.
pub async fn ids(mut req: Request, next: Next) -> Response {
    let correlation_id = match req.headers().get(&CORRELATION_ID) {
        None => Uuid::now_v7(),
        Some(value) => match value
            .to_str()
            .ok()
            .and_then(|v| Uuid::parse_str(v.trim()).ok())
        {
            Some(id) => id,
            None => {
                return ApiError::BadRequest {
                    code: "invalid_correlation_id",
                    message: "X-Correlation-ID must be a UUID".into(),
                }
                .into_response();
            }
        },
    };
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v.trim()).ok())
        .unwrap_or_else(Uuid::now_v7);
    req.extensions_mut().insert(RequestIds {
        correlation_id,
        request_id,
    });
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, id) in [(&CORRELATION_ID, correlation_id), (&REQUEST_ID, request_id)] {
        let value = HeaderValue::from_str(&id.to_string()).expect("a UUID is a header value");
        headers.insert(name.clone(), value);
    }
    response
}

/// The span of one request: method, path and the ids set by [`ids`], so that every log line
/// written while the request is handled names its request and correlation ids.
///
/// A well-formed `traceparent` (with its `tracestate`) makes the caller's span its parent, so the
/// request joins the caller's trace when spans are exported ([`crate::otlp`]).
pub fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let ids = req.extensions().get::<RequestIds>();
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        uri = %req.uri(),
        version = ?req.version(),
        request_id = ids.map(|i| tracing::field::display(i.request_id)),
        correlation_id = ids.map(|i| tracing::field::display(i.correlation_id)),
    );
    let headers = req.headers();
    let parent =
        crate::trace_context::remote(|name| headers.get(name).and_then(|v| v.to_str().ok()));
    // Fails only without an OpenTelemetry layer (or with the span filtered out): no trace then.
    let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
    span
}

/// The most bytes of a `User-Agent` header an event carries: the rest is cut (at a character
/// boundary). The header is the client's to choose, and each command writes it into its events.
pub const MAX_USER_AGENT_BYTES: usize = 512;

/// Everything about a request that its events carry, minus who the caller is.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    ids: RequestIds,
    ip_address: String,
    user_agent: String,
    traceparent: Option<String>,
    now: DateTime<Utc>,
}

impl RequestMeta {
    /// The events' context for this request made by `caller`.
    pub fn events(&self, caller: &Caller) -> EventContext {
        EventContext {
            correlation_id: self.ids.correlation_id,
            request_id: self.ids.request_id,
            actor: Actor {
                user_id: caller.user_id,
                user_type: caller.role.as_str().to_owned(),
                ip_address: self.ip_address.clone(),
                user_agent: self.user_agent.clone(),
            },
            traceparent: self.traceparent.clone(),
            now: self.now,
        }
    }
}

impl FromRequestParts<AppState> for RequestMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ids = parts
            .extensions
            .get::<RequestIds>()
            .copied()
            .ok_or_else(|| ApiError::Internal("request ids middleware is not installed".into()))?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let ip_address = match peer {
            Some(peer) => client_ip(peer, &parts.headers, &state.trusted_proxies).to_string(),
            None => "unknown".to_owned(),
        };
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(RequestMeta {
            ids,
            ip_address,
            user_agent: header(axum::http::header::USER_AGENT.as_str())
                .map(|agent| cut(agent, MAX_USER_AGENT_BYTES))
                .unwrap_or_default(),
            // The request span's context when spans are exported (its parent is the caller's),
            // else the caller's header as received.
            traceparent: crate::trace_context::for_written_event(
                header("traceparent")
                    .filter(|t| is_traceparent(t))
                    .as_deref(),
            ),
            now: now_millis(),
        })
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let end = (0..=max)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(end);
    }
    text
}

/// Now, to the millisecond: the precision timestamps are stored with.
pub fn now_millis() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the last
/// `X-Forwarded-For` hop that is not itself a trusted proxy.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map_while(|hop| hop.trim().parse().ok())
        .collect();
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(hops.first())
        .copied()
        .unwrap_or(peer)
}

/// A W3C trace context `traceparent`: `version-traceid-parentid-flags` in lower-case hex.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let from_proxy: IpAddr = "10.1.1.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let headers = xff("198.51.100.7, 10.2.2.2");
        assert_eq!(
            client_ip(from_proxy, &headers, &trusted).to_string(),
            "198.51.100.7"
        );
        assert_eq!(client_ip(stranger, &headers, &trusted), stranger);
        assert_eq!(
            client_ip(from_proxy, &HeaderMap::new(), &trusted),
            from_proxy
        );
        // A client cannot hide behind a forged left-most entry: the right-most untrusted hop wins.
        let forged = xff("1.2.3.4, 198.51.100.7");
        assert_eq!(
            client_ip(from_proxy, &forged, &trusted).to_string(),
            "198.51.100.7"
        );
    }

    #[test]
    fn request_span_carries_the_request_ids() {
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        let ids = RequestIds {
            correlation_id: Uuid::now_v7(),
            request_id: Uuid::now_v7(),
        };
        let mut req = axum::http::Request::new(());
        req.extensions_mut().insert(ids);
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let _entered = request_span(&req).entered();
            tracing::info!("inside the request");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("inside the request"), "{text}");
        assert!(
            text.contains(&format!("request_id={}", ids.request_id)),
            "{text}"
        );
        assert!(
            text.contains(&format!("correlation_id={}", ids.correlation_id)),
            "{text}"
        );
    }

    #[test]
    fn traceparent_format_is_checked() {
        assert!(is_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        assert!(!is_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"
        ));
        assert!(!is_traceparent("garbage"));
    }
}
