//! Where a shard's writes and queries go from this node.
//!
//! A node that hosts a shard serves it from its own group: writes go to the
//! group's leader (the local proposer, or forwarded to the leader its Raft
//! core knows), queries run on the local copy (`submit`, `read`). A node
//! that does not host a shard sends both to one that does: first to the
//! node it last heard leads the shard, then to every other peer it knows,
//! in turn. A peer that does not serve the shard answers `NotHosted`, and a
//! voter that does not lead a write answers `NotLeader`; each gives its
//! guess of the leader and nothing was proposed or read, so the guess is
//! tried next. A stale route costs a hop, never a wrong answer: every
//! answer comes from the shard's own group (docs/SCALE-OUT.md §4).
//!
//! A node hosts the shards the placement gives it (`replication_factor`;
//! every shard unless the cluster is placed) and any it has data for. The
//! nodes it asks first for another are the placement's voters of it.
//! Tests can also turn hosting of a shard off on one node (`Node::unhost`,
//! `fault-injection` builds).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::retry::Retry;
use super::{Group, Inner};
use crate::forwarder::{ForwardError, Forwarder};
use crate::raft_types::NodeId;
use crate::wire::{Request, Response};

/// One shard's route from this node.
pub(super) struct ShardRoute {
    /// Gathers the commands bound for the shard's leader into one `Submit`,
    /// whether or not this node hosts the shard.
    pub(super) forwarder: Forwarder,
    /// Whether this node serves the shard from its own group.
    hosted: AtomicBool,
    /// Where the placement put the shard: the nodes asked first.
    voters: parking_lot::Mutex<Vec<NodeId>>,
    /// The node last heard to lead the shard; 0 for none (ids start at 1).
    leader_hint: AtomicU64,
    /// Where the round of peers goes on when no hint helps.
    next_peer: AtomicUsize,
}

/// How `Inner::ask_serving` ended.
pub(super) enum Asked<T> {
    Answered { node: NodeId, value: T },
    Refused { node: NodeId, reason: String },
    ShuttingDown,
    Unavailable { last: String },
}

/// How this node serves one shard.
pub(super) enum Route<'a> {
    /// From its own group.
    Local(Arc<Group>),
    /// Through a node that hosts it.
    Remote(&'a ShardRoute),
}

impl ShardRoute {
    pub(super) fn new(forwarder: Forwarder, voters: Vec<NodeId>) -> ShardRoute {
        ShardRoute {
            forwarder,
            hosted: AtomicBool::new(true),
            voters: parking_lot::Mutex::new(voters),
            leader_hint: AtomicU64::new(0),
            next_peer: AtomicUsize::new(0),
        }
    }

    pub(super) fn is_hosted(&self) -> bool {
        self.hosted.load(Ordering::Acquire)
    }

    #[cfg(feature = "fault-injection")]
    pub(super) fn set_hosted(&self, hosted: bool) {
        self.hosted.store(hosted, Ordering::Release);
    }

    /// The shard's voters by the node's newest map (`hosting`).
    pub(super) fn set_voters(&self, voters: Vec<NodeId>) {
        *self.voters.lock() = voters;
    }

    /// The node last heard to lead the shard.
    pub(super) fn leader_hint(&self) -> Option<NodeId> {
        Some(self.leader_hint.load(Ordering::Acquire)).filter(|id| *id != 0)
    }

    /// What an answer from `asked` said of the leader: `leader` if it named
    /// one, else nothing more is known and `asked` is not it.
    pub(super) fn redirect(&self, asked: NodeId, leader: Option<NodeId>) {
        match leader.filter(|leader| *leader != asked) {
            Some(leader) => self.leader_hint.store(leader, Ordering::Release),
            None => self.forget(asked),
        }
    }

    /// What a failed forward to `asked` says of the leader: its guess when
    /// it does not lead, or that it is not the one to ask when the outcome
    /// is unknown. An overloaded leader, or this node shutting down, says
    /// nothing of it.
    pub(super) fn forward_failed(&self, asked: NodeId, error: &ForwardError) {
        match error {
            ForwardError::NotLeader(leader) => self.redirect(asked, *leader),
            ForwardError::Unknown(_) => self.forget(asked),
            ForwardError::Overloaded | ForwardError::Closed => {}
        }
    }

    /// `node` answered as the shard's leader.
    pub(super) fn learn(&self, node: NodeId) {
        self.leader_hint.store(node, Ordering::Release);
    }

