//! `RaftLogStorage` on the engine's WAL: the shard's WAL *is* its Raft log.
//!
//! `append` writes the entries (readable at once) and hands openraft's flush
//! callback to the WAL's group-commit flusher, which calls it after the one
//! `fdatasync` that covers every append before it. So an append never waits
//! for the disk, and many appends (from many proposer batches and many
//! replication rounds) share one sync. Votes are durable before `save_vote`
//! returns; truncation and purging are WAL records.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use engine::wal::{EntryFrame, Wal, WalReader, WalStats};
use engine::{EntryPayload, LogEntry, WalError};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use parking_lot::Mutex;

use crate::clock::ShardClock;
use crate::health::ShardHealth;
use crate::raft_types::{
    Entry, LogId, TypeConfig, Vote, entry_from_engine, entry_to_engine, log_id_from_engine, log_id_to_engine,
    vote_from_engine, vote_to_engine,
};
use crate::shard_thread::ShardThread;

/// One shard's Raft log. The WAL sits behind a mutex only so the node can
/// read its counters; openraft is its one writer.
///
/// Purges run one request behind on disk: `purge(upto)` makes `upto` the
/// purge point openraft sees (log state, `try_get_log_entries`) but removes
/// from the WAL only what the previous request named. openraft's replication
/// streams decide which range to read before they read it, and a stream to a
/// slow follower that read entries purged in between would send a batch that
/// does not follow its `prev_log_id` (openraft 0.10.0-alpha.37 asserts on
/// it). Keeping one snapshot interval of entries readable for replication
/// closes that window; the cost is disk, not correctness.
#[derive(Clone, Debug)]
pub struct LogStore {
    wal: Arc<Mutex<Wal>>,
    /// The same reader openraft's replication gets; it holds the logical
    /// purge point the store moves.
    reader: LogReader,
    /// Observes the log time of every batch appended, and truncations (see
    /// `clock`).
    clock: Option<Arc<ShardClock>>,
    /// Whether this node leads the shard (its appends are its own entries).
    is_leader: Arc<AtomicBool>,
    /// The thread the shard's write path runs on.
    thread: Arc<ShardThread>,
    /// Where a failure of the WAL is recorded: the shard stops on this node.
    health: ShardHealth,
}

impl LogStore {
    pub fn new(wal: Wal) -> Self {
        let reader = LogReader { reader: wal.reader(), purge_pending: Arc::new(Mutex::new(None)) };
        Self {
            wal: Arc::new(Mutex::new(wal)),
            reader,
            clock: None,
            is_leader: Arc::default(),
            thread: Arc::default(),
            health: ShardHealth::detached(0),
        }
    }

    /// Records WAL failures in `health` (see `health`).
    pub fn with_health(mut self, health: ShardHealth) -> Self {
        self.health = health;
        self
    }

    /// Test hook: the WAL's next fsync fails with EIO (see
    /// `Wal::fail_next_sync`).
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_sync(&self) {
        self.wal.lock().fail_next_sync();
    }

    /// Checks that appends run on `thread` (see `shard_thread`).
    pub fn with_thread(mut self, thread: Arc<ShardThread>) -> Self {
        self.thread = thread;
        self
    }

    /// Feeds the log time of every appended batch, and every truncation,
    /// to the shard's `clock`; `is_leader` says whether an append is this
    /// node's own entry.
    pub fn with_clock(mut self, clock: Arc<ShardClock>, is_leader: Arc<AtomicBool>) -> Self {
        self.clock = Some(clock);
        self.is_leader = is_leader;
        self
    }

    /// The last batch in this node's log, at start: where the shard's log
    /// time is recovered from (see `clock`). Looks back over at most
    /// `look_back_max` entries (blank and membership entries carry no time).
    pub fn last_stamped(&self, look_back_max: u64) -> Result<Option<(engine::LogId, u64)>, WalError> {
        let Some(last) = self.reader.reader.log_state().last else {
            return Ok(None);
        };
        let first = self.reader.reader.log_state().purged.map_or(0, |purged| purged.index + 1);
        let start = last.index.saturating_sub(look_back_max).max(first);
        let entries = self.reader.reader.read_range(start, last.index + 1)?;
        Ok(entries.iter().rev().find_map(|entry| match &entry.payload {
            EntryPayload::Batch(batch) => Some((entry.log_id, batch.ts_ms)),
            _ => None,
        }))
    }

