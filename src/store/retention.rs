//! Deleting rows past their retention in small batches, so that a table stays bounded and the
//! writer's queue of orders never waits long behind a sweep: the outbox's published rows and the
//! stored Idempotency-Key responses both go this way.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Store, StoreError, Tx};
use crate::shutdown::step_then_wait;

/// The most rows one delete takes.
pub const SWEEP_BATCH: u32 = 1000;

/// Deletes up to `limit` rows older than the cutoff; returns how many.
pub type DeleteBefore = fn(&Tx<'_>, DateTime<Utc>, u32) -> Result<usize, StoreError>;

/// Deletes every row older than `retention` with `delete`, [`SWEEP_BATCH`] per transaction;
/// returns how many.
pub async fn sweep(
    store: &Store,
    retention: Duration,
    delete: DeleteBefore,
) -> Result<usize, StoreError> {
    let cutoff =
        Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut total = 0;
    loop {
        let deleted = store
            .write(move |tx| delete(tx, cutoff, SWEEP_BATCH))
            .await?;
        total += deleted;
        if deleted < SWEEP_BATCH as usize {
            return Ok(total);
        }
        // Let waiting commands in between two batches.
        tokio::task::yield_now().await;
    }
}

/// Runs [`sweep`] every `interval` until `shutdown`; `what` names the rows in the logs.
pub async fn run(
    store: Store,
    what: &'static str,
    retention: Duration,
    interval: Duration,
    delete: DeleteBefore,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut first = true;
    loop {
        // The first round waits: a start-up is no reason to sweep.
        let round = async {
            if !std::mem::take(&mut first) {
                match sweep(&store, retention, delete).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!(deleted = n, "{what}: rows past their retention deleted")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "{what}: deleting old rows failed; trying again next round")
                    }
                }
            }
        };
        if !step_then_wait(&mut shutdown, round, interval).await {
            return;
        }
    }
}
