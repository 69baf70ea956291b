//! Tally as a bench target: real `tally` processes (one node, or a 3-node
//! cluster on loopback) driven over HTTP/1.1 keep-alive.
//!
//! The server is the `tally` binary given by `--tally-bin`, or else this
//! very program re-run as `tally-bench tally serve …`, which runs the same
//! `server::cli` the `tally` binary is: the bench then always measures the
//! code it was built with, in the same profile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::target::{ChangeResult, Conn, HoldRequest, HoldResult, HoldState, ItemSpec, ItemState, StartError};

/// Longest wait for a started node to answer `/readyz` with 200.
const READY_WAIT: Duration = Duration::from_secs(60);
/// Connections used to create items before a workload.
const LOAD_CONNECTIONS: usize = 32;
/// Items per page when reading many items back.
const LIST_PAGE: usize = 1000;
/// The counter of snapshots built in `/metrics`, one sample per shard.
const SNAPSHOTS_BUILT: &str = "tally_shard_snapshots_built_total";

/// Settings of the started nodes that differ from the server's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeSettings {
    /// `[cluster] snapshot_after_entries`: low enough, a run sees the
    /// shards snapshot while it measures. `None` keeps the server's default.
    pub snapshot_after_entries: Option<u64>,
}

/// How to start a `tally` process.
#[derive(Clone, Debug)]
pub enum Program {
    /// A `tally` binary.
    Binary(PathBuf),
    /// This executable, with `tally` as its first argument.
    SelfExec(PathBuf),
}

impl Program {
    fn command(&self) -> Command {
        match self {
            Program::Binary(path) => Command::new(path),
            Program::SelfExec(path) => {
                let mut command = Command::new(path);
                command.arg("tally");
                command
            }
        }
    }
}

/// One node or three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    Single,
    Cluster3,
}

/// Running `tally` processes and their HTTP addresses.
pub struct TallyTarget {
    children: Vec<Child>,
    http: Vec<SocketAddr>,
    topology: Topology,
    shards: u32,
}

/// A free loopback port (bound then released: another process could take
/// it in between, which start-up then reports).
pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("no free port: {e}"))
}

