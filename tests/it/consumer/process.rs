//! The example `standby_subscriber` (`examples/standby_subscriber.rs`) as a real OS process: a
//! whole subscriber of one consumer group serving `/health` and `/metrics`, which the two-process
//! standby tests start twice and the alert test scrapes with Prometheus.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::app::PATIENCE;

/// The child's settings, from the parent (see the example's docs).
const NATS_URL: &str = "NATS_URL";
const DATABASE: &str = "STANDBY_DATABASE";
const GROUP: &str = "STANDBY_GROUP";
const LABEL: &str = "STANDBY_LABEL";
/// Where the child writes the address of its `/health`.
const ADDR_FILE: &str = "STANDBY_ADDR_FILE";
/// The example's binary, which `cargo test` and `cargo nextest run` build beside the test
/// binaries (`target/<profile>/examples/`).
fn child_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-<hash>
    let profile = exe.parent().and_then(Path::parent).unwrap();
    let binary = profile.join("examples").join("standby_subscriber");
    assert!(
        binary.is_file(),
        "{} is missing: cargo test builds it (or cargo build --example standby_subscriber)",
        binary.display()
    );
    binary
}

/// A child process, killed and reaped when dropped, whatever path the test takes.
pub(crate) struct Child {
    pub(crate) label: &'static str,
    pub(crate) process: std::process::Child,
    addr_file: PathBuf,
}

impl Child {
    /// Starts the example `standby_subscriber` in a new process.
    pub(crate) fn start(
        label: &'static str,
        nats_url: &str,
        database: &Path,
        group: &str,
        dir: &Path,
    ) -> Child {
        Child::start_with(label, nats_url, database, group, dir, &[])
    }

    /// [`Child::start`] with more of the example's settings (`STANDBY_TOPIC`, ...).
    pub(crate) fn start_with(
        label: &'static str,
        nats_url: &str,
        database: &Path,
        group: &str,
        dir: &Path,
        settings: &[(&str, &str)],
    ) -> Child {
        Child::spawn(
            label,
            nats_url,
            database,
            group,
            dir,
            settings,
            Stdio::inherit(),
        )
    }

    /// [`Child::start_with`], its log (standard error) appended to the file `log`.
    pub(crate) fn start_logged(
        label: &'static str,
        nats_url: &str,
        database: &Path,
        group: &str,
        dir: &Path,
        settings: &[(&str, &str)],
        log: &Path,
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the subscriber's log");
        Child::spawn(label, nats_url, database, group, dir, settings, log.into())
    }

    fn spawn(
        label: &'static str,
        nats_url: &str,
        database: &Path,
        group: &str,
        dir: &Path,
        settings: &[(&str, &str)],
        stderr: Stdio,
    ) -> Child {
        let addr_file = dir.join(format!("{label}.addr"));
        // A process started again under the same label must not be found at its old address.
        let _ = std::fs::remove_file(&addr_file);
        let process = Command::new(child_binary())
            .envs(settings.iter().copied())
            .env(NATS_URL, nats_url)
            .env(DATABASE, database)
            .env(GROUP, group)
            .env(LABEL, label)
            .env(ADDR_FILE, &addr_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Child {
            label,
            process,
            addr_file,
        }
    }

    /// The address of its `/health`, once it wrote it.
    pub(crate) async fn addr(&mut self) -> SocketAddr {
        let start = Instant::now();
        loop {
            if let Ok(addr) = std::fs::read_to_string(&self.addr_file) {
                return addr.parse().unwrap();
            }
            if let Some(status) = self.process.try_wait().unwrap() {
                panic!("{} exited before serving /health: {status}", self.label);
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{} never served /health",
                self.label
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its group's `/health` now: the status and the group's JSON.
    pub(crate) async fn health(&mut self, group: &str) -> (StatusCode, Value) {
        let addr = self.addr().await;
        let response = reqwest::get(format!("http://{addr}/health")).await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        (status, body["groups"][group].clone())
    }

    /// Waits until its group says `role` and `/health` answers 200; the group's JSON then. Fails
    /// at once when the group says `never`.
    pub(crate) async fn until_role(
        &mut self,
        group: &str,
        role: &str,
        never: &str,
        within: Duration,
    ) -> Value {
        let start = Instant::now();
        loop {
            let (status, health) = self.health(group).await;
            if status == StatusCode::OK && health["role"] == role {
                return health;
            }
            assert_ne!(health["role"], never, "{}: {health}", self.label);
            assert!(
                start.elapsed() < within,
                "{} never {role} within {within:?}: {status} {health}",
                self.label
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until it holds a batch it has not settled: delivered to it, not yet processed.
    pub(crate) async fn holding_a_batch(&mut self, group: &str) {
        let begun = Instant::now();
        loop {
            let (_, active) = self.health(group).await;
            let settled =
                active["processed"].as_u64().unwrap() + active["duplicates"].as_u64().unwrap();
            if active["deliveries"].as_u64().unwrap() > settled {
                return;
            }
            assert!(
                begun.elapsed() < PATIENCE,
                "{} never held a batch",
                self.label
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops it gracefully (closes its standard input) and waits until it exited successfully.
    pub(crate) async fn stop(mut self) {
        drop(self.process.stdin.take());
        let start = Instant::now();
        loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}", self.label);
                return;
            }
            assert!(start.elapsed() < PATIENCE, "{} did not stop", self.label);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
