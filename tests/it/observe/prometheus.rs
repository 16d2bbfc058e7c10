//! A real Prometheus server (Debian's `prometheus`, `make prometheus` installs it; or
//! `PROMETHEUS_BIN`) started by a test: its own configuration, rules and storage in a folder,
//! scraping every second, answering its HTTP API on a free loopback port. One that cannot start
//! fails the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::PATIENCE;

/// A running Prometheus, killed when dropped.
pub(crate) struct Prometheus {
    process: Child,
    api: String,
    /// The file-discovered targets of the job `subscriber`, rewritten by [`Prometheus::subscribers`].
    subscribers_file: PathBuf,
    log: PathBuf,
}

/// The binary: `PROMETHEUS_BIN`, else `prometheus` on the path.
fn binary() -> String {
    std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".to_owned())
}

/// A free loopback port, for Prometheus to listen on.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Prometheus {
    /// Starts Prometheus in `dir` with `rules`, scraping `service` (job `order-service`) and the
    /// subscriber processes of the file [`Prometheus::subscribers`] writes (job `subscriber`)
    /// every second, evaluating every second; returns once it answers ready.
    pub(crate) async fn start(dir: &Path, rules: &str, service: SocketAddr) -> Prometheus {
        let rules_file = dir.join("rules.yml");
        std::fs::write(&rules_file, rules).unwrap();
        let subscribers_file = dir.join("subscribers.json");
        std::fs::write(&subscribers_file, "[]").unwrap();
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [rules_file],
            "scrape_configs": [
                {"job_name": "order-service", "static_configs": [{"targets": [service.to_string()]}]},
                {"job_name": "subscriber", "file_sd_configs": [{"files": [&subscribers_file], "refresh_interval": "1s"}]},
            ],
        });
        // YAML is a superset of JSON: the configuration is written as JSON.
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let process = Command::new(binary())
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): `make prometheus` installs it, PROMETHEUS_BIN names another",
                    binary()
                )
            });
        let mut prometheus = Prometheus {
            process,
            api: format!("http://127.0.0.1:{port}"),
            subscribers_file,
            log,
        };
        prometheus.until_ready().await;
        prometheus
    }

    async fn until_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(response) = reqwest::get(format!("{}/-/ready", self.api)).await
                && response.status().is_success()
            {
                return;
            }
            if let Some(status) = self.process.try_wait().unwrap() {
                panic!("prometheus exited with {status}: {}", self.log());
            }
            assert!(
                start.elapsed() < PATIENCE,
                "prometheus never ready: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What it wrote to its standard error, for a failure's message.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Scrapes the `/metrics` of the subscriber processes at `targets` from now on (file
    /// discovery: Prometheus rereads the file).
    pub(crate) fn subscribers(&self, targets: &[SocketAddr]) {
        let targets: Vec<String> = targets.iter().map(ToString::to_string).collect();
        let groups = json!([{"targets": targets}]);
        let part = self.subscribers_file.with_extension("part");
        std::fs::write(&part, groups.to_string()).unwrap();
        // A rename, so that Prometheus never reads a half-written file.
        std::fs::rename(&part, &self.subscribers_file).unwrap();
    }

    /// The result of the instant query `promql`: `data.result`.
    pub(crate) async fn query(&self, promql: &str) -> Vec<Value> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.api),
            [("query", promql)],
        )
        .unwrap();
        let response = reqwest::get(url).await.unwrap();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of `promql`'s result, `None` when it is empty.
    pub(crate) async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        assert!(result.len() <= 1, "{promql}: {result:?}");
        result
            .first()
            .and_then(|sample| sample["value"][1].as_str())
            .map(|v| v.parse().unwrap())
    }

    /// The alerts it holds now (pending or firing), as `/api/v1/alerts` lists them.
    pub(crate) async fn alerts(&self) -> Vec<Value> {
        let body: Value = reqwest::get(format!("{}/api/v1/alerts", self.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
