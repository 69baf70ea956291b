//! openraft's network on the peer transport: every group's RPCs share the
//! node's one connection per peer (`openraft_multi::GroupRouter`), tagged
//! with the group.
//!
//! Raft messages are converted field for field into `wire` types; entries are
//! moved into the engine's `LogEntry` (the WAL's own archive). Snapshots go as
//! a sequence of bounded chunks, each acknowledged before the next, so a big
//! snapshot never becomes one big frame and never starves the connection.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::RaftNetworkFactory;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft_multi::{GroupNetworkAdapter, GroupRouter};

use crate::raft_types::{
    MembershipImage, NodeId, PeerNode, Snapshot, TypeConfig, Vote, frame_of, log_id_from_engine, log_id_to_engine,
    vote_from_engine, vote_to_engine,
};
use crate::transport::{Transport, TransportError};
use crate::wire::{AppendResult, Request, Response, SnapshotDone};

/// The node's router: the transport plus the sizes openraft's RPCs need.
#[derive(Clone)]
pub struct Router {
    transport: Transport,
    snapshot_chunk_bytes: usize,
    /// The WAL's record limit, for entries encoded on their way out.
    record_bytes_max: usize,
    transfers: Arc<AtomicU64>,
}

impl Router {
    pub fn new(transport: Transport, snapshot_chunk_bytes: usize, record_bytes_max: usize) -> Self {
        Self {
            transport,
            snapshot_chunk_bytes: snapshot_chunk_bytes.max(1),
            record_bytes_max,
            transfers: Arc::new(AtomicU64::new(1)),
        }
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }
}

fn rpc_error<E: std::error::Error>(error: TransportError) -> RPCError<TypeConfig, E> {
    match error {
        // The peer may be fine but slow or its answer was lost: a network
        // error, retried by openraft at once.
        TransportError::Timeout | TransportError::Decode(_) | TransportError::FrameTooLarge { .. } => {
            RPCError::Network(NetworkError::new(&error))
        }
        // Down, partitioned or shut down: openraft backs off.
        TransportError::Unreachable(_) | TransportError::Closed => RPCError::Unreachable(Unreachable::new(&error)),
    }
}

fn unexpected<E: std::error::Error>(response: Response) -> RPCError<TypeConfig, E> {
    let reason = match response {
        Response::Unavailable(reason) | Response::Refused(reason) => reason,
        other => format!("unexpected answer {other:?}"),
    };
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(reason)))
}

fn timeout_of(option: &RPCOption) -> Duration {
    option.hard_ttl()
}

impl GroupRouter<TypeConfig, u32> for Router {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &self,
        target: NodeId,
        group: u32,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // The leader's WAL frames, copied as bytes: nothing is re-encoded
        // per follower (only a blank or membership entry, which has none).
        let frames: Result<Vec<Vec<u8>>, _> = rpc
            .entries
            .into_iter()
            .map(|entry| frame_of(entry, self.record_bytes_max).map(|frame| frame.as_bytes().to_vec()))
            .collect();
        let frames = frames.map_err(|error| RPCError::Unreachable(Unreachable::new(&error)))?;
        let request = Request::AppendEntries {
            group,
            vote: vote_to_engine(&rpc.vote),
            prev_log_id: rpc.prev_log_id.as_ref().map(log_id_to_engine),
            frames,
            leader_commit: rpc.leader_commit.as_ref().map(log_id_to_engine),
        };
        match self.transport.call(target, &request, timeout_of(&option)).await.map_err(rpc_error)? {
            Response::AppendEntries(result) => Ok(match result {
                AppendResult::Success => AppendEntriesResponse::Success,
                AppendResult::PartialSuccess(last) => {
                    AppendEntriesResponse::PartialSuccess(last.map(log_id_from_engine))
                }
                AppendResult::Conflict => AppendEntriesResponse::Conflict,
                AppendResult::HigherVote(vote) => AppendEntriesResponse::HigherVote(vote_from_engine(vote)),
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &self,
        target: NodeId,
        group: u32,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.any_vote(target, group, rpc, false, option).await
    }

    async fn pre_vote(
        &self,
        target: NodeId,
        group: u32,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.any_vote(target, group, rpc, true, option).await
    }

    async fn full_snapshot(
        &self,
        target: NodeId,
        group: u32,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let send = self.send_snapshot(target, group, vote, snapshot, option);
        tokio::select! {
            result = send => result,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &self,
        target: NodeId,
        group: u32,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = Request::TransferLeader {
            group,
            from_leader: vote_to_engine(req.from_leader()),
            to: *req.to_node_id(),
            last_log_id: req.last_log_id().map(log_id_to_engine),
        };
        match self.transport.call(target, &request, timeout_of(&option)).await.map_err(rpc_error)? {
            // The receiver's refusal (its vote moved) is reported by openraft
            // itself on the next round; from here it is "not done".
            Response::TransferLeader(Ok(())) => Ok(Ok(())),
            Response::TransferLeader(Err(reason)) => {
                Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(reason))))
            }
            other => Err(unexpected(other)),
        }
    }
}

