//! One owner per group and partition: a lease in the KV bucket `ORDER_CONSUMER_OWNERS`, keyed by
//! the consumer's durable name (`<group>` or `<group>-p<P>`).
//!
//! A process takes the key with a create (which fails while another holds it) and renews it every
//! quarter of the lease; the bucket's `max_age` is the lease, so the key of a process that died is
//! gone after it and a standby's next create succeeds. Only the holder runs the group's workers;
//! a holder stops its workers and becomes a standby as soon as the key may be another's: its last
//! renewal that got through was sent [`SURELY_HELD`] ago, or the bucket answers that the key has
//! another revision. Its rounds check the lease before they commit ([`super::fence`]).
//!
//! Why a lease and not JetStream's pinned-client priority groups: async-nats 0.51 refuses pinned
//! consumers for `batch`/`fetch` pulls, which the worker uses so that nothing is delivered while it
//! cannot process (see the breaker), and a lease also covers the group's replay consumer and its
//! advisory watch with one rule.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use uuid::Uuid;

use super::fence::Fence;
use super::{LEASE, RENEW_EVERY, SURELY_HELD};
use crate::consumer::ConsumerError;
use crate::consumer::observe::stats::{GroupRole, GroupStats};
use crate::shutdown::Shutdown;

/// The bucket of the leases.
pub const OWNERS_BUCKET: &str = "ORDER_CONSUMER_OWNERS";

/// A held lease.
pub(in crate::consumer) struct Lease {
    store: kv::Store,
    key: String,
    owner: Bytes,
    revision: u64,
    fence: Arc<Fence>,
}

/// The leases' bucket, created when missing. The service creates it at start-up with the
/// dead-letter streams, since a subscriber's NATS identity may not create streams
/// (nats/identities.conf); where no identities are in force the first group creates it.
pub async fn ensure_bucket(js: &jetstream::Context) -> Result<kv::Store, ConsumerError> {
    if let Ok(store) = js.get_key_value(OWNERS_BUCKET).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: OWNERS_BUCKET.into(),
        description: "consumer group leases: one active process per group and partition".into(),
        history: 1,
        max_age: LEASE,
        ..Default::default()
    })
    .await
    .map_err(ConsumerError::nats)
}

/// Waits until this process holds the lease on `key`; `None` when `stop` comes first.
/// `stats` says standby from the first refused try until the lease is taken. A broker that
/// does not answer (down, without a leader for the bucket) is waited for: a process that lost
/// its lease because the broker went away must take it again when the broker is back, not end.
pub(in crate::consumer) async fn acquire<S: Future<Output = ()>>(
    js: &jetstream::Context,
    key: &str,
    stats: &GroupStats,
    stop: &mut Pin<&mut S>,
) -> Result<Option<Lease>, ConsumerError> {
    let store = loop {
        match ensure_bucket(js).await {
            Ok(store) => break store,
            Err(ConsumerError::Nats(error)) => {
                tracing::warn!(key, %error, retry_in = ?(LEASE / 4), "the leases' bucket does not answer: waiting for the broker");
            }
            Err(other) => return Err(other),
        }
        tokio::select! {
            () = stop.as_mut() => return Ok(None),
            () = tokio::time::sleep(LEASE / 4) => {}
        }
    };
    let owner = Bytes::from(Uuid::now_v7().to_string());
    let mut standby_logged = false;
    loop {
        let sent = tokio::time::Instant::now();
        if let Ok(revision) = store.create(key, owner.clone()).await {
            tracing::info!(
                key,
                revision,
                "consumer lease taken: this process is active"
            );
            return Ok(Some(Lease {
                store,
                key: key.to_owned(),
                owner,
                revision,
                fence: Arc::new(Fence::new(key, revision, sent)),
            }));
        }
        if !standby_logged {
            tracing::info!(key, "another process holds the consumer lease: standing by");
            stats.set_role(GroupRole::Standby);
            standby_logged = true;
        }
        tokio::select! {
            () = stop.as_mut() => return Ok(None),
            () = tokio::time::sleep(LEASE / 4) => {}
        }
    }
}

impl Lease {
    /// The hold its rounds check before they commit.
    pub(in crate::consumer) fn fence(&self) -> Arc<Fence> {
        self.fence.clone()
    }

    /// Renews the lease every quarter of its length until `stop` (then releases it, so a
    /// standby takes over at once), or until it may be another's (then returns): the bucket
    /// says the key has another revision, or no renewal got through for [`SURELY_HELD`]
    /// counted from when the last good one was sent (the key lives [`LEASE`] from when the
    /// server stored it, which is later).
    pub(in crate::consumer) async fn keep(mut self, stop: Shutdown) {
        loop {
            tokio::select! {
                () = stop.signal() => break,
                () = tokio::time::sleep(RENEW_EVERY) => {}
            }
            let sent = tokio::time::Instant::now();
            match self
                .store
                .update(&self.key, self.owner.clone(), self.revision)
                .await
            {
                Ok(revision) => {
                    self.revision = revision;
                    self.fence.renewed(revision, sent);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::error!(key = %self.key, error = %e, "consumer lease taken by another process: stopping the workers");
                    return;
                }
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "renewing the consumer lease failed");
                    if self.fence.renewed_at().elapsed() >= SURELY_HELD {
                        tracing::error!(key = %self.key, "consumer lease lost: stopping the workers");
                        return;
                    }
                }
            }
        }
        if let Err(e) = self
            .store
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            tracing::debug!(key = %self.key, error = %e, "releasing the consumer lease");
        }
    }
}
