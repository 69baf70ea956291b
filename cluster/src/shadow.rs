//! The shadow replica: a second copy of one shard's state, owned by its
//! snapshot builder, so snapshots never stop the shard's writes (DESIGN §10).
//!
//! `apply` is deterministic: two copies that apply the same committed
//! entries in the same order hold byte-identical state (ARCHITECTURE.md,
//! Determinism). So a snapshot at log id L need not be taken from the shard
//! actor, whose thread also runs the shard's openraft core, log store and
//! apply. `Shadow::build` runs on the snapshot thread: it takes the shadow
//! (or, with none, loads the newest snapshot file, or starts an empty shard
//! with the limits the actor's state started from), reads the committed
//! entries after it up to L from the WAL, applies them, serialises the
//! result, saves the file, and keeps the shadow for the next build. The
//! shard thread does none of this work.
//!
//! A wrong snapshot is far worse than a slow one, so the shadow is used only
//! when it provably reaches L:
//! * the entries read must be exactly `last_applied + 1 ..= L`, each index
//!   once and in order, the last one L itself (term too), and the entry the
//!   shadow last applied must still have its term in the log;
//! * when they are not (purged, truncated, a gap, an apply error), the
//!   shadow is dropped and rebuilt from the newest snapshot file once; if
//!   that cannot reach L either, the caller falls back to the actor
//!   (`ShadowError::falls_back`) and counts it;
//! * `forget` drops the shadow when a snapshot from the leader replaces the
//!   state; a build already running then does not keep its copy;
//! * the state saved must have `last_applied == L`, must pass the full
//!   state check (`ShardState::check_invariants`, in release builds too: a
//!   failure stops the shard), and in debug builds its digest must equal the
//!   actor's at L (`expected_digest`).
//!
//! Builds run on the node's one snapshot thread (`SnapshotThread`), one at
//! a time, at a lower priority than the shard threads: on a machine whose
//! cores the shards keep busy, a build takes the CPU they leave rather than
//! the CPU they need, and many shards reaching their snapshot point
//! together do not all serialise at once. On cores kept saturated a build
//! takes longer, and the log grows until it ends; no write waits for it.
//!
//! Cost: the shadow is a second copy of the shard's state in memory, from
//! the first snapshot built after start on; the replay applies every entry
//! a second time, off the shard thread, reading the log in steps of
//! `read_entries_max` entries.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};

use engine::snapshot::{SnapshotFile, SnapshotMeta, SnapshotStore};
use engine::state::digest_of_snapshot_bytes;
use engine::wal::WalReader;
use engine::{Applied, Limits, LogEntry, LogId, ShardState, SnapshotError};
use parking_lot::Mutex;

/// Why a shadow could not build the snapshot asked for.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    /// The log does not hold the entries from the shadow (or the newest
    /// snapshot file) up to the target: purged, truncated, a gap, or the
    /// file is past the target. The actor can still build the snapshot.
    #[error("the log cannot bring a copy to {target:?}: {reason}")]
    Unreachable { target: Option<LogId>, reason: String },
    /// The copy refused an entry, or ended elsewhere than the target: its
    /// history differs from the log's. The actor can still build the
    /// snapshot; this copy is dropped.
    #[error("the copy diverged from the log on the way to {target:?}: {reason}")]
    Diverged { target: Option<LogId>, reason: String },
    /// Debug builds: the copy reached the target with another digest than
    /// the actor's there. `apply` is not deterministic, or an entry was
    /// read wrong: a bug, never papered over.
    #[error("shadow state at {target:?} has digest {shadow:032x}, the shard's is {actor:032x}")]
    DigestMismatch { target: Option<LogId>, shadow: u128, actor: u128 },
    /// The state at the target fails its full check
    /// (`ShardState::check_invariants`): the shard's state is not to be
    /// trusted, on the actor either (it applied the same entries). The
    /// shard stops; nothing is saved.
    #[error("the state at {target:?} breaks an invariant: {reason}")]
    Invariant { target: Option<LogId>, reason: String },
    /// Encoding or writing the snapshot file failed; the actor's path
    /// would write the same file to the same disk.
    #[error(transparent)]
    Save(SnapshotError),
    /// The build panicked (a broken assertion): a bug, never papered over.
    #[error("the shadow's build panicked: {0}")]
    Panicked(String),
}

impl ShadowError {
    /// Whether the actor should build this snapshot instead. A digest
    /// mismatch is a bug to stop on, and a failed write would fail again.
    pub fn falls_back(&self) -> bool {
        matches!(self, ShadowError::Unreachable { .. } | ShadowError::Diverged { .. })
    }
}

impl From<ShadowError> for io::Error {
    fn from(error: ShadowError) -> Self {
        match error {
            ShadowError::Save(error) => error.into(),
            other => io::Error::other(other.to_string()),
        }
    }
}

