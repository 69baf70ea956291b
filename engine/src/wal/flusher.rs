//! Group commit: one thread per WAL that turns many flush requests into one
//! `fdatasync`.
//!
//! Appends write their bytes and mark the segment dirty; `flush` queues a
//! callback. The thread takes every queued callback together with the dirty
//! files, syncs those files (and the directory, after a new segment), and
//! only then completes the callbacks. Whatever was appended before a
//! callback was queued is in a file marked dirty before it, so one sync
//! covers it. After a failed sync the WAL is poisoned: every later flush and
//! append fails, because after fsync fails the kernel may have dropped the
//! dirty pages and retrying would report success for lost data. The first
//! failure is kept (`WalFailure`: its kind, read off the OS error, and what
//! failed) and every later error carries it, so the node can say why.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::error::{WalError, WalFailure};
use crate::histogram::{Log2Buckets, Log2Histogram};

/// Called once the appends before it are durable, or with the error.
pub type FlushCallback = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

/// Counters of the flusher, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// `fdatasync` rounds run (one may cover many callbacks).
    pub syncs: u64,
    /// Callbacks completed.
    pub flushes: u64,
    /// Time spent in sync rounds, in microseconds.
    pub sync_us_total: u64,
    /// Duration of each sync round, in microseconds, by power of two.
    pub sync_latency_us: Log2Buckets,
    /// Entries encoded by this WAL's appends (a leader's new entries).
    pub entries_encoded: u64,
    /// Entries appended as the frame they arrived in (a follower's copies).
    pub entries_verbatim: u64,
    /// Entries read from the in-memory tail: no disk read, no decode.
    pub entries_read_from_memory: u64,
    /// Entries read from the segment files and decoded.
    pub entries_read_from_disk: u64,
}

#[derive(Default)]
struct Queue {
    callbacks: Vec<FlushCallback>,
    dirty: BTreeMap<u64, Arc<File>>,
    dir_dirty: bool,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    poisoned: AtomicBool,
    /// The failure that poisoned the WAL; set once, before `poisoned`.
    failure: Mutex<Option<WalFailure>>,
    /// Test hook: the next sync round fails with EIO instead of syncing.
    #[cfg(any(test, feature = "fault-injection"))]
    fail_next_sync: AtomicBool,
    syncs: AtomicU64,
    flushes: AtomicU64,
    sync_us_total: AtomicU64,
    sync_latency_us: Log2Histogram,
}

pub(crate) struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher").field("poisoned", &self.shared.poisoned.load(Ordering::Relaxed)).finish()
    }
}

impl Flusher {
    pub fn start(dir: PathBuf) -> io::Result<Flusher> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            poisoned: AtomicBool::new(false),
            failure: Mutex::new(None),
            #[cfg(any(test, feature = "fault-injection"))]
            fail_next_sync: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            sync_us_total: AtomicU64::new(0),
            sync_latency_us: Log2Histogram::default(),
        });
        let thread = std::thread::Builder::new().name("tally-wal-flush".into()).spawn({
            let shared = Arc::clone(&shared);
            move || run(&shared, &dir)
        })?;
        Ok(Flusher { shared, thread: Some(thread) })
    }

    pub fn flush(&self, callback: FlushCallback) {
        if let Err(failure) = self.shared.check() {
            callback(Err(failure.to_io()));
            return;
        }
        self.shared.queue.lock().callbacks.push(callback);
        self.shared.wake.notify_one();
    }

    pub fn mark_dirty(&self, seq: u64, file: Arc<File>) {
        self.shared.queue.lock().dirty.entry(seq).or_insert(file);
    }

    pub fn mark_dir_dirty(&self) {
        self.shared.queue.lock().dir_dirty = true;
    }

    /// Poisons the WAL with `failure` (the first one is kept).
    pub fn poison(&self, failure: WalFailure) {
        self.shared.poison(failure);
    }

    pub fn check_healthy(&self) -> Result<(), WalError> {
        self.shared.check().map_err(WalError::Poisoned)
    }

    /// The failure that poisoned the WAL, if one did.
    pub fn failure(&self) -> Option<WalFailure> {
        self.shared.failure.lock().clone()
    }

    /// Test hook: the next sync round fails as a failing disk's would (EIO),
    /// and poisons the WAL.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn fail_next_sync(&self) {
        self.shared.fail_next_sync.store(true, Ordering::Release);
    }

    pub fn stats(&self) -> WalStats {
        WalStats {
            syncs: self.shared.syncs.load(Ordering::Relaxed),
            flushes: self.shared.flushes.load(Ordering::Relaxed),
            sync_us_total: self.shared.sync_us_total.load(Ordering::Relaxed),
            sync_latency_us: self.shared.sync_latency_us.snapshot(),
            ..WalStats::default()
        }
    }
}

