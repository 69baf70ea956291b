//! The service answering peers' requests (`transport::Handler`): Raft's
//! appends, votes, snapshots and leadership transfers, forwarded submits,
//! queries, read indexes, admin operations and probes; and which node ids
//! it admits.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use engine::read::Query;
use engine::wal::EntryFrame;
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest};

use super::admin::apply_admin;
use super::ledger_read::answer_scan;
use super::route::Route;
use super::snapshot_inbound::receive_snapshot_chunk;
use super::{Consistency, Group, Inner, Node};
use crate::error::{ProposeError, ReadError};
use crate::placement::{Placement, ShardPlacement};
use crate::raft_types::{
    Entry, NodeId, Raft, entry_from_frame, log_id_from_engine, log_id_to_engine, vote_from_engine, vote_to_engine,
};
use crate::transport::Handler;
use crate::wire::{AppendResult, Request, Response};

/// Answers peers' requests.
pub(super) struct Service {
    pub(super) node: std::sync::Weak<Inner>,
}

impl Handler for Service {
    fn handle(
        &self,
        from: NodeId,
        request: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + 'static>> {
        let node = self.node.clone();
        Box::pin(async move {
            let Some(inner) = node.upgrade() else {
                return Response::Unavailable("node is shutting down".into());
            };
            if inner.shut_down.load(Ordering::Acquire) {
                return Response::Unavailable("node is shutting down".into());
            }
            if let Some(answer) = serve_hosting(&inner, &request).await {
                return answer;
            }
            let shard = request.group();
            match inner.group(shard) {
                Some(group) => serve(&inner, &group, from, request).await,
                None => not_here(&inner, shard, &request),
            }
        })
    }

    /// A node this one knows: a configured member, a voter or learner of
    /// any group's membership, or a peer the transport was told about (an
    /// added learner, a dial address). A node whose groups have no
    /// membership yet (waiting to be added) knows only its configured
    /// members; its first leader must be among them.
    fn admits(&self, peer: NodeId) -> bool {
        let Some(inner) = self.node.upgrade() else {
            return false;
        };
        if peer == inner.id {
            return false;
        }
        if inner.config.members.iter().chain(&inner.config.dial).any(|member| member.id == peer)
            || inner.transport.knows_peer(peer)
        {
            return true;
        }
        inner.hosted_groups().iter().any(|group| {
            let metrics = group.raft.metrics();
            let metrics = metrics.borrow_watched();
            metrics.membership_config.membership().nodes().any(|(id, _)| *id == peer)
        })
    }
}

/// The requests that move replicas and the map (`hosting`, `membership`):
/// answered whether or not this node hosts the shard. `None` for the rest.
async fn serve_hosting(inner: &Arc<Inner>, request: &Request) -> Option<Response> {
    // Made only for these requests: every Raft message passes here first.
    let node = || Node { inner: Arc::clone(inner) };
    let done = |result: Result<(), String>| match result {
        Ok(()) => Response::AdminDone,
        Err(reason) => Response::Refused(reason),
    };
    Some(match request {
        Request::Host { group } => done(node().host_shard(*group).await),
        Request::Release { group, voters } => done(node().release_shard(*group, voters).await),
        Request::Membership { group } => match node().membership_view(*group) {
            Some(view) => Response::Membership(view),
            None => not_here(inner, *group, request),
        },
        Request::MoveShard { group, voters, addrs, release } => {
            if inner.group(*group).is_none() {
                return Some(not_here(inner, *group, request));
            }
            let voters = voters.iter().copied().collect();
            let addrs = addrs.iter().cloned().collect();
            match node().move_shard_releasing(*group, &voters, &addrs, *release).await {
                Ok(changed) => Response::Moved { changed },
                Err(error) => Response::Refused(error.to_string()),
            }
        }
        Request::Events { group, after, max } => match inner.route(*group) {
            Some(Route::Local(_)) => {
                let answer = inner.event_ring.after(*group, *after, *max);
                Response::Events { records: answer.records, newest: answer.newest, lost: answer.lost }
            }
            _ => not_here(inner, *group, request),
        },
        Request::LedgerScan { group, filter, after, limit } => match inner.route(*group) {
            Some(Route::Local(_)) => answer_scan(&node(), *group, filter, *after, *limit).await,
            _ => not_here(inner, *group, request),
        },
        Request::Placement { shards, members, .. } => {
            let placement = Placement {
                shards: shards
                    .iter()
                    .map(|(voters, leader)| ShardPlacement { voters: voters.clone(), preferred_leader: *leader })
                    .collect(),
            };
            done(node().set_placement(placement, members))
        }
        _ => return None,
    })
}

