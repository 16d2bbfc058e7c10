//! Deleting published rows once they are older than the retention, so the outbox stays bounded.

use std::future::Future;
use std::time::Duration;

use crate::store::{Store, StoreError, outbox, retention};

/// The most rows one delete takes: small enough that the writer's queue of orders never waits
/// long behind a cleanup, whatever the backlog.
pub const CLEANUP_BATCH: u32 = retention::SWEEP_BATCH;

/// Deletes rows published longer than `retention` ago, in batches of at most [`CLEANUP_BATCH`],
/// until none are left; returns how many.
pub async fn cleanup_once(store: &Store, retention: Duration) -> Result<usize, StoreError> {
    retention::sweep(store, retention, outbox::delete_published_before).await
}

/// Runs [`cleanup_once`] every `interval` until `shutdown`.
pub async fn run(
    store: Store,
    retention: Duration,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    retention::run(
        store,
        "outbox cleanup",
        retention,
        interval,
        outbox::delete_published_before,
        shutdown,
    )
    .await;
}
