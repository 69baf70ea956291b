//! Adding and removing a node in a placed cluster (`replication_factor`
//! below the member count): only the placement's difference moves
//! (docs/SCALE-OUT.md §5).
//!
//! The node asked runs the change (`membership::begin`, one shard at a time,
//! paused between shards):
//!
//! 1. **Plan.** It reads every shard's membership from the shard's leader
//!    (`Request::Membership`), takes the members as the union of the
//!    shards' voters with the node added (or without the node removed),
//!    and runs the placement rule from the current voters
//!    (`placement::plan`): few replicas move, and every node ends within
//!    one of its share.
//! 2. **Move.** Per shard whose voters change, a node that hosts the shard
//!    and stays in it (its leader when it stays) runs `move_shard` on it
//!    (`Request::MoveShard`): each joining node starts an empty group
//!    (`Request::Host`), joins as a learner and catches up, snapshot then
//!    log; the voters change by joint consensus, a leaving leader handing
//!    over first; then each node that left drops its group and its data
//!    (`Request::Release`).
//! 3. **Map.** Every member takes the new plan as its map
//!    (`Request::Placement`): its routes ask the new voters first and
//!    leaders rebalance to the plan's preferred leaders.
//!
//! A change cut short is resumed by running it again: the plan starts from
//! the voters the shards have then, and a shard already moved is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::Node;
use super::membership::{MembershipJob, MembershipOperation};
use super::retry::Retry;
use crate::error::AdminError;
use crate::placement::{self, Placement};
use crate::raft_types::NodeId;
use crate::wire::{MembershipView, Request, Response};

/// What a placed change moves to, computed once when it starts.
pub(super) struct PlacedChange {
    /// The plan: each shard's voters and preferred leader.
    plan: Placement,
    /// Where every node the change involves listens.
    addrs: BTreeMap<NodeId, String>,
}

impl Node {
    /// Checks an addition or removal in a placed cluster against this
    /// node's map and starts it (see the module doc).
    pub(super) fn begin_placed(
        &self,
        operation: MembershipOperation,
        node: NodeId,
        addr: Option<String>,
        pause: Duration,
    ) -> Result<MembershipJob, AdminError> {
        let mapped = self.inner.placement.read().shards.iter().any(|placed| placed.voters.contains(&node));
        match operation {
            MembershipOperation::Add if mapped => return Err(AdminError::AlreadyMember { node }),
            MembershipOperation::Remove if !mapped => return Err(AdminError::NotMember { node }),
            _ => {}
        }
        let prepared: Arc<tokio::sync::OnceCell<PlacedChange>> = Arc::default();
        let finished = Arc::clone(&prepared);
        self.begin(
            operation,
            node,
            addr.clone(),
            move |node_handle: Node, shard| {
                let prepared = Arc::clone(&prepared);
                let addr = addr.clone();
                async move {
                    let change = prepared.get_or_try_init(|| node_handle.plan_change(operation, node, addr)).await?;
                    node_handle.move_placed(shard, change).await
                }
            },
            move |node_handle: Node| async move {
                if let Some(change) = finished.get() {
                    node_handle.push_placement(change).await;
                }
                Ok(())
            },
            pause,
        )
    }

    /// Step 1: every shard's voters from its leader, the members after the
    /// change, and the plan from the voters now.
    async fn plan_change(
        &self,
        operation: MembershipOperation,
        node: NodeId,
        addr: Option<String>,
    ) -> Result<PlacedChange, AdminError> {
        let config = &self.inner.config;
        let mut current = Vec::with_capacity(config.shards as usize);
        let mut addrs: BTreeMap<NodeId, String> =
            config.members.iter().map(|member| (member.id, member.addr.clone())).collect();
        for shard in 0..config.shards {
            let view = self.shard_membership(shard).await?;
            addrs.extend(view.nodes.into_iter().filter(|(_, addr)| !addr.is_empty()));
            current.push(view.voters);
        }
        let mut members: BTreeSet<NodeId> = current.iter().flatten().copied().collect();
        match operation {
            MembershipOperation::Add => {
                if !members.insert(node) {
                    return Err(AdminError::AlreadyMember { node });
                }
                addrs.extend(addr.map(|addr| (node, addr)));
            }
            MembershipOperation::Remove => {
                if !members.remove(&node) {
                    return Err(AdminError::NotMember { node });
                }
                if members.is_empty() {
                    return Err(AdminError::Invalid(format!("node {node} is the last node: it cannot leave")));
                }
            }
        }
        for member in &members {
            if let Some(known) = self.inner.transport.peer_addr(*member) {
                addrs.entry(*member).or_insert(known);
            }
        }
        let members: Vec<NodeId> = members.into_iter().collect();
        let replicas = placement::replicas(config.replication_factor, members.len());
        let plan = placement::plan(&members, config.shards, replicas, Some(&current))
            .map_err(|error| AdminError::Invalid(format!("placement: {error}")))?;
        tracing::info!(
            node,
            operation = operation.name(),
            shards_moving = placement::difference(&current, &plan).len(),
            "planned the change"
        );
        Ok(PlacedChange { plan, addrs })
    }

