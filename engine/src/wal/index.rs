//! The in-memory map of a WAL: where each live entry is, and the log's
//! durable metadata. Recovery rebuilds it by replaying records through the
//! same methods the writer uses, so both obey one set of rules.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use crate::raft_log::{LogId, Vote};
use crate::wal::record::Meta;
use crate::wal::tail::Tail;

/// Where one entry's frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub seq: u64,
    pub offset: u64,
    pub len: u32,
    pub term: u64,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Largest entry index written into it (live or not).
    pub index_max: Option<u64>,
}

/// A broken log rule, found when replaying or appending.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RuleError {
    NotContiguous { last: Option<u64>, got: u64 },
    TermRegressed { index: u64, term: u64, last_term: u64 },
}

/// Checks that `log_id` may follow `last`: the next index, a term not lower.
/// No entry takes the last index a u64 holds: the index's arithmetic (the
/// end of a range, the entry after) stays in range, for the writer and
/// recovery alike.
pub(crate) fn check_follows(last: Option<LogId>, log_id: LogId) -> Result<(), RuleError> {
    if log_id.index == u64::MAX {
        return Err(RuleError::NotContiguous { last: last.map(|last| last.index), got: log_id.index });
    }
    let Some(last) = last else {
        return Ok(());
    };
    if Some(log_id.index) != last.index.checked_add(1) {
        return Err(RuleError::NotContiguous { last: Some(last.index), got: log_id.index });
    }
    if log_id.term < last.term {
        return Err(RuleError::TermRegressed { index: log_id.index, term: log_id.term, last_term: last.term });
    }
    Ok(())
}

#[derive(Debug, Default)]
pub(crate) struct LogIndex {
    /// Index of `locs[0]`.
    pub first_index: u64,
    pub locs: VecDeque<Loc>,
    /// The last entry ever accepted, live or purged: the next must follow it.
    pub last_seen: Option<LogId>,
    pub meta: Meta,
    pub segments: BTreeMap<u64, Segment>,
    /// The newest live entries, in memory (see `tail.rs`).
    pub tail: Tail,
}

impl LogIndex {
    /// The id of the last live entry, or the purge point if none is live.
    pub fn last_log_id(&self) -> Option<LogId> {
        match self.locs.back() {
            Some(loc) => Some(LogId::new(loc.term, self.first_index + self.locs.len() as u64 - 1)),
            None => self.meta.purged,
        }
    }

    pub fn term_of(&self, index: u64) -> Option<u64> {
        if index >= self.first_index
            && let Some(loc) = self.locs.get(usize::try_from(index - self.first_index).ok()?)
        {
            return Some(loc.term);
        }
        self.meta.purged.filter(|purged| purged.index == index).map(|purged| purged.term)
    }

    /// Checks that `log_id` may follow the log.
    pub fn check_next(&self, log_id: LogId) -> Result<(), RuleError> {
        check_follows(self.last_seen, log_id)
    }

    /// Records an entry (already checked with `check_next`).
    pub fn push(&mut self, log_id: LogId, loc: Loc) {
        debug_assert_eq!(self.check_next(log_id), Ok(()));
        self.last_seen = Some(log_id);
        if let Some(segment) = self.segments.get_mut(&loc.seq) {
            segment.index_max = Some(segment.index_max.map_or(log_id.index, |max| max.max(log_id.index)));
        }
        if self.meta.purged.is_some_and(|purged| log_id.index <= purged.index) {
            // Still on disk in an old segment, but purged: not live.
            return;
        }
        if self.locs.is_empty() {
            self.first_index = log_id.index;
        }
        debug_assert_eq!(self.first_index + self.locs.len() as u64, log_id.index);
        self.locs.push_back(loc);
    }

    /// Drops every entry after `keep` (all of them for `None`). The record
    /// carries the kept entry's whole id: after old segments are deleted the
    /// entry itself may be gone, but the next append must still follow it.
    pub fn truncate(&mut self, keep: Option<LogId>) {
        // Past the last entry there is nothing to drop (openraft's storage
        // suite asks for it). Taking `keep` as the last entry would leave a
        // gap that the next entry's position skips over.
        if keep.is_some_and(|keep| self.last_seen.is_none_or(|last| keep.index > last.index)) {
            return;
        }
        let keep_len = match keep {
            Some(keep) if keep.index >= self.first_index => {
                usize::try_from(keep.index - self.first_index + 1).unwrap_or(usize::MAX)
            }
            _ => 0,
        };
        self.locs.truncate(keep_len);
        self.tail.truncate(keep.map(|keep| keep.index));
        self.last_seen = keep.or(self.meta.purged);
    }

    /// Forgets every entry up to `upto`, inclusive; later appends follow it
    /// if it is beyond the last entry (a snapshot installed past the log).
    pub fn purge(&mut self, upto: LogId) {
        if self.meta.purged.is_some_and(|purged| purged.index >= upto.index) {
            return;
        }
        self.tail.purge(upto.index);
        while !self.locs.is_empty() && self.first_index <= upto.index {
            self.locs.pop_front();
            self.first_index += 1;
        }
        if self.locs.is_empty() {
            // At the last index no entry can follow (`check_follows`).
            self.first_index = upto.index.saturating_add(1);
        }
        self.meta.purged = Some(upto);
        if self.last_seen.is_none_or(|last| last.index < upto.index) {
            self.last_seen = Some(upto);
        }
    }

    pub fn set_vote(&mut self, vote: Vote) {
        self.meta.vote = Some(vote);
    }

    /// Locations of live entries in `[start, end)`.
    pub fn range(&self, start: u64, end: u64) -> Vec<(u64, Loc)> {
        let start = start.max(self.first_index);
        let end = end.min(self.first_index + self.locs.len() as u64);
        (start..end)
            .filter_map(|index| {
                let position = usize::try_from(index - self.first_index).ok()?;
                self.locs.get(position).map(|loc| (index, *loc))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(seq: u64) -> Loc {
        Loc { seq, offset: 0, len: 1, term: 0 }
    }

    #[test]
    fn entries_must_be_contiguous_with_terms_that_never_fall() {
        let mut index = LogIndex::default();
        index.push(LogId::new(1, 1), loc(1));
        assert_eq!(index.check_next(LogId::new(1, 3)), Err(RuleError::NotContiguous { last: Some(1), got: 3 }));
        assert!(matches!(index.check_next(LogId::new(0, 2)), Err(RuleError::TermRegressed { .. })));
        assert_eq!(index.check_next(LogId::new(2, 2)), Ok(()));
    }

    #[test]
    fn truncate_then_append_continues_after_the_kept_entry() {
        let mut index = LogIndex::default();
        for i in 1..=5 {
            index.push(LogId::new(1, i), Loc { term: 1, ..loc(1) });
        }
        index.truncate(Some(LogId::new(1, 3)));
        assert_eq!(index.last_log_id(), Some(LogId::new(1, 3)));
        assert_eq!(index.check_next(LogId::new(2, 4)), Ok(()));
        index.truncate(None);
        assert_eq!(index.last_log_id(), None);
        assert_eq!(index.check_next(LogId::new(2, 1)), Ok(()));
    }

    #[test]
    fn purge_past_the_end_moves_the_next_index() {
        let mut index = LogIndex::default();
        index.push(LogId::new(1, 1), Loc { term: 1, ..loc(1) });
        index.purge(LogId::new(3, 10));
        assert_eq!(index.last_log_id(), Some(LogId::new(3, 10)));
        assert_eq!(index.check_next(LogId::new(3, 11)), Ok(()));
        assert_eq!(index.range(0, 100), vec![]);
    }
}
