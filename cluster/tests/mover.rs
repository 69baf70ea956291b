//! The mover (docs/SCALE-OUT.md §7 step 4): a cluster whose shards each
//! live on three nodes grows from three nodes to four and five and shrinks
//! back to four while holds go on. Only the placement's difference moves:
//! a joining node starts the groups it is given and catches up (snapshot,
//! then log), a leaving one drops its groups and their data. After each
//! change every shard has three voters that are exactly its hosts, every
//! node holds its share of replicas (within one), leaders spread within one
//! per node, and every acknowledged hold is there.
// Shard numbers and counts are small; test code, not input.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::node::MembershipChangeState;
use cluster::{Consistency, Node, NodeId, PlacedShard};
use common::{TestCluster, expect_ok, hold_until_acknowledged, start_joiner};
use engine::outcome::ItemView;
use engine::read::{FromAnswer, Query};
use engine::shard_of;
use engine::testing::{sku_on, upsert};

const SETTLE: Duration = Duration::from_secs(30);
const SHARDS: u32 = 6;
const REPLICAS: usize = 3;
const PAUSE: Duration = Duration::from_millis(20);
/// Checks the placement after a change among `nodes`: each shard's hosts
/// are its voters as every host sees them, three of them; each node hosts
/// its share of replicas within one.
fn assert_placed(nodes: &[&Node]) {
    let mut hosts: BTreeMap<u32, BTreeSet<NodeId>> = BTreeMap::new();
    let mut voters: BTreeMap<u32, BTreeSet<Vec<NodeId>>> = BTreeMap::new();
    for node in nodes {
        for status in node.status().shards {
            hosts.entry(status.shard).or_default().insert(node.id());
            voters.entry(status.shard).or_default().insert(status.voters.clone());
            assert!(status.learners.is_empty(), "node {} shard {}: learners left", node.id(), status.shard);
        }
    }
    for shard in 0..SHARDS {
        let seen = voters.get(&shard).unwrap_or_else(|| panic!("shard {shard} has no host"));
        assert_eq!(seen.len(), 1, "shard {shard}: the hosts disagree on its voters: {seen:?}");
        let voters: BTreeSet<NodeId> = seen.iter().flatten().copied().collect();
        assert_eq!(hosts.get(&shard), Some(&voters), "shard {shard}: hosts and voters differ");
        assert_eq!(voters.len(), REPLICAS, "shard {shard}: {voters:?}");
    }
    let counts: Vec<usize> = nodes.iter().map(|node| node.hosted_shards().len()).collect();
    let share = (SHARDS as usize * REPLICAS).div_ceil(nodes.len());
    assert!(counts.iter().all(|count| *count + 1 >= share && *count <= share), "replicas per node: {counts:?}");
    for node in nodes {
        let map = node.placement();
        for (shard, placed) in map.iter().enumerate() {
            let host_set = &hosts[&(shard as u32)];
            assert_eq!(&placed.voters.iter().copied().collect::<BTreeSet<_>>(), host_set, "node {}'s map", node.id());
        }
    }
}

/// Waits until the leaders of the shards spread within one per node.
async fn await_leaders_spread(nodes: &[&Node]) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut led: BTreeMap<NodeId, usize> = nodes.iter().map(|node| (node.id(), 0)).collect();
        let mut every_shard_led = true;
        for shard in 0..SHARDS {
            let leader = nodes
                .iter()
                .flat_map(|node| node.status().shards)
                .find(|status| status.shard == shard && status.leader.is_some())
                .and_then(|status| status.leader);
            match leader.and_then(|leader| led.get_mut(&leader)) {
                Some(count) => *count += 1,
                None => every_shard_led = false,
            }
        }
        let (least, most) = (led.values().min().copied(), led.values().max().copied());
        if every_shard_led && most.zip(least).is_some_and(|(most, least)| most - least <= 1) {
            return;
        }
        assert!(Instant::now() < deadline, "leaders never spread: {led:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn reserved(node: &Node, sku: &str) -> u64 {
    let query = Query::Item { sku: sku.to_owned(), warehouse: "w1".to_owned() };
    let answer = node.query(shard_of(sku, SHARDS), query, Consistency::Linearizable).await;
    let answer = answer.unwrap_or_else(|e| panic!("node {}: query of {sku}: {e}", node.id()));
    let item = Option::<ItemView>::from_answer(answer).unwrap_or_else(|e| panic!("answer: {e}"));
    item.unwrap_or_else(|| panic!("{sku} is gone")).reserved
}

