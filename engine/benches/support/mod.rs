//! Workload builders shared by the engine benchmarks.
#![allow(dead_code)]

use engine::Command;
use engine::ids::QUANTITY_MAX;
use engine::testing::{rid, upsert};
use engine::{Limits, LogEntry, LogId, ShardState};

/// The benchmarks' SKU number `n`; every item is in warehouse "berlin".
pub fn sku_name(n: u64) -> String {
    format!("SKU-{n:06}")
}

/// A one-line, one-unit hold: the flash-sale request.
pub fn hold(id: u64, sku_n: u64, ttl_ms: u64) -> Command {
    engine::testing::hold(rid(id), &[(&sku_name(sku_n), "berlin", 1)], ttl_ms, None)
}

/// Default limits, except that every hold the benchmarks make is allowed.
pub fn bench_limits() -> Limits {
    Limits { items_per_shard_max: u32::MAX, live_holds_per_shard_max: u32::MAX, ..Limits::default() }
}

/// A shard with `items` items of (practically) endless stock, applied
/// through the log like any other state.
pub fn stocked_shard(items: u64) -> (ShardState, u64) {
    stocked_shard_with(items, bench_limits())
}

pub fn stocked_shard_with(items: u64, limits: Limits) -> (ShardState, u64) {
    let mut state = ShardState::new(0, 1, limits);
    let mut index = 0;
    let chunk = 4096;
    let mut next = 0;
    while next < items {
        let end = (next + chunk).min(items);
        index += 1;
        let commands = (next..end).map(|n| upsert(&sku_name(n), "berlin", QUANTITY_MAX / 2, 10)).collect();
        state.apply(&LogEntry::batch(LogId::new(1, index), 1, commands)).unwrap_or_else(|e| panic!("{e}"));
        next = end;
    }
    (state, index)
}

/// True under `cargo test` (benchmarks run once, as tests, to keep them
/// from rotting); false under `cargo bench`, which passes `--bench`.
pub fn quick() -> bool {
    !std::env::args().any(|arg| arg == "--bench")
}

/// The one seeded generator, so workloads repeat.
// Not every benchmark draws from it.
#[allow(unused_imports)]
pub use testkit::SplitMix as Rng;
