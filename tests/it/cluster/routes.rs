//! The cluster's routes authenticate and are encrypted: a server that does not know the route
//! password (`NATS_ROUTE_PASSWORD` of nats/cluster/), or that knows it but has no certificate of
//! the cluster's CA, is refused by every node and never joins, while the three nodes keep their
//! routes to each other, over TLS.

use std::collections::BTreeSet;
use std::time::Duration;

use super::harness::{Cluster, NODES, ROUTE_PASSWORD, route_tls};

/// Checks that every node routes to the two others and to nobody else.
async fn only_the_nodes_route(cluster: &Cluster) {
    for node in NODES {
        let routez = cluster
            .monitor(node, "routez")
            .await
            .unwrap_or_else(|| panic!("{node} answers /routez"));
        let routes = routez["routes"].as_array().cloned().unwrap_or_default();
        let remotes: BTreeSet<&str> = routes
            .iter()
            .filter_map(|route| route["remote_name"].as_str())
            .collect();
        let others: BTreeSet<&str> = NODES.into_iter().filter(|n| *n != node).collect();
        assert_eq!(remotes, others, "{node}'s routes: {routez}");
    }
}

/// The stranger's log.
fn logs(container: &str) -> String {
    let logs = std::process::Command::new("docker")
        .args(["logs", container])
        .output()
        .expect("docker logs");
    (String::from_utf8_lossy(&logs.stderr) + String::from_utf8_lossy(&logs.stdout)).into_owned()
}

#[tokio::test]
async fn a_server_with_the_route_password_but_another_ca_does_not_join_the_cluster() {
    let mut cluster = Cluster::start().await;
    let other = tempfile::tempdir().unwrap();
    crate::identities::certificates(other.path(), &["route"], "DNS:n4");
    let stranger = cluster
        .start_stranger("n4", ROUTE_PASSWORD, other.path())
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    only_the_nodes_route(&cluster).await;
    let said = logs(&stranger);
    assert!(
        said.contains("TLS") && (said.contains("certificate") || said.contains("handshake")),
        "{said}"
    );
}

#[tokio::test]
async fn a_server_without_the_route_password_does_not_join_the_cluster() {
    let mut cluster = Cluster::start().await;
    let stranger = cluster
        .start_stranger("n4", "not-the-route-password", route_tls())
        .await;
    // Time for it to try each route, and for a node to route to it if it were let in.
    tokio::time::sleep(Duration::from_secs(5)).await;
    only_the_nodes_route(&cluster).await;
    let logs = logs(&stranger);
    assert!(logs.contains("Authorization Violation"), "{logs}");
}
