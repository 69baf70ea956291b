//! Committed commands per second and commit latency, in-process, over
//! loopback, for 1 and 3 nodes (`COMMIT_BENCH_NODES=3,5,6` for others) at
//! several batch caps, in all and per node.
//!
//! `cargo bench -p tally-cluster --bench commit` runs the full matrix and
//! prints a markdown table. Under `cargo test` (no `--bench` argument) it
//! runs a short smoke pass so the harness cannot rot.
//!
//! Load: `clients` tasks, spread over the nodes, each submitting holds of 1
//! unit on SKUs spread over all shards (stock large enough that every hold
//! is accepted), one at a time (closed loop). Then an open-loop run at half
//! the 3-node peak: holds are issued on a fixed schedule whatever the
//! latency, and each latency is measured from its scheduled start, so
//! queueing is counted (no coordinated omission).

// Rates, counts and microsecond latencies of a benchmark run are far below
// the ranges where these casts could truncate.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster::{ClusterConfig, Node};
use common::TestCluster;
use engine::Command;
use engine::ids::ReservationId;
use engine::testing::{hold, upsert};
use engine::{Outcome, shard_of};
use hdrhistogram::Histogram;

#[path = "../tests/common/mod.rs"]
mod common;

const SHARDS: u32 = 8;
const SKUS: u64 = 1024;

struct Settings {
    seconds: f64,
    clients: usize,
    batch_caps: Vec<usize>,
    node_counts: Vec<u64>,
    open_loop: bool,
}

/// `COMMIT_BENCH_NODES=3,5,6` replaces the node counts of a `--bench` run
/// (every node holds every shard: more nodes are more copies).
fn node_counts(default: Vec<u64>) -> Vec<u64> {
    std::env::var("COMMIT_BENCH_NODES")
        .ok()
        .map(|text| text.split(',').filter_map(|n| n.trim().parse().ok()).filter(|n| *n >= 1).collect::<Vec<u64>>())
        .filter(|counts| !counts.is_empty())
        .unwrap_or(default)
}

fn settings() -> Settings {
    let bench = std::env::args().any(|arg| arg == "--bench");
    if bench {
        Settings {
            seconds: 5.0,
            clients: 4096,
            batch_caps: vec![1, 64, 1024],
            node_counts: node_counts(vec![1, 3]),
            open_loop: true,
        }
    } else {
        Settings { seconds: 0.3, clients: 64, batch_caps: vec![64], node_counts: vec![1, 3], open_loop: true }
    }
}

fn sku_name(n: u64) -> String {
    format!("bench-{n}")
}

fn hold_command(n: u64, sequence: u64) -> Command {
    let name = sku_name(n % SKUS);
    let mut unique = [0u8; 14];
    unique[..8].copy_from_slice(&sequence.to_be_bytes());
    unique[8..12].copy_from_slice(&u32::try_from(n % SKUS).unwrap_or(0).to_be_bytes());
    let home = u16::try_from(shard_of(&name, SHARDS)).unwrap_or(0);
    hold(ReservationId::from_parts(home, unique), &[(&name, "w1", 1)], 3_600_000, None)
}

struct Cluster {
    nodes: Vec<Node>,
    _dirs: Vec<tempfile::TempDir>,
}

/// `size` nodes (the cluster tests' harness, with the bench's timing),
/// every shard led and every SKU stocked before the clock starts.
async fn start(size: u64, batch_size_max: usize) -> Cluster {
    let test = TestCluster::start(size, SHARDS, |config| {
        let defaults = ClusterConfig::default();
        config.batch_size_max = batch_size_max;
        config.heartbeat_ms = 100;
        config.election_timeout_min_ms = 1_000;
        config.election_timeout_max_ms = 2_000;
        config.rpc_timeout_ms = defaults.rpc_timeout_ms;
        config.retry_window_ms = defaults.retry_window_ms;
        config.rebalance_interval_ms = defaults.rebalance_interval_ms;
        // Snapshots are measured by the engine's benchmarks.
        config.snapshot_after_entries = 10_000_000;
    })
    .await;
    test.wait_for_leaders(Duration::from_secs(30)).await;
    let TestCluster { dirs, nodes, .. } = test;
    let nodes: Vec<Node> = nodes.into_iter().flatten().collect();
    for n in 0..SKUS {
        let command = upsert(&sku_name(n), "w1", 1_000_000_000_000, 0);
        let outcome = nodes[0].submit(command).await.unwrap_or_else(|e| panic!("stock: {e}"));
        assert!(!outcome.is_refused(), "{outcome:?}");
    }
    Cluster { nodes, _dirs: dirs }
}

struct Run {
    committed: u64,
    seconds: f64,
    latency_us: Histogram<u64>,
    fsyncs: u64,
    entries: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|e| panic!("histogram: {e}"))
}

async fn fsyncs(cluster: &Cluster) -> (u64, u64) {
    cluster.nodes.iter().map(Node::stats).fold((0, 0), |(f, e), s| (f + s.fsyncs, e + s.entries_proposed))
}

/// The node leading each shard, to send load straight to leaders.
fn leaders(cluster: &Cluster) -> Vec<usize> {
    cluster.nodes[0].status().shards.iter().map(|s| s.leader.map_or(0, |id| id as usize - 1)).collect()
}