    /// Step 2 for one shard: moved by a node that hosts it and stays in it.
    /// Answers whether the shard changed.
    async fn move_placed(&self, shard: u32, change: &PlacedChange) -> Result<bool, AdminError> {
        let target: BTreeSet<NodeId> = change.plan.shards[shard as usize].voters.iter().copied().collect();
        let view = self.shard_membership(shard).await?;
        let voters: BTreeSet<NodeId> = view.voters.iter().copied().collect();
        let leaving_learner = view.nodes.iter().any(|(id, _)| !target.contains(id) && !voters.contains(id));
        if voters == target && !leaving_learner {
            return Ok(false);
        }
        let staying: Vec<NodeId> = voters.intersection(&target).copied().collect();
        let runner = view
            .leader
            .filter(|leader| staying.contains(leader))
            .or_else(|| staying.first().copied())
            .or(view.leader)
            .or_else(|| voters.first().copied())
            .ok_or(AdminError::Unavailable { shard })?;
        let addrs: BTreeMap<NodeId, String> =
            target.iter().filter_map(|id| change.addrs.get(id).map(|addr| (*id, addr.clone()))).collect();
        tracing::info!(shard, runner, ?voters, ?target, "moving the shard's replicas");
        if runner == self.inner.id {
            return self.move_shard_releasing(shard, &target, &addrs, true).await;
        }
        let request = Request::MoveShard {
            group: shard,
            voters: target.iter().copied().collect(),
            addrs: addrs.into_iter().collect(),
            release: true,
        };
        match self.inner.transport.call(runner, &request, self.move_timeout()).await {
            Ok(Response::Moved { changed }) => Ok(changed),
            Ok(Response::Refused(reason)) => Err(AdminError::Failed { shard, reason }),
            Ok(other) => Err(AdminError::Failed { shard, reason: format!("node {runner} answered {other:?}") }),
            Err(error) => Err(AdminError::Failed { shard, reason: format!("node {runner}: {error}") }),
        }
    }

    /// How long one shard's move may take on its runner: every attempt at a
    /// learner's catch-up, and the voter change's own window.
    fn move_timeout(&self) -> Duration {
        let config = &self.inner.config;
        let catch_up = config.membership_catch_up_timeout_ms * u64::from(config.membership_shard_attempts_max.max(1));
        Duration::from_millis(catch_up) + self.inner.rpc_timeout() * 30
    }

    /// `move_shard` to `voters`, then, with `release`, every node that left
    /// the group drops its copy (`Request::Release`). A node that cannot be
    /// told (down) keeps a stale copy until it is: the move stands, and the
    /// node's next `Host` of the shard starts it over.
    pub(super) async fn move_shard_releasing(
        &self,
        shard: u32,
        voters: &BTreeSet<NodeId>,
        addrs: &BTreeMap<NodeId, String>,
        release: bool,
    ) -> Result<bool, AdminError> {
        let before = self.membership_view(shard).ok_or_else(|| AdminError::Failed {
            shard,
            reason: format!("node {} does not host the shard", self.inner.id),
        })?;
        let leaving: BTreeSet<NodeId> =
            before.nodes.iter().map(|(id, _)| *id).filter(|id| !voters.contains(id)).collect();
        let changed = self.move_shard(shard, voters, addrs, &leaving).await?;
        if release {
            let voters: Vec<NodeId> = voters.iter().copied().collect();
            for node in leaving {
                self.release_on(node, shard, &voters).await;
            }
        }
        Ok(changed)
    }

