//! A three-node JetStream cluster of containers for one test, driven with the Docker CLI.
//!
//! The nodes run the local image `order-service/nats:2.15.1` (`make nats-image`) with the shipped
//! configs of `nats/cluster/` (mounted read-only), on a private network of their own where they
//! find each other as `n1`, `n2`, `n3`. Each node's client and monitoring ports are published on
//! loopback at ports chosen up front, so they stay the same across restarts and a network
//! disconnect: clients hold the list [`Cluster::url`] and find every node again by themselves.
//! The configs set `no_advertise`, so clients use only that list, never the containers' own
//! addresses. Dropping the cluster removes its containers and network. A cluster that cannot
//! start fails the test.

use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::nats::NatsServer;
use order_service::bus::Topics;
use order_service::nats_server;
use serde_json::Value;

/// The files of the shipped identities: the one node.conf includes, and the two it includes.
const IDENTITY_FILES: [&str; 3] = ["identities.conf", "users.conf", "permissions.conf"];
/// Where node.conf finds the routes' TLS files: the CA's certificate and the routes' key and
/// certificate (valid for every node's name).
const ROUTE_TLS: &str = "/etc/nats-tls";

/// The routes' TLS files of every cluster of this test process, made once: a CA, and a route
/// certificate for n1 to n4 (the stranger of the route tests among them).
pub(super) fn route_tls() -> &'static std::path::Path {
    static TLS: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("order-service-route-tls-")
            .tempdir()
            .expect("a folder for the routes' certificates");
        crate::identities::certificates(dir.path(), &["route"], "DNS:n1,DNS:n2,DNS:n3,DNS:n4");
        dir
    })
    .path()
}

/// The image `make nats-image` builds.
const IMAGE: &str = "order-service/nats:2.15.1";
/// The node names, as the configs in nats/cluster/ and their routes know them.
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// How long a node may take to answer `/healthz` after a start, or the cluster to elect a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one Docker command may take.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);
/// The password the nodes' routes authenticate with (`NATS_ROUTE_PASSWORD` of nats/cluster/).
pub(super) const ROUTE_PASSWORD: &str = "test-route-password";

/// Three nodes and their network, owned by one test.
pub struct Cluster {
    network: String,
    nodes: Vec<Node>,
    /// Where the identity files the nodes include come from: the shipped ones, or a copy with
    /// groups added ([`Cluster::start_with_identities`]).
    identities: std::path::PathBuf,
    /// Servers started beside the nodes ([`Cluster::start_stranger`]).
    strangers: Vec<String>,
}

/// One node's container and loopback ports.
struct Node {
    name: &'static str,
    container: String,
    client_port: u16,
    monitor_port: u16,
}

impl Cluster {
    /// Creates the network, starts the three nodes and waits until every node is up and knows
    /// the meta leader. Panics (fails the test) when it cannot.
    pub async fn start() -> Cluster {
        Cluster::start_with_identities(&NatsServer::shipped_dir()).await
    }