async fn closed_loop(cluster: &Cluster, clients: usize, seconds: f64, at_leaders: bool) -> Run {
    let leaders = Arc::new(leaders(cluster));
    let stop = Arc::new(AtomicBool::new(false));
    let sequence = Arc::new(AtomicU64::new(1));
    let (fsyncs_before, entries_before) = fsyncs(cluster).await;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let nodes = cluster.nodes.clone();
        let leaders = Arc::clone(&leaders);
        let stop = Arc::clone(&stop);
        let sequence = Arc::clone(&sequence);
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut committed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = sequence.fetch_add(1, Ordering::Relaxed);
                let node = if at_leaders {
                    &nodes[leaders[shard_of(&sku_name(n % SKUS), SHARDS) as usize]]
                } else {
                    &nodes[client % nodes.len()]
                };
                let begun = Instant::now();
                if let Ok(Outcome::Held { .. }) = node.submit(hold_command(n, n)).await {
                    committed += 1;
                    let _ = latency.record(begun.elapsed().as_micros().max(1) as u64);
                }
            }
            (committed, latency)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut run = Run { committed: 0, seconds: elapsed, latency_us: histogram(), fsyncs: 0, entries: 0 };
    for task in tasks {
        let (committed, latency) = task.await.unwrap_or_else(|e| panic!("client: {e}"));
        run.committed += committed;
        let _ = run.latency_us.add(&latency);
    }
    let (fsyncs_after, entries_after) = fsyncs(cluster).await;
    run.fsyncs = fsyncs_after - fsyncs_before;
    run.entries = entries_after - entries_before;
    run
}

async fn open_loop(cluster: &Cluster, rate_per_s: f64, seconds: f64) -> Run {
    let total = (rate_per_s * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate_per_s);
    let (fsyncs_before, entries_before) = fsyncs(cluster).await;
    let started = tokio::time::Instant::now();
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let mut issued = 0u64;
    // Issue on schedule; each request's latency counts from its scheduled time.
    while issued < total {
        let now = tokio::time::Instant::now();
        let due = ((now - started).as_secs_f64() * rate_per_s) as u64 + 1;
        while issued < due.min(total) {
            let scheduled = started + interval.mul_f64(issued as f64);
            let node = cluster.nodes[(issued as usize) % cluster.nodes.len()].clone();
            let sender = sender.clone();
            let n = issued + 10_000_000_000;
            tokio::spawn(async move {
                let result = node.submit(hold_command(n, n)).await;
                let ok = matches!(result, Ok(Outcome::Held { .. }));
                let _ = sender.send((ok, scheduled.elapsed()));
            });
            issued += 1;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    drop(sender);
    let mut run = Run { committed: 0, seconds: 0.0, latency_us: histogram(), fsyncs: 0, entries: 0 };
    while let Some((ok, latency)) = receiver.recv().await {
        if ok {
            run.committed += 1;
            let _ = run.latency_us.record(latency.as_micros().max(1) as u64);
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    let (fsyncs_after, entries_after) = fsyncs(cluster).await;
    run.fsyncs = fsyncs_after - fsyncs_before;
    run.entries = entries_after - entries_before;
    run
}

fn row(label: &str, nodes: u64, run: &Run) -> String {
    let holds_per_s = run.committed as f64 / run.seconds;
    format!(
        "| {label} | {holds_per_s:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} |",
        holds_per_s / nodes as f64,
        run.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
        run.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        run.latency_us.max() as f64 / 1000.0,
        run.fsyncs as f64 / run.seconds,
        if run.entries == 0 { 0.0 } else { run.committed as f64 / run.entries as f64 },
    )
}

fn main() {
    let settings = settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    runtime.block_on(async {
        println!(
            "| run | committed holds/s | per node | p50 ms | p99 ms | max ms | fsyncs/s (all nodes) | commands/entry |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let mut peak_three = 0.0f64;
        for &nodes in &settings.node_counts {
            for &cap in &settings.batch_caps {
                let cluster = start(nodes, cap).await;
                let run = closed_loop(&cluster, settings.clients, settings.seconds, false).await;
                assert!(run.committed > 0, "nothing committed");
                println!(
                    "{}",
                    row(&format!("{nodes} node(s), batch cap {cap}, {} clients", settings.clients), nodes, &run)
                );
                if nodes == 3 {
                    peak_three = peak_three.max(run.committed as f64 / run.seconds);
                    let run = closed_loop(&cluster, settings.clients, settings.seconds, true).await;
                    let label =
                        format!("{nodes} nodes, batch cap {cap}, {} clients at shard leaders", settings.clients);
                    println!("{}", row(&label, nodes, &run));
                }
                for node in cluster.nodes {
                    node.shutdown().await;
                }
            }
        }
        if settings.open_loop && peak_three > 0.0 {
            let cap = *settings.batch_caps.iter().max().unwrap_or(&1024);
            let cluster = start(3, cap).await;
            let rate = peak_three / 2.0;
            let run = open_loop(&cluster, rate, settings.seconds).await;
            println!("{}", row(&format!("3 nodes, batch cap {cap}, open loop at {rate:.0}/s (half of peak)"), 3, &run));
            for node in cluster.nodes {
                node.shutdown().await;
            }
        }
    });
}
