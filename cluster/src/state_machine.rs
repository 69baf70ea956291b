//! `RaftStateMachine` on the shard actor: committed entries are applied by
//! the actor that owns the shard's state, snapshots are the engine's.
//!
//! openraft hands over committed entries as a stream; this module gathers
//! what is ready into one `Apply` message, so a burst of commits costs one
//! mailbox round trip. Each entry's `Applied` (one outcome per command, and
//! the events) goes back to the proposer that wrote it. On the group's leader
//! the events are also published, named, to the node's event stream.
//!
//! Snapshots are built from the shard's shadow replica (`shadow`) on the
//! node's snapshot thread, at the log id this state machine last applied; the actor
//! (`TakeSnapshot`, which pauses the shard while it serialises) builds them
//! only when the shadow cannot, or when `snapshot_from_shadow` is off.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use actix::Addr;
use engine::actor::{Apply, Describe, Install, Read, ShardActor, TakeSnapshot};
use engine::event::EventKind;
use engine::snapshot::{SnapshotFile, SnapshotStore, read_image};
use engine::{EventRecord, LogEntry, LogId as EngineLogId, SnapshotError};
use futures_util::StreamExt;
use openraft::OptionalSend;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use tokio::sync::{broadcast, watch};

use crate::clock::ShardClock;
use crate::event_ring::EventRing;
use crate::health::{FailureCause, ShardHealth};
use crate::ledger::{AppliedBurst, LedgerSender};
use crate::raft_types::{
    LogId, RaftStoredMembership, Snapshot, SnapshotImage, SnapshotMeta, TypeConfig, entry_to_engine,
    log_id_from_engine, stored_membership_from_engine,
};
use crate::shadow::{Shadow, ShadowError, SnapshotThread};
use crate::shard_thread::ShardThread;

/// An applied event as this node saw it. Every replica applies the same
/// events with the same ids; `leader` says whether this node led the group
/// when it applied them. Sinks with outside effects (webhooks, alert files)
/// take only leader events (DESIGN §7); a live stream may take them all, so
/// that any node can serve every shard's events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEvent {
    /// Shared: every receiver of the node's events (the event hub, the
    /// alerts, the ledger) gets the one record, not a copy of its strings.
    pub record: Arc<EventRecord>,
    pub leader: bool,
}

/// Where a group's events go, and whether this node leads the group.
#[derive(Clone, Debug)]
pub struct Publisher {
    /// True while this node leads the group.
    pub is_leader: Arc<AtomicBool>,
    pub events: broadcast::Sender<NodeEvent>,
    /// The node's ledger thread, if the ledger is on: every replica records
    /// every movement it applies.
    pub ledger: Option<LedgerSender>,
    /// The newest events kept for the nodes that relay them (when shards
    /// follow the placement, so some node may not host this one).
    pub ring: Option<Arc<EventRing>>,
}

/// Whether the ledger records this event: stock changes and extended holds.
fn is_movement(record: &EventRecord) -> bool {
    matches!(record.kind, EventKind::StockChanged { .. } | EventKind::HoldExtended { .. })
}

/// One shard's snapshot figures, as `/metrics` exports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub shard: u32,
    /// Snapshots this node built for the shard since it started (from the
    /// shadow or by the actor; snapshots received from a leader are not
    /// counted).
    pub built: u64,
    /// Builds the shadow could not make, which the actor made instead (it
    /// pauses the shard while it serialises). 0 while the log reaches from
    /// the shadow to every snapshot asked for.
    pub fallbacks: u64,
    /// How long the last build took, start to durable file, in
    /// microseconds; 0 before the first.
    pub last_build_us: u64,
    /// Snapshots received from a leader and installed (each replaces the
    /// state and drops the shadow).
    pub installed: u64,
    /// Full state checks (`ShardState::check_invariants`) run on a
    /// snapshot this node built, off the shard thread.
    pub invariant_checks: u64,
    /// Of those, the ones that found a broken rule: each stopped the shard.
    pub invariant_failures: u64,
}

/// The counters behind `SnapshotStats`, shared by a shard's state machine
/// and its builders.
#[derive(Debug, Default)]
pub struct SnapshotCounters {
    built: AtomicU64,
    fallbacks: AtomicU64,
    last_build_us: AtomicU64,
    installed: AtomicU64,
    invariant_checks: AtomicU64,
    invariant_failures: AtomicU64,
}

