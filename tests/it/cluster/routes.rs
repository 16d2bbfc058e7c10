//! The cluster's routes authenticate: a server that does not know the route password
//! (`NATS_ROUTE_PASSWORD` of nats/cluster/) is refused by every node and never joins, while the
//! three nodes keep their routes to each other.

use std::collections::BTreeSet;
use std::time::Duration;

use super::harness::{Cluster, NODES};

#[tokio::test]
async fn a_server_without_the_route_password_does_not_join_the_cluster() {
    let mut cluster = Cluster::start().await;
    let stranger = cluster.start_stranger("n4", "not-the-route-password").await;
    // Time for it to try each route, and for a node to route to it if it were let in.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for node in NODES {
        let routez = cluster
            .monitor(node, "routez")
            .await
            .unwrap_or_else(|| panic!("{node} answers /routez"));
        let remotes: BTreeSet<&str> = routez["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|route| route["remote_name"].as_str())
            .collect();
        let others: BTreeSet<&str> = NODES.into_iter().filter(|n| *n != node).collect();
        assert_eq!(remotes, others, "{node}'s routes: {routez}");
    }
    let logs = std::process::Command::new("docker")
        .args(["logs", &stranger])
        .output()
        .expect("docker logs");
    let logs = String::from_utf8_lossy(&logs.stderr) + String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("Authorization Violation"), "{logs}");
}
