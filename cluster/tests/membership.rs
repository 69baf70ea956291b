//! Adding and removing nodes online (`Node::add_node`, `Node::remove_node`):
//! one shard at a time, learner catch-up then joint consensus, while writes
//! go on; and the changes refused with a clear error.

// Counts and indexes of a few hundred holds; test code, not input.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::node::{MembershipChangeState, MembershipOperation};
use cluster::{AdminError, Node};
use common::{TestCluster, expect_ok, hold_until_acknowledged, start_joiner};
use engine::shard_of;
use engine::testing::{rid_for, sku_on, upsert};

const SETTLE: Duration = Duration::from_secs(30);
const SHARDS: u32 = 4;
const PAUSE: Duration = Duration::from_millis(20);
/// The shards `node` leads, each with its term. Waits until it leads one:
/// with voters [1, 2, 3, 4] the rebalancing loop hands node 1 shard 0, its
/// preferred one, so its removal has a leadership to hand over.
async fn shards_led_by(cluster: &TestCluster, node: u64) -> Vec<(u32, u64)> {
    let led = |cluster: &TestCluster| -> Vec<(u32, u64)> {
        let status = cluster.node(node).status();
        status.shards.iter().filter(|shard| shard.leader == Some(node)).map(|shard| (shard.shard, shard.term)).collect()
    };
    let deadline = Instant::now() + SETTLE;
    while led(cluster).is_empty() {
        assert!(Instant::now() < deadline, "node {node} never led a shard: {:#?}", cluster.node(node).status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    led(cluster)
}

fn voters_everywhere(node: &Node) -> Vec<Vec<u64>> {
    node.status().shards.iter().map(|shard| shard.voters.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_and_another_leaves_while_holds_go_on() {
    let mut cluster = TestCluster::start(3, SHARDS, |config| {
        // Every member holds every shard: a node add changes every shard.
        config.replication_factor = 0;
        // Snapshots early and a short log behind them: the joiner must
        // catch up from a snapshot, then the log.
        config.snapshot_after_entries = 20;
        config.log_entries_kept_after_snapshot = 5;
        config.membership_shard_pause_ms = PAUSE.as_millis() as u64;
    })
    .await;
    cluster.wait_for_leaders(SETTLE).await;
    let skus: Vec<String> = (0..SHARDS).map(|shard| sku_on(shard, SHARDS, "sku-join")).collect();
    for sku in &skus {
        expect_ok(&cluster.node(2).submit(upsert(sku, "w1", 1_000_000, 0)).await.unwrap_or_else(|e| panic!("{e}")));
    }
    // Enough entries per shard that each has a snapshot and a purged log.
    let before = 50 * u64::from(SHARDS);
    for n in 0..before {
        hold_until_acknowledged(cluster.node(2), &skus, n, SHARDS).await;
    }

    // Every node has purged the start of every shard's log (it follows the
    // snapshot), so a new node cannot catch up from the log alone.
    let deadline = Instant::now() + SETTLE;
    while !cluster.live().all(|node| node.status().shards.iter().all(|shard| shard.purged_index.is_some())) {
        assert!(Instant::now() < deadline, "a shard never purged its log: {:#?}", cluster.node(1).status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Holds go on through node 2 (it stays) for the whole change.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (node, skus, stop) = (cluster.node(2).clone(), skus.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut n = before;
            while !stop.load(Ordering::Acquire) {
                hold_until_acknowledged(&node, &skus, n, SHARDS).await;
                n += 1;
            }
            n
        })
    };

    let (fourth, addr, _dir) = start_joiner(&cluster.configs[0], 4).await;
    cluster.node(2).add_node(4, addr, PAUSE).await.unwrap_or_else(|e| panic!("add node 4: {e}"));
    let change = cluster.node(2).membership_change().unwrap_or_else(|| panic!("no change recorded"));
    assert_eq!(
        (change.operation, change.node, change.state),
        (MembershipOperation::Add, 4, MembershipChangeState::Done)
    );
    assert_eq!((change.shards_done, change.shards_total), (SHARDS, SHARDS));
    assert_eq!(voters_everywhere(cluster.node(2)), vec![vec![1, 2, 3, 4]; SHARDS as usize]);
    // It caught up from a snapshot on every shard (the log it needed was
    // purged); the leader counts it caught up once the snapshot is sent,
    // and it shows here once installed.
    let deadline = Instant::now() + SETTLE;
    while !fourth.status().shards.iter().all(|shard| shard.snapshot_index.is_some()) {
        assert!(Instant::now() < deadline, "no snapshot installed: {:#?}", fourth.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A node does not run its own removal.
    let own = cluster.node(1).begin_remove_node(1, PAUSE).err();
    assert!(matches!(&own, Some(AdminError::Invalid(text)) if text.contains("itself")), "{own:?}");
    let led_by_leaver = shards_led_by(&cluster, 1).await;
    cluster.node(2).remove_node(1, PAUSE).await.unwrap_or_else(|e| panic!("remove node 1: {e}"));
    assert_eq!(voters_everywhere(cluster.node(2)), vec![vec![2, 3, 4]; SHARDS as usize]);
    // Where node 1 led, it handed leadership over before the change: a
    // later term's leader wrote the membership without it.
    let after = cluster.node(2).status();
    for (shard, term) in led_by_leaver {
        let written = after.shards[shard as usize].membership_term;
        assert!(written > term, "shard {shard}: node 1 (leader in term {term}) wrote its own removal in {written}");
    }
    stop.store(true, Ordering::Release);
    let written = writer.await.unwrap_or_else(|e| panic!("writer: {e}"));
    assert!(written > before, "no hold went on during the change");
    cluster.kill(1).await;

    // Every acknowledged hold is there, read through the new node; the
    // levels count exactly them.
    for n in 0..written {
        let sku = skus[(n % u64::from(SHARDS)) as usize].clone();
        let id = rid_for(n, &sku, SHARDS);
        let seen = fourth.read(shard_of(&sku, SHARDS), move |s| s.reservation(&id).ok().flatten().is_some()).await;
        assert!(seen.unwrap_or_else(|e| panic!("read: {e}")), "hold {n} is missing");
    }
    for (index, sku) in skus.iter().enumerate() {
        let holds = (0..written).filter(|n| n % u64::from(SHARDS) == index as u64).count() as u64;
        let name = sku.clone();
        let item = fourth.read(shard_of(sku, SHARDS), move |s| s.get_item(&name, "w1").ok().flatten()).await;
        let item = item.unwrap_or_else(|e| panic!("read: {e}")).unwrap_or_else(|| panic!("{sku} is gone"));
        assert_eq!((item.on_hand, item.reserved), (1_000_000, holds), "{sku}");
    }
    // Leaders spread over the new voters: the rebalancing loop hands node 4
    // the shard it is preferred for (voters [2, 3, 4]: shard 2).
    let deadline = Instant::now() + SETTLE;
    while fourth.status().shards[2].leader != Some(4) {
        assert!(Instant::now() < deadline, "node 4 never led shard 2: {:#?}", fourth.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The three replicas hold the same state.
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut digests = BTreeSet::new();
        for node in [cluster.node(2), cluster.node(3), &fourth] {
            digests.insert(node.digests().await.unwrap_or_else(|e| panic!("digests: {e}")));
        }
        if digests.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the replicas differ: {digests:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fourth.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_that_cannot_be_made_are_refused() {
    let cluster = TestCluster::start(1, 2, |config| config.replication_factor = 0).await;
    cluster.wait_for_leaders(SETTLE).await;
    let node = cluster.node(1);
    let refused = |result: Result<_, AdminError>| result.err().unwrap_or_else(|| panic!("not refused"));

    assert!(
        matches!(refused(node.begin_remove_node(1, PAUSE)), AdminError::Invalid(text) if text.contains("last voter"))
    );
    assert_eq!(refused(node.begin_remove_node(7, PAUSE)), AdminError::NotMember { node: 7 });
    let own = cluster.configs[0].listen.clone();
    assert_eq!(refused(node.begin_add_node(1, own, PAUSE)), AdminError::AlreadyMember { node: 1 });
    assert!(matches!(refused(node.begin_add_node(0, "127.0.0.1:9".into(), PAUSE)), AdminError::Invalid(_)));
    assert!(node.membership_change().is_none(), "a refused change was recorded");

    // One change at a time: node 5 never answers, so its addition runs on.
    let _running = node.begin_add_node(5, "127.0.0.1:9".into(), PAUSE).unwrap_or_else(|e| panic!("{e}"));
    let change = node.membership_change().unwrap_or_else(|| panic!("no change recorded"));
    assert_eq!(
        (change.operation, change.node, change.state),
        (MembershipOperation::Add, 5, MembershipChangeState::Running)
    );
    assert!(matches!(refused(node.begin_add_node(6, "127.0.0.1:9".into(), PAUSE)), AdminError::InProgress { .. }));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_addition_cut_short_resumes_or_is_undone() {
    let cluster = TestCluster::start(1, 2, |config| config.replication_factor = 0).await;
    cluster.wait_for_leaders(SETTLE).await;
    let node = cluster.node(1);
    let (second, addr, _dir) = start_joiner(&cluster.configs[0], 2).await;
    let learners = |node: &Node| node.status().shards.iter().map(|s| s.learners.clone()).collect::<Vec<_>>();

    // An addition that stopped after the learner step: node 2 is a learner
    // of every shard. Removing it drops it as a learner (this node leads).
    node.add_learner(2, addr.clone()).await.unwrap_or_else(|e| panic!("add learner: {e}"));
    assert_eq!(learners(node), vec![vec![2], vec![2]]);
    node.remove_node(2, PAUSE).await.unwrap_or_else(|e| panic!("remove the learner: {e}"));
    assert_eq!(learners(node), vec![Vec::<u64>::new(), Vec::new()]);
    assert_eq!(voters_everywhere(node), vec![vec![1], vec![1]]);

    // Cut short again; adding it resumes from the learners to voters.
    node.add_learner(2, addr.clone()).await.unwrap_or_else(|e| panic!("add learner: {e}"));
    node.add_node(2, addr.clone(), PAUSE).await.unwrap_or_else(|e| panic!("resume: {e}"));
    assert_eq!(voters_everywhere(node), vec![vec![1, 2], vec![1, 2]]);
    assert_eq!(learners(node), vec![Vec::<u64>::new(), Vec::new()]);
    assert_eq!(node.begin_add_node(2, addr, PAUSE).err(), Some(AdminError::AlreadyMember { node: 2 }));
    // Node 2 learns from the log that it is a voter of every shard.
    let deadline = Instant::now() + SETTLE;
    while second.status().shards.iter().any(|s| s.voters != vec![1, 2]) {
        assert!(Instant::now() < deadline, "node 2 never saw itself a voter: {:#?}", second.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.shutdown().await;
    cluster.shutdown().await;
}