    /// Counters of the WAL's flusher (fsync rounds, callbacks, time).
    /// The stamp of the last entry at or before `keep` that has one, among
    /// the `KEPT_STAMP_SCAN` entries before it (0: none, or unreadable: the
    /// clock then falls back to the applied log time alone).
    fn kept_stamp_ms(&self, keep: Option<engine::LogId>) -> u64 {
        const KEPT_STAMP_SCAN: u64 = 64;
        let Some(keep) = keep else { return 0 };
        let first = self.reader.reader.log_state().purged.map_or(0, |purged| purged.index + 1);
        let start = keep.index.saturating_sub(KEPT_STAMP_SCAN).max(first);
        let Ok(entries) = self.reader.reader.read_range(start, keep.index.saturating_add(1)) else { return 0 };
        entries
            .iter()
            .rev()
            .find_map(|entry| match &entry.payload {
                EntryPayload::Batch(batch) => Some(batch.ts_ms),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// The WAL's reader: what a backup lists and copies.
    pub fn wal_reader(&self) -> engine::wal::WalReader {
        self.reader.reader.clone()
    }

    pub fn wal_stats(&self) -> WalStats {
        self.wal.lock().stats()
    }
}

fn to_io(error: WalError) -> io::Error {
    match error {
        WalError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// Reads entries for replication; cheap to clone, shares only the WAL's index.
#[derive(Clone, Debug)]
pub struct LogReader {
    reader: WalReader,
    purge_pending: Arc<Mutex<Option<LogId>>>,
}

fn range_of(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&end) => end.saturating_add(1),
        Bound::Excluded(&end) => end,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// Entries in `range` above the logical purge point.
fn read_entries(
    reader: &WalReader,
    purged: Option<&LogId>,
    range: impl RangeBounds<u64>,
) -> Result<Vec<Entry>, io::Error> {
    let (start, end) = range_of(&range);
    let start = purged.map_or(start, |purged| start.max(purged.index + 1));
    if start >= end {
        return Ok(Vec::new());
    }
    let entries = reader.read_framed(start, end).map_err(to_io)?;
    entries.into_iter().map(entry_from_engine).collect()
}

/// For replication: entries from exactly `start`, or none. A batch that
/// began after `start` (its head purged meanwhile) would not follow the
/// `prev_log_id` it is sent with; openraft treats an empty answer as a
/// heartbeat and asks again.
fn read_for_replication(reader: &WalReader, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
    let entries = read_entries(reader, None, start..end)?;
    if entries.first().is_some_and(|first| first.log_id.index != start) {
        tracing::warn!(start, "replication asked for purged entries; sending none");
        return Ok(Vec::new());
    }
    Ok(entries)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let purged = *self.purge_pending.lock();
        read_entries(&self.reader, purged.as_ref(), range)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        read_for_replication(&self.reader, start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.reader.vote().map(vote_from_engine))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.reader.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.reader.read_vote().await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let state = self.reader.reader.log_state();
        let pending = *self.reader.purge_pending.lock();
        let purged = state.purged.map(log_id_from_engine).max(pending);
        let last = state.last.map(log_id_from_engine).max(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut wal = self.wal.lock();
        wal.save_vote(vote_to_engine(vote)).map_err(|error| self.health.wal_error(error, wal.failure()))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut wal = self.wal.lock();
        wal.save_committed(committed.as_ref().map(log_id_to_engine))
            .map_err(|error| self.health.wal_error(error, wal.failure()))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.wal.lock().committed().map(log_id_from_engine))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.thread.check();
        let entries: Vec<(LogEntry, Option<EntryFrame>)> = entries.into_iter().map(entry_to_engine).collect();
        if let Some(clock) = &self.clock {
            // Entries of one append are in log order; each is observed, so
            // a newer term's first entry takes over at once.
            let leading = self.is_leader.load(Ordering::Acquire);
            for (entry, _) in &entries {
                if let EntryPayload::Batch(batch) = &entry.payload {
                    clock.observe(entry.log_id, batch.ts_ms, leading);
                }
            }
        }
        let mut wal = self.wal.lock();
        wal.append_framed(entries.iter().map(|(entry, frame)| (entry, frame.as_ref())))
            .map_err(|error| self.health.wal_error(error, wal.failure()))?;
        // The flusher thread calls back after the fsync that covers this
        // append. A failed sync is recorded before openraft hears of it (and
        // stops the group): from then on the node refuses the shard.
        let health = self.health.clone();
        wal.flush(Box::new(move |result| {
            let result = result.map_err(|error| health.io_error("WAL flush", error));
            callback.io_completed(result);
        }));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let keep = last_log_id.as_ref().map(log_id_to_engine);
        if let Some(clock) = &self.clock {
            clock.truncated(keep, self.kept_stamp_ms(keep));
        }
        let mut wal = self.wal.lock();
        wal.truncate_after(keep).map_err(|error| self.health.wal_error(error, wal.failure()))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let previous = {
            let mut pending = self.reader.purge_pending.lock();
            if pending.as_ref().is_some_and(|pending| pending.index >= log_id.index) {
                return Ok(());
            }
            // Purging to or past the end of the log (a snapshot installed
            // ahead of it) must happen now: the next append follows `log_id`,
            // and no replication reads from a log that ends before it.
            let beyond_end = self.reader.reader.log_state().last.is_none_or(|last| last.index <= log_id.index);
            if beyond_end {
                *pending = Some(log_id);
                drop(pending);
                let mut wal = self.wal.lock();
                return wal
                    .purge(log_id_to_engine(&log_id))
                    .map_err(|error| self.health.wal_error(error, wal.failure()));
            }
            pending.replace(log_id)
        };
        match previous {
            Some(previous) => {
                let mut wal = self.wal.lock();
                wal.purge(log_id_to_engine(&previous)).map_err(|error| self.health.wal_error(error, wal.failure()))
            }
            None => Ok(()),
        }
    }
}
