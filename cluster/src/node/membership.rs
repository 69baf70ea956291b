//! Adding and removing a node online (`tally node add` / `tally node
//! remove`), one shard at a time.
//!
//! Every change is a sequence of `move_shard` steps, one per shard, spaced
//! by a pause (`membership_shard_pause_ms`) so that at most one shard at a
//! time transfers a snapshot or holds an election:
//!
//! * add: the node joins the shard's group as a learner and the call blocks
//!   until the leader sees it caught up (a snapshot, then the log after it);
//!   then the voters become the old ones plus the node, by joint consensus
//!   (openraft's `change_membership`: a joint config, then the new one).
//! * remove: the voters become the old ones without the node (joint
//!   consensus again), which also drops it from the group; a node that is
//!   only a learner of the shard (an add that stopped midway) is dropped as
//!   a learner.
//!
//! Writes go on throughout: the groups never lose their quorum (a joint
//! config needs a majority of the old voters and of the new), and a write
//! caught by a leader change is retried under its request id (`submit`).
//! Leaders spread again afterwards through the rebalancing loop
//! (`leadership::rebalance`), which reads each group's current voters.
//!
//! `move_shard` takes a shard's target voter set, so a placement that keeps
//! fewer replicas than nodes can move each shard to its own set. Progress
//! (which shard, how many done) is kept here for `membership_change`; one
//! change runs per node at a time. A change that fails or is cut short is
//! resumed by running it again: shards already moved are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::TransferLeaderRequest;

use super::leadership::send_transfer_leader;
use super::{Inner, Node};
use crate::error::AdminError;
use crate::raft_types::{NodeId, Raft, TypeConfig, log_id_to_engine, vote_to_engine};
use crate::transport::Transport;
use crate::wire::{AdminOp, Request};

type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// Which change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipOperation {
    Add,
    Remove,
}

impl MembershipOperation {
    pub fn name(self) -> &'static str {
        match self {
            MembershipOperation::Add => "add",
            MembershipOperation::Remove => "remove",
        }
    }
}

/// Where a change stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChangeState {
    Running,
    Done,
    Failed,
}

impl MembershipChangeState {
    pub fn name(self) -> &'static str {
        match self {
            MembershipChangeState::Running => "running",
            MembershipChangeState::Done => "done",
            MembershipChangeState::Failed => "failed",
        }
    }
}

/// The last or running node addition or removal on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    pub operation: MembershipOperation,
    pub node: NodeId,
    /// The added node's peer address (`None` for a removal).
    pub addr: Option<String>,
    pub state: MembershipChangeState,
    /// The shard being moved now (`None` between shards and once ended).
    pub shard: Option<u32>,
    /// Shards finished (moved, or found already where they should be).
    pub shards_done: u32,
    pub shards_total: u32,
    /// Why it failed.
    pub error: Option<String>,
}

impl fmt::Display for MembershipChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} node {}: {}, {} of {} shards done",
            self.operation.name(),
            self.node,
            self.state.name(),
            self.shards_done,
            self.shards_total
        )
    }
}

/// One group's membership as this node last saw it.
struct View {
    voters: BTreeSet<NodeId>,
    /// Every member, voters and learners, with its address.
    nodes: BTreeMap<NodeId, String>,
}

fn view(raft: &Raft) -> View {
    view_of(&raft.metrics().borrow_watched())
}

fn view_of(metrics: &RaftMetrics) -> View {
    let membership = metrics.membership_config.membership();
    View {
        voters: membership.voter_ids().collect(),
        nodes: membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
    }
}

/// Marks the change failed if its task ends without saying how (aborted
/// at shutdown, or a panic), so `membership_change` never shows a change
/// running that no longer runs.
struct EndGuard {
    inner: Arc<Inner>,
    ended: bool,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.ended {
            update(&self.inner, |change| {
                change.state = MembershipChangeState::Failed;
                change.shard = None;
                change.error = Some("the change was cut short (the node stopped)".into());
            });
        }
    }
}

fn update(inner: &Inner, apply: impl FnOnce(&mut MembershipChange)) {
    if let Some(change) = inner.membership.lock().as_mut() {
        apply(change);
    }
}

