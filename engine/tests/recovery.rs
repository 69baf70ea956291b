//! Recovery as a restarted node does it: load the newest snapshot, read the
//! WAL suffix after it, apply — and reach the same state as replaying the
//! whole log.

use engine::cmd::AdjustReason;
use engine::snapshot::SnapshotStore;
use engine::testing::{adjust, hold, rid, upsert};
use engine::wal::Wal;
use engine::{Command, Limits, LogEntry, LogId, ShardState, WalConfig};

fn entry(index: u64) -> LogEntry {
    let sku = format!("SKU-{}", index % 7);
    let commands: Vec<Command> = vec![
        upsert(&sku, "berlin", 50, 3),
        adjust(&sku, "berlin", -1, AdjustReason::Damage),
        hold(rid(index), &[(&sku, "berlin", 1 + index % 3)], 250, None),
    ];
    // Log time moves 100 ms per entry, so holds expire along the way.
    LogEntry::batch(LogId::new(1 + index / 40, index), 1_000 + index * 100, commands)
}

#[test]
fn snapshot_plus_wal_suffix_recovers_the_state_of_the_whole_log() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let wal_dir = dir.path().join("wal");
    let config = WalConfig { segment_bytes_max: 4096, ..WalConfig::default() };
    let entries: Vec<LogEntry> = (1..=120).map(entry).collect();
    let snapshot_at = 70;

    let mut live = ShardState::new(0, 1, Limits::default());
    {
        let mut wal = Wal::open(&wal_dir, config).unwrap_or_else(|e| panic!("{e}"));
        let store = SnapshotStore::open(dir.path().join("snapshots"), 2).unwrap_or_else(|e| panic!("{e}"));
        for entry in &entries {
            wal.append(std::slice::from_ref(entry)).unwrap_or_else(|e| panic!("{e}"));
            live.apply(entry).unwrap_or_else(|e| panic!("{e}"));
            if entry.log_id.index == snapshot_at {
                store.save(&live).unwrap_or_else(|e| panic!("{e}"));
                wal.purge(entry.log_id).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        wal.save_committed(Some(LogId::new(4, 120))).unwrap_or_else(|e| panic!("{e}"));
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
    }

    // A restart: nothing in memory survives.
    let wal = Wal::open(&wal_dir, config).unwrap_or_else(|e| panic!("{e}"));
    let store = SnapshotStore::open(dir.path().join("snapshots"), 2).unwrap_or_else(|e| panic!("{e}"));
    let (meta, mut restored) =
        store.load_latest().unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("no snapshot"));
    assert_eq!(meta.last_applied, Some(LogId::new(2, snapshot_at)));
    assert_eq!(wal.log_state().purged, Some(LogId::new(2, snapshot_at)));
    let committed = wal.committed().unwrap_or_else(|| panic!("committed id lost"));
    let suffix = wal.reader().read_range(snapshot_at + 1, committed.index + 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(suffix.len(), 50);
    for entry in &suffix {
        restored.apply(entry).unwrap_or_else(|e| panic!("{e}"));
    }

    let mut replayed = ShardState::new(0, 1, Limits::default());
    for entry in &entries {
        replayed.apply(entry).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(restored.digest(), replayed.digest());
    assert_eq!(restored.digest(), live.digest());
    assert!(restored.check_invariants().is_ok());
}
