//! A 3-node cluster of real `tally` processes, driven over HTTP only: any
//! node takes any request (the client never looks for leaders), every node
//! reads the same levels, writes go on when one node is killed, and the
//! killed node catches up when it comes back. The nodes authenticate each
//! other with a secret from the environment, which no log shows.

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// Several SKUs, so the items most likely spread over several shards and so
/// over several leaders.
const SKUS: [&str; 6] = ["cluster-a", "cluster-b", "cluster-c", "cluster-d", "cluster-e", "cluster-f"];
const WAREHOUSE: &str = "w1";
const SHARDS: u32 = 4;
const ON_HAND: u64 = 50;
/// The nodes' shared peer secret (`TALLY_CLUSTER__SECRET`).
const CLUSTER_SECRET: &str = "cluster-http-test-secret-0123456789";
/// Guard on a restarted node's catch-up; it normally takes well under this.
const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(30);

/// The part of an item every replica must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Levels {
    on_hand: u64,
    reserved: u64,
    available: u64,
    version: u64,
}

impl Levels {
    fn of(item: &Value) -> Levels {
        Levels {
            on_hand: u64_of(item, "on_hand"),
            reserved: u64_of(item, "reserved"),
            available: u64_of(item, "available"),
            version: u64_of(item, "version"),
        }
    }

