//! The node: every shard's Raft group on this process, and the API the
//! server layer calls.
//!
//! * `submit` routes a command to its shard. On the shard's leader it goes to
//!   the proposer; elsewhere it is forwarded to the leader over the peer
//!   connection and the outcome relayed back. Through an election it retries
//!   for a bounded window, always with the same request id, so a command
//!   whose first attempt did commit is never applied twice.
//! * `query` runs an engine `Query` and answers a value. Linearizable: the
//!   leader confirms its leadership for a read index (asked over the peer
//!   connection when this node is a follower), and the local shard actor
//!   answers once it has applied up to that index. Stale: from local state
//!   at once. (`read` and `read_stale` take closures, for tests.)
//! * Bootstrap: the member preferred for a group (members by id, round
//!   robin) initializes it, once, after asking its peers that none has it.
//!   Restarts resume from the WAL and the newest snapshot. While up, a
//!   preferred leader gets its groups back (rebalancing).
//!
//! One idea per file:
//! * `start` — opening the data directory and starting every group, in
//!   named steps; `check_identity`; shutting down.
//! * `route` — where a shard's writes and queries go from this node: its
//!   own group, or a node that hosts the shard.
//! * `submit` — routing commands to their shard's leader, with bounded
//!   retry under one request id.
//! * `read` — queries, linearizable and stale, and the node-local views
//!   (digests, live holds, backup views).
//! * `admin` — learners, voters, and the per-shard admin call to a leader.
//! * `membership` — adding and removing a node online, one shard at a time
//!   (`move_shard`), with progress; peers' addresses learned from each
//!   group's membership.
//! * `bootstrap` — initializing the groups this node is preferred for.
//! * `leadership` — who leads each group here: the leadership watch,
//!   rebalancing, and handing a stopped shard's leadership over.
//! * `peer_service` — the service answering peers' requests.
//! * `snapshot_inbound` — snapshot chunks from leaders, reassembled and
//!   checked before install; the sweeper of abandoned transfers.
//! * `retry` — the bounded retry of submit, read and admin operations.
//!
//! This file holds the node's types, its small accessors, status and
//! counters.

mod admin;
mod bootstrap;
mod hosting;
mod leadership;
mod ledger_read;
mod membership;
mod mover;
mod peer_service;
mod read;
mod relay;
mod retry;
mod route;
mod snapshot_inbound;
mod start;
mod submit;

pub use ledger_read::LedgerReadError;
pub use membership::{MembershipChange, MembershipChangeState, MembershipJob, MembershipOperation};
pub use read::Consistency;
pub use start::{check_identity, initial_limits, shard_dir};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use actix::Addr;
use engine::actor::{ShardActor, ShardPool};
use engine::wal::{ArchiveStats, SegmentFile};
use openraft::async_runtime::WatchReceiver;
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use self::route::ShardRoute;
use self::start::GroupKit;
use crate::clock::Clock;
use crate::config::ClusterConfig;
use crate::event_ring::EventRing;
use crate::health::{FailureCause, Health, ShardFailure, ShardHealth};
use crate::inbound::InboundSnapshots;
use crate::ledger::Ledger;
use crate::log_store::LogStore;
use crate::placement::Placement;
use crate::proposer::{Proposer, ProposerStats};
use crate::raft_types::{NodeId, Raft};
use crate::shard_thread::ShardThread;
use crate::state_machine::{NodeEvent, SnapshotCounters, SnapshotStats};
use crate::transport::{Transport, TransportStats};

