//! Black-box harness for end-to-end tests: starts the real `tally` binary as a
//! child process and talks to it over HTTP only, the way a client would.
//!
//! * [`Http`] is a small keep-alive JSON client. Every call answers
//!   `(status, headers, body)`; the body is parsed as JSON (an empty body is
//!   `Null`, anything else that is not JSON is a `String`).
//! * [`TallyProcess`] is one node: it writes a config into its own temporary
//!   directory, spawns `tally serve --config ...` with stdout and stderr in
//!   files there, waits for `GET /readyz` to answer 200, and can be killed
//!   with SIGKILL and restarted on the same data directory and ports. When a
//!   test panics, every live process prints the tail of its logs and keeps
//!   its directory, so a failure can be read after the fact.
//! * [`TallyCluster`] is several processes on loopback sharing one member
//!   list, each with its own data directory.
//!
//! Ports are picked by binding `127.0.0.1:0` and releasing the port; another
//! process may take it in between, so a start whose node exits with "address
//! in use" is retried on fresh ports.
//!
//! Waits are bounded (a hung server fails the test instead of hanging it) and
//! generous: they guard against failure, they never measure speed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Longest wait for a started process to answer `/readyz` with 200.
pub const READY_WAIT_MAX: Duration = Duration::from_secs(60);
/// Longest wait for one request's answer (a guard against a hung server).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Http::retry`] keeps retrying 503 answers.
pub const RETRY_WINDOW: Duration = Duration::from_secs(30);
/// Longest wait for a SIGTERM'd process to exit.
pub const EXIT_WAIT_MAX: Duration = Duration::from_secs(30);
/// Starts on fresh ports after "address in use" before giving up.
const START_ATTEMPTS_MAX: u32 = 3;
/// Restarts on the same ports after "address in use" before giving up.
const RESTART_ATTEMPTS_MAX: u32 = 20;
/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 200;
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What every request answers: status, headers and the body as JSON.
pub type Reply = (StatusCode, HeaderMap, Value);

// ---------------------------------------------------------------------------
// HTTP client

