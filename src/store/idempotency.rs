//! Idempotency keys: the stored answers of requests sent with an `Idempotency-Key`.
//!
//! A request with a key runs inside [`claimed`]. Its handler says, before calling its command,
//! how the command's result becomes the HTTP answer ([`respond_with`]); [`crate::store::Store::write`]
//! then records that answer in the command's own transaction. So an answer is stored exactly when
//! the change it reports is committed, and a retry finds either both or neither.

use std::any::Any;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, StoreError, Tx, timestamp};

tokio::task_local! {
    static CLAIM: Arc<Claim>;
}

/// The most rows one prune deletes: small, so that orders never wait long behind it.
pub const PRUNE_BATCH: u32 = super::retention::SWEEP_BATCH;

/// An answer as it is stored and replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The HTTP status.
    pub status: u16,
    /// The `Location` header, when the answer had one.
    pub location: Option<String>,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// A stored key: the request it belongs to and the answer it got.
#[derive(Debug, Clone)]
pub struct Record {
    /// SHA-256 (hex) of the first request's body.
    pub fingerprint: String,
    /// The answer to replay.
    pub response: StoredResponse,
}

type Render = Box<dyn Fn(&dyn Any) -> Option<StoredResponse> + Send + Sync>;

/// The key of the request being handled, and how its command's result becomes its answer.
pub struct Claim {
    scope: String,
    key: String,
    fingerprint: String,
    render: Mutex<Option<Render>>,
}

impl Claim {
    /// A claim on `key` for `scope` (caller, method, path), for a body with `fingerprint`.
    pub fn new(scope: String, key: String, fingerprint: String) -> Arc<Claim> {
        Arc::new(Claim {
            scope,
            key,
            fingerprint,
            render: Mutex::new(None),
        })
    }

    /// Stores the answer for `value` when the handler said how to render a value of its type.
    /// The renderer is used once: a second write in the same request records nothing.
    pub(super) fn record<T: 'static>(&self, tx: &Tx<'_>, value: &T) -> Result<(), StoreError> {
        let mut slot = self.render.lock().unwrap_or_else(|e| e.into_inner());
        let Some(response) = slot.as_ref().and_then(|render| render(value)) else {
            return Ok(());
        };
        insert(tx, &self.scope, &self.key, &self.fingerprint, &response)?;
        *slot = None;
        Ok(())
    }
}

/// Runs `handler` with `claim` as the request's idempotency claim.
pub async fn claimed<F: Future>(claim: Arc<Claim>, handler: F) -> F::Output {
    CLAIM.scope(claim, handler).await
}

/// The claim of the request this task is handling, if it has one.
pub(super) fn current() -> Option<Arc<Claim>> {
    CLAIM.try_with(Arc::clone).ok()
}

/// Says how this request's command result (a `T`) becomes its answer, so that the answer is
/// stored with the command; `None` stores nothing (a result the handler turns into a refusal).
/// Does nothing outside a request with an Idempotency-Key.
pub fn respond_with<T: 'static>(
    render: impl Fn(&T) -> Option<StoredResponse> + Send + Sync + 'static,
) {
    let _ = CLAIM.try_with(|claim| {
        let render: Render =
            Box::new(move |value: &dyn Any| value.downcast_ref::<T>().and_then(&render));
        *claim.render.lock().unwrap_or_else(|e| e.into_inner()) = Some(render);
    });
}

fn insert(
    tx: &Tx<'_>,
    scope: &str,
    key: &str,
    fingerprint: &str,
    response: &StoredResponse,
) -> Result<(), StoreError> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, status, location, body, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
        scope,
        key,
        fingerprint,
        response.status,
        response.location,
        response.body,
            timestamp(Utc::now()),
        ])?;
    if inserted == 0 {
        return Err(StoreError::IdempotencyKeyTaken(key.to_owned()));
    }
    Ok(())
}

/// The stored key `key` of `scope`, if any.
pub fn find(conn: &Connection, scope: &str, key: &str) -> Result<Option<Record>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT fingerprint, status, location, body FROM idempotency_keys
             WHERE scope = ?1 AND key = ?2",
        )?
        .query_row(params![scope, key], |row| {
            Ok(Record {
                fingerprint: row.get(0)?,
                response: StoredResponse {
                    status: row.get(1)?,
                    location: row.get(2)?,
                    body: row.get(3)?,
                },
            })
        })
        .optional()?)
}

/// Deletes at most `limit` keys stored before `cutoff`; returns how many.
pub fn delete_before(tx: &Tx<'_>, cutoff: DateTime<Utc>, limit: u32) -> Result<usize, StoreError> {
    Ok(tx
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE rowid IN (
             SELECT rowid FROM idempotency_keys WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
        )?
        .execute(params![timestamp(cutoff), limit])?)
}

/// Deletes keys older than `retention` in batches of [`PRUNE_BATCH`]; returns how many.
pub async fn prune_once(store: &Store, retention: Duration) -> Result<usize, StoreError> {
    super::retention::sweep(store, retention, delete_before).await
}

/// Runs [`prune_once`] every `interval` until `shutdown`, like the outbox cleanup.
pub async fn prune(
    store: Store,
    retention: Duration,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    super::retention::run(
        store,
        "idempotency keys",
        retention,
        interval,
        delete_before,
        shutdown,
    )
    .await;
}