/// The shadow and a count of `forget`s, under one lock, so a build that
/// started before a `forget` can tell and drop its copy.
#[derive(Debug, Default)]
struct Slot {
    state: Option<ShardState>,
    generation: u64,
}

/// One shard's shadow replica and what it needs to build snapshots.
#[derive(Debug)]
pub struct Shadow {
    slot: Mutex<Slot>,
    reader: WalReader,
    store: SnapshotStore,
    shard: u32,
    shard_count: u32,
    /// The limits the actor's state starts from when there is no snapshot
    /// (`Node::start`); anything later comes through the log (`SetLimits`).
    limits: Limits,
    /// Entries read from the WAL at once while catching up (at least 1): a
    /// shadow far behind (the first build after a start) replays in bounded
    /// steps rather than holding its whole backlog in memory.
    read_entries_max: u64,
}

/// Committed entries `from ..= to` as the WAL holds them (possibly fewer,
/// when some are purged). The one place this module reads the log.
fn committed_entries(reader: &WalReader, from: u64, to: u64) -> io::Result<Vec<LogEntry>> {
    let end = to.saturating_add(1);
    reader.read_range(from, end).map_err(|error| io::Error::other(error.to_string()))
}

fn unreachable(target: Option<LogId>, reason: String) -> ShadowError {
    ShadowError::Unreachable { target, reason }
}

fn diverged(target: Option<LogId>, reason: String) -> ShadowError {
    ShadowError::Diverged { target, reason }
}

impl Shadow {
    pub fn new(
        reader: WalReader,
        store: SnapshotStore,
        shard: u32,
        shard_count: u32,
        limits: Limits,
        read_entries_max: u64,
    ) -> Self {
        let read_entries_max = read_entries_max.max(1);
        Self { slot: Mutex::new(Slot::default()), reader, store, shard, shard_count, limits, read_entries_max }
    }

    /// Drops the shadow: the shard's state was replaced (a snapshot from the
    /// leader). The next build starts from the newest snapshot file.
    pub fn forget(&self) {
        let mut slot = self.slot.lock();
        slot.state = None;
        slot.generation += 1;
    }

    /// The log id the shadow has applied up to, if there is one (tests).
    pub fn last_applied(&self) -> Option<Option<LogId>> {
        self.slot.lock().state.as_ref().map(ShardState::last_applied)
    }

    /// Builds and saves the snapshot at `target` (the last log id the state
    /// machine applied), blocking: run it off the shard thread. In debug
    /// builds `expected_digest` is the actor's digest at `target`.
    pub fn build(&self, target: Option<LogId>, expected_digest: Option<u128>) -> Result<SnapshotFile, ShadowError> {
        let (kept, generation) = {
            let mut slot = self.slot.lock();
            (slot.state.take(), slot.generation)
        };
        let state = match kept {
            Some(mut state) => match self.catch_up(&mut state, target) {
                Ok(()) => state,
                Err(error) => {
                    // The log no longer reaches from this copy: start again
                    // from the newest snapshot file, once.
                    tracing::warn!(shard = self.shard, %error, "shadow dropped; rebuilding it from the newest snapshot");
                    drop(state);
                    self.rebuilt_from_file(target)?
                }
            },
            None => self.rebuilt_from_file(target)?,
        };

        // The positive space: exactly the target, nothing else, is saved.
        debug_assert_eq!(state.last_applied(), target, "shadow of shard {} saved off its target", self.shard);
        if state.last_applied() != target {
            return Err(diverged(target, format!("the copy is at {:?}", state.last_applied())));
        }
        // The full check of every rule of the state, on this thread (never
        // the shard's), before anything is written: a snapshot of a broken
        // state would carry it into every follower that installs it.
        if let Err(reason) = state.check_invariants() {
            tracing::error!(shard = self.shard, ?target, %reason, "the shard's state breaks an invariant");
            return Err(ShadowError::Invariant { target, reason });
        }
        let meta = SnapshotMeta::of(&state);
        let bytes = state.to_snapshot_bytes().map_err(ShadowError::Save)?;
        if let Some(actor) = expected_digest {
            let shadow = digest_of_snapshot_bytes(&bytes);
            if shadow != actor {
                tracing::error!(shard = self.shard, ?target, "shadow snapshot differs from the shard's state");
                return Err(ShadowError::DigestMismatch { target, shadow, actor });
            }
        }
        let file = self.store.save_parts(&meta, &bytes).map_err(ShadowError::Save)?;
        drop(bytes);

        let mut slot = self.slot.lock();
        if slot.generation == generation {
            slot.state = Some(state);
        }
        Ok(file)
    }

