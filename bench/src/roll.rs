//! `tally-bench roll`: a rolling restart of a cluster under the flash-sale
//! load, with zero failed writes required.
//!
//! 1. Starts `nodes` (5) `tally` nodes on loopback and stocks the
//!    flash-sale items (`workload::items`).
//! 2. Runs the flash-sale workload (`workload::Client`, the same clients
//!    `tally-bench run` measures) from every client, spread over the nodes,
//!    and measures it for `before` with every node up: the steady figures.
//! 3. Restarts each node in turn while the clients go on: SIGTERM, wait for
//!    the exit, start it again on the same data directory and ports, wait
//!    for `/readyz`, then until it has applied every entry its shards'
//!    leaders had committed when it came back (caught up), then `settle`;
//!    then the next node. Writes meanwhile are the roll's figures.
//! 4. Stops the clients, lets them race for the last `sellout_units` of the
//!    second SKU, and checks: no oversell and no lost write (the bench's
//!    check, `workload::check`), exactly the units sold out
//!    (`workload::check_sellout`), and every acknowledged hold found by id.
//!
//! Every write carries an `Idempotency-Key` ([`RollConn`]). An attempt that
//! gets no answer (refused, reset, timed out) or a 5xx or 429 is sent again
//! with the same key and body to the next node, until `write_window` has
//! passed: the engine answers a retry of a write that did happen with its
//! first outcome, so nothing is held twice. A write counts as failed when
//! it never succeeds within the window, or is refused for a reason other
//! than stock. The run fails (exit 1) when any write failed, anything was
//! oversold or lost, or a node did not restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use testkit::{Connection, Http, Options, Program, TallyCluster, TallyProcess};

use crate::load::{self, Step, Stepper};
use crate::results::{Check, Latency};
use crate::tally::{Reservation, hold_body, hold_state_of};
use crate::target::{ChangeResult, Conn, HoldRequest, HoldResult, HoldState, ItemSpec, ItemState};
use crate::workload::{self, Client, Known, Ledger, Shape, Workload};

/// Pause between two attempts of one write (each to the next node).
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Longest wait for a node to exit after SIGTERM before it is killed (a
/// kill is reported as a problem: the procedure stops nodes cleanly).
const STOP_WAIT_MAX: Duration = Duration::from_secs(60);
/// Longest wait for a restarted node's `/readyz` (a debug build replaying
/// its log on a loaded machine is slow).
const READY_WAIT_MAX: Duration = Duration::from_secs(180);
/// Longest wait for a ready node to catch up with its shards' leaders.
const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(180);
/// Starts of a restarted node on its own ports after "address in use".
const RESTART_ATTEMPTS_MAX: u32 = 20;
/// How often a restarted node's progress is looked at.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often a peer is asked who leads while a leader stops.
const LEADER_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Requests in a row that may fail before a sell-out race gives up.
const SELLOUT_ERRORS_MAX: u32 = 20;
/// Connections that look every acknowledged hold up after the run.
const LOOKUP_CONNECTIONS: usize = 8;
/// Reasons of failed writes kept for the report.
const FAILURES_KEPT_MAX: usize = 20;

/// What to run.
#[derive(Clone, Debug)]
pub struct RollPlan {
    pub nodes: u64,
    pub shards: u32,
    pub clients: u32,
    /// Load before anything is measured.
    pub warmup: Duration,
    /// Steady load measured with every node up, before the roll.
    pub before: Duration,
    /// Pause after a restarted node has caught up, before the next stops.
    pub settle: Duration,
    /// Longest a write is retried (from its first attempt) before it counts
    /// as failed.
    pub write_window: Duration,
    /// Longest wait for one attempt's answer.
    pub attempt_timeout: Duration,
    pub shape: Shape,
    pub program: Program,
    /// The nodes' directories are `dir/node<n>`.
    pub dir: PathBuf,
}

/// What `tally-bench roll` writes to `roll.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RollResult {
    /// UTC date and time the run started, RFC 3339.
    pub started: String,
    pub command: String,
    pub machine: String,
    pub nodes: u64,
    pub shards: u32,
    pub clients: u32,
    pub settle_s: f64,
    pub write_window_s: f64,
    /// Writes with every node up, before the roll.
    pub before: PhaseFigures,
    /// Writes from the first SIGTERM to the last node's settle.
    pub during: PhaseFigures,
    /// Each node's restart, in order.
    pub restarts: Vec<Restart>,
    /// Writes issued (holds, the sell-out race's included).
    pub writes: u64,
    /// Writes that needed more than one attempt (and then succeeded or were
    /// refused for stock).
    pub writes_retried: u64,
    /// Attempts that got no answer, a 5xx or a 429, and were sent again.
    pub attempts_retried: u64,
    /// Writes that never succeeded within the window, or were refused for a
    /// reason other than stock. Must be 0.
    pub failed_writes: u64,
    /// Why, for the first few.
    pub failures: Vec<String>,
    /// Units held in the sell-out race (must be `sellout_units`).
    pub sellout_held: u64,
    pub sellout_units: u64,
    /// Acknowledged holds, and how many of them were looked up by id after
    /// the run (all) and were not found `HELD`.
    pub holds_acknowledged: u64,
    pub holds_looked_up: u64,
    pub holds_lost: u64,
    /// The bench's check of the final state: oversell, lost, sell-out.
    pub check: Check,
    /// What went wrong with the roll itself (a node that did not stop,
    /// start or catch up), and the holds not found.
    pub problems: Vec<String>,
    pub passed: bool,
}

