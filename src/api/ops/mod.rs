//! The operations page at `/ops`, and the admin endpoints only it needed.
//!
//! The page is HTML, CSS and plain JavaScript compiled into the binary: it works on a box with no
//! internet (no CDN, no external font). It signs in with an admin bearer token kept in the tab's
//! `sessionStorage`, and polls the admin API every few seconds.
//!
//! - [`overview`] — `/admin/overview` (outbox counts, rate, broker state), `/admin/history` (the
//!   15-minute chart), `/admin/tail` (new outbox events, filtered).
//! - [`broker`] — `/admin/streams`, `/admin/consumers`, `/admin/dead-letters` and their replay.

pub mod broker;
pub mod overview;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;
use super::spec::Api;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// The page's assets, at the root (`/ops`, `/ops/page.js`, `/ops/page.css`).
pub fn page_router() -> Router<AppState> {
    Router::new()
        .route("/ops", get(page))
        .route("/ops/page.js", get(script))
        .route("/ops/page.css", get(style))
}

/// The admin endpoints, under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(overview::router())
        .merge(broker::router())
}

/// The admin endpoints' operations in the OpenAPI document.
pub fn describe(api: &mut Api) {
    overview::describe(api);
    broker::describe(api);
}

/// What the page may load and who may frame it: its own script, style and API only, no inline
/// script, and no frame at all (a framed page could be clicked into a requeue or a replay).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The headers of the page and its assets: the policy, no content sniffing, no referrer (the
/// page's address is all it would tell, but nobody else needs it), no frames for browsers that
/// predate `frame-ancestors`.
const SECURITY: [(header::HeaderName, &str); 4] = [
    (header::CONTENT_SECURITY_POLICY, POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
];

/// One of the page's files with its type and the security headers.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        SECURITY,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

// The page holds no data: the data calls carry the token, so the page itself needs none.
async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}