    /// `node` is not the leader to ask (it failed or said so).
    pub(super) fn forget(&self, node: NodeId) {
        let _ = self.leader_hint.compare_exchange(node, 0, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The node to ask next among `peers` (this node excluded): the hinted
    /// leader, else every peer in turn, the map's voters of the shard first
    /// (a map that lags a move still reaches the shard's new voters).
    pub(super) fn target(&self, peers: &[NodeId]) -> Option<NodeId> {
        if let Some(leader) = self.leader_hint().filter(|leader| peers.contains(leader)) {
            return Some(leader);
        }
        let voters = self.voters.lock().clone();
        let placed = voters.iter().copied().filter(|voter| peers.contains(voter));
        let others = peers.iter().copied().filter(|peer| !voters.contains(peer));
        let candidates: Vec<NodeId> = placed.chain(others).collect();
        if candidates.is_empty() {
            return None;
        }
        let turn = self.next_peer.fetch_add(1, Ordering::Relaxed);
        Some(candidates[turn % candidates.len()])
    }
}

impl Inner {
    /// How this node serves `shard`; `None` when there is no such shard.
    pub(super) fn route(&self, shard: u32) -> Option<Route<'_>> {
        let route = self.routes.get(shard as usize)?;
        match self.group(shard) {
            Some(group) if route.is_hosted() && !group.excluded.load(Ordering::Acquire) => Some(Route::Local(group)),
            _ => Some(Route::Remote(route)),
        }
    }

    /// Sends `request` to the nodes that serve a shard, through its `route`:
    /// the node asked next (`ShardRoute::target`), then the one its
    /// `NotHosted`/`NotLeader` answer names, and another after a failure,
    /// within the retry window. Ends with the first answer `take` accepts
    /// (it hands back the others), a refusal, this node shutting down, or
    /// the window's end (with what the last failure was).
    pub(super) async fn ask_serving<T>(
        &self,
        route: &ShardRoute,
        request: &Request,
        take: impl Fn(Response) -> Result<T, Response>,
    ) -> Asked<T> {
        let mut retry = Retry::new(self.config.retry_window_ms);
        let mut last = "no node serves the shard".to_owned();
        loop {
            if self.shut_down.load(Ordering::Acquire) {
                return Asked::ShuttingDown;
            }
            if let Some(target) = route.target(&self.route_peers()) {
                match self.transport.call(target, request, self.rpc_timeout()).await {
                    Ok(Response::NotHosted { leader } | Response::NotLeader { leader }) => {
                        route.redirect(target, leader);
                    }
                    Ok(Response::Refused(reason)) => return Asked::Refused { node: target, reason },
                    Ok(answer) => match take(answer) {
                        Ok(value) => return Asked::Answered { node: target, value },
                        Err(other) => {
                            last = format!("node {target} answered {other:?}");
                            route.forget(target);
                        }
                    },
                    Err(error) => {
                        last = format!("node {target}: {error}");
                        route.forget(target);
                    }
                }
            }
            if !retry.pause().await {
                return Asked::Unavailable { last };
            }
        }
    }

    /// The peers a route may ask: every node the transport knows, but this
    /// one.
    pub(super) fn route_peers(&self) -> Vec<NodeId> {
        let mut peers = self.transport.peers();
        peers.retain(|peer| *peer != self.id);
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarder::ForwarderSettings;
    use crate::transport::{Transport, TransportConfig};
    use std::time::Duration;

    fn route(voters: Vec<NodeId>) -> ShardRoute {
        let transport = Transport::new(1, TransportConfig::default());
        let settings =
            ForwarderSettings { shard: 0, batch_size_max: 1, in_flight_max: 1, queue_max: 1, timeout: Duration::ZERO };
        ShardRoute::new(Forwarder::start(transport, settings).0, voters)
    }

    #[tokio::test]
    async fn a_hint_is_tried_first_and_forgotten_when_it_fails() {
        let route = route(Vec::new());
        let peers = [2, 3, 4];
        // No hint: the peers in turn.
        assert_eq!((route.target(&peers), route.target(&peers), route.target(&peers)), (Some(2), Some(3), Some(4)));
        route.redirect(2, Some(4));
        assert_eq!((route.target(&peers), route.target(&peers)), (Some(4), Some(4)));
        // A failure of another node leaves the hint; of the hinted one, drops it.
        route.forget(3);
        assert_eq!(route.leader_hint(), Some(4));
        route.redirect(4, None);
        assert_eq!(route.leader_hint(), None);
        // A node that names itself as leader but answered it is not: no hint.
        route.redirect(3, Some(3));
        assert_eq!(route.leader_hint(), None);
        route.learn(3);
        assert_eq!(route.target(&peers), Some(3));
        // A hint outside the peers (this node, or one that left) is passed over.
        route.learn(9);
        assert!(route.target(&peers).is_some_and(|target| target != 9));
        assert_eq!(route.target(&[]), None);
    }

    #[tokio::test]
    async fn the_placed_voters_are_asked_before_other_peers() {
        let route = route(vec![1, 3, 5]);
        let peers = [2, 3, 4, 5];
        // This node (1) is a placed voter but no peer: 3 and 5, then the
        // others (the map may lag a move), in turn.
        let asked: Vec<_> = (0..5).map(|_| route.target(&peers)).collect();
        assert_eq!(asked, [Some(3), Some(5), Some(2), Some(4), Some(3)]);
        // A new map: the round goes over its voters, then the others.
        route.set_voters(vec![2, 4, 5]);
        let asked: Vec<_> = (0..4).map(|_| route.target(&peers)).collect();
        assert_eq!(asked, [Some(4), Some(5), Some(3), Some(2)]);
        // A hint wins over the placement.
        route.learn(4);
        assert_eq!(route.target(&peers), Some(4));
    }
}
