//! One chaos run: start the cluster, stock the hot items, run the clients
//! and the expiry probes while the schedule injects and heals faults, heal
//! everything, collect the final state of every node, check the history,
//! and write it all to the run's folder.
//!
//! The folder holds `history.json` (every operation, fault and final
//! state: the checker's input), `report.json` (every finding), `summary.txt`
//! (the table `tally-chaos run` prints) and `cluster/node*/` (each node's
//! config, data and log).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use testkit::{ConnError, Connection, Program, SplitMix};

use crate::checker::{self, CheckOptions, Report};
use crate::client::{self, ClientPlan, Recorder};
use crate::cluster::{ChaosCluster, Settings};
use crate::history::{Call, FaultEvent, History, Item, NodeDigests, NodeLevels, Outcome};
use crate::schedule::{self, FaultKind, Schedule, Step};

/// How far the clock jump moves a leader's clock: more than the clients'
/// hold TTL, so a leader that stamps log time from its wall clock would
/// expire every live hold of its shard at once.
pub const CLOCK_JUMP_MS: i64 = 25 * 3_600 * 1_000;
/// TTL of the expiry probes' holds.
const PROBE_TTL: Duration = Duration::from_secs(2);
/// How often a probe reads its hold.
const PROBE_POLL: Duration = Duration::from_millis(100);
/// A probe hold seen live later than this after its deadline expired late.
pub const EXPIRY_LATE_BOUND: Duration = Duration::from_secs(10);
/// Longest wait, while healing, for a node that is a voter of every shard
/// to answer (after a power loss every node restarts at once).
const MEMBERSHIP_VIEW_WAIT: Duration = Duration::from_secs(60);
/// Longest wait, after healing, for the nodes to apply the same index.
const CONVERGE_WAIT: Duration = Duration::from_secs(60);
/// The goal for writes to a killed leader's shard (issue 6).
pub const LEADER_KILL_RECOVERY_GOAL: Duration = Duration::from_secs(2);

/// What a run does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub program: Program,
    /// The run's folder (created; must not hold an earlier run).
    pub out: PathBuf,
    /// How long the clients run.
    pub duration: Duration,
    pub seed: u64,
    pub schedule: Schedule,
    pub clients: u32,
    /// Nodes in the cluster.
    pub nodes: u8,
    pub shards: u32,
    /// Nodes each shard lives on (`cluster.replication_factor`); 0: every
    /// node. Set, add-node and remove-node move replicas by the placement
    /// rule.
    pub replication_factor: u32,
    /// Hot SKUs, one warehouse each.
    pub items: u32,
    /// Each item's stock at the start.
    pub stock: u64,
    /// A request with no answer after this is `Unknown`.
    pub timeout: Duration,
    /// Each client's pause between operations, uniform in this range (ms).
    pub think_ms: (u64, u64),
    pub check: CheckOptions,
}

impl RunOptions {
    /// Nodes each shard lives on.
    pub fn replicas(&self) -> u32 {
        cluster::placement::replicas(self.replication_factor, usize::from(self.nodes))
    }

    /// Whether shards follow the placement rule (`replication_factor`
    /// set), even when it puts each on every node.
    pub fn is_placed(&self) -> bool {
        self.replication_factor > 0
    }

    /// The defaults of `tally-chaos run`.
    pub fn new(program: Program, out: PathBuf, duration: Duration, seed: u64) -> RunOptions {
        RunOptions {
            program,
            out,
            duration,
            seed,
            schedule: Schedule::Random,
            clients: 24,
            nodes: 3,
            shards: 3,
            replication_factor: 0,
            items: 5,
            stock: 400,
            timeout: Duration::from_secs(3),
            think_ms: (10, 60),
            check: CheckOptions::default(),
        }
    }
}

/// One injected fault, as it went.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepReport {
    pub kind: FaultKind,
    /// Milliseconds from the clients' start to the injection.
    pub at_ms: u64,
    pub hold_ms: u64,
    /// What was done, e.g. `kill node 2 (leads shards 0, 2)`.
    pub what: String,
    /// Ms from the injection to the completion of the first acknowledged
    /// write invoked after it (from the checker's availability).
    pub recovery_ms: Option<u64>,
}

/// A kill of the hottest shard's leader, and what the other shards saw.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaderKill {
    pub at_ms: u64,
    pub node: u8,
    pub shard: u32,
    /// Each shard's leader when it was killed: the shards it led lost their
    /// leader too, the others are "other shards".
    pub leaders: Vec<Option<u8>>,
    /// Ms from the kill to the completion of the first acknowledged write
    /// to the shard invoked after it.
    pub recovery_ms: Option<u64>,
    /// Writes to shards the killed node did not lead, invoked while it was
    /// down, that failed (`Unknown`), other than those sent to the killed
    /// node itself.
    pub other_shards_failed: u64,
    /// Of those shards' failed writes, how many were sent to the killed
    /// node (in flight when it died: no client can avoid them).
    pub other_shards_lost_in_flight: u64,
}

/// One expiry probe: a short hold on an item outside the checked ones, read
/// until it expires.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Probe {
    pub reservation: String,
    pub ttl_ms: u64,
    /// The hold request's invoke and complete, µs from the clients' start.
    pub held_invoke_us: u64,
    pub held_complete_us: u64,
    /// Invoke of the last read that saw it `HELD`.
    pub last_held_invoke_us: Option<u64>,
    /// (invoke, complete) of the first read that saw it `EXPIRED`.
    pub expired_seen_us: Option<(u64, u64)>,
    /// Any other end state seen (it should not happen).
    pub other_state: Option<String>,
}

/// What the probes say about expiry.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExpiryReport {
    pub probes: Vec<Probe>,
    /// Probes seen expired before their TTL had passed since the hold was
    /// even sent.
    pub early: Vec<String>,
    /// Probes seen still live more than `EXPIRY_LATE_BOUND` past their TTL
    /// after the hold was answered.
    pub late: Vec<String>,
    /// Upper bounds of each expired probe's lateness: first `EXPIRED` read's
    /// completion minus (hold completion + TTL), ms.
    pub lateness_ms: Vec<u64>,
}

