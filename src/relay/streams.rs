//! Keeping a topic table's streams on the broker while a relay publishes to them: reconcile them
//! before the first publish, trying again until it works, and again after every reconnect or
//! whenever the relay finds one missing. The service runs these for `nats/topics.json`, a consumer
//! group that emits for its own table.

use std::time::Duration;

use async_nats::jetstream;

use super::{RelayStatus, StreamsSummary};
use crate::backoff::Backoff;
use crate::bus::{self, Topics};

/// The waits between tries to reconcile the streams at start-up.
const START_BACKOFF: Backoff =
    Backoff::exponential(Duration::from_millis(200), Duration::from_secs(5));
/// The waits between tries to reconcile the streams after a reconnect.
const RECONNECT_BACKOFF: Backoff =
    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5));

/// Reconciles the streams with the topic table, trying again until it succeeds.
pub async fn reconcile(
    js: &jetstream::Context,
    topics: &Topics,
    duplicate_window: Duration,
    status: &RelayStatus,
) {
    let mut waits = START_BACKOFF.waits();
    loop {
        match bus::reconcile(js, topics, duplicate_window).await {
            Ok(report) => {
                tracing::info!(%report, "streams reconciled");
                status.set_streams(Ok(StreamsSummary::from(&report)));
                return;
            }
            Err(e) => {
                let retry_in = waits.next_wait();
                tracing::warn!(error = %e, ?retry_in, "reconciling streams failed");
                status.set_streams(Err(e.to_string()));
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// Reconciles the streams again after every reconnect: a broker that comes back without its
/// store (a fresh container, a wiped disk) has no streams, and every publish would otherwise
/// fail for want of one until its row went dead.
pub async fn reconcile_on_reconnect(
    js: &jetstream::Context,
    topics: &Topics,
    duplicate_window: Duration,
    status: &RelayStatus,
    reconnected: &tokio::sync::Notify,
) {
    let mut waits = RECONNECT_BACKOFF.waits();
    loop {
        tokio::select! {
            () = reconnected.notified() => {}
            () = status.heal_requested() => {}
        }
        waits.reset();
        loop {
            // Publishing waits while a stream's subjects or transform may change under it.
            let paused = status.pause_publishing().await;
            let reconciled = bus::reconcile(js, topics, duplicate_window).await;
            drop(paused);
            match reconciled {
                Ok(report) => {
                    if !report.changed_nothing() {
                        tracing::warn!(%report, "streams were missing or changed after a reconnect; reconciled");
                    }
                    status.set_streams(Ok(StreamsSummary::from(&report)));
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconciling streams after a reconnect failed");
                    status.set_streams(Err(e.to_string()));
                    tokio::time::sleep(waits.next_wait()).await;
                }
            }
        }
    }
}
