//! The shard thread: where a shard's whole write path runs (DESIGN §10).
//!
//! A shard's actor, its proposer, its openraft group (core, log store, state
//! machine worker, replication streams) and its apply all run on the actix
//! arbiter that owns the actor. A leader write then crosses four thread
//! boundaries and no more: the HTTP handler hands the command to the shard
//! thread (proposer queue), the shard thread hands the fsync to the WAL's
//! flusher thread, the flusher hands the completion back to the shard
//! thread, and the shard thread hands the outcome to the handler.
//!
//! `ShardThread` checks that promise at run time: the group claims its
//! thread when it starts, and each stage of the write path (proposing an
//! entry, appending it to the WAL, applying it, answering its callers)
//! counts itself when it finds itself on another thread. The count is
//! exported in `/metrics`; it stays 0 unless the design is broken.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static TOKEN: Cell<u64> = const { Cell::new(0) };
}

/// A number that names the current thread for the life of the process
/// (never 0; `ThreadId::as_u64` is not stable).
fn current_token() -> u64 {
    TOKEN.with(|token| {
        if token.get() == 0 {
            token.set(NEXT_TOKEN.fetch_add(1, Ordering::Relaxed));
        }
        token.get()
    })
}

/// The thread a shard's write path belongs to, and how often a stage of it
/// ran elsewhere.
#[derive(Debug, Default)]
pub struct ShardThread {
    /// The owning thread's token; 0 until claimed.
    owner: AtomicU64,
    off_thread: AtomicU64,
}

impl ShardThread {
    /// Makes the current thread the shard's. Called once, on the arbiter,
    /// before the group starts.
    pub fn claim(&self) {
        self.owner.store(current_token(), Ordering::Release);
    }

    /// Counts one stage that ran off the shard's thread. A group that never
    /// claimed a thread (storage tests drive the log store and state
    /// machine directly) checks nothing.
    pub fn check(&self) {
        let owner = self.owner.load(Ordering::Acquire);
        if owner != 0 && owner != current_token() {
            self.off_thread.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// True when called on the shard's thread.
    #[cfg(test)]
    fn is_current(&self) -> bool {
        self.owner.load(Ordering::Acquire) == current_token()
    }

    /// Stages of the write path that ran off the shard's thread.
    pub fn off_thread(&self) -> u64 {
        self.off_thread.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_stage_on_another_thread_is_counted_and_one_on_the_owner_is_not() {
        let thread = Arc::new(ShardThread::default());
        thread.check();
        assert_eq!(thread.off_thread(), 0, "unclaimed: nothing to check");
        thread.claim();
        thread.check();
        assert!(thread.is_current());
        assert_eq!(thread.off_thread(), 0);
        let elsewhere = Arc::clone(&thread);
        std::thread::spawn(move || {
            assert!(!elsewhere.is_current());
            elsewhere.check();
        })
        .join()
        .unwrap_or_else(|_| panic!("checker thread panicked"));
        assert_eq!(thread.off_thread(), 1);
    }
}
