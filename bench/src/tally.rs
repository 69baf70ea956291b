//! Tally as a bench target: real `tally` processes (one node, or a 3-node
//! cluster on loopback) driven over HTTP/1.1 keep-alive.
//!
//! The server is the `tally` binary given by `--tally-bin`, or else this
//! very program re-run as `tally-bench tally serve …`, which runs the same
//! `server::cli` the `tally` binary is: the bench then always measures the
//! code it was built with, in the same profile.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use testkit::{ConnError, Connection, Options, Program, TallyCluster, TallyProcess};

use crate::target::{ChangeResult, Conn, HoldRequest, HoldResult, HoldState, ItemSpec, ItemState, StartError};

/// Connections used to create items before a workload.
const LOAD_CONNECTIONS: usize = 32;
/// Items per page when reading many items back.
const LIST_PAGE: usize = 1000;
/// The counter of snapshots built in `/metrics`, one sample per shard.
const SNAPSHOTS_BUILT: &str = "tally_shard_snapshots_built_total";
/// Longest wait for the nodes to exit after SIGTERM before they are killed.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// Settings of the started nodes that differ from the server's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeSettings {
    /// `[cluster] snapshot_after_entries`: low enough, a run sees the
    /// shards snapshot while it measures. `None` keeps the server's default.
    pub snapshot_after_entries: Option<u64>,
}

/// One node, three, or a placed cluster (`tally-bench scale`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    Single,
    Cluster3,
    /// `nodes` nodes with `shards` shards, each on `replication_factor` of
    /// them (`cluster.replication_factor`).
    Placed {
        nodes: u64,
        shards: u32,
        replication_factor: u32,
    },
}

/// Running `tally` processes and their HTTP addresses.
pub struct TallyTarget {
    cluster: TallyCluster,
    http: Vec<SocketAddr>,
    topology: Topology,
    shards: u32,
}

impl TallyTarget {
    /// Starts the nodes with their config, logs and data under
    /// `dir/node<n>` (which must be fresh) and waits until every node is
    /// ready.
    pub async fn start(
        program: &Program,
        topology: Topology,
        dir: &Path,
        settings: NodeSettings,
    ) -> Result<TallyTarget, StartError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(2));
        let (size, shards) = match topology {
            Topology::Single => (1, cores),
            Topology::Cluster3 => (3, cores),
            Topology::Placed { nodes, shards, .. } => (nodes, shards),
        };
        let mut options = Options::new(program.clone()).shards(shards).log_level("warn").root(dir);
        if let Topology::Placed { replication_factor, .. } = topology {
            options = options.set("cluster", "replication_factor", &replication_factor.to_string());
        }
        if let Some(entries) = settings.snapshot_after_entries {
            options = options.snapshot_after_entries(entries);
        }
        let cluster = TallyCluster::try_start(size, options).await.map_err(StartError::Failed)?;
        let http = cluster.nodes().iter().map(|node| node.http_addr).collect();
        Ok(TallyTarget { cluster, http, topology, shards })
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
            Topology::Placed { nodes, shards, replication_factor } => format!(
                "Tally, {nodes} nodes, {shards} shards each on {replication_factor} of them, majority-replicated \
                 and fsynced, clients spread over the nodes"
            ),
        }
    }

    /// The process id of every node, in node order (`None`: not running).
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.cluster.nodes().iter().map(TallyProcess::pid).collect()
    }

    /// A connection for client number `client`: clients are spread over
    /// the nodes in turn; a node forwards what another node leads.
    pub fn connect(&self, client: usize) -> TallyConn {
        TallyConn { http: Connection::new(self.http[client % self.http.len()]) }
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
            let mut http = Connection::new(*addr);
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

    /// Stops every node with SIGTERM (a clean shutdown), then waits; a
    /// node still running after [`STOP_WAIT`] is killed.
    pub async fn stop(mut self) {
        let _ = self.cluster.try_terminate_all(STOP_WAIT).await;
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

/// A client's connection to one Tally node.
pub struct TallyConn {
    http: Connection,
}

#[derive(Deserialize)]
pub(crate) struct Reservation {
    pub(crate) id: String,
    pub(crate) state: String,
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

/// The body of `POST /v1/reservations` for one hold (also `tally-bench roll`'s).
pub(crate) fn hold_body(hold: &HoldRequest) -> String {
    format!(
        "{{\"lines\":[{{\"sku\":\"{}\",\"warehouse\":\"{}\",\"quantity\":{}}}],\"ttl_seconds\":{}}}",
        hold.sku,
        hold.warehouse,
        hold.qty,
        hold.ttl_ms.div_ceil(1000).max(1)
    )
}

fn change(result: Result<(StatusCode, Bytes), ConnError>) -> ChangeResult {
    match result {
        Ok((status, _)) if status.is_success() => ChangeResult::Done,
        Ok((StatusCode::CONFLICT, _)) => ChangeResult::Refused,
        Ok((status, body)) => ChangeResult::Unknown(format!("{status} {}", String::from_utf8_lossy(&body))),
        Err(error) => ChangeResult::Unknown(error.to_string()),
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
            Err(error) => HoldResult::Unknown(error.to_string()),
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
            Err(error) => unknown(error.to_string()),
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
                (StatusCode::OK, body) => hold_state_of(id, &body)?,
                (StatusCode::NOT_FOUND, _) => HoldState::Missing,
                (status, body) => return Err(format!("{status} {}", String::from_utf8_lossy(&body))),
            };
            states.push(state);
        }
        Ok(states)
    }
}

/// The state of reservation `id` from the body of `GET /v1/reservations/{id}`.
pub(crate) fn hold_state_of(id: &str, body: &[u8]) -> Result<HoldState, String> {
    let reservation: Reservation = serde_json::from_slice(body).map_err(|e| format!("bad reservation: {e}"))?;
    Ok(match reservation.state.as_str() {
        "HELD" => HoldState::Held,
        "CONFIRMED" => HoldState::Confirmed,
        "RELEASED" => HoldState::Released,
        "EXPIRED" => HoldState::Expired,
        other => return Err(format!("reservation {id}: unknown state {other}")),
    })
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
