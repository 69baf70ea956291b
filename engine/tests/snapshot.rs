//! Snapshots: durable, checked, and equal to the state they were taken of.

use engine::cmd::AdjustReason;
use engine::snapshot::{SnapshotStore, load, read_image};
use engine::testing::{adjust, hold, key, rid, upsert};
use engine::{Limits, LogEntry, LogId, ShardState, SnapshotError};

/// A shard with some items, holds and movements, at log index `entries`.
fn busy_state(entries: u64) -> ShardState {
    let mut state = ShardState::new(0, 1, Limits::default());
    for index in 1..=entries {
        let sku = format!("SKU-{}", index % 50);
        let commands = vec![
            upsert(&sku, "berlin", 100, 5),
            adjust(&sku, "berlin", -1, AdjustReason::Damage),
            hold(rid(index), &[(&sku, "berlin", 2)], 10_000, Some(key(&format!("key-{index}")))),
        ];
        let entry = LogEntry::batch(LogId::new(1, index), index * 100, commands);
        state.apply(&entry).unwrap_or_else(|e| panic!("{e}"));
    }
    state
}

#[test]
fn a_saved_snapshot_loads_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = SnapshotStore::open(dir.path(), 2).unwrap_or_else(|e| panic!("{e}"));
    let state = busy_state(200);
    let file = store.save(&state).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.meta.last_applied, Some(LogId::new(1, 200)));
    assert_eq!(file.meta.snapshot_id, "0-1-200");

    let (meta, loaded) = load(&file.path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(meta, file.meta);
    assert_eq!(loaded.digest(), state.digest());
    assert_eq!(loaded.get_item("SKU-7", "berlin").ok().flatten(), state.get_item("SKU-7", "berlin").ok().flatten());
    assert_eq!(
        loaded.history("SKU-7", "berlin", 50).ok().flatten(),
        state.history("SKU-7", "berlin", 50).ok().flatten()
    );
    assert!(loaded.check_invariants().is_ok());

    let latest = store.latest().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(latest, Some(file));
}

#[test]
fn a_snapshot_larger_than_a_sync_step_is_written_whole() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = SnapshotStore::open(dir.path(), 2).unwrap_or_else(|e| panic!("{e}"));
    // Enough items, reservations and history that the state spans several
    // sync steps, the last one partial.
    let state = busy_state(25_000);
    let bytes = state.to_snapshot_bytes().unwrap_or_else(|e| panic!("{e}"));
    assert!(bytes.len() > 2 * engine::snapshot::SYNC_STEP_BYTES, "{} bytes is one step", bytes.len());
    let file = store.save(&state).unwrap_or_else(|e| panic!("{e}"));
    let (_, loaded) = load(&file.path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.digest(), state.digest());
    assert_eq!(read_image(&file.path).map(|image| image.len() as u64).ok(), Some(file.len));
}

#[test]
fn holds_in_a_loaded_snapshot_still_expire_on_time() {
    let state = busy_state(10);
    let bytes = state.to_snapshot_bytes().unwrap_or_else(|e| panic!("{e}"));
    let mut loaded = ShardState::from_snapshot_bytes(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.stats().live_holds, 10);
    // Hold n was made at n*100 ms with a 10 s deadline.
    let tick = |index, ts| LogEntry::batch(LogId::new(1, index), ts, vec![engine::Command::Tick]);
    loaded.apply(&tick(11, 10_499)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.stats().live_holds, 6, "holds 1..=4 are due by 10 499 ms");
    loaded.apply(&tick(12, 11_000)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.stats().live_holds, 0);
}

#[test]
fn only_the_newest_snapshots_are_kept() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = SnapshotStore::open(dir.path(), 2).unwrap_or_else(|e| panic!("{e}"));
    for entries in [5, 10, 15] {
        store.save(&busy_state(entries)).unwrap_or_else(|e| panic!("{e}"));
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let latest = store.latest().unwrap_or_else(|e| panic!("{e}")).map(|f| f.meta.last_applied);
    assert_eq!(latest, Some(Some(LogId::new(1, 15))));
}

#[test]
fn a_flipped_byte_anywhere_is_refused_on_load() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = SnapshotStore::open(dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
    let file = store.save(&busy_state(20)).unwrap_or_else(|e| panic!("{e}"));
    let image = read_image(&file.path).unwrap_or_else(|e| panic!("{e}"));
    for position in (0..image.len()).step_by(97) {
        let mut bad = image.clone();
        bad[position] ^= 0x10;
        std::fs::write(&file.path, &bad).unwrap_or_else(|e| panic!("{e}"));
        match load(&file.path) {
            Err(SnapshotError::Corrupt { .. }) => {}
            other => panic!("flip at {position} not caught: {:?}", other.map(|(meta, _)| meta)),
        }
    }
}

#[test]
fn a_truncated_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = SnapshotStore::open(dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
    let file = store.save(&busy_state(20)).unwrap_or_else(|e| panic!("{e}"));
    let image = read_image(&file.path).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&file.path, &image[..image.len() - 1]).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(load(&file.path), Err(SnapshotError::Corrupt { .. })));
}

#[test]
fn a_received_image_installs_after_it_is_checked() {
    let source = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let target = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = busy_state(30);
    let file = SnapshotStore::open(source.path(), 1).and_then(|s| s.save(&state)).unwrap_or_else(|e| panic!("{e}"));
    let image = read_image(&file.path).unwrap_or_else(|e| panic!("{e}"));
    let store = SnapshotStore::open(target.path(), 1).unwrap_or_else(|e| panic!("{e}"));

    let mut bad = image.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(store.install(&bad).is_err());
    assert_eq!(store.latest().unwrap_or_else(|e| panic!("{e}")), None, "a bad image leaves nothing behind");

    let (installed, loaded) = store.install(&image).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.digest(), state.digest());
    assert_eq!(installed.meta, file.meta);
    assert_eq!(store.latest().unwrap_or_else(|e| panic!("{e}")).map(|f| f.meta), Some(file.meta));
}

#[test]
fn leftover_temp_files_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let stray = dir.path().join(".snapshot-00000000000000000009-00000000000000000001.snap.tmp");
    std::fs::write(&stray, b"half a snapshot").unwrap_or_else(|e| panic!("{e}"));
    SnapshotStore::open(dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
    assert!(!stray.exists());
}
