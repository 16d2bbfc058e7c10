//! Running the schedule: each fault injected, held, healed, and the cluster given time to recover
//! (every node up, a meta leader, every stream led and current, bounded) before the next, so at
//! most one node is faulty at once. What each fault did is recorded for the table.

use std::time::{Duration, Instant};

use async_nats::jetstream;

use super::proxy::{Mode, Proxy};
use super::schedule::{FaultKind, Planned};
use super::store;
use super::subscribers::Subscribers;
use crate::cluster::harness::{Cluster, NODES};
use crate::service_process::Service;
use order_service::bus::Topics;

/// How long the cluster may take to be current again after a fault before the campaign goes on
/// anyway (and says so).
const RECOVERY: Duration = Duration::from_secs(60);
/// The wait instead of [`RECOVERY`] when the cluster was not current after the previous fault
/// either.
const STUCK_RECOVERY: Duration = Duration::from_secs(10);

/// A fault as it ran.
#[derive(Debug, Clone)]
pub struct Done {
    /// What it was.
    pub kind: FaultKind,
    /// When it was injected and healed, from the start of the load.
    pub from: Duration,
    /// See `from`.
    pub to: Duration,
    /// Whether the cluster was current again within the wait after it.
    pub recovered: bool,
}

/// What the faults act on.
pub struct Targets<'a> {
    /// The three nodes.
    pub cluster: &'a Cluster,
    /// A JetStream context straight to the nodes (not through the proxies).
    pub js: &'a jetstream::Context,
    /// The service process.
    pub service: &'a mut Service,
    /// The service's proxies, one per node.
    pub proxies: &'a [Proxy],
    /// The consumer groups' processes.
    pub subscribers: &'a mut Subscribers,
}

/// Runs `plan` from `start`: each fault at its time (or as soon as the previous one recovered),
/// until `until` has passed and at least `at_least` faults ran.
pub async fn run(
    plan: &[Planned],
    targets: &mut Targets<'_>,
    start: Instant,
    until: Duration,
    at_least: usize,
) -> Vec<Done> {
    let mut done: Vec<Done> = Vec::new();
    for (n, fault) in plan.iter().enumerate() {
        if n >= at_least && start.elapsed() >= until {
            eprintln!("chaos: time is up after {n} of {} faults", plan.len());
            break;
        }
        tokio::time::sleep_until((start + fault.at).into()).await;
        let from = start.elapsed();
        let what = inject_hold_heal(fault, targets).await;
        let to = start.elapsed();
        // A cluster already stuck after the previous fault gets a short wait: the campaign keeps
        // its pace, and the stuck streams are named each time.
        let stuck = done.last().is_some_and(|d| !d.recovered);
        let behind = recover(targets, if stuck { STUCK_RECOVERY } else { RECOVERY }).await;
        let recovered = behind.is_empty();
        eprintln!(
            "chaos: fault {:>3} at {:>6.1}s {:<22} {what} ({:.1}s{})",
            n + 1,
            from.as_secs_f64(),
            fault.kind.name(),
            (to - from).as_secs_f64(),
            if recovered {
                String::new()
            } else {
                format!(", NOT current again: {}", behind.join("; "))
            }
        );
        done.push(Done {
            kind: fault.kind,
            from,
            to,
            recovered,
        });
    }
    done
}