/// One shard's Raft group on this node.
struct Group {
    shard: u32,
    raft: Raft,
    proposer: Proposer,
    actor: Addr<ShardActor>,
    is_leader: Arc<AtomicBool>,
    log: LogStore,
    /// The thread the group's write path runs on.
    thread: Arc<ShardThread>,
    /// Snapshots built, fallbacks to the actor, last build time.
    snapshot_counters: Arc<SnapshotCounters>,
    /// Whether the group still runs on this node (see `health`).
    health: ShardHealth,
    /// The log archive's counters, when `archive_dir` is set.
    archive: Option<Arc<ArchiveStats>>,
    /// Whether the group's membership leaves this node out, or has it as a
    /// learner only (kept by `learn_member_addresses`): then this node
    /// serves the shard through its voters (`route`), as one that does not
    /// host it. While the group has no membership yet: false for a group
    /// the node started with, true for one started to join (`hosting`).
    excluded: Arc<AtomicBool>,
    /// The group's own tasks (proposer, leadership watch, learning its
    /// members' addresses), stopped with it.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What an online backup of one shard copies: its newest snapshot (in
/// `snapshot_dir`) and the WAL segments after it, up to `applied`.
#[derive(Clone, Debug)]
pub struct BackupView {
    pub shard: u32,
    pub snapshot_dir: PathBuf,
    /// The last entry this node applied when asked: in the WAL, and the
    /// index the backup of this shard is taken at.
    pub applied: Option<engine::LogId>,
    /// The live segments, oldest first; the last one is being appended to.
    pub segments: Vec<SegmentFile>,
}

struct Inner {
    id: NodeId,
    config: ClusterConfig,
    transport: Transport,
    /// By shard: its group, if this node hosts it. Groups start with the
    /// node, and at run time when a replica moves here (`hosting`).
    groups: RwLock<Vec<Option<Arc<Group>>>>,
    /// What starting a group at run time needs; `None` once shut down.
    kit: Mutex<Option<Arc<GroupKit>>>,
    /// Held while a group starts or stops at run time: one at a time.
    hosting: tokio::sync::Mutex<()>,
    /// Every shard's route from this node (`route`), by shard.
    routes: Vec<ShardRoute>,
    /// Where the placement rule put each shard when this node started,
    /// replaced by the mover's plan when a change runs here.
    placement: RwLock<Placement>,
    pool: Mutex<Option<ShardPool>>,
    events: broadcast::Sender<NodeEvent>,
    clock: Arc<Clock>,
    /// Request ids: this node's id, a per-boot nonce, a counter.
    request_prefix: [u8; 8],
    request_seq: AtomicU64,
    /// Snapshots being received, bounded (`inbound`).
    inbound: Mutex<InboundSnapshots>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shut_down: AtomicBool,
    /// Every shard's health on this node.
    health: Arc<Health>,
    /// The newest events of each hosted shard, for nodes that relay them.
    event_ring: Arc<EventRing>,
    /// The movement ledger, if on.
    ledger: Option<Arc<Ledger>>,
    /// The last or running node addition or removal (`membership`).
    membership: Mutex<Option<MembershipChange>>,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// What a stale read answers: the value and the log position it reflects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale<R> {
    pub value: R,
    pub applied_index: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    pub shard: u32,
    pub leader: Option<NodeId>,
    pub role: String,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// On the leader: entries each follower is behind the leader's log.
    pub lag: BTreeMap<NodeId, u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The term of the leader that wrote the membership in force (0 for
    /// the initial one): says which leader made the last voter change.
    pub membership_term: u64,
    /// Why the shard stopped on this node, if it did (then `leader` is
    /// `None` and `role` is `"Stopped"`: this node no longer follows it).
    pub failure: Option<ShardFailure>,
}

/// One shard's place in the cluster, as this node knows it (`placement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedShard {
    pub shard: u32,
    /// The nodes the placement rule gave the shard.
    pub voters: Vec<NodeId>,
    /// The one of them the rule would have lead it.
    pub preferred_leader: NodeId,
    /// Whether this node has a group of it.
    pub hosted: bool,
    /// The leader this node last heard of, from a peer's answer.
    pub leader_hint: Option<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    /// Every node named in any group's membership, with its address.
    pub nodes: BTreeMap<NodeId, String>,
    /// The shards this node hosts (every shard unless the cluster is
    /// placed: `Node::placement` has the others).
    pub shards: Vec<ShardStatus>,
}

/// Counters across the node's shards, for metrics and benchmarks. They only
/// grow (a restart starts them at zero). The histograms are power-of-two
/// buckets (`engine::histogram`: bucket i holds values in `(2^(i-1), 2^i]`,
/// the last one everything above 2^30) summed over the shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub entries_proposed: u64,
    pub commands_proposed: u64,
    pub ticks_proposed: u64,
    pub fsyncs: u64,
    pub fsync_us_total: u64,
    /// Log entries this node's WALs encoded (entries it wrote as leader).
    pub wal_entries_encoded: u64,
    /// Log entries appended as the leader's frames (entries it replicated).
    pub wal_entries_verbatim: u64,
    /// Log entries read back (to apply or replicate) from memory, and from
    /// disk with a decode.
    pub wal_entries_read_from_memory: u64,
    pub wal_entries_read_from_disk: u64,
    /// Commands per entry this node proposed as leader.
    pub batch_size: engine::histogram::Log2Buckets,
    /// Propose to outcome, per entry this node proposed, in microseconds.
    pub commit_latency_us: engine::histogram::Log2Buckets,
    /// Duration of each WAL sync round (fdatasync of every dirty segment),
    /// in microseconds.
    pub fsync_latency_us: engine::histogram::Log2Buckets,
    /// Per hold expired by an entry this node proposed as leader: the
    /// leader's clock at apply minus the deadline, in milliseconds.
    pub expiry_lag_ms: engine::histogram::Log2Buckets,
    /// Stages of the write path (propose, append, apply, answer) that ran
    /// off their shard's thread: 0 while DESIGN §10's thread model holds.
    pub write_path_off_thread: u64,
    /// Snapshot transfers from leaders in progress here, and the image
    /// bytes they hold (at most `snapshot_bytes_max` together).
    pub snapshot_transfers_inbound: u64,
    pub snapshot_inbound_bytes: u64,
    /// Inbound snapshot transfers dropped or refused: abandoned for
    /// `snapshot_transfer_idle_timeout_ms`, replaced, evicted for bytes,
    /// beyond `snapshot_transfers_per_peer_max`, out of order.
    pub snapshot_transfers_dropped: u64,
    /// The peer transport's counters (connections, handshakes refused, ...).
    pub peer: TransportStats,
}

