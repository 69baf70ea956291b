//! A shard whose storage fails stops on that node, loudly, and the others
//! serve it: the write in flight never answers OK on its own node, nothing
//! is acknowledged there after the failure, the node says which shard and
//! why, and a leader hands the shard over. Failures are injected
//! (`Node::inject_fsync_failure`: the next fsync of the shard's WAL fails
//! with EIO); server/tests/full_disk.rs fills a real disk.

mod common;

use std::time::{Duration, Instant};

use cluster::{FailureCause, Node, NodeId, ReadError, SubmitError};
use common::{TestCluster, expect_ok};
use engine::Outcome;
use engine::error::StorageFault;
use engine::testing::{hold, rid_for, sku_on, upsert};

const SHARDS: u32 = 2;

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The leader of `shard` that every node in `via` agrees on.
fn agreed_leader(cluster: &TestCluster, via: &[NodeId], shard: u32) -> Option<NodeId> {
    let leaders: Vec<Option<NodeId>> = via.iter().map(|id| cluster.leader_of(*id, shard)).collect();
    leaders.windows(2).all(|pair| pair[0] == pair[1]).then(|| leaders[0]).flatten()
}

fn hold_on(name: &str, n: u64) -> engine::Command {
    hold(rid_for(n, name, SHARDS), &[(name, "w1", 1)], 600_000, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_shard_and_nothing_is_acknowledged_after_it() {
    let mut cluster = TestCluster::start(1, SHARDS, |_| {}).await;
    cluster.wait_for_leaders(Duration::from_secs(10)).await;
    let name = sku_on(0, SHARDS, "sku-fsync");
    let other = sku_on(1, SHARDS, "sku-fsync");
    let node = cluster.node(1).clone();
    expect_ok(&node.submit(upsert(&name, "w1", 10, 0)).await.unwrap_or_else(|e| panic!("upsert: {e}")));
    expect_ok(&node.submit(upsert(&other, "w1", 10, 0)).await.unwrap_or_else(|e| panic!("upsert: {e}")));

    node.inject_fsync_failure(0);
    // The write whose fsync fails is not acknowledged. It may be on disk
    // (only its sync failed), so its fate is unknown, never "not applied".
    let in_flight = node.submit(hold_on(&name, 1)).await;
    assert!(matches!(in_flight, Err(SubmitError::Unknown { .. })), "in flight: {in_flight:?}");

    // The node names the shard and the cause.
    let failures = node.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].shard, 0);
    assert_eq!(failures[0].cause, FailureCause::Storage(StorageFault::Fsync));
    assert_eq!(failures[0].cause.code(), "fsync_error");
    assert!(failures[0].detail.contains("fdatasync"), "{}", failures[0].detail);
    let status = node.status();
    assert_eq!(status.shards[0].failure.as_ref().map(|f| f.cause.code()), Some("fsync_error"));
    assert_eq!((status.shards[0].leader, status.shards[0].role.as_str()), (None, "Stopped"));

    // Nothing after the failure: writes and reads of the shard are refused
    // at once, with the cause.
    let later = node.submit(hold_on(&name, 2)).await;
    match later {
        Err(SubmitError::ShardStopped { shard: 0, cause, .. }) => assert_eq!(cause.code(), "fsync_error"),
        other => panic!("a write after the failure answered {other:?}"),
    }
    let read = node.read(0, |s| s.stats().live_holds).await;
    assert!(matches!(read, Err(ReadError::ShardStopped { shard: 0, .. })), "{read:?}");
    let stale = node.read_stale(0, |s| s.stats().live_holds).await;
    assert!(matches!(stale, Err(ReadError::ShardStopped { .. })), "{stale:?}");

    // The other shard is not touched.
    let held = node.submit(hold_on(&other, 3)).await.unwrap_or_else(|e| panic!("hold on shard 1: {e}"));
    assert!(matches!(held, Outcome::Held { .. }), "{held:?}");

    // A restart recovers from disk: the acknowledged write is there, and
    // the shard takes writes again.
    cluster.kill(1).await;
    cluster.restart(1, false).await;
    cluster.wait_for_leaders(Duration::from_secs(10)).await;
    let node = cluster.node(1).clone();
    assert!(node.failures().is_empty());
    let item =
        node.read(0, move |s| s.get_item(&name, "w1").ok().flatten()).await.unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(item.map(|item| item.on_hand), Some(10), "the acknowledged upsert survived");
    let held = node.submit(hold_on(&sku_on(0, SHARDS, "sku-after"), 4)).await;
    assert!(held.is_ok(), "a write after the restart: {held:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_leaders_wal_fails_the_other_nodes_take_the_shard_over() {
    let cluster = TestCluster::start(3, SHARDS, |config| config.rebalance_interval_ms = 0).await;
    cluster.wait_for_leaders(Duration::from_secs(15)).await;
    let shard = 0;
    let old = cluster.leader_of(1, shard).unwrap_or_else(|| panic!("no leader"));
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != old).collect();
    let name = sku_on(shard, SHARDS, "sku-handover");
    let via_old: &Node = cluster.node(old);
    expect_ok(&via_old.submit(upsert(&name, "w1", 100, 0)).await.unwrap_or_else(|e| panic!("upsert: {e}")));

    via_old.inject_fsync_failure(shard);
    // The write in flight on the old leader: its own fsync fails, but the
    // followers may have made it durable on a majority, which is what an
    // acknowledgement means; so either answer is true, never a lie.
    let in_flight = via_old.submit(hold_on(&name, 1)).await;
    assert!(matches!(in_flight, Ok(Outcome::Held { .. }) | Err(SubmitError::Unknown { .. })), "{in_flight:?}");
    wait_until("the old leader reports the shard stopped", Duration::from_secs(10), || {
        via_old.failures().iter().any(|f| f.shard == shard && f.cause.code() == "fsync_error")
    })
    .await;

    // The others elect a new leader among themselves and serve the shard.
    wait_until("a new leader among the other nodes", Duration::from_secs(15), || {
        agreed_leader(&cluster, &others, shard).is_some_and(|leader| leader != old)
    })
    .await;
    for (n, via) in others.iter().enumerate() {
        let n = 10 + n as u64;
        let held = cluster.node(*via).submit(hold_on(&name, n)).await;
        assert!(matches!(held, Ok(Outcome::Held { .. })), "a hold through node {via}: {held:?}");
    }
    // Through the stopped node the shard is refused, saying why.
    let refused = via_old.submit(hold_on(&name, 20)).await;
    assert!(matches!(refused, Err(SubmitError::ShardStopped { .. })), "{refused:?}");
    // Every acknowledged unit is accounted for on the serving nodes.
    let reserved = cluster
        .node(others[0])
        .read(shard, move |s| s.get_item(&name, "w1").ok().flatten().map(|item| item.reserved))
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    let in_flight_held = u64::from(matches!(in_flight, Ok(Outcome::Held { .. })));
    assert!(reserved >= Some(2 + in_flight_held) && reserved <= Some(3), "reserved {reserved:?}");
    // The shard the failure did not touch is still served by all three.
    let other = sku_on(1, SHARDS, "sku-untouched");
    let outcome = via_old.submit(upsert(&other, "w1", 1, 0)).await.unwrap_or_else(|e| panic!("shard 1: {e}"));
    expect_ok(&outcome);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_breaks_an_invariant_is_caught_after_a_snapshot_and_stops_the_shard() {
    // Snapshots every few entries, built by the actor: the check runs on the
    // state it took, off the shard thread (the shadow's path is checked in
    // `shadow`'s tests).
    let cluster = TestCluster::start(3, SHARDS, |config| {
        config.rebalance_interval_ms = 0;
        config.snapshot_after_entries = 4;
        config.snapshot_from_shadow = false;
    })
    .await;
    cluster.wait_for_leaders(Duration::from_secs(15)).await;
    let shard = 0;
    let old = cluster.leader_of(1, shard).unwrap_or_else(|| panic!("no leader"));
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != old).collect();
    let via_old: &Node = cluster.node(old);
    let first = sku_on(shard, SHARDS, "sku-invariant-first");
    expect_ok(&via_old.submit(upsert(&first, "w1", 5, 0)).await.unwrap_or_else(|e| panic!("upsert: {e}")));
    // Snapshots pass their check while the state is sound.
    let built = |node: &Node| node.snapshot_stats()[shard as usize];
    let mut n = 0;
    while built(via_old).invariant_checks == 0 {
        let name = sku_on(shard, SHARDS, &format!("sku-invariant-{n}"));
        expect_ok(&via_old.submit(upsert(&name, "w1", 1, 0)).await.unwrap_or_else(|e| panic!("upsert: {e}")));
        n += 1;
        assert!(n < 200, "no snapshot checked: {:?}", built(via_old));
    }
    assert_eq!(built(via_old).invariant_failures, 0);
    assert!(via_old.failures().is_empty());

    // A bug breaks a rule of the leader's copy (not the others').
    via_old.inject_broken_invariant(shard, engine::actor::BreakInvariant::ReservedAboveOnHand).await;
    let checks = built(via_old).invariant_checks;
    while via_old.failures().is_empty() {
        // Writes of other items: each is applied (or refused, once the
        // shard stopped); the broken item is never touched.
        let name = sku_on(shard, SHARDS, &format!("sku-invariant-{n}"));
        let _ = via_old.submit(upsert(&name, "w1", 1, 0)).await;
        n += 1;
        assert!(n < 400, "the broken state was never caught: {:?}", built(via_old));
    }
    let failure = &via_old.failures()[0];
    assert_eq!((failure.shard, failure.cause), (shard, FailureCause::InvariantBroken), "{failure:?}");
    assert!(failure.detail.contains("reserved"), "{}", failure.detail);
    assert_eq!(built(via_old).invariant_failures, 1);
    assert!(built(via_old).invariant_checks > checks);
    // The stopped shard takes nothing more through this node...
    let refused = via_old.submit(upsert(&first, "w1", 9, 0)).await;
    match refused {
        Err(SubmitError::ShardStopped { cause, .. }) => assert_eq!(cause.code(), "invariant_broken"),
        other => panic!("{other:?}"),
    }
    // ...and the other nodes, whose copies are sound, serve it.
    wait_until("a new leader among the other nodes", Duration::from_secs(15), || {
        agreed_leader(&cluster, &others, shard).is_some_and(|leader| leader != old)
    })
    .await;
    let outcome = cluster.node(others[0]).submit(upsert(&first, "w1", 9, 0)).await;
    assert!(matches!(outcome, Ok(Outcome::Upserted { .. })), "{outcome:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preferred_leader_that_answers_again_gets_its_group_back() {
    // The rebalancer hands a group only to a preferred node that answers
    // (not to one whose copy stopped); a restarted one answers.
    let mut cluster = TestCluster::start(3, 1, |_| {}).await;
    cluster.wait_for_leaders(Duration::from_secs(15)).await;
    let preferred = cluster.leader_of(1, 0).unwrap_or_else(|| panic!("no leader"));
    cluster.kill(preferred).await;
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != preferred).collect();
    wait_until("a leader among the others", Duration::from_secs(15), || {
        agreed_leader(&cluster, &others, 0).is_some_and(|leader| leader != preferred)
    })
    .await;
    cluster.restart(preferred, false).await;
    wait_until("the preferred node leads again", Duration::from_secs(30), || {
        agreed_leader(&cluster, &[1, 2, 3], 0) == Some(preferred)
    })
    .await;
    cluster.shutdown().await;
}
