//! The log's vocabulary: log ids, votes, entries and the batch of commands an
//! entry carries.
//!
//! These types are Raft-shaped but know nothing of a Raft library. A log id is
//! `(term, index)`, the "committed leader id" of Raft's standard mode being the
//! term alone; a vote is `(term, voted_for, committed)`. Membership entries are
//! carried as opaque bytes: the cluster layer encodes them, the engine only
//! stores them and hands them back (in the WAL, in `applied_state`, in
//! snapshots). So `RaftLogStorage` and `RaftStateMachine` sit directly on the
//! WAL and the shard state, converting ids field for field.

use std::fmt;
use std::sync::Arc;

use rkyv::with::Unshare;
use rkyv::{Archive, Deserialize, Serialize};

use crate::cmd::Command;
use crate::ids::RequestId;

/// A log position: the term of the leader that wrote the entry, and its index.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct LogId {
    pub term: u64,
    pub index: u64,
}

impl LogId {
    pub const fn new(term: u64, index: u64) -> Self {
        Self { term, index }
    }
}

impl fmt::Debug for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.term, self.index)
    }
}

impl From<&ArchivedLogId> for LogId {
    fn from(archived: &ArchivedLogId) -> Self {
        Self { term: archived.term.to_native(), index: archived.index.to_native() }
    }
}

/// A Raft vote: in `term`, this node voted for `voted_for`; `committed` once a
/// quorum granted it (the node then knows `voted_for` is the leader).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct Vote {
    pub term: u64,
    pub voted_for: Option<u64>,
    pub committed: bool,
}

/// The commands of one log entry, stamped by the leader when it proposed them.
///
/// `ts_ms` is log time: the only clock `apply` knows. The leader stamps
/// `max(now, last ts)`, and `apply` clamps again, so log time never goes back.
///
/// `request_ids` is either empty (no command is deduplicated) or holds one id
/// per command, in order. A command whose id `apply` still remembers is not
/// applied again: it answers the outcome of the first (see `state.rs`, the
/// dedup window). A batch whose ids are neither empty nor one per command
/// came from a buggy or hostile peer; `apply` treats it as carrying no ids
/// (every command applies, nothing is remembered), the same on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
pub struct Batch {
    pub ts_ms: u64,
    pub commands: Vec<Command>,
    pub request_ids: Vec<RequestId>,
}

impl Batch {
    /// The ids `apply` uses: `request_ids` when there is one per command,
    /// otherwise none.
    pub fn effective_request_ids(&self) -> &[RequestId] {
        if self.request_ids.len() == self.commands.len() { &self.request_ids } else { &[] }
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch(ts={}, commands={}", self.ts_ms, self.commands.len())?;
        if !self.request_ids.is_empty() {
            write!(f, ", request_ids={}", self.request_ids.len())?;
        }
        f.write_str(")")
    }
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Written by a new leader to commit its term; changes nothing.
    Blank,
    /// Commands for the shard. Shared, so that reading an entry back from
    /// the log (to apply it, to replicate it) copies a pointer, not the
    /// commands. Archived inline: the pointer is not part of the format.
    Batch(#[rkyv(with = Unshare)] Arc<Batch>),
    /// A cluster membership, encoded by the cluster layer. Stored, not read.
    Membership(Vec<u8>),
}

/// One log entry: the unit of the WAL and of replication.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct LogEntry {
    pub log_id: LogId,
    pub payload: EntryPayload,
}

impl LogEntry {
    /// A batch without request ids: no command is deduplicated.
    pub fn batch(log_id: LogId, ts_ms: u64, commands: Vec<Command>) -> Self {
        Self::batch_with_ids(log_id, ts_ms, commands, Vec::new())
    }

    /// A batch whose commands carry request ids, one per command, so a
    /// retried command is applied once (see [`Batch`]).
    pub fn batch_with_ids(log_id: LogId, ts_ms: u64, commands: Vec<Command>, request_ids: Vec<RequestId>) -> Self {
        Self { log_id, payload: EntryPayload::Batch(Arc::new(Batch { ts_ms, commands, request_ids })) }
    }

    pub fn blank(log_id: LogId) -> Self {
        Self { log_id, payload: EntryPayload::Blank }
    }

    /// Commands in this entry (0 for blank and membership entries).
    pub fn command_count(&self) -> usize {
        match &self.payload {
            EntryPayload::Batch(batch) => batch.commands.len(),
            EntryPayload::Blank | EntryPayload::Membership(_) => 0,
        }
    }
}

/// The last membership the state machine applied, with the id of its entry.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct StoredMembership {
    pub log_id: LogId,
    pub config: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_displays_its_time_and_counts() {
        let plain = Batch { ts_ms: 123, commands: vec![Command::Tick; 5], request_ids: Vec::new() };
        assert_eq!(plain.to_string(), "batch(ts=123, commands=5)");
        let tagged = Batch { request_ids: vec![RequestId([0; 16]); 5], ..plain };
        assert_eq!(tagged.to_string(), "batch(ts=123, commands=5, request_ids=5)");
    }

    #[test]
    fn request_ids_count_only_when_there_is_one_per_command() {
        let ids = vec![RequestId([1; 16]), RequestId([2; 16])];
        let matched = Batch { ts_ms: 0, commands: vec![Command::Tick; 2], request_ids: ids.clone() };
        assert_eq!(matched.effective_request_ids(), &ids[..]);
        let short = Batch { commands: vec![Command::Tick; 3], ..matched.clone() };
        assert!(short.effective_request_ids().is_empty());
        let long = Batch { commands: vec![Command::Tick; 1], ..matched };
        assert!(long.effective_request_ids().is_empty());
    }
}
