//! `/health` (the process is up), `/ready` (what it depends on, check by check) and `/metrics`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use super::spec::Api;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::metrics;
use crate::relay::RelayStatus;
use crate::store::{self, outbox};

/// The routes of this resource; they sit outside `/api/v1` and need no token.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

/// The routes' operations in the OpenAPI document.
pub fn describe(api: &mut Api) {
    api.get("/health", "health", "Liveness")
        .description("The process is up. No token needed.")
        .json::<Health>(200, "Up.")
        .add();
    api.get("/ready", "ready", "Readiness, check by check")
        .description(
            "Only the database decides the status code: with the broker away the service still \
             takes orders (their events wait in the outbox) and reports `degraded`. No token \
             needed for the status; the checks and warnings (consumer groups, filters, error \
             texts) only with an admin token.",
        )
        .json::<Readiness>(200, "Ready or degraded.")
        .json::<Readiness>(503, "The database cannot be used.")
        .add();
    api.get("/metrics", "metrics", "Prometheus metrics")
        .description("OpenMetrics text. No token needed.")
        .answer(
            200,
            "The metrics.",
            metrics::CONTENT_TYPE,
            json!({ "type": "string" }),
        )
        .add();
}

/// The answer of `/health`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// The answer of `/ready`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Readiness {
    /// `ready`, `degraded` or `not_ready`.
    status: &'static str,
    /// One entry per check: database, outbox, broker, streams, relay, and consumers once sampled.
    /// Only with an admin token.
    #[schemars(with = "Option<std::collections::BTreeMap<String, Check>>")]
    #[serde(skip_serializing_if = "Option::is_none")]
    checks: Option<Value>,
    /// The consumer warnings crossed (lag, dead letters, publish failures), as sentences. Only
    /// with an admin token.
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<Vec<String>>,
}

/// What every check has; each adds its own facts.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct Check {
    /// `ok`, or what is wrong (`error`, `pending`, `warning`, `disabled`, `unknown`).
    status: String,
}

async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// One entry per check. Only the database decides the status code: with the broker away the
/// service still takes orders (their events wait in the outbox), so it stays in rotation and
/// reports `degraded`.
///
/// Anyone may ask (a probe has no token) and learns the status; what the checks say (group names,
/// filters, database error texts) is for an admin token only.
async fn ready(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> (StatusCode, Json<Readiness>) {
    let detailed = matches!(
        caller,
        Ok(Caller {
            role: Role::Admin,
            ..
        })
    );
    // The readers may answer while no write can succeed any more.
    let stats = if state.store.writer_running() {
        state
            .store
            .read(|conn| {
                store::ping(conn)?;
                outbox::stats(conn).map_err(ApiError::from)
            })
            .await
    } else {
        Err(ApiError::from(store::StoreError::WriterGone))
    };
    let database_ok = stats.is_ok();
    let (database, outbox) = database_checks(stats);
    let mut checks = json!({ "database": database, "outbox": outbox });
    let degraded = match &state.relay {
        None => {
            checks["relay"] = json!({ "status": "disabled" });
            false
        }
        Some(status) => relay_checks(&mut checks, status),
    };
    // The spec's alerting thresholds: warnings, which never take the service out of rotation.
    let consumers = state.consumers.snapshot();
    if consumers.sampled_at.is_some() {
        checks["consumers"] = json!({
            "status": if consumers.warnings.is_empty() { "ok" } else { "warning" },
            "warnings": consumers.warnings,
            "dead_letters": consumers.dead_letters,
            "publish_failure_ratio": consumers.publish_failure_ratio,
            "groups": consumers.groups,
            "group_totals": consumers.group_totals,
            "error": consumers.error,
            "sampled_at": consumers.sampled_at,
        });
    }
    let status = match (database_ok, degraded) {
        (false, _) => "not_ready",
        (true, true) => "degraded",
        (true, false) => "ready",
    };
    let code = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Readiness {
            status,
            checks: detailed.then_some(checks),
            warnings: detailed.then_some(consumers.warnings),
        }),
    )
}

/// The `database` and `outbox` checks from the outbox's numbers, or from why they could not be
/// read.
fn database_checks(stats: Result<outbox::OutboxCounts, ApiError>) -> (Value, Value) {
    match stats {
        Ok(stats) => {
            let age = stats
                .oldest_pending_at
                .map_or(0.0, |t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0);
            (
                json!({ "status": "ok" }),
                json!({
                    "status": "ok",
                    "pending": stats.pending,
                    "dead": stats.dead,
                    "oldest_pending_age_seconds": age,
                }),
            )
        }
        Err(e) => (
            json!({ "status": "error", "error": e.to_string() }),
            json!({ "status": "unknown" }),
        ),
    }
}

/// Adds the `broker`, `streams` and `relay` checks; answers whether the relay side is degraded.
fn relay_checks(checks: &mut Value, status: &RelayStatus) -> bool {
    let s = status.snapshot();
    let mut degraded = !s.broker_connected || !s.relay_running;
    checks["broker"] = json!({
        "status": if s.broker_connected { "ok" } else { "error" },
        "connected": s.broker_connected,
    });
    checks["streams"] = match &s.streams {
        None => {
            degraded = true;
            json!({ "status": "pending", "reconciled": false })
        }
        Some(Ok(summary)) => json!({
            "status": "ok",
            "reconciled": true,
            "created": summary.created,
            "updated": summary.updated,
            "drift": summary.drift,
            "clamps": summary.clamps,
        }),
        Some(Err(e)) => {
            degraded = true;
            json!({ "status": "error", "reconciled": false, "error": e })
        }
    };
    checks["relay"] = json!({
        "status": if s.relay_running { "ok" } else { "error" },
        "alive": s.relay_running,
        "last_run": s.relay_last_run,
        // Streams that refused atomic batches (drift, an older server): still published, one
        // message at a time.
        "streams_one_by_one": s.streams_one_by_one,
    });
    degraded
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let stats = state
        .store
        .read(|conn| outbox::stats(conn).map_err(ApiError::from))
        .await?;
    Ok((
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(&stats, Utc::now()),
    ))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[tokio::test]
    async fn a_dead_writer_thread_makes_the_service_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("orders.db");
        let cli = crate::config::Cli::try_parse_from([
            "order-service",
            "--database-path",
            db.to_str().unwrap(),
            "--auth-jwt-secret",
            "a-test-secret-of-at-least-32-bytes!",
            "--event-outbox-enabled",
            "false",
        ])
        .unwrap();
        let state = crate::app::build(&cli.config).unwrap();
        let admin = || {
            Ok(Caller {
                user_id: uuid::Uuid::now_v7(),
                role: Role::Admin,
            })
        };
        let (code, _) = ready(State(state.clone()), admin()).await;
        assert_eq!(code, StatusCode::OK);

        state.store.kill_writer_for_test().await;
        let (code, Json(bare)) = ready(
            State(state.clone()),
            Err(ApiError::Unauthorized("no token".into())),
        )
        .await;
        let bare = serde_json::to_value(bare).unwrap();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{bare}");
        assert_eq!(
            bare,
            json!({"status": "not_ready"}),
            "the error text is not public"
        );
        let (code, Json(body)) = ready(State(state), admin()).await;
        let body = serde_json::to_value(body).unwrap();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["status"], "not_ready", "{body}");
        assert_eq!(body["checks"]["database"]["status"], "error", "{body}");
        let error = body["checks"]["database"]["error"].as_str().unwrap();
        assert!(error.contains("writer"), "{body}");
    }
}