/// Writes measured in one phase of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PhaseFigures {
    pub seconds: f64,
    pub requests: u64,
    pub holds: u64,
    pub holds_per_s: f64,
    /// Requests that did not end in a hold or a refusal for stock.
    pub errors: u64,
    /// From a write's first attempt to its final answer (retries included),
    /// microseconds.
    pub latency: Latency,
}

/// One node's restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Restart {
    pub node: u64,
    /// Shards this node led when it was stopped.
    pub led_shards: Vec<u32>,
    /// From SIGTERM until another node shows a leader other than this one
    /// for every shard it led: how long its shards went without a leader.
    /// `None` when it led none, or none was seen before it came back.
    pub leaders_moved_ms: Option<u64>,
    /// From SIGTERM to the exit.
    pub stop_ms: u64,
    /// The exit status (`exit status: 0` for a clean stop).
    pub exit: String,
    /// From the start to `/readyz` answering 200.
    pub ready_ms: u64,
    /// From ready to having applied what its shards' leaders had committed.
    pub catch_up_ms: u64,
}

impl RollResult {
    fn judge(&mut self) {
        self.passed = self.failed_writes == 0
            && self.check.passed()
            && self.holds_lost == 0
            && self.problems.is_empty()
            && self.restarts.len() as u64 == self.nodes;
    }

    /// The figures as Markdown.
    pub fn markdown(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut text = format!(
            "Rolling restart of {} nodes ({} shards) under flash-sale, {} clients, settle {:.1} s, \
             write window {:.0} s\n\n| phase | seconds | writes | holds/s | p50 ms | p99 ms | max ms |\n\
             |---|---|---|---|---|---|---|\n",
            self.nodes, self.shards, self.clients, self.settle_s, self.write_window_s
        );
        for (name, phase) in [("before the roll", &self.before), ("during the roll", &self.during)] {
            text.push_str(&format!(
                "| {name} | {:.1} | {} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
                phase.seconds,
                phase.requests,
                phase.holds_per_s,
                ms(phase.latency.p50),
                ms(phase.latency.p99),
                ms(phase.latency.max)
            ));
        }
        text.push_str(
            "\n| node | led shards | new leaders ms | stop ms | exit | ready ms | catch-up ms |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for restart in &self.restarts {
            let moved = restart.leaders_moved_ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string());
            text.push_str(&format!(
                "| {} | {:?} | {moved} | {} | {} | {} | {} |\n",
                restart.node, restart.led_shards, restart.stop_ms, restart.exit, restart.ready_ms, restart.catch_up_ms
            ));
        }
        text.push_str(&format!(
            "\nwrites {}, retried {} ({} attempts), failed {}; sell-out {} of {}; holds acknowledged {}, \
             looked up {}, lost {}; oversell {}, lost (levels) {}\n",
            self.writes,
            self.writes_retried,
            self.attempts_retried,
            self.failed_writes,
            self.sellout_held,
            self.sellout_units,
            self.holds_acknowledged,
            self.holds_looked_up,
            self.holds_lost,
            self.check.oversell,
            self.check.lost
        ));
        for problem in self.check.problems.iter().chain(&self.problems).chain(&self.failures) {
            text.push_str(&format!("- {problem}\n"));
        }
        text.push_str(if self.passed { "\nPASSED\n" } else { "\nFAILED\n" });
        text
    }
}