impl Router {
    async fn any_vote(
        &self,
        target: NodeId,
        group: u32,
        rpc: VoteRequest<TypeConfig>,
        pre_vote: bool,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = Request::Vote {
            group,
            pre_vote,
            vote: vote_to_engine(&rpc.vote),
            last_log_id: rpc.last_log_id.as_ref().map(log_id_to_engine),
            leadership_transfer: rpc.leadership_transfer,
        };
        match self.transport.call(target, &request, timeout_of(&option)).await.map_err(rpc_error)? {
            Response::Vote { vote, vote_granted, last_log_id } => Ok(VoteResponse {
                vote: vote_from_engine(vote),
                vote_granted,
                last_log_id: last_log_id.map(log_id_from_engine),
            }),
            other => Err(unexpected(other)),
        }
    }

    async fn send_snapshot(
        &self,
        target: NodeId,
        group: u32,
        vote: Vote,
        snapshot: Snapshot,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let transfer = self.transfers.fetch_add(1, Ordering::Relaxed);
        let image = snapshot.snapshot;
        let total_len = image.len() as u64;
        let membership = snapshot.meta.last_membership.membership();
        let done = SnapshotDone {
            vote: vote_to_engine(&vote),
            last_log_id: snapshot.meta.last_log_id.as_ref().map(log_id_to_engine),
            membership_log_id: snapshot.meta.last_membership.log_id().as_ref().map(log_id_to_engine),
            membership: MembershipImage::encode(membership),
            total_len,
        };
        let timeout = timeout_of(&option);
        let mut chunks = image.chunks(self.snapshot_chunk_bytes).peekable();
        let mut offset = 0u64;
        // An empty image still sends its one (final) chunk.
        let mut first = true;
        loop {
            let data = chunks.next().map(<[u8]>::to_vec).unwrap_or_default();
            let last = chunks.peek().is_none();
            if data.is_empty() && !first && !last {
                continue;
            }
            first = false;
            let len = data.len() as u64;
            let request = Request::SnapshotChunk {
                group,
                transfer,
                offset,
                data,
                done: if last { Some(done.clone()) } else { None },
            };
            let response = self.transport.call(target, &request, timeout).await.map_err(|error| match error {
                TransportError::Unreachable(_) | TransportError::Closed => {
                    StreamingError::Unreachable(Unreachable::new(&error))
                }
                _ => StreamingError::Network(NetworkError::new(&error)),
            })?;
            offset += len;
            match response {
                Response::SnapshotChunkStored if !last => {}
                Response::SnapshotInstalled { vote } if last => {
                    return Ok(SnapshotResponse::new(vote_from_engine(vote)));
                }
                other => {
                    let reason = format!("snapshot chunk at {offset} answered {other:?}");
                    return Err(StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(reason))));
                }
            }
        }
    }
}

/// Makes one group's network: the shared router bound to the group.
#[derive(Clone)]
pub struct GroupNetwork {
    pub router: Router,
    pub group: u32,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = GroupNetworkAdapter<TypeConfig, u32, Router>;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Self::Network {
        // Membership carries each node's address; the transport learns it here
        // so an added node is reachable without a restart.
        if !node.addr.is_empty() {
            self.router.transport.set_peer(target, node.addr.clone());
        }
        GroupNetworkAdapter::new(self.router.clone(), target, self.group)
    }
}
