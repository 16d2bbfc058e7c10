//! A real nats-server for the integration tests, with JetStream and its own empty store.
//!
//! Where a Docker engine answers, the server is a container of the locally built image
//! `order-service/nats:2.15.1` (`make nats-image`); otherwise it is a `nats-server` process on a
//! free loopback port. `ORDER_SERVICE_TEST_NATS=container` makes the container mandatory (CI sets
//! it) and `ORDER_SERVICE_TEST_NATS=process` forces the process. Either way readiness is the
//! monitoring endpoint `/healthz` answering ok, and a server that cannot start fails the test:
//! nothing is skipped. The path taken is printed. The process path is the library's
//! [`order_service::nats_server`], which the bench runs too.
//!
//! The server can be stopped and started again with its data (for outage tests). Its host ports
//! are chosen up front and stay the same across restarts, so a connected client reconnects by
//! itself: Docker gives a container that publishes ports without fixed host ports new ones on
//! every start, which a client holding the old URL would never find. Dropping the fixture removes
//! the container, or kills the process and deletes its store.
//!
//! [`NatsServer::start_with_identities`] runs the shipped users and permissions
//! (`nats/identities.conf`) with the test passwords below; clients then connect as the service
//! ([`NatsServer::service`]) or a subscriber ([`NatsServer::subscriber`]).
//!
//! ```ignore
//! let mut nats = NatsServer::start().await;
//! let client = nats.connect().await;
//! nats.stop().await;          // or .kill() for an abrupt stop
//! nats.start_again().await;   // same ports, same data; `client` reconnects
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use order_service::nats_server::{self, NatsProcess, Settings, Sync};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// The image `make nats-image` builds.
const IMAGE_NAME: &str = "order-service/nats";
const IMAGE_TAG: &str = "2.15.1";

/// The local image `make nats-image` builds, `name:tag`.
pub fn image() -> String {
    format!("{IMAGE_NAME}:{IMAGE_TAG}")
}
const CLIENT_PORT: u16 = 4222;
const MONITOR_PORT: u16 = 8222;
/// How long a server may take to answer `/healthz` after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable choosing the path: `container`, `process`, or unset for automatic.
const MODE_VAR: &str = "ORDER_SERVICE_TEST_NATS";
/// The service's user in `nats/identities.conf`, and its password in the tests.
pub const SERVICE_USER: &str = "order-service";
const SERVICE_PASSWORD: &str = "test-service-password";
/// The subscribers' user in `nats/identities.conf`, and its password in the tests.
pub const SUBSCRIBER_USER: &str = "subscriber";
const SUBSCRIBER_PASSWORD: &str = "test-subscriber-password";

/// A server's TLS files (PEM): its certificate and key, and the CA its clients' certificates must
/// chain to. The server then takes TLS connections only, from clients with such a certificate.
pub struct ServerTls {
    /// The server's certificate.
    pub cert: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
    /// The CA of the clients' certificates.
    pub ca: std::path::PathBuf,
}

impl ServerTls {
    /// The config block for files at `cert`, `key` and `ca` (paths as the server sees them).
    fn block(cert: &str, key: &str, ca: &str) -> String {
        format!(
            "\ntls {{\n  cert_file: \"{cert}\"\n  key_file: \"{key}\"\n  ca_file: \"{ca}\"\n  \
             verify: true\n}}\n"
        )
    }
}

/// A running (or stopped) nats-server owned by one test.
pub struct NatsServer {
    runtime: Runtime,
    client_port: u16,
    monitor_port: u16,
    /// The folder of the identities the server runs (`identities.conf` and the `users.conf` it
    /// includes), refusing anonymous clients; none for an open server.
    identities: Option<PathBuf>,
}

enum Runtime {
    Container(Box<ContainerAsync<GenericImage>>),
    Process(Box<Process>),
}

struct Process {
    server: NatsProcess,
    /// Store directory and log file; deleted on drop, after the server (fields drop in order).
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on the path `ORDER_SERVICE_TEST_NATS` and the machine allow, and waits until
    /// it is healthy. Panics (fails the test) when it cannot.
    pub async fn start() -> NatsServer {
        NatsServer::start_on_path(None, None).await
    }

    /// [`start`](Self::start), with the shipped identities (`nats/identities.conf`) and the test
    /// passwords in the server's environment: anonymous clients are refused.
    pub async fn start_with_identities() -> NatsServer {
        NatsServer::start_on_path(Some(NatsServer::shipped_dir()), None).await
    }

