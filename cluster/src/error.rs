//! Errors of the cluster layer. Each says whether a retry can help and, for
//! the HTTP layer, maps to one status and a stable code.

use crate::health::{FailureCause, ShardFailure};
use crate::raft_types::NodeId;

/// Why a command got no outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// No leader could take the command within the retry window (an
    /// election, or a partition). Nothing was applied.
    #[error("shard {shard} has no reachable leader; retry after {retry_after_ms} ms")]
    Unavailable { shard: u32, retry_after_ms: u64 },
    /// The command was proposed, but whether it committed is not known
    /// (the leader changed and retries ran out). Retrying the same request
    /// is safe: the state machine applies a request id once.
    #[error("shard {shard}: outcome unknown ({reason}); retry with the same request")]
    Unknown { shard: u32, reason: String },
    /// The shard's queue is full.
    #[error("shard {shard} is overloaded; retry after {retry_after_ms} ms")]
    Overloaded { shard: u32, retry_after_ms: u64 },
    /// The command names no shard, or a shard that does not exist.
    #[error("{0}")]
    Invalid(String),
    /// This node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The shard stopped on this node (its storage failed, or one of its
    /// rules was found broken: `health`). Nothing was applied through this
    /// node; another node may serve the shard.
    #[error("shard {shard} stopped on this node ({}): {detail}; another node may serve it", cause.code())]
    ShardStopped { shard: u32, cause: FailureCause, detail: String },
}

impl SubmitError {
    pub fn code(&self) -> &'static str {
        match self {
            SubmitError::Unavailable { .. } => "unavailable",
            SubmitError::Unknown { .. } => "outcome_unknown",
            SubmitError::Overloaded { .. } => "overloaded",
            SubmitError::Invalid(_) => "invalid_request",
            SubmitError::ShuttingDown => "shutting_down",
            SubmitError::ShardStopped { .. } => "shard_stopped",
        }
    }

    pub(crate) fn stopped(failure: ShardFailure) -> Self {
        SubmitError::ShardStopped { shard: failure.shard, cause: failure.cause, detail: failure.detail }
    }
}

/// Why a read got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("shard {shard} has no reachable leader; retry after {retry_after_ms} ms")]
    Unavailable { shard: u32, retry_after_ms: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("node is shutting down")]
    ShuttingDown,
    /// The shard stopped on this node (see `SubmitError::ShardStopped`):
    /// its copy here is no longer kept up, or not to be trusted.
    #[error("shard {shard} stopped on this node ({}): {detail}; another node may serve it", cause.code())]
    ShardStopped { shard: u32, cause: FailureCause, detail: String },
}

impl ReadError {
    pub fn code(&self) -> &'static str {
        match self {
            ReadError::Unavailable { .. } => "unavailable",
            ReadError::Invalid(_) => "invalid_request",
            ReadError::ShuttingDown => "shutting_down",
            ReadError::ShardStopped { .. } => "shard_stopped",
        }
    }

    pub(crate) fn stopped(failure: ShardFailure) -> Self {
        ReadError::ShardStopped { shard: failure.shard, cause: failure.cause, detail: failure.detail }
    }
}

/// Why a membership change failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("shard {shard}: {reason}")]
    Failed { shard: u32, reason: String },
    #[error("shard {shard} has no reachable leader")]
    Unavailable { shard: u32 },
    #[error("{0}")]
    Invalid(String),
    /// `add_node` of a node that is already a voter of every shard.
    #[error("node {node} is already a voter of every shard")]
    AlreadyMember { node: NodeId },
    /// `remove_node` of a node that no shard's group has, as voter or learner.
    #[error("node {node} is not a member of any shard")]
    NotMember { node: NodeId },
    /// A membership change that acts on every shard, asked of a cluster
    /// whose shards live on fewer nodes than there are members.
    #[error(
        "each shard lives on {replicas} of the {members} nodes (cluster.replication_factor): membership changes \
         that act on every shard are not supported for such a cluster yet"
    )]
    Placed { replicas: u32, members: usize },
    /// Another node addition or removal is running on this node.
    #[error("a membership change is running on this node: {running}")]
    InProgress { running: String },
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid cluster config: {0}")]
    Config(String),
    #[error("data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error(transparent)]
    Wal(#[from] engine::WalError),
    #[error(transparent)]
    Snapshot(#[from] engine::SnapshotError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("shard threads: {0}")]
    Threads(std::io::Error),
    #[error("raft group {shard}: {reason}")]
    Raft { shard: u32, reason: String },
}

/// What a proposer tells the node about one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProposeError {
    /// Not appended here: this node does not lead (best guess of who does).
    NotLeader(Option<NodeId>),
    /// Appended but not known to be committed.
    Unknown(String),
    Overloaded,
    Closed,
    /// The shard stopped on this node; nothing was proposed.
    Stopped,
}