// ---------------------------------------------------------------------------
// A client's connection: every node, retries with the same key

/// What a [`RollConn`]'s writes came to.
#[derive(Clone, Debug, Default)]
pub struct WriteStats {
    pub writes: u64,
    pub retried: u64,
    pub attempts_retried: u64,
    pub failed: u64,
    pub failures: Vec<String>,
}

impl WriteStats {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        if self.failures.len() < FAILURES_KEPT_MAX {
            self.failures.push(why);
        }
    }
}

/// A client's connections to every node. Each request goes first to the
/// client's own node (`home`), and after an attempt with no answer, a 5xx
/// or a 429, to the next node, with the same `Idempotency-Key` and body,
/// until `window` has passed since its first attempt: a client that a load
/// balancer would send elsewhere when its node goes away.
pub struct RollConn {
    conns: Vec<Connection>,
    home: usize,
    window: Duration,
    attempt_timeout: Duration,
    pub stats: WriteStats,
}

/// Whether an answer says nothing happened yet and another node (or a
/// moment later) may do it: unavailable, overloaded, shutting down, no
/// leader, outcome unknown, rate limited.
fn transient(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// The problem `code` of an answer's body, if it has one.
fn problem_code(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("code")?.as_str().map(str::to_owned)
}

impl RollConn {
    pub fn new(nodes: &[SocketAddr], home: usize, window: Duration, attempt_timeout: Duration) -> RollConn {
        RollConn {
            conns: nodes.iter().map(|addr| Connection::new(*addr)).collect(),
            home: home % nodes.len().max(1),
            window,
            attempt_timeout,
            stats: WriteStats::default(),
        }
    }

    /// One attempt on node `at`: the answer, or why none came.
    async fn attempt(
        &mut self,
        at: usize,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), String> {
        let Some(conn) = self.conns.get_mut(at) else {
            return Err(format!("no node {at}"));
        };
        match tokio::time::timeout(self.attempt_timeout, conn.request_with(method, path, headers, body)).await {
            Ok(answer) => answer.map_err(|e| e.to_string()),
            Err(_) => {
                // Its answer may still come: never read it as the next one's.
                conn.reset();
                Err(format!("no answer within {:?}", self.attempt_timeout))
            }
        }
    }

    /// Sends the request until an answer that is not transient, each
    /// attempt to the next node, for at most `window`. `Err` is the last
    /// reason when the window passed.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Bytes>,
        window: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let deadline = Instant::now() + window;
        let headers: Vec<(&str, &str)> = key.map(|key| ("idempotency-key", key)).into_iter().collect();
        let mut at = self.home;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let why = match self.attempt(at, method.clone(), path, &headers, body.clone()).await {
                Ok((status, answer)) if !transient(status) => {
                    if attempts > 1 {
                        self.stats.retried += 1;
                    }
                    return Ok((status, answer));
                }
                Ok((status, answer)) => format!("{status} {}", String::from_utf8_lossy(&answer)),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(format!("{method} {path}: {attempts} attempts in {window:?}, the last: {why}"));
            }
            self.stats.attempts_retried += 1;
            at = (at + 1) % self.conns.len().max(1);
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// What a change's answer says: done, refused (409), or unknown, which
    /// counts as a failed write.
    fn judge_change(&mut self, path: &str, sent: Result<(StatusCode, Bytes), String>) -> ChangeResult {
        match sent {
            Ok((status, _)) if status.is_success() => ChangeResult::Done,
            Ok((StatusCode::CONFLICT, _)) => ChangeResult::Refused,
            Ok((status, body)) => {
                let why = format!("POST {path}: {status} {}", String::from_utf8_lossy(&body));
                self.stats.fail(why.clone());
                ChangeResult::Unknown(why)
            }
            Err(why) => {
                self.stats.fail(why.clone());
                ChangeResult::Unknown(why)
            }
        }
    }

    /// A change (confirm, release) retried with a key.
    async fn change(&mut self, path: &str, key: &str) -> ChangeResult {
        self.stats.writes += 1;
        let sent = self.send(Method::POST, path, Some(key), None, self.window).await;
        self.judge_change(path, sent)
    }

    async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes), String> {
        self.send(Method::GET, path, None, None, self.window).await
    }
}

