//! Adding and removing nodes online, end to end: three `tally` processes
//! take holds without pause while `tally node add` brings in a fourth (a
//! fresh data directory) and `tally node remove` takes the first out. No
//! acknowledged write fails or is lost, the levels count exactly the
//! acknowledged holds, and the new node holds every shard and answers reads
//! (`replication_factor = 0`). With the default factor (3), a fourth node
//! takes its share of the shards and gives it back.

// Counts and indexes of a few hundred holds; test code, not input.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use engine::testing::sku_on;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const WAREHOUSE: &str = "w1";
const SHARDS: u32 = 4;
const ON_HAND: u64 = 1_000_000;
/// Holds taken before the new node starts: enough that every shard has a
/// snapshot and has purged the log before it, so the new node catches up
/// from a snapshot, then the log.
const HOLDS_BEFORE: u64 = 120;
/// Attempts at one hold (each answered 503, or no answer) before the test
/// calls it failed; the same Idempotency-Key every time.
const HOLD_ATTEMPTS_MAX: u32 = 200;

/// One SKU on each shard, so the holds reach every shard (and each shard
/// has a snapshot before node 4 joins).
fn skus() -> Vec<String> {
    (0..SHARDS).map(|shard| sku_on(shard, SHARDS, "nodes")).collect()
}

/// Hold `n` takes one unit of SKU `n % SHARDS`.
fn hold_sku(n: u64) -> usize {
    (n % u64::from(SHARDS)) as usize
}

fn hold_body(n: u64) -> Value {
    json!({
        "lines": [{ "sku": skus()[hold_sku(n)], "warehouse": WAREHOUSE, "quantity": 1 }],
        "ttl_seconds": 3600,
    })
}