impl SnapshotCounters {
    pub fn stats(&self, shard: u32) -> SnapshotStats {
        SnapshotStats {
            shard,
            built: self.built.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            last_build_us: self.last_build_us.load(Ordering::Relaxed),
            installed: self.installed.load(Ordering::Relaxed),
            invariant_checks: self.invariant_checks.load(Ordering::Relaxed),
            invariant_failures: self.invariant_failures.load(Ordering::Relaxed),
        }
    }

    fn checked(&self, passed: bool) {
        self.invariant_checks.fetch_add(1, Ordering::Relaxed);
        if !passed {
            self.invariant_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One shard's state machine: its actor and its snapshot directory.
#[derive(Clone)]
pub struct StateMachine {
    shard: u32,
    actor: Addr<ShardActor>,
    snapshots: SnapshotStore,
    publisher: Publisher,
    /// Log time of the next hold deadline, for the proposer's ticks.
    next_deadline_ms: Arc<watch::Sender<Option<u64>>>,
    /// The thread the shard's write path runs on.
    thread: Arc<ShardThread>,
    /// The shard's shadow replica and the thread that builds from it;
    /// `None` builds every snapshot on the actor.
    shadow: Option<(Arc<Shadow>, SnapshotThread)>,
    /// The last log id applied (what a snapshot built now must cover);
    /// `None` until the first `applied_state`, `apply` or install says.
    last_applied: Option<Option<EngineLogId>>,
    counters: Arc<SnapshotCounters>,
    /// Where a broken rule or a storage failure is recorded: the shard
    /// stops on this node.
    health: ShardHealth,
    /// The shard's log time on this node, told what is applied (`clock`).
    clock: Option<Arc<ShardClock>>,
}

impl StateMachine {
    pub fn new(
        shard: u32,
        actor: Addr<ShardActor>,
        snapshots: SnapshotStore,
        publisher: Publisher,
        next_deadline_ms: Arc<watch::Sender<Option<u64>>>,
    ) -> Self {
        Self {
            shard,
            actor,
            snapshots,
            publisher,
            next_deadline_ms,
            thread: Arc::default(),
            shadow: None,
            last_applied: None,
            counters: Arc::default(),
            health: ShardHealth::detached(shard),
            clock: None,
        }
    }

    /// Tells `clock` the log time of every entry applied and snapshot
    /// installed (its fallback when a truncation cuts its estimate).
    pub fn with_clock(mut self, clock: Arc<ShardClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Records failures in `health` (see `health`).
    pub fn with_health(mut self, health: ShardHealth) -> Self {
        self.health = health;
        self
    }

    /// Checks that apply runs on `thread` (see `shard_thread`).
    pub fn with_thread(mut self, thread: Arc<ShardThread>) -> Self {
        self.thread = thread;
        self
    }

    /// Builds snapshots from `shadow` on `thread` (see `shadow`); the
    /// shadow must read this shard's WAL and write this shard's snapshot
    /// directory.
    pub fn with_shadow(mut self, shadow: Shadow, thread: SnapshotThread) -> Self {
        self.shadow = Some((Arc::new(shadow), thread));
        self
    }

    /// The shard's snapshot counters, shared with this state machine.
    pub fn counters(&self) -> Arc<SnapshotCounters> {
        Arc::clone(&self.counters)
    }

    /// The shadow replica, if snapshots are built from one (tests).
    pub fn shadow(&self) -> Option<&Shadow> {
        self.shadow.as_ref().map(|(shadow, _)| shadow.as_ref())
    }

    /// The last log id the actor applied, asked of the actor.
    async fn ask_last_applied(&self) -> io::Result<Option<EngineLogId>> {
        let answer = self.actor.send(Read::new(|state| state.last_applied())).await.map_err(mailbox_error)?;
        Ok(answer.0)
    }
}

fn mailbox_error(error: actix::MailboxError) -> io::Error {
    io::Error::other(format!("shard actor is gone: {error}"))
}

/// Checks that `applied` answers exactly the entries `log_ids`, one each in
/// order, before any answer is routed: an answer sent to the wrong waiter
/// would acknowledge a write with another write's outcome.
fn check_answers(log_ids: &[EngineLogId], applied: &[engine::Applied]) -> Result<(), String> {
    if applied.len() != log_ids.len() {
        return Err(format!("apply answered {} entries for {} applied", applied.len(), log_ids.len()));
    }
    match log_ids.iter().zip(applied).find(|(log_id, answer)| answer.log_id != **log_id) {
        Some((log_id, answer)) => Err(format!("the answer for entry {log_id:?} is for {:?}", answer.log_id)),
        None => Ok(()),
    }
}

fn snapshot_error(error: SnapshotError) -> io::Error {
    match error {
        SnapshotError::Io { source, .. } => source,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

fn meta_of(file_meta: &engine::snapshot::SnapshotMeta) -> io::Result<SnapshotMeta> {
    Ok(SnapshotMeta {
        last_log_id: file_meta.last_applied.map(log_id_from_engine),
        last_membership: stored_membership_from_engine(file_meta.membership.as_ref())?,
    })
}

async fn load_snapshot(file: SnapshotFile) -> io::Result<Snapshot> {
    let meta = meta_of(&file.meta)?;
    let path = file.path.clone();
    let image = tokio::task::spawn_blocking(move || read_image(&path))
        .await
        .map_err(io::Error::other)?
        .map_err(snapshot_error)?;
    Ok(Snapshot { meta, snapshot: image })
}

/// Builds one snapshot, covering exactly the entries applied when openraft
/// asked for the builder (`target`).
///
/// From the shadow: the node's snapshot thread brings the shard's shadow
/// replica to `target` from the WAL, serialises and saves it; the shard
/// thread only waits for the answer, so the shard's writes go on meanwhile. From the
/// actor (no shadow, or the shadow could not reach `target`): the actor
/// serialises its state, pausing the shard for that, then a blocking task
/// writes it durably.
pub struct SnapshotBuilder {
    shard: u32,
    actor: Addr<ShardActor>,
    snapshots: SnapshotStore,
    shadow: Option<(Arc<Shadow>, SnapshotThread)>,
    target: Option<EngineLogId>,
    /// Debug builds: the actor's digest at `target`, which the shadow's
    /// state must equal.
    expected_digest: Option<u128>,
    counters: Arc<SnapshotCounters>,
    health: ShardHealth,
}

impl SnapshotBuilder {
    async fn build_from_shadow(&self, shadow: Arc<Shadow>, thread: &SnapshotThread) -> io::Result<SnapshotFile> {
        let built = thread.build(shadow, self.target, self.expected_digest).await;
        // The shadow checks the state before it serialises it: a file, a
        // failed write or a digest mismatch each come after a passed check.
        match &built {
            Ok(_) | Err(ShadowError::Save(_) | ShadowError::DigestMismatch { .. }) => self.counters.checked(true),
            Err(ShadowError::Invariant { .. }) => self.counters.checked(false),
            Err(_) => {}
        }
        match built {
            Ok(file) => Ok(file),
            Err(error) if error.falls_back() => {
                self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(shard = self.shard, %error, "snapshot built by the shard actor instead of its shadow");
                self.build_on_actor().await
            }
            Err(ShadowError::Save(error)) => Err(self.health.io_error("writing a snapshot", snapshot_error(error))),
            Err(error) => {
                tracing::error!(shard = self.shard, %error, "the snapshot's state check failed");
                self.health.fail(FailureCause::InvariantBroken, error.to_string());
                Err(error.into())
            }
        }
    }

    async fn build_on_actor(&self) -> io::Result<SnapshotFile> {
        let bytes = self
            .actor
            .send(TakeSnapshot)
            .await
            .map_err(mailbox_error)?
            .map_err(|error| self.health.io_error("serialising a snapshot", snapshot_error(error)))?;
        let store = self.snapshots.clone();
        let shard = self.shard;
        // Off the shard thread: the full state check of what was taken (a
        // load checks every reference and invariant), then the file.
        let saved = tokio::task::spawn_blocking(move || {
            if let Err(reason) = engine::ShardState::from_snapshot_bytes(&bytes.state) {
                return Err(Err(reason));
            }
            store.save_parts(&bytes.meta, &bytes.state).map_err(Ok)
        })
        .await
        .map_err(io::Error::other)?;
        match saved {
            Ok(file) => {
                self.counters.checked(true);
                Ok(file)
            }
            Err(Ok(error)) => {
                self.counters.checked(true);
                Err(self.health.io_error("writing a snapshot", snapshot_error(error)))
            }
            Err(Err(reason)) => {
                self.counters.checked(false);
                let reason = format!("shard {shard}: the state taken for a snapshot fails its check: {reason}");
                tracing::error!(shard, %reason, "the snapshot's state check failed");
                self.health.fail(FailureCause::InvariantBroken, reason.clone());
                Err(io::Error::new(io::ErrorKind::InvalidData, reason))
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotImage;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let started = Instant::now();
        let file = match self.shadow.clone() {
            Some((shadow, thread)) => self.build_from_shadow(shadow, &thread).await?,
            None => self.build_on_actor().await?,
        };
        let took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.counters.last_build_us.store(took_us, Ordering::Relaxed);
        self.counters.built.fetch_add(1, Ordering::Relaxed);
        // The meta, without the image: openraft (0.10.0-alpha.37) reads
        // only the meta of a snapshot it had built (sm::worker's
        // BuildSnapshotDone, StorageHelper::get_initial_state) and fetches
        // images with get_current_snapshot, which reads the file. Reading
        // tens of MB back here only for openraft to free them on the shard
        // thread cost that thread ~3-4 ms per 88 MB. An empty image is
        // never mistaken for a state: it fails to parse.
        Ok(Snapshot { meta: meta_of(&file.meta)?, snapshot: SnapshotImage::new() })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotImage;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, RaftStoredMembership), io::Error> {
        let answer = self
            .actor
            .send(Read::new(|state| (state.last_applied(), state.membership().cloned())))
            .await
            .map_err(mailbox_error)?;
        let (last, membership) = answer.0;
        self.last_applied = Some(last);
        Ok((last.map(log_id_from_engine), stored_membership_from_engine(membership.as_ref())?))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch: Vec<LogEntry> = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            batch.push(entry_to_engine(entry).0);
            responders.push(responder);
        }
        if self.health.is_failed() {
            // A stopped shard applies and answers nothing more.
            return Err(io::Error::other(format!("shard {} has stopped on this node", self.shard)));
        }
        let Some(last) = batch.last().map(|entry| entry.log_id) else {
            return Ok(());
        };
        let leader = self.publisher.is_leader.load(Ordering::Acquire);
        // Naming events costs string copies: only when someone listens.
        let subscribed = self.publisher.events.receiver_count() > 0 || self.publisher.ring.is_some();
        let describe_events = match (subscribed, self.publisher.ledger.is_some()) {
            (true, _) => Describe::All,
            (false, true) => Describe::Movements,
            (false, false) => Describe::None,
        };
        let first_index = batch.first().map_or(last.index, |entry| entry.log_id.index);
        // The actor runs on this task's thread (DESIGN §10): one mailbox
        // message, a same-thread wake-up, no thread crossing.
        self.thread.check();
        let log_ids: Vec<EngineLogId> = batch.iter().map(|entry| entry.log_id).collect();
        let applied = self.actor.send(Apply { entries: batch, describe_events }).await.map_err(mailbox_error)?;
        let applied = match applied {
            Ok(applied) => applied,
            Err(error) => {
                self.health.fail(FailureCause::InvariantBroken, format!("applying committed entries: {error}"));
                return Err(io::Error::other(error.to_string()));
            }
        };
        // A real check, in release builds too, before any answer is routed.
        if let Err(reason) = check_answers(&log_ids, &applied.applied) {
            self.health.fail(FailureCause::InvariantBroken, reason.clone());
            return Err(io::Error::other(reason));
        }
        self.last_applied = Some(Some(last));
        if let Some(clock) = &self.clock {
            clock.applied(applied.log_time_ms);
        }
        self.next_deadline_ms.send_if_modified(|deadline| {
            let changed = *deadline != applied.next_deadline_ms;
            *deadline = applied.next_deadline_ms;
            changed
        });
        let mut records: Vec<Arc<EventRecord>> = applied.records.into_iter().map(Arc::new).collect();
        let ledger_records = match &self.publisher.ledger {
            Some(_) if subscribed => records.iter().filter(|r| is_movement(r)).cloned().collect(),
            Some(_) => {
                records.retain(|r| is_movement(r));
                std::mem::take(&mut records)
            }
            None => Vec::new(),
        };
        for record in records {
            if let Some(ring) = &self.publisher.ring {
                ring.push(&record);
            }
            // No subscriber is not an error: events are also in the log.
            let _ = self.publisher.events.send(NodeEvent { record, leader });
        }
        for (result, responder) in applied.applied.into_iter().zip(responders) {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        if let Some(ledger) = &self.publisher.ledger {
            // After the answers: a full queue holds up the next apply, not
            // this one's callers.
            let burst =
                AppliedBurst { shard: self.shard, first_index, last_index: last.index, records: ledger_records };
            if !ledger.send(burst).await {
                tracing::warn!(shard = self.shard, "the ledger thread has stopped; movements are not recorded");
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // openraft asks between applies: the actor is at `last_applied` now,
        // and a snapshot built now must cover exactly that.
        let mut shadow = self.shadow.clone();
        let target = match self.last_applied {
            Some(known) => known,
            None => match self.ask_last_applied().await {
                Ok(last) => last,
                // The actor is gone; its path reports that when it builds.
                Err(_) => {
                    shadow = None;
                    None
                }
            },
        };
        let mut expected_digest = None;
        if cfg!(debug_assertions) && shadow.is_some() {
            // Debug builds check every shadow snapshot against the actor's
            // state at the same index; this costs the actor a
            // serialisation, which release builds never pay.
            if let Ok(answer) = self.actor.send(Read::new(|state| (state.last_applied(), state.digest()))).await {
                let (actor_last, digest) = answer.0;
                debug_assert_eq!(
                    actor_last, target,
                    "shard {}: the tracked last applied is not the actor's",
                    self.shard
                );
                expected_digest = Some(digest);
            }
        }
        SnapshotBuilder {
            shard: self.shard,
            actor: self.actor.clone(),
            snapshots: self.snapshots.clone(),
            shadow,
            target,
            expected_digest,
            counters: Arc::clone(&self.counters),
            health: self.health.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, image: SnapshotImage) -> Result<(), io::Error> {
        // The shard's state is about to be replaced: the shadow no longer
        // follows it (and a build under way must not keep its copy).
        if let Some((shadow, _)) = &self.shadow {
            shadow.forget();
        }
        let store = self.snapshots.clone();
        let (file, state) = tokio::task::spawn_blocking(move || store.install(&image))
            .await
            .map_err(io::Error::other)?
            .map_err(|error| self.health.io_error("installing a snapshot from the leader", snapshot_error(error)))?;
        if file.meta.shard != self.shard {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot of shard {} offered to shard {}", file.meta.shard, self.shard),
            ));
        }
        if meta_of(&file.meta)?.last_log_id != meta.last_log_id {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot image does not match its meta"));
        }
        let deadline = state.next_deadline_ms();
        let last = state.last_applied();
        if let (Some(clock), Some(last)) = (&self.clock, last) {
            // The leader's log up to `last` replaces this node's: its log
            // time is the estimate now, unless a newer term's entry is.
            clock.observe(last, state.now_ms(), false);
            clock.applied(state.now_ms());
        }
        self.actor.send(Install(Box::new(state))).await.map_err(mailbox_error)?;
        self.last_applied = Some(last);
        self.counters.installed.fetch_add(1, Ordering::Relaxed);
        self.next_deadline_ms.send_replace(deadline);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let store = self.snapshots.clone();
        let latest = tokio::task::spawn_blocking(move || store.latest())
            .await
            .map_err(io::Error::other)?
            .map_err(snapshot_error)?;
        match latest {
            Some(file) => load_snapshot(file).await.map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(index: u64) -> engine::Applied {
        engine::Applied { log_id: EngineLogId::new(1, index), ..engine::Applied::default() }
    }

    #[test]
    fn answers_are_routed_only_when_they_match_the_entries_one_for_one() {
        let ids = [EngineLogId::new(1, 4), EngineLogId::new(1, 5)];
        assert_eq!(check_answers(&ids, &[answered(4), answered(5)]), Ok(()));
        let short = check_answers(&ids, &[answered(4)]);
        assert_eq!(short, Err("apply answered 1 entries for 2 applied".to_owned()));
        let shifted = check_answers(&ids, &[answered(5), answered(6)]);
        assert!(shifted.is_err_and(|reason| reason.contains("is for")), "an answer for another entry");
        assert_eq!(check_answers(&[], &[]), Ok(()));
    }
}
