//! The newest entries of a log, kept in memory with their frames.
//!
//! A leader appends an entry and, a moment later, applies it and sends it to
//! every follower; a follower appends what it received and applies it. With
//! the tail in memory none of those reads touches the disk or decodes an
//! archive: an entry is encoded once (by the leader's append) and decoded
//! once (by a follower's receipt). Reads older than the tail (a follower far
//! behind, recovery) go to the segment files.
//!
//! The tail is a contiguous run of entries ending at the log's last entry,
//! bounded in frame bytes; it follows the log's truncations and purges.

use std::collections::VecDeque;

use crate::raft_log::LogEntry;
use crate::wal::record::EntryFrame;

/// An entry with the frame that encodes it in the WAL.
#[derive(Clone, Debug)]
pub struct FramedEntry {
    pub entry: LogEntry,
    pub frame: EntryFrame,
}

#[derive(Debug, Default)]
pub(crate) struct Tail {
    entries: VecDeque<FramedEntry>,
    /// Frame bytes held. The decoded entries take about as much again.
    bytes: usize,
    bytes_max: usize,
}

impl Tail {
    pub fn new(bytes_max: usize) -> Self {
        Self { entries: VecDeque::new(), bytes: 0, bytes_max }
    }

    /// Index of the first entry held.
    pub fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|framed| framed.entry.log_id.index)
    }

    /// Adds the log's new last entry, dropping the oldest past the bound.
    pub fn push(&mut self, framed: FramedEntry) {
        let follows = self.entries.back().is_none_or(|last| last.entry.log_id.index + 1 == framed.entry.log_id.index);
        if !follows {
            self.clear();
        }
        self.bytes += framed.frame.len();
        self.entries.push_back(framed);
        while self.bytes > self.bytes_max
            && let Some(oldest) = self.entries.pop_front()
        {
            self.bytes -= oldest.frame.len();
        }
        self.check();
    }

    /// Drops entries after index `keep` (all for `None`).
    pub fn truncate(&mut self, keep: Option<u64>) {
        while let Some(last) = self.entries.back()
            && keep.is_none_or(|keep| last.entry.log_id.index > keep)
        {
            self.bytes -= last.frame.len();
            self.entries.pop_back();
        }
        self.check();
    }

    /// Drops entries up to index `upto`, inclusive.
    pub fn purge(&mut self, upto: u64) {
        while let Some(first) = self.entries.front()
            && first.entry.log_id.index <= upto
        {
            self.bytes -= first.frame.len();
            self.entries.pop_front();
        }
        self.check();
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entries with index in `[start, end)` that the tail holds, in order.
    pub fn range(&self, start: u64, end: u64) -> impl Iterator<Item = &FramedEntry> {
        let first = self.first_index().unwrap_or(u64::MAX);
        let skip = usize::try_from(start.saturating_sub(first)).unwrap_or(usize::MAX);
        let take = usize::try_from(end.saturating_sub(start.max(first))).unwrap_or(usize::MAX);
        self.entries.iter().skip(skip).take(take)
    }

    /// The tail is contiguous and its byte count is the sum of its frames.
    fn check(&self) {
        debug_assert_eq!(self.bytes, self.entries.iter().map(|framed| framed.frame.len()).sum::<usize>());
        debug_assert!(
            self.entries
                .iter()
                .zip(self.entries.iter().skip(1))
                .all(|(a, b)| a.entry.log_id.index + 1 == b.entry.log_id.index)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::raft_log::LogId;

    fn framed(index: u64) -> FramedEntry {
        let entry = LogEntry::batch(LogId::new(1, index), index, vec![Command::Tick]);
        let frame = EntryFrame::encode(&entry, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        FramedEntry { entry, frame }
    }

    fn indexes(tail: &Tail, start: u64, end: u64) -> Vec<u64> {
        tail.range(start, end).map(|framed| framed.entry.log_id.index).collect()
    }

    #[test]
    fn the_tail_keeps_the_newest_entries_within_its_bound() {
        let size = framed(1).frame.len();
        let mut tail = Tail::new(size * 3);
        for index in 1..=5 {
            tail.push(framed(index));
        }
        assert_eq!(indexes(&tail, 0, u64::MAX), vec![3, 4, 5]);
        assert_eq!(indexes(&tail, 4, 5), vec![4]);
        assert_eq!(indexes(&tail, 1, 4), vec![3]);
        assert!(indexes(&tail, 6, 9).is_empty());
    }

    #[test]
    fn truncation_and_purge_follow_the_log() {
        let mut tail = Tail::new(1 << 20);
        for index in 1..=6 {
            tail.push(framed(index));
        }
        tail.truncate(Some(4));
        tail.purge(2);
        assert_eq!(indexes(&tail, 0, u64::MAX), vec![3, 4]);
        tail.push(framed(5));
        assert_eq!(indexes(&tail, 0, u64::MAX), vec![3, 4, 5]);
        // An entry that does not follow (the log jumped past a snapshot)
        // restarts the tail rather than leave a gap in it.
        tail.push(framed(9));
        assert_eq!(indexes(&tail, 0, u64::MAX), vec![9]);
        tail.truncate(None);
        assert_eq!(tail.first_index(), None);
    }
}