/// The answer for a shard this node has no group of: a node asking for
/// a write, a query or a read index tries another (`NotHosted`, with what
/// this node heard of the leader); a Raft message is refused.
fn not_here(inner: &Inner, shard: u32, request: &Request) -> Response {
    let Some(route) = inner.routes.get(shard as usize) else {
        return Response::Refused(format!("shard {shard} does not exist here"));
    };
    match request {
        Request::Submit { .. }
        | Request::Query { .. }
        | Request::ReadIndex { .. }
        | Request::Membership { .. }
        | Request::MoveShard { .. }
        | Request::Events { .. }
        | Request::LedgerScan { .. } => Response::NotHosted { leader: route.leader_hint() },
        _ => Response::Refused(format!("shard {shard} is not hosted on this node")),
    }
}

async fn serve(inner: &Arc<Inner>, group: &Group, from: NodeId, request: Request) -> Response {
    let raft = &group.raft;
    match request {
        Request::AppendEntries { vote, prev_log_id, frames, leader_commit, .. } => {
            serve_append(inner, raft, vote, prev_log_id, frames, leader_commit).await
        }
        Request::Vote { pre_vote, vote, last_log_id, leadership_transfer, .. } => {
            let rpc = VoteRequest {
                vote: vote_from_engine(vote),
                last_log_id: last_log_id.map(log_id_from_engine),
                leadership_transfer,
            };
            let answer = if pre_vote { raft.pre_vote(rpc).await } else { raft.vote(rpc).await };
            match answer {
                Ok(response) => Response::Vote {
                    vote: vote_to_engine(&response.vote),
                    vote_granted: response.vote_granted,
                    last_log_id: response.last_log_id.as_ref().map(log_id_to_engine),
                },
                Err(error) => Response::Unavailable(error.to_string()),
            }
        }
        Request::SnapshotChunk { group: shard, transfer, offset, data, done } => {
            receive_snapshot_chunk(inner, raft, from, shard, transfer, offset, data, done).await
        }
        Request::TransferLeader { from_leader, to, last_log_id, .. } => {
            let request =
                TransferLeaderRequest::new(vote_from_engine(from_leader), to, last_log_id.map(log_id_from_engine));
            match raft.handle_transfer_leader(request).await {
                Ok(Ok(())) => Response::TransferLeader(Ok(())),
                Ok(Err(error)) => Response::TransferLeader(Err(error.to_string())),
                Err(error) => Response::Unavailable(error.to_string()),
            }
        }
        Request::Submit { commands, request_ids, .. } => {
            if commands.len() != request_ids.len() {
                return Response::Refused("one request id per command".into());
            }
            // One list, one entry (with whatever else is queued): a
            // follower's forwarded batch costs the leader one proposal.
            match group.proposer.propose_many(commands, request_ids).await {
                Ok(outcomes) => Response::Submitted(outcomes),
                Err(ProposeError::NotLeader(_)) => Response::NotLeader { leader: raft.current_leader().await },
                // Stopped here: nothing proposed; the caller finds the new leader.
                Err(ProposeError::Stopped) => Response::NotLeader { leader: None },
                Err(ProposeError::Overloaded) => Response::Overloaded,
                Err(ProposeError::Closed) => Response::Unavailable("node is shutting down".into()),
                // The entry may commit yet: the caller retries under the same
                // request ids (applied once).
                Err(ProposeError::Unknown(reason)) => Response::Unknown(reason),
            }
        }
        Request::ReadIndex { .. } => {
            if group.health.is_failed() {
                return Response::NotLeader { leader: None };
            }
            if !group.is_leader.load(Ordering::Acquire) {
                return Response::NotLeader { leader: raft.current_leader().await };
            }
            let confirm = raft.ensure_linearizable(ReadPolicy::ReadIndex);
            match tokio::time::timeout(inner.rpc_timeout(), confirm).await {
                Ok(Ok(read)) => Response::ReadIndex { index: Some(read.index()) },
                _ => Response::NotLeader { leader: raft.current_leader().await },
            }
        }
        Request::Admin { op, .. } => {
            if !group.is_leader.load(Ordering::Acquire) {
                return Response::NotLeader { leader: raft.current_leader().await };
            }
            match apply_admin(raft, op).await {
                Ok(()) => Response::AdminDone,
                Err(reason) => Response::Refused(reason),
            }
        }
        Request::Query { query, linearizable, .. } => serve_query(inner, group.shard, query, linearizable).await,
        Request::Probe { .. } => Response::Probe { initialized: raft.is_initialized().await.unwrap_or(false) },
        Request::Host { .. }
        | Request::Release { .. }
        | Request::Membership { .. }
        | Request::MoveShard { .. }
        | Request::Placement { .. }
        | Request::Events { .. }
        | Request::LedgerScan { .. } => Response::Refused("answered before the shard's group".into()),
    }
}

