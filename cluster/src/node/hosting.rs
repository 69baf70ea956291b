//! Which shards this node hosts, while it runs: a group starts here when a
//! replica moves in (`Request::Host`, before the node joins the shard as a
//! learner) and stops, its data removed, when one moves away
//! (`Request::Release`, after a committed voter change left the node out).
//! Also the node's map of the cluster (`placement`): the plan it started
//! from, replaced by the plan a node add or remove moved the shards to
//! (`Request::Placement`), kept in the data directory so a restart starts
//! from it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use engine::ShardState;
use engine::actor::Install;
use openraft::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};

use super::start::{GroupContext, has_data, initial_limits, open_shard, shard_dir, start_group};
use super::{Inner, Node};
use crate::placement::{Placement, ShardPlacement};
use crate::raft_types::NodeId;
use crate::wire::MembershipView;

/// The file a node keeps its newest map in, in its data directory.
const PLACEMENT_FILE: &str = "PLACEMENT.json";

/// The map as the file holds it.
#[derive(Serialize, Deserialize)]
struct PlacementFile {
    shards: Vec<PlacedFile>,
}

#[derive(Serialize, Deserialize)]
struct PlacedFile {
    voters: Vec<NodeId>,
    preferred_leader: NodeId,
}

/// The map this node saved last, if any, and if it has `shards` shards.
pub(super) fn load_placement(data_dir: &Path, shards: u32) -> Option<Placement> {
    let text = std::fs::read_to_string(data_dir.join(PLACEMENT_FILE)).ok()?;
    let file: PlacementFile = match serde_json::from_str(&text) {
        Ok(file) => file,
        Err(error) => {
            tracing::warn!(%error, "the saved placement cannot be read; planning from the configured members");
            return None;
        }
    };
    (file.shards.len() == shards as usize).then(|| Placement {
        shards: file
            .shards
            .into_iter()
            .map(|placed| ShardPlacement { voters: placed.voters, preferred_leader: placed.preferred_leader })
            .collect(),
    })
}

