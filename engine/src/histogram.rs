//! Fixed power-of-two histograms: lock-free counters for the hot path.
//!
//! A latency or size recorded on every fsync, entry or expired hold must not
//! take a lock or allocate, so a `Log2Histogram` is an array of atomic
//! counters, one per power of two, plus a sum; `record` is two relaxed
//! `fetch_add`s. Readers take a `Log2Buckets` snapshot (plain integers) and
//! turn it into whatever they export; the server makes Prometheus
//! histograms of them. The WAL's flusher uses it for fsync latency and the
//! cluster layer for batch sizes, commit latency and expiry lag.
//!
//! Bucket bounds (inclusive upper bounds, in the recorded unit):
//!
//! | bucket | values |
//! |---|---|
//! | 0 | `0..=1` |
//! | i, `1 <= i < 31` | `2^(i-1) + 1 ..= 2^i` |
//! | 31 | `2^30 + 1 ..` (overflow; no upper bound) |
//!
//! Because every bound is a power of two, the count of values `<= 2^k` is
//! exact for every `k < 31`: an exporter may publish any subset of the bounds.

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets per histogram: 2^0 up to 2^30, and one overflow bucket. 32 keeps
/// a snapshot `Copy + Default` and covers 2^30 µs (about 18 minutes) and
/// 2^30 ms (12 days) before the overflow bucket.
pub const LOG2_BUCKETS: usize = 32;

/// The bucket `value` falls in (see the module docs for the bounds).
pub fn log2_bucket(value: u64) -> usize {
    if value <= 1 {
        return 0;
    }
    // The smallest i with value <= 2^i is the bit length of value - 1.
    let bucket = (u64::BITS - (value - 1).leading_zeros()) as usize;
    bucket.min(LOG2_BUCKETS - 1)
}

/// The inclusive upper bound of `bucket`: `2^bucket`, or `None` for the
/// overflow bucket (and beyond), whose bound is +Inf.
pub fn log2_bucket_bound(bucket: usize) -> Option<u64> {
    if bucket >= LOG2_BUCKETS - 1 { None } else { Some(1u64 << bucket) }
}

/// The recording side: shared by reference (or `Arc`), written with relaxed
/// atomics. Counters only grow; a reader computes rates.
#[derive(Debug)]
pub struct Log2Histogram {
    counts: [AtomicU64; LOG2_BUCKETS],
    sum: AtomicU64,
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Self { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum: AtomicU64::new(0) }
    }
}

impl Log2Histogram {
    pub fn record(&self, value: u64) {
        // Relaxed: each counter is independent, and a scrape that sees the
        // sum a moment ahead of a bucket is harmless.
        self.counts[log2_bucket(value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The counts now. Not one atomic read: under concurrent `record`s the
    /// sum may be a few values ahead of or behind the buckets. The count is
    /// the sum of the buckets, so buckets and count always agree.
    pub fn snapshot(&self) -> Log2Buckets {
        Log2Buckets {
            counts: std::array::from_fn(|bucket| self.counts[bucket].load(Ordering::Relaxed)),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of a `Log2Histogram`: per-bucket (not cumulative) counts and
/// the sum of the recorded values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Log2Buckets {
    pub counts: [u64; LOG2_BUCKETS],
    pub sum: u64,
}

impl Log2Buckets {
    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Records into a snapshot (no atomics), for tests and aggregation.
    pub fn record(&mut self, value: u64) {
        self.counts[log2_bucket(value)] += 1;
        self.sum = self.sum.wrapping_add(value);
    }

    /// Adds `other` in, e.g. to sum the shards of a node.
    pub fn merge(&mut self, other: &Log2Buckets) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.sum = self.sum.wrapping_add(other.sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_lands_in_the_smallest_power_of_two_bucket_that_holds_it() {
        let cases =
            [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4), (1 << 20, 20), ((1 << 20) + 1, 21)];
        for (value, bucket) in cases {
            assert_eq!(log2_bucket(value), bucket, "value {value}");
        }
        for bucket in 0..LOG2_BUCKETS - 1 {
            let bound = log2_bucket_bound(bucket).unwrap_or_else(|| panic!("bucket {bucket} has a bound"));
            assert_eq!(log2_bucket(bound), bucket, "the bound of {bucket} is inside it");
            assert_eq!(log2_bucket(bound + 1), bucket + 1, "one past the bound of {bucket} is in the next");
        }
    }

    #[test]
    fn values_past_the_last_bound_go_to_the_overflow_bucket() {
        assert_eq!(log2_bucket((1 << 30) + 1), LOG2_BUCKETS - 1);
        assert_eq!(log2_bucket(u64::MAX), LOG2_BUCKETS - 1);
        assert_eq!(log2_bucket_bound(LOG2_BUCKETS - 1), None);
        assert_eq!(log2_bucket_bound(LOG2_BUCKETS), None);
    }

    #[test]
    fn a_snapshot_counts_what_was_recorded() {
        let histogram = Log2Histogram::default();
        let mut expected = Log2Buckets::default();
        for value in [0, 1, 2, 3, 100, 5_000, u64::from(u32::MAX)] {
            histogram.record(value);
            expected.record(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot, expected);
        assert_eq!(snapshot.count(), 7);
        assert_eq!(snapshot.sum, 5_106 + u64::from(u32::MAX));

        let mut merged = snapshot;
        merged.merge(&snapshot);
        assert_eq!(merged.count(), 14);
        assert_eq!(merged.counts[0], 4);
    }
}