/// A query from a node that does not host the shard: checked against
/// `query_bounds`, then run on this node's copy as its own would be. A node
/// that does not serve the shard, or whose copy stopped, says so
/// (`NotHosted`, with its guess of the leader): the asker tries another.
async fn serve_query(inner: &Arc<Inner>, shard: u32, query: Query, linearizable: bool) -> Response {
    if let Err(reason) = query.check(&inner.config.query_bounds) {
        return Response::Refused(reason);
    }
    let group = match inner.route(shard) {
        None => return Response::Refused(format!("shard {shard} does not exist here")),
        Some(Route::Remote(route)) => return Response::NotHosted { leader: route.leader_hint() },
        Some(Route::Local(group)) => group,
    };
    let consistency = if linearizable { Consistency::Linearizable } else { Consistency::Stale };
    let node = Node { inner: Arc::clone(inner) };
    match node.query_here(shard, query, consistency).await {
        Ok(answer) => Response::Answered(Box::new(answer)),
        Err(ReadError::Invalid(reason)) => Response::Refused(reason),
        Err(ReadError::ShardStopped { .. }) => Response::NotHosted { leader: group.raft.current_leader().await },
        Err(error @ (ReadError::Unavailable { .. } | ReadError::ShuttingDown)) => {
            Response::Unavailable(error.to_string())
        }
    }
}

/// An append from the group's leader: its entries arrive as WAL frames,
/// checked (each frame, and that they follow `prev_log_id`) before openraft
/// sees them.
async fn serve_append(
    inner: &Arc<Inner>,
    raft: &Raft,
    vote: engine::raft_log::Vote,
    prev_log_id: Option<engine::raft_log::LogId>,
    frames: Vec<Vec<u8>>,
    leader_commit: Option<engine::raft_log::LogId>,
) -> Response {
    let record_bytes_max = inner.config.wal.record_bytes_max as usize;
    let entries: Result<Vec<_>, _> =
        frames.into_iter().map(|frame| entry_from_frame(EntryFrame::from_received(frame), record_bytes_max)).collect();
    let entries = match entries {
        Ok(entries) => entries,
        Err(error) => return Response::Refused(error.to_string()),
    };
    if let Err(reason) = check_append_follows(prev_log_id, &entries) {
        return Response::Refused(reason);
    }
    let rpc = AppendEntriesRequest {
        vote: vote_from_engine(vote),
        prev_log_id: prev_log_id.map(log_id_from_engine),
        entries,
        leader_commit: leader_commit.map(log_id_from_engine),
    };
    match raft.append_entries(rpc).await {
        Ok(response) => Response::AppendEntries(match response {
            AppendEntriesResponse::Success => AppendResult::Success,
            AppendEntriesResponse::PartialSuccess(last) => {
                AppendResult::PartialSuccess(last.as_ref().map(log_id_to_engine))
            }
            AppendEntriesResponse::Conflict => AppendResult::Conflict,
            AppendEntriesResponse::HigherVote(vote) => AppendResult::HigherVote(vote_to_engine(&vote)),
        }),
        Err(error) => Response::Unavailable(error.to_string()),
    }
}

/// The shape openraft assumes of an append and does not check: entries one
/// index apart from just after `prev_log_id`, terms never falling. A peer
/// that breaks it tripped an assertion in openraft's core (a debug build)
/// or had the WAL refuse the write, a storage error that stops the group
/// (a release build); it is refused here instead, like any bad request.
fn check_append_follows(prev_log_id: Option<engine::raft_log::LogId>, entries: &[Entry]) -> Result<(), String> {
    let mut last = prev_log_id;
    for entry in entries {
        let log_id = log_id_to_engine(&entry.log_id);
        let expected = match last {
            None => Some(0),
            Some(last) => last.index.checked_add(1),
        };
        if Some(log_id.index) != expected || last.is_some_and(|last| log_id.term < last.term) {
            return Err(format!("entry {log_id:?} does not follow {last:?}"));
        }
        last = Some(log_id);
    }
    Ok(())
}
