//! `/admin/streams`, `/admin/consumers` and `/admin/dead-letters`: the topic streams, the
//! consumer groups and their dead letters as the broker has them, and replaying dead letters.
//! Admins only. These read the broker: while it cannot be reached they answer 503.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::api::json::AppJson;
use crate::api::query::{AppQuery, invalid_query};
use crate::api::spec::{self, Api};
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

/// The routes' operations in the OpenAPI document.
pub fn describe(api: &mut Api) {
    let broker = ["broker_unreachable", "broker_error"];
    api.get("/api/v1/admin/streams", "opsStreams", "The topic streams")
        .description("As the broker has them, beside what the topic table asks for.")
        .roles(&[Role::Admin])
        .json::<Streams>(200, "One row per topic.")
        .error(503, &broker)
        .add();
    api.get(
        "/api/v1/admin/consumers",
        "opsConsumers",
        "The consumer groups' lag",
    )
    .description("The latest sample; it is taken in the background.")
    .roles(&[Role::Admin])
    .json::<Consumers>(200, "The groups.")
    .add();
    api.get(
        "/api/v1/admin/dead-letters",
        "opsDeadLetters",
        "Dead letters",
    )
    .roles(&[Role::Admin])
    .query::<LetterQuery>()
    .json::<Letters>(200, "The dead letters, oldest first.")
    .error(400, &["invalid_group", "invalid_topic"])
    .error(503, &broker)
    .add();
    api.post(
        "/api/v1/admin/dead-letters/replay",
        "opsReplayDeadLetters",
        "Replay a group's dead letters",
    )
    .description(
        "Sends them back to the group, of one topic or all: each letter's event as its stream \
         stored it. A letter that does not match its stored event (or whose event has left its \
         stream) is refused and kept; the answer lists it with why.",
    )
    .roles(&[Role::Admin])
    .body::<ReplayBody>()
    .json::<Replayed>(200, "How many were sent back, and which were refused.")
    .error(400, &["invalid_group", "invalid_topic"])
    .error(503, &broker)
    .add();
    api.post(
        "/api/v1/admin/dead-letters/{sequence}/replay",
        "opsReplayDeadLetter",
        "Replay one dead letter",
    )
    .roles(&[Role::Admin])
    .path_param(
        "sequence",
        "The dead letter's sequence in ORDER_DLQ.",
        serde_json::json!({ "type": "integer", "format": "uint64", "minimum": 0 }),
    )
    .body::<ReplayOneBody>()
    .json::<ReplayedOne>(200, "It was sent back.")
    .error(400, &["invalid_sequence", "invalid_group"])
    .error(404, &["not_found"])
    .error(409, &["letter_not_replayable"])
    .error(503, &broker)
    .add();
}

/// The answer of `/admin/streams`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Streams {
    /// One per topic of the table.
    streams: Vec<StreamView>,
}

/// A topic's stream.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StreamView {
    /// Its name.
    stream: String,
    /// Its topic.
    topic: String,
    /// Whether the broker has it.
    exists: bool,
    /// Messages stored.
    messages: Option<u64>,
    /// Bytes stored.
    bytes: Option<u64>,
    /// Replicas the table asks for.
    replicas_wanted: u32,
    /// Replicas configured.
    replicas: Option<usize>,
    /// The table's retention.
    retention_seconds: u64,
    /// The table's partitions.
    partitions: Option<u32>,
    /// Whether the stream allows atomic batches.
    allow_atomic: bool,
    /// Whether the relay sends it batches.
    batching: bool,
    /// What differs from the table and was not changed.
    drift: Vec<String>,
    /// Settings clamped to what the cluster can do.
    clamps: Vec<String>,
}

/// The answer of `/admin/consumers`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Consumers {
    /// When the sample was taken; null before the first.
    sampled_at: Option<DateTime<Utc>>,
    /// Why the last sample failed, if it did.
    error: Option<String>,
    /// Every group's consumers.
    groups: Vec<GroupView>,
    /// Dead letters held, all groups.
    dead_letters: u64,
    /// The thresholds crossed, as sentences.
    warnings: Vec<String>,
}

/// One durable consumer of a group.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GroupView {
    /// The group.
    group: String,
    /// The topic, or `replay`.
    topic: String,
    /// The durable consumer's name.
    consumer: String,
    /// The stream.
    stream: String,
    /// The subject filter.
    filter: String,
    /// The partition the filter names; null for the whole topic.
    partition: Option<u32>,
    /// Pending plus ack-pending.
    lag_messages: u64,
    /// Age of the oldest unacknowledged event.
    lag_seconds: f64,
    /// Messages not yet delivered.
    pending: u64,
    /// Messages delivered and not yet acknowledged.
    ack_pending: u64,
    /// Messages delivered more than once.
    redelivered: u64,
    /// The group's dead letters of this topic.
    dead_letters: u64,
}

