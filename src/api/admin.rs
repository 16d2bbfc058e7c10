//! `/admin/outbox`: what the relay has published, what waits, and what is dead; and requeueing
//! dead rows once their cause is fixed. Admins only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::idempotency::stored_json;
use crate::api::query::{AppQuery, invalid_query};
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::store::idempotency;
use crate::store::outbox::{self, OutboxRow, Requeue};

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/outbox", get(list))
        .route("/admin/outbox/{id}/requeue", post(requeue))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    limit: Option<u32>,
    after: Option<i64>,
}

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1000;

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s @ ("pending" | "published" | "dead")) => Some(s.to_owned()),
        Some(other) => {
            return Err(invalid_query(format!(
                "status: `{other}` is not one of pending, published, dead"
            )));
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid_query(format!("limit: must be 1 to {MAX_LIMIT}")));
    }
    let after = q.after.unwrap_or(0);
    let rows: Vec<OutboxRow> = state
        .store
        .read(move |conn| Ok::<_, ApiError>(outbox::list(conn, status.as_deref(), after, limit)?))
        .await?;
    let next = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(json!({ "rows": rows, "next_after": next })))
}

async fn requeue(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(raw): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let id: i64 = raw.parse().map_err(|_| ApiError::BadRequest {
        code: "invalid_id",
        message: format!("`{raw}` is not an outbox row id"),
    })?;
    idempotency::respond_with(move |outcome: &Requeue| {
        (*outcome == Requeue::Requeued).then(|| {
            stored_json(
                StatusCode::OK,
                None,
                &json!({ "id": id, "status": "pending" }),
            )
        })
    });
    let outcome = state
        .store
        .write(move |tx| Ok::<_, ApiError>(outbox::requeue(tx, id)?))
        .await?;
    match outcome {
        Requeue::Requeued => Ok(Json(json!({ "id": id, "status": "pending" }))),
        Requeue::Missing => Err(ApiError::NotFound(format!("no outbox row {id}"))),
        Requeue::Published => Err(ApiError::Conflict {
            code: "already_published",
            message: format!("outbox row {id} is already published"),
            details: json!({ "id": id, "status": "published" }),
        }),
    }
}