impl Conn for RollConn {
    async fn hold(&mut self, hold: &HoldRequest) -> HoldResult {
        self.stats.writes += 1;
        // Unique in the run: the client's prefix and sequence number.
        let key = format!("roll-{}", hold.id);
        let body = Bytes::from(hold_body(hold));
        match self.send(Method::POST, "/v1/reservations", Some(&key), Some(body), self.window).await {
            Ok((StatusCode::CREATED, body)) => match serde_json::from_slice::<Reservation>(&body) {
                Ok(reservation) => HoldResult::Held(reservation.id),
                Err(error) => {
                    let why = format!("hold {key}: bad answer: {error}");
                    self.stats.fail(why.clone());
                    HoldResult::Unknown(why)
                }
            },
            Ok((StatusCode::CONFLICT, body)) if problem_code(&body).as_deref() == Some("insufficient_stock") => {
                HoldResult::Refused
            }
            Ok((status, body)) => {
                let why = format!("hold {key}: refused: {status} {}", String::from_utf8_lossy(&body));
                self.stats.fail(why.clone());
                HoldResult::Unknown(why)
            }
            Err(why) => {
                self.stats.fail(why.clone());
                HoldResult::Unknown(why)
            }
        }
    }

    /// One hold after another (the flash-sale workload sends none).
    async fn hold_batch(&mut self, holds: &[HoldRequest]) -> Vec<HoldResult> {
        let mut results = Vec::with_capacity(holds.len());
        for hold in holds {
            results.push(self.hold(hold).await);
        }
        results
    }

    async fn confirm(&mut self, id: &str) -> ChangeResult {
        self.change(&format!("/v1/reservations/{id}/confirm"), &format!("roll-confirm-{id}")).await
    }

    async fn release(&mut self, id: &str) -> ChangeResult {
        self.change(&format!("/v1/reservations/{id}/release"), &format!("roll-release-{id}")).await
    }

    /// One attempt only: an adjustment has no idempotency key, so a retry
    /// could apply it twice (the flash-sale workload sends none).
    async fn adjust(&mut self, sku: &str, warehouse: &str, delta: i64) -> ChangeResult {
        self.stats.writes += 1;
        let reason = if delta > 0 { "receive" } else { "correction" };
        let body = Bytes::from(format!("{{\"delta\":{delta},\"reason\":\"{reason}\"}}"));
        let path = format!("/v1/items/{sku}/{warehouse}/adjustments");
        let sent = self.send(Method::POST, &path, None, Some(body), Duration::ZERO).await;
        self.judge_change(&path, sent)
    }

    async fn read(&mut self, sku: &str, warehouse: &str) -> Result<ItemState, String> {
        #[derive(Deserialize)]
        struct Item {
            on_hand: u64,
            reserved: u64,
        }
        match self.get(&format!("/v1/items/{sku}/{warehouse}")).await? {
            (StatusCode::OK, body) => {
                let item: Item = serde_json::from_slice(&body).map_err(|e| format!("bad item: {e}"))?;
                Ok(ItemState { on_hand: item.on_hand, reserved: item.reserved })
            }
            (status, body) => Err(format!("{status} {}", String::from_utf8_lossy(&body))),
        }
    }

    async fn read_many(&mut self, items: &[(String, String)]) -> Result<Vec<ItemState>, String> {
        let mut states = Vec::with_capacity(items.len());
        for (sku, warehouse) in items {
            states.push(self.read(sku, warehouse).await?);
        }
        Ok(states)
    }

    async fn hold_states(&mut self, ids: &[String]) -> Result<Vec<HoldState>, String> {
        let mut states = Vec::with_capacity(ids.len());
        for id in ids {
            let state = match self.get(&format!("/v1/reservations/{id}")).await? {
                (StatusCode::OK, body) => hold_state_of(id, &body)?,
                (StatusCode::NOT_FOUND, _) => HoldState::Missing,
                (status, body) => return Err(format!("{status} {}", String::from_utf8_lossy(&body))),
            };
            states.push(state);
        }
        Ok(states)
    }
}

// ---------------------------------------------------------------------------
// The load, measured by phase

/// Which phase a request started in.
const PHASE_WARMUP: u8 = 0;
const PHASE_BEFORE: u8 = 1;
const PHASE_DURING: u8 = 2;
const PHASE_STOP: u8 = 3;

/// What one client measured in each phase it records (before, during).
struct Phases {
    before: load::Measured,
    during: load::Measured,
}