impl Node {
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn shard_count(&self) -> u32 {
        self.inner.config.shards
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// This node's log time, one clock per shard over one wall clock (tests
    /// and chaos runs move the wall clock).
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The peer transport, for fault injection in tests.
    pub fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// The movement ledger of this node, if `ledger.enabled`.
    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.inner.ledger.as_ref()
    }

    /// Every event this node applies, named and marked with whether this node
    /// led the shard, in log order per shard. A subscriber that falls `event_buffer_max` behind misses events
    /// (it sees `Lagged`) rather than slowing the shards.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.events.subscribe()
    }

    /// Nodes, and per shard: leader, term, indexes and follower lag.
    pub fn status(&self) -> ClusterStatus {
        let mut nodes = BTreeMap::new();
        let groups = self.inner.hosted_groups();
        let mut shards = Vec::with_capacity(groups.len());
        for group in &groups {
            let metrics = group.raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            for (id, node) in membership.nodes() {
                nodes.insert(*id, node.addr.clone());
            }
            let last = metrics.last_log_index.unwrap_or(0);
            let lag = metrics
                .replication
                .as_ref()
                .map(|replication| {
                    replication
                        .iter()
                        .map(|(id, matched)| (*id, last.saturating_sub(matched.as_ref().map_or(0, |m| m.index))))
                        .collect()
                })
                .unwrap_or_default();
            let failure = group.health.failure();
            shards.push(ShardStatus {
                shard: group.shard,
                leader: if failure.is_some() { None } else { metrics.current_leader },
                role: if failure.is_some() { "Stopped".to_owned() } else { format!("{:?}", metrics.state) },
                term: metrics.current_term,
                last_log_index: metrics.last_log_index,
                committed_index: metrics.local_committed.as_ref().map(|id| id.index),
                applied_index: metrics.last_applied.as_ref().map(|id| id.index),
                snapshot_index: metrics.snapshot.as_ref().map(|id| id.index),
                purged_index: metrics.purged.as_ref().map(|id| id.index),
                lag,
                voters: membership.voter_ids().collect(),
                learners: membership.learner_ids().collect(),
                membership_term: metrics.membership_config.log_id().as_ref().map_or(0, |id| id.leader_id.term),
                failure,
            });
        }
        ClusterStatus { node_id: self.inner.id, nodes, shards }
    }

    /// The shards that stopped on this node, and why (see `health`). Empty
    /// while every shard runs.
    pub fn failures(&self) -> Vec<ShardFailure> {
        self.inner.health.failures()
    }

    /// Stops `shard` on this node because a check outside the cluster layer
    /// found its state broken (a read that met a corrupt lookup): the same
    /// stop as a failed WAL or a failed state check (see `health`).
    pub fn stop_shard(&self, shard: u32, detail: impl Into<String>) {
        if let Some(group) = self.inner.group(shard) {
            group.health.fail(FailureCause::InvariantBroken, detail);
        }
    }

    /// Test hook: this node stops serving `shard` from its own group, as a
    /// node the placement gives no replica of it would (`route`): its
    /// writes and queries of the shard go through the nodes that host it,
    /// and it answers peers' queries of the shard with `NotHosted`. Its
    /// Raft group runs on (take it out of the shard's voters with
    /// `move_shard` so that it does not lead it). `fault-injection` builds
    /// only.
    #[cfg(feature = "fault-injection")]
    pub fn unhost(&self, shard: u32) {
        if let Some(route) = self.inner.routes.get(shard as usize) {
            route.set_hosted(false);
        }
    }

    /// Test hook: the next fsync of `shard`'s WAL fails with EIO, as on a
    /// failing disk (`fault-injection` builds only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_fsync_failure(&self, shard: u32) {
        if let Some(group) = self.inner.group(shard) {
            group.log.fail_next_sync();
        }
    }

    /// Test hook: breaks `shard`'s state on this node, as a bug would
    /// (`engine::actor::BreakInvariant`): the next snapshot built by the
    /// actor, or the next lookup of the broken name, finds it
    /// (`fault-injection` builds only).
    #[cfg(feature = "fault-injection")]
    pub async fn inject_broken_invariant(&self, shard: u32, how: engine::actor::BreakInvariant) {
        if let Some(group) = self.inner.group(shard) {
            let _ = group.actor.send(how).await;
        }
    }

    /// Counters summed over this node's shards.
    pub fn stats(&self) -> NodeStats {
        let mut stats = NodeStats::default();
        for group in &self.inner.hosted_groups() {
            let proposer: &ProposerStats = &group.proposer.stats;
            stats.entries_proposed += proposer.entries.load(Ordering::Relaxed);
            stats.commands_proposed += proposer.commands.load(Ordering::Relaxed);
            stats.ticks_proposed += proposer.ticks.load(Ordering::Relaxed);
            stats.batch_size.merge(&proposer.batch_size.snapshot());
            stats.commit_latency_us.merge(&proposer.commit_latency_us.snapshot());
            stats.expiry_lag_ms.merge(&proposer.expiry_lag_ms.snapshot());
            let wal = group.log.wal_stats();
            stats.fsyncs += wal.syncs;
            stats.fsync_us_total += wal.sync_us_total;
            stats.wal_entries_encoded += wal.entries_encoded;
            stats.wal_entries_verbatim += wal.entries_verbatim;
            stats.wal_entries_read_from_memory += wal.entries_read_from_memory;
            stats.wal_entries_read_from_disk += wal.entries_read_from_disk;
            stats.fsync_latency_us.merge(&wal.sync_latency_us);
            stats.write_path_off_thread += group.thread.off_thread();
        }
        let inbound = self.inner.inbound.lock().stats();
        stats.snapshot_transfers_inbound = inbound.transfers;
        stats.snapshot_inbound_bytes = inbound.bytes;
        stats.snapshot_transfers_dropped = inbound.dropped;
        stats.peer = self.inner.transport.stats();
        stats
    }

    /// Per shard: snapshots this node built, fallbacks from the shadow to
    /// the actor, and how long the last build took.
    pub fn snapshot_stats(&self) -> Vec<SnapshotStats> {
        self.inner.hosted_groups().iter().map(|group| group.snapshot_counters.stats(group.shard)).collect()
    }

    /// Per shard this node hosts: the log archive's counters (`None`
    /// without `archive_dir`).
    pub fn archive_stats(&self) -> Vec<(u32, Option<Arc<ArchiveStats>>)> {
        self.inner.hosted_groups().iter().map(|group| (group.shard, group.archive.clone())).collect()
    }

    /// The shards this node hosts (has a group of), in order: every shard
    /// unless `replication_factor` places them on fewer nodes.
    pub fn hosted_shards(&self) -> Vec<u32> {
        self.inner.hosted_groups().iter().map(|group| group.shard).collect()
    }

    /// Per shard, where the placement rule put it when this node started,
    /// and the leader this node last heard of for a shard it does not host
    /// (its own group's metrics say it for the others: `status`).
    pub fn placement(&self) -> Vec<PlacedShard> {
        let inner = &self.inner;
        let placement = inner.placement.read();
        (0..inner.config.shards)
            .zip(&placement.shards)
            .zip(&inner.routes)
            .map(|((shard, placed), route)| PlacedShard {
                shard,
                voters: placed.voters.clone(),
                preferred_leader: placed.preferred_leader,
                hosted: inner.group(shard).is_some(),
                leader_hint: route.leader_hint(),
            })
            .collect()
    }
}