/// A keep-alive HTTP/1 client bound to one node's address. Clones share the
/// connection pool; [`Http::new`] makes a client with a pool of its own.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    timeout: Duration,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http::with_timeout(addr, REQUEST_TIMEOUT)
    }

    /// A client whose requests give up after `timeout` (`Err` from
    /// [`Http::try_request`]).
    pub fn with_timeout(addr: SocketAddr, timeout: Duration) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(connector);
        Http { client, addr, timeout }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One request. `Err` says why no answer came (refused, reset, timed
    /// out); any status, 5xx included, is an `Ok` answer.
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let uri = format!("http://{}{path}", self.addr);
        let what = format!("{method} {uri}");
        let mut builder = Request::builder().method(method).uri(&uri);
        let bytes = match body {
            Some(json) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(json).map_err(|e| format!("{what}: encoding the body: {e}"))?)
            }
            None => Bytes::new(),
        };
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(bytes)).map_err(|e| format!("{what}: building the request: {e}"))?;
        let exchange = async {
            // Debug, not Display: the legacy client's Display hides the cause
            // (reset, refused) that tells a crash from a bug.
            let response = self.client.request(request).await.map_err(|e| format!("{e:?}"))?;
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map_err(|e| format!("reading the body: {e:?}"))?.to_bytes();
            Ok::<Reply, String>((parts.status, parts.headers, parse_body(&bytes)))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result.map_err(|e| format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: no answer within {:?}", self.timeout)),
        }
    }

    /// One request; panics if no answer comes.
    pub async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Reply {
        self.try_request(method, path, headers, body).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Repeats the request while it answers 503 (a transient cluster state,
    /// e.g. an election), for at most [`RETRY_WINDOW`], sleeping as
    /// `Retry-After` asks (capped at one second). Answers the last reply, so
    /// a 503 that outlasts the window reaches the test's assertion. Only
    /// retry writes that are safe to repeat (PUT, or a POST with an
    /// `Idempotency-Key`).
    pub async fn retry(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Reply {
        let deadline = Instant::now() + RETRY_WINDOW;
        loop {
            let reply = self.request(method.clone(), path, headers, body).await;
            if reply.0 != StatusCode::SERVICE_UNAVAILABLE || Instant::now() >= deadline {
                return reply;
            }
            tokio::time::sleep(retry_delay(&reply.1)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.request(Method::PUT, path, &[], Some(&body)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request(Method::POST, path, &[], Some(&body)).await
    }

    /// A POST with extra headers, e.g. `[("Idempotency-Key", "k1")]`.
    pub async fn post_with(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        self.request(Method::POST, path, headers, Some(&body)).await
    }

    /// A POST with no body, for actions such as `/v1/reservations/{id}/confirm`.
    pub async fn post_empty(&self, path: &str) -> Reply {
        self.request(Method::POST, path, &[], None).await
    }

    /// A DELETE; `body` is sent as JSON unless it is `Null`.
    pub async fn delete(&self, path: &str, body: Value) -> Reply {
        let body = (!body.is_null()).then_some(&body);
        self.request(Method::DELETE, path, &[], body).await
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn retry_delay(headers: &HeaderMap) -> Duration {
    let asked = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_millis(200), Duration::from_secs);
    asked.clamp(Duration::from_millis(50), Duration::from_secs(1))
}

// ---------------------------------------------------------------------------
// Assertions and small helpers

/// `value[key]` as a u64; panics naming the key and the value.
pub fn u64_of(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or_else(|| panic!("{key:?} is not a u64 in {value}"))
}

/// `value[key]` as a string; panics naming the key and the value.
pub fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_else(|| panic!("{key:?} is not a string in {value}"))
}

/// Asserts the reply is a problem+json with this status and `code`.
pub fn assert_problem(reply: &Reply, status: StatusCode, code: &str) {
    let (got, headers, body) = reply;
    assert_eq!(*got, status, "expected {status} {code}, got {got}: {body}");
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(content_type.starts_with("application/problem+json"), "content-type {content_type:?} for {body}");
    assert_eq!(body["code"].as_str(), Some(code), "problem code in {body}");
    assert_eq!(body["status"].as_u64(), Some(u64::from(status.as_u16())), "problem status in {body}");
}

/// Ends a held reservation with `action` (`"confirm"` or `"release"`),
/// retrying 503s, and answers the reservation as the server last showed it.
/// An attempt that answered 503 may still have been applied, so after one a
/// later refusal is accepted if the reservation is in fact in the wanted
/// state (`CONFIRMED` or `RELEASED`).
pub async fn end_reservation(http: &Http, id: &str, action: &str) -> Value {
    let wanted = match action {
        "confirm" => "CONFIRMED",
        "release" => "RELEASED",
        _ => panic!("unknown reservation action {action:?}"),
    };
    let path = format!("/v1/reservations/{id}/{action}");
    let deadline = Instant::now() + RETRY_WINDOW;
    let mut unavailable_seen = false;
    loop {
        let (status, headers, body) = http.post_empty(&path).await;
        match status {
            StatusCode::OK => {
                assert_eq!(body["state"].as_str(), Some(wanted), "{action} {id}: {body}");
                return body;
            }
            StatusCode::SERVICE_UNAVAILABLE if Instant::now() < deadline => {
                unavailable_seen = true;
                tokio::time::sleep(retry_delay(&headers)).await;
            }
            _ if unavailable_seen => {
                let (_, _, reservation) = http.retry(Method::GET, &format!("/v1/reservations/{id}"), &[], None).await;
                assert_eq!(
                    reservation["state"].as_str(),
                    Some(wanted),
                    "{action} {id} answered {status} {body} after a 503; the reservation is {reservation}"
                );
                return reservation;
            }
            _ => panic!("{action} {id} answered {status}: {body}"),
        }
    }
}

/// Asserts a reservation's lines are exactly `lines` as
/// `(sku, warehouse, quantity)`, in any order (a reservation over several
/// shards lists its lines shard by shard). Other fields of a line are not
/// looked at.
pub fn assert_lines(reservation: &Value, lines: &[(&str, &str, u64)]) {
    let got = reservation["lines"].as_array().unwrap_or_else(|| panic!("no lines in {reservation}"));
    let mut got: Vec<(&str, &str, u64)> =
        got.iter().map(|line| (str_of(line, "sku"), str_of(line, "warehouse"), u64_of(line, "quantity"))).collect();
    let mut wanted = lines.to_vec();
    got.sort_unstable();
    wanted.sort_unstable();
    assert_eq!(got, wanted, "lines of {reservation}");
}

/// `/v1/items/{sku}/{warehouse}`.
pub fn item_path(sku: &str, warehouse: &str) -> String {
    format!("/v1/items/{sku}/{warehouse}")
}

/// Polls `check` until it answers `Some`, for at most `window`; then panics
/// with `what`. A failure guard, not a timer: `window` should be generous.
pub async fn eventually<T>(what: &str, window: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + window;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {window:?}: {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `count` distinct loopback addresses that were free a moment ago.
pub fn free_addrs(count: usize) -> Vec<SocketAddr> {
    // Held together until all are picked, so they differ from each other.
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding a free port: {e}")))
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"))).collect()
}

// ---------------------------------------------------------------------------
// Settings

/// The settings a test gives every node it starts. The harness writes
/// `server.listen`, `cluster.node_id`, `cluster.listen`, `cluster.members`,
/// `cluster.shards` and `cluster.data_dir` itself; everything else may be set
/// with [`Options::set`].
#[derive(Clone, Debug)]
pub struct Options {
    pub shards: u32,
    /// section → key → value as TOML text (`"5"`, `"\"json\""`, `"[...]"`).
    settings: BTreeMap<String, BTreeMap<String, String>>,
    env: Vec<(String, String)>,
    /// Where a single node keeps its data, instead of `data/` in its own
    /// directory (e.g. on a small file system of the test's).
    data_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options { shards: 4, settings: BTreeMap::new(), env: Vec::new(), data_dir: None }
            // openraft's info lines would bury the server's own.
            .set("server", "log_level", "\"info,openraft=warn\"")
            .set("cluster", "heartbeat_ms", "100")
            .set("cluster", "election_timeout_min_ms", "400")
            .set("cluster", "election_timeout_max_ms", "800")
    }
}

impl Options {
    pub fn shards(mut self, shards: u32) -> Self {
        self.shards = shards;
        self
    }

    /// Sets `key` of `[section]` to `toml_value`, written verbatim:
    /// `.set("api", "ttl_seconds_default", "5")`,
    /// `.set("auth", "keys", r#"[{ name = "ops", role = "admin", sha256 = "..." }]"#)`,
    /// `.set("cluster.wal", "segment_bytes_max", "1048576")`.
    pub fn set(mut self, section: &str, key: &str, toml_value: &str) -> Self {
        self.settings.entry(section.to_owned()).or_default().insert(key.to_owned(), toml_value.to_owned());
        self
    }

    /// Keeps the node's data in `dir` (one node only: a cluster's nodes
    /// would share it).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// An environment variable for the process (e.g. `TALLY_*` overrides).
    /// The harness removes any `TALLY_*` the test runner inherited.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    fn render(&self, node: &NodeSpec, data_dir: &Path) -> String {
        let mut settings = self.settings.clone();
        let server = settings.entry("server".into()).or_default();
        server.insert("listen".into(), toml_string(&node.http_addr.to_string()));
        let cluster = settings.entry("cluster".into()).or_default();
        cluster.insert("node_id".into(), node.node_id.to_string());
        cluster.insert("listen".into(), toml_string(&node.peer_addr.to_string()));
        let members: Vec<String> = node
            .members
            .iter()
            .map(|(id, addr)| format!("{{ id = {id}, addr = {} }}", toml_string(&addr.to_string())))
            .collect();
        cluster.insert("members".into(), format!("[{}]", members.join(", ")));
        cluster.insert("shards".into(), self.shards.to_string());
        cluster.insert("data_dir".into(), toml_string(&data_dir.to_string_lossy()));
        let mut text = String::from("# Written by the end-to-end test harness (server/tests/common).\n");
        for (section, keys) in &settings {
            text.push_str(&format!("\n[{section}]\n"));
            for (key, value) in keys {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text
    }
}

/// A JSON string literal is a valid TOML basic string.
fn toml_string(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// Who a node is and where it and its peers listen.
#[derive(Clone, Debug)]
struct NodeSpec {
    node_id: u64,
    http_addr: SocketAddr,
    peer_addr: SocketAddr,
    members: Vec<(u64, SocketAddr)>,
}

// ---------------------------------------------------------------------------
// One process

/// Why a process did not become ready.
#[derive(Debug)]
pub enum StartError {
    /// It exited because a port was taken; worth a retry on other ports.
    AddrInUse,
    Exited(ExitStatus),
    TimedOut(Duration),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::AddrInUse => write!(f, "exited: address in use"),
            StartError::Exited(status) => write!(f, "exited before ready: {status}"),
            StartError::TimedOut(waited) => write!(f, "/readyz did not answer 200 within {waited:?}"),
        }
    }
}

/// One `tally serve` child process with its own directory (config, data,
/// logs). Dropping it kills the process.
pub struct TallyProcess {
    pub node_id: u64,
    pub http_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    http: Http,
    /// `None` once kept for a failed test to be inspected.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Spawns so far; each one's output starts with a marker line.
    starts: u32,
}

impl TallyProcess {
    /// Starts a single node and waits until it is ready.
    pub async fn start(options: Options) -> TallyProcess {
        for attempt in 1..=START_ATTEMPTS_MAX {
            let addrs = free_addrs(2);
            let spec = NodeSpec { node_id: 1, http_addr: addrs[0], peer_addr: addrs[1], members: vec![(1, addrs[1])] };
            let mut node = TallyProcess::launch(spec, &options);
            match wait_all_ready(&mut [&mut node]).await {
                Ok(()) => return node,
                Err((_, StartError::AddrInUse)) if attempt < START_ATTEMPTS_MAX => continue,
                Err((id, error)) => panic!("tally node {id} did not start: {error}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts a single node and does not wait for it: for a node the
    /// plain-HTTP readiness probe cannot reach (HTTPS). The caller waits
    /// in its own way and checks `is_running`.
    pub fn start_unprobed(options: Options) -> TallyProcess {
        let addrs = free_addrs(2);
        let spec = NodeSpec { node_id: 1, http_addr: addrs[0], peer_addr: addrs[1], members: vec![(1, addrs[1])] };
        TallyProcess::launch(spec, &options)
    }

    /// Spawns node `node_id` on the given addresses with `members` as its
    /// `cluster.members` (a node that joins an existing cluster names its
    /// nodes, not itself); does not wait. With `options.data_dir` it uses
    /// that data directory (e.g. one `tally restore` built).
    pub fn launch_as(
        options: &Options,
        node_id: u64,
        http_addr: SocketAddr,
        peer_addr: SocketAddr,
        members: Vec<(u64, SocketAddr)>,
    ) -> TallyProcess {
        TallyProcess::launch(NodeSpec { node_id, http_addr, peer_addr, members }, options)
    }

    /// Writes the config and spawns the process; does not wait.
    fn launch(spec: NodeSpec, options: &Options) -> TallyProcess {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tally-e2e-node{}-", spec.node_id))
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let root = dir.path().to_path_buf();
        let data_dir = options.data_dir.clone().unwrap_or_else(|| root.join("data"));
        let config = options.render(&spec, &data_dir);
        std::fs::write(root.join("tally.toml"), config).unwrap_or_else(|e| panic!("writing the config: {e}"));
        let mut process = TallyProcess {
            node_id: spec.node_id,
            http_addr: spec.http_addr,
            peer_addr: spec.peer_addr,
            http: Http::new(spec.http_addr),
            dir: Some(dir),
            root,
            data_dir,
            env: options.env.clone(),
            child: None,
            starts: 0,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.node_id);
        self.starts += 1;
        let marker = format!("==== tally-e2e: start #{} of node {} ====\n", self.starts, self.node_id);
        let stdout = self.open_log("stdout.log", &marker);
        let stderr = self.open_log("stderr.log", &marker);
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
        command
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // The runner's own TALLY_* settings must not leak into the node.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TALLY_") {
                command.env_remove(name);
            }
        }
        // Logs go to files: no colour codes in them.
        command.env("NO_COLOR", "1");
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().unwrap_or_else(|e| panic!("spawning {}: {e}", env!("CARGO_BIN_EXE_tally")));
        self.child = Some(child);
        // Pooled connections to a previous run are dead.
        self.http = Http::new(self.http_addr);
    }

    fn open_log(&self, name: &str, marker: &str) -> File {
        let path = self.root.join(name);
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        file.write_all(marker.as_bytes()).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        file
    }

    /// The client of this node (shared keep-alive pool).
    pub fn http(&self) -> &Http {
        &self.http
    }

    /// A new client of this node with a connection pool of its own.
    pub fn client(&self) -> Http {
        Http::new(self.http_addr)
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("tally.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// The exit status if the process has exited.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            Ok(None) => None,
            Err(e) => panic!("node {}: try_wait: {e}", self.node_id),
        }
    }

    /// One look at the process: `Some(Ok)` ready, `Some(Err)` dead, `None`
    /// not yet.
    async fn probe_ready(&mut self) -> Option<Result<(), StartError>> {
        if let Some(status) = self.poll_exit() {
            let logs = self.logs().to_ascii_lowercase();
            let in_use = logs.contains("address already in use") || logs.contains("addrinuse");
            return Some(Err(if in_use { StartError::AddrInUse } else { StartError::Exited(status) }));
        }
        let probe = Http::with_timeout(self.http_addr, Duration::from_secs(2));
        match probe.try_request(Method::GET, "/readyz", &[], None).await {
            Ok((StatusCode::OK, _, _)) => Some(Ok(())),
            _ => None,
        }
    }

    /// Waits until `/readyz` answers 200, the process exits, or
    /// [`READY_WAIT_MAX`] passes.
    pub async fn wait_ready(&mut self) -> Result<(), StartError> {
        wait_all_ready(&mut [self]).await.map_err(|(_, e)| e)
    }

    /// Waits until ready or panics (the logs print as the panic unwinds).
    pub async fn ready(&mut self) {
        if let Err(error) = self.wait_ready().await {
            panic!("tally node {} did not become ready: {error}", self.node_id);
        }
    }

    /// Waits until `/healthz` answers 200 (the process serves HTTP, whether
    /// or not the cluster is ready).
    pub async fn healthy(&mut self) {
        let deadline = Instant::now() + READY_WAIT_MAX;
        loop {
            if let Some(status) = self.poll_exit() {
                panic!("tally node {} exited before /healthz answered: {status}", self.node_id);
            }
            let probe = Http::with_timeout(self.http_addr, Duration::from_secs(2));
            if let Ok((StatusCode::OK, _, _)) = probe.try_request(Method::GET, "/healthz", &[], None).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tally node {}: /healthz not 200 within {READY_WAIT_MAX:?}",
                self.node_id
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGKILL: no shutdown, no flush. Waits until the process is gone.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on unix; it fails only if the process
            // was already reaped, which `take` rules out.
            if let Err(e) = child.kill() {
                panic!("node {}: kill: {e}", self.node_id);
            }
            if let Err(e) = child.wait() {
                panic!("node {}: wait after kill: {e}", self.node_id);
            }
        }
    }

    /// SIGTERM (a graceful stop) and waits for the exit, at most
    /// [`EXIT_WAIT_MAX`]; answers the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid().unwrap_or_else(|| panic!("node {} is not running", self.node_id));
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill -TERM {pid}: {e}"));
        assert!(status.success(), "kill -TERM {pid}: {status}");
        let deadline = Instant::now() + EXIT_WAIT_MAX;
        loop {
            if let Some(status) = self.poll_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill_9();
                panic!("node {} did not exit within {EXIT_WAIT_MAX:?} of SIGTERM", self.node_id);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Starts the process again on the same config, data directory and
    /// ports (killing it first if it runs) and waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill_9();
        for attempt in 1..=RESTART_ATTEMPTS_MAX {
            self.spawn();
            match self.wait_ready().await {
                Ok(()) => return,
                // Our own ports: another process grabbed one meanwhile, or
                // the old socket is not released yet. Wait and try again.
                Err(StartError::AddrInUse) if attempt < RESTART_ATTEMPTS_MAX => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => panic!("tally node {} did not restart: {error}", self.node_id),
            }
        }
    }

    /// Everything the process wrote to stdout and stderr, over all starts.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read(self.root.join(name)).unwrap_or_default();
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            String::from_utf8_lossy(&read("stdout.log")),
            String::from_utf8_lossy(&read("stderr.log"))
        )
    }

    /// Prints the last lines of both logs to stderr (the test's output).
    pub fn print_logs(&self) {
        for name in ["stdout.log", "stderr.log"] {
            let text = std::fs::read(self.root.join(name)).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!(
                "----- node {} {name} ({} of {} lines, in {}) -----",
                self.node_id,
                lines.len() - from,
                lines.len(),
                self.root.display()
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for TallyProcess {
    fn drop(&mut self) {
        self.kill_9();
        if std::thread::panicking() {
            self.print_logs();
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("----- node {} directory kept for inspection: {} -----", self.node_id, kept.display());
            }
        }
    }
}

/// Waits until every node answers `/readyz` 200. The first node that exits
/// or the deadline ends the wait, naming the node.
async fn wait_all_ready(nodes: &mut [&mut TallyProcess]) -> Result<(), (u64, StartError)> {
    let deadline = Instant::now() + READY_WAIT_MAX;
    let mut ready = vec![false; nodes.len()];
    loop {
        for (node, ready) in nodes.iter_mut().zip(ready.iter_mut()) {
            if *ready {
                // Ready once is not enough if it died since.
                if let Some(status) = node.poll_exit() {
                    return Err((node.node_id, StartError::Exited(status)));
                }
                continue;
            }
            match node.probe_ready().await {
                Some(Ok(())) => *ready = true,
                Some(Err(error)) => return Err((node.node_id, error)),
                None => {}
            }
        }
        if ready.iter().all(|r| *r) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let id = nodes.iter().zip(&ready).find(|(_, r)| !**r).map_or(0, |(n, _)| n.node_id);
            return Err((id, StartError::TimedOut(READY_WAIT_MAX)));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

// ---------------------------------------------------------------------------
// A cluster of processes

/// `size` processes on loopback, node ids `1..=size`, one member list.
pub struct TallyCluster {
    nodes: Vec<TallyProcess>,
}

impl TallyCluster {
    /// Starts every node and waits until all are ready.
    pub async fn start(size: u64, options: Options) -> TallyCluster {
        assert!(options.data_dir.is_none(), "a cluster's nodes cannot share one data directory");
        let count = usize::try_from(size).unwrap_or_else(|e| panic!("cluster size {size}: {e}"));
        for attempt in 1..=START_ATTEMPTS_MAX {
            let addrs = free_addrs(2 * count);
            let (http_addrs, peer_addrs) = addrs.split_at(count);
            let members: Vec<(u64, SocketAddr)> = (1..=size).zip(peer_addrs.iter().copied()).collect();
            let mut nodes: Vec<TallyProcess> = members
                .iter()
                .zip(http_addrs)
                .map(|(&(node_id, peer_addr), &http_addr)| {
                    let spec = NodeSpec { node_id, http_addr, peer_addr, members: members.clone() };
                    TallyProcess::launch(spec, &options)
                })
                .collect();
            let mut waiting: Vec<&mut TallyProcess> = nodes.iter_mut().collect();
            match wait_all_ready(&mut waiting).await {
                Ok(()) => return TallyCluster { nodes },
                Err((_, StartError::AddrInUse)) if attempt < START_ATTEMPTS_MAX => continue,
                Err((id, error)) => panic!("tally cluster: node {id} did not start: {error}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Node `id` (1-based).
    pub fn node(&self, id: u64) -> &TallyProcess {
        self.nodes
            .iter()
            .find(|n| n.node_id == id)
            .unwrap_or_else(|| panic!("no node {id} in a cluster of {}", self.nodes.len()))
    }

    pub fn node_mut(&mut self, id: u64) -> &mut TallyProcess {
        let size = self.nodes.len();
        self.nodes.iter_mut().find(|n| n.node_id == id).unwrap_or_else(|| panic!("no node {id} in a cluster of {size}"))
    }

    /// Node `id`'s client.
    pub fn http(&self, id: u64) -> &Http {
        self.node(id).http()
    }

    pub fn nodes(&self) -> &[TallyProcess] {
        &self.nodes
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.node_id).collect()
    }

    /// Waits until every running node is ready again (a node killed and not
    /// restarted is left out).
    pub async fn ready(&mut self) {
        let mut running: Vec<&mut TallyProcess> = self.nodes.iter_mut().filter(|n| n.child.is_some()).collect();
        if let Err((id, error)) = wait_all_ready(&mut running).await {
            panic!("tally cluster: node {id} is not ready: {error}");
        }
    }
}
