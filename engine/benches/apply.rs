//! Apply throughput on one core: hold commands per second one shard applies.
//!
//! * `holds_only/*` — one-unit holds that do not expire during the sample:
//!   the cost of `Hold` itself. Each sample starts from a shard that already
//!   held, expired and forgot as many holds, so its memory is allocated, as
//!   in a shard that has been running for a while.
//! * `holds_with_request_ids/*` — the same holds, each tagged with a request
//!   id, into a dedup window already full (`dedup_window_max` ids), so every
//!   hold also probes the window, remembers its outcome and forgets the
//!   oldest: the cost of exactly-once delivery, next to `holds_only`.
//! * `steady_state/*` — log time moves 1 ms per entry and holds last 100 ms,
//!   so every hold also expires and is then remembered for retries (and the
//!   oldest forgotten): three state changes per hold, the whole life cycle.
//!   Run with the default retention (up to 1 000 000 ended reservations
//!   remembered) and with 10 000, because that working set decides the cost.
//!
//! Each runs on one hot SKU (every hold on one item) and on 100 000 SKUs
//! chosen uniformly. Entries carry 1024 commands.
//!
//! `cargo bench -p tally-engine --bench apply`

use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use engine::ids::RequestId;
use engine::{Applied, Command, Limits, LogEntry, LogId, ShardState};

mod support;
use support::{Rng, bench_limits, hold, stocked_shard, stocked_shard_with};

const COMMANDS_PER_ENTRY: u64 = 1024;
const TTL_MS: u64 = 100;
const WORKLOADS: [(&str, u64); 2] = [("hot_sku", 1), ("uniform_100k_skus", 100_000)];

/// Items for a workload: fewer when run once as a test.
fn items_for(items: u64) -> u64 {
    if support::quick() { items.min(1_000) } else { items }
}

/// An entry of one-unit holds with fresh reservation ids.
fn hold_entry(index: u64, ts_ms: u64, items: u64, next_id: &mut u64, rng: &mut Rng, ttl_ms: u64) -> LogEntry {
    let commands = (0..COMMANDS_PER_ENTRY)
        .map(|_| {
            *next_id += 1;
            let sku = if items == 1 { 0 } else { rng.below(items) };
            hold(*next_id, sku, ttl_ms)
        })
        .collect();
    LogEntry::batch(LogId::new(1, index), ts_ms, commands)
}

/// A request id numbered `n` (never one a reservation or a filler uses twice).
fn request_id(tag: u8, n: u64) -> RequestId {
    let mut bytes = [tag; 16];
    bytes[8..].copy_from_slice(&n.to_le_bytes());
    RequestId(bytes)
}

/// `entry` with a fresh request id on every command.
fn with_request_ids(entry: LogEntry, next_request: &mut u64) -> LogEntry {
    let engine::EntryPayload::Batch(batch) = entry.payload else {
        return entry;
    };
    let batch = std::sync::Arc::unwrap_or_clone(batch);
    let request_ids = batch
        .commands
        .iter()
        .map(|_| {
            *next_request += 1;
            request_id(0, *next_request)
        })
        .collect();
    LogEntry::batch_with_ids(entry.log_id, batch.ts_ms, batch.commands, request_ids)
}