impl Drop for Flusher {
    /// Completes every queued callback (with a final sync) before returning.
    fn drop(&mut self) {
        self.shared.queue.lock().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn poison(&self, failure: WalFailure) {
        let mut slot = self.failure.lock();
        if slot.is_none() {
            tracing::error!(%failure, "WAL poisoned: nothing more is written until a restart");
            *slot = Some(failure);
        }
        self.poisoned.store(true, Ordering::Release);
    }

    fn check(&self) -> Result<(), WalFailure> {
        if !self.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        // `failure` is set before `poisoned`, so it is there.
        Err(self.failure.lock().clone().unwrap_or_else(|| WalFailure {
            fault: crate::error::StorageFault::Io,
            detail: "the WAL is poisoned".to_owned(),
        }))
    }

    /// Whether the test hook asks this round to fail.
    #[cfg(any(test, feature = "fault-injection"))]
    fn injected_failure(&self) -> bool {
        self.fail_next_sync.swap(false, Ordering::AcqRel)
    }

    #[cfg(not(any(test, feature = "fault-injection")))]
    fn injected_failure(&self) -> bool {
        false
    }
}

fn run(shared: &Shared, dir: &PathBuf) {
    loop {
        let (callbacks, dirty, dir_dirty) = {
            let mut queue = shared.queue.lock();
            while queue.callbacks.is_empty() && !queue.shutdown {
                shared.wake.wait(&mut queue);
            }
            if queue.callbacks.is_empty() && queue.shutdown {
                return;
            }
            let dir_dirty = std::mem::take(&mut queue.dir_dirty);
            (std::mem::take(&mut queue.callbacks), std::mem::take(&mut queue.dirty), dir_dirty)
        };
        let result = match shared.check() {
            Err(failure) => Err(failure),
            Ok(()) => {
                let started = Instant::now();
                let result = if shared.injected_failure() {
                    let error = io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error());
                    Err(WalFailure::new("fdatasync of the WAL (injected)", &error, true))
                } else {
                    sync(&dirty, dir_dirty.then_some(dir))
                };
                let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                shared.syncs.fetch_add(1, Ordering::Relaxed);
                shared.sync_us_total.fetch_add(elapsed_us, Ordering::Relaxed);
                shared.sync_latency_us.record(elapsed_us);
                if let Err(failure) = &result {
                    // Before any callback: whoever hears of the failure can
                    // read its cause.
                    shared.poison(failure.clone());
                }
                result
            }
        };
        shared.flushes.fetch_add(callbacks.len() as u64, Ordering::Relaxed);
        for callback in callbacks {
            callback(result.as_ref().map(|_| ()).map_err(WalFailure::to_io));
        }
    }
}

fn sync(dirty: &BTreeMap<u64, Arc<File>>, dir: Option<&PathBuf>) -> Result<(), WalFailure> {
    for (seq, file) in dirty {
        file.sync_data().map_err(|error| WalFailure::new(&format!("fdatasync of WAL segment {seq}"), &error, true))?;
    }
    if let Some(dir) = dir {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|error| WalFailure::new("fsync of the WAL directory", &error, true))?;
    }
    Ok(())
}
