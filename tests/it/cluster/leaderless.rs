//! A replicated stream whose replica stays silent: with two replicas, one node down is a lost
//! quorum, and the stream has no leader until that node returns (or, as the fault campaign
//! showed after stores were wiped, far longer). The service asks the cluster to move the silent
//! replica to another node once the stream has been leaderless for
//! `NATS_STREAM_REPLACE_REPLICA_AFTER`; the stream elects a leader on the replica that kept its
//! store and the new one, and every event is published, once, in order.

use std::time::Duration;

use super::harness::{Cluster, NODES};
use crate::app::{relaying_app_at, until};
use crate::relay::drained;
use crate::repair::{all_back_in_order, cancel_all, orders};

/// The stream under test: two replicas in the topic table.
const STREAM: &str = "ORDER_CREATED";

#[tokio::test]
async fn a_stream_without_a_leader_gets_its_silent_replica_moved_and_publishes_again() {
    let cluster = Cluster::start().await;
    let app = relaying_app_at(cluster.service(), |c| {
        c.nats_stream_replace_replica_after = Duration::from_secs(10);
    })
    .await;
    let ids = orders(&app, 10).await;
    drained(&app).await;
    let js = cluster.jetstream().await;
    cluster.wait_streams_current(&js).await;
    let placed = replicas(&js).await;
    assert_eq!(placed.len(), 2, "{STREAM} has two replicas: {placed:?}");

    // One replica's node goes down for good: the stream has no quorum, hence no leader.
    let silent = placed[1];
    cluster.stop(silent).await;
    let more = orders(&app, 10).await;
    cancel_all(&app, &ids).await;

    drained(&app).await;
    let now = replicas(&js).await;
    assert!(
        !now.contains(&silent) && now.len() == 2,
        "{STREAM} moved off {silent}: {now:?}"
    );
    cluster.wait_current(&js, &[STREAM.to_string()]).await;
    all_back_in_order(&app, &js).await;
    assert_eq!(more.len(), 10);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&format!(
            "nats_stream_replicas_moved_total{{stream=\"{STREAM}\"}} 1"
        )),
        "{metrics}"
    );

    // The node comes back: the stream keeps its new placement and every event.
    cluster.start_node(silent).await;
    cancel_all(&app, &more).await;
    drained(&app).await;
    all_back_in_order(&app, &js).await;
}

/// The nodes holding `STREAM`'s replicas, its leader first, once it has one.
async fn replicas(js: &async_nats::jetstream::Context) -> Vec<&'static str> {
    let mut found = Vec::new();
    until("the stream answers with a leader", async || {
        let Ok(stream) = js.get_stream(STREAM).await else {
            return false;
        };
        let Some(cluster) = stream.cached_info().cluster.clone() else {
            return false;
        };
        let Some(leader) = cluster.leader.clone() else {
            return false;
        };
        found = std::iter::once(leader)
            .chain(cluster.replicas.iter().map(|peer| peer.name.clone()))
            .filter_map(|name| NODES.into_iter().find(|n| *n == name))
            .collect();
        true
    })
    .await;
    found
}
