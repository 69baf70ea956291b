//! A clean stop of a node (SIGTERM → `Node::shutdown`) hands the leadership
//! of every shard it leads to another voter, so a planned restart costs the
//! others no election timeout (docs/OPERATIONS.md).

mod common;

use std::time::{Duration, Instant};

use common::*;
use engine::testing::{sku_on, upsert};

const SHARDS: u32 = 2;
/// Long enough that the wait below can only end by a hand-over.
const ELECTION_TIMEOUT_MIN_MS: u64 = 120_000;
/// A guard against a hung test, far below the election timeout.
const NEW_LEADER_WAIT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_hands_leadership_over_without_an_election() {
    let mut cluster = TestCluster::start(3, SHARDS, |config| {
        config.election_timeout_min_ms = ELECTION_TIMEOUT_MIN_MS;
        config.election_timeout_max_ms = ELECTION_TIMEOUT_MIN_MS + 1_000;
        // Leaders stay where they are: only the stop moves them.
        config.rebalance_interval_ms = 0;
    })
    .await;
    cluster.wait_for_leaders(SETTLE).await;
    let shard = 0;
    let name = sku_on(shard, SHARDS, "sku-planned");
    let leader = cluster.leader_of(1, shard).unwrap_or_else(|| panic!("shard {shard} has no leader"));
    expect_ok(&cluster.node(leader).submit(upsert(&name, "w1", 5, 0)).await.unwrap_or_else(|e| panic!("submit: {e}")));

    cluster.kill(leader).await;

    let other = if leader == 1 { 2 } else { 1 };
    let deadline = Instant::now() + NEW_LEADER_WAIT;
    let successor = loop {
        if let Some(successor) = cluster.leader_of(other, shard).filter(|id| *id != leader) {
            break successor;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader of shard {shard} within {NEW_LEADER_WAIT:?} of node {leader}'s clean stop \
             (an election would take {ELECTION_TIMEOUT_MIN_MS} ms): {:#?}",
            cluster.node(other).status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(successor, leader);
    // The new leader serves writes, and has what the old one acknowledged.
    expect_ok(&cluster.node(other).submit(upsert(&name, "w2", 3, 0)).await.unwrap_or_else(|e| panic!("submit: {e}")));
    let item = cluster
        .node(successor)
        .read(shard, move |s| s.get_item(&name, "w1").ok().flatten().map(|i| i.on_hand))
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(item, Some(5));
    cluster.shutdown().await;
}
