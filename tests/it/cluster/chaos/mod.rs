//! A randomized fault campaign with a history checker, as Jepsen runs them: the three-node
//! cluster in Docker, the service as its own process and three consumer groups as six processes
//! of their own, a load of every order command from several clients, a seeded schedule of faults
//! (the service killed, nodes killed, stopped, paused, cut off, their stores wiped or a block
//! file damaged, the service cut off the brokers; a subscriber killed or paused past its lease,
//! a group's file locked or full, the leader of a group's consumer killed), each healed before
//! the next; then, once the service has published and repaired, a check of every committed event
//! against the streams, every answer against the SQLite file, and every group's effects against
//! the streams, printed as a table. It fails when anything is lost, duplicated, altered,
//! reordered outside repair, dead, or a success is missing; or when a group lost an event,
//! applied one twice or out of its order's stream order, emitted one twice or not at all, or
//! dead-lettered one.
//!
//! `CHAOS_SEED=<n>` replays a schedule (the seed is printed first and in the table);
//! `CHAOS_SUBSCRIBERS=1` adds the consumer groups and their faults (`make chaos` sets it; the
//! short campaign of `make test` runs without them while the groups' known defects are open, see
//! `docs/cluster.md`); `CHAOS_DURATION` (90s by default, 125s with the groups: every kind of
//! fault once in a seeded order) and `CHAOS_FAULT_INTERVAL` (8s) set its length and pace;
//! `CHAOS_CLIENTS` (4) the load. `make chaos` runs a 30-minute campaign (225 faults).
//!
//! - `schedule`: the seeded plan of faults.  - `faults`: running it; `store`: pause and block
//!   files; `proxy`: the TCP proxies between the service and the nodes.
//! - `service`: the service process.  - `load` and `history`: the clients and what they were told.
//! - `monitor`: publish progress during the run.  - `observe`, `checker`, `table`: the check.
//! - `subscribers`: the groups' processes and their faults; `subscriber_check`: their check.

mod checker;
mod faults;
mod history;
mod load;
mod monitor;
mod observe;
mod proxy;
mod schedule;
mod store;
mod subscriber_check;
mod subscribers;
mod table;

use std::time::{Duration, Instant};

use super::harness::Cluster;
use crate::nats::NatsServer;
use crate::service_process::Service;
use proxy::Proxy;
use schedule::{FaultKind, parse_duration};

/// The load after the last fault is healed, before it stops.
const TAIL: Duration = Duration::from_secs(3);

