//! `/admin/overview`, `/admin/history` and `/admin/tail`: the outbox at a glance, its last 15
//! minutes, and its newest events. Admins only.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::AppState;
use crate::api::query::{AppQuery, invalid_query};
use crate::auth::{Caller, Role};
use crate::domain::Topic;
use crate::error::ApiError;
use crate::ops::{SAMPLE_INTERVAL, WINDOW};
use crate::store::{outbox, tail};

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/overview", get(overview))
        .route("/admin/history", get(history))
        .route("/admin/tail", get(events))
}

async fn overview(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    // The counts are read now, not from the last sample, so they agree with /admin/outbox.
    let stats = state.store.read(outbox::stats).await?;
    let now = Utc::now();
    let oldest_age = stats
        .oldest_pending_at
        .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
    let rate = state.ops.latest().map_or(0.0, |s| s.published_per_second);
    let relay = state.relay.as_ref().map(|r| r.snapshot());
    let reconcile_error = relay
        .as_ref()
        .and_then(|r| r.streams.clone())
        .and_then(Result::err);
    Ok(Json(json!({
        "now": now,
        "outbox": {
            "pending": stats.pending,
            "dead": stats.dead,
            "oldest_pending_age_seconds": oldest_age,
            "published_per_second": rate,
        },
        "broker": {
            "relay_enabled": relay.is_some(),
            "connected": relay.as_ref().is_some_and(|r| r.broker_connected),
            "relay_running": relay.as_ref().is_some_and(|r| r.relay_running),
            "relay_last_run": relay.as_ref().and_then(|r| r.relay_last_run),
            "reconcile_error": reconcile_error,
        },
    })))
}

async fn history(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    Ok(Json(json!({
        "interval_seconds": SAMPLE_INTERVAL.as_secs_f64(),
        "window_seconds": WINDOW.as_secs(),
        "samples": state.ops.history(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TailQuery {
    after: Option<i64>,
    topic: Option<String>,
    order: Option<String>,
    limit: Option<u32>,
}

/// One event of the tail.
#[derive(Debug, Serialize)]
struct Tailed {
    id: i64,
    event_id: String,
    topic: String,
    key: String,
    order_id: Option<String>,
    status: String,
    created_at: String,
    stream: Option<String>,
    stream_seq: Option<i64>,
}

const DEFAULT_TAIL: u32 = 50;
const MAX_TAIL: u32 = 500;
/// Rows read per call: a filter that matches few rows still moves the cursor this far.
const SCAN: u32 = 1000;

async fn events(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<TailQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let invalid = |message: String| invalid_query(message);
    let topic = match q.topic.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(
            Topic::parse(t)
                .ok_or_else(|| invalid(format!("topic: `{t}` is not one of the ten topics")))?,
        ),
    };
    let order = match q.order.as_deref().filter(|o| !o.is_empty()) {
        None => None,
        Some(o) => Some(
            Uuid::parse_str(o)
                .map_err(|_| invalid(format!("order: `{o}` is not an order id")))?
                .to_string(),
        ),
    };
    let limit = q.limit.unwrap_or(DEFAULT_TAIL);
    if !(1..=MAX_TAIL).contains(&limit) {
        return Err(invalid(format!("limit: must be 1 to {MAX_TAIL}")));
    }
    if q.after.is_some_and(|a| a < 0) {
        return Err(invalid("after: must be 0 or more".to_owned()));
    }
    // Without a cursor the tail starts now: the newest row is where the next call begins.
    let Some(after) = q.after else {
        let last = state.store.read(tail::last_id).await?;
        return Ok(Json(json!({ "events": [], "next_after": last })));
    };
    let rows = state
        .store
        .read(move |conn| outbox::list(conn, None, after, SCAN))
        .await?;
    let mut next_after = after;
    let mut events = Vec::new();
    for row in rows {
        next_after = row.id;
        let order_id = row.payload["data"]["order_id"].as_str().map(str::to_owned);
        let wanted = topic.is_none_or(|t| t.as_str() == row.topic)
            && order
                .as_ref()
                .is_none_or(|o| *o == row.subject_key || order_id.as_ref() == Some(o));
        if !wanted {
            continue;
        }
        events.push(Tailed {
            id: row.id,
            event_id: row.event_id,
            topic: row.topic,
            key: row.subject_key,
            order_id,
            status: row.status,
            created_at: row.created_at,
            stream: row.stream,
            stream_seq: row.stream_seq,
        });
        if events.len() == limit as usize {
            break;
        }
    }
    Ok(Json(json!({ "events": events, "next_after": next_after })))
}
