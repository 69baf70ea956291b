//! A placed cluster (docs/SCALE-OUT.md §7 step 3): five nodes, each shard on
//! three of them (`replication_factor = 3`). A node starts only the groups
//! the placement gives it, and every node still writes and reads every
//! shard, through the nodes that host it when it does not. One node stops
//! under load: every write through the others still succeeds.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster::{Consistency, Node, NodeId};
use common::*;
use engine::cmd::AdjustReason;
use engine::outcome::ItemView;
use engine::read::{FromAnswer, Query};
use engine::testing::{adjust, hold, rid_for, sku_on, upsert};

const NODES: u64 = 5;
const SHARDS: u32 = 5;
const REPLICAS: u32 = 3;
const SETTLE: Duration = Duration::from_secs(30);

async fn start() -> TestCluster {
    let cluster = TestCluster::start(NODES, SHARDS, |config| config.replication_factor = REPLICAS).await;
    cluster.wait_for_leaders(SETTLE).await;
    cluster
}

async fn on_hand(node: &Node, shard: u32, sku: &str) -> Option<u64> {
    let query = Query::Item { sku: sku.to_owned(), warehouse: "w1".to_owned() };
    let answer = node.query(shard, query, Consistency::Linearizable).await;
    let answer = answer.unwrap_or_else(|e| panic!("node {}: query of shard {shard}: {e}", node.id()));
    Option::<ItemView>::from_answer(answer).unwrap_or_else(|e| panic!("answer: {e}")).map(|item| item.on_hand)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shard_lives_on_three_of_five_nodes_and_every_node_serves_every_shard() {
    let cluster = start().await;
    // Where the shards live: three hosts each, the same placement on every
    // node, and each host's group has exactly the placed voters.
    let placement = cluster.node(1).placement();
    let mut hosts: BTreeMap<u32, Vec<NodeId>> = BTreeMap::new();
    for node in cluster.live() {
        assert_eq!(
            node.placement().iter().map(|p| &p.voters).collect::<Vec<_>>(),
            placement.iter().map(|p| &p.voters).collect::<Vec<_>>()
        );
        for status in node.status().shards {
            hosts.entry(status.shard).or_default().push(node.id());
            assert_eq!(
                status.voters,
                placement[status.shard as usize].voters,
                "node {} shard {}",
                node.id(),
                status.shard
            );
        }
    }
    for shard in 0..SHARDS {
        assert_eq!(hosts.get(&shard), Some(&placement[shard as usize].voters), "hosts of shard {shard}");
        assert_eq!(placement[shard as usize].voters.len(), REPLICAS as usize);
    }
    let per_node: Vec<usize> = cluster.live().map(|node| node.hosted_shards().len()).collect();
    assert!(per_node.iter().all(|count| *count == 3), "{per_node:?}");

    // Every node writes every shard, and every node reads what was written.
    for shard in 0..SHARDS {
        let name = sku_on(shard, SHARDS, "placed");
        for via in 1..=NODES {
            let command =
                if via == 1 { upsert(&name, "w1", 100, 0) } else { adjust(&name, "w1", 1, AdjustReason::Receive) };
            let outcome = cluster.node(via).submit(command).await;
            expect_ok(&outcome.unwrap_or_else(|e| panic!("node {via}, shard {shard}: {e}")));
        }
        for via in 1..=NODES {
            assert_eq!(on_hand(cluster.node(via), shard, &name).await, Some(104), "node {via}, shard {shard}");
        }
    }
    // The hosts of each shard hold the same state.
    cluster.converged_digests(SETTLE).await;
    // Leaders move to the plan's preferred ones: one shard each here.
    let preferred: Vec<NodeId> = placement.iter().map(|p| p.preferred_leader).collect();
    let mut leaders = Vec::new();
    let deadline = std::time::Instant::now() + SETTLE;
    while std::time::Instant::now() < deadline {
        leaders = (0..SHARDS).map(|shard| cluster.leader_of(preferred[shard as usize], shard)).collect();
        if leaders.iter().zip(&preferred).all(|(leader, wanted)| *leader == Some(*wanted)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(leaders, preferred.iter().map(|p| Some(*p)).collect::<Vec<_>>(), "leaders follow the plan");
    let distinct: std::collections::BTreeSet<_> = preferred.iter().collect();
    assert_eq!(distinct.len(), SHARDS as usize, "five shards, five nodes: one leader each");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_under_load_and_every_write_through_the_others_succeeds() {
    let mut cluster = start().await;
    let names: Vec<String> = (0..SHARDS).map(|shard| sku_on(shard, SHARDS, "load")).collect();
    for name in &names {
        expect_ok(&cluster.node(1).submit(upsert(name, "w1", 0, 0)).await.unwrap_or_else(|e| panic!("upsert: {e}")));
    }
    // The node that leads the most shards stops halfway.
    let victim = (1..=NODES)
        .max_by_key(|id| cluster.node(*id).status().shards.iter().filter(|s| s.leader == Some(*id)).count())
        .unwrap_or(1);
    let mut written = vec![0u64; SHARDS as usize];
    for round in 0..40u64 {
        if round == 20 {
            cluster.kill(victim).await;
        }
        for (shard, name) in names.iter().enumerate() {
            let via = (round + shard as u64) % NODES + 1;
            let Some(Some(node)) = usize::try_from(via - 1).ok().and_then(|at| cluster.nodes.get(at)) else { continue };
            let outcome = node.submit(adjust(name, "w1", 1, AdjustReason::Receive)).await;
            expect_ok(&outcome.unwrap_or_else(|e| panic!("round {round}: node {via}, shard {shard}: {e}")));
            written[shard] += 1;
        }
    }
    let reader = if victim == 1 { 2 } else { 1 };
    for (shard, name) in names.iter().enumerate() {
        let shard_id = u32::try_from(shard).unwrap_or(u32::MAX);
        assert_eq!(on_hand(cluster.node(reader), shard_id, name).await, Some(written[shard]), "shard {shard}");
    }
    cluster.converged_digests(SETTLE).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_streams_the_events_of_shards_it_does_not_host() {
    let cluster = start().await;
    let placement = cluster.node(1).placement();
    let (shard, outsider) = placement
        .iter()
        .find_map(|placed| (1..=NODES).find(|id| !placed.voters.contains(id)).map(|id| (placed.shard, id)))
        .unwrap_or_else(|| panic!("every shard on every node: {placement:?}"));
    let node = cluster.node(outsider);
    assert!(!node.hosted_shards().contains(&shard));
    let mut events = node.events();
    // The relay starts from "now": give it a moment to take its cursor.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let name = sku_on(shard, SHARDS, "relayed");
    let writer = placement[shard as usize].voters[0];
    expect_ok(&cluster.node(writer).submit(upsert(&name, "w1", 10, 0)).await.unwrap_or_else(|e| panic!("{e}")));
    for _ in 0..3 {
        let command = adjust(&name, "w1", 1, AdjustReason::Receive);
        expect_ok(&cluster.node(writer).submit(command).await.unwrap_or_else(|e| panic!("{e}")));
    }
    // Four stock changes of the shard, in order, each once, not led here.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while seen.len() < 4 {
        let event = tokio::time::timeout_at(deadline, events.recv()).await;
        let event = event.unwrap_or_else(|_| panic!("node {outsider} relayed {} of 4 events", seen.len()));
        let event = event.unwrap_or_else(|e| panic!("events: {e}"));
        if event.record.id.shard == shard && event.record.sku == name {
            assert!(!event.leader, "a relayed event is not led here");
            seen.push(event.record.id);
        }
    }
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "in order, once each: {seen:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_pages_the_ledger_of_every_shard() {
    let cluster = TestCluster::start(NODES, SHARDS, |config| {
        config.replication_factor = REPLICAS;
        config.ledger.enabled = true;
    })
    .await;
    cluster.wait_for_leaders(SETTLE).await;
    let names: Vec<String> = (0..SHARDS).map(|shard| sku_on(shard, SHARDS, "ledgered")).collect();
    for name in &names {
        expect_ok(&cluster.node(1).submit(upsert(name, "w1", 5, 0)).await.unwrap_or_else(|e| panic!("{e}")));
        let command = adjust(name, "w1", 2, AdjustReason::Receive);
        expect_ok(&cluster.node(2).submit(command).await.unwrap_or_else(|e| panic!("{e}")));
    }
    // Each node hosts three of the five shards, and pages all five: the
    // same two movements of each SKU, in the same order.
    let filter = cluster::ledger::LedgerFilter::default();
    let mut pages = Vec::new();
    for node in cluster.live() {
        assert_eq!(node.hosted_shards().len(), 3);
        let deadline = std::time::Instant::now() + SETTLE;
        let keys = loop {
            let page =
                node.ledger_page(&filter, None, 1000).await.unwrap_or_else(|e| panic!("node {}: {e}", node.id()));
            let keys: Vec<_> =
                page.entries.iter().filter(|entry| names.contains(&entry.sku)).map(|entry| entry.key()).collect();
            if keys.len() == 2 * SHARDS as usize || std::time::Instant::now() > deadline {
                break keys;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let shards: std::collections::BTreeSet<u32> = keys.iter().map(|key| key.shard).collect();
        assert_eq!(shards.len(), SHARDS as usize, "node {} pages every shard: {keys:?}", node.id());
        assert_eq!(keys.len(), 2 * SHARDS as usize, "node {}: {keys:?}", node.id());
        pages.push(keys);
    }
    assert!(pages.windows(2).all(|pair| pair[0] == pair[1]), "every node pages the same entries");
    // One live hold, counted by every node, hosting its shard or not.
    let held = &names[0];
    let command = hold(rid_for(1, held, SHARDS), &[(held, "w1", 1)], 3_600_000, None);
    expect_ok(&cluster.node(1).submit(command).await.unwrap_or_else(|e| panic!("hold: {e}")));
    for node in cluster.live() {
        let deadline = std::time::Instant::now() + SETTLE;
        while node.live_holds(Duration::from_secs(5)).await != Some(1) {
            assert!(std::time::Instant::now() < deadline, "node {} never counted the hold", node.id());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster.shutdown().await;
}
