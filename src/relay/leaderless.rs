//! Streams that have had no leader for long: the service asks the cluster to move a silent
//! replica to another node.
//!
//! A replicated stream elects a leader only with a quorum of its replicas. With two replicas (the
//! table's default), one node down means no quorum, and the stream takes no event until that
//! node returns. The fault campaign also found streams whose replicas were all up and still
//! elected nobody for a quarter of an hour after their stores were wiped. The outbox keeps every
//! event meanwhile, so nothing is lost, but nothing is published either.
//!
//! [`watch`] asks each replicated stream of the table for its state. For a stream without a
//! leader, the cluster's meta leader answers itself: the replicas, whether each is offline or
//! current, and when each was last seen. Once a stream has answered "no leader" for
//! `NATS_STREAM_REPLACE_REPLICA_AFTER`, one replica is moved (`$JS.API.STREAM.PEER.REMOVE`: the
//! meta leader places a new replica on another node). It picks the replica most likely to be
//! the one that is stuck: an offline one first, then one that is not current, then the one
//! longest unseen. The stream elects a leader from the replica that kept its store and the new
//! one, and the new one catches up from it. Events that only the moved replica held are found by
//! the check that the leader's election starts, and put back from the outbox. A stream still
//! without a leader after as long again gets another replica moved.
//!
//! Moving a replica costs a copy of the stream to the new node; a node that is only restarting
//! is back well within the default minute.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::stream::{ClusterInfo, PeerInfo};
use tokio::time::Instant;

use crate::bus::Topics;
use crate::metrics::Metrics;

/// How long one stream may take to answer for its state. The meta leader answers for a
/// leaderless stream only after it has waited for the stream's own leader.
const STATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Watches the replicated streams of `topics` and moves a silent replica of each stream that had
/// no leader for `after`. Never returns.
pub async fn watch(js: &jetstream::Context, topics: &Topics, after: Duration, metrics: &Metrics) {
    let names: Vec<String> = topics
        .iter()
        .filter(|topic| topic.replication > 1)
        .map(|topic| topic.stream_name())
        .collect();
    let every = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(15));
    let mut watch = Leaderless::new(after);
    loop {
        tokio::time::sleep(every).await;
        let answers =
            futures::future::join_all(names.iter().map(|name| cluster_state(js, name))).await;
        let now = Instant::now();
        for (name, answer) in names.iter().zip(answers) {
            let Some(peer) = watch.observe(name, answer.as_ref(), now) else {
                continue;
            };
            tracing::warn!(
                stream = %name, %peer, leaderless_for = ?after,
                "the stream has had no leader for too long; moving its replica on {peer} to another node"
            );
            match remove_peer(js, name, &peer).await {
                Ok(()) => metrics.replica_moved(name),
                Err(error) => tracing::warn!(
                    stream = %name, %peer, %error,
                    "the cluster did not move the replica; trying again later"
                ),
            }
        }
    }
}

/// How long each stream has been answering "no leader".
#[derive(Debug)]
struct Leaderless {
    after: Duration,
    streams: HashMap<String, Seen>,
}

/// Since when a stream has had no leader, and when it last answered.
#[derive(Debug, Clone, Copy)]
struct Seen {
    since: Instant,
    answered: Instant,
}

impl Leaderless {
    fn new(after: Duration) -> Leaderless {
        Leaderless {
            after,
            streams: HashMap::new(),
        }
    }

    /// Takes one answer of `stream` (`None`: it did not answer, or it is not clustered); says
    /// which replica to move, if it is time to move one. After a move the wait starts again.
    fn observe(
        &mut self,
        stream: &str,
        answer: Option<&ClusterInfo>,
        now: Instant,
    ) -> Option<String> {
        let Some(cluster) = answer else {
            // No answer says nothing about the leader: a short silence keeps the count going,
            // a long one (the whole cluster away) starts it again, so a stream is never moved
            // on the first answer after a cluster comes back.
            if self
                .streams
                .get(stream)
                .is_some_and(|seen| now - seen.answered > self.after)
            {
                self.streams.remove(stream);
            }
            return None;
        };
        if cluster.leader.is_some() {
            self.streams.remove(stream);
            return None;
        }
        let seen = self.streams.entry(stream.to_owned()).or_insert(Seen {
            since: now,
            answered: now,
        });
        seen.answered = now;
        if now - seen.since < self.after {
            return None;
        }
        let peer = silent_replica(&cluster.replicas)?;
        seen.since = now;
        Some(peer.name.clone())
    }
}

