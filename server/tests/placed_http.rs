//! A placed cluster of real `tally` processes (docs/SCALE-OUT.md §7 step 3):
//! five nodes, five shards, each shard on three nodes
//! (`cluster.replication_factor = 3`). `/v1/cluster` says where every shard
//! lives; every node answers every route for every shard, holding some
//! and reaching the rest through the nodes that hold them; writes go on
//! when a node stops; the operations that need every shard on one node say
//! so with a stable code.

// Shard and node numbers are small; test code, not input.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const NODES: u64 = 5;
const SHARDS: u32 = 5;
const REPLICAS: u64 = 3;
/// Enough SKUs that every shard holds some.
const SKUS: usize = 20;
const WAREHOUSE: &str = "w1";
const SETTLE: Duration = Duration::from_secs(30);

fn sku(n: usize) -> String {
    format!("placed-{n}")
}

/// Items a listing through `http` shows, following every page.
async fn listed(http: &Http) -> usize {
    let mut count = 0;
    let mut path = "/v1/items?limit=100".to_owned();
    loop {
        let (status, _, page) = http.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        count += page["items"].as_array().map_or(0, Vec::len);
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/items?limit=100&cursor={cursor}"),
            None => return count,
        }
    }
}

async fn start() -> TallyCluster {
    let options = options().shards(SHARDS).set("cluster", "replication_factor", &REPLICAS.to_string());
    let cluster = TallyCluster::start(NODES, options).await;
    for via in 1..=NODES {
        eventually(&format!("node {via} is ready"), SETTLE, async || {
            (cluster.http(via).get("/readyz").await.0 == StatusCode::OK).then_some(())
        })
        .await;
    }
    cluster
}

/// Every node shows the same placement: three voters per shard, the
/// groups it hosts with exactly those voters, and hosted flags that match.
async fn check_placement(cluster: &TallyCluster) {
    let mut placements = BTreeSet::new();
    for via in 1..=NODES {
        let (status, _, view) = cluster.http(via).get("/v1/cluster").await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["replication_factor"].as_u64(), Some(REPLICAS), "{view}");
        let placement = view["placement"].as_array().unwrap_or_else(|| panic!("no placement in {view}"));
        assert_eq!(placement.len(), SHARDS as usize, "{view}");
        let hosted: Vec<u64> = view["shards"]
            .as_array()
            .map_or_else(Vec::new, |shards| shards.iter().map(|shard| u64_of(shard, "shard")).collect());
        assert_eq!(hosted.len(), REPLICAS as usize, "node {via} hosts three of the five shards: {view}");
        for place in placement {
            let voters = place["voters"].as_array().map_or(0, Vec::len);
            assert_eq!(voters as u64, REPLICAS, "{place}");
            let here = place["voters"].as_array().is_some_and(|v| v.contains(&json!(via)));
            assert_eq!(place["hosted"].as_bool(), Some(here), "node {via}: {place}");
            assert_eq!(hosted.contains(&u64_of(place, "shard")), here, "node {via}: {place}");
        }
        for shard in view["shards"].as_array().into_iter().flatten() {
            let at = u64_of(shard, "shard") as usize;
            assert_eq!(shard["voters"], placement[at]["voters"], "node {via}: the group's voters are the placed ones");
        }
        placements.insert(placement.iter().map(|s| s["voters"].to_string()).collect::<Vec<_>>());
    }
    assert_eq!(placements.len(), 1, "every node computes the same placement: {placements:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_serves_every_shard_of_a_placed_cluster() {
    let mut cluster = start().await;
    check_placement(&cluster).await;

    // Create through each node in turn; every node reads each item.
    for n in 0..SKUS {
        let via = 1 + n as u64 % NODES;
        let reply = cluster
            .http(via)
            .retry(Method::PUT, &item_path(&sku(n), WAREHOUSE), &[], Some(&json!({ "on_hand": 10 })))
            .await;
        assert!(reply.0.is_success(), "{}: {} {}", sku(n), reply.0, reply.2);
    }
    for via in 1..=NODES {
        for n in 0..SKUS {
            let (status, _, item) = cluster.http(via).get(&item_path(&sku(n), WAREHOUSE)).await;
            assert_eq!((status, u64_of(&item, "on_hand")), (StatusCode::OK, 10), "node {via}, {}: {item}", sku(n));
        }
        assert_eq!(listed(cluster.http(via)).await, SKUS, "node {via} lists every shard's items");
    }

    // Hold through one node, confirm through another, read through a third;
    // a hold over every shard at once (the saga) too.
    let lines: Vec<Value> =
        (0..SKUS).map(|n| json!({ "sku": sku(n), "warehouse": WAREHOUSE, "quantity": 1 })).collect();
    for via in 1..=NODES {
        let (status, _, held) =
            cluster.http(via).post("/v1/reservations", json!({ "lines": lines, "ttl_seconds": 600 })).await;
        assert_eq!(status, StatusCode::CREATED, "node {via}: {held}");
        let id = str_of(&held, "id").to_owned();
        let confirmer = cluster.http(1 + via % NODES);
        end_reservation(confirmer, &id, "confirm").await;
        let (status, _, seen) = cluster.http(1 + (via + 1) % NODES).get(&format!("/v1/reservations/{id}")).await;
        assert_eq!((status, seen["state"].as_str()), (StatusCode::OK, Some("CONFIRMED")), "{seen}");
    }
    let asks: Vec<Value> = (0..SKUS).map(|n| json!({ "sku": sku(n), "warehouse": WAREHOUSE, "quantity": 5 })).collect();
    for via in 1..=NODES {
        let (status, _, answer) = cluster.http(via).post("/v1/availability", json!({ "lines": asks })).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["all_available"], true, "5 of 10 sold, 5 left everywhere: {answer}");
    }

    // A node stops: every write through the others still succeeds.
    cluster.node_mut(2).kill_9();
    for n in 0..SKUS {
        let via = [1, 3, 4, 5][n % 4];
        let body = json!({ "lines": [{ "sku": sku(n), "warehouse": WAREHOUSE, "quantity": 1 }], "ttl_seconds": 600 });
        let key = format!("placed-after-kill-{n}");
        let reply =
            cluster.http(via).retry(Method::POST, "/v1/reservations", &[("idempotency-key", &key)], Some(&body)).await;
        assert_eq!(reply.0, StatusCode::CREATED, "node {via}, {}: {}", sku(n), reply.2);
    }
    for n in 0..SKUS {
        let reader = [3, 4, 5, 1][n % 4];
        let (status, _, item) =
            cluster.http(reader).retry(Method::GET, &item_path(&sku(n), WAREHOUSE), &[], None).await;
        assert_eq!((status, u64_of(&item, "reserved")), (StatusCode::OK, 1), "{}: {item}", sku(n));
    }
}