    /// [`start_with_identities`](Self::start_with_identities) with the identities of folder
    /// `dir` (a copy of `nats/` with consumer groups added, say).
    pub async fn start_with_identities_in(dir: &Path) -> NatsServer {
        NatsServer::start_on_path(Some(dir.to_owned()), None).await
    }

    /// [`start_with_identities`](Self::start_with_identities), taking TLS connections only, from
    /// clients with a certificate of `tls.ca`.
    pub async fn start_with_identities_and_tls(tls: &ServerTls) -> NatsServer {
        NatsServer::start_on_path(Some(NatsServer::shipped_dir()), Some(tls)).await
    }

    /// TLS is only offered with the identities.
    async fn start_on_path(identities: Option<PathBuf>, tls: Option<&ServerTls>) -> NatsServer {
        let mode = std::env::var(MODE_VAR).unwrap_or_default();
        let use_container = match mode.as_str() {
            "container" => true,
            "process" => false,
            "" => docker_answers().await,
            other => panic!("{MODE_VAR}={other:?}: expected container, process or unset"),
        };
        if use_container {
            NatsServer::start_container(identities, tls).await
        } else {
            NatsServer::start_process(identities, tls).await
        }
    }

    /// The server's environment for the shipped identities: their passwords.
    pub(crate) fn identity_env() -> Vec<(String, String)> {
        vec![
            ("NATS_SERVICE_PASSWORD".into(), SERVICE_PASSWORD.into()),
            (
                "NATS_SUBSCRIBER_PASSWORD".into(),
                SUBSCRIBER_PASSWORD.into(),
            ),
        ]
    }

    /// `nats/<file>` of the repository.
    pub(crate) fn shipped(file: &str) -> std::path::PathBuf {
        NatsServer::shipped_dir().join(file)
    }

