//! Bootstrap: the node preferred among a group's first voters
//! (`Inner::preferred_leader`) initializes it, once, after asking its peers that none
//! has it. A group's first voters are the placement's (every member unless
//! `replication_factor` places the shards on fewer).

use std::collections::BTreeMap;

use super::Node;
use crate::raft_types::{NodeId, PeerNode};
use crate::wire::{Request, Response};

/// Initializes the groups this node is preferred for, unless a peer already
/// has them (this node's data was wiped: it must rejoin, not start anew).
pub(super) async fn bootstrap(node: Node) {
    let inner = &node.inner;
    let addrs: BTreeMap<NodeId, &str> = inner.config.members.iter().map(|m| (m.id, m.addr.as_str())).collect();
    if !addrs.contains_key(&inner.id) {
        return;
    }
    for group in &inner.hosted_groups() {
        let Some(voters) = inner.placement.read().shards.get(group.shard as usize).map(|placed| placed.voters.clone())
        else {
            continue;
        };
        let voters = &voters;
        if inner.preferred_leader(group.shard, voters) != Some(inner.id) {
            continue;
        }
        if group.raft.is_initialized().await.unwrap_or(true) {
            continue;
        }
        let mut known_elsewhere = false;
        for peer in voters.iter().filter(|peer| **peer != inner.id) {
            let probe = Request::Probe { group: group.shard };
            if let Ok(Response::Probe { initialized: true }) =
                inner.transport.call(*peer, &probe, inner.rpc_timeout()).await
            {
                known_elsewhere = true;
                break;
            }
        }
        if known_elsewhere {
            tracing::info!(shard = group.shard, "group exists on a peer; waiting to be caught up");
            continue;
        }
        let members: BTreeMap<NodeId, PeerNode> = voters
            .iter()
            .filter_map(|id| addrs.get(id).map(|addr| (*id, PeerNode { addr: (*addr).to_owned() })))
            .collect();
        if let Err(error) = group.raft.initialize(members).await {
            tracing::warn!(shard = group.shard, %error, "initialize failed");
        }
    }
}