fn three() -> u8 {
    3
}

/// Everything a run found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub seed: u64,
    pub schedule: String,
    pub duration_s: u64,
    pub clients: u32,
    /// Nodes in the cluster (reports from before it had a size: 3).
    #[serde(default = "three")]
    pub nodes: u8,
    pub shards: u32,
    pub items: Vec<Item>,
    /// The shard most items live on: the target of leader faults and of the
    /// expiry probes.
    pub hot_shard: u32,
    pub steps: Vec<StepReport>,
    pub check: Report,
    pub leader_kills: Vec<LeaderKill>,
    pub expiry: ExpiryReport,
    /// Problems of the run itself (a fault that could not be injected, a
    /// node that did not come back).
    pub harness: Vec<String>,
}

impl RunReport {
    /// The correctness goals: the checker passes, no probe expired
    /// early or late, and the harness did everything it planned.
    pub fn passed(&self) -> bool {
        self.check.passed() && self.expiry.early.is_empty() && self.expiry.late.is_empty() && self.harness.is_empty()
    }

    /// The 99th percentile (nearest rank) of leader-kill recoveries; `None`
    /// when there was no kill, `Some(None)` when one never recovered.
    pub fn leader_recovery_p99_ms(&self) -> Option<Option<u64>> {
        if self.leader_kills.is_empty() {
            return None;
        }
        let mut times: Vec<Option<u64>> = self.leader_kills.iter().map(|k| k.recovery_ms).collect();
        // `None` (never recovered) sorts last: worse than any time.
        times.sort_by_key(|t| t.unwrap_or(u64::MAX));
        let rank = (times.len() * 99).div_ceil(100).max(1);
        Some(times[rank - 1])
    }

    /// The table `tally-chaos run` prints.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tally-chaos run: seed {}, schedule {}, {} s, {} clients, {} nodes, {} shards, {} items (hot shard {})",
            self.seed,
            self.schedule,
            self.duration_s,
            self.clients,
            self.nodes,
            self.shards,
            self.items.len(),
            self.hot_shard
        );
        let _ = writeln!(out, "\n{:>8}  {:<17} {:<44} {:>10}", "at", "fault", "what", "recovery");
        for step in &self.steps {
            let recovery = step.recovery_ms.map_or_else(|| "none".to_owned(), |ms| format!("{ms} ms"));
            let _ = writeln!(
                out,
                "{:>6.1} s  {:<17} {:<44} {:>10}",
                step.at_ms as f64 / 1000.0,
                step.kind.name(),
                step.what,
                recovery
            );
        }
        let _ = writeln!(out);
        out.push_str(&self.check.summary());
        match self.leader_recovery_p99_ms() {
            None => {
                let _ = writeln!(out, "leader kills   none");
            }
            Some(p99) => {
                let failed: u64 = self.leader_kills.iter().map(|k| k.other_shards_failed).sum();
                let in_flight: u64 = self.leader_kills.iter().map(|k| k.other_shards_lost_in_flight).sum();
                let p99 = p99.map_or_else(|| "never".to_owned(), |ms| format!("{ms} ms"));
                let _ = writeln!(
                    out,
                    "leader kills   {} kill(s): writes to the shard back after p99 {p99} (goal {} ms); \
                     other shards: {failed} failed write(s), {in_flight} more in flight on the killed node",
                    self.leader_kills.len(),
                    LEADER_KILL_RECOVERY_GOAL.as_millis()
                );
            }
        }
        let expired = self.expiry.lateness_ms.len();
        let mut lateness = self.expiry.lateness_ms.clone();
        lateness.sort_unstable();
        let median = lateness.get(lateness.len() / 2).copied();
        let _ = writeln!(
            out,
            "expiry probes  {} probe(s), {expired} seen expired, {} early, {} late (bound {} s); \
             lateness median {} ms, max {} ms",
            self.expiry.probes.len(),
            self.expiry.early.len(),
            self.expiry.late.len(),
            EXPIRY_LATE_BOUND.as_secs(),
            median.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            lateness.last().map_or_else(|| "-".to_owned(), |v| v.to_string()),
        );
        for line in self.expiry.early.iter().chain(&self.expiry.late).take(5) {
            let _ = writeln!(out, "               {line}");
        }
        for problem in &self.harness {
            let _ = writeln!(out, "harness        {problem}");
        }
        let _ = writeln!(out, "RESULT         {}", if self.passed() { "PASS" } else { "FAIL" });
        out
    }
}

