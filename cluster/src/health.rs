//! Whether this node's copy of each shard still runs, and if not, why.
//!
//! A shard stops on this node, for good until a restart, when its storage
//! fails (the WAL's fsync or write, a snapshot write: `StorageFault`) or when
//! one of its own rules is found broken (a reply count that does not match
//! its requests, a state check after a snapshot, a corrupt lookup). Both go
//! through the one mechanism here: `ShardHealth::fail` records the first
//! cause, logs it loudly and wakes the node, which stops the shard's Raft
//! core and hands its leadership to another voter (`node/leadership.rs`). From then on
//! the node refuses the shard's writes and reads (`shard_stopped`), names it
//! in its status (`/readyz`, `/metrics`), and acknowledges nothing more for
//! it: a write in flight when the shard stopped answers `outcome_unknown`.
//!
//! Nothing here retries or heals: after a storage failure the kernel may
//! have dropped pages the WAL wrote (fsync's contract), and after a broken
//! invariant the state is not to be trusted. A restart recovers from disk
//! (and from the other replicas).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use engine::WalError;
use engine::error::{StorageFault, WalFailure};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Why a shard stopped on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureCause {
    /// The shard's storage failed: its WAL (fsync, write, a new segment) or
    /// a snapshot file.
    Storage(StorageFault),
    /// One of the shard's own rules was found broken: its state after a
    /// snapshot, the answers of an apply, a lookup in its arenas, the order
    /// of its log.
    InvariantBroken,
    /// openraft's core of the group stopped for another reason (a panic).
    RaftStopped,
}

impl FailureCause {
    /// A stable, machine-readable name: `fsync_error`, `no_space`,
    /// `too_many_open_files`, `io_error`, `invariant_broken`, `raft_stopped`.
    pub fn code(self) -> &'static str {
        match self {
            FailureCause::Storage(fault) => fault.code(),
            FailureCause::InvariantBroken => "invariant_broken",
            FailureCause::RaftStopped => "raft_stopped",
        }
    }

    /// The cause of an I/O error from the shard's storage: the WAL's own
    /// failure when the error carries one, else read off the OS error.
    pub fn of_io(error: &io::Error) -> Self {
        match WalFailure::inside(error) {
            Some(failure) => FailureCause::Storage(failure.fault),
            None => FailureCause::Storage(StorageFault::of(error, false)),
        }
    }

    /// The cause of a WAL error: storage for I/O, a broken rule for the
    /// rest (an append out of order, a record over its limit).
    pub fn of_wal(error: &WalError) -> Self {
        match error {
            WalError::Poisoned(failure) => FailureCause::Storage(failure.fault),
            WalError::Io { source, .. } => FailureCause::Storage(StorageFault::of(source, false)),
            _ => FailureCause::InvariantBroken,
        }
    }
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureCause::Storage(fault) => write!(f, "{fault}"),
            FailureCause::InvariantBroken => f.write_str("broken invariant"),
            FailureCause::RaftStopped => f.write_str("raft core stopped"),
        }
    }
}

/// A shard that stopped on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardFailure {
    pub shard: u32,
    pub cause: FailureCause,
    /// What failed, in the words of the check or the OS.
    pub detail: String,
    /// When, on this node's wall clock (Unix ms).
    pub at_unix_ms: u64,
}

impl fmt::Display for ShardFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {} stopped ({}): {}", self.shard, self.cause.code(), self.detail)
    }
}

