//! A small WebDriver client for the browser tests: it starts Debian's
//! `chromedriver`, which starts a headless `chromium`, and speaks the W3C
//! WebDriver protocol (JSON over HTTP) to it with the hyper client the
//! server already depends on. Only what the tests need: navigate, find by
//! CSS selector, click, type, run a script, take screenshots, read the
//! browser's console.
//!
//! Every wait is bounded and every failure panics with what was awaited,
//! the page's address and the browser's console log. Dropping a `Browser`
//! ends its session (closing Chromium) and kills the chromedriver it started.

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Set (to anything but `0`) where a missing browser must fail the tests: CI.
/// Not a `TALLY_*` name: the server reads every one of those as a setting.
pub const REQUIRED_VAR: &str = "BROWSER_TESTS_REQUIRED";

/// Longest wait for chromedriver to listen and for a session to start.
const START_WAIT_MAX: Duration = Duration::from_secs(60);
/// Longest wait for one WebDriver command (page loads included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound of [`Browser::wait_for`]: a guard against a hung page, not a measure of speed.
pub const WAIT_MAX: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// The W3C name of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Window size: wide enough for the admin page's three columns.
pub const WINDOW_WIDTH: u32 = 1440;
pub const WINDOW_HEIGHT: u32 = 1000;

/// Whether Chromium and chromedriver are installed. When they are not, the
/// browser tests pass with a note unless [`REQUIRED_VAR`] is set, when they fail.
pub fn installed_or_skip(test: &str) -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER].into_iter().filter(|path| !Path::new(path).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var(REQUIRED_VAR).is_ok_and(|value| !value.is_empty() && value != "0");
    assert!(
        !required,
        "{test}: {} not installed and {REQUIRED_VAR} is set; install with scripts/install-peers.sh (as root)",
        missing.join(" and ")
    );
    eprintln!(
        "{test}: skipped: {} not installed; install with scripts/install-peers.sh (as root)",
        missing.join(" and ")
    );
    false
}

/// An element of the page, as WebDriver names it.
#[derive(Clone, Debug)]
pub struct Element {
    id: String,
    selector: String,
}

