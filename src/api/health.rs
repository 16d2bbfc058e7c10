//! `/health` (the process is up) and `/ready` (its dependencies answer).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;
use crate::store;

/// The routes of this resource; they sit outside `/api/v1` and need no token.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// One entry per check; 503 when any fails.
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = state
        .store
        .read(|conn| store::ping(conn).map_err(ApiError::from))
        .await;
    let (ok, database) = match database {
        Ok(()) => (true, json!({ "status": "ok" })),
        Err(e) => (false, json!({ "status": "error", "error": e.to_string() })),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ok { "ready" } else { "not_ready" },
            "checks": { "database": database },
        })),
    )
}
