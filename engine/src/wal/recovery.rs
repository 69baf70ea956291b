//! Recovery: rebuild a WAL's index from its segments.
//!
//! Every frame is read and checked (CRC, archive, log rules) and replayed
//! through `LogIndex`, the same code the writer uses. A damaged frame is
//! treated as a torn write only where a crash can leave one: at the end of
//! the last segment, when nothing valid could follow it (the frame runs past
//! the end of the file, is the last frame in it, or only zeros follow). That
//! tail is cut off and the log is an exact prefix of what was appended.
//! Damage anywhere else is corruption: recovery refuses, naming the file and
//! the byte offset, and never skips a record silently.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use rkyv::util::AlignedVec;

use crate::error::WalError;
use crate::wal::index::{Loc, LogIndex, RuleError, Segment};
use crate::wal::record::{FrameError, Record, SEGMENT_FORMAT, SEGMENT_MAGIC, read_frame};
use crate::wal::{segment_name, sync_dir};

/// The segment appends continue in.
#[derive(Debug)]
pub(crate) struct Active {
    pub seq: u64,
    pub file: Arc<File>,
    pub len: u64,
    pub header_len: u64,
}

#[derive(Debug)]
pub(crate) struct Recovered {
    pub index: LogIndex,
    /// `None` when the directory held no segment.
    pub active: Option<Active>,
}

fn segment_seqs(dir: &Path) -> Result<Vec<u64>, WalError> {
    let io = |source| WalError::Io { path: dir.to_path_buf(), source };
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".wal") else {
            continue;
        };
        if stem.len() == 20
            && let Ok(seq) = stem.parse::<u64>()
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

pub(crate) fn recover(dir: &Path) -> Result<Recovered, WalError> {
    let seqs = segment_seqs(dir)?;
    let mut index = LogIndex::default();
    let mut active = None;
    let mut scratch = AlignedVec::new();
    for (position, &seq) in seqs.iter().enumerate() {
        let path = dir.join(segment_name(seq));
        let corrupt = |offset: u64, reason: String| WalError::Corrupt { path: path.clone(), offset, reason };
        if position > 0 && seq != seqs[position - 1] + 1 {
            return Err(corrupt(0, format!("segment {} is missing", seqs[position - 1] + 1)));
        }
        let is_last = position + 1 == seqs.len();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| WalError::Io { path: path.clone(), source })?;
        let bytes = std::fs::read(&path).map_err(|source| WalError::Io { path: path.clone(), source })?;
        let file = Arc::new(file);
        index.segments.insert(seq, Segment { path: path.clone(), file: Arc::clone(&file), index_max: None });

        let mut offset = 0usize;
        let mut header_len = 0usize;
        while offset < bytes.len() {
            match read_frame(&bytes[offset..], &mut scratch) {
                Ok((record, len)) => {
                    replay(&mut index, seq, offset, len, record, position == 0, &corrupt)?;
                    if offset == 0 {
                        header_len = len;
                    }
                    offset += len;
                }
                Err(error) => {
                    if !(is_last && is_torn_tail(&error, &bytes[offset..])) {
                        return Err(corrupt(offset as u64, error.reason()));
                    }
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        reason = %error.reason(),
                        "cutting a torn write off the end of the WAL"
                    );
                    cut_tail(&file, &path, offset as u64)?;
                    break;
                }
            }
        }
        if header_len == 0 {
            // Not even the header survived: only the last segment, created
            // just before a crash, can be like this. It holds nothing.
            if !is_last {
                return Err(corrupt(0, "segment has no header".into()));
            }
            index.segments.remove(&seq);
            std::fs::remove_file(&path).map_err(|source| WalError::Io { path: path.clone(), source })?;
            sync_dir(dir)?;
            break;
        }
        if is_last {
            active = Some(Active { seq, file, len: offset as u64, header_len: header_len as u64 });
        }
    }
    if active.is_none()
        && let Some((&seq, segment)) = index.segments.iter().next_back()
    {
        // The last segment was an empty shell and is gone; continue in the
        // one before it.
        let len = segment.file.metadata().map_err(|source| WalError::Io { path: segment.path.clone(), source })?.len();
        active = Some(Active { seq, file: Arc::clone(&segment.file), len, header_len: len });
    }
    Ok(Recovered { index, active })
}