/// The campaign's settings, from the environment.
struct Settings {
    seed: u64,
    /// Whether the consumer groups run, with their faults.
    subscribers: bool,
    duration: Duration,
    interval: Duration,
    clients: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let duration = |name: &str, default: u64| {
            var(name).map_or(Duration::from_secs(default), |v| {
                parse_duration(&v).unwrap_or_else(|| panic!("{name}={v} is not a duration"))
            })
        };
        let seed = var("CHAOS_SEED").map_or_else(
            || {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                nanos.as_nanos() as u64 % 1_000_000_000
            },
            |v| v.trim().parse().expect("CHAOS_SEED is a number"),
        );
        let subscribers = var("CHAOS_SUBSCRIBERS").is_some_and(|v| v != "0" && v != "false");
        Settings {
            seed,
            subscribers,
            // Long enough for every kind of fault once, at the default interval.
            duration: duration("CHAOS_DURATION", if subscribers { 125 } else { 90 }),
            interval: duration("CHAOS_FAULT_INTERVAL", 8),
            clients: var("CHAOS_CLIENTS").map_or(4, |v| v.parse().expect("CHAOS_CLIENTS")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign() {
    let settings = Settings::from_env();
    let kinds: &[FaultKind] = if settings.subscribers {
        &FaultKind::ALL
    } else {
        FaultKind::CLUSTER
    };
    let plan = schedule::plan(settings.seed, settings.duration, settings.interval, kinds);
    eprintln!(
        "chaos: seed {} (CHAOS_SEED={} replays it), {:?} of load, {} faults planned every {:?}",
        settings.seed,
        settings.seed,
        settings.duration,
        plan.len(),
        settings.interval
    );

    // With the consumer groups, the nodes know a user per group.
    let identities = settings.subscribers.then(subscribers::identities);
    let cluster = match &identities {
        Some((dir, _)) => Cluster::start_with_identities(dir.path()).await,
        None => Cluster::start().await,
    };
    let proxies: Vec<Proxy> = {
        let mut proxies = Vec::new();
        for upstream in client_ports(&cluster.url()) {
            proxies.push(Proxy::start(upstream).await);
        }
        proxies
    };
    let through_proxies = proxies
        .iter()
        .map(|p| format!("nats://127.0.0.1:{}", p.port))
        .collect::<Vec<_>>()
        .join(",");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let mut service = Service::start(
        &db,
        &dir.path().join("service.log"),
        NatsServer::as_service(through_proxies),
    )
    .await;
    let js = cluster.jetstream().await;
    wait_ready(&service).await;
    let mut subscribers = match &identities {
        Some((_, users)) => {
            let mut started = subscribers::Subscribers::start(&cluster.url(), dir.path(), users);
            started.wait_started(&js).await;
            started
        }
        None => subscribers::Subscribers::none(),
    };

    let start = Instant::now();
    let load = load::Load::start(&service.base, settings.seed, settings.clients, start);
    let monitor = monitor::Monitor::start(db.clone(), start);
    let done = {
        let mut targets = faults::Targets {
            cluster: &cluster,
            js: &js,
            service: &mut service,
            proxies: &proxies,
            subscribers: &mut subscribers,
        };
        let at_least = plan.len().min(kinds.len());
        faults::run(&plan, &mut targets, start, settings.duration, at_least).await
    };
    tokio::time::sleep(TAIL).await;
    let ops = load.stop().await;
    let load_time = start.elapsed();

    let settled = observe::settle(&db, &cluster.service()).await;
    let progress = monitor.stop().await;
    // Read what the leaders hold once every replica is current; a stream that never gets there
    // is read as it is, and named in the table.
    let behind = faults::not_current(&js, Duration::from_secs(60)).await;
    let database = observe::database(&db);
    let streams = observe::streams(&js).await;
    let (diverging, replica_states) = observe::diverging_replicas(&cluster).await;
    let findings = checker::check(&ops, &database, &streams);
    let (groups, caught_up) = if settings.subscribers {
        subscriber_check::check(&subscribers, &streams, &js).await
    } else {
        (Vec::new(), Duration::ZERO)
    };
    subscribers.stop().await;
    let subscriber_failures: Vec<String> = groups.iter().flat_map(|g| g.failures()).collect();
    let replicas_moved = replicas_moved(&service);
    let table = table::render(&table::Summary {
        seed: settings.seed,
        load: load_time,
        interval: settings.interval,
        clients: settings.clients,
        planned: plan.len(),
        kinds,
        faults: &done,
        findings: &findings,
        settled: &settled,
        progress: &progress,
        command_stall: history::longest_without_success(&ops, load_time),
        missing_streams: &streams.missing_streams,
        unreadable: streams.unreadable,
        holes: streams.holes,
        diverging: &diverging,
        replica_states,
        behind: &behind,
        replicas_moved: &replicas_moved,
        subscribers: &if settings.subscribers {
            subscriber_check::render(&groups, caught_up)
        } else {
            Vec::new()
        },
        subscriber_failures: &subscriber_failures,
    });
    eprintln!("{table}");
    for (kind, examples) in &findings.examples {
        eprintln!("chaos: {kind}, e.g.:\n    {}", examples.join("\n    "));
    }
    for group in &groups {
        for (kind, examples) in &group.examples {
            eprintln!(
                "chaos: {}: {kind}, e.g.:\n    {}",
                group.group,
                examples.join("\n    ")
            );
        }
        if !group.failures().is_empty() {
            eprintln!(
                "chaos: {}'s processes' logs end:\n{}",
                group.group,
                subscribers.log_tails(group.group, 40)
            );
        }
    }
    if !settled.verify_clean {
        eprintln!("chaos: outbox verify:\n{}", settled.verify_output);
    }
    let mut failures = findings.failures();
    failures.extend(subscriber_failures);
    if !failures.is_empty() || !settled.verify_clean {
        eprintln!("chaos: the service's log ends:\n{}", service.log_tail(60));
    }
    assert!(
        failures.is_empty() && settled.verify_clean,
        "seed {}: {failures:?}, outbox verify clean: {}",
        settings.seed,
        settled.verify_clean
    );
}

/// Per stream, how many times the service's log says it moved a replica of that stream (the
/// leaderless watch, `src/relay/leaderless.rs`).
fn replicas_moved(service: &Service) -> std::collections::BTreeMap<String, usize> {
    let mut moved = std::collections::BTreeMap::new();
    for line in service.log_lines_with("moving its replica") {
        let stream = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("stream="))
            .unwrap_or("?")
            .to_owned();
        *moved.entry(stream).or_default() += 1;
    }
    moved
}

/// The loopback client ports of `nats://127.0.0.1:<port>,...`.
fn client_ports(url: &str) -> Vec<u16> {
    url.split(',')
        .map(|u| u.rsplit(':').next().unwrap().parse().expect("a port"))
        .collect()
}

/// Waits until the service's `/ready` says ready: streams reconciled, relay running.
async fn wait_ready(service: &Service) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = client
            .get(format!("{}/ready", service.base))
            .send()
            .await
            .ok();
        let body: serde_json::Value = match ready {
            Some(r) => r.json().await.unwrap_or_default(),
            None => serde_json::Value::Null,
        };
        if body["status"] == "ready" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the service is not ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
