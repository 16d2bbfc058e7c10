//! The HTTP API: `/health` and `/ready` at the root, everything else under `/api/v1`.
//!
//! - [`orders`] — create, read, list, update, status, confirm, cancel, stock override.
//! - [`chat`] — chat orders and chat links.
//! - [`order_view`] — an order as both answer it.
//! - [`products`] — the stock view and the catalogue's prices.
//! - [`admin`] — the outbox: list rows, requeue dead ones.
//! - [`ops`] — the operations page at `/ops` and the admin endpoints it reads.
//! - [`health`] — liveness, readiness and metrics.
//! - [`idempotency`] — the `Idempotency-Key` header: replays, refusals, claims.
//! - [`limits`] — the per-caller write limit and the request timeout.
//! - [`server`] — the HTTP server: head size and time, and the connection cap.
//! - [`openapi`] — the OpenAPI 3.1 document of all of the above, at `/api/v1/openapi.json`.
//! - [`spec`] — the builder each resource describes its operations with, for that document.
//! - [`json`], [`path`], [`context`], `bearer` — how bodies, path ids, request metadata and
//!   the caller's token are read.

pub use context::MAX_USER_AGENT_BYTES;
pub mod admin;
mod bearer;
pub mod chat;
pub mod context;
pub mod health;
pub mod idempotency;
pub mod json;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod order_view;
pub mod orders;
pub mod path;
pub mod products;
pub mod query;
pub mod server;
pub mod spec;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use ipnet::IpNet;
use tower_http::trace::TraceLayer;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::relay::RelayStatus;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Token verification.
    pub auth: Arc<Auth>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[IpNet]>,
    /// The service's metrics.
    pub metrics: Arc<Metrics>,
    /// The relay's status; `None` when the relay is disabled.
    pub relay: Option<Arc<RelayStatus>>,
    /// The latest sample of consumer lag, dead letters and publish failures.
    pub consumers: Arc<crate::consumer::lag::Watch>,
    /// The operations page's history and broker connection.
    pub ops: Arc<crate::ops::Ops>,
    /// Idempotency keys whose first request is still being handled.
    pub idempotency_in_flight: Arc<idempotency::InFlight>,
    /// The per-caller write limit.
    pub write_limit: Arc<limits::WriteLimit>,
    /// The longest a request may take.
    pub request_timeout: std::time::Duration,
    /// Which products of a customer's or the assistant's order need a catalogue price.
    pub catalogue_prices: crate::commands::CataloguePrices,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .merge(orders::router())
        .merge(chat::router())
        .merge(products::router())
        .merge(admin::router())
        .merge(ops::router())
        .merge(openapi::router())
        // Outermost first on the way in: the write limit, then Idempotency-Key.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::write_limit,
        ));
    Router::new()
        .nest("/api/v1", v1)
        .merge(health::router())
        .merge(ops::page_router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(json::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::timeout,
        ))
        // The ids are read before the request's span is made, so that the span, and every log
        // line inside it, carries them: the trace layer sits inside the ids middleware.
        .layer(TraceLayer::new_for_http().make_span_with(context::request_span))
        .layer(axum::middleware::from_fn(context::ids))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}
