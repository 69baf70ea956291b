//! `tally-bench backup`: how long an online backup and a restore of a big
//! node take, and what a backup does to the write p99 meanwhile.
//!
//! 1. Builds a data directory offline with `items` items and `holds` live
//!    holds (one unit each, an hour long) spread over the shards by
//!    placement, through the engine's own `apply`, one snapshot per shard
//!    (what `tally restore` writes, so the node starts from it).
//! 2. Starts a node on it and, while one client writes new items in a
//!    closed loop, takes `runs` backups with `POST /v1/admin/backup`,
//!    timing each and the writes during it (and the same writes for as
//!    long with no backup, the baseline).
//! 3. Verifies the last backup and restores it `runs` times, timing each.
//!
//! Prints the medians as a Markdown table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use engine::cmd::{Allocation, AttrUpdate, Deadline, Expect, Hold, HoldLine, UpsertItem};
use engine::ids::{Quantity, ReservationId, Sku, Warehouse};
use engine::{Command, LogEntry, LogId, ShardState, shard_of};
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use server::backup::Until;
use server::backup::restore::{RestoreRequest, restore, write_shard};

use testkit::{Connection, NodeSpec, Options, Program, TallyProcess, free_addrs};

/// Commands per generated log entry.
const GENERATE_BATCH: usize = 4096;
/// How long a generated hold lives: past any run.
const HOLD_TTL_MS: u64 = 3_600_000;
const READY_WAIT: Duration = Duration::from_secs(300);

/// What to measure.
#[derive(Clone, Debug)]
pub struct BackupPlan {
    pub items: u64,
    pub holds: u64,
    pub shards: u32,
    pub runs: u32,
    pub dir: PathBuf,
    /// The program that is `tally` (`tally-bench` re-runs itself as `tally-bench tally`).
    pub program: Program,
}