async fn change_done(node: &Node) {
    let change = node.membership_change().unwrap_or_else(|| panic!("no change recorded"));
    assert_eq!(change.state, MembershipChangeState::Done, "{change}");
    assert_eq!((change.shards_done, change.shards_total), (SHARDS, SHARDS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_to_five_nodes_and_back_to_four_moving_only_the_difference_under_load() {
    let cluster = TestCluster::start(3, SHARDS, |config| {
        config.replication_factor = REPLICAS as u32;
        // The joiners catch up from a snapshot, then the log.
        config.snapshot_after_entries = 20;
        config.log_entries_kept_after_snapshot = 5;
        config.membership_shard_pause_ms = PAUSE.as_millis() as u64;
    })
    .await;
    cluster.wait_for_leaders(SETTLE).await;
    let skus: Vec<String> = (0..SHARDS).map(|shard| sku_on(shard, SHARDS, "sku-move")).collect();
    for sku in &skus {
        expect_ok(&cluster.node(1).submit(upsert(sku, "w1", 1_000_000, 0)).await.unwrap_or_else(|e| panic!("{e}")));
    }
    let before = 30 * u64::from(SHARDS);
    for n in 0..before {
        hold_until_acknowledged(cluster.node(1), &skus, n, SHARDS).await;
    }

    // Holds go on through nodes 1, 2 and 3 in turn (they stay) for every
    // change.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let nodes: Vec<Node> = (1..=3).map(|id| cluster.node(id).clone()).collect();
        let (skus, stop) = (skus.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut n = before;
            while !stop.load(Ordering::Acquire) {
                hold_until_acknowledged(&nodes[(n % 3) as usize], &skus, n, SHARDS).await;
                n += 1;
            }
            n
        })
    };

    // The joiners know the three first members and the same settings.
    let template = cluster.configs[0].clone();
    let (fourth, addr4, dir4) = start_joiner(&template, 4).await;
    assert!(fourth.hosted_shards().is_empty(), "a joiner hosts nothing until the mover gives it shards");
    cluster.node(1).add_node(4, addr4, PAUSE).await.unwrap_or_else(|e| panic!("add node 4: {e}"));
    change_done(cluster.node(1)).await;
    assert_placed(&[cluster.node(1), cluster.node(2), cluster.node(3), &fourth]);

    let (fifth, addr5, _dir5) = start_joiner(&template, 5).await;
    assert!(fifth.hosted_shards().is_empty(), "a joiner hosts nothing until the mover gives it shards");
    cluster.node(2).add_node(5, addr5, PAUSE).await.unwrap_or_else(|e| panic!("add node 5: {e}"));
    change_done(cluster.node(2)).await;
    let five = [cluster.node(1), cluster.node(2), cluster.node(3), &fourth, &fifth];
    assert_placed(&five);
    await_leaders_spread(&five).await;

    cluster.node(3).remove_node(4, PAUSE).await.unwrap_or_else(|e| panic!("remove node 4: {e}"));
    change_done(cluster.node(3)).await;
    assert!(fourth.hosted_shards().is_empty(), "node 4 still hosts {:?}", fourth.hosted_shards());
    let shard_dirs: Vec<String> = std::fs::read_dir(dir4.path())
        .map(|entries| {
            let names = entries.flatten().map(|entry| entry.path().display().to_string());
            names.filter(|name| name.contains("shard-")).collect()
        })
        .unwrap_or_default();
    let listing: Vec<String> = shard_dirs.iter().flat_map(|dir| walk(std::path::Path::new(dir))).collect();
    assert!(shard_dirs.is_empty(), "node 4 removed its shards' data: {listing:?}");
    fourth.shutdown().await;
    let four = [cluster.node(1), cluster.node(2), cluster.node(3), &fifth];
    assert_placed(&four);
    await_leaders_spread(&four).await;

    stop.store(true, Ordering::Release);
    let written = writer.await.unwrap_or_else(|e| panic!("writer: {e}"));
    assert!(written > before + 3, "no hold went on during the changes");

    // A restart starts from the saved map, not from the configured members
    // (nodes 1 to 3): node 2 hosts what it hosted, and its map is the same.
    let (hosted, map) = (cluster.node(2).hosted_shards(), cluster.node(2).placement());
    let mut cluster = cluster;
    cluster.kill(2).await;
    cluster.restart(2, false).await;
    assert_eq!(cluster.node(2).hosted_shards(), hosted, "node 2 after a restart");
    let voters = |map: &[PlacedShard]| map.iter().map(|p| p.voters.clone()).collect::<Vec<_>>();
    assert_eq!(voters(&cluster.node(2).placement()), voters(&map), "node 2's map after a restart");
    let four = [cluster.node(1), cluster.node(2), cluster.node(3), &fifth];
    // Every acknowledged hold is there, counted exactly, read through every
    // node that stays (each reads the shards it does not host through one
    // that does).
    for node in four {
        for (index, sku) in skus.iter().enumerate() {
            let holds = (0..written).filter(|n| n % u64::from(SHARDS) == index as u64).count() as u64;
            assert_eq!(reserved(node, sku).await, holds, "node {}: {sku}", node.id());
        }
    }
    fifth.shutdown().await;
    cluster.converged_digests(SETTLE).await;
    cluster.shutdown().await;
}

/// Every path under `dir`, for a failure's message.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = vec![dir.display().to_string()];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        found.extend(walk(&entry.path()));
    }
    found
}
