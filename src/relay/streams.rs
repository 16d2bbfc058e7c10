//! Keeping a topic table's streams on the broker while a relay publishes to them: reconcile them
//! (and what else their owner keeps there, [`Also`]) before the first publish, trying again until it works; repair them; and reconcile and repair
//! again after every reconnect, whenever the relay finds one missing, and when a periodic check
//! finds a stream missing events. The service runs these for `nats/topics.json`, a consumer group
//! that emits for its own table.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream;
use futures::future::BoxFuture;

use super::repair::Tail;
use super::status::StreamPause;
use super::{Relay, RelayStatus, StreamsSummary};
use crate::backoff::Backoff;
use crate::bus::{self, Topics};

/// The waits between tries to reach the broker and reconcile its streams at start-up.
pub const START_BACKOFF: Backoff =
    Backoff::exponential(Duration::from_millis(200), Duration::from_secs(5));
/// Tries of a broker-loss repair in a row before the relay goes on without it.
pub const REPAIR_ATTEMPTS: u32 = 5;
/// The waits between tries to reconcile the streams after a reconnect.
pub const RECONNECT_BACKOFF: Backoff =
    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5));

/// What else a relay's owner keeps on the broker beside its table's streams, made again after
/// every reconcile (a broker that lost its store lost those too): the service's are the consumer
/// groups' dead-letter streams and leases' bucket; a group's own relay has none.
pub type Also = Option<fn(jetstream::Context) -> BoxFuture<'static, ()>>;

/// The streams a relay keeps: its table on a broker, their duplicate window, where their state is
/// reported, and what else its owner keeps there.
#[derive(Clone, Copy)]
pub struct Kept<'a> {
    /// The broker.
    pub js: &'a jetstream::Context,
    /// The topic table whose streams these are.
    pub topics: &'a Topics,
    /// The streams' duplicate window.
    pub duplicate_window: Duration,
    /// Where the last reconcile is reported (`/ready`).
    pub status: &'a RelayStatus,
    /// What else to make after each reconcile.
    pub also: Also,
}

