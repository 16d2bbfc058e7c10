//! The contract's lag alert, live: Prometheus itself, with the shipped rules
//! (`nats/prometheus/alerts.yml`), scrapes the service and a real subscriber process; the alert
//! fires when the group falls more than 1,000 messages behind and resolves when it catches up.
//! (promtool's unit tests, `nats/prometheus/alerts.test.yml`, check every rule's thresholds and
//! durations; this test checks that the rules meet the metrics as the service really exports
//! them.)

use std::net::SocketAddr;

use crate::app::{PATIENCE, until};
use crate::consumer::process::Child;
use crate::consumer::{create_orders, setup};
use crate::observe::prometheus::Prometheus;

const ALERT: &str = "OrderServiceConsumerLagHigh";
const GROUP: &str = "alerted";

/// The shipped rules with every `for` cut to 2 s, so that the test does not wait the minutes an
/// operator's alert waits; fails if the file has no `for` left to cut.
fn rules_without_waiting() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/nats/prometheus/alerts.yml");
    let rules = std::fs::read_to_string(path).unwrap();
    let cut: Vec<String> = rules
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 2s", &line[..line.len() - line.trim_start().len()]),
            None => line.to_owned(),
        })
        .collect();
    assert!(
        cut.iter().any(|l| l.ends_with("for: 2s")),
        "no `for` in {path}"
    );
    cut.join("\n")
}

/// The group's lag alert as Prometheus holds it now: `pending`, `firing`, or `None`.
async fn lag_alert(prometheus: &Prometheus) -> Option<String> {
    prometheus
        .alerts()
        .await
        .into_iter()
        .find(|a| a["labels"]["alertname"] == ALERT && a["labels"]["group"] == GROUP)
        .map(|a| a["state"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_alert_fires_when_a_group_falls_1000_behind_and_resolves_when_it_catches_up() {
    let (_, nats, app, _, dir, db) = setup(|_| {}).await;
    let fast = [("STANDBY_HANDLER_MS", "0")];
    let mut first = Child::start_with("first", &nats.url(), &db, GROUP, dir.path(), &fast);
    first.until_role(GROUP, "active", "stopped", PATIENCE).await;
    let service: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let prometheus = Prometheus::start(dir.path(), &rules_without_waiting(), service).await;
    prometheus.subscribers(&[first.addr().await]);

    until("both targets scraped", async || {
        prometheus
            .value(r#"sum(up{job=~"order-service|subscriber"})"#)
            .await
            == Some(2.0)
    })
    .await;
    let lag = format!(r#"consumer_group_lag_messages{{job="order-service",group="{GROUP}"}}"#);
    until("the group's lag scraped", async || {
        prometheus.value(&lag).await == Some(0.0)
    })
    .await;
    assert_eq!(lag_alert(&prometheus).await, None, "caught up, yet alerted");

    // The group's only process stops: every order from now on is lag.
    first.stop().await;
    create_orders(&app, 1_050, 8).await;
    until("the lag alert firing", async || {
        lag_alert(&prometheus).await.as_deref() == Some("firing")
    })
    .await;
    let behind = prometheus.value(&lag).await.unwrap();
    assert!(behind > 1_000.0, "fired at a lag of {behind}");

    // A new process of the group works the lag off: the alert resolves (Prometheus drops it).
    let mut second = Child::start_with("second", &nats.url(), &db, GROUP, dir.path(), &fast);
    prometheus.subscribers(&[second.addr().await]);
    until("the lag alert resolved", async || {
        lag_alert(&prometheus).await.is_none()
    })
    .await;
    // What the subscriber process itself exports was scraped too: the events it processed.
    let processed =
        format!(r#"sum(consumer_events_processed_total{{job="subscriber",group="{GROUP}"}})"#);
    until("the subscriber's processed events scraped", async || {
        prometheus.value(&processed).await >= Some(1_050.0)
    })
    .await;
    second.stop().await;
}
