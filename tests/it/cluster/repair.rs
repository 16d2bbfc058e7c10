//! Broker-loss repair on the cluster: all three nodes lose their stores at once while the service
//! runs; it notices on the reconnect, creates the streams again with the table's replicas, and
//! puts back every event it still keeps, before the newer ones, each exactly once.

use super::faults::service_on;
use super::harness::Cluster;
use crate::relay::drained;
use crate::repair::{all_back_in_order, cancel_all, orders, repaired_total};

#[tokio::test]
async fn all_three_stores_lost_every_event_comes_back_in_order() {
    let cluster = Cluster::start().await;
    let app = service_on(&cluster).await;
    let ids = orders(&app, 10).await;
    drained(&app).await;
    let before = app.outbox().len();

    cluster.replace_all_empty().await;
    // New events of the same orders, while the service reconnects, re-creates and repairs.
    cancel_all(&app, &ids).await;
    drained(&app).await;
    let js = cluster.jetstream().await;
    cluster.wait_streams_current(&js).await;
    all_back_in_order(&app, &js).await;

    for topic in &order_service::bus::Topics::embedded() {
        let config = crate::app::stream_config(&js, &topic.stream_name()).await;
        assert_eq!(
            config.num_replicas, topic.replication as usize,
            "{} re-created with the table's replicas",
            topic.name
        );
    }
    assert_eq!(
        repaired_total(&app).await,
        before,
        "every event acknowledged before"
    );
}
