//! Headless Chromium driven over the DevTools protocol: launch, open a page, type, click with
//! the mouse, evaluate JavaScript, wait for what the page shows, and take screenshots.
//!
//! The browser is Debian's `chromium` (`CHROMIUM_BIN` overrides), which `make test` installs when
//! missing. A browser that cannot start fails the test: nothing is skipped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a wait for the page may take before the test fails.
pub const PAGE_PATIENCE: Duration = Duration::from_secs(60);
const WIDTH: u32 = 1280;

/// A running headless Chromium with one tab.
pub struct Browser {
    child: Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium and opens a blank tab.
    pub async fn start() -> Browser {
        let bin = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "chromium".to_owned());
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                &format!("--window-size={WIDTH},1000"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the browser `{bin}` ({e}); `make test` installs Debian's chromium"
                )
            });
        // Chromium prints its DevTools address on stderr once it listens.
        let stderr = child.stderr.take().unwrap();
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = found.send(url.trim().to_owned());
                    sent = true;
                }
            }
        });
        let url =
            tokio::task::spawn_blocking(move || address.recv_timeout(Duration::from_secs(60)))
                .await
                .unwrap()
                .unwrap_or_else(|_| panic!("the browser `{bin}` never opened its DevTools port"));
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to the browser's DevTools");
        let mut browser = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.call("Page.enable", json!({})).await;
        browser.call("Runtime.enable", json!({})).await;
        browser
    }

    /// Sends a command (to the tab, once attached) and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send to the browser");
        loop {
            let frame = tokio::time::timeout(PAGE_PATIENCE, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("the browser did not answer {method}"))
                .expect("the browser closed its DevTools connection")
                .expect("read from the browser");
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            // Events carry no id; other replies cannot be pending (one call at a time).
            if reply["id"] != id {
                continue;
            }
            if let Some(error) = reply.get("error") {
                panic!("{method}: {error}");
            }
            return reply["result"].clone();
        }
    }

    /// Opens `url` and waits until its document has loaded.
    pub async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_for("document.readyState === 'complete'", "the page to load")
            .await;
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `condition` (a JavaScript expression) is truthy; returns its value. Fails the
    /// test, with a screenshot, when it never is.
    pub async fn wait_for(&mut self, condition: &str, what: &str) -> Value {
        let start = Instant::now();
        loop {
            let value = self.eval(condition).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if start.elapsed() > PAGE_PATIENCE {
                let shot = self.screenshot("timed-out").await;
                let text = self.eval("document.body.innerText").await;
                panic!(
                    "waited {PAGE_PATIENCE:?} for {what} ({condition}); screenshot {}; page text:\n{}",
                    shot.display(),
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the first element matching `selector`, `None` when there is none.
    pub async fn text(&mut self, selector: &str) -> Option<String> {
        let selector = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector}); return e ? e.textContent : null; }})()"
        ))
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// Clicks the middle of the first element matching `selector` with the mouse, as a user does.
    pub async fn click(&mut self, selector: &str) {
        let quoted = serde_json::to_string(selector).unwrap();
        let at = self
            .wait_for(
                &format!(
                    "(() => {{ const e = document.querySelector({quoted}); if (!e) return null;
                        e.scrollIntoView({{ block: 'center' }});
                        const r = e.getBoundingClientRect();
                        return r.width > 0 ? [r.x + r.width / 2, r.y + r.height / 2] : null; }})()"
                ),
                &format!("{selector} to be shown"),
            )
            .await;
        let (x, y) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Clicks into the first element matching `selector` and types `text` there, then leaves
    /// the field (so that its `change` fires).
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector).await;
        let quoted = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "document.querySelector({quoted}).select && document.querySelector({quoted}).select()"
        ))
        .await;
        self.call("Input.insertText", json!({ "text": text })).await;
        self.eval("document.activeElement.blur()").await;
    }

    /// Saves a full-page PNG as `target/ops-screenshots/<name>.png`; returns its path.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let height = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")
            .await
            .as_f64()
            .unwrap_or(1000.0)
            .max(600.0);
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": WIDTH, "height": height as u32, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// `target/ops-screenshots/` of this checkout (or of `CARGO_TARGET_DIR`), created when missing.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let dir = target.join("ops-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
