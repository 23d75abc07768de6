//! A real browser for tests: Debian's Chromium, headless, driven over its DevTools
//! protocol (one websocket, one page). Enough to open a page, type, click, read the DOM
//! and keep a screenshot; nothing is faked in between.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::TempDir;

/// How long one DevTools answer, or one page load, may take.
const STEP: Duration = Duration::from_secs(30);

/// A headless Chromium with one page, killed on drop.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    socket: WebSocket<TcpStream>,
    session: String,
    next: u64,
    /// Every event's method seen so far (a dialog opening, say).
    events: Vec<String>,
    _profile: TempDir,
}

/// The Chromium binary, if one is installed.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

impl Browser {
    /// Starts Chromium, or `None` (the test is skipped, with the reason on stderr) when it
    /// is not installed, unless `HUBHOOK_REQUIRE_BROWSER=1` (CI) makes that a failure.
    pub fn start(test: &str) -> Option<Self> {
        let Some(binary) = chromium() else {
            let reason = "no chromium (Debian's chromium package)";
            if std::env::var("HUBHOOK_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("{test}: {reason}, and HUBHOOK_REQUIRE_BROWSER=1");
            }
            eprintln!("SKIPPED {test}: {reason}");
            return None;
        };
        let profile = TempDir::new("chromium");
        let child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes its port and the browser's websocket path here once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let found = crate::eventually(STEP, "chromium's DevToolsActivePort", || {
            let text = std::fs::read_to_string(&port_file).ok()?;
            let mut lines = text.lines();
            let port: u16 = lines.next()?.trim().parse().ok()?;
            let path = lines.next()?.trim().to_owned();
            Some((port, path))
        });
        let (port, path) = found;
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to chromium");
        tcp.set_read_timeout(Some(STEP)).expect("read timeout");
        let (socket, _) = tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), tcp)
            .expect("DevTools websocket");
        let mut browser = Self {
            child,
            socket,
            session: String::new(),
            next: 0,
            events: Vec::new(),
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        browser.call("Page.enable", json!({}));
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
        );
        Some(browser)
    }

    /// Sends one DevTools command (to the page, once attached) and returns its result;
    /// panics with the browser's words on an error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next += 1;
        let id = self.next;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .map_err(|e| format!("send: {e}"))?;
        loop {
            let text = match self.socket.read().map_err(|e| format!("read: {e}"))? {
                Message::Text(text) => text,
                _ => continue,
            };
            let answer: Value = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
            if answer["id"].as_u64() == Some(id) {
                if let Some(error) = answer.get("error") {
                    return Err(error.to_string());
                }
                return Ok(answer["result"].clone());
            }
            if let Some(event) = answer["method"].as_str() {
                self.events.push(event.to_owned());
            }
        }
    }

    /// Whether an event of this method has arrived (`Page.javascriptDialogOpening`, say).
    pub fn saw(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }

    /// The value of a JavaScript expression in the page (awaited when it is a promise),
    /// or the exception it threw.
    pub fn try_eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self.try_call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(exception.to_string());
        }
        Ok(result["result"]["value"].clone())
    }

    /// Like [`try_eval`](Self::try_eval), panicking on an exception.
    pub fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    /// The page's address now.
    pub fn url(&mut self) -> String {
        self.eval("location.href").as_str().unwrap_or("").to_owned()
    }

    /// Opens `url` and waits for the page (after any redirects) to finish loading.
    pub fn open(&mut self, url: &str) {
        let before = self.load_count();
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_for_load(before);
    }

    /// Runs `action` (a click, a form's submission) and waits for the page it leads to.
    pub fn follow(&mut self, action: &str) {
        let before = self.load_count();
        self.eval(action);
        self.wait_for_load(before);
    }

    /// Types `text` into the element `selector` names, as keystrokes would.
    pub fn type_into(&mut self, selector: &str, text: &str) {
        let focused = self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector:?}); if (!e) return false; e.focus(); return true; }})()"
        ));
        assert_eq!(focused, json!(true), "no element {selector}");
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// Writes a PNG of the whole page to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Page loads so far (the `Page.loadEventFired` events).
    fn load_count(&self) -> usize {
        self.events
            .iter()
            .filter(|e| *e == "Page.loadEventFired")
            .count()
    }

    /// Waits for a load event after the `before`th, then for the document to be complete.
    fn wait_for_load(&mut self, before: usize) {
        let start = Instant::now();
        while self.load_count() <= before {
            assert!(start.elapsed() < STEP, "no page load within {STEP:?}");
            // A cheap call: its answer arrives after the events queued before it.
            let _ = self.try_call("Runtime.evaluate", json!({ "expression": "1" }));
            std::thread::sleep(Duration::from_millis(20));
        }
        crate::eventually(STEP, "the document to be complete", || {
            (self.try_eval("document.readyState").ok()? == json!("complete")).then_some(())
        });
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