/// A change started by `begin_add_node` or `begin_remove_node`: await it
/// for its result (it runs on whether awaited or not).
pub struct MembershipJob {
    handle: tokio::task::JoinHandle<Result<(), AdminError>>,
}

impl MembershipJob {
    pub async fn wait(self) -> Result<(), AdminError> {
        self.handle
            .await
            .unwrap_or_else(|error| Err(AdminError::Invalid(format!("the membership change stopped: {error}"))))
    }
}

impl Node {
    /// The last or running node addition or removal on this node.
    pub fn membership_change(&self) -> Option<MembershipChange> {
        self.inner.membership.lock().clone()
    }

    /// Adds `node` (peer address `addr`) to every shard's group as a voter,
    /// one shard at a time with `pause` between two (see the module doc).
    /// Refused when `node` is a voter of every shard already, or a member at
    /// another address.
    pub async fn add_node(&self, node: NodeId, addr: String, pause: Duration) -> Result<(), AdminError> {
        self.begin_add_node(node, addr, pause)?.wait().await
    }

    /// Removes `node` from every shard's group, one shard at a time with
    /// `pause` between two. Refused when no group has it, when it is the
    /// last voter of a shard, or when it is this node.
    pub async fn remove_node(&self, node: NodeId, pause: Duration) -> Result<(), AdminError> {
        self.begin_remove_node(node, pause)?.wait().await
    }

    /// Checks an addition and starts it in a task of its own (an HTTP
    /// request that times out does not cut it short).
    pub fn begin_add_node(&self, node: NodeId, addr: String, pause: Duration) -> Result<MembershipJob, AdminError> {
        if node == 0 {
            return Err(AdminError::Invalid("node ids start at 1".into()));
        }
        if addr.is_empty() {
            return Err(AdminError::Invalid("the node's peer address is empty".into()));
        }
        if self.inner.config.follows_placement() {
            return self.begin_placed(MembershipOperation::Add, node, Some(addr), pause);
        }
        let views: Vec<View> = self.inner.hosted_groups().iter().map(|group| view(&group.raft)).collect();
        if views.iter().all(|view| view.voters.contains(&node)) {
            return Err(AdminError::AlreadyMember { node });
        }
        if let Some(known) = views.iter().find_map(|view| view.nodes.get(&node).filter(|known| **known != addr)) {
            return Err(AdminError::Invalid(format!(
                "node {node} is a member at {known}, not {addr}: remove it first to move it"
            )));
        }
        let addrs = BTreeMap::from([(node, addr.clone())]);
        self.begin(
            MembershipOperation::Add,
            node,
            Some(addr),
            move |node_handle: Node, shard| {
                let addrs = addrs.clone();
                async move {
                    let current = node_handle.group_view(shard)?;
                    let mut voters = current.voters;
                    voters.insert(node);
                    node_handle.move_shard(shard, &voters, &addrs, &BTreeSet::new()).await
                }
            },
            |_| async { Ok(()) },
            pause,
        )
    }

    /// Checks a removal and starts it in a task of its own.
    pub fn begin_remove_node(&self, node: NodeId, pause: Duration) -> Result<MembershipJob, AdminError> {
        if self.inner.config.follows_placement() {
            self.refuse_own_removal(node)?;
            return self.begin_placed(MembershipOperation::Remove, node, None, pause);
        }
        let views: Vec<View> = self.inner.hosted_groups().iter().map(|group| view(&group.raft)).collect();
        if !views.iter().any(|view| view.nodes.contains_key(&node)) {
            return Err(AdminError::NotMember { node });
        }
        if let Some(shard) = views.iter().position(|view| view.voters.iter().all(|voter| *voter == node)) {
            return Err(AdminError::Invalid(format!(
                "node {node} is the last voter of shard {shard}: it cannot leave"
            )));
        }
        self.refuse_own_removal(node)?;
        self.begin(
            MembershipOperation::Remove,
            node,
            None,
            move |node_handle: Node, shard| async move {
                let mut voters = node_handle.group_view(shard)?.voters;
                voters.remove(&node);
                node_handle.move_shard(shard, &voters, &BTreeMap::new(), &BTreeSet::from([node])).await
            },
            |_| async { Ok(()) },
            pause,
        )
    }