impl TallyTarget {
    /// Starts the nodes with their data under `dir` (which must be fresh)
    /// and waits until every node is ready.
    pub async fn start(
        program: &Program,
        topology: Topology,
        dir: &Path,
        settings: NodeSettings,
    ) -> Result<TallyTarget, StartError> {
        let failed = |what: String| StartError::Failed(what);
        let size = match topology {
            Topology::Single => 1,
            Topology::Cluster3 => 3,
        };
        let http: Vec<SocketAddr> = (0..size)
            .map(|_| free_port().map(|port| SocketAddr::from(([127, 0, 0, 1], port))))
            .collect::<Result<_, _>>()
            .map_err(failed)?;
        let peers: Vec<u16> = (0..size).map(|_| free_port()).collect::<Result<_, _>>().map_err(failed)?;
        let shards = std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(2));
        let members: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{{ id = {}, addr = \"127.0.0.1:{port}\" }}", i + 1))
            .collect();
        let mut children = Vec::with_capacity(size);
        for node in 0..size {
            let data = dir.join(format!("node{}", node + 1));
            std::fs::create_dir_all(&data).map_err(|e| failed(format!("{}: {e}", data.display())))?;
            let mut config = format!(
                "[server]\nlisten = \"{}\"\nlog_level = \"warn\"\n\n[cluster]\nnode_id = {}\nlisten = \"127.0.0.1:{}\"\n\
                 members = [{}]\nshards = {shards}\ndata_dir = \"{}\"\n",
                http[node],
                node + 1,
                peers[node],
                members.join(", "),
                data.display()
            );
            if let Some(entries) = settings.snapshot_after_entries {
                config.push_str(&format!("snapshot_after_entries = {entries}\n"));
            }
            let path = dir.join(format!("node{}.toml", node + 1));
            std::fs::write(&path, config).map_err(|e| failed(format!("{}: {e}", path.display())))?;
            let log = std::fs::File::create(dir.join(format!("node{}.log", node + 1)))
                .map_err(|e| failed(format!("log file: {e}")))?;
            let child = program
                .command()
                .arg("serve")
                .arg("--config")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| failed(format!("cannot start tally ({program:?}): {e}")))?;
            children.push(child);
        }
        let mut target = TallyTarget { children, http, topology, shards };
        target.wait_ready().await?;
        Ok(target)
    }

    async fn wait_ready(&mut self) -> Result<(), StartError> {
        let started = Instant::now();
        for (node, addr) in self.http.clone().into_iter().enumerate() {
            let mut http = Http::new(addr);
            loop {
                if let Ok(Some(status)) = self.children[node].try_wait() {
                    return Err(StartError::Failed(format!("tally node {} exited at start: {status}", node + 1)));
                }
                if let Ok((StatusCode::OK, _)) = http.request(Method::GET, "/readyz", None).await {
                    break;
                }
                if started.elapsed() > READY_WAIT {
                    return Err(StartError::Failed(format!("tally node {} not ready within {READY_WAIT:?}", node + 1)));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        match self.topology {
            Topology::Single => format!("Tally, 1 node, {} shards, fsync per group commit", self.shards),
            Topology::Cluster3 => {
                format!(
                    "Tally, 3 nodes, {} shards, majority-replicated and fsynced, clients spread over the nodes",
                    self.shards
                )
            }
        }
    }

    /// A connection for client number `client`: clients are spread over
    /// the nodes in turn; a node forwards what another node leads.
    pub fn connect(&self, client: usize) -> TallyConn {
        TallyConn { http: Http::new(self.http[client % self.http.len()]) }
    }

    /// The HTTP address of node `node` (0-based).
    pub fn address(&self, node: usize) -> SocketAddr {
        self.http[node % self.http.len()]
    }

    /// Snapshots the nodes have built so far, summed over every node and
    /// shard (`tally_shard_snapshots_built_total` of each node's `/metrics`).
    pub async fn snapshots_built(&self) -> Result<u64, String> {
        let mut total = 0;
        for addr in &self.http {
            let mut http = Http::new(*addr);
            match http.request(Method::GET, "/metrics", None).await? {
                (StatusCode::OK, body) => {
                    total += snapshots_built_in(&String::from_utf8_lossy(&body))
                        .ok_or_else(|| format!("{addr}: no {SNAPSHOTS_BUILT} in /metrics"))?;
                }
                (status, body) => return Err(format!("{addr} /metrics: {status} {}", String::from_utf8_lossy(&body))),
            }
        }
        Ok(total)
    }

    /// Creates the items (a `PUT` each, over several connections).
    pub async fn load(&self, items: &[ItemSpec]) -> Result<(), String> {
        let chunk = items.len().div_ceil(LOAD_CONNECTIONS).max(1);
        let mut tasks = Vec::new();
        for (index, part) in items.chunks(chunk).enumerate() {
            let part = part.to_vec();
            let mut conn = self.connect(index);
            tasks.push(tokio::spawn(async move {
                for item in part {
                    let path = format!("/v1/items/{}/{}", item.sku, item.warehouse);
                    let body = format!("{{\"on_hand\":{}}}", item.on_hand);
                    match conn.http.request(Method::PUT, &path, Some(Bytes::from(body))).await {
                        Ok((status, _)) if status.is_success() => {}
                        Ok((status, body)) => {
                            return Err(format!("PUT {path}: {status} {}", String::from_utf8_lossy(&body)));
                        }
                        Err(error) => return Err(format!("PUT {path}: {error}")),
                    }
                }
                Ok(())
            }));
        }
        for task in tasks {
            task.await.map_err(|e| format!("load task: {e}"))??;
        }
        Ok(())
    }

    /// Stops every node with SIGTERM (a clean shutdown), then waits.
    pub async fn stop(mut self) {
        for child in &mut self.children {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(20), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

/// The snapshots built in one node's Prometheus text: the sum of its
/// `tally_shard_snapshots_built_total` samples, `None` when it has none or
/// one is not a count.
pub fn snapshots_built_in(metrics: &str) -> Option<u64> {
    let mut total: Option<u64> = None;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(SNAPSHOTS_BUILT) else {
            continue;
        };
        // The name itself, not a longer one it starts.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        // A counter of u64 is written as an integer.
        let value = rest.rsplit(' ').next()?.parse::<u64>().ok()?;
        total = Some(total.unwrap_or(0).saturating_add(value));
    }
    total
}

/// One HTTP/1.1 keep-alive connection, re-opened after an error.
pub struct Http {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http { addr, sender: None }
    }

    async fn open(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr).await.map_err(|e| format!("connect {}: {e}", self.addr))?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| "no connection".to_owned())
    }

    /// Sends one request and reads the whole answer.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), String> {
        let result = self.try_request(method, path, body).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), String> {
        let host = self.addr.to_string();
        let sender = self.open().await?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let mut builder = Request::builder().method(method).uri(path).header("host", host);
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder.body(Full::new(body.unwrap_or_default())).map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, body))
    }
}

