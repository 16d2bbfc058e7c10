//! Deleting published rows once they are older than the retention, so the outbox stays bounded.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;

use crate::store::{Store, StoreError, outbox};

/// The most rows one delete takes: small enough that the writer's queue of orders never waits
/// long behind a cleanup, whatever the backlog.
pub const CLEANUP_BATCH: u32 = 1000;

/// Deletes rows published longer than `retention` ago, in batches of at most [`CLEANUP_BATCH`],
/// until none are left; returns how many.
pub async fn cleanup_once(store: &Store, retention: Duration) -> Result<usize, StoreError> {
    let cutoff =
        Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut total = 0;
    loop {
        let deleted = store
            .write(move |tx| outbox::delete_published_before(tx, cutoff, CLEANUP_BATCH))
            .await?;
        total += deleted;
        if deleted < CLEANUP_BATCH as usize {
            return Ok(total);
        }
        // Let waiting commands in between two batches.
        tokio::task::yield_now().await;
    }
}

/// Runs [`cleanup_once`] every `interval` until `shutdown`.
pub async fn run(
    store: Store,
    retention: Duration,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(interval) => {}
        }
        match cleanup_once(&store, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "outbox cleanup"),
            Err(e) => tracing::warn!(error = %e, "outbox cleanup failed; trying again next round"),
        }
    }
}