/// Fills the dedup window to its bound with ticks carrying request ids, so
/// every later tagged command forgets the oldest id, as in a busy shard.
/// Takes and returns the last applied log index.
fn fill_dedup_window(state: &mut ShardState, mut index: u64, ts_ms: u64) -> u64 {
    let fill = if support::quick() { 4 * COMMANDS_PER_ENTRY } else { u64::from(state.limits().dedup_window_max) };
    let mut applied = Applied::default();
    let mut next = 0;
    while next < fill {
        let count = COMMANDS_PER_ENTRY.min(fill - next);
        let request_ids = (next..next + count).map(|n| request_id(1, n)).collect();
        next += count;
        let commands = (0..count).map(|_| Command::Tick).collect();
        index += 1;
        let entry = LogEntry::batch_with_ids(LogId::new(1, index), ts_ms, commands, request_ids);
        state.apply_into(&entry, &mut applied).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(state.stats().request_ids_remembered, fill);
    index
}

/// Log time after the warm-up has expired and forgotten its holds.
const WARM_END_MS: u64 = 10_000_000;

/// Holds, expires and forgets `iters` entries of holds, so the shard's slab,
/// maps and timer nodes are allocated before the measured holds arrive.
fn warm_up(state: &mut ShardState, first_index: u64, iters: u64, items: u64, next_id: &mut u64, rng: &mut Rng) {
    let mut applied = Applied::default();
    for n in 1..=iters {
        let entry = hold_entry(first_index + n, 2, items, next_id, rng, 1);
        state.apply_into(&entry, &mut applied).unwrap_or_else(|e| panic!("{e}"));
    }
    for (n, ts_ms) in [(1, 100), (2, WARM_END_MS)] {
        let tick = LogEntry::batch(LogId::new(1, first_index + iters + n), ts_ms, vec![engine::Command::Tick]);
        state.apply_into(&tick, &mut applied).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(state.stats().live_holds, 0);
    assert_eq!(state.stats().terminal_retained, 0, "warm-up holds forgotten");
}

fn holds_only(c: &mut Criterion) {
    holds(c, "apply_holds_only", false);
}

fn holds_with_request_ids(c: &mut Criterion) {
    holds(c, "apply_holds_with_request_ids", true);
}

/// Holds that do not expire, with or without request ids.
fn holds(c: &mut Criterion, group_name: &str, request_ids: bool) {
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(COMMANDS_PER_ENTRY));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    for (name, items) in WORKLOADS {
        let items = items_for(items);
        let (stocked, first_index): (ShardState, u64) = stocked_shard(items);
        let snapshot = stocked.to_snapshot_bytes().unwrap_or_else(|e| panic!("{e}"));
        let mut rng = Rng::new(11);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let mut state = ShardState::from_snapshot_bytes(&snapshot).unwrap_or_else(|e| panic!("{e}"));
                let mut next_id = 0;
                warm_up(&mut state, first_index, iters, items, &mut next_id, &mut rng);
                let mut start = first_index + iters + 2;
                if request_ids {
                    start = fill_dedup_window(&mut state, start, WARM_END_MS);
                }
                let mut next_request = 0;
                let entries: Vec<LogEntry> = (1..=iters)
                    .map(|n| hold_entry(start + n, WARM_END_MS, items, &mut next_id, &mut rng, 3_600_000))
                    .map(|entry| if request_ids { with_request_ids(entry, &mut next_request) } else { entry })
                    .collect();
                // Outcome and event buffers are reused, as the shard actor does.
                let mut applied = Applied::default();
                let started = Instant::now();
                for entry in &entries {
                    state.apply_into(entry, &mut applied).unwrap_or_else(|e| panic!("{e}"));
                    debug_assert!(applied.outcomes.iter().all(|o| !o.is_refused()));
                }
                let elapsed = started.elapsed();
                assert_eq!(state.stats().live_holds, iters * COMMANDS_PER_ENTRY, "every hold was granted");
                elapsed
            });
        });
    }
    group.finish();
}

fn steady_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_steady_state");
    group.throughput(Throughput::Elements(COMMANDS_PER_ENTRY));
    group.measurement_time(Duration::from_secs(10));
    let retentions =
        [("retain_1m", bench_limits()), ("retain_10k", Limits { terminal_retained_max: 10_000, ..bench_limits() })];
    for ((name, items), (retention, limits)) in WORKLOADS.iter().flat_map(|w| retentions.iter().map(move |r| (*w, *r)))
    {
        let items = items_for(items);
        let (mut state, mut index) = stocked_shard_with(items, limits);
        let mut rng = Rng::new(7);
        let mut next_id = 0u64;
        let mut ts_ms = 1_000u64;
        let mut applied = Applied::default();
        let mut ran = false;
        group.bench_function(BenchmarkId::new(name, retention), |b| {
            ran = true;
            b.iter_batched(
                || {
                    index += 1;
                    ts_ms += 1;
                    hold_entry(index, ts_ms, items, &mut next_id, &mut rng, TTL_MS)
                },
                |entry| {
                    let result = state.apply_into(&entry, &mut applied);
                    // Dropped outside the timing.
                    (entry, result)
                },
                BatchSize::SmallInput,
            );
        });
        // Only if criterion's filter let this case run.
        let live = state.stats().live_holds;
        assert!(
            !ran || (live > 0 && live <= (TTL_MS + 2) * COMMANDS_PER_ENTRY),
            "steady state held: {live} live holds"
        );
    }
    group.finish();
}

criterion_group!(benches, holds_only, holds_with_request_ids, steady_state);
criterion_main!(benches);
