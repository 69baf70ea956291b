//! A shard whose WAL fails, as HTTP clients and operators see it: the write
//! in flight answers 503 (never 201), later requests for the shard answer
//! 503 `shard_stopped` naming it and the cause, `/readyz` says which shard
//! stopped and why, `/metrics` has `tally_shard_stopped{shard,cause}`, and
//! the other shards go on serving.
//!
//! The server runs in this process so the test can make the next fsync of
//! one shard's WAL fail (`Node::inject_fsync_failure`, a test-only hook);
//! `full_disk.rs` fills a real disk under the real binary.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use engine::testing::sku_on;
use hyper::StatusCode;
use serde_json::{Value, json};
use server::app::AppState;
use server::config::Config;

const SHARDS: u32 = 2;

/// One node served in this process, and a client of it.
struct InProcess {
    state: Arc<AppState>,
    http: Http,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start() -> InProcess {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let addrs = free_addrs(1);
        let peer = addrs[0].to_string();
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.cluster.node_id = 1;
        config.cluster.listen = peer.clone();
        config.cluster.members = vec![cluster::Member { id: 1, addr: peer }];
        config.cluster.shards = SHARDS;
        config.cluster.data_dir = dir.path().join("data");
        config.cluster.shard_threads = 1;
        config.cluster.heartbeat_ms = 50;
        config.cluster.election_timeout_min_ms = 150;
        config.cluster.election_timeout_max_ms = 300;
        let running = server::app::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
        let state = Arc::clone(&running.state);
        let http = Http::new(running.addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(running.serve(async move {
            let _ = stopped.await;
        }));
        let process = InProcess { state, http, stop: Some(stop), _dir: dir };
        eventually("the node is ready", READY_WAIT_MAX, async || {
            let (status, _, _) = process.http.get("/readyz").await;
            (status == StatusCode::OK).then_some(())
        })
        .await;
        process
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn hold_body(sku: &str) -> Value {
    json!({ "lines": [{ "sku": sku, "warehouse": "w1", "quantity": 1 }], "ttl_seconds": 600 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_answers_503_and_readyz_and_metrics_name_the_shard_and_cause() {
    let node = InProcess::start().await;
    let http = &node.http;
    let (failing, healthy) = (sku_on(0, SHARDS, "disk"), sku_on(1, SHARDS, "disk"));
    for sku in [&failing, &healthy] {
        let (status, _, body) =
            http.retry(hyper::Method::PUT, &item_path(sku, "w1"), &[], Some(&json!({ "on_hand": 10 }))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    node.state.node.inject_fsync_failure(0);
    // The hold whose fsync fails: 503, never 201. It was written before its
    // sync failed, so whether it survives is not known: `outcome_unknown`.
    let in_flight = http.post_with("/v1/reservations", hold_body(&failing), &[("Idempotency-Key", "k-1")]).await;
    assert_problem(&in_flight, StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown");
    let detail = str_of(&in_flight.2, "detail");
    assert!(detail.contains("shard 0 stopped (fsync_error)"), "{detail}");

    // Later requests for the shard: refused at once, saying which and why.
    let later = http.post_with("/v1/reservations", hold_body(&failing), &[("Idempotency-Key", "k-2")]).await;
    assert_problem(&later, StatusCode::SERVICE_UNAVAILABLE, "shard_stopped");
    assert_eq!((later.2["shard"].as_u64(), later.2["cause"].as_str()), (Some(0), Some("fsync_error")), "{}", later.2);
    assert!(later.1.get("retry-after").is_some(), "503 says when to retry: {:?}", later.1);
    let read = http.get(&item_path(&failing, "w1")).await;
    assert_problem(&read, StatusCode::SERVICE_UNAVAILABLE, "shard_stopped");

    // /readyz names the shard and the cause.
    let ready = http.get("/readyz").await;
    assert_problem(&ready, StatusCode::SERVICE_UNAVAILABLE, "shard_stopped");
    let stopped = ready.2["stopped_shards"].as_array().unwrap_or_else(|| panic!("no stopped_shards: {}", ready.2));
    assert_eq!(stopped.len(), 1, "{}", ready.2);
    assert_eq!((stopped[0]["shard"].as_u64(), stopped[0]["cause"].as_str()), (Some(0), Some("fsync_error")));
    assert!(str_of(&stopped[0], "detail").contains("fdatasync"), "{}", ready.2);
    assert!(str_of(&ready.2, "detail").contains("shard 0 (fsync_error"), "{}", ready.2);

    // /metrics has it, and /v1/cluster shows it.
    let (status, _, metrics) = http.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().unwrap_or_else(|| panic!("metrics are not text: {metrics}"));
    assert!(text.contains("tally_shard_stopped{shard=\"0\",cause=\"fsync_error\"} 1"), "{text}");
    assert!(text.contains("tally_shards_stopped 1"), "{text}");
    let (_, _, cluster) = http.get("/v1/cluster").await;
    assert_eq!(cluster["shards"][0]["stopped"]["cause"], "fsync_error", "{cluster}");
    assert_eq!(cluster["shards"][0]["role"], "Stopped", "{cluster}");
    assert_eq!(cluster["shards"][1]["stopped"], Value::Null, "{cluster}");

    // The other shard still serves.
    let held = http.post("/v1/reservations", hold_body(&healthy)).await;
    assert_eq!(held.0, StatusCode::CREATED, "{}", held.2);
    // Let the node's shutdown run before the test's runtime ends.
    drop(node);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_finds_a_corrupt_name_answers_503_and_stops_the_shard() {
    let node = InProcess::start().await;
    let http = &node.http;
    let (broken, healthy) = (sku_on(0, SHARDS, "arena"), sku_on(1, SHARDS, "arena"));
    for sku in [&broken, &healthy] {
        let (status, _, body) =
            http.retry(hyper::Method::PUT, &item_path(sku, "w1"), &[], Some(&json!({ "on_hand": 10 }))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, _, held) = http.post("/v1/reservations", hold_body(&broken)).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    let id = str_of(&held, "id").to_owned();

    // A bug points the item's SKU outside the shard's arena.
    node.state.node.inject_broken_invariant(0, engine::actor::BreakInvariant::SkuOutsideArena).await;
    // The hold names it: reading it back is an error, not an empty SKU.
    let read = http.get(&format!("/v1/reservations/{id}")).await;
    assert_problem(&read, StatusCode::SERVICE_UNAVAILABLE, "shard_stopped");
    assert_eq!(read.2["cause"], "invariant_broken", "{}", read.2);
    assert!(str_of(&read.2, "detail").contains("outside the"), "{}", read.2);

    // The shard stopped: nothing more through this node, and /readyz says so.
    let later = http.post("/v1/reservations", hold_body(&broken)).await;
    assert_problem(&later, StatusCode::SERVICE_UNAVAILABLE, "shard_stopped");
    let ready = http.get("/readyz").await;
    assert_problem(&ready, StatusCode::SERVICE_UNAVAILABLE, "shard_stopped");
    assert_eq!(ready.2["stopped_shards"][0]["cause"], "invariant_broken", "{}", ready.2);
    let held = http.post("/v1/reservations", hold_body(&healthy)).await;
    assert_eq!(held.0, StatusCode::CREATED, "the other shard serves: {}", held.2);
    drop(node);
    tokio::time::sleep(Duration::from_millis(100)).await;
}
