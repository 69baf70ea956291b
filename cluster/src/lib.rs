//! Tally's cluster layer: turns the engine's shards into replicated state
//! machines, one openraft group per shard.
//!
//! A write acknowledged here is in the WAL of a majority of nodes (fsynced)
//! and applied by the shard's leader. A single node is a 1-member cluster:
//! there is one write path.
//!
//! * `types` — openraft's type configuration and conversions to the engine's
//!   log vocabulary.
//! * `log_store` — `RaftLogStorage` on the engine's WAL (group-commit flush).
//! * `state_machine` — `RaftStateMachine` on the shard actor; engine snapshots.
//! * `shadow` — the shard's shadow replica, which snapshots are built from
//!   off the shard thread.
//! * `transport` — one multiplexed TCP connection per peer, rkyv frames,
//!   mutually authenticated by the cluster's shared secret.
//! * `wire` — every message peers exchange.
//! * `network` — openraft's network on the transport, shared by all groups.
//! * `proposer` — per-shard batching of commands into log entries, and ticks.
//! * `clock` — each shard's log time on this node, and the rules that keep
//!   it from running ahead of real time.
//! * `forwarder` — per-shard batching of commands forwarded to the leader.
//! * `health` — whether each shard still runs on this node, and why not: one
//!   mechanism for storage failures and broken invariants.
//! * `inbound` — snapshots being received, bounded per peer, in bytes and
//!   in time.
//! * `node` — the groups of a process and the API for the server layer.

pub mod clock;
pub mod config;
pub mod error;
pub mod event_ring;
mod forwarder;
pub mod health;
mod inbound;
pub mod ledger;
pub mod log_store;
pub mod network;
pub mod node;
pub mod placement;
pub mod proposer;
pub mod raft_types;
pub mod saga;
pub mod shadow;
pub mod shard_thread;
pub mod state_machine;
pub mod transport;
pub mod wire;

pub use config::{ClusterConfig, Member, Secret};
pub use error::{AdminError, ReadError, StartError, SubmitError};
pub use health::{FailureCause, ShardFailure};
pub use node::{ClusterStatus, Consistency, Node, NodeStats, PlacedShard, ShardStatus, Stale};
pub use raft_types::NodeId;
pub use saga::{SagaOutcome, SagaPart};
pub use state_machine::{NodeEvent, SnapshotStats};
