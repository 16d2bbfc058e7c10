//! The bench's processes: a scratch folder, nats-server (the library's [`nats_server`]), the
//! release service and baseline B's parse-only server, each on free loopback ports and killed
//! when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use hyper::{Method, StatusCode};
use order_service::nats_server::{self, NatsProcess, Settings, Sync};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::load::{http_connect, send};
use crate::{Res, SECRET};

/// A temporary folder, removed on drop unless `BENCH_KEEP` is set.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `order-service-bench-<pid>` in the temporary folder.
    pub fn new() -> Res<Scratch> {
        let dir = std::env::temp_dir().join(format!("order-service-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("BENCH_KEEP").is_some() {
            eprintln!("bench: kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nats-server on free loopback ports with a store in `scratch/nats` and the same JetStream
/// settings as `nats/nats-server.conf` (fsync every write before the PubAck);
/// `BENCH_NATS_SYNC=default` measures the server's default (fsync every 2 min) instead.
pub async fn start_nats(binary: &Path, scratch: &Path) -> Res<NatsProcess> {
    let sync = if std::env::var("BENCH_NATS_SYNC").as_deref() == Ok("default") {
        Sync::Default
    } else {
        Sync::Always
    };
    let settings = Settings {
        binary: binary.to_owned(),
        dir: scratch.join("nats"),
        name: Some("order-service-bench".into()),
        sync,
        includes: Vec::new(),
        copies: Vec::new(),
        env: Vec::new(),
    };
    Ok(NatsProcess::start(settings, Duration::from_secs(15))
        .await
        .map_err(|e| format!("nats-server: {e}"))?)
}

/// Waits until the service has created the streams the phases read.
pub async fn wait_for_streams(js: &jetstream::Context) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in ["ORDER_CREATED", "ORDER_AUDIT"] {
        while js.get_stream(name).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!("stream {name} did not appear").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Messages held by all streams.
pub async fn stream_messages(js: &jetstream::Context) -> Res<u64> {
    let mut total = 0;
    let mut streams = js.streams();
    while let Some(info) = streams.next().await {
        total += info?.state.messages;
    }
    Ok(total)
}

/// The release `order-service serve`, its log in the scratch folder.
pub struct Service {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
}

impl Service {
    /// Starts the service on a free port and waits until `/health` answers 200.
    pub async fn start(
        bin: &Path,
        db: &Path,
        nats_url: &str,
        relay: bool,
        batch: u32,
        scratch: &Path,
    ) -> Res<Service> {
        let port = nats_server::free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = std::fs::File::create(scratch.join(format!("service-{port}.log")))?;
        let child = Command::new(bin)
            .arg("serve")
            .env("AUTH_JWT_SECRET", SECRET)
            .env("DATABASE_PATH", db)
            .env("HTTP_ADDR", addr.to_string())
            .env("NATS_URL", nats_url)
            .env("EVENT_OUTBOX_ENABLED", relay.to_string())
            .env("EVENT_OUTBOX_PUBLISH_BATCH", batch.to_string())
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let mut service = Service { addr, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = service.child.try_wait() {
                return Err(format!("order-service exited at start-up: {status}").into());
            }
            if let Ok(mut sender) = http_connect(addr).await
                && let Ok((StatusCode::OK, _)) =
                    send(&mut sender, Method::GET, "/health", "", Bytes::new()).await
            {
                return Ok(service);
            }
            if Instant::now() > deadline {
                nats_server::terminate(&mut service.child, Duration::from_secs(1)).await;
                return Err("order-service did not answer /health within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// VmHWM of the service process, in KiB.
    pub fn peak_rss_kib(&self) -> Res<u64> {
        let pid = self.child.id().ok_or("the service has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| "no VmHWM in /proc/<pid>/status".into())
    }

    /// SIGTERM, and SIGKILL when it still runs after 10 s.
    pub async fn stop(mut self) {
        nats_server::terminate(&mut self.child, Duration::from_secs(10)).await;
    }
}

/// Baseline B's server: this binary again as `bench baseline-server`, in its own process so that
/// it does not share the load generator's runtime.
pub struct BaselineServer {
    /// Where it listens.
    pub addr: SocketAddr,
    _child: Child,
}

impl BaselineServer {
    /// Starts it and reads the address it prints.
    pub async fn start() -> Res<BaselineServer> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("baseline-server")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await?;
        let addr = line.trim().parse()?;
        Ok(BaselineServer {
            addr,
            _child: child,
        })
    }
}
