//! `RaftStateMachine` on the shard actor: committed entries are applied by
//! the actor that owns the shard's state, snapshots are the engine's.
//!
//! openraft hands over committed entries as a stream; this module gathers
//! what is ready into one `Apply` message, so a burst of commits costs one
//! mailbox round trip. Each entry's `Applied` (one outcome per command, and
//! the events) goes back to the proposer that wrote it. On the group's leader
//! the events are also published, named, to the node's event stream.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::Addr;
use engine::actor::{Apply, Install, Read, ShardActor, TakeSnapshot};
use engine::snapshot::{SnapshotFile, SnapshotStore, read_image};
use engine::{EventRecord, LogEntry, SnapshotError};
use futures_util::StreamExt;
use openraft::OptionalSend;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use tokio::sync::{broadcast, watch};

use crate::shard_thread::ShardThread;
use crate::types::{
    LogId, RaftStoredMembership, Snapshot, SnapshotImage, SnapshotMeta, TypeConfig, entry_to_engine,
    log_id_from_engine, stored_membership_from_engine,
};

/// An applied event as this node saw it. Every replica applies the same
/// events with the same ids; `leader` says whether this node led the group
/// when it applied them. Sinks with outside effects (webhooks, alert files)
/// take only leader events (DESIGN §7); a live stream may take them all, so
/// that any node can serve every shard's events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEvent {
    pub record: EventRecord,
    pub leader: bool,
}

/// Where a group's events go, and whether this node leads the group.
#[derive(Clone, Debug)]
pub struct Publisher {
    /// True while this node leads the group.
    pub is_leader: Arc<AtomicBool>,
    pub events: broadcast::Sender<NodeEvent>,
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
}

impl StateMachine {
    pub fn new(
        shard: u32,
        actor: Addr<ShardActor>,
        snapshots: SnapshotStore,
        publisher: Publisher,
        next_deadline_ms: Arc<watch::Sender<Option<u64>>>,
    ) -> Self {
        Self { shard, actor, snapshots, publisher, next_deadline_ms, thread: Arc::default() }
    }

    /// Checks that apply runs on `thread` (see `shard_thread`).
    pub fn with_thread(mut self, thread: Arc<ShardThread>) -> Self {
        self.thread = thread;
        self
    }
}

fn mailbox_error(error: actix::MailboxError) -> io::Error {
    io::Error::other(format!("shard actor is gone: {error}"))
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

/// Builds a snapshot: the actor serialises its state (the shard pauses only
/// for that), then a blocking task writes it durably.
pub struct SnapshotBuilder {
    actor: Addr<ShardActor>,
    snapshots: SnapshotStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotImage;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let bytes = self.actor.send(TakeSnapshot).await.map_err(mailbox_error)?.map_err(snapshot_error)?;
        let store = self.snapshots.clone();
        let file = tokio::task::spawn_blocking(move || store.save_parts(&bytes.meta, &bytes.state))
            .await
            .map_err(io::Error::other)?
            .map_err(snapshot_error)?;
        load_snapshot(file).await
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
        if batch.is_empty() {
            return Ok(());
        }
        let leader = self.publisher.is_leader.load(Ordering::Acquire);
        // Naming events costs string copies: only when someone listens.
        let describe_events = self.publisher.events.receiver_count() > 0;
        // The actor runs on this task's thread (DESIGN §10): one mailbox
        // message, a same-thread wake-up, no thread crossing.
        self.thread.check();
        let applied = self
            .actor
            .send(Apply { entries: batch, describe_events })
            .await
            .map_err(mailbox_error)?
            .map_err(|error| io::Error::other(error.to_string()))?;
        self.next_deadline_ms.send_if_modified(|deadline| {
            let changed = *deadline != applied.next_deadline_ms;
            *deadline = applied.next_deadline_ms;
            changed
        });
        for record in applied.records {
            // No subscriber is not an error: events are also in the log.
            let _ = self.publisher.events.send(NodeEvent { record, leader });
        }
        debug_assert_eq!(applied.applied.len(), responders.len());
        for (result, responder) in applied.applied.into_iter().zip(responders) {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { actor: self.actor.clone(), snapshots: self.snapshots.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, image: SnapshotImage) -> Result<(), io::Error> {
        let store = self.snapshots.clone();
        let (file, state) = tokio::task::spawn_blocking(move || store.install(&image))
            .await
            .map_err(io::Error::other)?
            .map_err(snapshot_error)?;
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
        self.actor.send(Install(Box::new(state))).await.map_err(mailbox_error)?;
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
