//! A node's cluster settings: who it is, where it listens, who its peers are,
//! and every bound the cluster layer keeps (STYLE.md: a limit on everything).
//!
//! These are per node and shape no outcome, unlike `engine::Limits`, which
//! are replicated. The server's TOML file carries them under `[cluster]`.
//!
//! **Protected mode**: a node whose peer port listens beyond loopback must
//! have a `secret`, or it refuses to start (`validate`): without one, anyone
//! who reaches the port could speak for any node (docs/SECURITY.md).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use engine::WalConfig;
use engine::read::QueryBounds;
use serde::{Deserialize, Serialize};

use crate::raft_types::NodeId;

/// One member of the initial voter set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: NodeId,
    /// Peer transport address, `host:port`.
    pub addr: String,
}

/// Shortest accepted `secret`, in bytes: 16 random bytes are out of reach of
/// guessing; a shorter string is a password, not a key.
pub const SECRET_LEN_MIN: usize = 16;

/// The secret a cluster's nodes share to authenticate their peer
/// connections (`transport`: an HMAC-SHA256 challenge-response), and the
/// server's webhook signing keys. It is never shown: `Debug` and `Serialize` (what `tally check-config` prints) write
/// `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The key bytes, for the MAC only.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// Whether `listen` (`host:port`) can only be reached from this machine: a
/// loopback IP, or the name `localhost`. Any other name counts as reachable
/// from elsewhere, since it may resolve to anything.
pub fn is_loopback_listen(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return addr.ip().to_canonical().is_loopback();
    }
    listen.rsplit_once(':').is_some_and(|(host, _port)| host.eq_ignore_ascii_case("localhost"))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id (1 or more).
    pub node_id: NodeId,
    /// Where the peer transport listens, `host:port` (port 0 picks one).
    /// Beyond loopback, `secret` is required (protected mode).
    pub listen: String,
    /// Shared by every node of the cluster (at least `SECRET_LEN_MIN`
    /// bytes): a peer connection is served only once both sides proved they
    /// know it. `None`: only nodes with no secret either can connect, and
    /// the node must listen on loopback. Set it in the file or, better, in
    /// `TALLY_CLUSTER__SECRET`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// The initial voters, this node among them. A node not listed here
    /// never initializes a group; it waits to be added (`add_learner`),
    /// and lists the cluster's current voters here: until a leader reaches
    /// it, these are the only nodes it admits on its peer port.
    pub members: Vec<Member>,
    /// Addresses this node dials some peers at instead of the addresses in
    /// the membership: a proxy or NAT between the nodes (the chaos harness
    /// puts a fault proxy on every link this way). Empty: dial the
    /// membership's addresses.
    pub dial: Vec<Member>,
    /// Shard count. Fixed for the life of the data directory.
    pub shards: u32,
    /// Nodes each shard lives on (its group's voters), chosen among
    /// `members` by the placement rule (`placement`, docs/SCALE-OUT.md §3).
    /// Default 3 (capped at the member count: one, two or three nodes hold
    /// every shard). Below the member count, a node starts only the groups
    /// the rule gives it and serves the others through the nodes that host
    /// them (`node::route`). Read when the cluster is first bootstrapped;
    /// then a node's map is the one the last node add or remove saved, and
    /// `tally node add`/`remove` move only the replicas the rule changes.
    /// 0 means every member, always: a node add puts every shard on the new
    /// node.
    pub replication_factor: u32,
    pub data_dir: PathBuf,
    /// The movement ledger (`[ledger]` of the server's file, copied here by
    /// the server; under `<data_dir>/ledger`).
    #[serde(skip)]
    pub ledger: crate::ledger::LedgerConfig,
    /// Threads running shard actors; 0 means one per core.
    pub shard_threads: usize,

    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Entries appended since the last snapshot that trigger a new one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so a briefly lagging
    /// follower catches up from the log rather than by snapshot.
    pub log_entries_kept_after_snapshot: u64,
    /// Snapshot files kept per shard.
    pub snapshots_kept: usize,
    /// Build snapshots from a shadow replica of each shard, off the shard's
    /// thread, so they never pause its writes (`shadow`). The shadow is a
    /// second copy of every shard's state: it doubles the memory the shards
    /// take. `false` builds them on the shard's actor, which pauses the
    /// shard while it serialises its state (tens of ms for a large shard).
    pub snapshot_from_shadow: bool,
    /// Largest snapshot this node accepts from a leader, and the most bytes
    /// of snapshots being received it holds at once, over all peers.
    #[serde(alias = "snapshot_size_max")]
    pub snapshot_bytes_max: u64,
    /// Snapshot transfers one peer may have in progress here at once (one
    /// per shard it leads that this node needs); a chunk starting another is
    /// refused, and the leader retries later.
    pub snapshot_transfers_per_peer_max: usize,
    /// A snapshot transfer that receives no chunk for this long is
    /// abandoned: its bytes are dropped.
    pub snapshot_transfer_idle_timeout_ms: u64,
    /// Bytes per snapshot chunk on the wire.
    #[serde(alias = "snapshot_chunk_size")]
    pub snapshot_chunk_bytes: usize,
    /// Entries per AppendEntries RPC, and per read of the log while a
    /// snapshot's shadow replica catches up.
    pub append_entries_max: u64,

    /// Commands in one log entry (the proposer's batch cap).
    pub batch_size_max: usize,
    /// Entries a shard's proposer keeps in flight; more commands wait and
    /// join the next batch. 1 is strict "gather while the previous is in flight".
    pub entries_in_flight_max: usize,
    /// Commands waiting per shard; beyond this `submit` answers Overloaded.
    pub queue_per_shard_max: usize,

    /// How long `submit` and `read` keep retrying through an election before
    /// answering Unavailable.
    pub retry_window_ms: u64,
    /// Timeout of one RPC to a peer (Raft, forwarding, read index).
    pub rpc_timeout_ms: u64,
    /// Bound on connecting to a peer, and on the handshake (hello and
    /// proofs) of either side.
    pub connect_timeout_ms: u64,
    /// Largest frame on a peer connection.
    #[serde(alias = "frame_size_max")]
    pub frame_bytes_max: u32,
    /// Requests in flight per peer connection.
    pub peer_requests_in_flight_max: u32,
    /// Peer connections this node accepts and keeps open at once,
    /// handshakes included; more are closed at once.
    pub peer_connections_incoming_max: u32,
    /// An incoming peer connection that sends nothing for this long while
    /// none of its requests is running is closed (the peer reconnects when
    /// it next calls); so is any connection whose frame stops arriving
    /// midway for this long.
    pub peer_idle_timeout_ms: u64,
    /// Events buffered for slow subscribers before they miss some.
    pub event_buffer_max: usize,
    /// Events of each shard a node hosts that it keeps for the nodes that
    /// relay them (those that do not host the shard); a relay further
    /// behind than this loses some (`node::relay`).
    pub event_relay_buffer_max: usize,
    /// How often a node asks a host for the events of each shard it does
    /// not host, to stream them as its own.
    pub event_relay_interval_ms: u64,
    /// How often a leader checks whether a group's preferred leader is back
    /// and hands leadership over; 0 turns rebalancing off.
    pub rebalance_interval_ms: u64,
    /// Pause between two shards of `tally node add` / `tally node remove`
    /// (`Node::add_node`, `Node::remove_node`): the shards move one at a
    /// time, and this spaces their snapshot transfers and elections so the
    /// cluster keeps serving at full speed meanwhile.
    pub membership_shard_pause_ms: u64,
    /// Attempts at one shard's step of adding or removing a node when its
    /// leader cannot be reached, or the catch-up outlasts the admin call,
    /// before the whole change fails (re-running it resumes where it stopped).
    pub membership_shard_attempts_max: u32,
    /// Longest one shard's learner catch-up (a snapshot of the whole shard,
    /// then the log) may take when adding a node before the attempt is
    /// given up (and tried again, `membership_shard_attempts_max`).
    pub membership_catch_up_timeout_ms: u64,

    pub wal: WalConfig,

    /// The continuous log archive: with a directory, every shard's sealed
    /// WAL segments are copied (and fsynced) to `<archive_dir>/shard-NNNNN/`
    /// before a purge deletes them. Set from the server's `[backup]`
    /// section, not from `[cluster]`.
    #[serde(skip)]
    pub archive_dir: Option<PathBuf>,
    /// Pause after a failed archive copy before it is tried again.
    #[serde(skip)]
    pub archive_retry_ms: u64,
    /// What a query from a peer may ask for at most (`Query::check`). Set
    /// from the server's `[api]` and `[engine]` bounds, not from
    /// `[cluster]`.
    #[serde(skip)]
    pub query_bounds: QueryBounds,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: "127.0.0.1:7001".into(),
            secret: None,
            members: vec![Member { id: 1, addr: "127.0.0.1:7001".into() }],
            dial: Vec::new(),
            shards: 8,
            replication_factor: 3,
            data_dir: PathBuf::from("data"),
            ledger: crate::ledger::LedgerConfig::default(),
            shard_threads: 0,
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 500,
            snapshot_after_entries: 50_000,
            log_entries_kept_after_snapshot: 5_000,
            snapshots_kept: 2,
            snapshot_from_shadow: true,
            snapshot_bytes_max: 4 << 30,
            snapshot_transfers_per_peer_max: 8,
            snapshot_transfer_idle_timeout_ms: 30_000,
            snapshot_chunk_bytes: 4 << 20,
            append_entries_max: 256,
            batch_size_max: 1024,
            entries_in_flight_max: 2,
            queue_per_shard_max: 65_536,
            retry_window_ms: 3_000,
            rpc_timeout_ms: 2_000,
            connect_timeout_ms: 500,
            frame_bytes_max: 64 << 20,
            peer_requests_in_flight_max: 4096,
            peer_connections_incoming_max: 256,
            peer_idle_timeout_ms: 60_000,
            event_buffer_max: 65_536,
            event_relay_buffer_max: 4_096,
            event_relay_interval_ms: 100,
            rebalance_interval_ms: 2_000,
            membership_shard_pause_ms: 1_000,
            membership_shard_attempts_max: 10,
            membership_catch_up_timeout_ms: 600_000,
            wal: WalConfig::default(),
            archive_dir: None,
            archive_retry_ms: 1_000,
            query_bounds: QueryBounds::default(),
        }
    }
}

