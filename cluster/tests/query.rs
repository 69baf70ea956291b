//! `Node::query`: reads as values through a real 3-node cluster in one
//! process. A query answers what a closure read of the same state sees,
//! on any node, linearizable or stale; a query that finds the state corrupt
//! stops the shard on that node.

mod common;

use std::time::Duration;

use cluster::{Consistency, ReadError};
use common::*;
use engine::outcome::ItemView;
use engine::read::{FromAnswer, Query};
use engine::testing::{sku_on, upsert};

const SHARDS: u32 = 2;
const SETTLE: Duration = Duration::from_secs(20);

fn item_query(sku: &str) -> Query {
    Query::Item { sku: sku.to_owned(), warehouse: "w1".to_owned() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_on_any_node_answers_what_a_closure_read_sees() {
    let cluster = TestCluster::start(3, SHARDS, |_| {}).await;
    cluster.wait_for_leaders(SETTLE).await;
    let name = sku_on(1, SHARDS, "query");
    expect_ok(&cluster.node(1).submit(upsert(&name, "w1", 7, 2)).await.unwrap_or_else(|e| panic!("submit: {e}")));
    for via in 1..=3u64 {
        let node = cluster.node(via);
        let answer = node.query(1, item_query(&name), Consistency::Linearizable).await;
        let item = answer.map(Option::<ItemView>::from_answer);
        let wanted = name.clone();
        let seen = node.read(1, move |s| s.get_item(&wanted, "w1").ok().flatten()).await;
        assert_eq!(item, Ok(Ok(seen.clone().unwrap_or_else(|e| panic!("read: {e}")))), "via {via}");
        assert_eq!(seen.ok().flatten().map(|item| item.on_hand), Some(7), "via {via}: linearizable");
    }
    // A stale query on the leader (it has applied what it acknowledged).
    let leader = cluster.leader_of(1, 1).unwrap_or_else(|| panic!("shard 1 has no leader"));
    let stale = cluster.node(leader).query(1, item_query(&name), Consistency::Stale).await;
    let item = stale.ok().and_then(|answer| Option::<ItemView>::from_answer(answer).ok()).flatten();
    assert_eq!(item.map(|item| item.on_hand), Some(7));
    // A shard that does not exist is an invalid read, not an answer.
    let missing = cluster.node(1).query(SHARDS, Query::Limits, Consistency::Linearizable).await;
    assert!(matches!(missing, Err(ReadError::Invalid(_))), "{missing:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_finds_the_state_corrupt_stops_the_shard_on_that_node() {
    let cluster = TestCluster::start(1, SHARDS, |_| {}).await;
    cluster.wait_for_leaders(SETTLE).await;
    let node = cluster.node(1).clone();
    let (broken, healthy) = (sku_on(0, SHARDS, "arena"), sku_on(1, SHARDS, "arena"));
    for sku in [&broken, &healthy] {
        expect_ok(&node.submit(upsert(sku, "w1", 5, 0)).await.unwrap_or_else(|e| panic!("submit: {e}")));
    }
    node.inject_broken_invariant(0, engine::actor::BreakInvariant::SkuOutsideArena).await;

    let page = Query::Items(engine::query::ItemFilter { limit: 10, scan_max: 10, ..Default::default() });
    let read = node.query(0, page, Consistency::Stale).await;
    match read {
        Err(ReadError::ShardStopped { shard: 0, cause, detail }) => {
            assert_eq!(cause.code(), "invariant_broken");
            assert!(detail.contains("a read found the state broken"), "{detail}");
        }
        other => panic!("a corrupt read answered {other:?}"),
    }
    assert_eq!(node.failures().len(), 1, "the shard stopped on this node");
    // Every later query of the shard is refused; the other shard answers.
    let later = node.query(0, Query::Limits, Consistency::Stale).await;
    assert!(matches!(later, Err(ReadError::ShardStopped { shard: 0, .. })), "{later:?}");
    let other = node.query(1, item_query(&healthy), Consistency::Linearizable).await;
    let item = other.ok().and_then(|answer| Option::<ItemView>::from_answer(answer).ok()).flatten();
    assert_eq!(item.map(|item| item.on_hand), Some(5));
    cluster.shutdown().await;
}