/// A client's connection to one Tally node.
pub struct TallyConn {
    http: Http,
}

#[derive(Deserialize)]
struct Reservation {
    id: String,
    state: String,
}

#[derive(Deserialize)]
struct BatchAnswer {
    results: Vec<BatchResult>,
}

/// A result of `?view=compact`: the id when held, else the problem's code.
#[derive(Deserialize)]
struct BatchResult {
    status: u16,
    id: Option<String>,
}

#[derive(Deserialize)]
struct Item {
    sku: String,
    warehouse: String,
    on_hand: u64,
    reserved: u64,
}

#[derive(Deserialize)]
struct Page {
    items: Vec<Item>,
    next_cursor: Option<String>,
}

fn hold_body(hold: &HoldRequest) -> String {
    format!(
        "{{\"lines\":[{{\"sku\":\"{}\",\"warehouse\":\"{}\",\"quantity\":{}}}],\"ttl_seconds\":{}}}",
        hold.sku,
        hold.warehouse,
        hold.qty,
        hold.ttl_ms.div_ceil(1000).max(1)
    )
}

fn change(result: Result<(StatusCode, Bytes), String>) -> ChangeResult {
    match result {
        Ok((status, _)) if status.is_success() => ChangeResult::Done,
        Ok((StatusCode::CONFLICT, _)) => ChangeResult::Refused,
        Ok((status, body)) => ChangeResult::Unknown(format!("{status} {}", String::from_utf8_lossy(&body))),
        Err(error) => ChangeResult::Unknown(error),
    }
}

impl Conn for TallyConn {
    async fn hold(&mut self, hold: &HoldRequest) -> HoldResult {
        let body = Bytes::from(hold_body(hold));
        match self.http.request(Method::POST, "/v1/reservations", Some(body)).await {
            Ok((StatusCode::CREATED, body)) => match serde_json::from_slice::<Reservation>(&body) {
                Ok(reservation) => HoldResult::Held(reservation.id),
                Err(error) => HoldResult::Unknown(format!("bad answer: {error}")),
            },
            Ok((StatusCode::CONFLICT, _)) => HoldResult::Refused,
            Ok((status, body)) => HoldResult::Unknown(format!("{status} {}", String::from_utf8_lossy(&body))),
            Err(error) => HoldResult::Unknown(error),
        }
    }

    async fn hold_batch(&mut self, holds: &[HoldRequest]) -> Vec<HoldResult> {
        let mut body = String::with_capacity(holds.len() * 100 + 16);
        body.push_str("{\"requests\":[");
        for (index, hold) in holds.iter().enumerate() {
            if index > 0 {
                body.push(',');
            }
            body.push_str(&hold_body(hold));
        }
        body.push_str("]}");
        let unknown = |why: String| vec![HoldResult::Unknown(why); holds.len()];
        match self.http.request(Method::POST, "/v1/reservations/batch?view=compact", Some(Bytes::from(body))).await {
            Ok((StatusCode::OK, body)) => match serde_json::from_slice::<BatchAnswer>(&body) {
                Ok(answer) if answer.results.len() == holds.len() => answer
                    .results
                    .into_iter()
                    .map(|result| match (result.status, result.id) {
                        (201, Some(id)) => HoldResult::Held(id),
                        (409, _) => HoldResult::Refused,
                        (status, _) => HoldResult::Unknown(format!("status {status}")),
                    })
                    .collect(),
                Ok(answer) => unknown(format!("{} results for {} requests", answer.results.len(), holds.len())),
                Err(error) => unknown(format!("bad answer: {error}")),
            },
            Ok((status, body)) => unknown(format!("{status} {}", String::from_utf8_lossy(&body))),
            Err(error) => unknown(error),
        }
    }

