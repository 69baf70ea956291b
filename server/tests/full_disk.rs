//! A real full disk under the real binary: the node's data directory is a
//! small tmpfs, filled with holds until the WAL's write fails with ENOSPC.
//! Then the shard answers 503 (never 201), `/readyz` and `/metrics` say
//! `no_space` for it, and once space is back a restart recovers every hold
//! that was acknowledged.
//!
//! Mounting needs root and a kernel that lets this process mount (not every
//! container does). Where it cannot, the test says why and skips, unless
//! `FULL_DISK_TEST_REQUIRED=1` (CI sets it when it runs as root), when it
//! fails instead. (Not a `TALLY_*` variable: the server reads every one of
//! those as a setting.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use engine::testing::sku_on;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// Size of the file system the node's data lives on.
const DISK_BYTES: u64 = 8 << 20;
/// What the filler leaves free for the node: its WAL segments' headers, then
/// holds until the disk is full.
const HEADROOM_BYTES: u64 = 1 << 20;
/// Holds per batch request: the disk fills in a few dozen requests.
const BATCH: usize = 200;
/// A guard against a disk that never fills (a broken mount): far more
/// batches than `HEADROOM_BYTES` can take.
const BATCHES_MAX: usize = 1_000;
const SHARDS: u32 = 2;
const WAREHOUSE: &str = "w1";
const ON_HAND: u64 = 1_000_000_000;