    /// A node does not run its own removal: it would follow it only up to
    /// the joint configuration (the last one it receives), and report
    /// progress from a view that stops there.
    fn refuse_own_removal(&self, node: NodeId) -> Result<(), AdminError> {
        if node == self.inner.id {
            return Err(AdminError::Invalid(format!(
                "node {node} cannot remove itself: send the removal to a node that stays"
            )));
        }
        Ok(())
    }

    fn group_view(&self, shard: u32) -> Result<View, AdminError> {
        let group =
            self.inner.group(shard).ok_or_else(|| AdminError::Invalid(format!("shard {shard} does not exist")))?;
        Ok(view(&group.raft))
    }

    /// Claims the one change slot of this node and runs `step` on every
    /// shard in order, `pause` apart, recording progress, then `finish`
    /// when every step succeeded.
    pub(super) fn begin<F, Fut, E, EndFut>(
        &self,
        operation: MembershipOperation,
        node: NodeId,
        addr: Option<String>,
        step: F,
        finish: E,
        pause: Duration,
    ) -> Result<MembershipJob, AdminError>
    where
        F: Fn(Node, u32) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<bool, AdminError>> + Send + 'static,
        E: FnOnce(Node) -> EndFut + Send + 'static,
        EndFut: std::future::Future<Output = Result<(), AdminError>> + Send + 'static,
    {
        let shards_total = self.inner.config.shards;
        {
            let mut slot = self.inner.membership.lock();
            if let Some(running) = slot.as_ref().filter(|change| change.state == MembershipChangeState::Running) {
                return Err(AdminError::InProgress { running: running.to_string() });
            }
            *slot = Some(MembershipChange {
                operation,
                node,
                addr,
                state: MembershipChangeState::Running,
                shard: None,
                shards_done: 0,
                shards_total,
                error: None,
            });
        }
        let this = self.clone();
        let handle = tokio::spawn(async move {
            let mut guard = EndGuard { inner: Arc::clone(&this.inner), ended: false };
            let mut result = Ok(());
            for shard in 0..shards_total {
                update(&this.inner, |change| change.shard = Some(shard));
                tracing::info!(shard, node, operation = operation.name(), "moving the shard's membership");
                let changed = match step(this.clone(), shard).await {
                    Ok(changed) => changed,
                    Err(error) => {
                        result = Err(error);
                        break;
                    }
                };
                update(&this.inner, |change| {
                    change.shard = None;
                    change.shards_done = shard + 1;
                });
                // A shard found already moved (a change run again) needs no
                // pause after it.
                if changed && shard + 1 < shards_total && !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            if result.is_ok() {
                result = finish(this.clone()).await;
            }
            update(&this.inner, |change| {
                change.shard = None;
                match &result {
                    Ok(()) => change.state = MembershipChangeState::Done,
                    Err(error) => {
                        change.state = MembershipChangeState::Failed;
                        change.error = Some(error.to_string());
                    }
                }
            });
            guard.ended = true;
            match &result {
                Ok(()) => tracing::info!(node, operation = operation.name(), "membership change done"),
                Err(error) => tracing::warn!(node, operation = operation.name(), %error, "membership change failed"),
            }
            result
        });
        Ok(MembershipJob { handle })
    }

    /// Moves `shard`'s group to exactly `voters` as its voters, and drops
    /// every node of `drop` from it. A node of `voters` that is no voter yet
    /// first joins as a learner at its address in `addrs` (or the one the
    /// membership has) and catches up, snapshot then log, before the voter
    /// change (joint consensus). Idempotent: a shard already there is left
    /// as it is, so a change cut short is resumed by running it again.
    /// Answers whether it changed the group.
    pub async fn move_shard(
        &self,
        shard: u32,
        voters: &BTreeSet<NodeId>,
        addrs: &BTreeMap<NodeId, String>,
        drop: &BTreeSet<NodeId>,
    ) -> Result<bool, AdminError> {
        if voters.is_empty() {
            return Err(AdminError::Invalid(format!("shard {shard} needs at least one voter")));
        }
        if let Some(both) = voters.intersection(drop).next() {
            return Err(AdminError::Invalid(format!("node {both} cannot both stay a voter and leave")));
        }
        let before = self.group_view(shard)?;
        for new in voters.difference(&before.voters) {
            let addr = addrs.get(new).or_else(|| before.nodes.get(new)).cloned().ok_or_else(|| {
                AdminError::Invalid(format!("no peer address for node {new}, which is not a member of shard {shard}"))
            })?;
            self.inner.transport.set_peer(*new, addr.clone());
            // Where shards follow the placement, a node starts an empty
            // group of this one first (one that hosts it does nothing).
            if self.inner.config.follows_placement() {
                self.host_on(*new, shard).await?;
            }
            // Also for a node that is a learner already: the call blocks
            // until it has caught up, which the voter change needs.
            self.admin_attempts(shard, AdminOp::AddLearner { node: *new, addr }).await?;
        }
        if *voters != before.voters {
            self.lead_from_staying(shard, voters).await;
            let op = AdminOp::ChangeVoters { voters: voters.iter().copied().collect(), retain: false };
            self.admin_attempts(shard, op).await?;
        }
        // A voter change without `retain` drops the voters it removes; a
        // node that was only a learner stays until removed as one.
        let learners: BTreeSet<NodeId> =
            drop.iter().copied().filter(|id| before.nodes.contains_key(id) && !before.voters.contains(id)).collect();
        let changed = *voters != before.voters || !learners.is_empty();
        if !learners.is_empty() {
            self.remove_learners(shard, learners).await?;
        }
        if changed {
            self.await_local_view(shard, voters, drop).await;
        }
        Ok(changed)
    }

    /// Before a voter change that drops the shard's leader: asks the voters
    /// to elect one that stays now, as a clean stop hands leadership over
    /// (`TransferLeader` from the leader's vote: every voter drops its
    /// lease, the target starts an election). The target is this node when
    /// it stays (it is live and has applied what it names), else the first
    /// voter that stays. Waits up to two election timeouts for a staying
    /// leader and goes on either way: without a hand-over the leader
    /// commits its own removal and steps down, and the others elect one
    /// election timeout later, with the shard's writes waiting meanwhile.
    async fn lead_from_staying(&self, shard: u32, voters: &BTreeSet<NodeId>) {
        let Some(group) = self.inner.group(shard) else { return };
        let metrics = group.raft.metrics().borrow_watched().clone();
        let own = self.inner.id;
        let Some(leader) = metrics.current_leader.filter(|leader| !voters.contains(leader) && *leader != own) else {
            return;
        };
        let Some(target) = voters.contains(&own).then_some(own).or_else(|| voters.first().copied()) else {
            return;
        };
        let engine_vote = vote_to_engine(&metrics.vote);
        let last_log_id = metrics.last_applied.as_ref().map(log_id_to_engine);
        let request = Request::TransferLeader { group: shard, from_leader: engine_vote, to: target, last_log_id };
        tracing::info!(
            shard,
            from = leader,
            to = target,
            "handing leadership to a voter that stays, before the change"
        );
        let others: Vec<NodeId> = metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|voter| *voter != own && *voter != leader)
            .collect();
        let local = TransferLeaderRequest::new(metrics.vote, target, metrics.last_applied);
        let _ = futures_util::join!(
            group.raft.handle_transfer_leader(local),
            send_transfer_leader(&self.inner, shard, &others, &request)
        );
        let window = Duration::from_millis(self.inner.config.election_timeout_max_ms * 2);
        let staying = |metrics: &RaftMetrics| metrics.current_leader.is_some_and(|leader| voters.contains(&leader));
        if group.raft.wait(Some(window)).metrics(staying, "a leader that stays").await.is_err() {
            tracing::info!(shard, "no voter that stays leads yet; the change goes on and the others elect after it");
        }
    }

