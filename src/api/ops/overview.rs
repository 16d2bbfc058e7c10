//! `/admin/overview`, `/admin/history` and `/admin/tail`: the outbox at a glance, its last 15
//! minutes, and its newest events. Admins only.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::AppState;
use crate::api::query::{AppQuery, invalid_query};
use crate::api::spec::{self, Api};
use crate::auth::{Caller, Role};
use crate::domain::Topic;
use crate::error::ApiError;
use crate::ops::{SAMPLE_INTERVAL, Sample, WINDOW};
use crate::store::{outbox, tail};

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/overview", get(overview))
        .route("/admin/history", get(history))
        .route("/admin/tail", get(events))
}

/// The routes' operations in the OpenAPI document.
pub fn describe(api: &mut Api) {
    api.get(
        "/api/v1/admin/overview",
        "opsOverview",
        "The outbox and broker at a glance",
    )
    .roles(&[Role::Admin])
    .json::<Overview>(200, "The counts now.")
    .add();
    api.get(
        "/api/v1/admin/history",
        "opsHistory",
        "The outbox's last 15 minutes",
    )
    .roles(&[Role::Admin])
    .json::<History>(200, "The samples, oldest first.")
    .add();
    api.get("/api/v1/admin/tail", "opsTail", "The newest outbox events")
        .description("Without `after`, answers no events and the cursor to start from.")
        .roles(&[Role::Admin])
        .query::<TailQuery>()
        .json::<Tail>(200, "The events after `after`, filtered.")
        .add();
}

/// The answer of `/admin/overview`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Overview {
    /// When the counts were read.
    now: DateTime<Utc>,
    /// The outbox now.
    outbox: OutboxNow,
    /// The broker as the relay sees it.
    broker: BrokerNow,
}

/// The outbox's numbers.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OutboxNow {
    /// Rows waiting.
    pending: u64,
    /// Rows dead.
    dead: u64,
    /// Age of the oldest waiting row; 0 when none waits.
    oldest_pending_age_seconds: f64,
    /// Events acknowledged per second at the last sample.
    published_per_second: f64,
}

/// The relay's view of the broker.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BrokerNow {
    /// Whether the relay is on (`EVENT_OUTBOX_ENABLED`).
    relay_enabled: bool,
    /// Whether the connection is up.
    connected: bool,
    /// Whether the relay loop is running.
    relay_running: bool,
    /// When the relay last finished a step.
    relay_last_run: Option<DateTime<Utc>>,
    /// Why the last reconciliation of the streams failed, if it did.
    reconcile_error: Option<String>,
}

/// The answer of `/admin/history`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct History {
    /// Seconds between samples.
    interval_seconds: f64,
    /// Seconds of history kept.
    window_seconds: u64,
    /// Oldest first.
    samples: Vec<Sample>,
}

/// The answer of `/admin/tail`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Tail {
    /// Oldest first.
    events: Vec<Tailed>,
    /// Pass as `after` for the next call.
    next_after: i64,
}

async fn overview(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Overview>, ApiError> {
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
    Ok(Json(Overview {
        now,
        outbox: OutboxNow {
            pending: stats.pending,
            dead: stats.dead,
            oldest_pending_age_seconds: oldest_age,
            published_per_second: rate,
        },
        broker: BrokerNow {
            relay_enabled: relay.is_some(),
            connected: relay.as_ref().is_some_and(|r| r.broker_connected),
            relay_running: relay.as_ref().is_some_and(|r| r.relay_running),
            relay_last_run: relay.as_ref().and_then(|r| r.relay_last_run),
            reconcile_error,
        },
    }))
}

async fn history(State(state): State<AppState>, caller: Caller) -> Result<Json<History>, ApiError> {
    caller.require(&[Role::Admin])?;
    Ok(Json(History {
        interval_seconds: SAMPLE_INTERVAL.as_secs_f64(),
        window_seconds: WINDOW.as_secs(),
        samples: state.ops.history(),
    }))
}

/// The query of `/admin/tail`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TailQuery {
    /// Events after this outbox row id; without it, the answer is only the cursor.
    #[schemars(range(min = 0))]
    after: Option<i64>,
    /// Only this topic's events (one of the ten); empty for all.
    #[serde(default)]
    #[schemars(schema_with = "topic_or_empty")]
    topic: Option<String>,
    /// Only this order's events; empty for all.
    #[serde(default)]
    #[schemars(schema_with = "uuid_or_empty")]
    order: Option<String>,
    /// At most this many events, 1 to 500; 50 when absent.
    #[schemars(range(min = 1, max = MAX_TAIL))]
    limit: Option<u32>,
}

/// A topic name, or empty: the page sends its filters whether set or not.
fn topic_or_empty(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = spec::topic_schema(generator);
    if let Some(serde_json::Value::Array(names)) = schema.get_mut("enum") {
        names.push("".into());
    }
    schema
}

/// An order id, or empty.
fn uuid_or_empty(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [{ "type": "string", "format": "uuid" }, { "type": "string", "maxLength": 0 }]
    })
}

/// One event of the tail.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Tailed {
    /// The outbox row id.
    id: i64,
    /// The event id.
    event_id: String,
    /// The topic.
    topic: String,
    /// The subject key.
    key: String,
    /// The order, when the event names one.
    order_id: Option<String>,
    /// pending, published or dead.
    status: String,
    /// When it was committed.
    created_at: String,
    /// The stream that stored it.
    stream: Option<String>,
    /// Its sequence there.
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
) -> Result<Json<Tail>, ApiError> {
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
        return Ok(Json(Tail {
            events: Vec::new(),
            next_after: last,
        }));
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
    Ok(Json(Tail { events, next_after }))
}
