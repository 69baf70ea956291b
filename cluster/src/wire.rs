//! What peers say to each other: every message the transport carries, as
//! rkyv types.
//!
//! Raft RPCs are mirrored field for field from openraft's types (which have
//! no rkyv support) and tagged with their group, the shard. Entries travel as
//! the WAL frames the leader wrote: header, checksum and archive, appended
//! verbatim by the follower after it decodes them once. The rest is the
//! node-to-node service: forwarded commands, queries, read index, admin
//! operations, a probe used at bootstrap, and the messages that move a
//! shard's replicas between nodes (`Host`, `Release`, `Membership`,
//! `MoveShard`) and the map every node keeps of them (`Placement`).

use engine::event::{EventId, EventRecord};
use engine::ids::RequestId;
use engine::raft_log::{LogId as EngineLogId, Vote as EngineVote};
use engine::read::{Answer, Query};
use engine::{Command, Outcome};
use rkyv::{Archive, Deserialize, Serialize};

use crate::ledger::{LedgerFilter, LedgerKey};
use crate::raft_types::NodeId;

/// A request from one node to another.
#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
pub enum Request {
    AppendEntries {
        group: u32,
        vote: EngineVote,
        prev_log_id: Option<EngineLogId>,
        /// One `engine::wal::EntryFrame` per entry, in log order.
        frames: Vec<Vec<u8>>,
        leader_commit: Option<EngineLogId>,
    },
    Vote {
        group: u32,
        pre_vote: bool,
        vote: EngineVote,
        last_log_id: Option<EngineLogId>,
        leadership_transfer: bool,
    },
    /// One piece of a snapshot. Pieces of one transfer share `transfer`, are
    /// sent in order and each is acknowledged before the next; the last
    /// carries `done`, and only then does the receiver install it.
    SnapshotChunk {
        group: u32,
        transfer: u64,
        offset: u64,
        data: Vec<u8>,
        done: Option<SnapshotDone>,
    },
    TransferLeader {
        group: u32,
        from_leader: EngineVote,
        to: NodeId,
        last_log_id: Option<EngineLogId>,
    },
    /// Commands forwarded to the shard's leader, each with its request id.
    Submit {
        group: u32,
        commands: Vec<Command>,
        request_ids: Vec<RequestId>,
    },
    /// "Confirm you lead `group` and tell me the index to read at."
    ReadIndex {
        group: u32,
    },
    /// A membership change, forwarded to the group's leader.
    Admin {
        group: u32,
        op: AdminOp,
    },
    /// "Is `group` initialized on you?" Asked at bootstrap so that a node
    /// whose data was wiped does not initialize a group that already exists.
    Probe {
        group: u32,
    },
    /// A query of `group` from a node that does not serve the shard itself
    /// (`Node::query`); answered by a node that does, after the checks of
    /// `Query::check`.
    Query {
        group: u32,
        linearizable: bool,
        query: Query,
    },
    /// "Start an empty group of `group` here": sent to a node before it
    /// joins the shard as a learner (`membership`). Nothing happens when
    /// the node has the group already.
    Host {
        group: u32,
    },
    /// "Drop your group of `group`": sent to a node after a committed
    /// voter change left it out. `voters` are that change's voters; a node
    /// still among them, or still leading the shard, refuses.
    Release {
        group: u32,
        voters: Vec<NodeId>,
    },
    /// "What is `group`'s membership as you see it?" Answered by a node
    /// that hosts the shard.
    Membership {
        group: u32,
    },
    /// "Move `group` to these voters": `move_shard` run by a node that
    /// hosts the shard and stays in it. `addrs` say where nodes joining
    /// it listen; with `release`, the nodes leaving drop their group.
    MoveShard {
        group: u32,
        voters: Vec<NodeId>,
        addrs: Vec<(NodeId, String)>,
        release: bool,
    },
    /// "Take this map": per shard, its voters and preferred leader, and
    /// where the members listen. Sent to every member by the node that ran
    /// a node add or remove; `group` is 0 (the map is the cluster's).
    Placement {
        group: u32,
        shards: Vec<(Vec<NodeId>, NodeId)>,
        members: Vec<(NodeId, String)>,
    },
    /// "Up to `max` events of `group` after `after`" (`None`: only tell me
    /// the newest, I start from there), from a node relaying the events of
    /// a shard it does not host (`node::relay`).
    Events {
        group: u32,
        after: Option<EventId>,
        max: u32,
    },
    /// "`group`'s part of a ledger page": from a node paging the ledger of
    /// a shard it does not host (`Node::ledger_page`).
    LedgerScan {
        group: u32,
        filter: LedgerFilter,
        after: Option<LedgerKey>,
        limit: u32,
    },
}