/// Injects `fault`, waits its hold, heals it; says what it did.
async fn inject_hold_heal(fault: &Planned, t: &mut Targets<'_>) -> String {
    let mut rng = fastrand::Rng::with_seed(fault.salt);
    let node = NODES[fault.node];
    let hold = || tokio::time::sleep(fault.hold);
    match fault.kind {
        FaultKind::ServiceKill => {
            t.service.kill().await;
            hold().await;
            t.service.restart().await;
            "service SIGKILLed, restarted on its file".into()
        }
        FaultKind::NodeKill => {
            t.cluster.kill(node).await;
            hold().await;
            t.cluster.start_node(node).await;
            format!("{node} SIGKILLed, started again")
        }
        FaultKind::NodeRestart => {
            t.cluster.stop(node).await;
            hold().await;
            t.cluster.start_node(node).await;
            format!("{node} stopped (SIGTERM), started again")
        }
        FaultKind::NodePause => {
            store::pause(t.cluster, node, true).await;
            hold().await;
            store::pause(t.cluster, node, false).await;
            format!("{node} paused")
        }
        FaultKind::FollowerPause => {
            let (stream, follower, leader) = follower(t, &mut rng).await;
            store::pause(t.cluster, follower, true).await;
            hold().await;
            store::pause(t.cluster, follower, false).await;
            format!("{follower} paused, a follower of {stream} (led by {leader})")
        }
        FaultKind::NodeWipe => {
            t.cluster.kill(node).await;
            hold().await;
            t.cluster.replace_empty(node).await;
            format!("{node} SIGKILLed, its store wiped, started empty")
        }
        FaultKind::BlockTruncate | FaultKind::BlockCorrupt => {
            t.cluster.kill(node).await;
            let truncate = fault.kind == FaultKind::BlockTruncate;
            let what = store::damage_block(t.cluster, node, truncate, &mut rng).await;
            hold().await;
            t.cluster.start_node(node).await;
            format!("{node} SIGKILLed, {what}, started again")
        }
        FaultKind::NodePartition => {
            t.cluster.disconnect(node).await;
            hold().await;
            t.cluster.reconnect(node).await;
            format!("{node} disconnected from the network")
        }
        FaultKind::ServiceCutOff => {
            let mode = if rng.bool() {
                Mode::Refuse
            } else {
                Mode::Blackhole
            };
            t.proxies.iter().for_each(|proxy| proxy.set(mode));
            hold().await;
            t.proxies.iter().for_each(|proxy| proxy.set(Mode::Forward));
            let how = match mode {
                Mode::Refuse => "connections dropped and refused",
                _ => "connections black-holed",
            };
            format!("service to all nodes: {how}")
        }
        FaultKind::SubscriberKill => t.subscribers.kill(&mut rng, fault.hold).await,
        FaultKind::SubscriberPause => t.subscribers.pause(&mut rng, fault.hold).await,
        FaultKind::SubscriberLocked => t.subscribers.lock(&mut rng, fault.hold).await,
        FaultKind::SubscriberFull => t.subscribers.fill(&mut rng, fault.hold).await,
        FaultKind::ConsumerLeaderKill => {
            let (cluster, js) = (t.cluster, t.js);
            t.subscribers
                .kill_consumer_leader(cluster, js, &mut rng, fault.hold)
                .await
        }
    }
}

/// A stream (seeded pick, among those with a follower now), a node holding its replica that
/// does not lead it, and its leader.
async fn follower(
    t: &Targets<'_>,
    rng: &mut fastrand::Rng,
) -> (String, &'static str, &'static str) {
    let mut streams: Vec<String> = Topics::embedded().iter().map(|t| t.stream_name()).collect();
    rng.shuffle(&mut streams);
    for name in streams {
        let Ok(stream) = t.js.get_stream(&name).await else {
            continue;
        };
        let Some(cluster) = stream.cached_info().cluster.clone() else {
            continue;
        };
        let leader = cluster.leader.as_deref().unwrap_or_default();
        let followers: Vec<&'static str> = NODES
            .into_iter()
            .filter(|n| cluster.replicas.iter().any(|peer| peer.name == *n))
            .collect();
        if let (Some(leader), false) = (
            NODES.into_iter().find(|n| *n == leader),
            followers.is_empty(),
        ) {
            return (name, followers[rng.usize(..followers.len())], leader);
        }
    }
    // No stream has a leader and a follower: pause a node anyway.
    ("(no stream led)".into(), NODES[rng.usize(..3)], "nobody")
}

/// Waits (at most `within`) until every stream of the table is led with all replicas current,
/// and the service and subscriber processes run; the streams that are not.
async fn recover(t: &mut Targets<'_>, within: Duration) -> Vec<String> {
    assert!(t.service.running(), "the service process died by itself");
    t.subscribers.assert_running();
    not_current(t.js, within).await
}

/// Waits until every stream of the table has a leader and all its replicas are current, at
/// most `within`; the streams that still are not, with what they look like.
pub async fn not_current(js: &jetstream::Context, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let names: Vec<String> = Topics::embedded().iter().map(|t| t.stream_name()).collect();
    loop {
        let mut behind = Vec::new();
        for name in &names {
            let cluster = match js.get_stream(name).await {
                Ok(stream) => stream.cached_info().cluster.clone(),
                Err(error) => {
                    behind.push(format!("{name}: {error}"));
                    continue;
                }
            };
            let current = cluster.as_ref().is_some_and(|c| {
                c.leader.is_some() && c.replicas.iter().all(|peer| peer.current && !peer.offline)
            });
            if !current {
                let replicas = cluster.as_ref().map(|c| {
                    let peers: Vec<String> = c
                        .replicas
                        .iter()
                        .map(|p| format!("{} current {}", p.name, p.current))
                        .collect();
                    format!("leader {:?}, {}", c.leader, peers.join(", "))
                });
                behind.push(format!("{name}: {}", replicas.unwrap_or_default()));
            }
        }
        if behind.is_empty() || Instant::now() >= deadline {
            return behind;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
