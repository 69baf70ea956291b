//! `tally-bench scale`: holds per second as a placed cluster grows (issue
//! 19: throughput grows with nodes).
//!
//! For each node count, a fresh cluster of that many `tally` processes with
//! `cluster.replication_factor` R: every node is capped at the same CPU
//! share (`cpu.rs`, one cgroup per node), so N nodes have N shares of CPU
//! on any machine. The same clients, spread over the nodes, run the
//! `uniform` workload (single-line holds over many SKUs, so over every
//! shard) closed-loop; a node that does not host a hold's shard forwards
//! it. The report gives holds/s, holds/s per node, latency, the CPU each
//! node used (seconds of CPU per second, from `/proc`) and the bench's
//! oversell and lost-write checks. The run fails when a check fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use testkit::Program;

use crate::cpu::{CpuCap, cpu_seconds};
use crate::load::{Mode, Timing};
use crate::results::{Check, Latency};
use crate::runner::{self, Job, Plan};
use crate::tally::{NodeSettings, TallyTarget, Topology};
use crate::workload::{self, Shape, Workload};

/// What to run.
#[derive(Clone, Debug)]
pub struct ScalePlan {
    /// Node counts, one cluster each, in this order.
    pub nodes: Vec<u64>,
    pub replication_factor: u32,
    pub shards: u32,
    /// CPUs each node may use (0.25: a quarter of one core).
    pub cpu_per_node: f64,
    pub clients: u32,
    pub timing: Timing,
    pub skus: usize,
    pub program: Program,
    pub data_dir: PathBuf,
}

/// One cluster size's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleRow {
    pub nodes: u64,
    pub holds_per_s: f64,
    pub holds_per_s_per_node: f64,
    pub errors: u64,
    /// Microseconds.
    pub latency: Latency,
    /// Per node: CPU seconds used per second measured (at most the cap).
    pub cpu_used: Vec<f64>,
    pub check: Check,
}

/// The whole run, as written to `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    pub replication_factor: u32,
    pub shards: u32,
    pub cpu_per_node: f64,
    pub clients: u32,
    pub seconds: f64,
    pub skus: usize,
    pub rows: Vec<ScaleRow>,
}

impl ScaleReport {
    /// Whether every cluster passed the checks and measured something.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|row| row.check.problems.is_empty() && row.holds_per_s > 0.0)
    }
}

/// Runs every cluster size in turn and prints a line for each.
pub async fn run(plan: &ScalePlan) -> Result<ScaleReport, String> {
    let mut report = ScaleReport {
        replication_factor: plan.replication_factor,
        shards: plan.shards,
        cpu_per_node: plan.cpu_per_node,
        clients: plan.clients,
        seconds: plan.timing.measure.as_secs_f64(),
        skus: plan.skus,
        rows: Vec::new(),
    };
    for &nodes in &plan.nodes {
        let row = measure_cluster(plan, nodes, &plan.data_dir.join(format!("nodes-{nodes}"))).await?;
        let text = RowText::of(&row);
        println!(
            "tally-scale  {:>2} nodes  {:>9.0} holds/s  {:>8.0} per node  p50 {:>6.2} ms  p99 {:>6.2} ms  \
             errors {}  cpu per node {}  checks {}",
            row.nodes,
            row.holds_per_s,
            row.holds_per_s_per_node,
            text.p50_ms,
            text.p99_ms,
            row.errors,
            text.cpu,
            text.checks,
        );
        report.rows.push(row);
    }
    Ok(report)
}