/// Every shard's health on this node.
#[derive(Debug)]
pub struct Health {
    shards: Vec<Slot>,
    /// Woken once per recorded failure; the node's reaction task waits here.
    changed: Notify,
    /// The node is shutting down: groups stopping now are not failures.
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Slot {
    failed: AtomicBool,
    failure: Mutex<Option<ShardFailure>>,
}

impl Health {
    pub fn new(shards: u32) -> Arc<Health> {
        Arc::new(Health {
            shards: (0..shards).map(|_| Slot::default()).collect(),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// The handle one shard's parts (log store, state machine, proposer,
    /// snapshot builder) report through.
    pub fn shard(self: &Arc<Self>, shard: u32) -> ShardHealth {
        ShardHealth { health: Arc::clone(self), shard }
    }

    /// Why `shard` stopped, if it did.
    pub fn failure(&self, shard: u32) -> Option<ShardFailure> {
        let slot = self.shards.get(shard as usize)?;
        if !slot.failed.load(Ordering::Acquire) {
            return None;
        }
        slot.failure.lock().clone()
    }

    /// Every stopped shard, by shard.
    pub fn failures(&self) -> Vec<ShardFailure> {
        (0..self.shards.len()).filter_map(|shard| self.failure(u32::try_from(shard).unwrap_or(u32::MAX))).collect()
    }

    /// From now on the node is shutting down: stopping groups is expected.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Waits until a failure is recorded (or the node closes) after the
    /// last wait returned.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn fail(&self, shard: u32, cause: FailureCause, detail: String) -> bool {
        if self.is_closed() {
            return false;
        }
        let Some(slot) = self.shards.get(shard as usize) else {
            return false;
        };
        {
            let mut failure = slot.failure.lock();
            if failure.is_some() {
                return false;
            }
            let at_unix_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
            let recorded = ShardFailure { shard, cause, detail, at_unix_ms };
            tracing::error!(
                shard,
                cause = cause.code(),
                detail = %recorded.detail,
                "SHARD STOPPED on this node: it takes no more writes or reads here until a restart; \
                 its leadership goes to another node"
            );
            *failure = Some(recorded);
            slot.failed.store(true, Ordering::Release);
        }
        self.changed.notify_one();
        true
    }
}

/// One shard's health, as its parts see it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShardHealth {
    health: Arc<Health>,
    shard: u32,
}

impl ShardHealth {
    /// A handle on a health board of its own (tests of single parts).
    pub fn detached(shard: u32) -> ShardHealth {
        Health::new(shard.saturating_add(1)).shard(shard)
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Stops the shard on this node for `cause`. The first cause is kept;
    /// true if this call recorded it.
    pub fn fail(&self, cause: FailureCause, detail: impl Into<String>) -> bool {
        self.health.fail(self.shard, cause, detail.into())
    }

    /// Whether the shard stopped (one atomic load: cheap on every write).
    pub fn is_failed(&self) -> bool {
        self.health.shards.get(self.shard as usize).is_some_and(|slot| slot.failed.load(Ordering::Acquire))
    }

    pub fn failure(&self) -> Option<ShardFailure> {
        self.health.failure(self.shard)
    }

    /// Records a storage error from the WAL and hands it back: `failure` is
    /// the WAL's own first failure, if it has one (more precise than the
    /// error of the call that found it poisoned).
    pub fn wal_error(&self, error: WalError, failure: Option<WalFailure>) -> io::Error {
        match failure {
            Some(failure) => {
                self.fail(FailureCause::Storage(failure.fault), failure.detail);
            }
            None => {
                self.fail(FailureCause::of_wal(&error), error.to_string());
            }
        }
        io::Error::from(error)
    }

    /// Records an I/O error of the shard's storage (`what` failed) and
    /// hands it back.
    pub fn io_error(&self, what: &str, error: io::Error) -> io::Error {
        let detail = match WalFailure::inside(&error) {
            Some(failure) => failure.detail.clone(),
            None => format!("{what}: {error}"),
        };
        self.fail(FailureCause::of_io(&error), detail);
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cause_is_kept_and_named() {
        let health = Health::new(3);
        let shard = health.shard(1);
        assert!(!shard.is_failed());
        assert!(shard.fail(FailureCause::Storage(StorageFault::NoSpace), "write to WAL segment 1 failed"));
        assert!(!shard.fail(FailureCause::InvariantBroken, "later"));
        let failure = health.failure(1).unwrap_or_else(|| panic!("not recorded"));
        assert_eq!((failure.shard, failure.cause.code()), (1, "no_space"));
        assert_eq!(failure.detail, "write to WAL segment 1 failed");
        assert_eq!(health.failures().len(), 1);
        assert!(health.failure(0).is_none());
    }

    #[test]
    fn nothing_is_recorded_once_the_node_shuts_down() {
        let health = Health::new(1);
        health.close();
        assert!(!health.shard(0).fail(FailureCause::RaftStopped, "stopped"));
        assert!(health.failures().is_empty());
    }

    #[test]
    fn causes_come_from_the_wal_failure_inside_an_io_error() {
        let failure = WalFailure { fault: StorageFault::Fsync, detail: "fdatasync failed".into() };
        assert_eq!(FailureCause::of_io(&failure.to_io()).code(), "fsync_error");
        let full = io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        assert_eq!(FailureCause::of_io(&full).code(), "no_space");
        let rule = WalError::NotContiguous { last: Some(1), got: 3 };
        assert_eq!(FailureCause::of_wal(&rule).code(), "invariant_broken");
    }
}
