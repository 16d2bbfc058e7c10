//! A local nats-server process for the bench and the integration tests: JetStream with its own
//! store, on loopback ports, ready once its monitoring endpoint `/healthz` says ok.
//!
//! `make bench` runs one (with `sync_interval: always`, as `nats/nats-server.conf` has it) and
//! the integration tests run one wherever no Docker engine answers; both take this one
//! implementation, so the process, its ports and its readiness are written once. The service
//! itself never starts a server: it connects to the one `NATS_URL` names.
//!
//! The server can be stopped and started again on the same ports with the same store, so a
//! connected client reconnects by itself. Dropping a [`NatsProcess`] kills the process; its
//! folder belongs to the caller.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// How long a graceful stop may take before the process is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `count` distinct loopback ports nobody listens on right now, below the kernel's ephemeral
/// range.
///
/// A server here is stopped and started again on the same ports (a restart, a node of a cluster
/// test brought back). Had its ports come from the ephemeral range, the kernel could hand one to
/// any outgoing connection or `bind(0)` while the server is down, and the restart would fail with
/// "address already in use". Below that range the kernel never picks a port by itself, so only
/// another explicit probe like this one can take it: the pick is random to make that unlikely.
/// Every probe is held until all ports are known, so no two coincide; another process may still
/// take one before the caller binds it, which callers cover by trying again on fresh ports.
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let (low, high) = explicit_port_range();
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(N);
    let mut tries = 0;
    while listeners.len() < N {
        tries += 1;
        if tries > 10_000 {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("no free loopback port in {low}..{high}"),
            ));
        }
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, fastrand::u16(low..high))) {
            listeners.push(listener);
        }
    }
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// The ports [`free_ports`] picks from: from 10,000 up to where the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, Linux's default 32768) begins.
fn explicit_port_range() -> (u16, u16) {
    const LOW: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    (LOW, ephemeral_start.max(LOW + 1_000))
}

/// One free loopback port; see [`free_ports`].
pub fn free_port() -> io::Result<u16> {
    free_ports::<1>().map(|[port]| port)
}

/// When JetStream fsyncs what it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// The server's default (every two minutes).
    Default,
    /// Every write before its PubAck, as `nats/nats-server.conf` has it.
    Always,
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `nats-server` binary.
    pub binary: PathBuf,
    /// Where the config file, the store (`store/`) and the log (`nats-server.log`) go.
    pub dir: PathBuf,
    /// `server_name`, or the server's generated one.
    pub name: Option<String>,
    /// JetStream's `sync_interval`.
    pub sync: Sync,
    /// Config files to include (e.g. `nats/identities.conf`): copied into `dir` beside the
    /// generated config, since nats-server resolves includes relative to the including file.
    pub includes: Vec<PathBuf>,
    /// Files the includes include in turn (e.g. `nats/users.conf`): copied into `dir` too, not
    /// included by the generated config.
    pub copies: Vec<PathBuf>,
    /// Environment variables for the process, e.g. the passwords the included file refers to.
    pub env: Vec<(String, String)>,
}

