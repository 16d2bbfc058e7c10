//! `/admin/streams`, `/admin/consumers` and `/admin/dead-letters`: the topic streams, the
//! consumer groups and their dead letters as the broker has them, and replaying dead letters.
//! Admins only. These read the broker: while it cannot be reached they answer 503.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::json::AppJson;
use crate::api::query::AppQuery;
use crate::auth::{Caller, Role};
use crate::consumer::{dlq, is_valid_group};
use crate::domain::Topic;
use crate::error::ApiError;

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/streams", get(streams))
        .route("/admin/consumers", get(consumers))
        .route("/admin/dead-letters", get(dead_letters))
        .route("/admin/dead-letters/replay", post(replay_all))
        .route("/admin/dead-letters/{sequence}/replay", post(replay_one))
}

fn broker(state: &AppState) -> Result<async_nats::jetstream::Context, ApiError> {
    state.ops.jetstream().ok_or_else(|| ApiError::Unavailable {
        code: "broker_unreachable",
        message: "the broker cannot be reached now".to_owned(),
    })
}

fn broker_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable {
        code: "broker_error",
        message: format!("the broker did not answer: {e}"),
    }
}

async fn streams(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let js = broker(&state)?;
    let topics = state.ops.topics();
    let rows = crate::bus::list(&js, topics).await.map_err(broker_error)?;
    let relay = state.relay.as_ref().map(|r| r.snapshot());
    let summary = relay
        .as_ref()
        .and_then(|r| r.streams.clone())
        .and_then(Result::ok);
    let one_by_one = relay.map(|r| r.streams_one_by_one).unwrap_or_default();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let about = |lines: &[String]| -> Vec<String> {
            let prefix = format!("{} ", row.stream);
            lines
                .iter()
                .filter(|l| l.starts_with(&prefix))
                .cloned()
                .collect()
        };
        let (drift, clamps) = summary
            .as_ref()
            .map(|s| (about(&s.drift), about(&s.clamps)))
            .unwrap_or_default();
        // Batching is on when the stream allows atomic batches and the relay has not fallen back
        // to one message at a time for it.
        let atomic = match js.get_stream(&row.stream).await {
            Ok(stream) => stream.cached_info().config.allow_atomic_publish,
            Err(_) => false,
        };
        let partitions = topics
            .iter()
            .find(|t| t.name == row.topic)
            .map(|t| t.partitions);
        let live = row.live.as_ref();
        out.push(json!({
            "stream": row.stream,
            "topic": row.topic,
            "exists": live.is_some(),
            "messages": live.map(|l| l.messages),
            "bytes": live.map(|l| l.bytes),
            "replicas_wanted": row.replicas_wanted,
            "replicas": live.map(|l| l.replicas),
            "retention_seconds": row.retention.as_secs(),
            "partitions": partitions,
            "allow_atomic": atomic,
            "batching": atomic && !one_by_one.contains(&row.stream),
            "drift": drift,
            "clamps": clamps,
        }));
    }
    Ok(Json(json!({ "streams": out })))
}

async fn consumers(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let snapshot = state.consumers.snapshot();
    let groups: Vec<Value> = snapshot
        .groups
        .iter()
        .map(|row| {
            // The filter `<topic>.<p>.>` names a partition; `<topic>.>` takes them all.
            let partition = row
                .filter
                .strip_prefix(&format!("{}.", row.topic))
                .and_then(|rest| rest.strip_suffix(".>"))
                .and_then(|p| p.parse::<u32>().ok());
            json!({
                "group": row.group,
                "topic": row.topic,
                "consumer": row.consumer,
                "stream": row.stream,
                "filter": row.filter,
                "partition": partition,
                "lag_messages": row.lag_messages(),
                "lag_seconds": row.lag_seconds,
                "pending": row.pending,
                "ack_pending": row.ack_pending,
                "redelivered": row.redelivered,
                "dead_letters": row.dead_letters,
            })
        })
        .collect();
    Ok(Json(json!({
        "sampled_at": snapshot.sampled_at,
        "error": snapshot.error,
        "groups": groups,
        "dead_letters": snapshot.dead_letters,
        "warnings": snapshot.warnings,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LetterQuery {
    group: Option<String>,
    topic: Option<String>,
}

fn valid_group(group: &str) -> Result<(), ApiError> {
    if is_valid_group(group) {
        Ok(())
    } else {
        Err(ApiError::BadRequest {
            code: "invalid_group",
            message: format!("`{group}` is not a group name (letters, digits, - and _)"),
        })
    }
}

fn valid_topic(topic: Option<&str>) -> Result<(), ApiError> {
    match topic {
        Some(t) if Topic::parse(t).is_none() => Err(ApiError::BadRequest {
            code: "invalid_topic",
            message: format!("`{t}` is not one of the ten topics"),
        }),
        _ => Ok(()),
    }
}

async fn dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<LetterQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    if let Some(group) = &q.group {
        valid_group(group)?;
    }
    valid_topic(q.topic.as_deref())?;
    let js = broker(&state)?;
    // Without a group, every group's: `*` is the group token of the subject filter.
    let group = q.group.as_deref().unwrap_or("*");
    let letters = dlq::list(&js, group, q.topic.as_deref())
        .await
        .map_err(broker_error)?;
    let now = Utc::now();
    let letters: Vec<Value> = letters
        .iter()
        .map(|l| {
            json!({
                "sequence": l.sequence,
                "group": l.group,
                "topic": l.topic,
                "reason": l.reason,
                "error": l.error,
                "source_stream": l.source.0,
                "source_sequence": l.source.1,
                "delivered": l.delivered,
                "time": l.time,
                "age_seconds": (now - l.time).num_milliseconds().max(0) as f64 / 1000.0,
                "message": String::from_utf8_lossy(&l.payload),
            })
        })
        .collect();
    Ok(Json(json!({ "letters": letters })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    group: String,
    topic: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayOneBody {
    group: String,
}

async fn replay_all(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<ReplayBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    valid_group(&body.group)?;
    valid_topic(body.topic.as_deref())?;
    let js = broker(&state)?;
    let replayed = dlq::replay(&js, &body.group, body.topic.as_deref())
        .await
        .map_err(broker_error)?;
    Ok(Json(
        json!({ "group": body.group, "topic": body.topic, "replayed": replayed }),
    ))
}

async fn replay_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    AppJson(body): AppJson<ReplayOneBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let sequence: u64 = raw.parse().map_err(|_| ApiError::BadRequest {
        code: "invalid_sequence",
        message: format!("`{raw}` is not a dead letter's sequence"),
    })?;
    valid_group(&body.group)?;
    let js = broker(&state)?;
    if dlq::replay_one(&js, &body.group, sequence)
        .await
        .map_err(broker_error)?
    {
        Ok(Json(
            json!({ "group": body.group, "sequence": sequence, "replayed": 1 }),
        ))
    } else {
        Err(ApiError::NotFound(format!(
            "group {} has no dead letter {sequence}",
            body.group
        )))
    }
}
