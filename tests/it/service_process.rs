//! The service under test as its own OS process: the package's binary with `serve`, configured
//! by environment as in production, on its own SQLite file and a loopback port chosen up front,
//! so that a SIGKILL is a real crash and the restarted process answers at the same address on
//! the same file. Its log goes to a file (printed in part when the campaign fails). Dropping it
//! kills the process. The chaos campaign crashes and restarts it; the trace test runs it with
//! its OTLP exporter on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use order_service::bus::NatsSettings;

use crate::app::SECRET;

/// How long a started process may take to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The running (or killed) service process.
pub struct Service {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The SQLite file, kept across restarts.
    pub db: PathBuf,
    log: PathBuf,
    http_addr: String,
    nats: NatsSettings,
    /// More of its environment, e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`.
    env: Vec<(String, String)>,
    child: Option<tokio::process::Child>,
}

impl Service {
    /// Starts the service on `db` with `nats` (the proxies' list and the service's identity),
    /// logging to `log`; waits until it answers `/health`.
    pub async fn start(db: &Path, log: &Path, nats: NatsSettings) -> Service {
        Service::start_with(db, log, nats, &[]).await
    }

    /// [`Service::start`] with `env` added to the process's environment.
    pub async fn start_with(
        db: &Path,
        log: &Path,
        nats: NatsSettings,
        env: &[(&str, &str)],
    ) -> Service {
        let port = order_service::nats_server::free_port().expect("a free loopback port");
        let mut service = Service {
            base: format!("http://127.0.0.1:{port}"),
            db: db.to_path_buf(),
            log: log.to_path_buf(),
            http_addr: format!("127.0.0.1:{port}"),
            nats,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: None,
        };
        service.spawn().await;
        service
    }

    /// SIGKILL, as a crash: nothing is flushed, nothing shut down; waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts a killed service again on the same file and address; waits for `/health`.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// Whether the process still runs (it must, except while a fault killed it).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The process id of the running process, for reading its `/proc/<pid>/status`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// The lines of the service's log, over all its runs, that contain `text`.
    pub fn log_lines_with(&self, text: &str) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|line| line.contains(text))
            .map(str::to_owned)
            .collect()
    }

    /// The last `lines` lines of the service's log, over all its runs.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the service's log");
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-service"));
        // A broker without identities (the single-node tests') takes neither.
        if let Some(user) = &self.nats.user {
            command.env("NATS_USER", user);
        }
        if let Some(password) = &self.nats.password {
            command.env("NATS_PASSWORD", password.expose());
        }
        let child = command
            .arg("serve")
            .env("HTTP_ADDR", &self.http_addr)
            .env("DATABASE_PATH", &self.db)
            .env("AUTH_JWT_SECRET", SECRET)
            .env("NATS_URL", &self.nats.url)
            // The load is one test driving several callers fast: no write limit.
            .env("WRITE_RATE_LIMIT", "0")
            // Its customers and assistant order made-up products: prices only where set.
            .env("CATALOGUE_PRICES", "when-set")
            // Retries and timeouts of the relay tests, so that faults heal within seconds.
            .env("EVENT_OUTBOX_RETRY_BASE", "20ms")
            .env("EVENT_OUTBOX_RETRY_MAX", "200ms")
            .env("NATS_ACK_TIMEOUT", "2s")
            // The broker-loss check runs often enough to notice a lost block before the end.
            .env("EVENT_OUTBOX_VERIFY_INTERVAL", "10s")
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "info,async_nats=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the order-service binary");
        self.child = Some(child);
        self.wait_healthy().await;
    }

    async fn wait_healthy(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let health = client
                .get(format!("{}/health", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                self.running(),
                "the service exited at start-up; its log:\n{}",
                self.log_tail(40)
            );
            assert!(
                Instant::now() < deadline,
                "the service does not answer /health after {START_TIMEOUT:?}; its log:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// `order-service outbox verify` on `db` against `nats` (the nodes themselves, not the
/// proxies): whether it exited 0, and what it printed.
pub async fn verify(db: &Path, nats: &NatsSettings) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-service"));
    command
        .args(["outbox", "verify"])
        .env("DATABASE_PATH", db)
        .env("AUTH_JWT_SECRET", SECRET)
        .env("NATS_URL", &nats.url)
        .env("NATS_ACK_TIMEOUT", "5s")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let (Some(user), Some(password)) = (&nats.user, &nats.password) {
        command
            .env("NATS_USER", user)
            .env("NATS_PASSWORD", password.expose());
    }
    match tokio::time::timeout(Duration::from_secs(120), command.output()).await {
        Ok(Ok(out)) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Ok(Err(error)) => (false, format!("cannot run outbox verify: {error}")),
        Err(_) => (false, "outbox verify took over 120 s".into()),
    }
}