/// The figures, in milliseconds (medians over the runs).
#[derive(Debug, Default)]
pub struct BackupFigures {
    pub generate_ms: u64,
    pub start_ms: u64,
    pub backup_ms: Vec<u64>,
    pub backup_bytes: u64,
    pub verify_ms: u64,
    pub restore_ms: Vec<u64>,
    pub entries_replayed: u64,
    pub write_p99_us_baseline: u64,
    pub write_p99_us_during_backup: u64,
    pub write_max_us_during_backup: u64,
    pub writes_during_backup: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

/// One shard's state with its share of the items and holds.
fn generate_shard(shard: u32, plan: &BackupPlan, peer: &str) -> Result<ShardState, String> {
    let mut state = ShardState::new(shard, plan.shards, cluster::node::initial_limits());
    let membership = cluster::raft_types::MembershipImage::single(1, peer);
    let mut index = 0u64;
    state
        .apply(&LogEntry { log_id: LogId::new(1, index), payload: engine::EntryPayload::Membership(membership) })
        .map_err(|e| e.to_string())?;
    let warehouse = Warehouse::new("w1").map_err(|e| e.to_string())?;
    let skus: Vec<u64> = (0..plan.items).filter(|i| shard_of(&format!("sku-{i:08}"), plan.shards) == shard).collect();
    let ts_ms = now_ms();
    for chunk in skus.chunks(GENERATE_BATCH) {
        let mut commands = Vec::with_capacity(chunk.len());
        for i in chunk {
            commands.push(Command::UpsertItem(UpsertItem {
                sku: Sku::new(format!("sku-{i:08}")).map_err(|e| e.to_string())?,
                warehouse: warehouse.clone(),
                on_hand: Some(1_000),
                low_stock_threshold: None,
                name: AttrUpdate::Keep,
                unit_price_minor: AttrUpdate::Keep,
                expect: Expect::Any,
                principal: None,
            }));
        }
        index += 1;
        state.apply(&LogEntry::batch(LogId::new(1, index), ts_ms, commands)).map_err(|e| e.to_string())?;
    }
    // Holds go round the shard's items, one unit each.
    let holds = plan.holds * skus.len() as u64 / plan.items.max(1);
    let hold_ids: Vec<u64> = (0..holds).collect();
    for chunk in hold_ids.chunks(GENERATE_BATCH) {
        let mut commands = Vec::with_capacity(chunk.len());
        for h in chunk {
            let Some(sku) = skus.get(usize::try_from(*h).unwrap_or(0) % skus.len().max(1)) else { break };
            let mut unique = [0u8; 14];
            unique[..8].copy_from_slice(&h.to_be_bytes());
            unique[8..12].copy_from_slice(&shard.to_be_bytes());
            commands.push(Command::Hold(Hold {
                id: ReservationId::from_parts(u16::try_from(shard).unwrap_or(u16::MAX), unique),
                lines: vec![HoldLine {
                    sku: Sku::new(format!("sku-{sku:08}")).map_err(|e| e.to_string())?,
                    warehouse: Some(warehouse.clone()),
                    quantity: Quantity::new(1).map_err(|e| e.to_string())?,
                }],
                deadline: Deadline::AfterMs(HOLD_TTL_MS),
                idempotency_key: None,
                confirm: false,
                allocation: Allocation::MostAvailable,
                customer: None,
                principal: None,
            }));
        }
        index += 1;
        state.apply(&LogEntry::batch(LogId::new(1, index), ts_ms, commands)).map_err(|e| e.to_string())?;
    }
    Ok(state)
}

/// Writes new items in a closed loop until `stop`; returns each write's latency (µs).
async fn write_loop(addr: std::net::SocketAddr, stop: tokio::sync::watch::Receiver<bool>, prefix: String) -> Vec<u64> {
    let mut http = Connection::new(addr);
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while !*stop.borrow() {
        let path = format!("/v1/items/{prefix}-{n}/w1");
        let started = Instant::now();
        let answer = http.request(Method::PUT, &path, Some(Bytes::from_static(b"{\"on_hand\": 5}"))).await;
        if matches!(answer, Ok((status, _)) if status.is_success()) {
            latencies.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
        n += 1;
    }
    latencies
}

fn p99(latencies: &[u64]) -> u64 {
    let mut histogram = match Histogram::<u64>::new(3) {
        Ok(histogram) => histogram,
        Err(_) => return 0,
    };
    for latency in latencies {
        let _ = histogram.record(*latency);
    }
    histogram.value_at_quantile(0.99)
}

pub async fn run(plan: &BackupPlan) -> Result<BackupFigures, String> {
    let mut figures = BackupFigures::default();
    std::fs::create_dir_all(&plan.dir).map_err(|e| e.to_string())?;
    let data = plan.dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    let addrs = free_addrs(2);
    let (http_addr, peer_addr) = (addrs[0], addrs[1]);

    let started = Instant::now();
    let identity = cluster::ClusterConfig {
        node_id: 1,
        shards: plan.shards,
        data_dir: data.clone(),
        ..cluster::ClusterConfig::default()
    };
    cluster::node::check_identity(&identity).map_err(|e| e.to_string())?;
    for shard in 0..plan.shards {
        let state = generate_shard(shard, plan, &peer_addr.to_string())?;
        let last = state.last_applied().ok_or("an empty shard")?;
        write_shard(&data, shard, &state, last, 1).map_err(|e| e.to_string())?;
    }
    figures.generate_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    println!("generated {} items and {} holds in {} ms", plan.items, plan.holds, figures.generate_ms);

    let started = Instant::now();
    let options =
        Options::new(plan.program.clone()).shards(plan.shards).log_level("warn").root(&plan.dir).data_dir(&data);
    let mut node = TallyProcess::launch(NodeSpec::single(http_addr, peer_addr), &options)?;
    node.wait_ready_within(READY_WAIT).await.map_err(|e| format!("the node did not become ready: {e}"))?;
    let mut http = Connection::new(http_addr);
    figures.start_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    println!("node ready in {} ms", figures.start_ms);

    let result = measure(plan, http_addr, &mut http, &mut figures).await;
    node.kill_9();
    result?;
    Ok(figures)
}

async fn measure(
    plan: &BackupPlan,
    http_addr: std::net::SocketAddr,
    http: &mut Connection,
    figures: &mut BackupFigures,
) -> Result<(), String> {
    let mut during = Vec::new();
    let mut last_backup = PathBuf::new();
    for run in 0..plan.runs {
        // Baseline: the same writes for a second with no backup.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn(write_loop(http_addr, stop_rx, format!("base{run}")));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = stop_tx.send(true);
        let baseline = writer.await.map_err(|e| e.to_string())?;
        figures.write_p99_us_baseline = figures.write_p99_us_baseline.max(p99(&baseline));

        let to = plan.dir.join(format!("backup-{run}"));
        let _ = std::fs::remove_dir_all(&to);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn(write_loop(http_addr, stop_rx, format!("live{run}")));
        let body = serde_json::json!({ "to": to.to_string_lossy() }).to_string();
        let started = Instant::now();
        let (status, answer) = http.request(Method::POST, "/v1/admin/backup", Some(Bytes::from(body))).await?;
        let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let _ = stop_tx.send(true);
        let latencies = writer.await.map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("backup answered {status}: {}", String::from_utf8_lossy(&answer)));
        }
        let answer: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
        figures.backup_bytes = answer["bytes"].as_u64().unwrap_or(0);
        println!(
            "backup {run}: {took} ms, {} bytes, {} writes meanwhile, p99 {} µs",
            figures.backup_bytes,
            latencies.len(),
            p99(&latencies)
        );
        figures.backup_ms.push(took);
        figures.writes_during_backup += latencies.len() as u64;
        during.extend(latencies);
        last_backup = to;
    }
    figures.write_p99_us_during_backup = p99(&during);
    figures.write_max_us_during_backup = during.iter().copied().max().unwrap_or(0);