/// A tmpfs of `DISK_BYTES` mounted on a fresh directory; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts it, or says why it cannot.
    fn mount() -> Result<SmallDisk, String> {
        let dir = tempfile::Builder::new().prefix("tally-full-disk-").tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let size = format!("size={DISK_BYTES}");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tally-full-disk"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}; this test needs root and a kernel that lets it mount",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there does not keep the
        // mount (or this test) alive.
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn required() -> bool {
    std::env::var("FULL_DISK_TEST_REQUIRED").is_ok_and(|value| value == "1")
}

/// Writes `bytes` of zeros to `path` and syncs it.
fn fill(path: &PathBuf, bytes: u64) {
    let chunk = vec![0u8; 64 << 10];
    let mut file = std::fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let mut written = 0;
    while written < bytes {
        let len = usize::try_from((bytes - written).min(chunk.len() as u64)).unwrap_or(chunk.len());
        std::io::Write::write_all(&mut file, &chunk[..len]).unwrap_or_else(|e| panic!("filling: {e}"));
        written += len as u64;
    }
    file.sync_all().unwrap_or_else(|e| panic!("syncing the filler: {e}"));
}

/// What one batch's results said.
#[derive(Default)]
struct Answers {
    /// Reservation ids answered 201: they must survive.
    acked: Vec<String>,
    /// Problem codes of the holds that were not acknowledged.
    refused: Vec<String>,
}

async fn send_batch(http: &Http, sku: &str, first: usize, answers: &mut Answers) {
    let requests: Vec<Value> = (first..first + BATCH)
        .map(|n| {
            json!({
                "lines": [{ "sku": sku, "warehouse": WAREHOUSE, "quantity": 1 }],
                "ttl_seconds": 3_600,
                "idempotency_key": format!("full-disk-{n}"),
            })
        })
        .collect();
    let (status, _, body) = http
        .request(Method::POST, "/v1/reservations/batch?view=compact", &[], Some(&json!({ "requests": requests })))
        .await;
    if status != StatusCode::OK {
        // The whole request failed (the node's answer, not a hold's).
        answers.refused.push(body["code"].as_str().unwrap_or("no code").to_owned());
        return;
    }
    for result in body["results"].as_array().unwrap_or_else(|| panic!("no results: {body}")) {
        match result["status"].as_u64() {
            Some(201) => answers.acked.push(str_of(result, "id").to_owned()),
            Some(503) => answers.refused.push(str_of(result, "code").to_owned()),
            _ => panic!("a hold answered neither 201 nor 503: {result}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_shard_and_a_restart_loses_no_acknowledged_hold() {
    let disk = match SmallDisk::mount() {
        Ok(disk) => disk,
        Err(reason) if required() => panic!("FULL_DISK_TEST_REQUIRED=1, but {reason}"),
        Err(reason) => {
            eprintln!("SKIPPED a_full_disk_stops_the_shard_and_a_restart_loses_no_acknowledged_hold: {reason}");
            return;
        }
    };
    let filler = disk.path().join("filler");
    fill(&filler, DISK_BYTES - HEADROOM_BYTES);
    let data = disk.path().join("data");
    let mut node = TallyProcess::start(options().shards(SHARDS).data_dir(&data)).await;
    let http = node.client();
    let sku = sku_on(0, SHARDS, "full-disk");
    let (status, _, body) = http.put(&item_path(&sku, WAREHOUSE), json!({ "on_hand": ON_HAND })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Holds until the disk is full: the first hold that is not
    // acknowledged is the one whose write found no space.
    let mut answers = Answers::default();
    let mut batches = 0;
    while answers.refused.is_empty() {
        assert!(batches < BATCHES_MAX, "{} holds acknowledged and the disk is not full", answers.acked.len());
        send_batch(&http, &sku, batches * BATCH, &mut answers).await;
        batches += 1;
    }
    assert!(!answers.acked.is_empty(), "the disk was full before the first hold: {:?}", answers.refused);
    // Nothing is acknowledged once the shard stopped.
    send_batch(&http, &sku, batches * BATCH, &mut answers).await;
    let codes: std::collections::BTreeSet<&str> = answers.refused.iter().map(String::as_str).collect();
    assert!(codes.iter().all(|code| ["outcome_unknown", "shard_stopped"].contains(code)), "{codes:?}");
    assert!(codes.contains("shard_stopped"), "later holds are refused as shard_stopped: {codes:?}");

    let ready = http.get("/readyz").await;
    assert_problem(&ready, StatusCode::SERVICE_UNAVAILABLE, "shard_stopped");
    let stopped = ready.2["stopped_shards"].as_array().unwrap_or_else(|| panic!("no stopped_shards: {}", ready.2));
    assert_eq!(stopped.len(), 1, "{}", ready.2);
    assert_eq!(
        (stopped[0]["shard"].as_u64(), stopped[0]["cause"].as_str()),
        (Some(0), Some("no_space")),
        "{}",
        ready.2
    );
    let (_, _, metrics) = http.get("/metrics").await;
    let text = metrics.as_str().unwrap_or_else(|| panic!("metrics are not text: {metrics}"));
    assert!(text.contains("tally_shard_stopped{shard=\"0\",cause=\"no_space\"} 1"), "{text}");

    // Space returns; a restart recovers every acknowledged hold.
    std::fs::remove_file(&filler).unwrap_or_else(|e| panic!("removing the filler: {e}"));
    node.restart().await;
    let http = node.client();
    for id in &answers.acked {
        let (status, _, reservation) = http.retry(Method::GET, &format!("/v1/reservations/{id}"), &[], None).await;
        assert_eq!(status, StatusCode::OK, "acknowledged hold {id} is lost: {reservation}");
        assert_eq!(str_of(&reservation, "state"), "HELD", "{reservation}");
    }
    let (_, _, item) = http.retry(Method::GET, &item_path(&sku, WAREHOUSE), &[], None).await;
    let reserved = u64_of(&item, "reserved");
    let acked = answers.acked.len() as u64;
    // Holds answered `outcome_unknown` may have reached the disk whole.
    let unknown = answers.refused.iter().filter(|code| *code == "outcome_unknown").count() as u64;
    assert!(
        (acked..=acked + unknown).contains(&reserved),
        "reserved {reserved}: {acked} acknowledged, {unknown} unknown"
    );
    let ready = http.get("/readyz").await;
    assert_eq!(ready.0, StatusCode::OK, "{}", ready.2);
    // And the shard takes holds again.
    let held = http
        .post("/v1/reservations", json!({ "lines": [{ "sku": sku, "warehouse": WAREHOUSE, "quantity": 1 }] }))
        .await;
    assert_eq!(held.0, StatusCode::CREATED, "{}", held.2);
    node.kill_9();
    drop(disk);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