    /// [`Cluster::start`] with the identity files (`identities.conf`, `users.conf`,
    /// `permissions.conf`) of `dir`, e.g. the shipped ones with consumer groups added.
    pub async fn start_with_identities(dir: &std::path::Path) -> Cluster {
        if let Err(error) = docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE]).await {
            panic!("image {IMAGE} is not available ({error}): build it with `make nats-image`");
        }
        // The ports are free when probed, but another process may take one before Docker binds
        // it; a few attempts, each with a fresh network and fresh ports, cover that race.
        let mut attempts = 0;
        let cluster = loop {
            attempts += 1;
            match Cluster::create(dir).await {
                Ok(cluster) => break cluster,
                Err(error) if attempts < 3 => eprintln!("cluster fixture: {error}; again"),
                Err(error) => panic!("cannot start the cluster: {error}"),
            }
        };
        for name in NODES {
            cluster.wait_up(name).await;
        }
        cluster.wait_for_meta_leader().await;
        eprintln!(
            "cluster fixture: {} on network {}",
            cluster.url(),
            cluster.network
        );
        cluster
    }

    /// The network and three started containers, or why not (what was made is removed).
    async fn create(identities: &std::path::Path) -> Result<Cluster, String> {
        let prefix = format!(
            "order-service-it-{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let network = format!("{prefix}-net");
        docker(&["network", "create", "--label", "order-service-it", &network])
            .await
            .map_err(|error| format!("create network {network}: {error}"))?;
        let ports: [u16; 6] = nats_server::free_ports().expect("probe free loopback ports");
        let mut cluster = Cluster {
            network,
            nodes: Vec::new(),
            identities: identities.to_owned(),
            strangers: Vec::new(),
        };
        for (i, name) in NODES.into_iter().enumerate() {
            let node = Node {
                name,
                container: format!("{prefix}-{name}"),
                client_port: ports[2 * i],
                monitor_port: ports[2 * i + 1],
            };
            let run = cluster.run_node(&node).await;
            cluster.nodes.push(node);
            // Dropping `cluster` removes what was created so far.
            run.map_err(|error| format!("start node {name}: {error}"))?;
        }
        Ok(cluster)
    }

    /// Starts `node`'s container (a new one, with an empty store) from the shipped configs, the
    /// shipped identities and their test passwords, on its network alias and loopback ports.
    async fn run_node(&self, node: &Node) -> Result<String, String> {
        let config = format!("/etc/nats/{}.conf", node.name);
        self.run_server(
            &node.container,
            node.name,
            Some(node),
            &config,
            ROUTE_PASSWORD,
            route_tls(),
        )
        .await
    }

    /// Starts a server that is not one of the three on the cluster's network, with the nodes'
    /// shared config under its own name, `route_password` and the routes' TLS files of `tls`
    /// (the cluster's own: [`route_tls`]): it tries to route to every node. Returns its
    /// container, removed with the cluster.
    pub async fn start_stranger(
        &mut self,
        name: &'static str,
        route_password: &str,
        tls: &std::path::Path,
    ) -> String {
        let container = format!("{}-{name}", self.network.trim_end_matches("-net"));
        self.strangers.push(container.clone());
        let config = "/etc/nats/node.conf";
        self.run_server(&container, name, None, config, route_password, tls)
            .await
            .unwrap_or_else(|error| panic!("start {name}: {error}"));
        container
    }

    /// `docker run` of a server on the cluster's network as `alias`: a node (its ports published)
    /// or a stranger (`node` none, `--name alias` given to the server).
    async fn run_server(
        &self,
        container: &str,
        alias: &str,
        node: Option<&Node>,
        config: &str,
        route_password: &str,
        tls: &std::path::Path,
    ) -> Result<String, String> {
        let configs = concat!(env!("CARGO_MANIFEST_DIR"), "/nats/cluster");
        let volume = format!("{configs}:/etc/nats:ro");
        // The identities, where node.conf includes them from, and their passwords.
        let identities = IDENTITY_FILES
            .map(|file| format!("{}:/etc/{file}:ro", self.identities.join(file).display()));
        let mut env: Vec<String> = NatsServer::identity_env()
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        env.push(format!("NATS_ROUTE_PASSWORD={route_password}"));
        env.push(format!("NATS_ROUTES={}", routes(route_password)));
        let mut args: Vec<String> = [
            "run",
            "--detach",
            "--name",
            container,
            "--label",
            "order-service-it",
            "--network",
            &self.network,
            "--network-alias",
            alias,
            "--volume",
            &volume,
            "--volume",
            &identities[0],
            "--volume",
            &identities[1],
            "--volume",
            &identities[2],
            "--volume",
            &format!("{}:{ROUTE_TLS}:ro", tls.display()),
        ]
        .map(String::from)
        .to_vec();
        if let Some(node) = node {
            args.extend([
                "--publish".into(),
                format!("127.0.0.1:{}:4222", node.client_port),
                "--publish".into(),
                format!("127.0.0.1:{}:8222", node.monitor_port),
            ]);
        }
        for value in &env {
            args.extend(["--env".into(), value.clone()]);
        }
        args.extend(["--entrypoint", "/nats-server", IMAGE, "-c", config].map(String::from));
        if node.is_none() {
            args.extend(["--name".into(), alias.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args).await
    }

    /// Every node loses its store at once, as a cluster whose disks were all replaced: each
    /// container is removed and a new one started under the same name and ports, and the new
    /// cluster elects a meta leader.
    pub async fn replace_all_empty(&self) {
        for node in &self.nodes {
            docker(&["rm", "--force", "--volumes", &node.container])
                .await
                .unwrap_or_else(|error| panic!("remove {}: {error}", node.name));
        }
        for node in &self.nodes {
            self.run_node(node)
                .await
                .unwrap_or_else(|error| panic!("start {} again: {error}", node.name));
        }
        for name in NODES {
            self.wait_up(name).await;
        }
        self.wait_for_meta_leader().await;
    }

    /// One node loses its store: its container is removed and a new one, empty, started under
    /// the same name, network alias and ports (its peers know it again by its server name).
    pub async fn replace_empty(&self, name: &str) {
        let node = self.node(name);
        docker(&["rm", "--force", "--volumes", &node.container])
            .await
            .unwrap_or_else(|error| panic!("remove {name}: {error}"));
        self.run_node(node)
            .await
            .unwrap_or_else(|error| panic!("start {name} again: {error}"));
        self.wait_up(name).await;
    }

    /// The Docker container of node `name`, for faults the cluster has no method for.
    pub fn container(&self, name: &str) -> &str {
        &self.node(name).container
    }

    /// Node `name`'s monitoring endpoint `path` (e.g. `jsz?streams=true`), when it answers.
    pub async fn monitor(&self, name: &str, path: &str) -> Option<Value> {
        monitor(self.node(name).monitor_port, path).await
    }

    /// `nats://127.0.0.1:<n1>,nats://127.0.0.1:<n2>,nats://127.0.0.1:<n3>`: `NATS_URL` for the
    /// service under test.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The service's settings for this cluster: the whole list and the service's identity.
    pub fn service(&self) -> order_service::bus::NatsSettings {
        NatsServer::as_service(self.url())
    }

    /// A JetStream context on a client holding the whole list, connected as the service does.
    /// Its requests give up after two seconds: a stream without a leader does not answer, and the
    /// waits here ask again rather than sit out the default timeout.
    pub async fn jetstream(&self) -> jetstream::Context {
        let client = order_service::bus::connect(&self.service())
            .await
            .unwrap_or_else(|error| panic!("connect to {}: {error}", self.url()));
        jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client)
    }

    /// SIGKILL, as a crash: what the node had not written is lost.
    pub async fn kill(&self, name: &str) {
        self.docker_on(name, &["kill"]).await;
    }

    /// SIGTERM and a clean shutdown (lame duck: its leaderships move first).
    pub async fn stop(&self, name: &str) {
        self.docker_on(name, &["stop", "--time", "30"]).await;
    }

    /// Starts a stopped or killed node with its store, and waits until it is up.
    pub async fn start_node(&self, name: &str) {
        self.docker_on(name, &["start"]).await;
        self.wait_up(name).await;
    }

    /// Cuts the node off the cluster's network: from its peers and from clients alike.
    pub async fn disconnect(&self, name: &str) {
        let container = &self.node(name).container;
        docker(&["network", "disconnect", &self.network, container])
            .await
            .unwrap_or_else(|error| panic!("disconnect {name}: {error}"));
    }

    /// Puts a [`disconnect`](Self::disconnect)ed node back on the network under its name, and
    /// waits until it answers.
    pub async fn reconnect(&self, name: &str) {
        let container = &self.node(name).container;
        docker(&[
            "network",
            "connect",
            "--alias",
            name,
            &self.network,
            container,
        ])
        .await
        .unwrap_or_else(|error| panic!("reconnect {name}: {error}"));
        self.wait_up(name).await;
    }

    /// The node leading `stream`'s replicas, once there is one.
    pub async fn stream_leader(&self, js: &jetstream::Context, stream: &str) -> &'static str {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let leader = match js.get_stream(stream).await {
                Ok(stream) => stream
                    .cached_info()
                    .cluster
                    .as_ref()
                    .and_then(|c| c.leader.clone()),
                Err(_) => None,
            };
            if let Some(node) = leader.and_then(|l| NODES.into_iter().find(|n| *n == l)) {
                return node;
            }
            assert!(Instant::now() < deadline, "{stream} has no leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every stream of the topic table has a leader and all its replicas are current,
    /// so that reading the streams sees everything they acknowledged.
    pub async fn wait_streams_current(&self, js: &jetstream::Context) {
        let names: Vec<String> = Topics::embedded().iter().map(|t| t.stream_name()).collect();
        self.wait_current(js, &names).await;
    }

    /// Waits until each of `streams` has a leader and all its replicas are current.
    pub async fn wait_current(&self, js: &jetstream::Context, streams: &[String]) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for name in streams {
            loop {
                let cluster = match js.get_stream(&name).await {
                    Ok(stream) => stream.cached_info().cluster.clone(),
                    Err(_) => None,
                };
                let current = cluster.as_ref().is_some_and(|c| {
                    c.leader.is_some() && c.replicas.iter().all(|peer| peer.current)
                });
                if current {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} is not current: {cluster:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Waits until every running node reports the same meta leader.
    pub async fn wait_for_meta_leader(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut leaders = Vec::new();
            for node in &self.nodes {
                if let Some(jsz) = monitor(node.monitor_port, "jsz").await {
                    leaders.push(
                        jsz["meta_cluster"]["leader"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    );
                }
            }
            if !leaders.is_empty()
                && !leaders[0].is_empty()
                && leaders.iter().all(|l| *l == leaders[0])
            {
                return;
            }
            assert!(Instant::now() < deadline, "no meta leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the node answers with JetStream enabled. Not the full `/healthz`: that also
    /// wants every stream the node holds current, which a stream whose other peers are down
    /// never is.
    async fn wait_up(&self, name: &str) {
        let node = self.node(name);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if monitor(node.monitor_port, "healthz?js-enabled-only=true")
                .await
                .is_some()
            {
                return;
            }
            if Instant::now() >= deadline {
                let logs = std::process::Command::new("docker")
                    .args(["logs", "--tail", "30", &node.container])
                    .output()
                    .map(|out| String::from_utf8_lossy(&out.stderr).into_owned());
                panic!("node {name} is not up after {READY_TIMEOUT:?}; its log: {logs:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn docker_on(&self, name: &str, command: &[&str]) {
        let container = &self.node(name).container;
        let mut args = command.to_vec();
        args.push(container);
        docker(&args)
            .await
            .unwrap_or_else(|error| panic!("docker {command:?} {name}: {error}"));
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut rm = vec!["rm", "--force", "--volumes"];
        rm.extend(self.nodes.iter().map(|node| node.container.as_str()));
        rm.extend(self.strangers.iter().map(String::as_str));
        for args in [rm, vec!["network", "rm", &self.network]] {
            let _ = std::process::Command::new("docker")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `NATS_ROUTES` for the nodes: every node's route URL with the route user and `password`, as
/// the array literal the server's config parser reads from the environment.
fn routes(password: &str) -> String {
    let urls: Vec<String> = NODES
        .iter()
        .map(|node| format!("nats-route://route:{password}@{node}:6222"))
        .collect();
    format!("[{}]", urls.join(", "))
}

/// Runs `docker args`; its stdout, or its stderr as the error.
pub(super) async fn docker(args: &[&str]) -> Result<String, String> {
    let run = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(DOCKER_TIMEOUT, run).await {
        Err(_) => Err(format!("docker {args:?} took over {DOCKER_TIMEOUT:?}")),
        Ok(Err(error)) => Err(format!("cannot run docker: {error}")),
        Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into()),
        Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

/// A monitoring endpoint's JSON when it answers 200 (`/healthz`, `/jsz`).
async fn monitor(port: u16, path: &str) -> Option<Value> {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}