async fn measure_cluster(plan: &ScalePlan, nodes: u64, dir: &Path) -> Result<ScaleRow, String> {
    let topology = Topology::Placed { nodes, shards: plan.shards, replication_factor: plan.replication_factor };
    let tally =
        TallyTarget::start(&plan.program, topology, dir, NodeSettings::default()).await.map_err(|e| e.to_string())?;
    let result = async {
        let pids: Vec<u32> = tally.pids().into_iter().flatten().collect();
        let mut caps = Vec::with_capacity(pids.len());
        for (index, pid) in pids.iter().enumerate() {
            let cap = CpuCap::new(&format!("tally-bench-scale-{}", index + 1), plan.cpu_per_node)?;
            cap.add(*pid)?;
            caps.push(cap);
        }
        let shape =
            Shape { skus: plan.skus, stock: 1_000_000_000, sellout_units: 1, ttl_ms: 3_600_000, expiry_ttl_ms: 1_000 };
        let items = Arc::new(workload::items(Workload::Uniform, &shape));
        tally.load(&items).await?;
        let base = runner_plan(plan, shape);
        let job = Job {
            workload: Workload::Uniform,
            clients: plan.clients,
            mode: Mode::Closed,
            nodes: NodeSettings::default(),
        };
        let conns = (0..plan.clients as usize).map(|i| tally.connect(i)).collect();
        // CPU is read over the whole run (warm-up included) and divided by
        // its length: the caps hold throughout, so it is the same share.
        let before: Vec<Option<f64>> = pids.iter().map(|pid| cpu_seconds(*pid)).collect();
        let started = Instant::now();
        let (run, _) = runner::measure(&base, job, items, conns, tally.connect(0)).await?;
        let elapsed = started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
        let cpu_used = pids
            .iter()
            .zip(before)
            .map(|(pid, before)| match (before, cpu_seconds(*pid)) {
                (Some(before), Some(after)) => (after - before) / elapsed,
                _ => f64::NAN,
            })
            .collect();
        drop(caps);
        Ok(ScaleRow {
            nodes,
            holds_per_s: run.holds_per_s,
            holds_per_s_per_node: run.holds_per_s / nodes as f64,
            errors: run.errors,
            latency: run.latency,
            cpu_used,
            check: run.check,
        })
    }
    .await;
    tally.stop().await;
    let _ = std::fs::remove_dir_all(dir);
    result
}

/// The plan `runner::measure` reads (its timing and shape).
fn runner_plan(plan: &ScalePlan, shape: Shape) -> Plan {
    Plan {
        targets: Vec::new(),
        workloads: vec![Workload::Uniform],
        clients: plan.clients,
        sweep: Vec::new(),
        timing: plan.timing,
        shape,
        half_load: false,
        expiry_rate: 0.0,
        program: plan.program.clone(),
        data_dir: plan.data_dir.clone(),
    }
}

/// The figures of a row as the line and the table show them.
struct RowText {
    p50_ms: f64,
    p99_ms: f64,
    /// CPU used per node, `0.22 / 0.21 / …`.
    cpu: String,
    /// `ok`, or the problems the checks found.
    checks: String,
}

impl RowText {
    fn of(row: &ScaleRow) -> RowText {
        RowText {
            p50_ms: row.latency.p50 as f64 / 1000.0,
            p99_ms: row.latency.p99 as f64 / 1000.0,
            cpu: row.cpu_used.iter().map(|cpu| format!("{cpu:.2}")).collect::<Vec<_>>().join(" / "),
            checks: if row.check.problems.is_empty() { "ok".to_owned() } else { row.check.problems.join("; ") },
        }
    }
}

/// `results.json` and `results.md` in `out`.
pub fn write(report: &ScaleReport, out: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(out.join("results.json"), json)?;
    let mut md = format!(
        "# tally-bench scale\n\n{} shards, each on {} nodes (every node, in a cluster of fewer); every node \
         capped at {} CPU; {} clients, uniform holds over {} SKUs, {} s measured.\n\n| nodes | holds/s | per node | p50 ms | p99 ms | errors | CPU used per \
         node | checks |\n|---:|---:|---:|---:|---:|---:|---|---|\n",
        report.shards, report.replication_factor, report.cpu_per_node, report.clients, report.skus, report.seconds
    );
    for row in &report.rows {
        let text = RowText::of(row);
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} | {} |\n",
            row.nodes,
            row.holds_per_s,
            row.holds_per_s_per_node,
            text.p50_ms,
            text.p99_ms,
            row.errors,
            text.cpu,
            text.checks,
        ));
    }
    std::fs::write(out.join("results.md"), md)
}