/// Reconciles the streams with the topic table, trying again until it succeeds; then `also`.
pub async fn reconcile(kept: Kept<'_>) {
    let mut waits = START_BACKOFF.waits();
    loop {
        match bus::reconcile(kept.js, kept.topics, kept.duplicate_window).await {
            Ok(report) => {
                tracing::info!(%report, "streams reconciled");
                kept.status.set_streams(Ok(StreamsSummary::from(&report)));
                if let Some(also) = kept.also {
                    also(kept.js.clone()).await;
                }
                return;
            }
            Err(e) => {
                let retry_in = waits.next_wait();
                tracing::warn!(error = %e, ?retry_in, "reconciling streams failed");
                kept.status.set_streams(Err(e.to_string()));
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// Pauses the relay's publishing to every stream the outbox recorded rows in, for
/// [`repair_at_start`]: taken before the relay starts, and released stream by stream as each is
/// repaired, so a stream that takes long to put back (or does not answer) holds back no other.
/// Nothing is held when the outbox cannot be read (the repair then fails and says so).
pub async fn hold_for_repair(relay: &Relay) -> HashMap<String, StreamPause> {
    relay.pause_recorded_streams().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading the streams to repair failed");
        HashMap::new()
    })
}

/// Repairs the streams ([`Relay::repair_held`]), trying up to [`REPAIR_ATTEMPTS`] times: a
/// repair that cannot succeed (the broker refuses the reads) must not keep every event from
/// being published; the next reconnect or periodic check tries again. The relay may run
/// meanwhile: `held` pauses its publishing to each stream until that stream's first repair ends.
pub async fn repair_at_start(relay: &Relay, held: HashMap<String, StreamPause>) {
    let mut waits = START_BACKOFF.waits();
    let mut held = Some(held);
    for attempt in 1..=REPAIR_ATTEMPTS {
        // No relay has published to a stream since this one started: events stored whose
        // PubAck was lost before a crash are found past the recorded sequences and recorded,
        // not sent again.
        let held = held.take().unwrap_or_default();
        match relay.repair_held(held, None, Tail::Read).await {
            Ok(_) => return,
            Err(e) if attempt == REPAIR_ATTEMPTS => {
                tracing::error!(error = %e, "repairing the streams failed; the relay goes on, the next check tries again");
            }
            Err(e) => {
                let retry_in = waits.next_wait();
                tracing::warn!(error = %e, ?retry_in, "repairing the streams failed");
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// Reconciles the streams again after every reconnect: a broker that comes back without its
/// store (a fresh container, a wiped disk) has no streams, and every publish would otherwise
/// fail for want of one until its row went dead. Then the streams are checked and repaired
/// ([`Relay::repair`]) while the relay's publishing waits, so nothing newer is stored before the
/// events put back. The same check runs when the relay asks for it (a stream missing, or one
/// that acknowledged sequences at or below recorded ones), when the broker announces that a
/// stream of the table was created or elected a leader (a replica that lost its store can
/// become leader without any client reconnecting), and every `verify_interval`. Those checks
/// hold publishing too, briefly: the announced streams alone, all at once, each given
/// [`LIVE_PATIENCE`](super::repair::LIVE_PATIENCE) to answer; a stream that did not answer (no
/// leader) is left to the next check rather than reconciled.
pub async fn reconcile_on_reconnect(
    kept: Kept<'_>,
    reconnected: &tokio::sync::Notify,
    relay: &Relay,
    verify_interval: Duration,
) {
    let mut waits = RECONNECT_BACKOFF.waits();
    let mut advisories = advisories(kept.js).await;
    loop {
        let check = tokio::select! {
            () = reconnected.notified() => None,
            () = kept.status.heal_requested() => None,
            Some(stream) = next_advisory(&mut advisories) => {
                let mut named = BTreeSet::from([stream]);
                // A node that goes away makes every stream it led elect a leader: one check
                // for them all.
                more_advisories(&mut advisories, &mut named).await;
                named.retain(|name| kept.topics.iter().any(|t| t.stream_name() == *name));
                if named.is_empty() {
                    continue;
                }
                tracing::info!(streams = ?named, "the broker announced a new leader or a new stream; checking it");
                Some(Some(named))
            }
            () = tokio::time::sleep(verify_interval) => Some(None),
        };
        if let Some(only) = check {
            // A clean check holds publishing to each stream only as long as that stream's check
            // takes (a few calls, all streams at once, each given `LIVE_PATIENCE` to answer).
            let checked = relay.verify_streams(only.as_ref(), None, Tail::Skip).await;
            match checked {
                // A stream that did not answer has no leader now: there is nothing to repair
                // yet, and reconciling it would hold publishing for the client's whole request
                // timeout. Its next leader's advisory, or the next interval, checks it again.
                Ok(checks) if checks.iter().all(|c| !c.found_loss()) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "checking the streams failed");
                    continue;
                }
            }
        }
        waits.reset();
        let mut repair_failures = 0;
        loop {
            // Each stream's publishing waits from before the reconcile until that stream got
            // back what it lost: released in between, a stream re-created empty would store the
            // newer events waiting in the lanes at its first sequences, before the ones put
            // back. Taken before the global pause: a lane holds its stream's gate while it
            // waits for the global one.
            let held = hold_for_repair(relay).await;
            // Publishing to every stream waits while a stream's subjects or transform may change
            // under it.
            let paused = kept.status.pause_publishing().await;
            let reconciled = bus::reconcile(kept.js, kept.topics, kept.duplicate_window).await;
            drop(paused);
            // A stream that cannot be reconciled does not keep the others from their repair.
            let repaired = relay
                .repair_held(held, None, Tail::Skip)
                .await
                .map_err(|e| e.to_string());
            let reconciled_ok = match reconciled {
                Ok(report) => {
                    if !report.changed_nothing() {
                        tracing::warn!(%report, "streams were missing or changed after a reconnect; reconciled");
                    }
                    kept.status.set_streams(Ok(StreamsSummary::from(&report)));
                    if let Some(also) = kept.also {
                        also(kept.js.clone()).await;
                    }
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconciling streams after a reconnect failed");
                    kept.status.set_streams(Err(e.to_string()));
                    false
                }
            };
            let repaired_ok = match repaired {
                Ok(repairs) => repairs.iter().all(|r| r.error.is_none()),
                Err(e) => {
                    tracing::warn!(error = %e, "repairing the streams failed");
                    false
                }
            };
            if reconciled_ok && repaired_ok {
                break;
            }
            repair_failures += 1;
            if repair_failures >= REPAIR_ATTEMPTS {
                tracing::error!(
                    "reconciling or repairing the streams failed {repair_failures} times; the next check tries again"
                );
                break;
            }
            tokio::time::sleep(waits.next_wait()).await;
        }
    }
}

/// Adds to `named` the streams of the advisories that arrive within [`ADVISORY_SETTLE`] of the
/// first (and those already waiting).
async fn more_advisories(advisories: &mut Advisories, named: &mut BTreeSet<String>) {
    let until = tokio::time::Instant::now() + ADVISORY_SETTLE;
    while let Ok(Some(stream)) = tokio::time::timeout_at(until, next_advisory(advisories)).await {
        named.insert(stream);
    }
}

/// How long a check waits for more advisories after the first: a leader election of many
/// streams announces them one by one within a few hundred milliseconds.
const ADVISORY_SETTLE: Duration = Duration::from_millis(500);

/// The broker's advisories that a stream was created or elected a leader.
type Advisories = Option<async_nats::Subscriber>;

/// Subscribes to the advisories; `None` (and a warning) when the broker refuses, so the periodic
/// check is all there is.
async fn advisories(js: &jetstream::Context) -> Advisories {
    let client = js.client();
    match client.subscribe(STREAM_ADVISORIES).await {
        Ok(subscriber) => Some(subscriber),
        Err(error) => {
            tracing::warn!(%error, "cannot subscribe to the stream advisories; only the periodic check runs");
            None
        }
    }
}

/// The stream a leader-elected or created advisory names; pending forever without a
/// subscription.
async fn next_advisory(advisories: &mut Advisories) -> Option<String> {
    use futures::StreamExt;
    match advisories {
        Some(subscriber) => loop {
            let message = subscriber.next().await?;
            let kind = message.subject.split('.').nth(4).unwrap_or_default();
            if (kind == "LEADER_ELECTED" || kind == "CREATED")
                && let Some(stream) = message.subject.split('.').nth(5)
            {
                return Some(stream.to_owned());
            }
        },
        None => std::future::pending().await,
    }
}

/// `$JS.EVENT.ADVISORY.STREAM.<kind>.<stream>`: every stream advisory; the service keeps those
/// that say a stream was created or elected a leader.
const STREAM_ADVISORIES: &str = "$JS.EVENT.ADVISORY.STREAM.*.*";
