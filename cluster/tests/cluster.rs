//! A real 3-node cluster in one process, over loopback sockets: routing,
//! failover, catch-up, partitions, concurrency and expiry.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::{SagaOutcome, SagaPart, SubmitError};
use common::*;
use engine::Outcome;
use engine::WalConfig;
use engine::reservation::ReservationState;
use engine::testing::{hold, rid_for, sku_on, upsert};
use engine::wal::Wal;

const SHARDS: u32 = 6;
const SETTLE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_is_a_one_member_cluster() {
    let cluster = TestCluster::start(1, 2, |_| {}).await;
    cluster.wait_for_leaders(SETTLE).await;
    let node = cluster.node(1);
    expect_ok(&node.submit(upsert("solo", "w1", 5, 0)).await.unwrap_or_else(|e| panic!("submit: {e}")));
    let shard = engine::shard_of("solo", 2);
    let item =
        node.read(shard, |s| s.get_item("solo", "w1").ok().flatten()).await.unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(item.map(|i| i.on_hand), Some(5));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_submitted_on_any_node_is_applied_in_order_on_the_leader() {
    let cluster = TestCluster::start(3, SHARDS, |_| {}).await;
    cluster.wait_for_leaders(SETTLE).await;
    let shard = 1;
    let name = sku_on(shard, SHARDS, "sku-list");
    for via in 1..=3u64 {
        let warehouse = format!("w{via}");
        // An upsert then holds of it in the same list: later commands see
        // the earlier ones, and the fourth hold finds no stock left.
        let mut commands = vec![upsert(&name, &warehouse, 3, 0)];
        commands.extend(
            (0..4).map(|n| hold(rid_for(via * 10 + n, &name, SHARDS), &[(&name, &warehouse, 1)], 60_000, None)),
        );
        let outcomes = cluster
            .node(via)
            .submit_many_to(shard, commands)
            .await
            .unwrap_or_else(|e| panic!("submit_many via {via}: {e}"));
        assert_eq!(outcomes.len(), 5);
        outcomes[..4].iter().for_each(expect_ok);
        assert_eq!(outcomes[4].refusal().map(engine::Refusal::code), Some("insufficient_stock"), "via {via}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_holds_every_part_or_releases_them_even_if_its_caller_gives_up() {
    let cluster = TestCluster::start(3, SHARDS, |_| {}).await;
    cluster.wait_for_leaders(SETTLE).await;
    let node = cluster.node(2);
    let names: Vec<String> = (0..3).map(|shard| sku_on(shard, SHARDS, "sku-saga")).collect();
    for name in &names {
        expect_ok(&node.submit(upsert(name, "w1", 5, 0)).await.unwrap_or_else(|e| panic!("upsert: {e}")));
    }
    let parts = |id, quantities: [u64; 3]| -> Vec<SagaPart> {
        (0..3u32)
            .zip(&names)
            .zip(quantities)
            .map(|((shard, name), quantity)| SagaPart {
                shard,
                hold: hold(id, &[(name, "w1", quantity)], 60_000, None),
            })
            .collect()
    };

    // Every part holds: held, and confirmed when asked.
    let id = rid_for(1, &names[0], SHARDS);
    match node.reserve_across_shards(id, parts(id, [1, 1, 1]), true).await {
        Ok(SagaOutcome::Held { holds, confirms: Some(confirms) }) => {
            assert_eq!(holds.len(), 3);
            assert!(confirms.iter().all(|c| matches!(c, Ok(Outcome::Confirmed { .. }))), "{confirms:?}");
        }
        other => panic!("expected held and confirmed: {other:?}"),
    }

    // One part short: every other part is released, nothing stays held.
    let id = rid_for(2, &names[0], SHARDS);
    match node.reserve_across_shards(id, parts(id, [1, 100, 1]), false).await {
        Ok(SagaOutcome::Undone { holds }) => {
            assert!(matches!(holds[1], Ok(Outcome::Refused(_))), "{holds:?}");
            assert!(matches!(holds[0], Ok(Outcome::Held { .. })), "{holds:?}");
        }
        other => panic!("expected undone: {other:?}"),
    }
    // This node's replicas (live_holds reads them) see the releases once
    // they apply what the leaders committed.
    let live = |node: &cluster::Node| {
        let node = node.clone();
        async move { node.live_holds(Duration::from_secs(5)).await }
    };

    // The caller gives up at once (an HTTP timeout, a disconnect): the saga
    // still releases what it held, long before the 60 s deadline.
    for n in 3..13 {
        let id = rid_for(n, &names[0], SHARDS);
        let _ = tokio::time::timeout(
            Duration::from_micros(1),
            node.reserve_across_shards(id, parts(id, [1, 100, 1]), false),
        )
        .await;
    }
    // The abandoned sagas run on their own tasks: one may hold its parts
    // after another released its, so wait until every item shows none held.
    let levels = |node: &cluster::Node| {
        let node = node.clone();
        let names = names.clone();
        async move {
            let mut levels = Vec::new();
            for name in names {
                let shard = engine::shard_of(&name, SHARDS);
                let item = node.read(shard, move |s| s.get_item(&name, "w1").ok().flatten()).await;
                let item = item.unwrap_or_else(|e| panic!("read: {e}")).unwrap_or_else(|| panic!("no item"));
                levels.push((item.on_hand, item.reserved));
            }
            levels
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while live(node).await != Some(0) || levels(node).await.iter().any(|(_, reserved)| *reserved != 0) {
        assert!(Instant::now() < deadline, "saga parts left held: {:?} {:?}", live(node).await, levels(node).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One unit sold (the first saga), none left held.
    assert_eq!(levels(node).await, vec![(4, 0); 3]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_any_node_reach_the_shard_leader_and_reads_see_them() {
    let mut cluster = TestCluster::start(3, SHARDS, |_| {}).await;
    cluster.wait_for_leaders(SETTLE).await;
    for shard in 0..SHARDS {
        let name = sku_on(shard, SHARDS, "sku-route");
        for via in 1..=3u64 {
            let outcome = cluster
                .node(via)
                .submit(upsert(&name, &format!("w{via}"), 10 * via, 0))
                .await
                .unwrap_or_else(|e| panic!("submit via {via}: {e}"));
            expect_ok(&outcome);
        }
        // A linearizable read on every node, leader or not, sees all three.
        for via in 1..=3u64 {
            let name_read = name.clone();
            let total = cluster
                .node(via)
                .read(shard, move |s| {
                    s.sku_items(&name_read)
                        .unwrap_or_else(|e| panic!("{e}"))
                        .items
                        .iter()
                        .map(|i| i.on_hand)
                        .sum::<u64>()
                })
                .await
                .unwrap_or_else(|e| panic!("read via {via}: {e}"));
            assert_eq!(total, 60, "shard {shard} via node {via}");
        }
    }
    // More entries, so that batches outnumber the blank and membership
    // entries elections and rebalancing write.
    for shard in 0..SHARDS {
        let name = sku_on(shard, SHARDS, "sku-route");
        for n in 0..10u64 {
            let outcome = cluster.node(1 + n % 3).submit(upsert(&name, "w9", n, 0)).await;
            expect_ok(&outcome.unwrap_or_else(|e| panic!("submit: {e}")));
        }
    }
    cluster.converged_digests(SETTLE).await;
    let stats: Vec<cluster::NodeStats> = cluster.live().map(|node| node.stats()).collect();
    let data_dirs: Vec<std::path::PathBuf> = cluster.configs.iter().map(|config| config.data_dir.clone()).collect();
    let dirs = std::mem::take(&mut cluster.dirs);
    cluster.shutdown().await;
    // Encode once: every replica holds the leader's frames byte for byte,
    // each batch encoded by its leader alone and appended verbatim by the
    // followers (blank and membership entries are encoded where written).
    let read_wal = |dir: &std::path::Path, shard: u32| {
        let wal = Wal::open(dir.join(format!("shard-{shard:05}")).join("wal"), WalConfig::default())
            .unwrap_or_else(|e| panic!("open WAL: {e}"));
        wal.reader().read_framed(0, u64::MAX).unwrap_or_else(|e| panic!("read WAL: {e}"))
    };
    let (mut batches, mut others) = (0u64, 0u64);
    for shard in 0..SHARDS {
        let replicas: Vec<Vec<engine::wal::FramedEntry>> = data_dirs.iter().map(|dir| read_wal(dir, shard)).collect();
        for framed in &replicas[0] {
            match framed.entry.payload {
                engine::EntryPayload::Batch(_) => batches += 1,
                _ => others += 1,
            }
        }
        let entries = replicas[0].len();
        assert!(entries >= 3, "shard {shard}: {entries} entries");
        for (node, replica) in replicas.iter().enumerate().skip(1) {
            for framed in replica {
                let index = framed.entry.log_id.index;
                if let Some(first) = replicas[0].iter().find(|f| f.entry.log_id.index == index) {
                    assert_eq!(
                        framed.frame.as_bytes(),
                        first.frame.as_bytes(),
                        "shard {shard}, entry {index}: node {} differs from node 1",
                        node + 1
                    );
                }
            }
        }
    }
    let encoded: u64 = stats.iter().map(|s| s.wal_entries_encoded).sum();
    let verbatim: u64 = stats.iter().map(|s| s.wal_entries_verbatim).sum();
    assert!(batches >= u64::from(SHARDS) * 13, "{batches} batches");
    assert!(encoded <= batches + 3 * others, "{encoded} encoded for {batches} batches and {others} other entries");
    assert!(verbatim >= 2 * batches, "{verbatim} verbatim appends for {batches} batches on 3 replicas");
    drop(dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_are_spread_evenly_over_the_nodes() {
    let cluster = TestCluster::start(3, SHARDS, |_| {}).await;
    cluster.wait_for_leaders(SETTLE).await;
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut led: BTreeMap<u64, u32> = BTreeMap::new();
        for shard in cluster.node(1).status().shards {
            *led.entry(shard.leader.unwrap_or(0)).or_default() += 1;
        }
        if led == BTreeMap::from([(1, 2), (2, 2), (3, 2)]) {
            break;
        }
        assert!(Instant::now() < deadline, "leaders not spread: {led:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_replaced_as_leader_and_catches_up_on_restart() {
    let mut cluster = TestCluster::start(3, SHARDS, |_| {}).await;
    cluster.wait_for_leaders(SETTLE).await;
    let victim = cluster.leader_of(1, 0).unwrap_or_else(|| panic!("no leader"));
    cluster.kill(victim).await;
    let survivor = if victim == 1 { 2 } else { 1 };

    // Every shard keeps taking writes through a survivor (the submit's own
    // bounded retry covers the election).
    for shard in 0..SHARDS {
        let name = sku_on(shard, SHARDS, "sku-failover");
        let outcome = cluster.node(survivor).submit(upsert(&name, "w1", 7, 0)).await;
        expect_ok(&outcome.unwrap_or_else(|e| panic!("shard {shard} after killing {victim}: {e}")));
    }
    cluster.restart(victim, false).await;
    let digests = cluster.converged_digests(SETTLE).await;
    assert!(digests.iter().all(|(applied, _)| applied.is_some()));
    let name = sku_on(0, SHARDS, "sku-failover");
    let seen =
        cluster.node(victim).read_stale(0, move |s| s.get_item(&name, "w1").ok().flatten().map(|i| i.on_hand)).await;
    assert_eq!(seen.unwrap_or_else(|e| panic!("read: {e}")).value, Some(7));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_and_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start(3, 2, |config| {
        config.snapshot_after_entries = 40;
        config.log_entries_kept_after_snapshot = 5;
    })
    .await;
    cluster.wait_for_leaders(SETTLE).await;
    let name = sku_on(0, 2, "sku-wipe");
    for n in 0..150u64 {
        let outcome = cluster.node(1 + n % 3).submit(upsert(&name, "w1", n, 0)).await;
        expect_ok(&outcome.unwrap_or_else(|e| panic!("write {n}: {e}")));
    }
    cluster.kill(3).await;
    for n in 150..300u64 {
        let outcome = cluster.node(1 + n % 2).submit(upsert(&name, "w1", n, 0)).await;
        expect_ok(&outcome.unwrap_or_else(|e| panic!("write {n}: {e}")));
    }
    cluster.restart(3, true).await;
    cluster.converged_digests(SETTLE).await;
    // The leader purged the log behind its snapshot, so node 3 can only have
    // caught up by installing one.
    wait_for_snapshot_index(&cluster, 3, 0).await;
    let seen = cluster.node(3).read_stale(0, move |s| s.get_item(&name, "w1").ok().flatten().map(|i| i.on_hand)).await;
    assert_eq!(seen.unwrap_or_else(|e| panic!("read: {e}")).value, Some(299));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_left_behind_the_purged_log_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start(3, 1, |config| {
        config.snapshot_after_entries = 40;
        config.log_entries_kept_after_snapshot = 5;
    })
    .await;
    cluster.wait_for_leaders(SETTLE).await;
    for n in 0..60u64 {
        expect_ok(
            &cluster.node(1 + n % 3).submit(upsert("behind", "w1", n, 0)).await.unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let lagging = 1 + (cluster.leader_of(1, 0).unwrap_or(1) % 3);
    cluster.kill(lagging).await;
    let via = 1 + (lagging % 3);
    for n in 60..300u64 {
        expect_ok(&cluster.node(via).submit(upsert("behind", "w1", n, 0)).await.unwrap_or_else(|e| panic!("{e}")));
    }
    // Its log ends where the leader's purged log began long ago.
    cluster.restart(lagging, false).await;
    cluster.converged_digests(SETTLE).await;
    // A snapshot past what it had (sent by the leader, or built from the
    // log it was sent).
    wait_for_snapshot_index(&cluster, lagging, 62).await;
    let seen =
        cluster.node(lagging).read_stale(0, |s| s.get_item("behind", "w1").ok().flatten().map(|i| i.on_hand)).await;
    assert_eq!(seen.unwrap_or_else(|e| panic!("read: {e}")).value, Some(299));
    cluster.shutdown().await;
}

/// Waits until node `id`'s snapshot of shard 0 is past `index` (openraft
/// reports a snapshot once its build ends, which runs at low priority and
/// may end after the replicas' states converged).
async fn wait_for_snapshot_index(cluster: &TestCluster, id: u64, index: u64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let status = cluster.node(id).status();
        if status.shards[0].snapshot_index.is_some_and(|snapshot| snapshot > index) {
            return;
        }
        assert!(Instant::now() < deadline, "node {id} has no snapshot past {index}: {status:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until node `id` has built at least `built` snapshots of shard 0,
/// and checks every one came from the shadow (no fallback to the actor).
async fn wait_for_shadow_snapshots(cluster: &TestCluster, id: u64, built: u64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let stats = cluster.node(id).snapshot_stats()[0];
        assert_eq!(stats.fallbacks, 0, "node {id} fell back to the actor: {stats:?}");
        if stats.built >= built {
            return;
        }
        assert!(Instant::now() < deadline, "node {id} built {} of {built} snapshots", stats.built);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_from_its_shadow_snapshot_and_log_has_the_same_state() {
    let mut cluster = TestCluster::start(3, 1, |config| {
        config.snapshot_after_entries = 30;
        config.log_entries_kept_after_snapshot = 5;
    })
    .await;
    cluster.wait_for_leaders(SETTLE).await;
    let leader = cluster.leader_of(1, 0).unwrap_or_else(|| panic!("no leader"));
    let follower = 1 + leader % 3;
    let mut n = 0u64;
    // Holds and upserts, so the snapshot carries reservations and dedup
    // records, not only items.
    while cluster.node(follower).snapshot_stats()[0].built < 2 {
        let name = format!("restart-{}", n % 5);
        expect_ok(
            &cluster.node(1 + n % 3).submit(upsert(&name, "w1", 100 + n, 0)).await.unwrap_or_else(|e| panic!("{e}")),
        );
        let outcome =
            cluster.node(1 + n % 3).submit(hold(rid_for(n, &name, 1), &[(&name, "w1", 1)], 600_000, None)).await;
        expect_ok(&outcome.unwrap_or_else(|e| panic!("hold {n}: {e}")));
        n += 1;
        assert!(n < 1_000, "the follower built no snapshots: {:?}", cluster.node(follower).snapshot_stats());
    }
    wait_for_shadow_snapshots(&cluster, follower, 2).await;
    // A suffix after the newest snapshot, which the restart replays.
    for k in 0..10 {
        expect_ok(&cluster.node(leader).submit(upsert("suffix", "w1", k, 0)).await.unwrap_or_else(|e| panic!("{e}")));
    }
    let before = cluster.converged_digests(SETTLE).await;
    // Every snapshot it has, the newest among them, came from the shadow.
    let stats = cluster.node(follower).snapshot_stats()[0];
    assert_eq!(stats.fallbacks, 0, "{stats:?}");

    cluster.kill(follower).await;
    cluster.restart(follower, false).await;
    // Every replica, the restarted one among them, holds the same state
    // (a leadership hand-back may have added an entry since `before`).
    let after = cluster.converged_digests(SETTLE).await;
    assert!(after[0].0 >= before[0].0, "{after:?} is behind {before:?}");
    // Its log had lost the start of the history to purges: it can only
    // have come back through its snapshot.
    let status = cluster.node(follower).status();
    assert!(status.shards[0].purged_index.is_some(), "nothing purged: {status:#?}");
    let seen =
        cluster.node(follower).read_stale(0, |s| s.get_item("suffix", "w1").ok().flatten().map(|i| i.on_hand)).await;
    assert_eq!(seen.unwrap_or_else(|e| panic!("read: {e}")).value, Some(9));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_installing_a_leaders_snapshot_a_node_builds_correct_snapshots_of_its_own() {
    let mut cluster = TestCluster::start(3, 1, |config| {
        config.snapshot_after_entries = 40;
        config.log_entries_kept_after_snapshot = 5;
    })
    .await;
    cluster.wait_for_leaders(SETTLE).await;
    for n in 0..20u64 {
        expect_ok(
            &cluster.node(1 + n % 3).submit(upsert("install", "w1", n, 0)).await.unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let lagging = 1 + (cluster.leader_of(1, 0).unwrap_or(1) % 3);
    cluster.kill(lagging).await;
    let via = 1 + (lagging % 3);
    // Until the leader purged what the lagging node misses (openraft holds
    // a purge while a replication to it is in flight): it must then be sent
    // a snapshot.
    let mut n = 20u64;
    loop {
        let leader = cluster.leader_of(via, 0).unwrap_or(via);
        if cluster.node(leader).status().shards[0].purged_index.is_some_and(|purged| purged > 60) {
            break;
        }
        expect_ok(&cluster.node(via).submit(upsert("install", "w1", n, 0)).await.unwrap_or_else(|e| panic!("{e}")));
        n += 1;
        assert!(n < 5_000, "the leader never purged: {:#?}", cluster.node(via).status());
    }
    cluster.restart(lagging, false).await;
    cluster.converged_digests(SETTLE).await;
    let stats = cluster.node(lagging).snapshot_stats()[0];
    assert_eq!(stats.installed, 1, "{stats:?}");
    let installed = cluster.node(lagging).status().shards[0].snapshot_index.unwrap_or(0);

    // Its own next snapshots start from the installed one and its log (it
    // built none before: its log ended where the leader's was purged). In
    // debug builds each is checked against the actor's state at its index.
    let first = n;
    while cluster.node(lagging).snapshot_stats()[0].built < stats.built + 2 {
        let name = format!("after-{}", n % 3);
        expect_ok(&cluster.node(via).submit(upsert(&name, "w1", n, 0)).await.unwrap_or_else(|e| panic!("{e}")));
        n += 1;
        assert!(n < first + 1_000, "no local snapshot: {:?}", cluster.node(lagging).snapshot_stats());
    }
    wait_for_shadow_snapshots(&cluster, lagging, stats.built + 2).await;
    wait_for_snapshot_index(&cluster, lagging, installed).await;
    // And a restart from that local snapshot converges with the others.
    cluster.kill(lagging).await;
    cluster.restart(lagging, false).await;
    cluster.converged_digests(SETTLE).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_old_leader_cannot_acknowledge_a_write() {
    let cluster = TestCluster::start(3, 1, |config| config.retry_window_ms = 2_000).await;
    cluster.wait_for_leaders(SETTLE).await;
    let old = cluster.leader_of(1, 0).unwrap_or_else(|| panic!("no leader"));
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    for other in &others {
        cluster.node(old).transport().faults().block(*other);
        cluster.node(*other).transport().faults().block(old);
    }
    let lost = cluster.node(old).submit(upsert("partitioned", "w1", 1, 0)).await;
    assert!(
        matches!(lost, Err(SubmitError::Unknown { .. } | SubmitError::Unavailable { .. })),
        "old leader acknowledged a write it cannot commit: {lost:?}"
    );
    // The majority side elects a leader and takes writes.
    let fresh = cluster.node(others[0]).submit(upsert("majority", "w1", 2, 0)).await;
    expect_ok(&fresh.unwrap_or_else(|e| panic!("majority write: {e}")));
    for node in cluster.live() {
        node.transport().faults().heal_all();
    }
    cluster.converged_digests(SETTLE).await;
    let seen = cluster
        .node(old)
        .read(0, |s| (s.get_item("partitioned", "w1").ok().flatten(), s.get_item("majority", "w1").ok().flatten()))
        .await;
    let (lost, kept) = seen.unwrap_or_else(|e| panic!("read: {e}"));
    assert!(lost.is_none(), "an unacknowledged minority write survived: {lost:?}");
    assert_eq!(kept.map(|i| i.on_hand), Some(2));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_holds_on_one_sku_across_nodes_never_oversell() {
    let cluster = TestCluster::start(3, 2, |_| {}).await;
    cluster.wait_for_leaders(SETTLE).await;
    // Several rounds with different stock and demand: a small property run.
    for (round, (stock, attempts, quantity)) in [(25u64, 120u64, 1u64), (40, 90, 2), (7, 60, 3)].into_iter().enumerate()
    {
        let name = format!("hot-{round}");
        expect_ok(&cluster.node(1).submit(upsert(&name, "w1", stock, 0)).await.unwrap_or_else(|e| panic!("{e}")));
        let mut tasks = Vec::new();
        for n in 0..attempts {
            let node = cluster.node(1 + n % 3).clone();
            let command = hold(rid_for(n + 1000 * round as u64, &name, 2), &[(&name, "w1", quantity)], 600_000, None);
            tasks.push(tokio::spawn(async move { node.submit(command).await }));
        }
        let mut held = 0u64;
        for task in tasks {
            match task.await.unwrap_or_else(|e| panic!("join: {e}")) {
                Ok(Outcome::Held { .. }) => held += 1,
                Ok(Outcome::Refused(refusal)) => assert_eq!(refusal.code(), "insufficient_stock"),
                other => panic!("unexpected: {other:?}"),
            }
        }
        assert_eq!(held, stock / quantity, "round {round}: every unit sold once, none twice");
        let shard = engine::shard_of(&name, 2);
        let item = cluster.node(2).read(shard, move |s| s.get_item(&name, "w1").ok().flatten()).await;
        let item = item.unwrap_or_else(|e| panic!("read: {e}")).unwrap_or_else(|| panic!("item gone"));
        assert_eq!(item.reserved, held * quantity);
        assert!(item.reserved <= item.on_hand);
    }
    cluster.converged_digests(SETTLE).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_made_under_one_leader_expires_on_time_under_the_next() {
    let mut cluster = TestCluster::start(3, 1, |_| {}).await;
    cluster.wait_for_leaders(SETTLE).await;
    let first = cluster.leader_of(1, 0).unwrap_or_else(|| panic!("no leader"));
    let via = if first == 1 { 2 } else { 1 };
    expect_ok(&cluster.node(via).submit(upsert("expiring", "w1", 3, 0)).await.unwrap_or_else(|e| panic!("{e}")));
    let id = rid_for(1, "expiring", 1);
    let ttl_ms = 3_000;
    let held = cluster.node(via).submit(hold(id, &[("expiring", "w1", 2)], ttl_ms, None)).await;
    let deadline_ms = match held.unwrap_or_else(|e| panic!("hold: {e}")) {
        Outcome::Held { reservation, .. } => reservation.deadline_ms,
        other => panic!("not held: {other:?}"),
    };
    cluster.kill(first).await;
    // Nothing else is written: only the new leader's ticks can expire it.
    let state = cluster.node(via).read(0, move |s| s.reservation(&id).ok().flatten().map(|r| r.summary.state)).await;
    assert_eq!(state.unwrap_or_else(|e| panic!("read: {e}")), Some(ReservationState::Held), "expired early");
    let give_up = Instant::now() + Duration::from_millis(ttl_ms) + SETTLE;
    loop {
        let view = cluster.node(via).read(0, move |s| s.reservation(&id).ok().flatten()).await;
        let view = view.unwrap_or_else(|e| panic!("read: {e}")).unwrap_or_else(|| panic!("reservation gone"));
        if view.summary.state == ReservationState::Expired {
            let ended = view.summary.ended_at_ms.unwrap_or(0);
            assert!(ended >= deadline_ms, "expired at {ended}, before its deadline {deadline_ms}");
            break;
        }
        assert!(Instant::now() < give_up, "hold never expired under the new leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let item = cluster.node(via).read(0, |s| s.get_item("expiring", "w1").ok().flatten()).await;
    assert_eq!(item.unwrap_or_else(|e| panic!("read: {e}")).map(|i| i.reserved), Some(0));
    cluster.shutdown().await;
}

/// Chaos finding #4: log time must never run ahead of real time, so a node
/// that restarts resumes each shard's log time from its own log (the
/// downtime is not counted, and a hold placed before lives on), and moves
/// it to its wall clock only once the shard is idle (nothing can expire
/// early then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_log_time_resumes_from_the_log_and_catches_up_only_when_idle() {
    let shards = 2;
    let mut cluster = TestCluster::start(1, shards, |_| {}).await;
    cluster.wait_for_leaders(SETTLE).await;
    let busy = sku_on(0, shards, "sku-busy");
    let idle = sku_on(1, shards, "sku-idle");
    for name in [&busy, &idle] {
        expect_ok(&cluster.node(1).submit(upsert(name, "w1", 5, 0)).await.unwrap_or_else(|e| panic!("{e}")));
    }
    let id = rid_for(1, &busy, shards);
    let ttl_ms = 6_000;
    let held = cluster.node(1).submit(hold(id, &[(&busy, "w1", 1)], ttl_ms, None)).await;
    expect_ok(&held.unwrap_or_else(|e| panic!("hold: {e}")));
    let placed = Instant::now();

    // Down for 3 s: half the hold's TTL.
    let downtime = Duration::from_secs(3);
    cluster.kill(1).await;
    tokio::time::sleep(downtime).await;
    cluster.restart(1, false).await;
    cluster.wait_for_leaders(SETTLE).await;
    let node = cluster.node(1);
    let behind_ms = |shard: u32| node.clock().shard(shard).unwrap_or_else(|| panic!("no shard")).behind_wall_ms();
    // Both shards resumed where their logs ended, 3 s behind the wall.
    for shard in 0..shards {
        assert!(behind_ms(shard) >= 2_500, "shard {shard} is {} ms behind", behind_ms(shard));
    }
    // On the wall clock the hold would be past half its TTL; on log time it
    // has lost none of it to the downtime.
    let state = node.read(0, move |s| s.reservation(&id).ok().flatten().map(|r| r.summary.state)).await;
    assert_eq!(state.unwrap_or_else(|e| panic!("read: {e}")), Some(ReservationState::Held));

    // A write to the idle shard (no live hold) catches it up.
    expect_ok(&node.submit(upsert(&idle, "w1", 6, 0)).await.unwrap_or_else(|e| panic!("{e}")));
    assert!(behind_ms(1) < 1_000, "idle shard still {} ms behind", behind_ms(1));
    // The busy one stays behind while its hold lives.
    expect_ok(&node.submit(upsert(&busy, "w2", 1, 0)).await.unwrap_or_else(|e| panic!("{e}")));
    assert!(behind_ms(0) >= 2_500, "busy shard caught up with a hold live: {} ms behind", behind_ms(0));

    // The hold ends a whole TTL of log time after it was placed: no sooner
    // than the TTL plus the downtime in real time.
    let give_up = Instant::now() + Duration::from_millis(ttl_ms) + SETTLE;
    loop {
        let view = node.read(0, move |s| s.reservation(&id).ok().flatten()).await;
        let view = view.unwrap_or_else(|e| panic!("read: {e}")).unwrap_or_else(|| panic!("reservation gone"));
        if view.summary.state == ReservationState::Expired {
            assert!(placed.elapsed() >= Duration::from_millis(ttl_ms) + downtime, "expired early");
            break;
        }
        assert!(Instant::now() < give_up, "the hold never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle now: the next write catches the busy shard up too.
    expect_ok(&node.submit(upsert(&busy, "w2", 2, 0)).await.unwrap_or_else(|e| panic!("{e}")));
    assert!(behind_ms(0) < 1_000, "shard 0 still {} ms behind once idle", behind_ms(0));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_are_explicit_admin_operations() {
    let mut cluster = TestCluster::start(3, 2, |config| config.replication_factor = 0).await;
    cluster.wait_for_leaders(SETTLE).await;
    expect_ok(&cluster.node(1).submit(upsert("members", "w1", 9, 0)).await.unwrap_or_else(|e| panic!("{e}")));

    // A fourth node knows the others but is not in their member list: it
    // initializes nothing and waits to be added.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = cluster.configs[0].clone();
    config.node_id = 4;
    config.listen = addr.clone();
    config.data_dir = dir.path().to_path_buf();
    let fourth = cluster::Node::start_on(config, listener).await.unwrap_or_else(|e| panic!("start 4: {e}"));
    assert!(fourth.status().shards.iter().all(|s| s.leader.is_none()), "node 4 joined by itself");

    cluster.node(2).add_learner(4, addr).await.unwrap_or_else(|e| panic!("add learner: {e}"));
    // Every node learns the new membership from the log (a follower may be a
    // heartbeat behind the leaders that committed it).
    let deadline = Instant::now() + SETTLE;
    while !cluster.live().all(|node| node.status().shards.iter().all(|s| s.learners.contains(&4))) {
        assert!(Instant::now() < deadline, "learner not in every membership: {:#?}", cluster.node(1).status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.node(3).change_voters(vec![1, 2, 3, 4], false).await.unwrap_or_else(|e| panic!("promote: {e}"));
    cluster.node(2).remove_node(1, Duration::ZERO).await.unwrap_or_else(|e| panic!("remove: {e}"));
    let deadline = Instant::now() + SETTLE;
    loop {
        let status = fourth.status();
        let done = status.shards.iter().all(|s| s.voters == vec![2, 3, 4] && s.leader.is_some_and(|l| l != 1));
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "membership did not settle: {status:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The new voter serves linearizable reads of what was written before it joined.
    let shard = engine::shard_of("members", 2);
    let seen = fourth.read(shard, |s| s.get_item("members", "w1").ok().flatten().map(|i| i.on_hand)).await;
    assert_eq!(seen.unwrap_or_else(|e| panic!("read: {e}")), Some(9));
    fourth.shutdown().await;
    cluster.kill(1).await;
    cluster.shutdown().await;
}