fn record(measured: &mut load::Measured, step: Step, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    measured.latency.saturating_record(micros.max(1));
    measured.requests += 1;
    measured.held += step.held;
    measured.refused += step.refused;
    measured.errors += step.errors;
}

/// Runs `client` in a closed loop until the phase is `PHASE_STOP`,
/// recording each request in the phase it started in.
async fn drive(mut client: Client<RollConn>, phase: Arc<AtomicU8>) -> (Client<RollConn>, Phases) {
    let mut phases = Phases { before: load::Measured::new(1), during: load::Measured::new(1) };
    loop {
        let now = phase.load(Ordering::Acquire);
        if now == PHASE_STOP {
            break;
        }
        let started = Instant::now();
        let step = client.step().await;
        match now {
            PHASE_BEFORE => record(&mut phases.before, step, started.elapsed()),
            PHASE_DURING => record(&mut phases.during, step, started.elapsed()),
            _ => {}
        }
    }
    (client, phases)
}

fn figures_of(measured: &load::Measured, seconds: f64) -> PhaseFigures {
    PhaseFigures {
        seconds,
        requests: measured.requests,
        holds: measured.held,
        holds_per_s: if seconds > 0.0 { measured.held as f64 / seconds } else { 0.0 },
        errors: measured.errors,
        latency: load::latency_of(&measured.latency),
    }
}

// ---------------------------------------------------------------------------
// The roll

