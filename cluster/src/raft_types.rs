//! openraft's type configuration for Tally, and the conversions between
//! openraft's log vocabulary and the engine's.
//!
//! The engine keeps Raft-shaped types of its own (`engine::LogId`, `Vote`,
//! `LogEntry`) so it needs no Raft library. This module converts field for
//! field at the storage boundary: entries are moved, never re-encoded, except
//! membership, which the engine stores as opaque bytes (`MembershipImage`).
//!
//! An entry's app data is a `LogBatch`: the engine's batch behind a pointer
//! and, once the entry has one, its WAL frame. The leader's WAL append
//! encodes the frame; replication sends it; a follower decodes it once and
//! appends it verbatim (DESIGN §10, "encode once").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::sync::Arc;

use engine::raft_log::{EntryPayload as EnginePayload, LogEntry, LogId as EngineLogId, Vote as EngineVote};
use engine::wal::{EntryFrame, FramedEntry};
use openraft::vote::leader_id_std::CommittedLeaderId;
use openraft::{EntryPayload, Membership, RaftTypeConfig, StoredMembership};
use rkyv::{Archive, Deserialize, Serialize};

/// A node of the cluster. Ids start at 1; 0 never names a node.
pub type NodeId = u64;

/// How peers reach a node: the address of its peer transport.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerNode {
    pub addr: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    /// Tally's openraft types: log ids are (term, index) (standard Raft
    /// leader ids), an entry's app data is a `LogBatch` (the engine's batch
    /// and its WAL frame), and a committed entry answers with the engine's
    /// `Applied`.
    pub TypeConfig:
        D = LogBatch,
        R = engine::Applied,
        NodeId = NodeId,
        Node = PeerNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
);

pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;
pub type Entry = <TypeConfig as RaftTypeConfig>::Entry;
pub type LogId = openraft::LogId<CommittedLeaderId<u64>>;
pub type Vote = <TypeConfig as RaftTypeConfig>::Vote;
pub type RaftMembership = Membership<NodeId, PeerNode>;
pub type RaftStoredMembership = StoredMembership<CommittedLeaderId<u64>, NodeId, PeerNode>;
pub type SnapshotMeta = openraft::storage::SnapshotMeta<CommittedLeaderId<u64>, NodeId, PeerNode>;
pub type Snapshot = openraft::storage::Snapshot<CommittedLeaderId<u64>, NodeId, PeerNode, SnapshotImage>;

/// A snapshot as it travels and is installed: the bytes of an engine
/// snapshot file (header, meta, state; checksummed). Streamed in chunks by
/// the transport.
pub type SnapshotImage = Vec<u8>;

pub fn log_id_to_engine(id: &LogId) -> EngineLogId {
    EngineLogId { term: id.leader_id.term, index: id.index }
}

pub fn log_id_from_engine(id: EngineLogId) -> LogId {
    openraft::LogId { leader_id: CommittedLeaderId::new(id.term), index: id.index }
}

pub fn vote_to_engine(vote: &Vote) -> EngineVote {
    EngineVote { term: vote.leader_id.term, voted_for: Some(vote.leader_id.voted_for), committed: vote.committed }
}

pub fn vote_from_engine(vote: EngineVote) -> Vote {
    // The engine allows "voted for nobody"; openraft's standard leader id
    // always names a node. 0 is never a node id, so it stands for nobody.
    let leader_id =
        openraft::impls::leader_id_std::LeaderId { term: vote.term, voted_for: vote.voted_for.unwrap_or(0) };
    openraft::impls::Vote { leader_id, committed: vote.committed }
}

/// An entry's app data: the engine's batch, shared so that reading the
/// entry back (to apply it, to replicate it) copies a pointer, and the WAL
/// frame of the entry once it has one: after the leader's append, and on a
/// follower as received. Blank and membership entries carry no frame (they
/// are rare and small; they are encoded where needed).
#[derive(Clone, Debug)]
pub struct LogBatch {
    pub batch: Arc<engine::Batch>,
    pub frame: Option<EntryFrame>,
}

impl LogBatch {
    /// A batch the leader is about to propose: no frame yet.
    pub fn new(batch: engine::Batch) -> Self {
        Self { batch: Arc::new(batch), frame: None }
    }
}

impl fmt::Display for LogBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.batch, f)
    }
}

/// Moves an openraft entry into the engine's form, with its frame if the
/// entry has one.
pub fn entry_to_engine(entry: Entry) -> (LogEntry, Option<EntryFrame>) {
    let log_id = log_id_to_engine(&entry.log_id);
    let (payload, frame) = match entry.payload {
        EntryPayload::Blank => (EnginePayload::Blank, None),
        EntryPayload::Normal(LogBatch { batch, frame }) => (EnginePayload::Batch(batch), frame),
        EntryPayload::Membership(membership) => (EnginePayload::Membership(MembershipImage::encode(&membership)), None),
    };
    (LogEntry { log_id, payload }, frame)
}

/// Moves an engine entry and its frame into openraft's form. Membership
/// bytes were written by `entry_to_engine`; damaged ones are an I/O error.
pub fn entry_from_engine(framed: FramedEntry) -> io::Result<Entry> {
    let FramedEntry { entry, frame } = framed;
    let log_id = log_id_from_engine(entry.log_id);
    let payload = match entry.payload {
        EnginePayload::Blank => EntryPayload::Blank,
        EnginePayload::Batch(batch) => EntryPayload::Normal(LogBatch { batch, frame: Some(frame) }),
        EnginePayload::Membership(bytes) => EntryPayload::Membership(MembershipImage::decode(&bytes)?),
    };
    Ok(openraft::Entry { log_id, payload })
}

