//! Memory per item and per live hold, with one million of each.
//!
//! A counting allocator wraps the system allocator and tracks live heap
//! bytes; the figures are heap bytes the shard holds per item and per hold
//! (including its index entries), and the process RSS growth beside them
//! (which adds the allocator's own overhead).
//!
//! `cargo bench -p tally-engine --bench memory`

// The one unsafe block in the repository: a global allocator must implement
// an unsafe trait. It only counts and delegates to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use engine::{LogEntry, LogId};

mod support;
use support::{hold, stocked_shard};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const COUNT: u64 = 1_000_000;

fn rss_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() {
    // `cargo test --benches` runs this too: a quick mode keeps the test
    // suite fast and still exercises the code.
    let count = if support::quick() { COUNT / 100 } else { COUNT };

    let heap_before = LIVE.load(Ordering::Relaxed);
    let rss_before = rss_bytes();
    let (mut state, mut index) = stocked_shard(count);
    let heap_items = LIVE.load(Ordering::Relaxed) - heap_before;
    let rss_items = rss_bytes() - rss_before;

    let heap_before = LIVE.load(Ordering::Relaxed);
    let rss_before = rss_bytes();
    let per_entry = 4096;
    let mut next = 0;
    while next < count {
        let end = (next + per_entry).min(count);
        index += 1;
        let commands = (next..end).map(|n| hold(n, n, 3_600_000)).collect();
        let applied = state.apply(&LogEntry::batch(LogId::new(1, index), 2, commands));
        drop(applied);
        next = end;
    }
    let heap_holds = LIVE.load(Ordering::Relaxed) - heap_before;
    let rss_holds = rss_bytes() - rss_before;
    assert_eq!(state.stats().live_holds, count);

    let per = |bytes: isize| bytes as f64 / count as f64;
    let per_rss = |bytes: i64| bytes as f64 / count as f64;
    println!("items: {count}, live holds: {count}");
    println!("heap bytes per item: {:.1} (RSS growth per item: {:.1})", per(heap_items), per_rss(rss_items));
    println!("heap bytes per live hold: {:.1} (RSS growth per hold: {:.1})", per(heap_holds), per_rss(rss_holds));
}