/// The answer of `/admin/dead-letters`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Letters {
    /// Oldest first, at most `limit`.
    letters: Vec<LetterView>,
    /// The `after` of the next page, when more letters follow.
    next_after: Option<u64>,
}

/// One dead letter.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LetterView {
    /// Its sequence in `ORDER_DLQ`.
    sequence: u64,
    /// The group that gave up.
    group: String,
    /// The topic.
    topic: String,
    /// `schema`, `permanent` or `max_deliver`.
    reason: String,
    /// The error.
    error: String,
    /// The stream it was first delivered from.
    source_stream: String,
    /// Its sequence there.
    source_sequence: u64,
    /// Deliveries when it was given up.
    delivered: u64,
    /// When it was dead-lettered.
    time: DateTime<Utc>,
    /// How long ago.
    age_seconds: f64,
    /// The original body, as text: its first [`MAX_SHOWN_BODY`] bytes.
    message: String,
    /// Whether `message` was cut.
    message_truncated: bool,
}

/// How much of a dead letter's body the listing shows: a page of large letters stays small.
const MAX_SHOWN_BODY: usize = 16 * 1024;
/// Letters per page when the query says none.
const DEFAULT_LETTERS: u32 = 100;
/// Letters per page at most: what a page holds in memory, bodies included, is bounded by it.
const MAX_LETTERS: u32 = 500;

/// The answer of a replay of a group's dead letters.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Replayed {
    /// The group.
    group: String,
    /// The topic, or null for all.
    topic: Option<String>,
    /// How many were sent back.
    replayed: usize,
    /// Letters kept because they do not match the event their stream stored, with why.
    refused: Vec<RefusedLetter>,
}

/// A dead letter a replay refused.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RefusedLetter {
    /// Its sequence in ORDER_DLQ.
    sequence: u64,
    /// Why it was not replayed.
    reason: String,
}

/// The answer of a replay of one dead letter.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReplayedOne {
    /// The group.
    group: String,
    /// The dead letter's sequence.
    sequence: u64,
    /// Always 1.
    replayed: u32,
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

async fn streams(State(state): State<AppState>, caller: Caller) -> Result<Json<Streams>, ApiError> {
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
        out.push(StreamView {
            exists: live.is_some(),
            messages: live.map(|l| l.messages),
            bytes: live.map(|l| l.bytes),
            replicas_wanted: row.replicas_wanted,
            replicas: live.map(|l| l.replicas),
            retention_seconds: row.retention.as_secs(),
            partitions,
            allow_atomic: atomic,
            batching: atomic && !one_by_one.contains(&row.stream),
            drift,
            clamps,
            stream: row.stream,
            topic: row.topic,
        });
    }
    Ok(Json(Streams { streams: out }))
}

async fn consumers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Consumers>, ApiError> {
    caller.require(&[Role::Admin])?;
    let snapshot = state.consumers.snapshot();
    let groups: Vec<GroupView> = snapshot
        .groups
        .iter()
        .map(|row| {
            // The filter `<topic>.<p>.>` names a partition; `<topic>.>` takes them all.
            let partition = row
                .filter
                .strip_prefix(&format!("{}.", row.topic))
                .and_then(|rest| rest.strip_suffix(".>"))
                .and_then(|p| p.parse::<u32>().ok());
            GroupView {
                group: row.group.clone(),
                topic: row.topic.clone(),
                consumer: row.consumer.clone(),
                stream: row.stream.clone(),
                filter: row.filter.clone(),
                partition,
                lag_messages: row.lag_messages(),
                lag_seconds: row.lag_seconds,
                pending: row.pending,
                ack_pending: row.ack_pending,
                redelivered: row.redelivered,
                dead_letters: row.dead_letters,
            }
        })
        .collect();
    Ok(Json(Consumers {
        sampled_at: snapshot.sampled_at,
        error: snapshot.error,
        groups,
        dead_letters: snapshot.dead_letters,
        warnings: snapshot.warnings,
    }))
}