/// A nats-server process (running or stopped) on fixed loopback ports.
pub struct NatsProcess {
    settings: Settings,
    client_port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

impl NatsProcess {
    /// Starts a server on free ports and waits until it is healthy. A probed port can be taken
    /// before nats-server binds it, and then the server exits at once: a few attempts on fresh
    /// ports cover that race.
    pub async fn start(settings: Settings, ready_within: Duration) -> Result<NatsProcess, String> {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let [client_port, monitor_port] = free_ports().map_err(|e| e.to_string())?;
            let mut server = NatsProcess {
                settings: settings.clone(),
                client_port,
                monitor_port,
                child: None,
            };
            server.start_again().map_err(|e| e.to_string())?;
            match server.wait_until_healthy(ready_within).await {
                Ok(()) => return Ok(server),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    /// The client port, the same across restarts.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The monitoring port, the same across restarts.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The server's log, kept across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.settings.dir.join("nats-server.log")
    }

    /// Spawns the (stopped) server on its ports with its store; does not wait for readiness.
    ///
    /// # Panics
    /// When the server is running.
    pub fn start_again(&mut self) -> io::Result<()> {
        assert!(self.child.is_none(), "the nats-server process is running");
        let dir = &self.settings.dir;
        std::fs::create_dir_all(dir)?;
        for include in self.settings.includes.iter().chain(&self.settings.copies) {
            let name = include.file_name().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "an include is not a file")
            })?;
            std::fs::copy(include, dir.join(name))?;
        }
        let conf = dir.join("nats-server.conf");
        std::fs::write(&conf, self.config())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.settings.binary)
            .arg("-c")
            .arg(&conf)
            .envs(self.settings.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run {}: {e}", self.settings.binary.display()),
                )
            })?;
        self.child = Some(child);
        Ok(())
    }

    fn config(&self) -> String {
        let name = match &self.settings.name {
            Some(name) => format!("server_name: {name}\n"),
            None => String::new(),
        };
        let sync = match self.settings.sync {
            Sync::Default => "",
            Sync::Always => "\n  sync_interval: always",
        };
        let include: String = (self.settings.includes.iter())
            .filter_map(|p| p.file_name())
            .map(|file| format!("include \"{}\"\n", file.to_string_lossy()))
            .collect();
        format!(
            "{name}listen: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
             jetstream {{\n  store_dir: \"{}\"{sync}\n}}\n{include}",
            self.client_port,
            self.monitor_port,
            self.settings.dir.join("store").display(),
        )
    }

    /// Polls `/healthz` until it says ok; gives up early when the server has exited.
    pub async fn wait_until_healthy(&mut self, within: Duration) -> Result<(), String> {
        let port = self.monitor_port;
        wait_until_healthy(port, within, async || self.exited()).await
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]); its data
    /// stays.
    ///
    /// # Panics
    /// When the server is not running.
    pub async fn stop(&mut self) {
        let mut child = self.take_child();
        terminate(&mut child, STOP_TIMEOUT).await;
    }

    /// Stops the server at once with SIGKILL, as a crash would; what it had not written is lost.
    ///
    /// # Panics
    /// When the server is not running.
    pub async fn kill(&mut self) {
        let mut child = self.take_child();
        let _ = child.kill().await;
    }

    /// The process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    fn take_child(&mut self) -> Child {
        self.child
            .take()
            .expect("the nats-server process is not running")
    }

    /// Why the server is no longer running (with its log), if it is not.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(format!(
                "{status}; its log:\n{}",
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            )),
            Err(error) => Some(format!("cannot check the process: {error}")),
        }
    }
}

/// Polls `http://127.0.0.1:<monitor_port>/healthz` until it answers 200, at most `within`.
/// `exited` says why the server is gone, if it is, which ends the wait at once.
pub async fn wait_until_healthy(
    monitor_port: u16,
    within: Duration,
    mut exited: impl AsyncFnMut() -> Option<String>,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let last = match healthz(monitor_port).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if let Some(exited) = exited().await {
            return Err(format!("exited before it was healthy: {exited}"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not healthy after {within:?} at http://127.0.0.1:{monitor_port}/healthz: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `GET /healthz`, given a second. A plain HTTP/1.0 exchange is all the endpoint needs, and
/// keeps an HTTP client library out of the service's dependencies.
async fn healthz(monitor_port: u16) -> Result<(), String> {
    let exchange = async {
        let mut stream =
            tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, monitor_port)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .map_err(|_| "no answer within 1 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        Err(format!("{status}: {body}"))
    }
}

/// SIGTERM, then SIGKILL when the process still runs after `grace`.
pub async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// `NATS_SERVER_BIN`, else `tools/nats-server` below `root` (installed by `make nats-server`),
/// else `nats-server` on PATH.
pub fn find_binary(root: &Path) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN").filter(|path| !path.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let tools = root.join("tools/nats-server");
    if tools.is_file() {
        return Some(tools);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}
