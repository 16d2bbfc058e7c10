//! `/admin/outbox`: what the relay has published, what waits, and what is dead; and requeueing
//! dead rows once their cause is fixed. Admins only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use super::idempotency::stored_json;
use super::spec::Api;
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

/// The routes' operations in the OpenAPI document.
pub fn describe(api: &mut Api) {
    api.get("/api/v1/admin/outbox", "listOutbox", "List outbox rows")
        .description("In commit order, from `after` on.")
        .roles(&[Role::Admin])
        .query::<ListQuery>()
        .json::<OutboxPage>(200, "One page of rows.")
        .add();
    api.post(
        "/api/v1/admin/outbox/{id}/requeue",
        "requeueOutboxRow",
        "Requeue a dead outbox row",
    )
    .description("The relay publishes it again, with fresh retries.")
    .roles(&[Role::Admin])
    .path_param(
        "id",
        "The row's id.",
        json!({ "type": "integer", "format": "int64" }),
    )
    .error(400, &["invalid_id"])
    .error(404, &["not_found"])
    .error(409, &["already_published"])
    .json::<Requeued>(200, "The row waits to be published again.")
    .add();
}

/// The query of `GET /admin/outbox`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only rows in this state.
    #[schemars(with = "Option<RowStatus>")]
    status: Option<String>,
    /// Rows per page, 1 to 1000; 50 when absent.
    #[schemars(range(min = 1, max = MAX_LIMIT))]
    limit: Option<u32>,
    /// The `next_after` of the previous page; 0 when absent.
    after: Option<i64>,
}

/// The states of an outbox row.
#[derive(JsonSchema)]
#[schemars(rename_all = "snake_case")]
#[allow(dead_code)]
enum RowStatus {
    /// Waiting to be published.
    Pending,
    /// Acknowledged by the broker.
    Published,
    /// Failed for good; requeue it once its cause is fixed.
    Dead,
}

/// One page of `GET /admin/outbox`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OutboxPage {
    /// In commit order.
    rows: Vec<OutboxRow>,
    /// Pass as `after` for the next page; null on the last page.
    next_after: Option<i64>,
}

/// The answer to a requeue.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Requeued {
    /// The row.
    id: i64,
    /// Always `pending`.
    status: &'static str,
}

/// The requeued row's answer.
fn requeued(id: i64) -> Requeued {
    Requeued {
        id,
        status: "pending",
    }
}

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1000;

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<ListQuery>,
) -> Result<Json<OutboxPage>, ApiError> {
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
    Ok(Json(OutboxPage {
        rows,
        next_after: next,
    }))
}

async fn requeue(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(raw): axum::extract::Path<String>,
) -> Result<Json<Requeued>, ApiError> {
    caller.require(&[Role::Admin])?;
    let id: i64 = raw.parse().map_err(|_| ApiError::BadRequest {
        code: "invalid_id",
        message: format!("`{raw}` is not an outbox row id"),
    })?;
    idempotency::respond_with(move |outcome: &Requeue| {
        (*outcome == Requeue::Requeued).then(|| stored_json(StatusCode::OK, None, &requeued(id)))
    });
    let outcome = state
        .store
        .write(move |tx| Ok::<_, ApiError>(outbox::requeue(tx, id)?))
        .await?;
    match outcome {
        Requeue::Requeued => Ok(Json(requeued(id))),
        Requeue::Missing => Err(ApiError::NotFound(format!("no outbox row {id}"))),
        Requeue::Published => Err(ApiError::Conflict {
            code: "already_published",
            message: format!("outbox row {id} is already published"),
            details: json!({ "id": id, "status": "published" }),
        }),
    }
}