/// The query of `/admin/dead-letters`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LetterQuery {
    /// Only this group's (letters, digits, - and _).
    #[serde(default)]
    #[schemars(schema_with = "spec::group_schema")]
    group: Option<String>,
    /// Only this topic's (one of the ten).
    #[serde(default)]
    #[schemars(schema_with = "spec::topic_schema")]
    topic: Option<String>,
    /// Letters per page, 1 to 500; 100 when absent.
    #[schemars(range(min = 1, max = MAX_LETTERS))]
    limit: Option<u32>,
    /// The `next_after` of the previous page; 0 when absent.
    after: Option<u64>,
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
) -> Result<Json<Letters>, ApiError> {
    caller.require(&[Role::Admin])?;
    if let Some(group) = &q.group {
        valid_group(group)?;
    }
    valid_topic(q.topic.as_deref())?;
    let js = broker(&state)?;
    // Without a group, every group's: `*` is the group token of the subject filter.
    let group = q.group.as_deref().unwrap_or("*");
    let limit = q.limit.unwrap_or(DEFAULT_LETTERS);
    if !(1..=MAX_LETTERS).contains(&limit) {
        return Err(invalid_query(format!("limit: must be 1 to {MAX_LETTERS}")));
    }
    let (letters, more) = dlq::page(
        &js,
        group,
        q.topic.as_deref(),
        q.after.unwrap_or(0),
        limit as usize,
        // Read cut: a page of large letters holds no more than it shows.
        MAX_SHOWN_BODY,
    )
    .await
    .map_err(broker_error)?;
    let next_after = more.then(|| letters.last().map(|l| l.sequence)).flatten();
    let now = Utc::now();
    let letters = letters
        .into_iter()
        .map(|l| LetterView {
            age_seconds: (now - l.time).num_milliseconds().max(0) as f64 / 1000.0,
            message_truncated: l.size > MAX_SHOWN_BODY,
            message: String::from_utf8_lossy(&l.payload).into_owned(),
            sequence: l.sequence,
            group: l.group,
            topic: l.topic,
            reason: l.reason,
            error: l.error,
            source_stream: l.source.0,
            source_sequence: l.source.1,
            delivered: l.delivered,
            time: l.time,
        })
        .collect();
    Ok(Json(Letters {
        letters,
        next_after,
    }))
}

/// The body of `/admin/dead-letters/replay`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    /// The group whose dead letters go back to it.
    #[schemars(schema_with = "spec::group_schema")]
    group: String,
    /// Only this topic's; all when absent or null.
    #[serde(default)]
    #[schemars(schema_with = "spec::nullable_topic_schema")]
    topic: Option<String>,
}

/// The body of `/admin/dead-letters/{sequence}/replay`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReplayOneBody {
    /// The group the letter goes back to.
    #[schemars(schema_with = "spec::group_schema")]
    group: String,
}

async fn replay_all(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<ReplayBody>,
) -> Result<Json<Replayed>, ApiError> {
    caller.require(&[Role::Admin])?;
    valid_group(&body.group)?;
    valid_topic(body.topic.as_deref())?;
    let js = broker(&state)?;
    let replayed = dlq::replay(&js, &body.group, body.topic.as_deref())
        .await
        .map_err(broker_error)?;
    Ok(Json(Replayed {
        group: body.group,
        topic: body.topic,
        replayed: replayed.sent,
        refused: replayed
            .refused
            .into_iter()
            .map(|(sequence, why)| RefusedLetter {
                sequence,
                reason: why.to_string(),
            })
            .collect(),
    }))
}

async fn replay_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    AppJson(body): AppJson<ReplayOneBody>,
) -> Result<Json<ReplayedOne>, ApiError> {
    caller.require(&[Role::Admin])?;
    let sequence: u64 = raw.parse().map_err(|_| ApiError::BadRequest {
        code: "invalid_sequence",
        message: format!("`{raw}` is not a dead letter's sequence"),
    })?;
    valid_group(&body.group)?;
    let js = broker(&state)?;
    match dlq::replay_one(&js, &body.group, sequence)
        .await
        .map_err(broker_error)?
    {
        dlq::ReplayedOne::Sent => Ok(Json(ReplayedOne {
            group: body.group,
            sequence,
            replayed: 1,
        })),
        dlq::ReplayedOne::NotFound => Err(ApiError::NotFound(format!(
            "group {} has no dead letter {sequence}",
            body.group
        ))),
        dlq::ReplayedOne::Refused(why) => Err(ApiError::Conflict {
            code: "letter_not_replayable",
            message: format!("dead letter {sequence} is not replayed: {why}"),
            details: serde_json::json!({ "sequence": sequence, "reason": why.to_string() }),
        }),
    }
}
