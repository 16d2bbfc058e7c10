//! The `Idempotency-Key` header (IETF httpapi draft) on the POSTs that write.
//!
//! A request with a key is scoped to its caller (the token's subject and role), its method and
//! its path.
//! The first one runs; its answer is stored with its command, in the same transaction
//! ([`crate::store::idempotency`]). A retry with the same key and the same body gets that answer
//! again, with `Idempotent-Replayed: true`, and writes nothing; the same key with another body
//! answers 422; a retry while the first is still running answers 409. Refusals (4xx) and
//! failures are not stored: they wrote nothing, so a retry runs again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::store::idempotency::{self, Claim, StoredResponse};

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The header on a replayed answer.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// Keys whose first request is still being handled, by scope and key.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashSet<(String, String)>>);

/// Removes its key from [`InFlight`] when the request ends, however it ends.
struct Running<'a> {
    in_flight: &'a InFlight,
    entry: Option<(String, String)>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.in_flight
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&entry);
        }
    }
}

impl InFlight {
    fn start(&self, scope: &str, key: &str) -> Option<Running<'_>> {
        let entry = (scope.to_owned(), key.to_owned());
        let fresh = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.clone());
        // Built only when fresh: a guard for a key held by another request would release it.
        fresh.then(|| Running {
            in_flight: self,
            entry: Some(entry),
        })
    }
}

/// Middleware: replays, refuses or claims requests that carry an `Idempotency-Key`.
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST || !request.headers().contains_key(IDEMPOTENCY_KEY) {
        return next.run(request).await;
    }
    match prepare(&state, request).await {
        Ok(Prepared::Run(request, claim, running)) => {
            let response = idempotency::claimed(claim, next.run(request)).await;
            drop(running);
            response
        }
        // Unauthenticated: the handler answers 401 as it would without the key.
        Ok(Prepared::Unclaimed(request)) => next.run(request).await,
        Ok(Prepared::Replay(stored)) => replay(stored),
        Err(e) => e.into_response(),
    }
}

enum Prepared<'a> {
    Run(Request, Arc<Claim>, Running<'a>),
    Unclaimed(Request),
    Replay(StoredResponse),
}

async fn prepare(state: &AppState, request: Request) -> Result<Prepared<'_>, ApiError> {
    let key = parse_key(request.headers().get(IDEMPOTENCY_KEY))?;
    let (mut parts, body) = request.into_parts();
    let Ok(caller) = Caller::from_request_parts(&mut parts, state).await else {
        return Ok(Prepared::Unclaimed(Request::from_parts(parts, body)));
    };
    let bytes: Bytes = axum::body::to_bytes(body, super::json::MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge {
            limit: super::json::MAX_BODY_BYTES,
        })?;
    let fingerprint = hex(&Sha256::digest(&bytes));
    // The role is part of the caller: a token of the same subject with another role (one taken
    // away, say) is not answered what the first was allowed to do, but checked anew.
    let scope = format!(
        "{} {} {} {}",
        caller.user_id,
        caller.role.as_str(),
        parts.method,
        parts.uri.path()
    );
    // Answers stored before the role was part of the scope, replayed for their retention so
    // that a retry across an upgrade does not run twice.
    let legacy_scope = format!("{} {} {}", caller.user_id, parts.method, parts.uri.path());
    let running = state
        .idempotency_in_flight
        .start(&scope, &key)
        .ok_or_else(|| ApiError::Conflict {
            code: "idempotency_key_in_use",
            message: "a request with this Idempotency-Key is still being handled; retry later"
                .into(),
            details: json!({ "idempotency_key": key }),
        })?;
    // Looked up only once this request holds the key: the first request's answer is committed
    // before it lets go of the key, so a retry sees either the holder or the stored answer.
    let stored = {
        let (scope, key) = (scope.clone(), key.clone());
        state
            .store
            .read(move |conn| match idempotency::find(conn, &scope, &key)? {
                Some(record) => Ok(Some(record)),
                None => idempotency::find(conn, &legacy_scope, &key),
            })
            .await?
    };
    match stored {
        Some(record) if record.fingerprint == fingerprint => Ok(Prepared::Replay(record.response)),
        Some(_) => Err(ApiError::Unprocessable {
            code: "idempotency_key_reused",
            message: "this Idempotency-Key was used with another request body".into(),
            details: json!({ "idempotency_key": key }),
        }),
        None => {
            let claim = Claim::new(scope, key, fingerprint);
            let request = Request::from_parts(parts, Body::from(bytes));
            Ok(Prepared::Run(request, claim, running))
        }
    }
}

/// The key: 1 to [`MAX_KEY_LEN`] visible ASCII characters, as an sf-string (`"..."`, as the
/// draft writes it) or bare.
fn parse_key(value: Option<&HeaderValue>) -> Result<String, ApiError> {
    let bad = || ApiError::BadRequest {
        code: "invalid_idempotency_key",
        message: format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters, e.g. \"8e03978e-40d5-43e8-bc93-6894a57f9324\""
        ),
    };
    let text = value.and_then(|v| v.to_str().ok()).ok_or_else(bad)?.trim();
    let key = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let visible = key.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
    if key.is_empty() || key.len() > MAX_KEY_LEN || !visible {
        return Err(bad());
    }
    Ok(key.to_owned())
}

fn replay(stored: StoredResponse) -> Response {
    let mut response = respond(stored);
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The answer a handler gives for `value`, as it is stored: `status`, the JSON of `value`, and a
/// `Location` when given. Handlers build their response from this too, so that a replay is the
/// same answer byte for byte.
pub fn stored_json<T: serde::Serialize>(
    status: StatusCode,
    location: Option<String>,
    value: &T,
) -> StoredResponse {
    StoredResponse {
        status: status.as_u16(),
        location,
        body: serde_json::to_vec(value).expect("answers serialize"),
    }
}

/// A stored answer as the first request gets it.
pub fn respond(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(location) = stored.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    response
}