    async fn confirm(&mut self, id: &str) -> ChangeResult {
        change(self.http.request(Method::POST, &format!("/v1/reservations/{id}/confirm"), None).await)
    }

    async fn release(&mut self, id: &str) -> ChangeResult {
        change(self.http.request(Method::POST, &format!("/v1/reservations/{id}/release"), None).await)
    }

    async fn adjust(&mut self, sku: &str, warehouse: &str, delta: i64) -> ChangeResult {
        let reason = if delta > 0 { "receive" } else { "correction" };
        let body = Bytes::from(format!("{{\"delta\":{delta},\"reason\":\"{reason}\"}}"));
        change(self.http.request(Method::POST, &format!("/v1/items/{sku}/{warehouse}/adjustments"), Some(body)).await)
    }

    async fn read(&mut self, sku: &str, warehouse: &str) -> Result<ItemState, String> {
        match self.http.request(Method::GET, &format!("/v1/items/{sku}/{warehouse}"), None).await? {
            (StatusCode::OK, body) => {
                let item: Item = serde_json::from_slice(&body).map_err(|e| format!("bad item: {e}"))?;
                Ok(ItemState { on_hand: item.on_hand, reserved: item.reserved })
            }
            (status, body) => Err(format!("{status} {}", String::from_utf8_lossy(&body))),
        }
    }

    async fn read_many(&mut self, items: &[(String, String)]) -> Result<Vec<ItemState>, String> {
        if items.len() <= LIST_PAGE {
            let mut states = Vec::with_capacity(items.len());
            for (sku, warehouse) in items {
                states.push(self.read(sku, warehouse).await?);
            }
            return Ok(states);
        }
        // Many items: page through every item once.
        let mut all = std::collections::HashMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/items?limit={LIST_PAGE}");
            if let Some(cursor) = &cursor {
                path.push_str("&cursor=");
                path.push_str(cursor);
            }
            let page: Page = match self.http.request(Method::GET, &path, None).await? {
                (StatusCode::OK, body) => serde_json::from_slice(&body).map_err(|e| format!("bad page: {e}"))?,
                (status, body) => return Err(format!("{status} {}", String::from_utf8_lossy(&body))),
            };
            for item in page.items {
                all.insert((item.sku, item.warehouse), ItemState { on_hand: item.on_hand, reserved: item.reserved });
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        items
            .iter()
            .map(|key| all.get(key).copied().ok_or_else(|| format!("item {}/{} missing", key.0, key.1)))
            .collect()
    }

    async fn hold_states(&mut self, ids: &[String]) -> Result<Vec<HoldState>, String> {
        let mut states = Vec::with_capacity(ids.len());
        for id in ids {
            let state = match self.http.request(Method::GET, &format!("/v1/reservations/{id}"), None).await? {
                (StatusCode::OK, body) => {
                    let reservation: Reservation =
                        serde_json::from_slice(&body).map_err(|e| format!("bad reservation: {e}"))?;
                    match reservation.state.as_str() {
                        "HELD" => HoldState::Held,
                        "CONFIRMED" => HoldState::Confirmed,
                        "RELEASED" => HoldState::Released,
                        "EXPIRED" => HoldState::Expired,
                        other => return Err(format!("reservation {id}: unknown state {other}")),
                    }
                }
                (StatusCode::NOT_FOUND, _) => HoldState::Missing,
                (status, body) => return Err(format!("{status} {}", String::from_utf8_lossy(&body))),
            };
            states.push(state);
        }
        Ok(states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_built_sums_every_shards_sample_and_nothing_else() {
        let metrics = "# HELP tally_shard_snapshots_built_total Snapshots.\n\
                       # TYPE tally_shard_snapshots_built_total counter\n\
                       tally_shard_snapshots_built_total{shard=\"0\"} 3\n\
                       tally_shard_snapshots_built_total{shard=\"1\"} 2\n\
                       tally_shard_snapshots_built_total_other 40\n\
                       tally_shard_snapshot_fallbacks_total{shard=\"0\"} 1\n";
        assert_eq!(snapshots_built_in(metrics), Some(5));
        assert_eq!(snapshots_built_in("tally_live_holds 3\n"), None, "an older server exports none");
        assert_eq!(snapshots_built_in("tally_shard_snapshots_built_total{shard=\"0\"} x\n"), None);
    }
}