    /// Asks `node` to start an empty group of `shard` (this node itself, or
    /// over the peer connection), before it joins as a learner. A node that
    /// cannot be reached yet (still starting) is asked again within the
    /// retry window; one that refuses is not.
    pub(super) async fn host_on(&self, node: NodeId, shard: u32) -> Result<(), AdminError> {
        if node == self.inner.id {
            return self.host_shard(shard).await.map_err(|reason| AdminError::Failed { shard, reason });
        }
        let request = Request::Host { group: shard };
        let mut retry = Retry::new(self.inner.config.retry_window_ms);
        loop {
            let reason = match self.inner.transport.call(node, &request, self.inner.rpc_timeout() * 5).await {
                Ok(Response::AdminDone) => return Ok(()),
                Ok(Response::Refused(reason)) => return Err(AdminError::Failed { shard, reason }),
                Ok(other) => format!("{other:?}"),
                Err(error) => error.to_string(),
            };
            if !retry.pause().await {
                let reason = format!("node {node} cannot host the shard: {reason}");
                return Err(AdminError::Failed { shard, reason });
            }
        }
    }

    /// Tells `node` to drop its group of `shard`, which a committed change
    /// to `voters` left it out of. It refuses while it still leads the
    /// shard (it steps down once it applies the change): tried a few times,
    /// an election timeout apart; a node that never answers is logged.
    async fn release_on(&self, node: NodeId, shard: u32, voters: &[NodeId]) {
        let pause = Duration::from_millis(self.inner.config.election_timeout_max_ms);
        for attempt in 1..=5 {
            let result = if node == self.inner.id {
                self.release_shard(shard, voters).await
            } else {
                let request = Request::Release { group: shard, voters: voters.to_vec() };
                match self.inner.transport.call(node, &request, self.inner.rpc_timeout() * 5).await {
                    Ok(Response::AdminDone) => Ok(()),
                    Ok(Response::Refused(reason)) => Err(reason),
                    Ok(other) => Err(format!("{other:?}")),
                    Err(error) => Err(error.to_string()),
                }
            };
            match result {
                Ok(()) => return,
                Err(reason) => tracing::info!(shard, node, attempt, %reason, "the node did not drop the shard yet"),
            }
            tokio::time::sleep(pause).await;
        }
        tracing::warn!(shard, node, "the node left the shard but keeps its copy: it drops it when hosted again");
    }

    /// `shard`'s membership as its leader sees it: this node's own view when
    /// it leads, else asked of the leader it knows, the map's voters, then
    /// every peer, following each answer's guess of the leader, within the
    /// retry window. Falls back to the newest view a follower gave.
    async fn shard_membership(&self, shard: u32) -> Result<MembershipView, AdminError> {
        let inner = &self.inner;
        let route = inner.routes.get(shard as usize).ok_or(AdminError::Unavailable { shard })?;
        let mut retry = Retry::new(inner.config.retry_window_ms);
        let mut follower_view = None;
        loop {
            if let Some(view) = self.membership_view(shard) {
                if view.leader == Some(inner.id) {
                    return Ok(view);
                }
                if let Some(leader) = view.leader {
                    route.learn(leader);
                }
            }
            if let Some(target) = route.target(&inner.route_peers()) {
                let request = Request::Membership { group: shard };
                match inner.transport.call(target, &request, inner.rpc_timeout()).await {
                    Ok(Response::Membership(view)) if view.leader == Some(target) => return Ok(view),
                    Ok(Response::Membership(view)) => {
                        route.redirect(target, view.leader);
                        follower_view = Some(view);
                    }
                    Ok(Response::NotHosted { leader }) => route.redirect(target, leader),
                    _ => route.forget(target),
                }
            }
            if !retry.pause().await {
                return follower_view.ok_or(AdminError::Unavailable { shard });
            }
        }
    }

    /// Step 3: this node and every other member take the plan as their map;
    /// a member that cannot be reached keeps its old one (its routes still
    /// find every shard, one hop later) and is logged.
    async fn push_placement(&self, change: &PlacedChange) {
        let members: Vec<(NodeId, String)> = change.addrs.iter().map(|(id, addr)| (*id, addr.clone())).collect();
        if let Err(error) = self.set_placement(change.plan.clone(), &members) {
            tracing::warn!(%error, "this node keeps its old map");
        }
        let request = Request::Placement {
            group: 0,
            shards: change.plan.shards.iter().map(|placed| (placed.voters.clone(), placed.preferred_leader)).collect(),
            members: members.clone(),
        };
        for (node, _) in members.iter().filter(|(id, _)| *id != self.inner.id) {
            match self.inner.transport.call(*node, &request, self.inner.rpc_timeout()).await {
                Ok(Response::AdminDone) => {}
                other => tracing::warn!(node, answer = ?other, "the node did not take the new map"),
            }
        }
    }
}