    /// A fresh copy at `target`: the newest snapshot file (or an empty
    /// shard) brought forward by the log.
    fn rebuilt_from_file(&self, target: Option<LogId>) -> Result<ShardState, ShadowError> {
        let mut state = match self.store.load_latest() {
            Ok(Some((_, state))) => state,
            Ok(None) => ShardState::new(self.shard, self.shard_count, self.limits),
            Err(error) => return Err(unreachable(target, format!("the newest snapshot cannot be read: {error}"))),
        };
        if state.shard() != self.shard || state.shard_count() != self.shard_count {
            let reason = format!("the newest snapshot is of shard {} of {}", state.shard(), state.shard_count());
            return Err(unreachable(target, reason));
        }
        self.catch_up(&mut state, target)?;
        Ok(state)
    }

    /// Applies the committed entries after `state` up to `target`, checking
    /// they are exactly the ones that lead there.
    fn catch_up(&self, state: &mut ShardState, target: Option<LogId>) -> Result<(), ShadowError> {
        let Some(target_id) = target else {
            // Nothing applied yet: only an empty copy is at the target.
            return match state.last_applied() {
                None => Ok(()),
                Some(last) => Err(unreachable(target, format!("the copy is at {last:?}, past nothing applied"))),
            };
        };
        if let Some(last) = state.last_applied() {
            if last.index > target_id.index {
                return Err(unreachable(target, format!("the copy is at {last:?}, past the target")));
            }
            // The copy's last entry, if the log still holds it (or it is the
            // purge point), must be the log's: same index, same term.
            if let Some(term) = self.reader.term_of(last.index)
                && term != last.term
            {
                return Err(diverged(target, format!("the copy applied {last:?}, the log has term {term} there")));
            }
        }
        let mut applied = Applied::default();
        loop {
            let next = state.last_applied().map_or(0, |last| last.index + 1);
            if next > target_id.index {
                break;
            }
            let to = target_id.index.min(next.saturating_add(self.read_entries_max - 1));
            let entries = committed_entries(&self.reader, next, to)
                .map_err(|error| unreachable(target, format!("reading entries {next}..={to}: {error}")))?;
            let wanted = to - next + 1;
            if entries.len() as u64 != wanted {
                let reason = format!("the log holds {} of entries {next}..={to}", entries.len());
                return Err(unreachable(target, reason));
            }
            for (index, entry) in (next..=to).zip(&entries) {
                if entry.log_id.index != index {
                    return Err(unreachable(target, format!("entry {} where {index} was due", entry.log_id.index)));
                }
                state
                    .apply_into(entry, &mut applied)
                    .map_err(|error| diverged(target, format!("entry {index}: {error}")))?;
            }
        }
        if state.last_applied() != target {
            return Err(diverged(target, format!("the log led the copy to {:?}", state.last_applied())));
        }
        Ok(())
    }
}

/// How much lower the snapshot thread's priority is than the process's, in
/// nice steps (Linux: a thread 10 steps lower gets about a tenth of a core
/// its busy shard threads want; it still gets whatever they leave idle).
pub const SNAPSHOT_THREAD_NICE_STEPS: i32 = 10;

/// One build for the snapshot thread, and where its answer goes.
struct Job {
    shadow: Arc<Shadow>,
    target: Option<LogId>,
    expected_digest: Option<u128>,
    answer: tokio::sync::oneshot::Sender<Result<SnapshotFile, ShadowError>>,
}

/// The node's snapshot thread: builds every shard's shadow snapshots, one
/// at a time, below the priority of the shard threads. Cheap to clone; the
/// thread ends once every clone is dropped.
#[derive(Clone, Debug)]
pub struct SnapshotThread {
    jobs: SyncSender<Job>,
}