/// The replica most likely to keep its stream from electing a leader: offline, else not current,
/// else the most behind, else the longest unseen.
fn silent_replica(replicas: &[PeerInfo]) -> Option<&PeerInfo> {
    replicas
        .iter()
        .max_by_key(|peer| (peer.offline, !peer.current, peer.lag, peer.active))
}

/// The stream's cluster state, when it answers within [`STATE_TIMEOUT`].
async fn cluster_state(js: &jetstream::Context, name: &str) -> Option<ClusterInfo> {
    let info = tokio::time::timeout(STATE_TIMEOUT, js.get_stream(name)).await;
    info.ok()?.ok()?.cached_info().cluster.clone()
}

/// Asks the meta leader to take `peer` out of `stream`'s replicas and place a new one.
async fn remove_peer(js: &jetstream::Context, stream: &str, peer: &str) -> Result<(), String> {
    let subject = format!("STREAM.PEER.REMOVE.{stream}");
    let request = serde_json::json!({ "peer": peer });
    let answer: jetstream::response::Response<serde_json::Value> = js
        .request(subject, &request)
        .await
        .map_err(|error| error.to_string())?;
    match answer {
        jetstream::response::Response::Ok(_) => Ok(()),
        jetstream::response::Response::Err { error } => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, current: bool, offline: bool, active_s: u64) -> PeerInfo {
        PeerInfo {
            name: name.into(),
            current,
            active: Duration::from_secs(active_s),
            offline,
            lag: None,
        }
    }

    fn cluster(leader: Option<&str>, replicas: Vec<PeerInfo>) -> ClusterInfo {
        ClusterInfo {
            leader: leader.map(Into::into),
            replicas,
            ..ClusterInfo::default()
        }
    }

    #[test]
    fn the_offline_replica_is_moved_before_one_that_is_only_behind() {
        let replicas = [
            peer("n1", false, false, 30),
            peer("n2", false, true, 0),
            peer("n3", true, false, 1),
        ];
        assert_eq!(silent_replica(&replicas).unwrap().name, "n2");
        let replicas = [peer("n1", true, false, 1), peer("n2", false, false, 3)];
        assert_eq!(silent_replica(&replicas).unwrap().name, "n2");
        let replicas = [peer("n1", true, false, 9), peer("n2", true, false, 3)];
        assert_eq!(silent_replica(&replicas).unwrap().name, "n1");
        assert!(silent_replica(&[]).is_none());
    }

    #[test]
    fn a_replica_is_moved_only_after_the_stream_had_no_leader_for_the_whole_wait() {
        let after = Duration::from_secs(60);
        let mut watch = Leaderless::new(after);
        let t0 = Instant::now();
        let led = cluster(Some("n1"), vec![peer("n2", true, false, 0)]);
        let leaderless = cluster(
            None,
            vec![peer("n1", true, false, 0), peer("n2", false, true, 9)],
        );
        let s = "ORDER_CREATED";
        assert_eq!(watch.observe(s, Some(&leaderless), t0), None);
        // A leader in between starts the wait again.
        assert_eq!(watch.observe(s, Some(&led), t0 + after / 2), None);
        assert_eq!(watch.observe(s, Some(&leaderless), t0 + after), None);
        // Short silences do not.
        assert_eq!(watch.observe(s, None, t0 + after * 3 / 2), None);
        assert_eq!(
            watch
                .observe(s, Some(&leaderless), t0 + after * 2)
                .as_deref(),
            Some("n2")
        );
        // After a move, as long again.
        assert_eq!(
            watch.observe(s, Some(&leaderless), t0 + after * 5 / 2),
            None
        );
        assert_eq!(
            watch
                .observe(s, Some(&leaderless), t0 + after * 3)
                .as_deref(),
            Some("n2")
        );
        // A silence longer than the wait (the whole cluster away) starts it again.
        assert_eq!(watch.observe(s, None, t0 + after * 9 / 2), None);
        assert_eq!(watch.observe(s, Some(&leaderless), t0 + after * 5), None);
        // Streams are counted apart.
        assert_eq!(
            watch.observe("ORDER_UPDATED", Some(&leaderless), t0 + after * 5),
            None
        );
    }
}