impl Request {
    pub fn group(&self) -> u32 {
        match self {
            Request::AppendEntries { group, .. }
            | Request::Vote { group, .. }
            | Request::SnapshotChunk { group, .. }
            | Request::TransferLeader { group, .. }
            | Request::Submit { group, .. }
            | Request::ReadIndex { group }
            | Request::Admin { group, .. }
            | Request::Probe { group }
            | Request::Query { group, .. }
            | Request::Host { group }
            | Request::Release { group, .. }
            | Request::Membership { group }
            | Request::MoveShard { group, .. }
            | Request::Placement { group, .. }
            | Request::Events { group, .. }
            | Request::LedgerScan { group, .. } => *group,
        }
    }
}

/// The end of a snapshot transfer: the leader's vote and what the snapshot
/// covers.
#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
pub struct SnapshotDone {
    pub vote: EngineVote,
    pub last_log_id: Option<EngineLogId>,
    pub membership_log_id: Option<EngineLogId>,
    /// `MembershipImage` bytes; empty when the snapshot has no membership.
    pub membership: Vec<u8>,
    pub total_len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum AdminOp {
    AddLearner {
        node: NodeId,
        addr: String,
    },
    /// Make exactly these nodes the voters; others stay as learners unless
    /// `retain` is false.
    ChangeVoters {
        voters: Vec<NodeId>,
        retain: bool,
    },
}

/// An answer.
#[derive(Clone, Debug, Archive, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(AppendResult),
    Vote {
        vote: EngineVote,
        vote_granted: bool,
        last_log_id: Option<EngineLogId>,
    },
    /// A chunk was stored (not the last).
    SnapshotChunkStored,
    /// The snapshot was installed; the receiver's vote.
    SnapshotInstalled {
        vote: EngineVote,
    },
    /// Leadership transfer accepted, or why not.
    TransferLeader(Result<(), String>),
    /// One outcome per submitted command, in order.
    Submitted(Vec<Outcome>),
    ReadIndex {
        index: Option<u64>,
    },
    AdminDone,
    Probe {
        initialized: bool,
    },
    /// The shard's queue is full; nothing was proposed.
    Overloaded,
    /// Proposed, but whether it committed is not known (leadership moved).
    Unknown(String),
    /// This node does not lead the group; `leader` is its best guess.
    NotLeader {
        leader: Option<NodeId>,
    },
    /// The group does not exist here or the node is shutting down.
    Unavailable(String),
    /// The request was refused (too big, malformed, out of bounds).
    Refused(String),
    /// A query's answer.
    Answered(Box<Answer>),
    /// This node does not serve the group: ask another (`leader` is its
    /// best guess of the group's leader). Nothing was proposed or read.
    NotHosted {
        leader: Option<NodeId>,
    },
    /// A group's membership as the answering node sees it.
    Membership(MembershipView),
    /// A `MoveShard` ended; whether it changed the group.
    Moved {
        changed: bool,
    },
    /// Events after the asker's cursor, the newest this node keeps of the
    /// shard, and whether some after the cursor were dropped here.
    Events {
        records: Vec<EventRecord>,
        newest: Option<EventId>,
        lost: bool,
    },
    /// A shard's part of a ledger page: its entries (each a ledger entry as
    /// JSON, the ledger's own format) and where the scan stopped short of
    /// the shard's end.
    LedgerScanned {
        entries: Vec<String>,
        stopped_at: Option<LedgerKey>,
    },
}

/// One group's membership as a node sees it: its voters, every member
/// (voters and learners) with its peer address, and the leader it knows.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct MembershipView {
    pub voters: Vec<NodeId>,
    pub nodes: Vec<(NodeId, String)>,
    pub leader: Option<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum AppendResult {
    Success,
    PartialSuccess(Option<EngineLogId>),
    Conflict,
    HigherVote(EngineVote),
}