/// Lowers the calling thread's priority by `SNAPSHOT_THREAD_NICE_STEPS`. A
/// failure leaves it as it is: slower writes while a snapshot is built,
/// nothing worse. The server's backup thread calls it too.
pub fn lower_priority() {
    let thread = rustix::thread::gettid();
    let lowered = rustix::process::getpriority_process(Some(thread)).and_then(|nice| {
        rustix::process::setpriority_process(Some(thread), (nice + SNAPSHOT_THREAD_NICE_STEPS).min(19))
    });
    if let Err(error) = lowered {
        tracing::warn!(%error, "the snapshot thread runs at the shard threads' priority");
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

impl SnapshotThread {
    /// Starts the thread. At most `queue_max` builds wait for it (one per
    /// shard is enough: openraft builds one snapshot of a group at a time).
    pub fn start(queue_max: usize) -> io::Result<SnapshotThread> {
        let (jobs, receiver) = std::sync::mpsc::sync_channel::<Job>(queue_max.max(1));
        std::thread::Builder::new().name("tally-snapshot".into()).spawn(move || {
            lower_priority();
            while let Ok(job) = receiver.recv() {
                let Job { shadow, target, expected_digest, answer } = job;
                // A panic is answered (it stops the group, loudly) rather
                // than taking the thread, and every later build, with it.
                let built = std::panic::catch_unwind(AssertUnwindSafe(|| shadow.build(target, expected_digest)))
                    .unwrap_or_else(|panic| Err(ShadowError::Panicked(panic_message(panic.as_ref()))));
                // The builder may have gone (its group shut down).
                let _ = answer.send(built);
            }
        })?;
        Ok(SnapshotThread { jobs })
    }

    /// Builds the snapshot at `target` from `shadow` on the thread (see
    /// `Shadow::build`) and waits for it without blocking the caller's
    /// thread.
    pub async fn build(
        &self,
        shadow: Arc<Shadow>,
        target: Option<LogId>,
        expected_digest: Option<u128>,
    ) -> Result<SnapshotFile, ShadowError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job = Job { shadow, target, expected_digest, answer };
        if let Err(error) = self.jobs.try_send(job) {
            let reason = match error {
                TrySendError::Full(_) => "the snapshot thread's queue is full",
                TrySendError::Disconnected(_) => "the snapshot thread has stopped",
            };
            return Err(unreachable(target, reason.to_owned()));
        }
        answered.await.map_err(|_| unreachable(target, "the snapshot thread stopped during the build".to_owned()))?
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// The nice value of each thread of this process named `name`.
    fn nice_of_threads(name: &str) -> Vec<i64> {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Vec::new();
        };
        tasks
            .filter_map(Result::ok)
            .filter(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name))
            .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
            // Fields after the command (which may hold spaces) end with ')':
            // state is field 3, nice field 19.
            .filter_map(|stat| stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(16)?.parse().ok()))
            .collect()
    }

    /// A shard at log id (1, 1) holding one item: 5 on hand.
    fn one_item_state() -> ShardState {
        let mut state = ShardState::new(0, 1, Limits::default());
        let upsert = engine::testing::upsert("SKU-1", "w1", 5, 0);
        let applied = state.apply(&LogEntry::batch(LogId::new(1, 1), 1_000, vec![upsert]));
        assert!(applied.is_ok_and(|applied| !applied.outcomes[0].is_refused()));
        state
    }

    #[test]
    fn a_shadow_whose_state_breaks_an_invariant_saves_nothing_and_does_not_fall_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let wal = engine::wal::Wal::open(dir.path().join("wal"), engine::WalConfig::default())
            .unwrap_or_else(|e| panic!("wal: {e}"));
        let store = SnapshotStore::open(dir.path().join("snapshots"), 2).unwrap_or_else(|e| panic!("store: {e}"));
        let shadow = Shadow::new(wal.reader(), store.clone(), 0, 1, Limits::default(), 64);
        let target = Some(LogId::new(1, 1));

        // A sound copy at the target is saved, after its check.
        shadow.slot.lock().state = Some(one_item_state());
        assert!(shadow.build(target, None).is_ok());
        let saved = store.latest().unwrap_or_else(|e| panic!("{e}")).map(|file| file.meta.last_applied);
        assert_eq!(saved, Some(target));
        std::fs::remove_dir_all(dir.path().join("snapshots")).unwrap_or_else(|e| panic!("{e}"));
        let store = SnapshotStore::open(dir.path().join("snapshots"), 2).unwrap_or_else(|e| panic!("store: {e}"));
        let shadow = Shadow::new(wal.reader(), store.clone(), 0, 1, Limits::default(), 64);

        // A copy that breaks a rule (reserved above on hand) is not.
        let mut broken = one_item_state();
        broken.break_invariant_for_tests();
        shadow.slot.lock().state = Some(broken);
        let error = shadow.build(target, None).err().unwrap_or_else(|| panic!("a broken state was saved"));
        assert!(matches!(&error, ShadowError::Invariant { reason, .. } if reason.contains("reserved")), "{error}");
        assert!(!error.falls_back(), "the actor applied the same entries: no fallback");
        assert!(store.latest().unwrap_or_else(|e| panic!("{e}")).is_none(), "nothing saved");
        assert!(shadow.last_applied().is_none(), "the broken copy is dropped");
    }

    #[test]
    fn the_snapshot_thread_runs_below_the_processs_priority() {
        let base = i64::from(rustix::process::getpriority_process(None).unwrap_or(0));
        let expected = (base + i64::from(SNAPSHOT_THREAD_NICE_STEPS)).min(19);
        let _thread = SnapshotThread::start(1).unwrap_or_else(|e| panic!("snapshot thread: {e}"));
        // The thread lowers itself as it starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !nice_of_threads("tally-snapshot").contains(&expected) {
            assert!(
                Instant::now() < deadline,
                "no snapshot thread at nice {expected}: {:?}",
                nice_of_threads("tally-snapshot")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
