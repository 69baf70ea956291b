//! WAL append + fsync: durable commands per second at 1, 16, 256 and 4096
//! commands per entry.
//!
//! * `sync_each` — append one entry, wait for its fsync, repeat: the latency
//!   bound of a single writer.
//! * `group_commit` — append entries back to back, each with a flush
//!   callback, as Raft does; the flusher thread covers many entries with one
//!   fsync. The figure is entries appended until the last is durable.
//!
//! `cargo bench -p tally-engine --bench wal`

use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::wal::Wal;
use engine::{LogEntry, LogId, WalConfig};

mod support;
use support::hold;

const BATCHES: [u64; 4] = [1, 16, 256, 4096];

fn entry(index: u64, batch: u64) -> LogEntry {
    let commands = (0..batch).map(|n| hold(index * batch + n, n % 1000, 60_000)).collect();
    LogEntry::batch(LogId::new(1, index), index, commands)
}

/// A fresh WAL and 64 entries of `batch` commands to append, renumbered.
fn setup(batch: u64) -> (tempfile::TempDir, Wal, Vec<LogEntry>) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap_or_else(|e| panic!("{e}"));
    let wal = Wal::open(dir.path(), WalConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    let template = (1..=64).map(|i| entry(i, batch)).collect();
    (dir, wal, template)
}

/// A copy of a template entry at `index`; built outside the timing.
fn numbered(template: &[LogEntry], index: u64) -> LogEntry {
    let mut next = template[(index % 64) as usize].clone();
    next.log_id = LogId::new(1, index);
    next
}

fn sync_each(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_sync_each");
    group.measurement_time(Duration::from_secs(6));
    for batch in BATCHES {
        let (_dir, mut wal, template) = setup(batch);
        let mut index = 0u64;
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
            b.iter_batched(
                || {
                    index += 1;
                    numbered(&template, index)
                },
                |next| {
                    wal.append(std::slice::from_ref(&next)).unwrap_or_else(|e| panic!("{e}"));
                    wal.sync().unwrap_or_else(|e| panic!("{e}"));
                    // Dropped outside the timing.
                    next
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_group_commit");
    group.measurement_time(Duration::from_secs(6));
    for batch in BATCHES {
        let (_dir, mut wal, template) = setup(batch);
        let mut index = 0u64;
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
            b.iter_custom(|iters| {
                let entries: Vec<LogEntry> = (1..=iters).map(|i| numbered(&template, index + i)).collect();
                index += iters;
                let (sender, receiver) = mpsc::channel();
                let started = Instant::now();
                for entry in &entries {
                    wal.append(std::slice::from_ref(entry)).unwrap_or_else(|e| panic!("{e}"));
                    let sender = sender.clone();
                    wal.flush(Box::new(move |result| {
                        let _ = sender.send(result.is_ok());
                    }));
                }
                for _ in 0..iters {
                    assert!(receiver.recv().unwrap_or(false), "flush failed");
                }
                started.elapsed()
            });
        });
        let stats = wal.stats();
        eprintln!(
            "group_commit batch {batch}: {} flushes in {} fsyncs ({:.1} entries per fsync)",
            stats.flushes,
            stats.syncs,
            stats.flushes as f64 / stats.syncs.max(1) as f64
        );
    }
    group.finish();
}

criterion_group!(benches, sync_each, group_commit);
criterion_main!(benches);
