//! Online backup, verification, the log archive and point-in-time restore,
//! end to end on real `tally` processes (issue 16).
//!
//! The model: items are only ever set (`PUT` with an `on_hand`), one write
//! at a time, no holds (so no `Tick` entries): after the start every log
//! index is one of the test's writes, and the node's digest read right
//! after a write is the digest at that write's index.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Http, Options, TallyProcess, eventually, free_addrs, item_path, options, u64_of};
use hyper::StatusCode;
use serde_json::{Value, json};
use server::backup::Until;
use server::backup::restore::{RestoreRequest, RestoredShard, restore};
use server::backup::verify::verify_backup;

/// Small segments and frequent snapshots: a backup then has a snapshot,
/// several segments and purged history.
fn small_log(options: Options) -> Options {
    options.set("cluster.wal", "segment_bytes_max", "4096").set("cluster", "snapshot_after_entries", "40").set(
        "cluster",
        "log_entries_kept_after_snapshot",
        "10",
    )
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("tally-backup-test-").tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

/// One shard's applied index and digest on a node.
async fn digest_of(http: &Http, shard: usize) -> (u64, String) {
    let (status, _, body) = http.get("/v1/cluster/digests").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let entry = &body["shards"][shard];
    (u64_of(entry, "applied_index"), entry["digest"].as_str().unwrap_or_default().to_owned())
}

/// What the model says and the node's digest after each write, by index.
#[derive(Default)]
struct History {
    /// sku → on_hand, as of each index.
    states: BTreeMap<u64, BTreeMap<String, u64>>,
    digests: BTreeMap<u64, String>,
    model: BTreeMap<String, u64>,
}

impl History {
    /// Sets `sku` on a one-shard node and records the model and digest.
    async fn set(&mut self, http: &Http, sku: &str, on_hand: u64) -> u64 {
        let (status, _, body) = http.put(&item_path(sku, "w1"), json!({ "on_hand": on_hand })).await;
        assert!(status.is_success(), "{status} {body}");
        self.model.insert(sku.to_owned(), on_hand);
        let (index, digest) = digest_of(http, 0).await;
        self.states.insert(index, self.model.clone());
        self.digests.insert(index, digest);
        index
    }
}

async fn take_backup(http: &Http, to: &Path) -> Value {
    let (status, _, body) = http.post("/v1/admin/backup", json!({ "to": to.to_string_lossy() })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "done", "{body}");
    body
}

fn restore_to(
    from: &Path,
    archive: Option<&Path>,
    until: Until,
    data_dir: &Path,
    peer: SocketAddr,
) -> Vec<RestoredShard> {
    let request = RestoreRequest {
        from: vec![from.to_path_buf()],
        archive: archive.map(Path::to_path_buf),
        until,
        data_dir: data_dir.to_path_buf(),
        node_id: 1,
        peer_addr: peer.to_string(),
    };
    restore(&request).unwrap_or_else(|e| panic!("restore: {e}"))
}

/// Starts node 1 on a restored data directory at `peer` (the address the
/// restore wrote into its membership).
async fn start_restored(options: &Options, data_dir: &Path, peer: SocketAddr) -> TallyProcess {
    let http_addr = free_addrs(1)[0];
    let options = options.clone().data_dir(data_dir);
    let mut node = TallyProcess::launch_as(&options, 1, http_addr, peer, vec![(1, peer)]);
    node.ready().await;
    node
}

async fn on_hand_of(http: &Http, sku: &str) -> Option<u64> {
    let (status, _, body) = http.get(&item_path(sku, "w1")).await;
    match status {
        StatusCode::OK => Some(u64_of(&body, "on_hand")),
        StatusCode::NOT_FOUND => None,
        other => panic!("reading {sku}: {other} {body}"),
    }
}

async fn assert_state(http: &Http, skus: &[String], expected: &BTreeMap<String, u64>) {
    for sku in skus {
        assert_eq!(on_hand_of(http, sku).await, expected.get(sku).copied(), "{sku}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_writes_go_on_verifies() {
    let dir = tempdir();
    let node = TallyProcess::start(small_log(options()).shards(2)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (http, stop) = (node.client(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sku = format!("sku-{}", written % 50);
                let (status, _, body) = http.put(&item_path(&sku, "w1"), json!({ "on_hand": written })).await;
                assert!(status.is_success(), "{status} {body}");
                written += 1;
            }
            written
        })
    };
    eventually("some writes", Duration::from_secs(30), async || {
        (digest_of(node.http(), 0).await.0 > 100).then_some(())
    })
    .await;
    let first = take_backup(node.http(), &dir.path().join("b1")).await;
    let second = take_backup(node.http(), &dir.path().join("b2")).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap_or_else(|e| panic!("writer: {e}"));
    assert!(written > 100, "only {written} writes");

    for (name, status) in [("b1", first), ("b2", second)] {
        let verified = verify_backup(&dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(verified.manifest.shards.len(), 2);
        for (shard, summary) in verified.manifest.shards.iter().zip(status["shards"].as_array().into_iter().flatten()) {
            assert_eq!(json!(shard.last_index), summary["last_index"]);
            assert_eq!(json!(shard.digest), summary["digest"]);
            assert!(shard.snapshot.is_some(), "{name}: shard {} has no snapshot after 100 writes", shard.shard);
        }
    }
    // One at a time, and only where allowed.
    let reply = node.http().post("/v1/admin/backup", json!({ "to": "relative/dir" })).await;
    common::assert_problem(&reply, StatusCode::BAD_REQUEST, "backup_path_invalid");
    let reply = node.http().post("/v1/admin/backup", json!({ "to": dir.path().join("b1").to_string_lossy() })).await;
    common::assert_problem(&reply, StatusCode::CONFLICT, "backup_dir_not_empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_fails_verification() {
    let dir = tempdir();
    let node = TallyProcess::start(small_log(options()).shards(1)).await;
    let mut history = History::default();
    for i in 0..120 {
        history.set(node.http(), &format!("sku-{}", i % 7), i).await;
    }
    let good = dir.path().join("good");
    take_backup(node.http(), &good).await;
    verify_backup(&good).unwrap_or_else(|e| panic!("{e}"));
    let manifest: Value = serde_json::from_slice(&std::fs::read(good.join("manifest.json")).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let segment = manifest["shards"][0]["segments"][0]["path"].as_str().unwrap_or_default().to_owned();
    let snapshot = manifest["shards"][0]["snapshot"]["path"].as_str().unwrap_or_default().to_owned();
    assert!(!segment.is_empty() && !snapshot.is_empty(), "{manifest}");

    let damaged = |name: &str, damage: &dyn Fn(&Path)| -> String {
        let copy = dir.path().join(name);
        copy_dir(&good, &copy);
        damage(&copy);
        let error = verify_backup(&copy).err().unwrap_or_else(|| panic!("{name}: a damaged backup verified"));
        error.to_string()
    };
    let flipped = damaged("flipped", &|copy| flip_byte(&copy.join(&segment)));
    assert!(flipped.contains("CRC-32C"), "{flipped}");
    let missing = damaged("missing", &|copy| std::fs::remove_file(copy.join(&snapshot)).unwrap_or_default());
    assert!(missing.contains("the manifest lists it"), "{missing}");
    let digest = damaged("digest", &|copy| {
        let path = copy.join("manifest.json");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let digest = manifest["shards"][0]["digest"].as_str().unwrap_or_default();
        std::fs::write(&path, text.replace(digest, &"0".repeat(32))).unwrap_or_default();
    });
    assert!(digest.contains("state digest"), "{digest}");

    // The command line says so with a failing exit code.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["backup", "verify"])
        .arg(dir.path().join("flipped"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("failed verification"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["backup", "verify"])
        .arg(&good)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{e}")) {
        let entry = entry.unwrap_or_else(|e| panic!("{e}"));
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{e}"));
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_to_an_index_equals_the_model_and_the_source_digest_and_grows_to_three_nodes() {
    let dir = tempdir();
    // No snapshot before the backup: any index of the log can be chosen.
    let options = options().shards(1);
    let node = TallyProcess::start(options.clone()).await;
    let mut history = History::default();
    let skus: Vec<String> = (0..5).map(|i| format!("sku-{i}")).collect();
    for i in 0..40u64 {
        history.set(node.http(), &skus[(i % 5) as usize], i * 3 + 1).await;
    }
    let backup = dir.path().join("backup");
    take_backup(node.http(), &backup).await;
    verify_backup(&backup).unwrap_or_else(|e| panic!("{e}"));

    // Every fourth recorded index: the restore's digest is the source's.
    let indexes: Vec<u64> = history.states.keys().copied().collect();
    for (n, index) in indexes.iter().enumerate().filter(|(n, _)| n % 4 == 1) {
        let data = dir.path().join(format!("restored-{n}"));
        let restored = restore_to(&backup, None, Until::IndexOrEnd(*index), &data, free_addrs(1)[0]);
        assert_eq!(restored[0].index, Some(*index));
        assert_eq!(Some(&restored[0].digest), history.digests.get(index), "digest at index {index}");
    }

    // A restored node serves the model's state at that index, alone.
    let chosen = indexes[indexes.len() / 2];
    let peer = free_addrs(1)[0];
    let data = dir.path().join("restored-node");
    restore_to(&backup, None, Until::IndexOrEnd(chosen), &data, peer);
    let restored = start_restored(&options, &data, peer).await;
    assert_state(restored.http(), &skus, &history.states[&chosen]).await;
    let (status, _, cluster) = restored.http().get("/v1/cluster").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cluster["shards"][0]["voters"], json!([1]), "{cluster}");

    // It grows to three nodes with the membership routes.
    let addrs = free_addrs(4);
    let mut joiners: Vec<TallyProcess> = [(2u64, addrs[0], addrs[1]), (3, addrs[2], addrs[3])]
        .into_iter()
        .map(|(id, http_addr, peer_addr)| TallyProcess::launch_as(&options, id, http_addr, peer_addr, vec![(1, peer)]))
        .collect();
    for joiner in &mut joiners {
        joiner.healthy().await;
        let body = json!({ "node_id": joiner.node_id, "addr": joiner.peer_addr.to_string() });
        let (status, _, answer) = restored.http().post("/v1/admin/learners", body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (status, _, answer) = restored.http().put("/v1/admin/voters", json!({ "voters": [1, 2, 3] })).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, _, cluster) = restored.http().get("/v1/cluster").await;
    assert_eq!(cluster["shards"][0]["voters"], json!([1, 2, 3]), "{cluster}");
    // A write after growing reaches every node; all three agree.
    let (status, _, body) = restored.http().put(&item_path("sku-new", "w1"), json!({ "on_hand": 9 })).await;
    assert!(status.is_success(), "{body}");
    let (index, digest) = digest_of(restored.http(), 0).await;
    for joiner in &joiners {
        eventually("the joiner to catch up", Duration::from_secs(30), async || {
            // A joiner that has applied nothing yet shows no index at all.
            let (status, _, body) = joiner.http().get("/v1/cluster/digests").await;
            let entry = &body["shards"][0];
            let caught_up = status == StatusCode::OK
                && entry["applied_index"].as_u64() == Some(index)
                && entry["digest"].as_str() == Some(digest.as_str());
            caught_up.then_some(())
        })
        .await;
    }
    assert_state(joiners[1].http(), &skus, &history.states[&chosen]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_until_a_log_time_stops_before_later_writes() {
    let dir = tempdir();
    let options = options().shards(1);
    let node = TallyProcess::start(options.clone()).await;
    let mut history = History::default();
    let skus: Vec<String> = (0..3).map(|i| format!("sku-{i}")).collect();
    let mut stamped = Vec::new();
    for (i, sku) in skus.iter().enumerate() {
        let index = history.set(node.http(), sku, 10 + i as u64).await;
        let (_, _, item) = node.http().get(&item_path(sku, "w1")).await;
        stamped.push((index, u64_of(&item, "updated_at_ms")));
        // Log time moves on between the writes.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let backup = dir.path().join("backup");
    take_backup(node.http(), &backup).await;
    let (index, time_ms) = stamped[1];
    assert!(stamped[2].1 > time_ms, "{stamped:?}");
    let restored = restore_to(&backup, None, Until::LogTime(time_ms), &dir.path().join("at-time"), free_addrs(1)[0]);
    assert_eq!(restored[0].index, Some(index));
    assert_eq!(Some(&restored[0].digest), history.digests.get(&index));
    assert_eq!(restored[0].log_time_ms, time_ms);

    // The command line takes the time as RFC 3339.
    let until = rfc3339(time_ms);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["restore", "--from"])
        .arg(&backup)
        .args(["--until", &until, "--data-dir"])
        .arg(dir.path().join("cli"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("index Some({index})")), "{stdout}");
}

/// `ms` since the epoch as RFC 3339 (UTC, milliseconds).
fn rfc3339(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let rest = ms % 86_400_000;
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1_000 % 60,
        rest % 1_000
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_takes_a_restore_past_the_backup() {
    let dir = tempdir();
    let archive = dir.path().join("archive");
    let options = small_log(options().shards(1)).set(
        "backup",
        "archive_dir",
        &serde_json::to_string(&archive.to_string_lossy()).unwrap_or_default(),
    );
    let node = TallyProcess::start(options).await;
    let mut history = History::default();
    let skus: Vec<String> = (0..6).map(|i| format!("sku-{i}")).collect();
    for i in 0..30u64 {
        history.set(node.http(), &skus[(i % 6) as usize], i).await;
    }
    let backup = dir.path().join("backup");
    let taken = take_backup(node.http(), &backup).await;
    let backup_last = taken["shards"][0]["last_index"].as_u64().unwrap_or(0);
    // Many more writes: snapshots purge the log, and the purged segments
    // go to the archive first.
    let mut i = 30u64;
    eventually("segments archived after the backup", Duration::from_secs(120), async || {
        for _ in 0..20 {
            history.set(node.http(), &skus[(i % 6) as usize], i).await;
            i += 1;
        }
        let (_, _, status) = node.http().get("/v1/admin/backup").await;
        let archived = status["archive"][0]["segments_archived"].as_u64().unwrap_or(0);
        let newest_archived = newest_index_archived(&archive.join("shard-00000"));
        (archived > 0 && newest_archived > backup_last).then_some(())
    })
    .await;
    assert!(std::fs::read_dir(archive.join("shard-00000")).map(|d| d.count()).unwrap_or(0) > 0);

    let restored = restore_to(&backup, Some(&archive), Until::End, &dir.path().join("restored"), free_addrs(1)[0]);
    let index = restored[0].index.unwrap_or(0);
    assert!(index > backup_last, "the restore stopped at {index}, the backup's {backup_last}");
    assert_eq!(Some(&restored[0].digest), history.digests.get(&index), "digest at index {index}");
}

/// The last entry index in an archive directory's segments.
fn newest_index_archived(dir: &Path) -> u64 {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.retain(|p| engine::wal::scan::segment_seq(p).is_some());
    paths.sort();
    let from = paths.len().saturating_sub(1);
    engine::wal::scan::scan_segments(&paths[from..], None)
        .ok()
        .and_then(|log| log.entries.last().map(|e| e.log_id.index))
        .unwrap_or(0)
}