/// Takes hold `n` through `http` until acknowledged: retried with the same
/// Idempotency-Key on a 503 or a lost connection. Answers the reservation
/// id, or why the hold failed.
async fn hold_acknowledged(http: &Http, n: u64) -> Result<String, String> {
    let key = format!("nodes-hold-{n}");
    let body = hold_body(n);
    for _ in 0..HOLD_ATTEMPTS_MAX {
        match http.try_request(Method::POST, "/v1/reservations", &[("Idempotency-Key", &key)], Some(&body)).await {
            Ok((StatusCode::CREATED | StatusCode::OK, _, reservation)) => {
                return Ok(str_of(&reservation, "id").to_owned());
            }
            Ok((StatusCode::SERVICE_UNAVAILABLE, headers, _)) => {
                tokio::time::sleep(testkit::retry_delay(&headers)).await
            }
            Ok((status, _, body)) => return Err(format!("hold {n} via {}: {status} {body}", http.addr())),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Err(format!("hold {n} via {}: still unavailable after {HOLD_ATTEMPTS_MAX} attempts", http.addr()))
}

/// Runs the `tally` CLI with `args`; asserts it succeeds and answers its
/// standard output.
async fn tally_cli(args: Vec<String>) -> Value {
    let run = {
        let args = args.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
                .args(&args)
                .env_remove("TALLY_URL")
                .env_remove("TALLY_API_KEY")
                .output()
        }
    };
    let output = tokio::task::spawn_blocking(run)
        .await
        .unwrap_or_else(|e| panic!("tally {args:?}: {e}"))
        .unwrap_or_else(|e| panic!("running tally {args:?}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tally {args:?}: {}\n{stderr}", output.status);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("tally {args:?} printed no JSON ({e}): {stderr}"))
}

/// Through node 2's HTTP port with the real CLI: adds node 4 (peer port
/// `peer`), then removes node 1, each answered done for every shard.
async fn add_4_and_remove_1(cluster: &TallyCluster, peer: SocketAddr) {
    let via = url(cluster.node(2).http_addr);
    let added =
        tally_cli(["node", "add", "--id", "4", "--addr", &peer.to_string(), "--url", &via].map(str::to_owned).to_vec())
            .await;
    assert_eq!(added["change"]["state"], "done", "{added}");
    assert_eq!(added["change"]["shards_done"], json!(SHARDS), "{added}");
    let fourth_entry = added["nodes"].as_array().and_then(|nodes| nodes.iter().find(|node| node["id"] == 4));
    assert_eq!(fourth_entry.map(|node| node["voter_of"].clone()), Some(json!(SHARDS)), "{added}");

    let removed = tally_cli(["node", "remove", "--id", "1", "--url", &via].map(str::to_owned).to_vec()).await;
    assert_eq!(removed["change"]["state"], "done", "{removed}");
    assert_eq!(removed["change"]["operation"], "remove", "{removed}");
    assert!(removed["nodes"].as_array().is_some_and(|nodes| nodes.iter().all(|node| node["id"] != 1)), "{removed}");
    // /v1/cluster on the node that ran it shows the change too.
    let (status, _, view) = cluster.node(2).http().get("/v1/cluster").await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["membership_change"], removed["change"], "{view}");
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_and_another_leaves_while_holds_go_on() {
    let options = options()
        .shards(SHARDS)
        .snapshot_after_entries(20)
        .set("cluster", "log_entries_kept_after_snapshot", "5")
        .set("cluster", "membership_shard_pause_ms", "50")
        // Every member holds every shard: node 4 joins all of them.
        .set("cluster", "replication_factor", "0");
    let mut cluster = TallyCluster::start(3, options.clone()).await;
    for sku in &skus() {
        let path = item_path(sku, WAREHOUSE);
        let (status, _, item) =
            cluster.http(1).retry(Method::PUT, &path, &[], Some(&json!({ "on_hand": ON_HAND }))).await;
        assert!(status.is_success(), "creating {sku}: {status} {item}");
    }
    let mut acknowledged: BTreeMap<u64, String> = BTreeMap::new();
    for n in 0..HOLDS_BEFORE {
        let id = hold_acknowledged(cluster.http(2), n).await.unwrap_or_else(|e| panic!("{e}"));
        acknowledged.insert(n, id);
    }

    // Every node has purged the start of every shard's log (it follows the
    // snapshot), so node 4 cannot catch up from the log alone.
    for node in cluster.nodes() {
        eventually("every shard's log purged", Duration::from_secs(30), async || {
            let (status, _, view) = node.http().get("/v1/cluster").await;
            let shards = view["shards"].as_array().cloned().unwrap_or_default();
            let purged = status == StatusCode::OK
                && shards.len() == SHARDS as usize
                && shards.iter().all(|shard| shard["purged_index"].as_u64().is_some());
            purged.then_some(())
        })
        .await;
    }

    // Two writers, through nodes 2 and 3 (they stay), for the whole change.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [2u64, 3]
        .into_iter()
        .map(|via| {
            let (http, stop) = (cluster.http(via).clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut done = Vec::new();
                // Writer 2 takes the even numbers after HOLDS_BEFORE, writer 3 the odd.
                let mut n = HOLDS_BEFORE + via % 2;
                while !stop.load(Ordering::Acquire) {
                    done.push((n, hold_acknowledged(&http, n).await));
                    n += 2;
                }
                done
            })
        })
        .collect();

    // Node 4: a fresh data directory; its member list names the voters.
    let addrs = free_addrs(2);
    let members: Vec<(u64, SocketAddr)> = cluster.nodes().iter().map(|node| (node.node_id, node.peer_addr)).collect();
    let mut fourth = TallyProcess::launch_as(&options, 4, addrs[0], addrs[1], members);
    fourth.healthy().await;
    add_4_and_remove_1(&cluster, addrs[1]).await;

    stop.store(true, Ordering::Release);
    let mut failures = Vec::new();
    for writer in writers {
        for (n, result) in writer.await.unwrap_or_else(|e| panic!("writer: {e}")) {
            match result {
                Ok(id) => {
                    acknowledged.insert(n, id);
                }
                Err(error) => failures.push(error),
            }
        }
    }
    assert!(failures.is_empty(), "holds failed during the change: {failures:?}");
    assert!(acknowledged.len() as u64 > HOLDS_BEFORE, "no hold went on during the change");
    cluster.node_mut(1).terminate().await;

    // The new node: a voter of every shard, with 1 gone (it learns the
    // last configuration a heartbeat after the leader), caught up from a
    // snapshot on each (the log it needed was purged).
    eventually("node 4 to see voters [2, 3, 4] and a snapshot on every shard", Duration::from_secs(30), async || {
        let (status, _, view) = fourth.http().get("/v1/cluster").await;
        let shards = view["shards"].as_array().cloned().unwrap_or_default();
        let settled = status == StatusCode::OK
            && shards.len() == SHARDS as usize
            && shards.iter().all(|shard| shard["voters"] == json!([2, 3, 4]) && shard["snapshot_index"].is_u64());
        settled.then_some(())
    })
    .await;
    // Every acknowledged hold is there, read through the new node.
    for (n, id) in &acknowledged {
        let (status, _, reservation) =
            fourth.http().retry(Method::GET, &format!("/v1/reservations/{id}"), &[], None).await;
        assert_eq!(status, StatusCode::OK, "hold {n} ({id}): {reservation}");
        assert_eq!(str_of(&reservation, "state"), "HELD", "hold {n}: {reservation}");
    }
    // The levels count exactly the acknowledged holds, on every node left.
    for (index, sku) in skus().iter().enumerate() {
        let holds = acknowledged.keys().filter(|n| hold_sku(**n) == index).count() as u64;
        for http in [cluster.http(2), cluster.http(3), fourth.http()] {
            let (status, _, item) = http.retry(Method::GET, &item_path(sku, WAREHOUSE), &[], None).await;
            assert_eq!(status, StatusCode::OK, "{sku} via {}: {item}", http.addr());
            assert_eq!((u64_of(&item, "on_hand"), u64_of(&item, "reserved")), (ON_HAND, holds), "{sku}: {item}");
        }
    }
    fourth.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_changes_that_cannot_be_made_answer_stable_codes() {
    let mut node = TallyProcess::start(options().shards(2)).await;
    let http = node.http();
    let own = node.peer_addr.to_string();
    let reply = http.post("/v1/admin/nodes", json!({ "id": 1, "addr": own })).await;
    assert_problem(&reply, StatusCode::CONFLICT, "node_already_member");
    let reply = http.post("/v1/admin/nodes", json!({ "id": 0, "addr": "127.0.0.1:9" })).await;
    assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_membership");
    let reply = http.post("/v1/admin/nodes", json!({ "id": 5, "addr": "no-port" })).await;
    assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_membership");
    let reply = http.delete("/v1/admin/nodes/9", Value::Null).await;
    assert_problem(&reply, StatusCode::NOT_FOUND, "node_not_member");
    let reply = http.delete("/v1/admin/nodes/one", Value::Null).await;
    assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_path");
    let reply = http.delete("/v1/admin/nodes/1", Value::Null).await;
    assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_membership");
    let (status, _, nodes) = http.get("/v1/admin/nodes").await;
    assert_eq!(status, StatusCode::OK, "{nodes}");
    assert_eq!(nodes["change"], Value::Null, "a refused change was recorded: {nodes}");
    assert_eq!(nodes["nodes"], json!([{ "id": 1, "addr": own, "voter_of": 2, "learner_of": 0 }]), "{nodes}");

    // One change at a time: node 5 never answers, so its addition runs on.
    let (status, _, started) = http.post("/v1/admin/nodes", json!({ "id": 5, "addr": "127.0.0.1:9" })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["change"]["state"], "running", "{started}");
    let reply = http.post("/v1/admin/nodes", json!({ "id": 6, "addr": "127.0.0.1:9" })).await;
    assert_problem(&reply, StatusCode::CONFLICT, "membership_change_in_progress");
    node.terminate().await;
}

/// Shards whose placement, as `view` (`GET /v1/cluster`) shows it, has
/// `node` among the voters.
fn placed_on(view: &Value, node: u64) -> Vec<u64> {
    let placement = view["placement"].as_array().cloned().unwrap_or_default();
    let on = placement.iter().filter(|shard| shard["voters"].as_array().is_some_and(|v| v.contains(&json!(node))));
    on.filter_map(|shard| shard["shard"].as_u64()).collect()
}

/// With the default `replication_factor` (3), `tally node add` gives a
/// fourth node its share of the shards, not all of them, and every node
/// takes the new placement; `tally node remove` moves that share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_three_copies_a_fourth_node_takes_its_share_and_gives_it_back() {
    const PLACED_SHARDS: u32 = 6;
    let options = options().shards(PLACED_SHARDS).set("cluster", "membership_shard_pause_ms", "50");
    let cluster = TallyCluster::start(3, options.clone()).await;
    let skus: Vec<String> = (0..PLACED_SHARDS).map(|shard| sku_on(shard, PLACED_SHARDS, "placed")).collect();
    for sku in &skus {
        let path = item_path(sku, WAREHOUSE);
        let (status, _, item) = cluster.http(1).retry(Method::PUT, &path, &[], Some(&json!({ "on_hand": 7 }))).await;
        assert!(status.is_success(), "creating {sku}: {status} {item}");
    }
    let addrs = free_addrs(2);
    let members: Vec<(u64, SocketAddr)> = cluster.nodes().iter().map(|node| (node.node_id, node.peer_addr)).collect();
    let mut fourth = TallyProcess::launch_as(&options, 4, addrs[0], addrs[1], members);
    fourth.healthy().await;
    let via = url(cluster.node(2).http_addr);
    let peer = addrs[1].to_string();
    let added =
        tally_cli(["node", "add", "--id", "4", "--addr", &peer, "--url", &via].map(str::to_owned).to_vec()).await;
    assert_eq!(added["change"]["state"], "done", "{added}");

    // Six shards, three copies, four nodes: node 4 holds four or five, and
    // every node shows the same placement.
    let (status, _, view) = fourth.http().get("/v1/cluster").await;
    assert_eq!((status, view["replication_factor"].clone()), (StatusCode::OK, json!(3)), "{view}");
    let share = placed_on(&view, 4);
    assert!((4..=5).contains(&share.len()), "node 4's share: {share:?} in {view}");
    let hosted: Vec<u64> =
        view["shards"].as_array().into_iter().flatten().filter_map(|s| s["shard"].as_u64()).collect();
    assert_eq!(hosted, share, "node 4 hosts its share: {view}");
    for node in 1..=3 {
        let (_, _, other) = cluster.http(node).get("/v1/cluster").await;
        assert_eq!(
            other["placement"].as_array().map(|p| p.iter().map(|s| s["voters"].clone()).collect::<Vec<_>>()),
            view["placement"].as_array().map(|p| p.iter().map(|s| s["voters"].clone()).collect::<Vec<_>>()),
            "node {node}'s placement"
        );
    }
    // Node 4 reads every shard: its own, and the others through their hosts.
    for sku in &skus {
        let (status, _, item) = fourth.http().retry(Method::GET, &item_path(sku, WAREHOUSE), &[], None).await;
        assert_eq!((status, u64_of(&item, "on_hand")), (StatusCode::OK, 7), "{sku} via node 4: {item}");
    }

    let via = url(cluster.node(1).http_addr);
    let removed = tally_cli(["node", "remove", "--id", "4", "--url", &via].map(str::to_owned).to_vec()).await;
    assert_eq!(removed["change"]["state"], "done", "{removed}");
    let (_, _, view) = fourth.http().get("/v1/cluster").await;
    assert_eq!(view["shards"], json!([]), "node 4 gave its shards back: {view}");
    let (_, _, view) = cluster.http(1).get("/v1/cluster").await;
    assert!(placed_on(&view, 4).is_empty(), "node 1's placement still names node 4: {view}");
    for sku in &skus {
        let (status, _, item) = cluster.http(3).retry(Method::GET, &item_path(sku, WAREHOUSE), &[], None).await;
        assert_eq!((status, u64_of(&item, "on_hand")), (StatusCode::OK, 7), "{sku} via node 3: {item}");
    }
    fourth.terminate().await;
}