    let started = Instant::now();
    server::backup::verify::verify_backup(&last_backup).map_err(|e| e.to_string())?;
    figures.verify_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    println!("verify: {} ms", figures.verify_ms);

    for run in 0..plan.runs {
        let data = plan.dir.join(format!("restored-{run}"));
        let _ = std::fs::remove_dir_all(&data);
        let request = RestoreRequest {
            from: vec![last_backup.clone()],
            archive: None,
            until: Until::End,
            data_dir: data.clone(),
            node_id: 1,
            peer_addr: "127.0.0.1:7001".into(),
        };
        let started = Instant::now();
        let shards = tokio::task::spawn_blocking(move || restore(&request))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        figures.entries_replayed = shards.iter().map(|s| s.entries_replayed).sum();
        println!("restore {run}: {took} ms, {} entries replayed after the snapshots", figures.entries_replayed);
        figures.restore_ms.push(took);
        let _ = std::fs::remove_dir_all(&data);
    }
    Ok(())
}

/// The figures as a Markdown table.
pub fn markdown(plan: &BackupPlan, figures: &BackupFigures) -> String {
    let mut text = String::new();
    text.push_str(&format!(
        "{} items, {} live holds, {} shards, {} runs (medians)\n\n| figure | value |\n|---|---|\n",
        plan.items, plan.holds, plan.shards, plan.runs
    ));
    let rows = [
        ("online backup (POST /v1/admin/backup, wall)", format!("{} ms", median(&figures.backup_ms))),
        ("backup size (hard links count in full)", format!("{} MB", figures.backup_bytes / 1_000_000)),
        ("verify (checksums + replay + digest)", format!("{} ms", figures.verify_ms)),
        ("restore (load, replay, write snapshot)", format!("{} ms", median(&figures.restore_ms))),
        ("entries replayed after the snapshots", figures.entries_replayed.to_string()),
        ("write p99, no backup", format!("{} µs", figures.write_p99_us_baseline)),
        ("write p99, during backups", format!("{} µs", figures.write_p99_us_during_backup)),
        ("write max, during backups", format!("{} µs", figures.write_max_us_during_backup)),
        ("writes during backups", figures.writes_during_backup.to_string()),
    ];
    for (name, value) in rows {
        text.push_str(&format!("| {name} | {value} |\n"));
    }
    text
}

/// Keeps the last backup for inspection unless told otherwise.
pub fn clean(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join("data"));
}