    /// `nats/` of the repository.
    pub(crate) fn shipped_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("nats")
    }

    /// The settings clients of this server use by default: anonymous, or the service's identity
    /// when the server runs the shipped identities.
    pub fn settings(&self) -> order_service::bus::NatsSettings {
        if self.identities.is_some() {
            self.service()
        } else {
            order_service::bus::NatsSettings::new(self.url())
        }
    }

    /// Settings connecting as the service's user.
    pub fn service(&self) -> order_service::bus::NatsSettings {
        NatsServer::as_service(self.url())
    }

    /// Settings connecting to `url` (one server or a list) as the service's user of the shipped
    /// identities, with the tests' password.
    pub(crate) fn as_service(url: String) -> order_service::bus::NatsSettings {
        order_service::bus::NatsSettings::new(url).with_user(SERVICE_USER, SERVICE_PASSWORD)
    }

    /// Settings connecting as the subscribers' user.
    pub fn subscriber(&self) -> order_service::bus::NatsSettings {
        order_service::bus::NatsSettings::new(self.url())
            .with_user(SUBSCRIBER_USER, SUBSCRIBER_PASSWORD)
    }

    /// What the server has logged so far.
    pub async fn log(&self) -> String {
        match &self.runtime {
            Runtime::Container(container) => {
                let mut log = container.stdout_to_vec().await.unwrap_or_default();
                log.extend(container.stderr_to_vec().await.unwrap_or_default());
                String::from_utf8_lossy(&log).into_owned()
            }
            Runtime::Process(process) => {
                std::fs::read_to_string(process.server.log_path()).unwrap_or_default()
            }
        }
    }

    /// `nats://127.0.0.1:<port>`: the client URL, the same across restarts.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<port>`: the monitoring endpoint.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// `container` or `process`.
    pub fn kind(&self) -> &'static str {
        match self.runtime {
            Runtime::Container(_) => "container",
            Runtime::Process(_) => "process",
        }
    }

    /// Connects the way the service does ([`order_service::bus::connect`]), with
    /// [`settings`](Self::settings).
    pub async fn connect(&self) -> async_nats::Client {
        order_service::bus::connect(&self.settings())
            .await
            .unwrap_or_else(|error| panic!("cannot connect to {}: {error}", self.url()))
    }

    /// Connects and returns a JetStream context.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.connect().await)
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after 10 s); its data stays.
    pub async fn stop(&mut self) {
        match &mut self.runtime {
            Runtime::Container(container) => container
                .stop_with_timeout(Some(nats_server::STOP_TIMEOUT.as_secs() as i32))
                .await
                .expect("stop the nats container"),
            Runtime::Process(process) => process.server.stop().await,
        }
    }

    /// Stops the server at once with SIGKILL, as a crash would; what it had not written is lost.
    pub async fn kill(&mut self) {
        match &mut self.runtime {
            Runtime::Container(container) => container
                .stop_with_timeout(Some(0))
                .await
                .expect("kill the nats container"),
            Runtime::Process(process) => process.server.kill().await,
        }
    }

    /// Starts the stopped server again on the same ports with the same store, and waits until it
    /// is healthy.
    pub async fn start_again(&mut self) {
        match &mut self.runtime {
            Runtime::Container(container) => {
                container
                    .start()
                    .await
                    .expect("start the nats container again");
            }
            Runtime::Process(process) => {
                if let Err(error) = process.server.start_again() {
                    panic!("starting nats-server again: {error}");
                }
            }
        }
        if let Err(error) = self.wait_until_healthy().await {
            panic!("starting the server again: {error}");
        }
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    async fn start_container(identities: Option<PathBuf>, tls: Option<&ServerTls>) -> NatsServer {
        // Without the image testcontainers would try a registry pull, which cannot work here and
        // would hide the actual fix.
        let image = image();
        let inspected = match testcontainers::bollard::Docker::connect_with_local_defaults() {
            Ok(docker) => docker
                .inspect_image(&image)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = inspected {
            panic!(
                "image {image} is not available: {error}\n\
                 build it with `make nats-image` (or set {MODE_VAR}=process to use a local \
                 nats-server instead)"
            );
        }
        let mut last_error = String::new();
        // The ports are free when probed but another process may take one before Docker binds
        // it; a few attempts cover that race.
        for _attempt in 0..3 {
            let [client_port, monitor_port] =
                nats_server::free_ports().expect("probe free loopback ports");
            let started =
                new_container(client_port, monitor_port, identities.as_deref(), tls).await;
            match started {
                Ok(container) => {
                    let mut server = NatsServer {
                        runtime: Runtime::Container(Box::new(container)),
                        client_port,
                        monitor_port,
                        identities: identities.clone(),
                    };
                    eprintln!(
                        "nats fixture: container {IMAGE_NAME}:{IMAGE_TAG} at {} (monitor {})",
                        server.url(),
                        server.monitor_url()
                    );
                    match server.wait_until_healthy().await {
                        Ok(()) => return server,
                        Err(error) => last_error = error,
                    }
                }
                Err(error) => last_error = error.to_string(),
            }
        }
        panic!("cannot start container {image}: {last_error}");
    }

    async fn start_process(identities: Option<PathBuf>, tls: Option<&ServerTls>) -> NatsServer {
        let binary = nats_server::find_binary(Path::new(env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|| {
                panic!(
                    "no nats-server: set NATS_SERVER_BIN, run `make nats-server` (installs \
                     tools/nats-server) or put nats-server on PATH"
                )
            });
        let dir = tempfile::Builder::new()
            .prefix("order-service-nats-")
            .tempdir()
            .expect("create a temp dir for the nats store");
        let settings = Settings {
            binary: binary.clone(),
            dir: dir.path().to_owned(),
            name: None,
            sync: Sync::Always,
            includes: identities
                .iter()
                .map(|dir| dir.join("identities.conf"))
                .chain(tls.map(|tls| {
                    let block = ServerTls::block(
                        &tls.cert.display().to_string(),
                        &tls.key.display().to_string(),
                        &tls.ca.display().to_string(),
                    );
                    // Not in the server's folder itself: includes are copied there.
                    let source = dir.path().join("tls");
                    std::fs::create_dir(&source).expect("create the tls folder");
                    std::fs::write(source.join("tls.conf"), block).expect("write tls.conf");
                    source.join("tls.conf")
                }))
                .collect(),
            copies: identities
                .iter()
                .flat_map(|dir| [dir.join("users.conf"), dir.join("permissions.conf")])
                .collect(),
            env: if identities.is_some() {
                NatsServer::identity_env()
            } else {
                Vec::new()
            },
        };
        let server = NatsProcess::start(settings, READY_TIMEOUT)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start nats-server {}: nats-server (process) {error}",
                    binary.display()
                )
            });
        eprintln!(
            "nats fixture: process {} at {} (monitor http://127.0.0.1:{}, store {})",
            binary.display(),
            server.url(),
            server.monitor_port(),
            dir.path().display()
        );
        NatsServer {
            client_port: server.client_port(),
            monitor_port: server.monitor_port(),
            identities,
            runtime: Runtime::Process(Box::new(Process { server, _dir: dir })),
        }
    }

    /// Polls `/healthz` until it says ok; gives up early when the server has exited.
    async fn wait_until_healthy(&mut self) -> Result<(), String> {
        let (port, kind) = (self.monitor_port, self.kind());
        nats_server::wait_until_healthy(port, READY_TIMEOUT, async || self.exited().await)
            .await
            .map_err(|error| format!("nats-server ({kind}) {error}"))
    }

    /// Why the server is no longer running, if it is not.
    async fn exited(&mut self) -> Option<String> {
        match &mut self.runtime {
            Runtime::Container(container) => match container.is_running().await {
                Ok(true) => None,
                Ok(false) => {
                    let logs = container.stderr_to_vec().await.unwrap_or_default();
                    Some(format!(
                        "container stopped; its log:\n{}",
                        String::from_utf8_lossy(&logs)
                    ))
                }
                Err(error) => Some(format!("cannot inspect the container: {error}")),
            },
            Runtime::Process(process) => process.server.exited(),
        }
    }

    /// Lets `edit` change the files of `stream`'s messages (its block files `<n>.blk` in order,
    /// after its state file `index.db`) in the store of the stopped server, as a disk that lost or
    /// damaged data would: the container's files are copied out and the edited ones back
    /// (`docker cp` works on a stopped container), the process's are edited where they are. A
    /// block emptied stands for a block file lost.
    pub async fn edit_blocks(&mut self, stream: &str, edit: impl FnOnce(&[std::path::PathBuf])) {
        match &self.runtime {
            Runtime::Process(process) => {
                let blocks = blocks_of(&process._dir.path().join("store"), stream);
                edit(&blocks);
            }
            Runtime::Container(container) => {
                let id = container.id().to_owned();
                let copy = tempfile::tempdir().expect("a temp dir for the store's copy");
                docker_cli(&[
                    "cp",
                    &format!("{id}:/data/jetstream"),
                    &copy.path().display().to_string(),
                ]);
                let root = copy.path().join("jetstream");
                let blocks = blocks_of(&root, stream);
                edit(&blocks);
                for block in &blocks {
                    let inside =
                        Path::new("/data/jetstream").join(block.strip_prefix(&root).unwrap());
                    docker_cli(&[
                        "cp",
                        &block.display().to_string(),
                        &format!("{id}:{}", inside.display()),
                    ]);
                }
            }
        }
    }

    /// Freezes the server (`docker pause`, or SIGSTOP for the process): connections stay open
    /// and nothing is answered, as with a hung broker.
    pub async fn pause(&self) {
        self.signal_frozen(true).await;
    }

    /// Lets a [`pause`](Self::pause)d server run again.
    pub async fn resume(&self) {
        self.signal_frozen(false).await;
    }

    async fn signal_frozen(&self, frozen: bool) {
        match &self.runtime {
            Runtime::Container(container) if frozen => container.pause().await.expect("pause"),
            Runtime::Container(container) => container.unpause().await.expect("unpause"),
            Runtime::Process(process) => {
                let pid = process.server.pid().expect("running");
                let signal = if frozen { "-STOP" } else { "-CONT" };
                let sent = std::process::Command::new("kill")
                    .args([signal, &pid.to_string()])
                    .status()
                    .expect("run kill");
                assert!(sent.success(), "kill {signal} {pid}");
            }
        }
    }
}

