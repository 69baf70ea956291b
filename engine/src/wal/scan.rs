//! Reading a log back from segment files that no live WAL owns: a backup's
//! copies and an archive's (see `archive.rs`). Nothing is written, so a
//! hard-linked segment that is still a node's is never changed.
//!
//! The records replay by the writer's rules: an entry rewrites everything
//! from its index on (what a truncation left behind), a truncation record
//! drops the entries after it, and the entries must run contiguously from
//! the first index asked for. Only the last file may end in a torn frame
//! (a copy taken while the node was appending): the scan stops there.

use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use crate::error::WalError;
use crate::raft_log::LogEntry;
use crate::wal::record::{FrameError, Record, SEGMENT_FORMAT, SEGMENT_MAGIC, read_frame};

/// Entries read back from segment files.
#[derive(Debug, Default)]
pub struct ScannedLog {
    /// Every entry after the index asked for, contiguous, in order.
    pub entries: Vec<LogEntry>,
    /// Where the last file stopped in a torn or partial frame, if it did.
    pub torn_at: Option<(PathBuf, u64)>,
}

/// The sequence number in a segment file's name (`NNNN….wal`, 20 digits).
pub fn segment_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".wal")?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

/// Reads `segments` (consecutive sequence numbers, oldest first) and returns
/// the entries with an index above `after` (for `None`, every entry from the
/// first one found: openraft's logs start at index 0). An entry at or below
/// `after` is skipped. The others must run on from the first index wanted
/// without a gap: a missing segment or entry is an error naming the file.
pub fn scan_segments(segments: &[PathBuf], after: Option<u64>) -> Result<ScannedLog, WalError> {
    let mut first_wanted = after.map(|after| after.saturating_add(1));
    let mut log = ScannedLog::default();
    let mut scratch = AlignedVec::new();
    let mut previous_seq: Option<u64> = None;
    for (position, path) in segments.iter().enumerate() {
        let corrupt = |offset: u64, reason: String| WalError::Corrupt { path: path.clone(), offset, reason };
        let seq = segment_seq(path).ok_or_else(|| corrupt(0, "not a WAL segment name".into()))?;
        if let Some(previous) = previous_seq
            && previous.checked_add(1) != Some(seq)
        {
            return Err(corrupt(0, format!("segment {} is missing", previous.saturating_add(1))));
        }
        previous_seq = Some(seq);
        let is_last = position + 1 == segments.len();
        let bytes = std::fs::read(path).map_err(|source| WalError::Io { path: path.clone(), source })?;
        let mut offset = 0usize;
        while offset < bytes.len() {
            let (record, len) = match read_frame(&bytes[offset..], &mut scratch) {
                Ok(read) => read,
                Err(FrameError::ShortHeader | FrameError::ShortPayload { .. } | FrameError::BadChecksum { .. })
                    if is_last =>
                {
                    // A copy of the segment the node was appending to: the
                    // frame being written when it was copied is cut short.
                    log.torn_at = Some((path.clone(), offset as u64));
                    break;
                }
                Err(error) => return Err(corrupt(offset as u64, error.reason())),
            };
            match record {
                Record::Header(header) => {
                    if offset != 0
                        || header.magic != SEGMENT_MAGIC
                        || header.format != SEGMENT_FORMAT
                        || header.seq != seq
                    {
                        return Err(corrupt(offset as u64, "bad or misplaced segment header".into()));
                    }
                }
                _ if offset == 0 => return Err(corrupt(0, "segment does not start with a header".into())),
                Record::Entry(entry) => {
                    let index = entry.log_id.index;
                    let first_wanted = *first_wanted.get_or_insert(index);
                    if index >= first_wanted {
                        // Position of `index` in `entries`: a rewrite drops
                        // what followed; a jump past the end is a gap.
                        let position = usize::try_from(index - first_wanted).unwrap_or(usize::MAX);
                        if position > log.entries.len() {
                            let expected = first_wanted + log.entries.len() as u64;
                            return Err(corrupt(
                                offset as u64,
                                format!("entry {index} found where entry {expected} was expected: entries are missing"),
                            ));
                        }
                        log.entries.truncate(position);
                        log.entries.push(entry);
                    }
                }
                Record::Truncate(keep) => {
                    // Entries up to `keep` stay: those from `first_wanted`.
                    let kept = match (keep, first_wanted) {
                        (Some(keep), Some(first)) if keep.index >= first => keep.index - first + 1,
                        _ => 0,
                    };
                    log.entries.truncate(usize::try_from(kept).unwrap_or(usize::MAX));
                }
                Record::Vote(_) | Record::Committed(_) | Record::Purge(_) => {}
            }
            offset += len;
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WalConfig;
    use crate::raft_log::LogId;
    use crate::wal::Wal;

    fn entry(term: u64, index: u64) -> LogEntry {
        LogEntry::batch(LogId::new(term, index), index * 10, vec![crate::Command::Tick])
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| segment_seq(p).is_some())
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn a_scan_reads_what_the_writer_wrote_with_truncations_applied() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = WalConfig { segment_bytes_max: 512, ..WalConfig::default() };
        let mut wal = Wal::open(dir.path(), config).unwrap_or_else(|e| panic!("{e}"));
        for index in 1..=40 {
            wal.append([&entry(1, index)]).unwrap_or_else(|e| panic!("{e}"));
        }
        wal.truncate_after(Some(LogId::new(1, 30))).unwrap_or_else(|e| panic!("{e}"));
        for index in 31..=35 {
            wal.append([&entry(2, index)]).unwrap_or_else(|e| panic!("{e}"));
        }
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
        let paths = segments(dir.path());
        assert!(paths.len() > 2, "the test wants several segments");

        let log = scan_segments(&paths, Some(10)).unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<LogId> = log.entries.iter().map(|e| e.log_id).collect();
        let expected: Vec<LogId> =
            (11..=30).map(|i| LogId::new(1, i)).chain((31..=35).map(|i| LogId::new(2, i))).collect();
        assert_eq!(ids, expected);
        assert_eq!(log.torn_at, None);
    }

    #[test]
    fn a_missing_segment_is_an_error_not_a_shorter_log() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = WalConfig { segment_bytes_max: 512, ..WalConfig::default() };
        let mut wal = Wal::open(dir.path(), config).unwrap_or_else(|e| panic!("{e}"));
        for index in 1..=40 {
            wal.append([&entry(1, index)]).unwrap_or_else(|e| panic!("{e}"));
        }
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
        let mut paths = segments(dir.path());
        paths.remove(1);
        assert!(matches!(scan_segments(&paths, None), Err(WalError::Corrupt { .. })));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Whatever the writer did (appends, truncations, new terms, rolls),
        /// a scan of its segments gives the log its reader gives.
        #[test]
        fn a_scan_reads_the_log_the_writer_keeps(
            steps in proptest::collection::vec((1u64..12, 0u64..8, proptest::bool::ANY), 1..24),
            after in 0u64..20,
        ) {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let config = WalConfig { segment_bytes_max: 400, ..WalConfig::default() };
            let mut wal = Wal::open(dir.path(), config).unwrap_or_else(|e| panic!("{e}"));
            let (mut last, mut term) = (0u64, 1u64);
            for (appended, back, truncate) in steps {
                if truncate && last > 0 {
                    last = last.saturating_sub(back).max(1);
                    let keep_term = wal.reader().term_of(last).unwrap_or(term);
                    wal.truncate_after(Some(LogId::new(keep_term, last))).unwrap_or_else(|e| panic!("{e}"));
                    term += 1;
                }
                for _ in 0..appended {
                    last += 1;
                    wal.append([&entry(term, last)]).unwrap_or_else(|e| panic!("{e}"));
                }
            }
            wal.sync().unwrap_or_else(|e| panic!("{e}"));
            let expected: Vec<LogId> = wal
                .reader()
                .read_range(after + 1, last + 1)
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|e| e.log_id)
                .collect();
            let scanned = scan_segments(&segments(dir.path()), Some(after)).unwrap_or_else(|e| panic!("{e}"));
            let got: Vec<LogId> = scanned.entries.iter().map(|e| e.log_id).collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }
}