/// Applies one valid frame to the index, checking the log's rules.
fn replay(
    index: &mut LogIndex,
    seq: u64,
    offset: usize,
    len: usize,
    record: Record,
    first_segment: bool,
    corrupt: &impl Fn(u64, String) -> WalError,
) -> Result<(), WalError> {
    let at = offset as u64;
    match record {
        Record::Header(header) => {
            if offset != 0 {
                return Err(corrupt(at, "segment header in the middle of a segment".into()));
            }
            if header.magic != SEGMENT_MAGIC || header.format != SEGMENT_FORMAT || header.seq != seq {
                return Err(corrupt(at, format!("header names format {} segment {}", header.format, header.seq)));
            }
            if first_segment {
                index.meta = header.meta;
                index.last_seen = header.last;
                if let Some(purged) = header.meta.purged {
                    index.first_index = purged.index.saturating_add(1);
                }
            } else if header.meta != index.meta || header.last != index.last_seen {
                return Err(corrupt(at, "segment header disagrees with the log before it".into()));
            }
        }
        _ if offset == 0 => return Err(corrupt(at, "segment does not start with a header".into())),
        Record::Entry(entry) => {
            index.check_next(entry.log_id).map_err(|error| match error {
                RuleError::NotContiguous { last, got } => corrupt(at, format!("entry {got} follows entry {last:?}")),
                RuleError::TermRegressed { index, term, last_term } => {
                    corrupt(at, format!("entry {index} has term {term}, below {last_term}"))
                }
            })?;
            let loc = Loc { seq, offset: at, len: u32::try_from(len).unwrap_or(u32::MAX), term: entry.log_id.term };
            index.push(entry.log_id, loc);
        }
        Record::Vote(vote) => index.set_vote(vote),
        Record::Committed(committed) => index.meta.committed = committed,
        Record::Truncate(keep) => index.truncate(keep),
        Record::Purge(upto) => index.purge(upto),
    }
    Ok(())
}

/// Whether a bad frame at the end of the last segment is what a crash during
/// a write leaves behind, rather than damage to data written earlier.
fn is_torn_tail(error: &FrameError, rest: &[u8]) -> bool {
    let only_zeros = rest.iter().all(|&byte| byte == 0);
    match error {
        FrameError::ShortHeader | FrameError::ShortPayload { .. } => true,
        FrameError::BadChecksum { .. } => only_zeros || error.frame_len().is_some_and(|len| len >= rest.len()),
        // A frame whose checksum holds was written whole: bad content is a
        // bug or tampering, never a torn write.
        FrameError::BadContent { .. } => false,
    }
}

fn cut_tail(file: &File, path: &Path, len: u64) -> Result<(), WalError> {
    let io = |source| WalError::Io { path: path.to_path_buf(), source };
    file.set_len(len).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::FRAME_HEADER_LEN;

    #[test]
    fn a_torn_tail_is_a_short_or_last_frame_or_zeros() {
        assert!(is_torn_tail(&FrameError::ShortHeader, &[1, 2]));
        assert!(is_torn_tail(&FrameError::ShortPayload { len: 99 }, &[0; 20]));
        assert!(is_torn_tail(&FrameError::BadChecksum { len: 8 }, &[7; FRAME_HEADER_LEN + 8]));
        assert!(is_torn_tail(&FrameError::BadChecksum { len: 8 }, &[0; 64]));
        assert!(!is_torn_tail(&FrameError::BadChecksum { len: 8 }, &[7; 64]), "valid-looking data follows");
        assert!(!is_torn_tail(&FrameError::BadContent { len: 8, reason: String::new() }, &[7; 20]));
    }
}