impl ClusterConfig {
    /// Checks the settings together; says which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id must be at least 1".into());
        }
        if self.event_relay_buffer_max == 0 || self.event_relay_interval_ms == 0 {
            return Err("event_relay_buffer_max and event_relay_interval_ms must be at least 1".into());
        }
        match &self.secret {
            Some(secret) if secret.len() < SECRET_LEN_MIN => {
                return Err(format!(
                    "secret must be at least {SECRET_LEN_MIN} bytes (e.g. `openssl rand -hex 32`), the same on every node"
                ));
            }
            Some(_) => {}
            None if !is_loopback_listen(&self.listen) => {
                return Err(format!(
                    "listen is {:?}, not loopback, and no secret is set: anyone who reaches the peer port could \
                     take the cluster. Set cluster.secret (or TALLY_CLUSTER__SECRET) to the same random value on \
                     every node, or listen on 127.0.0.1",
                    self.listen
                ));
            }
            None => {}
        }
        if self.shards == 0 || self.shards > engine::placement::SHARDS_MAX {
            return Err(format!("shards must be in 1..={}", engine::placement::SHARDS_MAX));
        }
        let mut ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.members.len() {
            return Err("members lists a node id twice".into());
        }
        if ids.contains(&0) {
            return Err("member ids must be at least 1".into());
        }
        let mut dialed: Vec<NodeId> = self.dial.iter().map(|m| m.id).collect();
        dialed.sort_unstable();
        dialed.dedup();
        if dialed.len() != self.dial.len() || dialed.contains(&0) || dialed.contains(&self.node_id) {
            return Err("dial lists a node twice, node 0, or this node".into());
        }
        if self.heartbeat_ms == 0 || self.election_timeout_min_ms <= self.heartbeat_ms {
            return Err("election_timeout_min_ms must exceed heartbeat_ms (> 0)".into());
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err("election_timeout_max_ms must exceed election_timeout_min_ms".into());
        }
        if self.batch_size_max == 0 || self.entries_in_flight_max == 0 || self.queue_per_shard_max == 0 {
            return Err("batch_size_max, entries_in_flight_max and queue_per_shard_max must be at least 1".into());
        }
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes as u64 >= u64::from(self.frame_bytes_max) {
            return Err("snapshot_chunk_bytes must be at least 1 and below frame_bytes_max".into());
        }
        if self.append_entries_max == 0 {
            return Err("append_entries_max must be at least 1".into());
        }
        if self.snapshot_transfers_per_peer_max == 0 || self.snapshot_transfer_idle_timeout_ms == 0 {
            return Err(
                "snapshot_transfers_per_peer_max and snapshot_transfer_idle_timeout_ms must be at least 1".into()
            );
        }
        if self.membership_shard_attempts_max == 0 || self.membership_catch_up_timeout_ms == 0 {
            return Err("membership_shard_attempts_max and membership_catch_up_timeout_ms must be at least 1".into());
        }
        if self.peer_connections_incoming_max == 0 || self.peer_idle_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err(
                "peer_connections_incoming_max, peer_idle_timeout_ms and connect_timeout_ms must be at least 1".into(),
            );
        }
        Ok(())
    }

    /// Nodes per shard among `members`: `replication_factor`, where 0 or
    /// more than the members means all of them.
    pub fn replicas(&self) -> u32 {
        crate::placement::replicas(self.replication_factor, self.members.len())
    }

    /// Whether some shard lives on fewer nodes than there are members.
    pub fn is_placed(&self) -> bool {
        (self.replicas() as usize) < self.members.len()
    }

    /// Whether shards follow the placement rule (`replication_factor` set):
    /// a node hosts the shards its map gives it, and adding or removing a
    /// node moves only the plan's difference. With 0, every member holds
    /// every shard and a node add or remove changes every shard's voters.
    pub fn follows_placement(&self) -> bool {
        self.replication_factor > 0
    }

    /// The member that initializes group `shard` and, when up, leads it:
    /// members sorted by id, taken round-robin, so leaders spread evenly.
    pub fn preferred_leader(voters: &[NodeId], shard: u32) -> Option<NodeId> {
        if voters.is_empty() {
            return None;
        }
        let mut sorted = voters.to_vec();
        sorted.sort_unstable();
        Some(sorted[shard as usize % sorted.len()])
    }
}