/// A new container of the local image on these host ports; with `identities`, the shipped users
/// (and `tls` when given) on top of the image's own config.
async fn new_container(
    client_port: u16,
    monitor_port: u16,
    identities: Option<&Path>,
    tls: Option<&ServerTls>,
) -> testcontainers::core::error::Result<ContainerAsync<GenericImage>> {
    let mut request = GenericImage::new(IMAGE_NAME, IMAGE_TAG)
        .with_exposed_port(CLIENT_PORT.tcp())
        .with_exposed_port(MONITOR_PORT.tcp())
        // Readiness is /healthz, polled below, not a log line.
        .with_wait_for(WaitFor::Nothing)
        .with_mapped_port(client_port, CLIENT_PORT.tcp())
        .with_mapped_port(monitor_port, MONITOR_PORT.tcp())
        // Publish on loopback only: nothing outside this machine has business with it.
        .with_host_config_modifier(|host_config| {
            for bindings in host_config
                .port_bindings
                .iter_mut()
                .flat_map(|map| map.values_mut())
            {
                for binding in bindings.iter_mut().flatten() {
                    binding.host_ip = Some("127.0.0.1".into());
                }
            }
        });
    // The image's own config, which includes the shipped identities; the TLS block on top.
    let mut config = std::fs::read_to_string(NatsServer::shipped("container.conf"))
        .expect("read nats/container.conf");
    let Some(identities) = identities else {
        // A test about something else runs the broker open, without the users' passwords.
        let include = "include \"identities.conf\"";
        assert!(
            config.contains(include),
            "nats/container.conf includes the identities"
        );
        config = config.replace(include, "");
        return request
            .with_copy_to("/nats-server.conf", config.into_bytes())
            .start()
            .await;
    };
    {
        if let Some(tls) = tls {
            config += &ServerTls::block("/tls/cert.pem", "/tls/key.pem", "/tls/ca.pem");
            request = request
                .with_copy_to("/tls/cert.pem", tls.cert.clone())
                .with_copy_to("/tls/key.pem", tls.key.clone())
                .with_copy_to("/tls/ca.pem", tls.ca.clone());
        }
        request = request
            .with_copy_to("/nats-server.conf", config.into_bytes())
            // The working tree's (or the test's), which an image built earlier may not have.
            .with_copy_to("/identities.conf", identities.join("identities.conf"))
            .with_copy_to("/users.conf", identities.join("users.conf"))
            .with_copy_to("/permissions.conf", identities.join("permissions.conf"));
        for (name, value) in NatsServer::identity_env() {
            request = request.with_env_var(name, value);
        }
    }
    request.start().await
}