/// Runs the whole thing; `Err` only when the run could not be made at all
/// (the cluster did not start, the folder cannot be written).
pub async fn run(options: &RunOptions) -> Result<RunReport, String> {
    if options.out.join("history.json").exists() {
        return Err(format!("{} already holds a run", options.out.display()));
    }
    std::fs::create_dir_all(&options.out).map_err(|e| format!("{}: {e}", options.out.display()))?;
    let settings = Settings {
        nodes: options.nodes,
        shards: options.shards,
        seed: options.seed,
        // Node additions and removals (add-node, remove-node) pause this
        // long between shards instead of a second.
        cluster_extra: vec![
            ("membership_shard_pause_ms".to_owned(), "200".to_owned()),
            ("replication_factor".to_owned(), options.replication_factor.to_string()),
        ],
        placed: options.is_placed(),
    };
    let mut cluster = ChaosCluster::start(options.program.clone(), &options.out.join("cluster"), &settings).await?;
    let result = drive(&mut cluster, options).await;
    cluster.stop().await;
    let (history, mut report) = result?;
    report.check = checker::check(&history, &options.check);
    fill_step_recoveries(&history, &mut report);
    report.leader_kills = leader_kill_recoveries(&history, &report.leader_kills, options.shards);
    write_json(&options.out.join("history.json"), &history)?;
    write_json(&options.out.join("report.json"), &report)?;
    std::fs::write(options.out.join("summary.txt"), report.summary())
        .map_err(|e| format!("{}: {e}", options.out.display()))?;
    Ok(report)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The run with the cluster up; the history and a report still to be
/// checked.
async fn drive(cluster: &mut ChaosCluster, options: &RunOptions) -> Result<(History, RunReport), String> {
    let nodes: Vec<SocketAddr> = cluster.ids().map(|id| cluster.http(id)).collect();
    let (items, hot_shard, probe_sku) = stock(&nodes, options).await?;
    let started = Instant::now();
    let until = started + options.duration;
    let recorder = Arc::new(Recorder::new(started));
    let load = Load::start(options, &nodes, &items, &probe_sku, &recorder, until);
    let steps = schedule::plan(&options.schedule, options.duration, options.seed);
    let mut done = run_steps(cluster, &steps, started, options, hot_shard, &recorder).await;
    let (ops, probes) = load.finish(&recorder).await;

    // Final state: everything healed, every node up and caught up.
    if let Err(why) = heal_all(cluster, &recorder, &mut done.faults).await {
        done.harness.push(format!("final heal: {why}"));
    }
    for id in cluster.ids() {
        if let Err(why) = cluster.wait_ready(id).await {
            done.harness.push(format!("after the run: {why}"));
        }
    }
    let digests = converged_digests(&nodes, options.replicas()).await;
    let mut final_levels = Vec::new();
    for (node, addr) in cluster.ids().zip(&nodes) {
        final_levels.push(NodeLevels { node, items: stale_levels(*addr, &items).await });
    }
    let final_holds = final_holds(&nodes, &ops).await;
    let history = History {
        ops,
        faults: done.faults,
        initial: items.iter().map(|item| (item.clone(), options.stock)).collect(),
        final_levels,
        digests,
        final_holds,
        replication_factor: options.replicas(),
    };
    let leader_kills = done
        .leader_kills
        .into_iter()
        .map(|kill| LeaderKill {
            at_ms: kill.at_us / 1_000,
            node: kill.node,
            shard: hot_shard,
            leaders: kill.leaders,
            // Filled in from the checked history.
            recovery_ms: None,
            other_shards_failed: 0,
            other_shards_lost_in_flight: 0,
        })
        .collect();
    let report = RunReport {
        seed: options.seed,
        schedule: match &options.schedule {
            Schedule::Random => "random".to_owned(),
            Schedule::Each(kinds) => kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        },
        duration_s: options.duration.as_secs(),
        clients: options.clients,
        nodes: options.nodes,
        shards: options.shards,
        items,
        hot_shard,
        steps: done.step_reports,
        check: Report::default(),
        leader_kills,
        expiry: judge_probes(probes),
        harness: done.harness,
    };
    Ok((history, report))
}

/// Stocks the hot items and the expiry probes' SKU (on the hot shard):
/// the items, the hot shard and the probe SKU.
async fn stock(nodes: &[SocketAddr], options: &RunOptions) -> Result<(Vec<Item>, u32, String), String> {
    let items: Vec<Item> = (0..options.items).map(|i| (format!("hot-{i}"), "w1".to_owned())).collect();
    for (sku, warehouse) in &items {
        put_item(nodes, sku, warehouse, options.stock).await?;
    }
    let hot_shard = hottest_shard(&items, options.shards);
    let probe_sku = (0..)
        .map(|k| format!("probe-{k}"))
        .find(|sku| engine::placement::shard_of(sku, options.shards) == hot_shard)
        .unwrap_or_default();
    put_item(nodes, &probe_sku, "w1", 1_000_000_000).await?;
    Ok((items, hot_shard, probe_sku))
}

/// The clients and the expiry probes, running until the run's end.
struct Load {
    clients: Vec<tokio::task::JoinHandle<()>>,
    probe_tasks: Vec<tokio::task::JoinHandle<()>>,
    probes: Arc<Mutex<Vec<Probe>>>,
}

impl Load {
    fn start(
        options: &RunOptions,
        nodes: &[SocketAddr],
        items: &[Item],
        probe_sku: &str,
        recorder: &Arc<Recorder>,
        until: Instant,
    ) -> Load {
        let shared_items = Arc::new(items.to_vec());
        let clients = (0..options.clients)
            .map(|index| {
                let plan = ClientPlan {
                    index,
                    nodes: nodes.to_vec(),
                    items: Arc::clone(&shared_items),
                    seed: options.seed.wrapping_mul(1_000_003).wrapping_add(u64::from(index)),
                    timeout: options.timeout,
                    think_ms: options.think_ms,
                };
                tokio::spawn(client::run(plan, Arc::clone(recorder), until))
            })
            .collect();
        let probes = Arc::new(Mutex::new(Vec::new()));
        let probe_tasks = (0..2u64)
            .map(|k| {
                let probe = ProbeTask {
                    nodes: nodes.to_vec(),
                    sku: probe_sku.to_owned(),
                    recorder: Arc::clone(recorder),
                    until,
                    out: Arc::clone(&probes),
                    offset: Duration::from_millis(700 * k),
                };
                tokio::spawn(probe.run())
            })
            .collect();
        Load { clients, probe_tasks, probes }
    }

    /// Waits for every client and probe: the operations and the probes.
    async fn finish(self, recorder: &Recorder) -> (Vec<crate::history::Op>, Vec<Probe>) {
        for task in self.clients.into_iter().chain(self.probe_tasks) {
            let _ = task.await;
        }
        let probes = std::mem::take(&mut *self.probes.lock());
        (recorder.take(), probes)
    }
}

/// What the schedule did.
struct StepsDone {
    faults: Vec<FaultEvent>,
    step_reports: Vec<StepReport>,
    leader_kills: Vec<PendingKill>,
    /// Steps the harness could not carry out, and why.
    harness: Vec<String>,
}

/// Injects each step at its time, heals after each.
async fn run_steps(
    cluster: &mut ChaosCluster,
    steps: &[Step],
    started: Instant,
    options: &RunOptions,
    hot_shard: u32,
    recorder: &Recorder,
) -> StepsDone {
    let mut rng = schedule::rng(options.seed ^ 0xFA17);
    let mut done =
        StepsDone { faults: Vec::new(), step_reports: Vec::new(), leader_kills: Vec::new(), harness: Vec::new() };
    for step in steps {
        tokio::time::sleep_until((started + step.at).into()).await;
        let first_event = done.faults.len();
        let injected = inject(cluster, step, &mut rng, hot_shard, options.shards, recorder, &mut done.faults).await;
        // When the fault took effect: its first event, recorded once done.
        let at_us = done.faults.get(first_event).map_or_else(|| recorder.micros(), |event| event.at_us);
        match injected {
            Ok(Injected { what, killed_leader }) => {
                if let Some((node, leaders)) = killed_leader {
                    done.leader_kills.push(PendingKill { at_us, node, leaders });
                }
                done.step_reports.push(StepReport {
                    kind: step.kind,
                    at_ms: at_us / 1_000,
                    hold_ms: u64::try_from(step.hold.as_millis()).unwrap_or(u64::MAX),
                    what,
                    recovery_ms: None,
                });
            }
            Err(why) => done.harness.push(format!("{} at {:.1} s: {why}", step.kind.name(), at_us as f64 / 1e6)),
        }
        // Whatever happened, the step ends healed.
        if let Err(why) = heal_all(cluster, recorder, &mut done.faults).await {
            done.harness.push(format!("healing after {}: {why}", step.kind.name()));
        }
    }
    done
}

struct PendingKill {
    at_us: u64,
    node: u8,
    /// Each shard's leader when it was killed.
    leaders: Vec<Option<u8>>,
}

struct Injected {
    what: String,
    /// (node, each shard's leader at the kill) for `KillLeader`.
    killed_leader: Option<(u8, Vec<Option<u8>>)>,
}

fn random_node(rng: &mut SplitMix, size: u8) -> u8 {
    u8::try_from(rng.below(u64::from(size))).unwrap_or(0) + 1
}

/// Every node of a cluster of `size` but `node`.
fn others(node: u8, size: u8) -> Vec<u8> {
    (1..=size).filter(|other| *other != node).collect()
}

/// `{1, 2, 3}`.
fn node_set(nodes: &[u8]) -> String {
    format!("{{{}}}", nodes.iter().map(u8::to_string).collect::<Vec<_>>().join(", "))
}

/// Injects `step`, keeps it for its hold, heals what it did (the caller
/// heals everything once more). Records every fault event.
async fn inject(
    cluster: &mut ChaosCluster,
    step: &Step,
    rng: &mut SplitMix,
    hot_shard: u32,
    shards: u32,
    recorder: &Recorder,
    faults: &mut Vec<FaultEvent>,
) -> Result<Injected, String> {
    let nodes: Vec<SocketAddr> = cluster.ids().map(|id| cluster.http(id)).collect();
    let mut record = |what: String, heals: bool| faults.push(FaultEvent { at_us: recorder.micros(), what, heals });
    let hot_leader = || async { leaders(&nodes, shards).await.get(hot_shard as usize).copied().flatten() };
    let mut killed_leader = None;
    let what = match step.kind {
        FaultKind::Kill | FaultKind::KillLeader => {
            let (node, what) = if step.kind == FaultKind::KillLeader {
                let all = leaders(&nodes, shards).await;
                let node = all
                    .get(hot_shard as usize)
                    .copied()
                    .flatten()
                    .ok_or_else(|| format!("shard {hot_shard} has no leader to kill"))?;
                let led: Vec<String> = (0..shards)
                    .filter(|s| all.get(*s as usize).copied().flatten() == Some(node))
                    .map(|s| s.to_string())
                    .collect();
                killed_leader = Some((node, all));
                (node, format!("kill -9 node {node} (leads shards {})", led.join(", ")))
            } else {
                let node = random_node(rng, cluster.size());
                (node, format!("kill -9 node {node}"))
            };
            cluster.kill(node).await?;
            record(what.clone(), false);
            tokio::time::sleep(step.hold).await;
            cluster.restart(node, false).await?;
            record(format!("restart node {node}"), true);
            what
        }
        FaultKind::Pause => {
            let node = random_node(rng, cluster.size());
            cluster.pause(node).await?;
            let what = format!("SIGSTOP node {node}");
            record(what.clone(), false);
            tokio::time::sleep(step.hold).await;
            cluster.resume(node).await?;
            record(format!("SIGCONT node {node}"), true);
            what
        }
        FaultKind::PartitionOne
        | FaultKind::PartitionLeader
        | FaultKind::Bridge
        | FaultKind::OneWay
        | FaultKind::Drop
        | FaultKind::Delay => {
            let hot_leader = if matches!(step.kind, FaultKind::PartitionLeader | FaultKind::OneWay) {
                hot_leader().await
            } else {
                None
            };
            inject_network(cluster, step, rng, hot_leader, hot_shard, &mut record).await?
        }
        FaultKind::WipeRestart | FaultKind::KillAll => inject_restart(cluster, step, rng, &mut record).await?,
        FaultKind::AddNode | FaultKind::RemoveNode => inject_membership(cluster, step, rng, &mut record).await?,
        FaultKind::ClockJump => {
            let node = hot_leader().await.ok_or_else(|| format!("shard {hot_shard} has no leader"))?;
            set_clock(cluster.http(node), CLOCK_JUMP_MS).await?;
            let what = format!("node {node}'s clock jumps {} h ahead", CLOCK_JUMP_MS / 3_600_000);
            record(what.clone(), false);
            tokio::time::sleep(step.hold).await;
            // The node may have been restarted meanwhile: its clock is true
            // then, and the request may fail harmlessly.
            let _ = set_clock(cluster.http(node), 0).await;
            record(format!("node {node}'s clock back"), true);
            what
        }
    };
    Ok(Injected { what, killed_leader })
}

/// A network fault: a partition, a bridge, a one-way cut, drops or
/// delays; held for the step, then healed. `hot_leader` is the hot shard's
/// leader, for the faults aimed at it.
async fn inject_network(
    cluster: &mut ChaosCluster,
    step: &Step,
    rng: &mut SplitMix,
    hot_leader: Option<u8>,
    hot_shard: u32,
    record: &mut impl FnMut(String, bool),
) -> Result<String, String> {
    let what = match step.kind {
        FaultKind::PartitionOne | FaultKind::PartitionLeader => {
            let node = if step.kind == FaultKind::PartitionLeader {
                hot_leader.ok_or_else(|| format!("shard {hot_shard} has no leader to cut off"))?
            } else {
                random_node(rng, cluster.size())
            };
            let rest = others(node, cluster.size());
            cluster.partition(&[&[node], &rest]);
            let what = format!("partition {{{node}}} | {}", node_set(&rest));
            record(what.clone(), false);
            tokio::time::sleep(step.hold).await;
            cluster.heal();
            record("heal".to_owned(), true);
            what
        }
        FaultKind::Bridge => {
            let bridge = random_node(rng, cluster.size());
            let rest = others(bridge, cluster.size());
            cluster.cut_between(rest[0], rest[1]);
            let what = format!("bridge: {} and {} cut, {bridge} sees both", rest[0], rest[1]);
            record(what.clone(), false);
            tokio::time::sleep(step.hold).await;
            cluster.heal();
            record("heal".to_owned(), true);
            what
        }
        FaultKind::OneWay => {
            let node = hot_leader.ok_or_else(|| format!("shard {hot_shard} has no leader"))?;
            for other in others(node, cluster.size()) {
                cluster.one_way(node, other);
            }
            let what = format!("one-way: node {node} reaches no one, both reach it");
            record(what.clone(), false);
            tokio::time::sleep(step.hold).await;
            cluster.heal();
            record("heal".to_owned(), true);
            what
        }
        FaultKind::Drop | FaultKind::Delay => {
            let what = if step.kind == FaultKind::Drop {
                cluster.degrade(0.3, 0, 0);
                "every link drops 30% of frames".to_owned()
            } else {
                cluster.degrade(0.0, 20, 20);
                "every link delays frames 20-40 ms".to_owned()
            };
            record(what.clone(), false);
            tokio::time::sleep(step.hold).await;
            cluster.heal();
            record("heal".to_owned(), true);
            what
        }
        _ => return Err(format!("{} is not a network fault", step.kind.name())),
    };
    Ok(what)
}

/// A node wiped and restarted, or every node killed and restarted.
async fn inject_restart(
    cluster: &mut ChaosCluster,
    step: &Step,
    rng: &mut SplitMix,
    record: &mut impl FnMut(String, bool),
) -> Result<String, String> {
    let what = match step.kind {
        FaultKind::WipeRestart => {
            let node = random_node(rng, cluster.size());
            cluster.kill(node).await?;
            let what = format!("kill -9 node {node}, wipe its data, restart it");
            record(what.clone(), false);
            tokio::time::sleep(step.hold).await;
            cluster.restart(node, true).await?;
            record(format!("restart node {node} empty"), true);
            what
        }
        FaultKind::KillAll => {
            for node in cluster.ids() {
                cluster.kill(node).await?;
            }
            let what = format!("kill -9 all {} nodes (power loss)", cluster.size());
            record(what.clone(), false);
            tokio::time::sleep(step.hold).await;
            for node in cluster.ids() {
                cluster.restart(node, false).await?;
            }
            record(format!("restart all {}", cluster.size()), true);
            what
        }
        _ => return Err(format!("{} is not a restart", step.kind.name())),
    };
    Ok(what)
}

/// A membership change under load (`tally node add` / `remove`): the spare
/// added to every shard and removed after the hold, or a node removed,
/// stopped and wiped, then started empty and added back.
async fn inject_membership(
    cluster: &mut ChaosCluster,
    step: &Step,
    rng: &mut SplitMix,
    record: &mut impl FnMut(String, bool),
) -> Result<String, String> {
    let size = cluster.size();
    match step.kind {
        FaultKind::AddNode => {
            let (via, spare) = (random_node(rng, size), cluster.spare());
            let scope = if cluster.is_placed() { "to its share of the shards" } else { "to every shard" };
            let what = format!("add node {spare} {scope} (through node {via})");
            record(what.clone(), false);
            cluster.add_node(via, spare).await?;
            tokio::time::sleep(step.hold).await;
            cluster.remove_node(via, spare).await?;
            cluster.restart_as_new(spare).await?;
            record(format!("node {spare} removed again"), true);
            Ok(what)
        }
        FaultKind::RemoveNode => {
            let node = random_node(rng, size);
            let others = others(node, size);
            let via = others[rng.index(others.len())];
            let what = format!("remove node {node} from every shard it holds (through node {via}), stop and wipe it");
            record(what.clone(), false);
            cluster.remove_node(via, node).await?;
            cluster.kill(node).await?;
            tokio::time::sleep(step.hold).await;
            cluster.restart_as_new(node).await?;
            cluster.add_node(via, node).await?;
            cluster.joined(node);
            record(format!("node {node} added back, empty"), true);
            Ok(what)
        }
        _ => Err(format!("{} is not a membership change", step.kind.name())),
    }
}

/// Every node of the cluster a voter of every shard and the spare of none:
/// undoes an `add-node` or `remove-node` step that stopped midway. Asks a
/// node that is a voter of every shard, waiting for one to answer.
async fn heal_membership(
    cluster: &mut ChaosCluster,
    recorder: &Recorder,
    faults: &mut Vec<FaultEvent>,
) -> Result<(), String> {
    let deadline = Instant::now() + MEMBERSHIP_VIEW_WAIT;
    let (via, shards, voters) = 'found: loop {
        for id in cluster.ids() {
            if let Ok((shards, voters)) = cluster.voter_of(id).await
                && voters.contains(&(id, shards))
            {
                break 'found (id, shards, voters);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no node was a voter of every shard within {MEMBERSHIP_VIEW_WAIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let count = |node: u8| voters.iter().find(|(id, _)| *id == node).map_or(0, |(_, n)| *n);
    let short: Vec<u8> = cluster.ids().filter(|id| count(*id) < shards).collect();
    rejoin(cluster, via, count(cluster.spare()) > 0, &short, recorder, faults).await
}

/// In a placed cluster, the spare holds no replica and every node some:
/// undoes an `add-node` or `remove-node` step that stopped midway (the
/// mover places the replicas; a rerun of an addition that moved part of
/// them is already a member, and the placement stays as it stopped).
async fn heal_placement(
    cluster: &mut ChaosCluster,
    recorder: &Recorder,
    faults: &mut Vec<FaultEvent>,
) -> Result<(), String> {
    let held = cluster.replicas_held().await?;
    let count = |node: u8| held.get(&node).copied().unwrap_or(0);
    let via =
        cluster.ids().find(|id| cluster.is_running(*id) && count(*id) > 0).ok_or("no running node holds a replica")?;
    let empty: Vec<u8> = cluster.ids().filter(|id| count(*id) == 0).collect();
    rejoin(cluster, via, count(cluster.spare()) > 0, &empty, recorder, faults).await
}

/// The heals' repair, through node `via`: the spare removed (and started
/// empty again) when `spare_holds` replicas, then each node of `missing`
/// (started empty when down) added back.
async fn rejoin(
    cluster: &mut ChaosCluster,
    via: u8,
    spare_holds: bool,
    missing: &[u8],
    recorder: &Recorder,
    faults: &mut Vec<FaultEvent>,
) -> Result<(), String> {
    let spare = cluster.spare();
    if spare_holds {
        cluster.remove_node(via, spare).await?;
        cluster.restart_as_new(spare).await?;
        faults.push(FaultEvent { at_us: recorder.micros(), what: format!("node {spare} removed"), heals: true });
    }
    for &id in missing {
        if !cluster.is_running(id) {
            cluster.restart_as_new(id).await?;
        }
        cluster.add_node(via, id).await?;
        cluster.joined(id);
        faults.push(FaultEvent { at_us: recorder.micros(), what: format!("node {id} added back"), heals: true });
    }
    Ok(())
}

/// Every link passes, every node runs unpaused with a true clock.
async fn heal_all(cluster: &mut ChaosCluster, recorder: &Recorder, faults: &mut Vec<FaultEvent>) -> Result<(), String> {
    cluster.heal();
    let mut problems = Vec::new();
    for node in cluster.ids() {
        if cluster.is_paused(node) {
            cluster.resume(node).await?;
            faults.push(FaultEvent { at_us: recorder.micros(), what: format!("SIGCONT node {node}"), heals: true });
        }
        if !cluster.is_running(node) {
            cluster.restart(node, false).await?;
            faults.push(FaultEvent { at_us: recorder.micros(), what: format!("restart node {node}"), heals: true });
        }
    }
    let healed = if cluster.is_placed() {
        heal_placement(cluster, recorder, faults).await
    } else {
        heal_membership(cluster, recorder, faults).await
    };
    if let Err(why) = healed {
        problems.push(why);
    }
    for node in cluster.ids() {
        // A node that just started has a true clock; one still running may
        // not (a jump whose undo failed).
        if let Err(why) = cluster.wait_ready(node).await {
            problems.push(why);
        } else if let Err(why) = set_clock(cluster.http(node), 0).await {
            problems.push(why);
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// The shard most items live on (the lowest of equals).
fn hottest_shard(items: &[Item], shards: u32) -> u32 {
    let mut counts = vec![0u32; shards as usize];
    for (sku, _) in items {
        counts[engine::placement::shard_of(sku, shards) as usize] += 1;
    }
    let most = counts.iter().copied().max().unwrap_or(0);
    counts.iter().position(|c| *c == most).and_then(|s| u32::try_from(s).ok()).unwrap_or(0)
}

async fn get(addr: SocketAddr, path: &str) -> Option<(StatusCode, Value)> {
    let mut http = Connection::new(addr);
    tokio::time::timeout(Duration::from_secs(3), client::request(&mut http, Method::GET, path, None)).await.ok()?.ok()
}

async fn send(addr: SocketAddr, method: Method, path: &str, body: String) -> Result<(StatusCode, Value), String> {
    let mut http = Connection::new(addr);
    match tokio::time::timeout(Duration::from_secs(3), client::request(&mut http, method, path, Some(body))).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 3 s".to_owned()),
    }
}

/// `PUT` an item's on hand through any node, retried for a while.
async fn put_item(nodes: &[SocketAddr], sku: &str, warehouse: &str, on_hand: u64) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..60 {
        let addr = nodes[attempt % nodes.len()];
        match send(addr, Method::PUT, &format!("/v1/items/{sku}/{warehouse}"), format!("{{\"on_hand\":{on_hand}}}"))
            .await
        {
            Ok((status, _)) if status.is_success() => return Ok(()),
            Ok((status, body)) => last = format!("{status} {body}"),
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("could not stock {sku}/{warehouse}: {last}"))
}

async fn set_clock(addr: SocketAddr, offset_ms: i64) -> Result<(), String> {
    match send(addr, Method::POST, "/v1/debug/clock", format!("{{\"offset_ms\":{offset_ms}}}")).await {
        Ok((status, _)) if status.is_success() => Ok(()),
        Ok((status, body)) => Err(format!("POST /v1/debug/clock on {addr}: {status} {body}")),
        Err(why) => Err(format!("POST /v1/debug/clock on {addr}: {why}")),
    }
}

/// Each shard's leader, as the first node that names one says.
async fn leaders(nodes: &[SocketAddr], shards: u32) -> Vec<Option<u8>> {
    let mut leaders = vec![None; shards as usize];
    for addr in nodes {
        let Some((status, body)) = get(*addr, "/v1/cluster").await else { continue };
        if !status.is_success() {
            continue;
        }
        for shard in body["shards"].as_array().into_iter().flatten() {
            let (Some(index), Some(leader)) = (shard["shard"].as_u64(), shard["leader"].as_u64()) else { continue };
            if let Some(slot) = usize::try_from(index).ok().and_then(|index| leaders.get_mut(index))
                && slot.is_none()
            {
                *slot = u8::try_from(leader).ok();
            }
        }
        if leaders.iter().all(Option::is_some) {
            break;
        }
    }
    leaders
}

/// Every node's digests once the `replicas` hosts of every shard have
/// applied the same index of it with the same digest (or whatever they are
/// after `CONVERGE_WAIT`). Every node hosts every shard unless the cluster
/// is placed.
async fn converged_digests(nodes: &[SocketAddr], replicas: u32) -> Vec<NodeDigests> {
    let started = Instant::now();
    loop {
        let mut all = Vec::new();
        for (node, addr) in (1u8..).zip(nodes) {
            let mut shards = Vec::new();
            if let Some((status, body)) = get(*addr, "/v1/cluster/digests").await
                && status.is_success()
            {
                for shard in body["shards"].as_array().into_iter().flatten() {
                    shards.push((
                        u32::try_from(shard["shard"].as_u64().unwrap_or(0)).unwrap_or(0),
                        shard["applied_index"].as_u64(),
                        shard["digest"].as_str().unwrap_or("").to_owned(),
                    ));
                }
            }
            all.push(NodeDigests { node, shards });
        }
        if crate::checker::digest_disagreements(&all, replicas).is_empty() || started.elapsed() > CONVERGE_WAIT {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each item's levels on one node's own replica.
async fn stale_levels(addr: SocketAddr, items: &[Item]) -> Vec<(Item, u64, u64)> {
    let mut levels = Vec::new();
    for (sku, warehouse) in items {
        if let Some((status, body)) = get(addr, &format!("/v1/items/{sku}/{warehouse}?consistency=stale")).await
            && status.is_success()
            && let (Some(on_hand), Some(reserved)) = (body["on_hand"].as_u64(), body["reserved"].as_u64())
        {
            levels.push(((sku.clone(), warehouse.clone()), on_hand, reserved));
        }
    }
    levels
}

/// The state of every reservation a client was told about, read
/// linearizably through any node.
async fn final_holds(nodes: &[SocketAddr], ops: &[crate::history::Op]) -> Vec<(String, String)> {
    let ids: Vec<String> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Held { reservation, .. } => Some(reservation.clone()),
            _ => None,
        })
        .collect();
    let mut states = Vec::with_capacity(ids.len());
    let mut conns: Vec<Connection> = nodes.iter().map(|addr| Connection::new(*addr)).collect();
    for (n, id) in ids.into_iter().enumerate() {
        let mut state = "UNREAD".to_owned();
        for attempt in 0..10 {
            let conn = &mut conns[(n + attempt) % nodes.len()];
            let answer = tokio::time::timeout(
                Duration::from_secs(3),
                client::request(conn, Method::GET, &format!("/v1/reservations/{id}"), None),
            )
            .await;
            match answer {
                Ok(Ok((status, body))) if status.is_success() => {
                    state = body["state"].as_str().unwrap_or("UNREAD").to_owned();
                    break;
                }
                Ok(Ok((StatusCode::NOT_FOUND, _))) => {
                    state = "MISSING".to_owned();
                    break;
                }
                Ok(_) => {}
                Err(_) => conn.reset(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        states.push((id, state));
    }
    states
}

/// Times of the first acknowledged write after each step's injection.
fn fill_step_recoveries(history: &History, report: &mut RunReport) {
    // The checker lists one recovery per fault event, in the history's
    // order; a step's injection is the event with its description and time.
    let recoveries = &report.check.availability.recovery_ms;
    for step in &mut report.steps {
        step.recovery_ms = history
            .faults
            .iter()
            .position(|event| event.what == step.what && event.at_us / 1_000 == step.at_ms)
            .and_then(|index| recoveries.get(index))
            .and_then(|(_, ms)| *ms);
    }
}

/// Per leader kill: when writes to the hot shard came back, and how many
/// writes to shards the killed node did not lead failed while it was down.
fn leader_kill_recoveries(history: &History, kills: &[LeaderKill], shards: u32) -> Vec<LeaderKill> {
    // The item of every call: reservation calls through their hold's.
    let mut sku_of_hold: HashMap<&str, &str> = HashMap::new();
    for op in &history.ops {
        if let (Call::Hold { sku, .. }, Outcome::Held { reservation, .. }) = (&op.call, &op.outcome) {
            sku_of_hold.insert(reservation, sku);
        }
    }
    let shard_of_call = |call: &Call| -> Option<u32> {
        let sku = match call {
            Call::Hold { sku, .. } | Call::Adjust { sku, .. } | Call::Read { sku, .. } => sku.as_str(),
            Call::Confirm { reservation } | Call::Release { reservation } | Call::Extend { reservation, .. } => {
                sku_of_hold.get(reservation.as_str())?
            }
        };
        Some(engine::placement::shard_of(sku, shards))
    };
    kills
        .iter()
        .map(|kill| {
            let at_us = kill.at_ms * 1_000;
            // The restart that ended this kill.
            let restart_us = history
                .faults
                .iter()
                .find(|f| f.at_us >= at_us && f.heals && f.what == format!("restart node {}", kill.node))
                .map_or(u64::MAX, |f| f.at_us);
            let writes = || history.ops.iter().filter(|op| !matches!(op.call, Call::Read { .. }));
            let recovery_ms = writes()
                .filter(|op| op.invoke_us >= at_us && shard_of_call(&op.call) == Some(kill.shard))
                .filter(|op| matches!(op.outcome, Outcome::Held { .. } | Outcome::Done))
                .map(|op| op.complete_us)
                .min()
                .map(|complete| (complete - at_us) / 1_000);
            let mut failed = 0;
            let mut in_flight = 0;
            for op in writes() {
                if op.complete_us < at_us || op.invoke_us > restart_us || !matches!(op.outcome, Outcome::Unknown { .. })
                {
                    continue;
                }
                let Some(shard) = shard_of_call(&op.call) else { continue };
                if kill.leaders.get(shard as usize).copied().flatten() == Some(kill.node) {
                    continue;
                }
                if op.node == kill.node && op.invoke_us <= at_us {
                    in_flight += 1;
                } else {
                    failed += 1;
                }
            }
            LeaderKill {
                recovery_ms,
                other_shards_failed: failed,
                other_shards_lost_in_flight: in_flight,
                ..kill.clone()
            }
        })
        .collect()
}

/// A task that keeps making short holds on the probe item and reading each
/// until it expires.
struct ProbeTask {
    nodes: Vec<SocketAddr>,
    sku: String,
    recorder: Arc<Recorder>,
    until: Instant,
    out: Arc<Mutex<Vec<Probe>>>,
    offset: Duration,
}

impl ProbeTask {
    async fn run(self) {
        tokio::time::sleep(self.offset).await;
        let mut conns: Vec<Connection> = self.nodes.iter().map(|addr| Connection::new(*addr)).collect();
        let mut turn = 0usize;
        let ttl_ms = u64::try_from(PROBE_TTL.as_millis()).unwrap_or(u64::MAX);
        let body = format!(
            "{{\"lines\":[{{\"sku\":\"{}\",\"warehouse\":\"w1\",\"quantity\":1}}],\"ttl_seconds\":{}}}",
            self.sku,
            PROBE_TTL.as_secs()
        );
        while Instant::now() < self.until {
            turn += 1;
            let conn = &mut conns[turn % self.nodes.len()];
            let held_invoke_us = self.recorder.micros();
            let answer = tokio::time::timeout(
                Duration::from_secs(3),
                client::request(conn, Method::POST, "/v1/reservations", Some(body.clone())),
            )
            .await;
            let held_complete_us = self.recorder.micros();
            let reservation = match answer {
                Ok(Ok((status, value))) if status.is_success() => value["id"].as_str().map(str::to_owned),
                Ok(Ok(_)) | Ok(Err(ConnError::NotSent(_))) | Ok(Err(ConnError::Lost(_))) => None,
                Err(_) => {
                    conn.reset();
                    None
                }
            };
            let Some(reservation) = reservation else {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            };
            let mut probe = Probe { reservation, ttl_ms, held_invoke_us, held_complete_us, ..Probe::default() };
            // Read until it is seen expired, for at most TTL + 30 s.
            let give_up = Instant::now() + PROBE_TTL + Duration::from_secs(30);
            while Instant::now() < give_up {
                turn += 1;
                let conn = &mut conns[turn % self.nodes.len()];
                let invoke = self.recorder.micros();
                let path = format!("/v1/reservations/{}", probe.reservation);
                let answer =
                    tokio::time::timeout(Duration::from_secs(2), client::request(conn, Method::GET, &path, None)).await;
                let complete = self.recorder.micros();
                match answer {
                    Ok(Ok((status, value))) if status.is_success() => match value["state"].as_str() {
                        Some("HELD") => probe.last_held_invoke_us = Some(invoke),
                        Some("EXPIRED") => {
                            probe.expired_seen_us = Some((invoke, complete));
                            break;
                        }
                        other => {
                            probe.other_state = other.map(str::to_owned);
                            break;
                        }
                    },
                    Ok(_) => {}
                    Err(_) => conn.reset(),
                }
                tokio::time::sleep(PROBE_POLL).await;
            }
            self.out.lock().push(probe);
        }
    }
}

/// Early: seen expired before its TTL had passed since the hold was sent.
/// Late: seen live more than `EXPIRY_LATE_BOUND` past its TTL after the
/// hold was answered, or never seen expired.
fn judge_probes(mut probes: Vec<Probe>) -> ExpiryReport {
    probes.sort_by_key(|p| p.held_invoke_us);
    let late_bound_us = u64::try_from(EXPIRY_LATE_BOUND.as_micros()).unwrap_or(u64::MAX);
    let mut report = ExpiryReport::default();
    for probe in &probes {
        let ttl_us = probe.ttl_ms * 1_000;
        let deadline_lo = probe.held_invoke_us + ttl_us;
        let deadline_hi = probe.held_complete_us + ttl_us;
        if let Some((_, seen)) = probe.expired_seen_us
            && seen < deadline_lo
        {
            report.early.push(format!(
                "{}: expired {} ms before its TTL of {} ms had passed since the hold was sent",
                probe.reservation,
                (deadline_lo - seen) / 1_000,
                probe.ttl_ms
            ));
        }
        if let Some(live) = probe.last_held_invoke_us
            && live > deadline_hi + late_bound_us
        {
            report.late.push(format!(
                "{}: still held {} ms past its deadline",
                probe.reservation,
                (live - deadline_hi) / 1_000
            ));
        }
        match (probe.expired_seen_us, &probe.other_state) {
            (Some((_, seen)), _) => report.lateness_ms.push(seen.saturating_sub(deadline_hi) / 1_000),
            (None, Some(state)) => report.late.push(format!("{}: ended {state}, not EXPIRED", probe.reservation)),
            (None, None) => {
                report.late.push(format!("{}: never seen expired (read for TTL + 30 s)", probe.reservation))
            }
        }
    }
    report.probes = probes;
    report
}