/// Nodes that together host every shard, by the placement `view` shows
/// (`GET /v1/cluster`): each shard's first voter not already taken.
fn covering_nodes(view: &Value) -> Vec<u64> {
    let mut chosen: Vec<u64> = Vec::new();
    for shard in view["placement"].as_array().into_iter().flatten() {
        let voters: Vec<u64> = shard["voters"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
        if !voters.iter().any(|voter| chosen.contains(voter)) {
            chosen.push(voters[0]);
        }
    }
    chosen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_backups_of_nodes_that_host_every_shard_restore_one_whole_node() {
    let cluster = start().await;
    for n in 0..SKUS {
        let body = json!({ "on_hand": 10 + n as u64 });
        let (status, _, item) =
            cluster.http(1).retry(Method::PUT, &item_path(&sku(n), WAREHOUSE), &[], Some(&body)).await;
        assert!(status.is_success(), "{}: {status} {item}", sku(n));
    }
    let (_, _, view) = cluster.http(1).get("/v1/cluster").await;
    let nodes = covering_nodes(&view);
    assert!(nodes.len() >= 2, "no node hosts every shard of a placed cluster: {nodes:?}");
    // Each node backs up the shards it hosts, three of five.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut backups = Vec::new();
    for node in &nodes {
        let to = dir.path().join(format!("backup-{node}"));
        let (status, _, body) =
            cluster.http(*node).post("/v1/admin/backup", json!({ "to": to.to_string_lossy() })).await;
        assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("done")), "node {node}: {body}");
        let verified = server::backup::verify::verify_backup(&to).unwrap_or_else(|e| panic!("verify node {node}: {e}"));
        assert_eq!(verified.manifest.shards.len(), REPLICAS as usize, "node {node} backs up the shards it hosts");
        backups.push(to);
    }
    // One node's backup alone lacks shards; all of them restore every one.
    let peer = free_addrs(1)[0];
    let request =
        |from: Vec<std::path::PathBuf>, data_dir: std::path::PathBuf| server::backup::restore::RestoreRequest {
            from,
            archive: None,
            until: server::backup::Until::End,
            data_dir,
            node_id: 1,
            peer_addr: peer.to_string(),
        };
    let partial = server::backup::restore::restore(&request(backups[..1].to_vec(), dir.path().join("partial")));
    assert!(partial.is_err_and(|e| e.to_string().contains("in none of the backups")), "one node's backup restored");
    let data_dir = dir.path().join("restored");
    let restored = server::backup::restore::restore(&request(backups.clone(), data_dir.clone()))
        .unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(restored.len(), SHARDS as usize);
    let options = options().shards(SHARDS).data_dir(&data_dir);
    let mut node = TallyProcess::launch_as(&options, 1, free_addrs(1)[0], peer, vec![(1, peer)]);
    node.ready().await;
    for n in 0..SKUS {
        let (status, _, item) = node.http().get(&item_path(&sku(n), WAREHOUSE)).await;
        assert_eq!((status, u64_of(&item, "on_hand")), (StatusCode::OK, 10 + n as u64), "{}: {item}", sku(n));
    }
    node.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_needs_every_shard_on_one_node_says_so() {
    let cluster = start().await;
    let http = cluster.http(1);
    // The operations that set every shard's members at once would put
    // every shard on every node; node add and remove move replicas by the
    // placement instead (`cluster/tests/mover.rs`).
    let reply = http.post("/v1/admin/learners", json!({ "node_id": 6, "addr": "127.0.0.1:9" })).await;
    assert_problem(&reply, StatusCode::CONFLICT, "cluster_is_placed");
    let reply = http.request(Method::PUT, "/v1/admin/voters", &[], Some(&json!({ "voters": [1, 2, 3] }))).await;
    assert_problem(&reply, StatusCode::CONFLICT, "cluster_is_placed");
    // A node the map does not hold is no member; one it holds is.
    let reply = http.request(Method::DELETE, "/v1/admin/nodes/9", &[], None).await;
    assert_problem(&reply, StatusCode::NOT_FOUND, "node_not_member");
    let reply = http.post("/v1/admin/nodes", json!({ "id": 5, "addr": "127.0.0.1:9" })).await;
    assert_problem(&reply, StatusCode::CONFLICT, "node_already_member");
}
