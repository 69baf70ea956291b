//! Routing through a node that does not host a shard (docs/SCALE-OUT.md §7
//! step 2): its writes and queries of the shard go to the nodes that do,
//! answer what those nodes' copies say, and keep going when the shard's
//! leader stops. Queries travel in the peer protocol, and a node checks a
//! peer's query against its bounds before it reads anything.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cluster::wire::{Request, Response};
use cluster::{Consistency, Node};
use common::*;
use engine::outcome::ItemView;
use engine::read::{FromAnswer, Query};
use engine::testing::{hold, rid_on, sku_on, upsert};
use engine::{Outcome, cmd::AdjustReason};

const SHARDS: u32 = 2;
/// The shard node 3 does not host.
const AWAY: u32 = 0;
const AWAY_HOME: u16 = 0;
const SETTLE: Duration = Duration::from_secs(20);

fn item_query(sku: &str) -> Query {
    Query::Item { sku: sku.to_owned(), warehouse: "w1".to_owned() }
}

async fn on_hand(node: &Node, sku: &str, consistency: Consistency) -> Option<u64> {
    let answer = node.query(AWAY, item_query(sku), consistency).await.unwrap_or_else(|e| panic!("query: {e}"));
    let item = Option::<ItemView>::from_answer(answer).unwrap_or_else(|e| panic!("answer: {e}"));
    item.map(|item| item.on_hand)
}

/// Four nodes; shard `AWAY` lives on nodes 1, 2 and 4 only, and node 3 is
/// told it does not host it.
async fn cluster_without_node_3_on_away() -> TestCluster {
    let cluster = TestCluster::start(4, SHARDS, |config| config.replication_factor = 0).await;
    cluster.wait_for_leaders(SETTLE).await;
    let voters: BTreeSet<u64> = [1, 2, 4].into();
    let moved = cluster.node(1).move_shard(AWAY, &voters, &BTreeMap::new(), &[3].into()).await;
    assert_eq!(moved, Ok(true), "node 3 leaves shard {AWAY}");
    cluster.node(3).unhost(AWAY);
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_shard_writes_and_reads_it_through_the_nodes_that_host_it() {
    let mut cluster = cluster_without_node_3_on_away().await;
    let outside = cluster.node(3).clone();
    let name = sku_on(AWAY, SHARDS, "route");
    expect_ok(&outside.submit(upsert(&name, "w1", 10, 0)).await.unwrap_or_else(|e| panic!("upsert: {e}")));
    let held = outside.submit(hold(rid_on(AWAY_HOME, 1), &[(&name, "w1", 3)], 60_000, None)).await;
    assert!(matches!(held, Ok(Outcome::Held { .. })), "{held:?}");
    // A batch of commands crosses as one list.
    let adjust = |delta| engine::testing::adjust(&name, "w1", delta, AdjustReason::Receive);
    let outcomes = outside.submit_many_to(AWAY, vec![adjust(1), adjust(2)]).await;
    assert_eq!(outcomes.map(|outcomes| outcomes.iter().all(|o| !o.is_refused())), Ok(true));

    // Queries answer what the hosting nodes' copies say, either consistency.
    assert_eq!(on_hand(&outside, &name, Consistency::Linearizable).await, Some(13));
    assert_eq!(on_hand(cluster.node(1), &name, Consistency::Linearizable).await, Some(13));
    let stale = on_hand(&outside, &name, Consistency::Stale).await;
    assert!(matches!(stale, Some(10..=13)), "a stale read is some applied state: {stale:?}");
    // The shard it hosts is still served from its own copy.
    let here = sku_on(1, SHARDS, "route");
    expect_ok(&outside.submit(upsert(&here, "w1", 4, 0)).await.unwrap_or_else(|e| panic!("upsert: {e}")));

    // The shard's leader stops: writes and reads through node 3 find the next.
    let leader = cluster.leader_of(1, AWAY).unwrap_or_else(|| panic!("shard {AWAY} has no leader"));
    assert_ne!(leader, 3, "node 3 is no voter of shard {AWAY}");
    cluster.kill(leader).await;
    let after = outside.submit(adjust(5)).await;
    assert!(after.as_ref().is_ok_and(|outcome| !outcome.is_refused()), "{after:?}");
    assert_eq!(on_hand(&outside, &name, Consistency::Linearizable).await, Some(18));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_query_is_checked_against_the_bounds_and_answered_only_where_the_shard_lives() {
    let cluster = cluster_without_node_3_on_away().await;
    let name = sku_on(AWAY, SHARDS, "bounds");
    expect_ok(&cluster.node(1).submit(upsert(&name, "w1", 6, 0)).await.unwrap_or_else(|e| panic!("upsert: {e}")));
    let ask = |node: u64, query: Query| {
        let config = cluster.configs.iter().find(|config| config.node_id == node);
        let addr = config.map(|config| config.listen.clone()).unwrap_or_default();
        async move {
            let mut socket = raw_peer::authenticated(&addr, 2, node, TEST_SECRET.as_bytes()).await;
            let request = Request::Query { group: AWAY, linearizable: true, query };
            raw_peer::call(&mut socket, 1, &request).await
        }
    };
    // A hosting node answers.
    match ask(1, item_query(&name)).await {
        Some(Response::Answered(answer)) => {
            let item = Option::<ItemView>::from_answer(*answer).unwrap_or_else(|e| panic!("answer: {e}"));
            assert_eq!(item.map(|item| item.on_hand), Some(6));
        }
        other => panic!("node 1 answered {other:?}"),
    }
    // Beyond the bounds: refused before anything is read.
    let bounds = cluster.configs[0].query_bounds;
    let too_many = vec![name.clone(); bounds.names_max as usize + 1];
    assert!(matches!(ask(1, Query::Skus(too_many)).await, Some(Response::Refused(_))));
    let too_long = Query::History { sku: name.clone(), warehouse: "w1".into(), limit: bounds.limit_max + 1 };
    assert!(matches!(ask(1, too_long).await, Some(Response::Refused(_))));
    // Node 3 does not host the shard: it says so, with its guess of the leader.
    assert!(matches!(ask(3, item_query(&name)).await, Some(Response::NotHosted { .. })));
    cluster.shutdown().await;
}
