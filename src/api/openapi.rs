//! The OpenAPI 3.1 document of the HTTP API, served at `/api/v1/openapi.json` and checked in as
//! `nats/openapi.json` (`make openapi` rewrites it; a test fails when the two differ).
//!
//! It is built from the handlers' own types: each resource describes its operations beside its
//! routes (a `describe` function naming the request and response types its handlers use), and
//! their JSON Schemas come from `schemars`, as the event schemas do. What operations share is
//! added here once: the error body and its codes, the bearer token, the request ids, the write
//! limit (429), `Idempotency-Key` on POSTs, the request timeout (408) and the body limit (413).
//!
//! This module assembles the document and serves it; [`super::spec`] is the builder the
//! resources describe their operations with.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use super::spec::Api;

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

static DOCUMENT: LazyLock<String> = LazyLock::new(|| render(&document()));

/// `GET /openapi.json`, under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(serve))
}

async fn serve() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// The document as it is served and checked in: pretty JSON and a final newline.
pub fn render(document: &Value) -> String {
    serde_json::to_string_pretty(document).expect("the document serializes") + "\n"
}

/// The whole document.
pub fn document() -> Value {
    let mut api = Api::new();
    super::orders::describe(&mut api);
    super::chat::describe(&mut api);
    super::products::describe(&mut api);
    super::admin::describe(&mut api);
    super::ops::describe(&mut api);
    super::health::describe(&mut api);
    api.get(PATH, "getOpenApi", "This document")
        .description("The OpenAPI 3.1 document of this API. No token needed.")
        .answer(
            200,
            "The document.",
            "application/json",
            json!({ "type": "object" }),
        )
        .add();
    api.finish()
}
