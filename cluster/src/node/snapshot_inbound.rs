//! Snapshots arriving from leaders: chunks reassembled within the bounds of
//! `inbound`, the image checked before openraft installs it (a damaged one
//! would stop the group), and the sweeper of abandoned transfers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engine::snapshot::SnapshotStore;

use super::Inner;
use crate::config::ClusterConfig;
use crate::inbound::{Chunk, InboundLimits};
use crate::raft_types::{
    MembershipImage, NodeId, Raft, Snapshot, SnapshotMeta, log_id_from_engine, vote_from_engine, vote_to_engine,
};
use crate::wire::{Response, SnapshotDone};

/// How often abandoned snapshot transfers are looked for: a quarter of
/// their idle timeout, within these.
const SWEEP_EVERY_MIN: Duration = Duration::from_millis(10);
const SWEEP_EVERY_MAX: Duration = Duration::from_secs(1);

#[allow(clippy::too_many_arguments)]
pub(super) async fn receive_snapshot_chunk(
    inner: &Arc<Inner>,
    raft: &Raft,
    from: NodeId,
    shard: u32,
    transfer: u64,
    offset: u64,
    data: Vec<u8>,
    done: Option<SnapshotDone>,
) -> Response {
    let last = done.is_some();
    let chunk = inner.inbound.lock().receive(from, shard, transfer, offset, data, last, Instant::now());
    let image = match chunk {
        Chunk::Stored => return Response::SnapshotChunkStored,
        Chunk::Refused(reason) => return Response::Refused(reason),
        Chunk::Complete(image) => image,
    };
    let Some(done) = done else {
        return Response::SnapshotChunkStored; // `last` was false: not reached
    };
    if image.len() as u64 != done.total_len {
        return Response::Refused(format!("snapshot is {} bytes, expected {}", image.len(), done.total_len));
    }
    // openraft treats a snapshot its state machine cannot install as a
    // storage failure and stops the group: a damaged image (a buggy leader,
    // or bytes altered on the path, which frames do not authenticate) must
    // be refused here, before it gets there. It is decoded twice.
    let (image, checked) = match tokio::task::spawn_blocking(move || {
        let checked = SnapshotStore::check_image(&image);
        (image, checked)
    })
    .await
    {
        Ok(checked) => checked,
        Err(error) => return Response::Unavailable(format!("checking the snapshot: {error}")),
    };
    match checked {
        Err(error) => return Response::Refused(error.to_string()),
        Ok(meta) if meta.shard != shard || meta.last_applied != done.last_log_id => {
            return Response::Refused(format!(
                "snapshot of shard {} at {:?} offered to shard {shard} as {:?}",
                meta.shard, meta.last_applied, done.last_log_id
            ));
        }
        Ok(_) => {}
    }
    let membership = if done.membership.is_empty() {
        openraft::StoredMembership::default()
    } else {
        match MembershipImage::decode(&done.membership) {
            Ok(membership) => {
                openraft::StoredMembership::new(done.membership_log_id.map(log_id_from_engine), membership)
            }
            Err(error) => return Response::Refused(error.to_string()),
        }
    };
    let meta = SnapshotMeta { last_log_id: done.last_log_id.map(log_id_from_engine), last_membership: membership };
    let snapshot = Snapshot { meta, snapshot: image };
    match raft.install_full_snapshot(vote_from_engine(done.vote), snapshot).await {
        Ok(response) => Response::SnapshotInstalled { vote: vote_to_engine(&response.vote) },
        Err(error) => Response::Unavailable(error.to_string()),
    }
}

/// The bounds on snapshots being received, from the node's settings.
pub(super) fn inbound_limits(config: &ClusterConfig) -> InboundLimits {
    InboundLimits {
        per_peer_max: config.snapshot_transfers_per_peer_max.max(1),
        bytes_max: config.snapshot_bytes_max,
        idle_timeout: Duration::from_millis(config.snapshot_transfer_idle_timeout_ms.max(1)),
    }
}

/// Drops abandoned snapshot transfers even when no chunk arrives to do it,
/// a few times per idle timeout, until the node goes.
pub(super) async fn sweep_inbound_snapshots(node: std::sync::Weak<Inner>) {
    let every = {
        let Some(inner) = node.upgrade() else { return };
        (inbound_limits(&inner.config).idle_timeout / 4).clamp(SWEEP_EVERY_MIN, SWEEP_EVERY_MAX)
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = node.upgrade() else { return };
        if inner.shut_down.load(Ordering::Acquire) {
            return;
        }
        inner.inbound.lock().expire(Instant::now());
    }
}
