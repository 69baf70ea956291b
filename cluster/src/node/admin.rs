//! Admin operations on every group's membership: adding learners and
//! changing voters, on every group at once. Each runs on the group's
//! leader, asked over the peer connection when that is another node
//! (`admin_one`). Adding and removing a node one shard at a time, with
//! progress, is `membership`.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;

use super::Node;
use super::retry::Retry;
use crate::error::AdminError;
use crate::raft_types::{NodeId, PeerNode, Raft};
use crate::wire::{AdminOp, Request, Response};

impl Node {
    /// Adds `node` (at `addr`) to every group as a learner and waits until
    /// each has caught up. Admin operation; never automatic.
    pub async fn add_learner(&self, node: NodeId, addr: String) -> Result<(), AdminError> {
        self.refuse_when_placed()?;
        if node == 0 {
            return Err(AdminError::Invalid("node ids start at 1".into()));
        }
        self.inner.transport.set_peer(node, addr.clone());
        if self.inner.config.follows_placement() {
            // A node waiting to be added hosts no shard yet: it starts an
            // empty group of each (`hosting`) before it joins them.
            for shard in 0..self.inner.config.shards {
                self.host_on(node, shard).await?;
            }
        }
        self.admin_all(AdminOp::AddLearner { node, addr }).await
    }

    /// Makes `voters` the voter set of every group (joint consensus inside
    /// openraft). With `retain`, removed voters stay as learners.
    pub async fn change_voters(&self, voters: Vec<NodeId>, retain: bool) -> Result<(), AdminError> {
        self.refuse_when_placed()?;
        if voters.is_empty() {
            return Err(AdminError::Invalid("a group needs at least one voter".into()));
        }
        self.admin_all(AdminOp::ChangeVoters { voters, retain }).await
    }

    /// The membership operations that act on every group at once (these,
    /// and adding or removing a node) would put every shard on every node:
    /// refused while `replication_factor` places shards on fewer nodes than
    /// there are members, until they move replicas by the placement rule.
    pub(super) fn refuse_when_placed(&self) -> Result<(), AdminError> {
        let config = &self.inner.config;
        if config.is_placed() {
            return Err(AdminError::Placed { replicas: config.replicas(), members: config.members.len() });
        }
        Ok(())
    }

    async fn admin_all(&self, op: AdminOp) -> Result<(), AdminError> {
        for shard in 0..self.inner.config.shards {
            self.admin_one(shard, op.clone()).await?;
        }
        Ok(())
    }

    async fn admin_one(&self, shard: u32, op: AdminOp) -> Result<(), AdminError> {
        // Catching a learner up can take a while: a longer timeout.
        self.admin_one_within(shard, op, self.inner.rpc_timeout() * 15).await
    }

    /// `op` on `shard`'s leader; one attempt (local, or a call to the
    /// leader) waits at most `timeout`, and attempts go on for the retry
    /// window while the group has no reachable leader.
    pub(super) async fn admin_one_within(&self, shard: u32, op: AdminOp, timeout: Duration) -> Result<(), AdminError> {
        let inner = &self.inner;
        let group = inner.group(shard).ok_or_else(|| AdminError::Invalid(format!("shard {shard} does not exist")))?;
        let mut retry = Retry::new(inner.config.retry_window_ms);
        loop {
            match group.raft.current_leader().await {
                Some(leader) if leader == inner.id => {
                    // The same bound as a call to another leader: a learner
                    // that never catches up (unreachable) is not waited for
                    // forever; it stays a learner, and a retry waits again.
                    let applied = tokio::time::timeout(timeout, apply_admin(&group.raft, op.clone()));
                    if let Ok(result) = applied.await {
                        return result.map_err(|reason| AdminError::Failed { shard, reason });
                    }
                }
                Some(leader) => {
                    let request = Request::Admin { group: shard, op: op.clone() };
                    match inner.transport.call(leader, &request, timeout).await {
                        Ok(Response::AdminDone) => return Ok(()),
                        Ok(Response::Refused(reason)) => return Err(AdminError::Failed { shard, reason }),
                        _ => {}
                    }
                }
                None => {}
            }
            if !retry.pause().await {
                return Err(AdminError::Unavailable { shard });
            }
        }
    }
}

pub(super) async fn apply_admin(raft: &Raft, op: AdminOp) -> Result<(), String> {
    match op {
        AdminOp::AddLearner { node, addr } => {
            raft.add_learner(node, PeerNode { addr }, true).await.map(|_| ()).map_err(|e| e.to_string())
        }
        AdminOp::ChangeVoters { voters, retain } => {
            let voters: BTreeSet<NodeId> = voters.into_iter().collect();
            raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), retain)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}