impl Group {
    /// Stops the group's own tasks (its Raft core stops with `shutdown`).
    fn stop_tasks(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

impl Inner {
    /// The node that should lead `shard` while `voters` are its voters: in a
    /// cluster following the placement whose group has the map's voters,
    /// the map's preferred leader (leaders spread within one per node);
    /// otherwise the voters taken round robin by shard
    /// (`ClusterConfig::preferred_leader`).
    fn preferred_leader(&self, shard: u32, voters: &[NodeId]) -> Option<NodeId> {
        let placement = self.placement.read();
        match placement.shards.get(shard as usize) {
            Some(placed) if self.config.follows_placement() && same_set(&placed.voters, voters) => {
                Some(placed.preferred_leader)
            }
            _ => ClusterConfig::preferred_leader(voters, shard),
        }
    }

    /// The group of `shard`, if this node hosts it.
    fn group(&self, shard: u32) -> Option<Arc<Group>> {
        self.groups.read().get(shard as usize)?.clone()
    }

    /// The groups this node hosts, in shard order.
    fn hosted_groups(&self) -> Vec<Arc<Group>> {
        self.groups.read().iter().flatten().cloned().collect()
    }

    fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.config.rpc_timeout_ms)
    }
}

/// Whether two lists hold the same node ids, in any order.
fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a == b
}
