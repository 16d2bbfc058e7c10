//! Fair limits: the per-caller write limit (429 with `Retry-After`) and the request timeout
//! (408).
//!
//! The write limit is a token bucket per caller: `WRITE_RATE_LIMIT` writes per second sustained,
//! `WRITE_RATE_BURST` at once. A caller is its token's subject; a request without a valid token
//! is counted against its client address (the `X-Forwarded-For` hop when the peer is one of
//! `TRUSTED_PROXIES`), so unauthenticated floods are limited too. Reads are not limited.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::context::client_ip;
use crate::auth::{Caller, Role};
use crate::error::ApiError;

/// Above this many buckets, full ones (callers idle long enough) are dropped: a full bucket is
/// the same as no bucket, so forgetting it changes nothing but memory.
const SWEEP_ABOVE: usize = 10_000;

/// The per-caller write limit.
#[derive(Debug)]
pub struct WriteLimit {
    rate: u32,
    burst: u32,
    exempt: Vec<Role>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl WriteLimit {
    /// `rate` writes per second (0: no limit), `burst` at once; callers in `exempt` roles are
    /// not limited.
    pub fn new(rate: u32, burst: u32, exempt: Vec<Role>) -> WriteLimit {
        WriteLimit {
            rate,
            burst: burst.max(1),
            exempt,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one write for `who`; when none is left, the whole seconds until one is.
    fn take(&self, who: &str, now: Instant) -> Result<(), u64> {
        let (rate, burst) = (f64::from(self.rate), f64::from(self.burst));
        let refill =
            |b: &Bucket| (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, b| refill(b) < burst);
        }
        let bucket = buckets.entry(who.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = refill(bucket);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(((1.0 - tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// Middleware: counts writes against their caller and answers 429 over the limit. The caller it
/// reads from the token is kept in the request, so the handler does not verify the token again.
pub async fn write_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = &state.write_limit;
    let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
    if limit.rate == 0 || reads.contains(request.method()) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let who = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => {
            parts.extensions.insert(caller);
            if limit.exempt.contains(&caller.role) {
                return next.run(Request::from_parts(parts, body)).await;
            }
            format!("sub:{}", caller.user_id)
        }
        Err(_) => match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(peer)) => format!(
                "ip:{}",
                client_ip(peer.ip(), &parts.headers, &state.trusted_proxies)
            ),
            None => "ip:unknown".to_owned(),
        },
    };
    match limit.take(&who, Instant::now()) {
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
        Err(retry_after) => ApiError::TooManyRequests {
            retry_after,
            limit: limit.rate,
            burst: limit.burst,
        }
        .into_response(),
    }
}

/// Middleware: answers 408 when the request, its body included, takes longer than
/// `REQUEST_TIMEOUT`. A command already handed to the writer still commits (its caller is gone,
/// its change stands); one not yet handed over is never run.
pub async fn timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit: Duration = state.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout {
            seconds: limit.as_secs().max(1),
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limit = WriteLimit::new(2, 3, vec![]);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limit.take("a", start), Ok(()));
        }
        assert_eq!(limit.take("a", start), Err(1));
        assert_eq!(
            limit.take("b", start),
            Ok(()),
            "callers have their own buckets"
        );
        let later = start + Duration::from_millis(500);
        assert_eq!(limit.take("a", later), Ok(()), "2/s refills one in 0.5 s");
        assert_eq!(limit.take("a", later), Err(1));
    }

    #[test]
    fn retry_after_covers_a_slow_rate() {
        let limit = WriteLimit::new(1, 1, vec![]);
        let now = Instant::now();
        assert_eq!(limit.take("a", now), Ok(()));
        assert_eq!(limit.take("a", now), Err(1));
        let slow = WriteLimit::new(1, 1, vec![]);
        assert_eq!(slow.take("a", now), Ok(()));
        assert_eq!(slow.take("a", now + Duration::from_millis(100)), Err(1));
    }
}