/// The frame of an entry on its way to a follower: the one the leader's WAL
/// wrote, or, for an entry without one (blank, membership), encoded now.
pub fn frame_of(entry: Entry, record_bytes_max: usize) -> Result<EntryFrame, engine::WalError> {
    match entry_to_engine(entry) {
        (_, Some(frame)) => Ok(frame),
        (entry, None) => EntryFrame::encode(&entry, record_bytes_max),
    }
}

/// An entry a follower received: its frame checked whole and decoded, kept
/// to be appended verbatim.
pub fn entry_from_frame(frame: EntryFrame, record_bytes_max: usize) -> io::Result<Entry> {
    let entry = frame
        .decode(record_bytes_max)
        .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, format!("received entry frame: {reason}")))?;
    entry_from_engine(FramedEntry { entry, frame })
}

pub fn stored_membership_from_engine(stored: Option<&engine::StoredMembership>) -> io::Result<RaftStoredMembership> {
    match stored {
        None => Ok(StoredMembership::default()),
        Some(stored) => {
            Ok(StoredMembership::new(Some(log_id_from_engine(stored.log_id)), MembershipImage::decode(&stored.config)?))
        }
    }
}

/// A membership as the engine stores it: rkyv bytes of the joint voter
/// configs and every node with its address.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct MembershipImage {
    pub configs: Vec<Vec<NodeId>>,
    pub nodes: Vec<(NodeId, String)>,
}

impl MembershipImage {
    pub fn encode(membership: &RaftMembership) -> Vec<u8> {
        let image = MembershipImage {
            configs: membership.get_joint_config().iter().map(|set| set.iter().copied().collect()).collect(),
            nodes: membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
        };
        match rkyv::to_bytes::<rkyv::rancor::Error>(&image) {
            Ok(bytes) => bytes.into_vec(),
            // Serialising plain vectors into memory cannot fail short of
            // allocation failure, which aborts anyway.
            Err(error) => unreachable!("membership encoding failed: {error}"),
        }
    }

    /// The bytes of a membership with `node` (at `addr`) its one voter: what
    /// a restore gives every group of the restored node.
    pub fn single(node: NodeId, addr: &str) -> Vec<u8> {
        let image = MembershipImage { configs: vec![vec![node]], nodes: vec![(node, addr.to_owned())] };
        match rkyv::to_bytes::<rkyv::rancor::Error>(&image) {
            Ok(bytes) => bytes.into_vec(),
            Err(error) => unreachable!("membership encoding failed: {error}"),
        }
    }

    pub fn decode(bytes: &[u8]) -> io::Result<RaftMembership> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let image = rkyv::from_bytes::<MembershipImage, rkyv::rancor::Error>(&aligned)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, format!("membership image: {error}")))?;
        let configs: Vec<BTreeSet<NodeId>> =
            image.configs.into_iter().map(|config| config.into_iter().collect()).collect();
        let nodes: BTreeMap<NodeId, PeerNode> =
            image.nodes.into_iter().map(|(id, addr)| (id, PeerNode { addr })).collect();
        Membership::new(configs, nodes)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, format!("membership image: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_survives_the_engine_round_trip() {
        let nodes: BTreeMap<NodeId, PeerNode> =
            (1..=4).map(|id| (id, PeerNode { addr: format!("127.0.0.1:{}", 7000 + id) })).collect();
        let membership =
            Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).unwrap_or_else(|e| panic!("membership: {e}"));
        let decoded =
            MembershipImage::decode(&MembershipImage::encode(&membership)).unwrap_or_else(|e| panic!("decode: {e}"));
        assert_eq!(decoded, membership);
        assert_eq!(decoded.learner_ids().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn damaged_membership_bytes_are_an_error_not_a_panic() {
        let error = MembershipImage::decode(&[1, 2, 3]).err();
        assert_eq!(error.map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
    }

    #[test]
    fn a_batch_travels_as_the_frame_its_leader_wrote() {
        let entry = LogEntry::batch(EngineLogId::new(3, 9), 42, vec![engine::Command::Tick; 4]);
        let frame = EntryFrame::encode(&entry, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        let raft_entry = entry_from_engine(FramedEntry { entry: entry.clone(), frame: frame.clone() })
            .unwrap_or_else(|e| panic!("{e}"));
        // What the leader sends is the frame itself, not a new encoding.
        let sent = frame_of(raft_entry, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        assert!(std::ptr::eq(sent.as_bytes(), frame.as_bytes()), "the frame was re-encoded");
        // The follower decodes it once and keeps it for its WAL.
        let received = entry_from_frame(EntryFrame::from_received(sent.as_bytes().to_vec()), 1 << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        let (decoded, kept) = entry_to_engine(received);
        assert_eq!(decoded, entry);
        assert_eq!(kept, Some(frame));
    }

    #[test]
    fn a_damaged_frame_from_a_peer_is_an_error_not_a_panic() {
        let entry = LogEntry::blank(EngineLogId::new(1, 1));
        let mut bytes = EntryFrame::encode(&entry, 1 << 20).unwrap_or_else(|e| panic!("{e}")).as_bytes().to_vec();
        bytes[14] ^= 1;
        let error = entry_from_frame(EntryFrame::from_received(bytes), 1 << 20).err();
        assert_eq!(error.map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
    }

    #[test]
    fn votes_convert_both_ways() {
        let vote = EngineVote { term: 7, voted_for: Some(2), committed: true };
        assert_eq!(vote_to_engine(&vote_from_engine(vote)), vote);
    }
}