    /// Waits, within the voter change's own window, until this node's view
    /// of `shard` shows the change the leader committed: a follower learns
    /// it one replication later, and the change's answer (and
    /// `/v1/cluster` read right after it) should already show it. The
    /// change is made either way; a view that lags past the window is
    /// logged, not an error.
    async fn await_local_view(&self, shard: u32, voters: &BTreeSet<NodeId>, drop: &BTreeSet<NodeId>) {
        let Some(group) = self.inner.group(shard) else { return };
        let shows = |metrics: &RaftMetrics| {
            let now = view_of(metrics);
            now.voters == *voters && drop.iter().all(|id| !now.nodes.contains_key(id))
        };
        let window = self.inner.rpc_timeout() * 15;
        if group.raft.wait(Some(window)).metrics(shows, "this node's view shows the change").await.is_err() {
            tracing::warn!(shard, "this node's view of the shard still lags the membership change");
        }
    }

    /// `admin_one_within`, tried up to `membership_shard_attempts_max` times while
    /// it fails: the shard's leader cannot be reached, the call outlasts its
    /// window (a catch-up by snapshot can), or the leader changed or had a
    /// change of its own in flight midway (both operations are idempotent:
    /// a learner added again waits for its catch-up again; voters set again
    /// to the same set change nothing). Between two attempts, an election's
    /// time.
    async fn admin_attempts(&self, shard: u32, op: AdminOp) -> Result<(), AdminError> {
        let attempts_max = self.inner.config.membership_shard_attempts_max.max(1);
        // An addition waits for the learner's catch-up, a snapshot transfer
        // of the whole shard: the call is not cut short (and the learner
        // re-added, which restarts its replication) before that bound.
        let timeout = match op {
            AdminOp::AddLearner { .. } => Duration::from_millis(self.inner.config.membership_catch_up_timeout_ms),
            AdminOp::ChangeVoters { .. } => self.inner.rpc_timeout() * 15,
        };
        let pause = Duration::from_millis(self.inner.config.election_timeout_max_ms);
        let mut attempt = 1;
        loop {
            match self.admin_one_within(shard, op.clone(), timeout).await {
                Err(error @ (AdminError::Unavailable { .. } | AdminError::Failed { .. })) if attempt < attempts_max => {
                    attempt += 1;
                    tracing::info!(shard, attempt, %error, "membership step failed; trying again");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    /// Drops learners from `shard`'s group. The peer protocol's admin call
    /// has no such operation (adding one would change it), so this runs on
    /// the shard's leader only: when that is another node, the change
    /// fails and says which node to ask.
    async fn remove_learners(&self, shard: u32, learners: BTreeSet<NodeId>) -> Result<(), AdminError> {
        let group =
            self.inner.group(shard).ok_or_else(|| AdminError::Invalid(format!("shard {shard} does not exist")))?;
        match group.raft.current_leader().await {
            Some(leader) if leader == self.inner.id => group
                .raft
                .change_membership(ChangeMembers::RemoveNodes(learners), false)
                .await
                .map(|_| ())
                .map_err(|error| AdminError::Failed { shard, reason: error.to_string() }),
            Some(leader) => Err(AdminError::Failed {
                shard,
                reason: format!(
                    "nodes {learners:?} are learners of this shard; only its leader, node {leader}, can drop a \
                     learner: send the removal to node {leader}"
                ),
            }),
            None => Err(AdminError::Unavailable { shard }),
        }
    }
}

/// Tells the transport where every member of `raft`'s group listens, each
/// time the membership changes, so a follower can forward to a leader that
/// joined after it started (the network only learns the addresses of the
/// nodes its own group leader or candidate calls); and keeps `excluded`
/// for `route`: the membership has this node as a learner, or not at all,
/// or (for a `joining` group) is still empty.
pub(super) async fn learn_member_addresses(raft: Raft, transport: Transport, excluded: Arc<AtomicBool>, joining: bool) {
    let own = transport.node_id();
    let mut metrics = raft.metrics();
    let mut seen = None;
    loop {
        let addrs: Option<Vec<(NodeId, String)>> = {
            let metrics = metrics.borrow_and_update();
            let log_id = *metrics.membership_config.log_id();
            (seen.as_ref() != Some(&log_id)).then(|| {
                seen = Some(log_id);
                let membership = metrics.membership_config.membership();
                let has_members = membership.nodes().next().is_some();
                let voter = membership.voter_ids().any(|id| id == own);
                excluded.store(if has_members { !voter } else { joining }, Ordering::Release);
                membership
                    .nodes()
                    .filter(|(id, node)| **id != own && !node.addr.is_empty())
                    .map(|(id, node)| (*id, node.addr.clone()))
                    .collect()
            })
        };
        for (id, addr) in addrs.into_iter().flatten() {
            transport.set_peer(id, addr);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
