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

// The page holds no data: the data calls carry the token, so the page itself needs none.
async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
}