impl NatsServer {
    /// Stops the server and starts it again on the same ports with an empty store, as a broker
    /// that lost its disk: a new container, or the process with its store folder deleted.
    pub async fn start_again_empty(&mut self) {
        self.stop().await;
        match &mut self.runtime {
            Runtime::Container(container) => {
                let fresh = new_container(
                    self.client_port,
                    self.monitor_port,
                    self.identities.as_deref(),
                    None,
                )
                .await
                .expect("start a new nats container on the same ports");
                // The old container is removed when dropped here.
                **container = fresh;
            }
            Runtime::Process(process) => {
                let store = process._dir.path().join("store");
                if store.exists() {
                    std::fs::remove_dir_all(&store).expect("delete the nats store");
                }
                if let Err(error) = process.server.start_again() {
                    panic!("starting nats-server again: {error}");
                }
            }
        }
        if let Err(error) = self.wait_until_healthy().await {
            panic!("starting the server with an empty store: {error}");
        }
    }
}

/// Whether a Docker engine answers within two seconds.
async fn docker_answers() -> bool {
    let Ok(docker) = testcontainers::bollard::Docker::connect_with_local_defaults() else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), docker.ping()).await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn restarted_server_keeps_its_ports_and_data() {
    let mut nats = NatsServer::start().await;
    let url = nats.url();
    let client = nats.connect().await;
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "FIXTURE".into(),
        subjects: vec!["fixture.>".into()],
        ..Default::default()
    })
    .await
    .expect("create a stream");
    js.publish("fixture.one", "1".into())
        .await
        .expect("publish")
        .await
        .expect("PubAck");

    nats.restart().await;
    assert_eq!(nats.url(), url, "same client URL after a restart");
    wait_for_reconnect(&client).await;
    let mut stream = js
        .get_stream("FIXTURE")
        .await
        .expect("stream after restart");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);

    // After a crash the stream and what was acknowledged before it are still there.
    nats.kill().await;
    nats.start_again().await;
    wait_for_reconnect(&client).await;
    let mut stream = js.get_stream("FIXTURE").await.expect("stream after a kill");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
}

async fn wait_for_reconnect(client: &async_nats::Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.connection_state() != async_nats::connection::State::Connected {
        assert!(Instant::now() < deadline, "client did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The files of `stream`'s messages under a JetStream store directory: `index.db`, then the
/// blocks in order.
fn blocks_of(store: &Path, stream: &str) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, stream: &str, found: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, stream, found);
            } else if path
                .parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                == Some(std::ffi::OsStr::new(stream))
            {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(store, stream, &mut found);
    found.sort_by_key(|p| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    });
    assert!(
        !found.is_empty(),
        "no block files of {stream} under {}",
        store.display()
    );
    found
}

/// Runs the Docker CLI; panics with its output when it fails.
fn docker_cli(args: &[&str]) {
    let output = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
