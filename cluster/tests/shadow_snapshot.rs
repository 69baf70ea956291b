//! Snapshots built from the shadow replica, driven through openraft's state
//! machine interface on a real WAL and shard actor: what they hold, what
//! happens when the log no longer reaches the shadow, and after a snapshot
//! from a leader replaces the state.

mod common;

use std::sync::Arc;

use actix::Addr;
use cluster::raft_types::{Snapshot, entry_from_engine, log_id_to_engine};
use cluster::shadow::{Shadow, SnapshotThread};
use cluster::state_machine::{Publisher, SnapshotStats, StateMachine};

use engine::actor::{Read, ShardActor, ShardPool};
use engine::snapshot::SnapshotStore;
use engine::testing::{hold, rid_for, upsert};
use engine::wal::{FramedEntry, Wal};
use engine::{Command, Limits, LogEntry, LogId, ShardState, WalConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use tokio::sync::{broadcast, watch};

const TERM: u64 = 1;
/// Entries the shadow reads from the WAL at once.
const READ_ENTRIES_MAX: u64 = 64;

/// One shard as a node holds it: WAL, snapshot directory, actor, and the
/// state machine openraft would drive, with its shadow.
struct Shard {
    _dir: tempfile::TempDir,
    _pool: ShardPool,
    wal: Wal,
    actor: Addr<ShardActor>,
    state_machine: StateMachine,
    /// Index of the next entry to append.
    next_index: u64,
    /// Log time of the next entry.
    ts_ms: u64,
}

impl Shard {
    fn start() -> Shard {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path();
        let wal = Wal::open(path.join("wal"), WalConfig::default()).unwrap_or_else(|e| panic!("wal: {e}"));
        let snapshots = SnapshotStore::open(path.join("snapshots"), 2).unwrap_or_else(|e| panic!("snapshots: {e}"));
        let pool =
            ShardPool::start(vec![ShardState::new(0, 1, Limits::default())], 1).unwrap_or_else(|e| panic!("pool: {e}"));
        let actor = pool.shard(0).cloned().unwrap_or_else(|| panic!("no actor"));
        let (events, _) = broadcast::channel(16);
        let publisher = Publisher { ledger: None, is_leader: Arc::default(), events, ring: None };
        let (deadline, _) = watch::channel(None);
        let thread = SnapshotThread::start(1).unwrap_or_else(|e| panic!("snapshot thread: {e}"));
        let shadow = Shadow::new(wal.reader(), snapshots.clone(), 0, 1, Limits::default(), READ_ENTRIES_MAX);
        let state_machine =
            StateMachine::new(0, actor.clone(), snapshots, publisher, Arc::new(deadline)).with_shadow(shadow, thread);
        Shard { _dir: dir, _pool: pool, wal, actor, state_machine, next_index: 0, ts_ms: 1_000 }
    }

    /// Appends one entry per command list to the WAL (durably) and applies
    /// them through the state machine, as openraft does once they commit.
    async fn write(&mut self, lists: Vec<Vec<Command>>) {
        let mut entries = Vec::with_capacity(lists.len());
        let first = self.next_index;
        for commands in lists {
            entries.push(LogEntry::batch(LogId::new(TERM, self.next_index), self.ts_ms, commands));
            self.next_index += 1;
            self.ts_ms += 40;
        }
        self.wal.append(&entries).unwrap_or_else(|e| panic!("append: {e}"));
        self.wal.sync().unwrap_or_else(|e| panic!("sync: {e}"));
        let framed = self.wal.reader().read_framed(first, self.next_index).unwrap_or_else(|e| panic!("read: {e}"));
        self.apply(framed).await;
    }

    async fn apply(&mut self, entries: Vec<FramedEntry>) {
        let items: Vec<_> =
            entries.into_iter().map(|entry| entry_from_engine(entry).map(|entry| (entry, None))).collect();
        self.state_machine.apply(futures_util::stream::iter(items)).await.unwrap_or_else(|e| panic!("apply: {e}"));
    }

    /// Upserts, holds (some expire as log time passes) and confirms: `n`
    /// entries, seeded by `round` so rounds differ.
    async fn traffic(&mut self, round: u64, n: u64) {
        let mut lists = Vec::new();
        for k in 0..n {
            let sku = format!("sku-{}", k % 7);
            let id = rid_for(round * 1_000 + k, &sku, 1);
            lists.push(vec![upsert(&sku, "w1", 50 + round, 0), hold(id, &[(&sku, "w1", 1)], 100 + 30 * (k % 5), None)]);
        }
        self.write(lists).await;
    }

    /// A snapshot built as openraft builds one, with its image as openraft
    /// fetches it to send (the builder answers only the meta).
    async fn snapshot(&mut self) -> Snapshot {
        let mut builder =
            self.state_machine.try_create_snapshot_builder(true).await.unwrap_or_else(|| panic!("no snapshot builder"));
        let built = builder.build_snapshot().await.unwrap_or_else(|e| panic!("build snapshot: {e}"));
        let current = self
            .state_machine
            .get_current_snapshot()
            .await
            .unwrap_or_else(|e| panic!("current snapshot: {e}"))
            .unwrap_or_else(|| panic!("no current snapshot after a build"));
        assert_eq!(current.meta, built.meta, "the snapshot built is the current one");
        current
    }

    /// The actor's last applied id and digest.
    async fn actor_state(&self) -> (Option<LogId>, u128) {
        let answer = self
            .actor
            .send(Read::new(|state| (state.last_applied(), state.digest())))
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        answer.0
    }

    fn stats(&self) -> SnapshotStats {
        self.state_machine.counters().stats(0)
    }
}

/// The state a snapshot holds, decoded from its image, and its digest.
fn snapshot_state(snapshot: &Snapshot) -> (Option<LogId>, u128) {
    let store_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = SnapshotStore::open(store_dir.path(), 1).unwrap_or_else(|e| panic!("store: {e}"));
    let (_, state) = store.install(&snapshot.snapshot).unwrap_or_else(|e| panic!("image: {e}"));
    let last = snapshot.meta.last_log_id.as_ref().map(log_id_to_engine);
    assert_eq!(state.last_applied(), last, "the image holds what its meta says");
    state.check_invariants().unwrap_or_else(|e| panic!("invariants: {e}"));
    (last, state.digest())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_snapshot_holds_the_shards_state_at_its_index_across_builds() {
    let mut shard = Shard::start();
    for round in 0..4 {
        shard.traffic(round, 20 + round * 7).await;
        let snapshot = shard.snapshot().await;
        let actor = shard.actor_state().await;
        assert_eq!(snapshot_state(&snapshot), actor, "round {round}: snapshot and shard differ");
        assert_eq!(actor.0, Some(LogId::new(TERM, shard.next_index - 1)));
        // The shadow stays at the snapshot, ready for the next build.
        let shadow = shard.state_machine.shadow().map(Shadow::last_applied);
        assert_eq!(shadow, Some(Some(actor.0)), "round {round}");
    }
    let stats = shard.stats();
    assert_eq!((stats.built, stats.fallbacks), (4, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_purged_past_the_shadow_falls_back_to_the_actor_and_counts_it() {
    let mut shard = Shard::start();
    shard.traffic(0, 20).await;
    let first = shard.snapshot().await;
    let first_last = first.meta.last_log_id.as_ref().map(log_id_to_engine);

    // The entries right after the shadow (and after the newest snapshot
    // file, which is at the same index) leave the log.
    shard.traffic(1, 20).await;
    let purge_to = first_last.map_or(0, |id| id.index) + 5;
    shard.wal.purge(LogId::new(TERM, purge_to)).unwrap_or_else(|e| panic!("purge: {e}"));

    let second = shard.snapshot().await;
    assert_eq!(snapshot_state(&second), shard.actor_state().await, "the actor's snapshot is the shard's state");
    let stats = shard.stats();
    assert_eq!((stats.built, stats.fallbacks), (2, 1), "{stats:?}");
    assert_eq!(shard.state_machine.shadow().map(Shadow::last_applied), Some(None), "the stale shadow is gone");

    // The next build starts a new shadow from the actor's snapshot file and
    // the log after it, which is whole again.
    shard.traffic(2, 15).await;
    let third = shard.snapshot().await;
    assert_eq!(snapshot_state(&third), shard.actor_state().await);
    let stats = shard.stats();
    assert_eq!((stats.built, stats.fallbacks), (3, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_snapshot_from_the_leader_the_next_local_snapshot_is_the_shards_state() {
    let mut leader = Shard::start();
    let mut follower = Shard::start();
    // Both apply the same log; the follower builds a snapshot (its shadow
    // is then at that index).
    leader.traffic(0, 25).await;
    follower.traffic(0, 25).await;
    follower.snapshot().await;
    assert!(follower.state_machine.shadow().and_then(Shadow::last_applied).is_some());

    // The follower misses entries the leader then snapshots past: it gets
    // the leader's snapshot, and openraft purges its log up to it.
    leader.traffic(1, 30).await;
    let from_leader = leader.snapshot().await;
    let installed = from_leader.meta.last_log_id.as_ref().map(log_id_to_engine);
    follower
        .state_machine
        .install_snapshot(&from_leader.meta, from_leader.snapshot.clone())
        .await
        .unwrap_or_else(|e| panic!("install: {e}"));
    let installed_id = installed.unwrap_or_else(|| panic!("the leader's snapshot covers entries"));
    follower.wal.purge(installed_id).unwrap_or_else(|e| panic!("purge: {e}"));
    assert_eq!(follower.state_machine.shadow().map(Shadow::last_applied), Some(None), "the shadow is dropped");
    assert_eq!(follower.actor_state().await, leader.actor_state().await);

    // Both go on with the same entries; the follower's next snapshot starts
    // from the installed file and its log.
    follower.next_index = leader.next_index;
    follower.ts_ms = leader.ts_ms;
    leader.traffic(2, 12).await;
    follower.traffic(2, 12).await;
    let local = follower.snapshot().await;
    let follower_state = follower.actor_state().await;
    assert_eq!(snapshot_state(&local), follower_state);
    assert_eq!(follower_state, leader.actor_state().await, "replicas of one log agree");
    let stats = follower.stats();
    assert_eq!((stats.built, stats.fallbacks), (2, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_build_far_behind_catches_up_in_bounded_reads() {
    let mut shard = Shard::start();
    // More entries than one catch-up read takes, before the first build:
    // the shadow starts empty and replays them in several reads.
    let entries = READ_ENTRIES_MAX * 5 + 17;
    shard.traffic(0, entries).await;
    let snapshot = shard.snapshot().await;
    assert_eq!(snapshot_state(&snapshot), shard.actor_state().await);
    let stats = shard.stats();
    assert_eq!((stats.built, stats.fallbacks), (1, 0), "{stats:?}");
}