/// One headless Chromium session.
pub struct Browser {
    client: Client<HttpConnector, Full<Bytes>>,
    driver_addr: SocketAddr,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a Chromium session with a
    /// fresh profile.
    pub async fn start() -> Browser {
        let driver_addr = testkit::free_addrs(1)[0];
        let profile = tempfile::Builder::new()
            .prefix("tally-browser-")
            .tempdir()
            .unwrap_or_else(|e| panic!("a profile dir: {e}"));
        let log = std::fs::File::create(profile.path().join("chromedriver.log"))
            .unwrap_or_else(|e| panic!("chromedriver log: {e}"));
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={}", driver_addr.port()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER}: {e}"));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let mut browser = Browser { client, driver_addr, session: String::new(), driver, _profile: profile };
        browser.wait_driver_ready().await;
        browser.session = browser.new_session().await;
        browser
    }

    async fn wait_driver_ready(&mut self) {
        let deadline = Instant::now() + START_WAIT_MAX;
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            if let Ok(value) = self.raw(Method::GET, "/status", None).await
                && value["value"]["ready"] == json!(true)
            {
                return;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer /status within {START_WAIT_MAX:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn new_session(&self) -> String {
        let profile_dir = self._profile.path().join("profile");
        let arguments = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--force-device-scale-factor=1".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--window-size={WINDOW_WIDTH},{WINDOW_HEIGHT}"),
            format!("--user-data-dir={}", profile_dir.display()),
        ];
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": arguments },
                    "goog:loggingPrefs": { "browser": "ALL" },
                    "timeouts": { "script": 30_000, "pageLoad": 60_000, "implicit": 0 },
                }
            }
        });
        let deadline = Instant::now() + START_WAIT_MAX;
        loop {
            match self.raw(Method::POST, "/session", Some(&capabilities)).await {
                Ok(answer) => {
                    if let Some(id) = answer["value"]["sessionId"].as_str() {
                        return id.to_owned();
                    }
                    // Chromium can be slow to come up on a loaded machine; one retry is cheap.
                    assert!(Instant::now() < deadline, "no WebDriver session: {answer}");
                }
                Err(error) => assert!(Instant::now() < deadline, "no WebDriver session: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// One HTTP exchange with chromedriver: the JSON it answered, whatever the status.
    async fn raw(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let uri = format!("http://{}{path}", self.driver_addr);
        let bytes = body.map_or_else(Bytes::new, |body| Bytes::from(body.to_string()));
        let request = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header("content-type", "application/json; charset=utf-8")
            .body(Full::new(bytes))
            .map_err(|e| format!("{method} {uri}: {e}"))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| format!("{e:?}"))?;
            let body = response.into_body().collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
            serde_json::from_slice::<Value>(&body)
                .map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(&body)))
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
            Ok(result) => result.map_err(|e| format!("{method} {uri}: {e}")),
            Err(_) => Err(format!("{method} {uri}: no answer within {COMMAND_TIMEOUT:?}")),
        }
    }

    /// A session command: its `value`, or `Err` with WebDriver's error and message.
    async fn try_command(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let path = format!("/session/{}{path}", self.session);
        let answer = self.raw(method, &path, body.as_ref()).await?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        match value.get("error").and_then(Value::as_str) {
            Some(error) => Err(format!("{error}: {}", value["message"].as_str().unwrap_or_default())),
            None => Ok(value),
        }
    }

    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        match self.try_command(method.clone(), path, body).await {
            Ok(value) => value,
            Err(error) => self.fail(&format!("WebDriver {method} {path}: {error}")).await,
        }
    }

    /// Panics with `what`, the page's address and the browser console.
    pub async fn fail(&self, what: &str) -> ! {
        let url = self.try_command(Method::GET, "/url", None).await.unwrap_or_default();
        let console = self.console().await;
        panic!("{what}\n  page: {url}\n  browser console:\n{console}");
    }

    /// The browser console since the last call, one line per entry.
    pub async fn console(&self) -> String {
        match self.try_command(Method::POST, "/se/log", Some(json!({ "type": "browser" }))).await {
            Ok(Value::Array(entries)) => entries
                .iter()
                .map(|entry| {
                    format!(
                        "    [{}] {}",
                        entry["level"].as_str().unwrap_or("?"),
                        entry["message"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Ok(other) => format!("    {other}"),
            Err(error) => format!("    (no console: {error})"),
        }
    }

    pub async fn goto(&self, url: &str) {
        self.command(Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn refresh(&self) {
        self.command(Method::POST, "/refresh", Some(json!({}))).await;
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and answers what it returns.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.command(Method::POST, "/execute/sync", Some(json!({ "script": script, "args": args }))).await
    }

    async fn try_find(&self, selector: &str) -> Option<Element> {
        let value = self
            .try_command(Method::POST, "/element", Some(json!({ "using": "css selector", "value": selector })))
            .await
            .ok()?;
        let id = value.get(ELEMENT_KEY)?.as_str()?.to_owned();
        Some(Element { id, selector: selector.to_owned() })
    }

    /// The first element `selector` matches, waiting until one is there and shown.
    pub async fn wait_for(&self, selector: &str) -> Element {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            if let Some(element) = self.try_find(selector).await {
                let shown = self.try_command(Method::GET, &format!("/element/{}/displayed", element.id), None).await;
                if shown == Ok(json!(true)) {
                    return element;
                }
            }
            if Instant::now() >= deadline {
                self.fail(&format!("no visible element {selector:?} within {WAIT_MAX:?}")).await;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Clicks what `selector` matches, once it is shown.
    pub async fn click(&self, selector: &str) {
        let element = self.wait_for(selector).await;
        self.command(Method::POST, &format!("/element/{}/click", element.id), Some(json!({}))).await;
    }

    /// Focuses the field, empties it and types `text` as keystrokes (`\u{E007}` is Enter).
    pub async fn type_into(&self, selector: &str, text: &str) {
        let element = self.wait_for(selector).await;
        self.command(Method::POST, &format!("/element/{}/clear", element.id), Some(json!({}))).await;
        self.command(Method::POST, &format!("/element/{}/value", element.id), Some(json!({ "text": text }))).await;
    }

    /// Sends keystrokes to the element that has the focus.
    pub async fn keys(&self, text: &str) {
        let actions: Vec<Value> = text
            .chars()
            .flat_map(|key| {
                [
                    json!({ "type": "keyDown", "value": key.to_string() }),
                    json!({ "type": "keyUp", "value": key.to_string() }),
                ]
            })
            .collect();
        let body = json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] });
        self.command(Method::POST, "/actions", Some(body)).await;
    }

    /// The text of what `selector` matches (as rendered), once shown.
    pub async fn text(&self, selector: &str) -> String {
        let element = self.wait_for(selector).await;
        let value = self.command(Method::GET, &format!("/element/{}/text", element.id), None).await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Polls `script` until it returns something truthy, for at most `bound`;
    /// answers that value. `what` names the wait in the failure.
    pub async fn wait_until(&self, what: &str, bound: Duration, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + bound;
        loop {
            let value = self.execute(script, args.clone()).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(text) => !text.is_empty(),
                Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("not within {bound:?}: {what}")).await;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the text of `selector` contains `expected`.
    pub async fn wait_for_text(&self, selector: &str, expected: &str) -> String {
        let script = "const e = document.querySelector(arguments[0]); \
                      return e && e.textContent.includes(arguments[1]) ? e.textContent : null;";
        let found = self
            .wait_until(
                &format!("{selector:?} contains {expected:?}"),
                WAIT_MAX,
                script,
                vec![json!(selector), json!(expected)],
            )
            .await;
        found.as_str().unwrap_or_default().to_owned()
    }

    /// Resizes the window (the viewport is smaller by the browser's frame).
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.command(Method::POST, "/window/rect", Some(json!({ "width": width, "height": height }))).await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let value = self.command(Method::GET, "/screenshot", None).await;
        decode_base64(value.as_str().unwrap_or_default())
    }

    /// A PNG of one element.
    pub async fn element_screenshot(&self, selector: &str) -> Vec<u8> {
        let element = self.wait_for(selector).await;
        let value = self.command(Method::GET, &format!("/element/{}/screenshot", element.id), None).await;
        decode_base64(value.as_str().unwrap_or_default())
    }

    /// Ends the session (Chromium exits) and stops chromedriver.
    pub async fn quit(mut self) {
        let _ = self.try_command(Method::DELETE, "", None).await;
        self.session.clear();
        // Drop kills chromedriver.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // No runtime to await on here: one blocking request ends the session.
            let _ = blocking_delete(self.driver_addr, &format!("/session/{}", self.session));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE path` over a fresh connection, for `Drop`.
fn blocking_delete(addr: SocketAddr, path: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "DELETE {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Ok(())
}

/// Standard base64 (what WebDriver screenshots are) to bytes.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |byte: u8| -> Option<u32> {
        match byte {
            b'A'..=b'Z' => Some(u32::from(byte - b'A')),
            b'a'..=b'z' => Some(u32::from(byte - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(byte - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut buffer = 0u32;
    let mut bits = 0u32;
    for sextet in text.bytes().filter_map(value) {
        buffer = (buffer << 6) | sextet;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).unwrap_or(0));
        }
    }
    out
}

/// Where `SCREENSHOTS_DIR` points, if set: the browser tests write the
/// README's screenshots there. A relative path is taken from the workspace
/// root (tests run in `server/`), so `SCREENSHOTS_DIR=docs` means `docs/`.
pub fn screenshots_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("SCREENSHOTS_DIR").filter(|dir| !dir.is_empty())?);
    if dir.is_absolute() {
        return Some(dir);
    }
    Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir))
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("aGVsbG8="), b"hello");
        assert_eq!(decode_base64("aGVsbG8h"), b"hello!");
        assert_eq!(decode_base64(""), b"");
    }
}