/// Saves `placement` as this node's map (written aside, then renamed).
fn save_placement(data_dir: &Path, placement: &Placement) -> std::io::Result<()> {
    let file = PlacementFile {
        shards: placement
            .shards
            .iter()
            .map(|placed| PlacedFile { voters: placed.voters.clone(), preferred_leader: placed.preferred_leader })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
    let temp = data_dir.join(format!("{PLACEMENT_FILE}.tmp"));
    std::fs::write(&temp, text)?;
    std::fs::File::open(&temp)?.sync_all()?;
    std::fs::rename(&temp, data_dir.join(PLACEMENT_FILE))?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Removes a released shard's directory. A file a stopping group's
/// threads still finish (a snapshot, a segment's last sync) can make one
/// pass fail: tried a few times, a moment apart.
async fn remove_shard_data(dir: &Path) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) if attempt >= 10 => return Err(format!("removing {}: {error}", dir.display())),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

impl Node {
    /// Starts an empty group of `shard` here, which then joins the shard as
    /// a learner and catches up from its leader (snapshot, then log). Does
    /// nothing when the group runs here already. Data a shard left behind
    /// here (a release cut short) is removed first: the shard's group went
    /// on without this node, and what it has is older than what it will
    /// receive.
    pub(super) async fn host_shard(&self, shard: u32) -> Result<(), String> {
        let inner = &self.inner;
        let _one = inner.hosting.lock().await;
        if shard >= inner.config.shards {
            return Err(format!("shard {shard} does not exist"));
        }
        if inner.group(shard).is_some() {
            return Ok(());
        }
        if let Some(failure) = inner.health.failure(shard) {
            return Err(format!("shard {shard} stopped on this node ({failure}): restart the node first"));
        }
        let kit = inner.kit.lock().clone().ok_or("the node is shutting down")?;
        let dir = shard_dir(&inner.config.data_dir, shard);
        if has_data(&dir) {
            tracing::warn!(shard, "removing data a shard left here before it moves back");
            std::fs::remove_dir_all(&dir).map_err(|error| format!("removing {}: {error}", dir.display()))?;
        }
        let (state, files) = open_shard(&inner.config, shard).map_err(|error| error.to_string())?;
        let actor = kit.actor(shard).ok_or("no actor for the shard")?;
        actor.send(Install(Box::new(state))).await.map_err(|error| error.to_string())?;
        let context = GroupContext {
            id: inner.id,
            config: &inner.config,
            kit: &kit,
            transport: &inner.transport,
            events: &inner.events,
            clock: &inner.clock,
            health: &inner.health,
            event_ring: &inner.event_ring,
            joining: true,
        };
        let group = start_group(&context, shard, files).await.map_err(|error| error.to_string())?;
        inner.groups.write()[shard as usize] = Some(group);
        tracing::info!(shard, "hosting the shard: its group started and waits to join");
        Ok(())
    }

    /// Stops this node's group of `shard` and removes its data, after a
    /// committed voter change (whose voters are `voters`) left this node
    /// out. Refused while this node is among `voters` or leads the shard.
    /// Does nothing when no group of it runs here.
    pub(super) async fn release_shard(&self, shard: u32, voters: &[NodeId]) -> Result<(), String> {
        let inner = &self.inner;
        let _one = inner.hosting.lock().await;
        if voters.contains(&inner.id) {
            return Err(format!("node {} is a voter of shard {shard}: it keeps its group", inner.id));
        }
        let dir = shard_dir(&inner.config.data_dir, shard);
        let Some(group) = inner.group(shard) else {
            // Released before, maybe with its data left (a file still being
            // written then): remove what is left.
            return remove_shard_data(&dir).await;
        };
        if group.is_leader.load(Ordering::Acquire) {
            return Err(format!("node {} leads shard {shard}: it keeps its group until another leads", inner.id));
        }
        inner.groups.write()[shard as usize] = None;
        inner.event_ring.clear(shard);
        group.stop_tasks();
        let _ = group.raft.shutdown().await;
        drop(group);
        // The idle actor keeps an empty state, not the shard's last one.
        let kit = inner.kit.lock().clone();
        if let Some(actor) = kit.as_ref().and_then(|kit| kit.actor(shard)) {
            let empty = ShardState::new(shard, inner.config.shards, initial_limits());
            let _ = actor.send(Install(Box::new(empty))).await;
        }
        remove_shard_data(&dir).await?;
        tracing::info!(shard, "released the shard: its group stopped and its data is removed");
        Ok(())
    }

    /// `shard`'s membership as this node's group sees it; `None` when this
    /// node has no group of it.
    pub(super) fn membership_view(&self, shard: u32) -> Option<MembershipView> {
        let group = self.inner.group(shard)?;
        let metrics = group.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        Some(MembershipView {
            voters: membership.voter_ids().collect(),
            nodes: membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
            leader: metrics.current_leader,
        })
    }

    /// Takes `placement` as this node's map: the nodes its routes ask first,
    /// the leaders rebalancing hands shards to, and (saved) what a restart
    /// starts from. `members` say where nodes listen.
    pub(super) fn set_placement(&self, placement: Placement, members: &[(NodeId, String)]) -> Result<(), String> {
        let inner: &Arc<Inner> = &self.inner;
        if placement.shards.len() != inner.config.shards as usize {
            return Err(format!("a map of {} shards, not {}", placement.shards.len(), inner.config.shards));
        }
        for (id, addr) in members {
            if *id != inner.id && !addr.is_empty() {
                inner.transport.set_peer(*id, addr.clone());
            }
        }
        for (route, placed) in inner.routes.iter().zip(&placement.shards) {
            route.set_voters(placed.voters.clone());
        }
        save_placement(&inner.config.data_dir, &placement).map_err(|error| format!("saving the map: {error}"))?;
        *inner.placement.write() = placement;
        Ok(())
    }
}
