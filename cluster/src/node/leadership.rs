//! Who leads each group on this node: the watch that keeps `is_leader`
//! true exactly while this node leads, rebalancing leaders back to their
//! preferred nodes, and the reaction to a shard that stopped here (stop its
//! core, hand its leadership over), as on a clean stop of the node.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use super::{Group, Inner};
use crate::health::{FailureCause, Health, ShardHealth};
use crate::raft_types::{NodeId, Raft, log_id_to_engine, vote_to_engine};
use crate::wire::{Request, Response};

/// Keeps `is_leader` true exactly while this node leads the group, and
/// records a group whose core stopped on its own (openraft stops it on any
/// storage error, and on a panic) as failed, if nothing recorded why first.
pub(super) async fn watch_leadership(raft: Raft, id: NodeId, is_leader: Arc<AtomicBool>, health: ShardHealth) {
    let mut metrics = raft.metrics();
    loop {
        let (leading, stopped) = {
            let m = metrics.borrow_and_update();
            (m.state == ServerState::Leader && m.current_leader == Some(id), m.running_state.clone().err())
        };
        is_leader.store(leading && !health.is_failed(), Ordering::Release);
        let closed = metrics.changed().await.is_err();
        let stopped = stopped.or_else(|| metrics.borrow_watched().running_state.clone().err());
        if let Some(fatal) = stopped {
            is_leader.store(false, Ordering::Release);
            if !matches!(fatal, openraft::error::Fatal::Stopped) {
                health.fail(FailureCause::RaftStopped, format!("the group's raft core stopped: {fatal}"));
            }
            return;
        }
        if closed {
            is_leader.store(false, Ordering::Release);
            return;
        }
    }
}

/// Reacts to each shard that stops on this node (`health`), once: stops its
/// Raft core, so the node appends, acknowledges and votes nothing more for
/// it, and if this node led it, hands the leadership to the most caught-up
/// other voter (`hand_over`), so the others serve it without waiting out an
/// election timeout.
pub(super) async fn react_to_failures(inner: std::sync::Weak<Inner>, health: Arc<Health>) {
    let mut handled: BTreeSet<u32> = BTreeSet::new();
    loop {
        health.changed().await;
        if health.is_closed() {
            return;
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        for failure in health.failures() {
            if !handled.insert(failure.shard) {
                continue;
            }
            let Some(group) = inner.group(failure.shard) else {
                continue;
            };
            group.is_leader.store(false, Ordering::Release);
            let _ = group.raft.shutdown().await;
            hand_over(&inner, &group).await;
        }
    }
}

/// A clean stop of the node (SIGTERM): each group this node leads stops its
/// core and hands its leadership over as a failed one does (`hand_over`),
/// all at once and for at most the RPC timeout, before the transport
/// closes. A planned restart then costs the others no election timeout.
/// Groups this node follows stop afterwards with the rest of the node.
pub(super) async fn hand_over_on_stop(inner: &Inner) {
    let leading: Vec<Arc<Group>> =
        inner.hosted_groups().into_iter().filter(|group| group.is_leader.load(Ordering::Acquire)).collect();
    if leading.is_empty() {
        return;
    }
    let hand_overs = leading.into_iter().map(|group| async move {
        group.is_leader.store(false, Ordering::Release);
        let _ = group.raft.shutdown().await;
        hand_over(inner, &group).await;
    });
    if tokio::time::timeout(inner.rpc_timeout(), futures_util::future::join_all(hand_overs)).await.is_err() {
        tracing::warn!("leadership hand-over on stop not answered within the RPC timeout; the others will elect");
    }
}

/// After `group`'s core stopped on this node: if it led the group, asks the
/// other voters to elect the most caught-up of them at once. openraft's
/// own `transfer_leader` needs a running core; this sends the same request
/// it would (`TransferLeader`), from the last view the core published: every
/// voter drops the old leader's lease, and the target, once its log holds
/// what this node saw it match, starts an election. Raft's vote still
/// decides: a target missing committed entries cannot win. Without this the
/// others elect a leader anyway, one election timeout later.
async fn hand_over(inner: &Inner, group: &Group) {
    let metrics = group.raft.metrics().borrow_watched().clone();
    if metrics.current_leader != Some(inner.id) {
        return;
    }
    let others: Vec<NodeId> =
        metrics.membership_config.membership().voter_ids().filter(|voter| *voter != inner.id).collect();
    let matched =
        |voter: &NodeId| metrics.replication.as_ref().and_then(|replication| replication.get(voter).cloned()).flatten();
    let Some(target) = others.iter().copied().max_by_key(|voter| matched(voter).map(|log_id| log_id.index)) else {
        return;
    };
    let request = Request::TransferLeader {
        group: group.shard,
        from_leader: vote_to_engine(&metrics.vote),
        to: target,
        last_log_id: matched(&target).as_ref().map(log_id_to_engine),
    };
    tracing::info!(shard = group.shard, to = target, "handing the stopped shard's leadership to another voter");
    send_transfer_leader(inner, group.shard, &others, &request).await;
}

/// Sends a `TransferLeader` request to each of `voters` at once, and logs
/// those that did not take it (the hand-over is best effort: Raft's vote
/// decides, and an election follows anyway).
pub(super) async fn send_transfer_leader(inner: &Inner, shard: u32, voters: &[NodeId], request: &Request) {
    let calls = voters.iter().map(|voter| inner.transport.call(*voter, request, inner.rpc_timeout()));
    for (voter, answer) in voters.iter().zip(futures_util::future::join_all(calls).await) {
        match answer {
            Ok(Response::TransferLeader(Ok(()))) => {}
            other => tracing::warn!(shard, voter, ?other, "leadership hand-over not taken"),
        }
    }
}

/// Hands each group back to its preferred leader when that node is a caught
/// up voter, so leaders stay spread after a node returns.
pub(super) async fn rebalance(inner: std::sync::Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(inner) => Duration::from_millis(inner.config.rebalance_interval_ms),
        None => return,
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        for group in &inner.hosted_groups() {
            if !group.is_leader.load(Ordering::Acquire) {
                continue;
            }
            let metrics = group.raft.metrics().borrow_watched().clone();
            let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
            let Some(preferred) = inner.preferred_leader(group.shard, &voters) else {
                continue;
            };
            if preferred == inner.id {
                continue;
            }
            let last = metrics.last_log_index.unwrap_or(0);
            let caught_up = metrics
                .replication
                .as_ref()
                .and_then(|replication| replication.get(&preferred).cloned())
                .flatten()
                .is_some_and(|matched| last.saturating_sub(matched.index) <= 16);
            // And it answers: a node whose copy of the group stopped (its
            // WAL failed) matches for a while after it stopped answering,
            // and a hand-over to it would leave the group leaderless until
            // the next election, again and again.
            let answer_max = Duration::from_millis(inner.config.election_timeout_min_ms);
            let answering = metrics
                .heartbeat
                .as_ref()
                .and_then(|heartbeat| heartbeat.get(&preferred).cloned())
                .flatten()
                .is_some_and(|acked| openraft::Instant::elapsed(&*acked) <= answer_max);
            if caught_up && answering {
                tracing::info!(shard = group.shard, to = preferred, "handing leadership to its preferred node");
                let _ = group.raft.trigger().transfer_leader(preferred).await;
            }
        }
    }
}