    /// `(on_hand, reserved, available)`.
    fn stock(&self) -> (u64, u64, u64) {
        (self.on_hand, self.reserved, self.available)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_node_serves_any_request_and_a_killed_node_catches_up() {
    // The nodes authenticate each other with a secret from the environment.
    let options = options().shards(SHARDS).env("TALLY_CLUSTER__SECRET", CLUSTER_SECRET);
    let mut cluster = TallyCluster::start(3, options).await;
    check_cluster_view(&cluster, &[1, 2, 3]).await;

    // Create through node 1, hold through nodes 2 and 3, confirm the first
    // hold through node 3 and keep the second held.
    let mut held_by_3 = Vec::new();
    for sku in SKUS {
        let (status, _, item) = cluster
            .http(1)
            .retry(Method::PUT, &item_path(sku, WAREHOUSE), &[], Some(&json!({ "on_hand": ON_HAND })))
            .await;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "creating {sku} via node 1: {status} {item}"
        );
        let via_2 = hold(cluster.http(2), &format!("before-kill-2-{sku}"), sku, 2).await;
        let via_3 = hold(cluster.http(3), &format!("before-kill-3-{sku}"), sku, 3).await;
        end_reservation(cluster.http(3), &via_2, "confirm").await;
        held_by_3.push(via_3);
    }
    for sku in SKUS {
        let levels = same_levels_on(&cluster, &[1, 2, 3], sku).await;
        assert_eq!(levels.stock(), (ON_HAND - 2, 3, ON_HAND - 5), "{sku}: on_hand, reserved, available");
    }
    for (sku, id) in SKUS.iter().zip(&held_by_3) {
        for via in [1, 2, 3] {
            let (status, _, reservation) =
                cluster.http(via).retry(Method::GET, &format!("/v1/reservations/{id}"), &[], None).await;
            assert_eq!(status, StatusCode::OK, "{sku}: reservation {id} via node {via}: {reservation}");
            assert_eq!(str_of(&reservation, "state"), "HELD", "via node {via}: {reservation}");
            assert_lines(&reservation, &[(sku, WAREHOUSE, 3)]);
        }
    }

    // Node 1 (the preferred leader of some shards) dies without a word.
    // The other two still take writes: a hold through node 2, and the
    // confirm of node 3's hold through node 3.
    cluster.node_mut(1).kill_9();
    let mut held_by_2 = Vec::new();
    for (sku, id) in SKUS.iter().zip(&held_by_3) {
        held_by_2.push(hold(cluster.http(2), &format!("after-kill-2-{sku}"), sku, 1).await);
        end_reservation(cluster.http(3), id, "confirm").await;
    }
    let mut levels_before_restart = Vec::new();
    for sku in SKUS {
        let levels = same_levels_on(&cluster, &[2, 3], sku).await;
        assert_eq!(
            levels.stock(),
            (ON_HAND - 5, 1, ON_HAND - 6),
            "{sku} with node 1 down: on_hand, reserved, available"
        );
        levels_before_restart.push(levels);
    }

    // Node 1 comes back on its data directory and catches up: its own copy
    // (a stale read, served locally) reaches what the others agreed on.
    cluster.node_mut(1).restart().await;
    for (sku, levels) in SKUS.iter().zip(&levels_before_restart) {
        let path = format!("{}?consistency=stale", item_path(sku, WAREHOUSE));
        let http = cluster.http(1);
        eventually(&format!("node 1's stale read of {sku} reaches {levels:?}"), CATCH_UP_WAIT_MAX, async || {
            let (status, _, item) = http.get(&path).await;
            (status == StatusCode::OK && Levels::of(&item) == *levels).then_some(())
        })
        .await;
        assert_eq!(same_levels_on(&cluster, &[1, 2, 3], sku).await, *levels, "{sku} after node 1 restarted");
    }
    check_cluster_view(&cluster, &[1, 2, 3]).await;

    // And node 1 takes writes again: it releases node 2's hold.
    for (sku, id) in SKUS.iter().zip(&held_by_2) {
        end_reservation(cluster.http(1), id, "release").await;
        let levels = same_levels_on(&cluster, &[1, 2, 3], sku).await;
        assert_eq!(levels.stock(), (ON_HAND - 5, 0, ON_HAND - 5), "{sku} after the release through node 1");
    }

    // The replicas converged: once all three applied the same index of a
    // shard, their digests of it are equal.
    eventually("the three nodes' digests agree", CATCH_UP_WAIT_MAX, async || {
        let mut views = Vec::new();
        for via in 1..=3 {
            let (status, _, view) = cluster.http(via).retry(Method::GET, "/v1/cluster/digests", &[], None).await;
            assert_eq!(status, StatusCode::OK, "digests via node {via}: {view}");
            views.push(view["shards"].clone());
        }
        (views[0] == views[1] && views[1] == views[2]).then_some(())
    })
    .await;
    for node in cluster.nodes() {
        assert!(!node.logs().contains(CLUSTER_SECRET), "a node logged the cluster secret");
    }
}

/// Holds `quantity` of `sku` through `http` under `key` (so 503 retries hold
/// once) and answers the reservation id.
async fn hold(http: &Http, key: &str, sku: &str, quantity: u64) -> String {
    let body = json!({
        "lines": [{ "sku": sku, "warehouse": WAREHOUSE, "quantity": quantity }],
        "ttl_seconds": 600,
    });
    let (status, _, reservation) =
        http.retry(Method::POST, "/v1/reservations", &[("Idempotency-Key", key)], Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "hold {key} via {}: {reservation}", http.addr());
    assert_eq!(str_of(&reservation, "state"), "HELD", "{reservation}");
    assert_lines(&reservation, &[(sku, WAREHOUSE, quantity)]);
    str_of(&reservation, "id").to_owned()
}

/// Reads `sku` linearizably through each of `nodes`; asserts they all agree
/// and answers the levels.
async fn same_levels_on(cluster: &TallyCluster, nodes: &[u64], sku: &str) -> Levels {
    let mut seen: Option<(u64, Levels)> = None;
    for &via in nodes {
        let (status, headers, item) = cluster.http(via).retry(Method::GET, &item_path(sku, WAREHOUSE), &[], None).await;
        assert_eq!(status, StatusCode::OK, "{sku} via node {via}: {item}");
        let levels = Levels::of(&item);
        let etag = headers.get("etag").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(etag, format!("\"{}\"", levels.version), "{sku} via node {via}: ETag is the version");
        match &seen {
            Some((first, expected)) => assert_eq!(levels, *expected, "{sku}: node {via} disagrees with node {first}"),
            None => seen = Some((via, levels)),
        }
    }
    seen.map(|(_, levels)| levels).unwrap_or_else(|| panic!("no nodes to read {sku} from"))
}

/// Every node in `nodes` reports itself and all shards, and comes to know a
/// leader for each (a moment after a restart, an election may be running).
async fn check_cluster_view(cluster: &TallyCluster, nodes: &[u64]) {
    for &via in nodes {
        let http = cluster.http(via);
        eventually(&format!("node {via} knows a leader for every shard"), CATCH_UP_WAIT_MAX, async || {
            let (status, _, view) = http.retry(Method::GET, "/v1/cluster", &[], None).await;
            assert_eq!(status, StatusCode::OK, "GET /v1/cluster via node {via}: {view}");
            assert_eq!(view["node_id"].as_u64(), Some(via), "{view}");
            let shards = view["shards"].as_array().unwrap_or_else(|| panic!("no shards in {view}"));
            assert_eq!(shards.len(), SHARDS as usize, "{view}");
            shards.iter().all(|shard| shard["leader"].as_u64().is_some_and(|l| (1..=3).contains(&l))).then_some(())
        })
        .await;
    }
}

/// Every replica builds the ledger from the same log: the pages of any two
/// nodes are the same entries, ids, levels, principals and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_records_the_same_ledger() {
    let options = options().shards(SHARDS).env("TALLY_CLUSTER__SECRET", CLUSTER_SECRET);
    let cluster = TallyCluster::start(3, options).await;
    for (n, sku) in SKUS.iter().enumerate() {
        let via = 1 + (n as u64 % 3);
        let (status, _, item) = cluster
            .http(via)
            .retry(Method::PUT, &item_path(sku, WAREHOUSE), &[], Some(&json!({ "on_hand": ON_HAND })))
            .await;
        assert!(status.is_success(), "{sku}: {status} {item}");
        let adjust = json!({ "delta": -2, "reason": "damage", "note": "dropped", "reference": format!("DMG-{n}") });
        let (status, _, body) = cluster
            .http(1 + (via % 3))
            .retry(Method::POST, &format!("{}/adjustments", item_path(sku, WAREHOUSE)), &[], Some(&adjust))
            .await;
        assert!(status.is_success(), "{sku}: {status} {body}");
        let id = hold(cluster.http(1 + ((via + 1) % 3)), &format!("ledger-{sku}"), sku, 3).await;
        end_reservation(cluster.http(via), &id, if n % 2 == 0 { "confirm" } else { "release" }).await;
    }
    // Each SKU: upsert, adjust, hold, then confirm or release.
    let expected_len = SKUS.len() * 4;
    let first = eventually("node 1's ledger has every movement", CATCH_UP_WAIT_MAX, async || {
        let entries = ledger_page(&cluster, 1).await;
        (entries.as_array().map(Vec::len) == Some(expected_len)).then_some(entries)
    })
    .await;
    for via in [2, 3] {
        eventually(&format!("node {via}'s ledger equals node 1's"), CATCH_UP_WAIT_MAX, async || {
            (ledger_page(&cluster, via).await == first).then_some(())
        })
        .await;
    }
    let kinds: Vec<&str> = first.as_array().into_iter().flatten().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.iter().all(|k| ["upsert", "adjust", "hold", "confirm", "release"].contains(k)), "{kinds:?}");
}

/// Node `via`'s ledger, one page of up to 1000 entries.
async fn ledger_page(cluster: &TallyCluster, via: u64) -> Value {
    let (status, _, page) = cluster.http(via).retry(Method::GET, "/v1/ledger?limit=1000", &[], None).await;
    assert_eq!(status, StatusCode::OK, "node {via}: {page}");
    page["entries"].clone()
}