/// One shard as a node's `GET /v1/cluster` shows it.
#[derive(Clone, Debug, Deserialize)]
struct ShardView {
    shard: u32,
    leader: Option<u64>,
    /// `Leader`, `Follower`, `Candidate`, `Learner` or `Stopped`.
    #[serde(default)]
    role: String,
    committed_index: Option<u64>,
    applied_index: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
struct ClusterView {
    shards: Vec<ShardView>,
}

async fn cluster_view(http: &Http) -> Result<ClusterView, String> {
    match http.try_request(Method::GET, "/v1/cluster", &[], None).await? {
        (StatusCode::OK, _, body) => serde_json::from_value(body).map_err(|e| format!("bad /v1/cluster: {e}")),
        (status, _, body) => Err(format!("/v1/cluster: {status} {body}")),
    }
}

/// For each shard, the index its leader had committed (as the leader itself
/// says): what `node` must apply to have caught up. `None` while a shard's
/// leader is unknown or does not answer as the leader.
async fn leaders_committed(node: &Http, nodes: &[Http]) -> Option<Vec<(u32, u64)>> {
    let view = cluster_view(node).await.ok()?;
    let mut targets = Vec::with_capacity(view.shards.len());
    for shard in &view.shards {
        let leader = usize::try_from(shard.leader?).ok()?.checked_sub(1)?;
        let leader_view = cluster_view(nodes.get(leader)?).await.ok()?;
        let seen = leader_view.shards.iter().find(|s| s.shard == shard.shard)?;
        // Only a leader's own view counts: a node that has lost the lead
        // meanwhile may not know the last commits, and a restarted node may
        // still name the leader of the term it stopped in (itself).
        if seen.leader != shard.leader || seen.role != "Leader" {
            return None;
        }
        targets.push((shard.shard, seen.committed_index.unwrap_or(0)));
    }
    Some(targets)
}

/// Whether every shard of `view` has applied at least its target.
fn applied_all(view: &ClusterView, targets: &[(u32, u64)]) -> bool {
    targets.iter().all(|(shard, committed)| {
        view.shards.iter().any(|s| s.shard == *shard && s.applied_index.unwrap_or(0) >= *committed)
    })
}

/// Waits until `node` (0-based) has applied, for every shard, what that
/// shard's leader had committed when the wait began.
async fn catch_up(node: usize, nodes: &[Http]) -> Result<(), String> {
    let deadline = Instant::now() + CATCH_UP_WAIT_MAX;
    let http = nodes.get(node).ok_or_else(|| format!("no node {node}"))?;
    let targets = loop {
        if let Some(targets) = leaders_committed(http, nodes).await {
            break targets;
        }
        if Instant::now() >= deadline {
            return Err(format!("node {}: no leader's commit index within {CATCH_UP_WAIT_MAX:?}", node + 1));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    loop {
        if let Ok(view) = cluster_view(http).await
            && applied_all(&view, &targets)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("node {}: not caught up with {targets:?} within {CATCH_UP_WAIT_MAX:?}", node + 1));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Starts a stopped node again on its data directory and ports and waits
/// for `/readyz` (retrying while its old ports are not free yet).
async fn start_again(node: &mut TallyProcess) -> Result<(), String> {
    for attempt in 1..=RESTART_ATTEMPTS_MAX {
        node.spawn()?;
        match node.wait_ready_within(READY_WAIT_MAX).await {
            Ok(()) => return Ok(()),
            Err(testkit::StartError::AddrInUse) if attempt < RESTART_ATTEMPTS_MAX => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(format!("node {} did not restart: {error}", node.node_id)),
        }
    }
    Err(format!("node {}: its ports stayed in use", node.node_id))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Restarts node `id` (1-based): SIGTERM, exit, start, ready, caught up.
async fn restart(cluster: &mut TallyCluster, id: u64, https: &[Http]) -> Result<Restart, String> {
    let index = usize::try_from(id - 1).map_err(|e| e.to_string())?;
    let http = https.get(index).ok_or_else(|| format!("no node {id}"))?;
    let led_shards = match cluster_view(http).await {
        Ok(view) => view.shards.iter().filter(|s| s.leader == Some(id)).map(|s| s.shard).collect(),
        Err(_) => Vec::new(),
    };
    let node = cluster.node_mut(id);
    let stopping = Instant::now();
    let watcher = match https.get((index + 1) % https.len()) {
        Some(peer) if !led_shards.is_empty() => {
            Some(tokio::spawn(leaders_moved(peer.clone(), id, led_shards.clone(), stopping)))
        }
        _ => None,
    };
    let status = node.try_terminate(STOP_WAIT_MAX).await?;
    let stop_ms = millis(stopping.elapsed());
    let starting = Instant::now();
    start_again(node).await?;
    let ready_ms = millis(starting.elapsed());
    let catching_up = Instant::now();
    catch_up(index, https).await?;
    let catch_up_ms = millis(catching_up.elapsed());
    let leaders_moved_ms = match watcher {
        Some(watcher) if watcher.is_finished() => watcher.await.ok().flatten(),
        Some(watcher) => {
            watcher.abort();
            None
        }
        None => None,
    };
    Ok(Restart { node: id, led_shards, leaders_moved_ms, stop_ms, exit: status.to_string(), ready_ms, catch_up_ms })
}

/// Milliseconds from `since` until `peer` shows, for every one of `shards`,
/// a leader other than node `id`.
async fn leaders_moved(peer: Http, id: u64, shards: Vec<u32>, since: Instant) -> Option<u64> {
    loop {
        if let Ok(view) = cluster_view(&peer).await
            && shards.iter().all(|shard| {
                view.shards.iter().any(|s| s.shard == *shard && s.leader.is_some_and(|leader| leader != id))
            })
        {
            return Some(millis(since.elapsed()));
        }
        tokio::time::sleep(LEADER_POLL_INTERVAL).await;
    }
}

/// The whole run; `result.passed` says whether it passed.
pub async fn run(plan: &RollPlan, result: &mut RollResult) -> Result<(), String> {
    std::fs::create_dir_all(&plan.dir).map_err(|e| format!("{}: {e}", plan.dir.display()))?;
    let options = Options::new(plan.program.clone()).shards(plan.shards).log_level("warn").root(&plan.dir);
    let mut cluster = TallyCluster::try_start(plan.nodes, options).await?;
    let outcome = roll_under_load(plan, &mut cluster, result).await;
    if let Err(error) = cluster.try_terminate_all(STOP_WAIT_MAX).await {
        result.problems.push(format!("stopping the cluster: {error}"));
    }
    outcome
}

fn conn(plan: &RollPlan, addrs: &[SocketAddr], home: usize) -> RollConn {
    RollConn::new(addrs, home, plan.write_window, plan.attempt_timeout)
}

async fn roll_under_load(plan: &RollPlan, cluster: &mut TallyCluster, result: &mut RollResult) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = cluster.nodes().iter().map(|node| node.http_addr).collect();
    let https: Vec<Http> = addrs.iter().map(|addr| Http::new(*addr)).collect();
    let items = Arc::new(workload::items(Workload::FlashSale, &plan.shape));
    stock(plan, &addrs, &items).await?;

    let phase = Arc::new(AtomicU8::new(PHASE_WARMUP));
    let tasks: Vec<_> = (0..plan.clients as usize)
        .map(|index| {
            let client =
                Client::new(conn(plan, &addrs, index), Workload::FlashSale, Arc::clone(&items), &plan.shape, index);
            tokio::spawn(drive(client, Arc::clone(&phase)))
        })
        .collect();

    tokio::time::sleep(plan.warmup).await;
    phase.store(PHASE_BEFORE, Ordering::Release);
    let before_started = Instant::now();
    tokio::time::sleep(plan.before).await;
    phase.store(PHASE_DURING, Ordering::Release);
    let roll_started = Instant::now();
    let before_seconds = (roll_started - before_started).as_secs_f64();
    for id in cluster.ids() {
        println!("restarting node {id}");
        match restart(cluster, id, &https).await {
            Ok(restart) => {
                println!(
                    "node {id}: led {:?} (new leaders after {:?} ms), stopped in {} ms ({}), ready in {} ms, \
                     caught up in {} ms",
                    restart.led_shards,
                    restart.leaders_moved_ms,
                    restart.stop_ms,
                    restart.exit,
                    restart.ready_ms,
                    restart.catch_up_ms
                );
                if !restart.exit.contains("exit status: 0") {
                    result.problems.push(format!("node {id} did not exit cleanly: {}", restart.exit));
                }
                result.restarts.push(restart);
            }
            Err(error) => {
                result.problems.push(format!("roll stopped at node {id}: {error}"));
                break;
            }
        }
        tokio::time::sleep(plan.settle).await;
    }
    phase.store(PHASE_STOP, Ordering::Release);
    let during_seconds = roll_started.elapsed().as_secs_f64();

    let mut clients = Vec::with_capacity(tasks.len());
    let mut before = load::Measured::new(1);
    let mut during = load::Measured::new(1);
    for task in tasks {
        let (client, phases) = task.await.map_err(|e| format!("client task: {e}"))?;
        before.merge(&phases.before);
        during.merge(&phases.during);
        clients.push(client);
    }
    result.before = figures_of(&before, before_seconds);
    result.during = figures_of(&during, during_seconds);
    println!("the roll is over; the clients race for the last {} units", plan.shape.sellout_units);

    // The flash-sale's sell-out: every client races for the last units.
    let races: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let held = workload::race_until_sold_out(&mut client, 1, SELLOUT_ERRORS_MAX).await;
                (held, client)
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(races.len());
    for race in races {
        let (held, client) = race.await.map_err(|e| format!("sell-out task: {e}"))?;
        result.sellout_held += held;
        clients.push(client);
    }
    result.sellout_units = plan.shape.sellout_units;

    for client in &clients {
        let stats = &client.conn.stats;
        result.writes += stats.writes;
        result.writes_retried += stats.retried;
        result.attempts_retried += stats.attempts_retried;
        result.failed_writes += stats.failed;
        for failure in &stats.failures {
            if result.failures.len() < FAILURES_KEPT_MAX {
                result.failures.push(failure.clone());
            }
        }
    }

    let ledgers: Vec<&Ledger> = clients.iter().map(|c| &c.ledger).collect();
    let mut control = conn(plan, &addrs, 0);
    result.check = workload::check(&mut control, &items, &ledgers).await;
    let unknown: u64 =
        ledgers.iter().flat_map(|l| l.unknown_holds.iter()).filter(|(item, _)| *item == 1).map(|(_, qty)| qty).sum();
    workload::check_sellout(&mut result.check, plan.shape.sellout_units, result.sellout_held, unknown);
    look_up_every_hold(plan, &addrs, &ledgers, result).await;
    result.judge();
    Ok(())
}

/// Creates the workload's items (a `PUT` is safe to repeat).
async fn stock(plan: &RollPlan, addrs: &[SocketAddr], items: &[ItemSpec]) -> Result<(), String> {
    let mut control = conn(plan, addrs, 0);
    for item in items {
        let path = format!("/v1/items/{}/{}", item.sku, item.warehouse);
        let body = Bytes::from(format!("{{\"on_hand\":{}}}", item.on_hand));
        match control.send(Method::PUT, &path, None, Some(body), plan.write_window).await? {
            (status, _) if status.is_success() => {}
            (status, body) => return Err(format!("PUT {path}: {status} {}", String::from_utf8_lossy(&body))),
        }
    }
    Ok(())
}

/// Looks every acknowledged hold up by id, over a few connections: each
/// must be `HELD` (their time to live outlasts the run).
async fn look_up_every_hold(plan: &RollPlan, addrs: &[SocketAddr], ledgers: &[&Ledger], result: &mut RollResult) {
    let ids: Vec<String> = ledgers
        .iter()
        .flat_map(|l| l.holds.iter())
        .filter(|hold| hold.known == Known::Held)
        .map(|hold| hold.id.clone())
        .collect();
    result.holds_acknowledged = ledgers.iter().map(|l| l.holds.len() as u64).sum();
    let chunk = ids.len().div_ceil(LOOKUP_CONNECTIONS).max(1);
    let lookups: Vec<_> = ids
        .chunks(chunk)
        .enumerate()
        .map(|(index, part)| {
            let part = part.to_vec();
            let mut control = conn(plan, addrs, index);
            tokio::spawn(async move {
                let states = control.hold_states(&part).await;
                (part, states)
            })
        })
        .collect();
    for lookup in lookups {
        let (part, states) = match lookup.await {
            Ok(done) => done,
            Err(error) => {
                result.problems.push(format!("hold lookup task: {error}"));
                continue;
            }
        };
        match states {
            Ok(states) => {
                result.holds_looked_up += states.len() as u64;
                for (id, state) in part.iter().zip(states) {
                    if state != HoldState::Held {
                        result.holds_lost += 1;
                        if result.problems.len() < FAILURES_KEPT_MAX {
                            result.problems.push(format!("hold {id} acknowledged, then found {state:?}"));
                        }
                    }
                }
            }
            Err(error) => result.problems.push(format!("cannot look holds up: {error}")),
        }
    }
}

/// Keeps the nodes' directories (logs, data) of a failed run; removes
/// them otherwise, and `dir` too if that leaves it empty.
pub fn clean(dir: &Path, nodes: u64, passed: bool) {
    if passed {
        for id in 1..=nodes {
            let _ = std::fs::remove_dir_all(dir.join(format!("node{id}")));
        }
        let _ = std::fs::remove_dir(dir);
    } else {
        eprintln!("the nodes' directories (logs, data) are kept in {}", dir.display());
    }
}

/// Writes `roll.json` and `roll.md` into `out`.
pub fn write(result: &RollResult, out: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(result).map_err(std::io::Error::other)?;
    std::fs::write(out.join("roll.json"), json)?;
    std::fs::write(out.join("roll.md"), result.markdown())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_that_did_nothing_yet_are_retried() {
        assert!(transient(StatusCode::SERVICE_UNAVAILABLE));
        assert!(transient(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(transient(StatusCode::TOO_MANY_REQUESTS));
        assert!(!transient(StatusCode::CREATED));
        assert!(!transient(StatusCode::CONFLICT));
        assert!(!transient(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn a_refusal_for_stock_is_told_from_other_refusals() {
        assert_eq!(
            problem_code(br#"{"code":"insufficient_stock","detail":"1 line(s) short"}"#).as_deref(),
            Some("insufficient_stock")
        );
        assert_eq!(problem_code(br#"{"code":"idempotency_key_reused"}"#).as_deref(), Some("idempotency_key_reused"));
        assert_eq!(problem_code(b"not json"), None);
    }

    #[test]
    fn caught_up_means_every_shard_applied_its_leaders_commit() {
        let view: ClusterView = serde_json::from_str(
            r#"{"shards":[{"shard":0,"leader":2,"role":"Follower","committed_index":10,"applied_index":10},
                          {"shard":1,"leader":3,"role":"Follower","committed_index":7,"applied_index":6}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(applied_all(&view, &[(0, 10), (1, 6)]));
        assert!(!applied_all(&view, &[(0, 10), (1, 7)]));
        assert!(!applied_all(&view, &[(2, 0)]), "a shard the node does not show is not caught up");
    }

    #[test]
    fn a_run_passes_only_with_every_node_restarted_and_nothing_failed() {
        let mut result = RollResult { nodes: 2, restarts: vec![Restart::default(); 2], ..RollResult::default() };
        result.judge();
        assert!(result.passed);
        result.failed_writes = 1;
        result.judge();
        assert!(!result.passed);
        let mut short = RollResult { nodes: 2, restarts: vec![Restart::default()], ..RollResult::default() };
        short.judge();
        assert!(!short.passed, "a roll that stopped early is not a pass");
        let mut lost =
            RollResult { nodes: 1, restarts: vec![Restart::default()], holds_lost: 1, ..RollResult::default() };
        lost.judge();
        assert!(!lost.passed);
    }
}
