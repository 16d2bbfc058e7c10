//! Faults of a three-node cluster under a steady load of orders: the service keeps accepting
//! orders, the relay treats elections and lost quorum as transient, and afterwards the streams
//! hold every outbox event exactly once, in per-key commit order, with no dead row.

use std::time::{Duration, Instant};

use order_service::bus::Topics;

use super::harness::{Cluster, NODES};
use super::load::{Load, streams_match_the_outbox};
use crate::app::{PATIENCE, TestApp, ready, relaying_app_at, run_cli_at};

/// Orders accepted while a fault lasts (about 2 s of load).
const DURING: usize = 50;

/// The service under test, relaying to `cluster` with the service's identity.
pub(super) async fn service_on(cluster: &Cluster) -> TestApp {
    relaying_app_at(cluster.service(), |_| {}).await
}

#[tokio::test]
async fn streams_get_the_table_replicas_on_a_cluster() {
    let cluster = Cluster::start().await;
    let js = cluster.jetstream().await;
    // More replicas than the cluster has JetStream servers: placement refuses 5 and 4, the
    // stream gets 3, and the clamp is reported. (A stream of the table, before the service
    // starts: the service's identity may create only those.)
    let wide = Topics::from_json(
        r#"[{"topic": "order.created", "partitions": 3, "replication": 5, "retention": "7d"}]"#,
    )
    .unwrap();
    let report = order_service::bus::reconcile(&js, &wide, Duration::from_secs(60))
        .await
        .expect("reconcile the wide table");
    assert_eq!(report.created, ["ORDER_CREATED"]);
    assert_eq!(report.clamps.len(), 1, "{report}");
    let clamp = report.clamps[0].to_string();
    assert!(
        clamp.contains("ORDER_CREATED num_replicas: wanted 5, using 3"),
        "{clamp}"
    );
    assert!(clamp.contains("10005"), "{clamp}");
    let created = &["ORDER_CREATED".to_string()];
    cluster.wait_current(&js, created).await;
    assert_eq!(
        crate::app::stream_config(&js, "ORDER_CREATED")
            .await
            .num_replicas,
        3
    );

    // The service takes ORDER_CREATED down to the table's 2 and creates the other nine.
    let app = service_on(&cluster).await;
    let streams = &ready(&app).await["checks"]["streams"];
    assert_eq!(streams["created"].as_array().unwrap().len(), 9, "{streams}");
    assert!(
        streams["updated"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u.as_str().unwrap().contains("ORDER_CREATED")),
        "{streams}"
    );
    assert_eq!(
        streams["clamps"],
        serde_json::json!([]),
        "no clamp on three servers"
    );

    // A stream just created (or scaled down) answers "not found" until its group has formed.
    cluster.wait_streams_current(&js).await;
    for topic in &Topics::embedded() {
        let config = crate::app::stream_config(&js, &topic.stream_name()).await;
        assert_eq!(
            config.num_replicas, topic.replication as usize,
            "{}",
            topic.name
        );
    }
    let listed = run_cli_at(&cluster.service(), &["streams", "list"]);
    let line = |stream: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(&format!("{stream} ")))
            .unwrap_or_else(|| panic!("{stream} in {listed}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // STREAM SUBJECTS REPLICAS(wanted/actual) CURRENT LEADER ...
    let audit = line("ORDER_AUDIT");
    assert_eq!(audit[2..4], ["3/3", "3"], "{listed}");
    assert!(NODES.contains(&audit[4].as_str()), "{listed}");
    assert_eq!(line("ORDER_CREATED")[2..4], ["2/2", "2"], "{listed}");
}

#[tokio::test]
async fn the_stream_leader_killed_five_times_under_load() {
    let cluster = Cluster::start().await;
    let app = service_on(&cluster).await;
    let js = cluster.jetstream().await;
    let load = Load::start(&app);
    for _ in 0..5 {
        let leader = cluster.stream_leader(&js, "ORDER_CREATED").await;
        cluster.kill(leader).await;
        load.wait_for(DURING).await;
        cluster.start_node(leader).await;
        cluster.wait_streams_current(&js).await;
    }
    let accepted = load.stop().await;
    streams_match_the_outbox(&app, &js, &accepted).await;
}

#[tokio::test]
async fn a_node_cut_off_under_load() {
    let cluster = Cluster::start().await;
    let app = service_on(&cluster).await;
    let js = cluster.jetstream().await;
    let load = Load::start(&app);
    load.wait_for(DURING).await;
    let leader = cluster.stream_leader(&js, "ORDER_CREATED").await;
    cluster.disconnect(leader).await;
    // Long enough for the clients on it to notice (pings every 10 s) and move to another node.
    load.wait_for(8 * DURING).await;
    cluster.reconnect(leader).await;
    cluster.wait_for_meta_leader().await;
    load.wait_for(DURING).await;
    let accepted = load.stop().await;
    cluster.wait_streams_current(&js).await;
    streams_match_the_outbox(&app, &js, &accepted).await;
}

#[tokio::test]
async fn two_of_three_nodes_down_then_a_quorum_back() {
    let cluster = Cluster::start().await;
    let app = service_on(&cluster).await;
    let js = cluster.jetstream().await;
    let load = Load::start(&app);
    load.wait_for(DURING).await;
    let [back_first, back_last] = [NODES[1], NODES[2]];
    cluster.kill(back_first).await;
    cluster.kill(back_last).await;
    // Orders are still accepted, and their events wait in the outbox.
    load.wait_for(2 * DURING).await;
    assert!(
        pending(&app, "order.created") > 0,
        "events wait for a quorum"
    );

    // A quorum again (two of three): the R3 audit stream takes its events again.
    cluster.start_node(back_first).await;
    cluster.wait_for_meta_leader().await;
    load.wait_for(DURING).await;
    let start = Instant::now();
    while pending(&app, "order.audit") > 0 {
        assert!(
            start.elapsed() < PATIENCE,
            "order.audit does not drain with a quorum"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.start_node(back_last).await;
    load.wait_for(DURING).await;
    let accepted = load.stop().await;
    cluster.wait_streams_current(&js).await;
    streams_match_the_outbox(&app, &js, &accepted).await;
}

#[tokio::test]
async fn a_rolling_restart_under_load() {
    let cluster = Cluster::start().await;
    let app = service_on(&cluster).await;
    let js = cluster.jetstream().await;
    let load = Load::start(&app);
    for node in NODES {
        cluster.stop(node).await;
        load.wait_for(DURING).await;
        cluster.start_node(node).await;
        // As an operator would: the next node only once this one has caught up.
        cluster.wait_for_meta_leader().await;
        cluster.wait_streams_current(&js).await;
    }
    let accepted = load.stop().await;
    streams_match_the_outbox(&app, &js, &accepted).await;
}

/// Outbox rows of `topic` not yet published.
fn pending(app: &TestApp, topic: &str) -> i64 {
    app.db()
        .query_row(
            "SELECT count(*) FROM order_events_outbox WHERE status = 'pending' AND topic = ?1",
            [topic],
            |r| r.get(0),
        )
        .unwrap()
}
