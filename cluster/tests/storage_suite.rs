//! openraft's own storage conformance suite, run against the engine's WAL
//! (`LogStore`) and the shard actor (`StateMachine`).

use std::sync::Arc;

use cluster::log_store::LogStore;
use cluster::raft_types::TypeConfig;
use cluster::shadow::{Shadow, SnapshotThread};
use cluster::state_machine::{Publisher, StateMachine};
use engine::actor::ShardPool;
use engine::snapshot::SnapshotStore;
use engine::wal::Wal;
use engine::{Limits, ShardState, WalConfig};
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use tokio::sync::{broadcast, watch};

struct Builder;

/// Keeps the temp dir and the actor threads alive for one test.
struct Guard {
    _dir: tempfile::TempDir,
    _pool: ShardPool,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Guard> for Builder {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let wal = Wal::open(dir.path().join("wal"), WalConfig::default()).unwrap_or_else(|e| panic!("wal: {e}"));
        let snapshots = SnapshotStore::open(dir.path().join("snapshots"), 2).unwrap_or_else(|e| panic!("snap: {e}"));
        let pool =
            ShardPool::start(vec![ShardState::new(0, 1, Limits::default())], 1).unwrap_or_else(|e| panic!("pool: {e}"));
        let actor = pool.shard(0).cloned().unwrap_or_else(|| panic!("no actor"));
        let (events, _) = broadcast::channel(16);
        let publisher = Publisher { ledger: None, is_leader: Arc::default(), events, ring: None };
        let (deadline, _) = watch::channel(None);
        // With a shadow: the suite applies entries it never appended, so
        // its snapshots exercise the fallback to the actor as well.
        let thread = SnapshotThread::start(1).unwrap_or_else(|e| panic!("snapshot thread: {e}"));
        let shadow = Shadow::new(wal.reader(), snapshots.clone(), 0, 1, Limits::default(), 256);
        let state_machine =
            StateMachine::new(0, actor, snapshots, publisher, Arc::new(deadline)).with_shadow(shadow, thread);
        Ok((Guard { _dir: dir, _pool: pool }, LogStore::new(wal), state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_and_shard_actor_pass_openraft_storage_suite() {
    Suite::test_all(Builder).await.unwrap_or_else(|e| panic!("openraft storage suite: {e}"));
}
