//! Snapshot write and load for a shard of one million items.
//!
//! Write: serialise, write, fsync, rename, fsync the directory. Load: read,
//! check the CRC, validate the archive and its references, rebuild the
//! indexes.
//!
//! `cargo bench -p tally-engine --bench snapshot`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use engine::snapshot::{SnapshotStore, load};

mod support;
use support::{quick, stocked_shard};

fn snapshots(c: &mut Criterion) {
    let items: u64 = if quick() { 10_000 } else { 1_000_000 };
    let (state, _) = stocked_shard(items);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap_or_else(|e| panic!("{e}"));
    let store = SnapshotStore::open(dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group(format!("snapshot_{items}_items"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("write", |b| b.iter(|| store.save(&state).unwrap_or_else(|e| panic!("{e}"))));
    let file = store.save(&state).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("snapshot of {items} items: {} bytes", file.len);
    group.bench_function("load", |b| {
        b.iter(|| {
            let (_, loaded) = load(&file.path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(loaded.stats().items, items);
            loaded
        })
    });
    group.finish();
}

criterion_group!(benches, snapshots);
criterion_main!(benches);
