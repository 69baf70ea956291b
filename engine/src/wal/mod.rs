//! The write-ahead log of one shard: its Raft log.
//!
//! Segment files `NNNNNNNNNNNNNNNNNNNN.wal` (a 20-digit sequence number) hold
//! CRC-checked frames of rkyv records (`record.rs`). The first record of each
//! segment is a header repeating the log's durable metadata (vote, committed
//! id, purge point), so old segments can be deleted without losing it.
//!
//! * `append` writes entries with one `pwrite` and returns: they are readable
//!   at once (`WalReader`), durable later.
//! * `flush(callback)` queues the callback; a flusher thread runs one
//!   `fdatasync` for everything appended so far and then completes every
//!   queued callback (group commit). Nothing is acknowledged before its fsync.
//! * Truncation and purging are records too, so every change is one ordered
//!   append; segments are deleted only after the purge record is durable.
//! * `save_vote` appends a vote record and waits for its fsync.
//!
//! `open` recovers: it replays every record through the same rules the writer
//! obeys, cuts a torn tail off the last segment, and refuses to start, naming
//! the file and offset, on damage anywhere else.

mod archive;
mod flusher;
mod index;
mod record;
mod recovery;
pub mod scan;
mod tail;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use rkyv::util::AlignedVec;

use crate::config::WalConfig;
use crate::error::{WalError, WalFailure};
use crate::raft_log::{LogEntry, LogId, Vote};

use archive::Archiver;
use flusher::Flusher;
use index::{Loc, LogIndex, RuleError, Segment, check_follows};
use record::{Encoder, Meta, Record, RecordRef, SEGMENT_FORMAT, SEGMENT_MAGIC, SegmentHeader};
use tail::Tail;

pub use archive::{ArchiveConfig, ArchiveStats};
pub use flusher::{FlushCallback, WalStats};
pub use record::EntryFrame;
pub use tail::FramedEntry;

/// What a log holds, as Raft asks for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    /// The last purged entry's id.
    pub purged: Option<LogId>,
    /// The last entry's id, or `purged` when no entry is live.
    pub last: Option<LogId>,
}

/// The writer of one shard's WAL. One per shard; not shared.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    config: WalConfig,
    index: Arc<RwLock<LogIndex>>,
    active_seq: u64,
    active_file: Arc<File>,
    active_len: u64,
    /// Length of the active segment's header: a segment with nothing after
    /// its header takes any record, however large, instead of rolling.
    active_header_len: u64,
    encoder: Encoder,
    buffer: Vec<u8>,
    flusher: Flusher,
    counters: Arc<Counters>,
    /// Copies sealed segments to the archive before a purge deletes them.
    archiver: Option<Archiver>,
}

/// How entries were written and read (see `WalStats`).
#[derive(Debug, Default)]
struct Counters {
    encoded: AtomicU64,
    verbatim: AtomicU64,
    read_from_memory: AtomicU64,
    read_from_disk: AtomicU64,
}

fn bump(counter: &AtomicU64, by: usize) {
    counter.fetch_add(by as u64, Ordering::Relaxed);
}

/// One segment file of a live WAL, as a backup sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    pub seq: u64,
    pub path: PathBuf,
    /// Largest entry index written into it (live or not).
    pub index_max: Option<u64>,
    /// The segment appends go to: it may grow while it is read.
    pub active: bool,
}

/// A cheap, cloneable reader of the WAL, for replication tasks.
#[derive(Clone, Debug)]
pub struct WalReader {
    index: Arc<RwLock<LogIndex>>,
    record_bytes_max: usize,
    counters: Arc<Counters>,
}

pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

fn rule_error(error: RuleError) -> WalError {
    match error {
        RuleError::NotContiguous { last, got } => WalError::NotContiguous { last, got },
        RuleError::TermRegressed { index, term, last_term } => WalError::TermRegressed { index, term, last_term },
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, recovering what is on disk.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<Wal, WalError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let recovered = recovery::recover(&dir)?;
        let mut index = recovered.index;
        index.tail = Tail::new(usize::try_from(config.tail_bytes_max).unwrap_or(usize::MAX));
        let active = match recovered.active {
            Some(active) => active,
            None => {
                let (file, len) =
                    create_segment(&dir, 1, &index.meta, index.last_seen, &mut Encoder::default(), config)?;
                sync_dir(&dir)?;
                index
                    .segments
                    .insert(1, Segment { path: dir.join(segment_name(1)), file: Arc::clone(&file), index_max: None });
                recovery::Active { seq: 1, file, len, header_len: len }
            }
        };
        let index = Arc::new(RwLock::new(index));
        let flusher = Flusher::start(dir.clone()).map_err(io_error(&dir))?;
        Ok(Wal {
            dir,
            config,
            index,
            active_seq: active.seq,
            active_file: active.file,
            active_len: active.len,
            active_header_len: active.header_len,
            encoder: Encoder::default(),
            buffer: Vec::new(),
            flusher,
            counters: Arc::default(),
            archiver: None,
        })
    }

    /// From now on, segments a purge no longer needs are copied to
    /// `config.dir` (durably, on a thread of their own) before they are
    /// deleted; see `archive.rs`.
    pub fn set_archive(&mut self, config: ArchiveConfig) -> Result<Arc<ArchiveStats>, WalError> {
        let dir = config.dir.clone();
        let archiver =
            Archiver::start(config, self.dir.clone(), Arc::downgrade(&self.index)).map_err(io_error(&dir))?;
        let stats = archiver.stats();
        self.archiver = Some(archiver);
        Ok(stats)
    }

    pub fn reader(&self) -> WalReader {
        WalReader {
            index: Arc::clone(&self.index),
            record_bytes_max: self.config.record_bytes_max as usize,
            counters: Arc::clone(&self.counters),
        }
    }

    pub fn log_state(&self) -> LogState {
        let index = self.index.read();
        LogState { purged: index.meta.purged, last: index.last_log_id() }
    }

    pub fn vote(&self) -> Option<Vote> {
        self.index.read().meta.vote
    }

    pub fn committed(&self) -> Option<LogId> {
        self.index.read().meta.committed
    }

    pub fn stats(&self) -> WalStats {
        let counters = &self.counters;
        WalStats {
            entries_encoded: counters.encoded.load(Ordering::Relaxed),
            entries_verbatim: counters.verbatim.load(Ordering::Relaxed),
            entries_read_from_memory: counters.read_from_memory.load(Ordering::Relaxed),
            entries_read_from_disk: counters.read_from_disk.load(Ordering::Relaxed),
            ..self.flusher.stats()
        }
    }

    /// Writes entries; they are readable when this returns and durable after
    /// the next flush. Each must follow the log (next index, no lower term);
    /// on a broken rule nothing is written.
    pub fn append<'a>(&mut self, entries: impl IntoIterator<Item = &'a LogEntry>) -> Result<(), WalError> {
        self.append_framed(entries.into_iter().map(|entry| (entry, None)))
    }

    /// Writes entries as `append` does. An entry that comes with its frame
    /// (a follower's copy of the leader's record) is written verbatim; the
    /// others are encoded here, once. Both stay in the tail for reads.
    pub fn append_framed<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a LogEntry, Option<&'a EntryFrame>)>,
    ) -> Result<(), WalError> {
        self.flusher.check_healthy()?;
        self.buffer.clear();
        let record_bytes_max = self.config.record_bytes_max as usize;
        let mut pending: Vec<(&LogEntry, Option<&EntryFrame>, usize, usize)> = Vec::new();
        let mut next = self.index.read().last_seen;
        for (entry, frame) in entries {
            check_follows(next, entry.log_id).map_err(rule_error)?;
            next = Some(entry.log_id);
            let offset = self.buffer.len();
            let len = match frame {
                Some(frame) => {
                    // Decoded and checked whole when it was received.
                    debug_assert_eq!(frame.log_id(), Some(entry.log_id));
                    let payload_len = frame.len().saturating_sub(record::FRAME_HEADER_LEN);
                    if payload_len > record_bytes_max {
                        return Err(WalError::RecordTooLarge { len: payload_len, max: record_bytes_max });
                    }
                    self.buffer.extend_from_slice(frame.as_bytes());
                    frame.len()
                }
                None => self
                    .encoder
                    .encode(RecordRef::Entry(entry), record_bytes_max, &mut self.buffer)
                    .map_err(WalError::from)?,
            };
            pending.push((entry, frame, offset, len));
        }
        if pending.is_empty() {
            return Ok(());
        }
        if self.active_len > self.active_header_len
            && self.active_len + self.buffer.len() as u64 > self.config.segment_bytes_max
        {
            self.roll()?;
        }
        let base = self.active_len;
        self.write_buffer()?;
        let verbatim = pending.iter().filter(|(_, frame, _, _)| frame.is_some()).count();
        bump(&self.counters.verbatim, verbatim);
        bump(&self.counters.encoded, pending.len() - verbatim);
        let mut index = self.index.write();
        for (entry, frame, offset, len) in pending {
            let loc = Loc {
                seq: self.active_seq,
                offset: base + offset as u64,
                len: u32::try_from(len).unwrap_or(u32::MAX),
                term: entry.log_id.term,
            };
            index.push(entry.log_id, loc);
            let frame = match frame {
                Some(frame) => frame.clone(),
                None => EntryFrame::from_written(&self.buffer[offset..offset + len]),
            };
            index.tail.push(FramedEntry { entry: entry.clone(), frame });
        }
        Ok(())
    }

    /// The failure that poisoned this WAL (its kind and what failed), if one
    /// did. Once set, every append, flush and vote fails until a restart.
    pub fn failure(&self) -> Option<WalFailure> {
        self.flusher.failure()
    }

    /// Test hook: the next fsync round fails as a failing disk's would (EIO)
    /// and poisons the WAL; the callbacks it covers get the error.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn fail_next_sync(&self) {
        self.flusher.fail_next_sync();
    }

    /// Calls `callback` once everything appended so far is on disk (or with
    /// the error that stopped it). Returns at once.
    pub fn flush(&self, callback: FlushCallback) {
        self.flusher.flush(callback);
    }

    /// Waits until everything appended so far is on disk.
    pub fn sync(&self) -> Result<(), WalError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.flush(Box::new(move |result| {
            let _ = sender.send(result);
        }));
        match receiver.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(match WalFailure::inside(&source) {
                Some(failure) => WalError::Poisoned(failure.clone()),
                None => WalError::Io { path: self.dir.clone(), source },
            }),
            Err(_) => Err(self.flusher.check_healthy().err().unwrap_or_else(|| {
                WalError::Poisoned(WalFailure {
                    fault: crate::error::StorageFault::Io,
                    detail: "the WAL's flusher stopped".to_owned(),
                })
            })),
        }
    }

    /// Saves the vote durably before returning.
    pub fn save_vote(&mut self, vote: Vote) -> Result<(), WalError> {
        self.append_meta(RecordRef::Vote(&vote))?;
        self.index.write().set_vote(vote);
        self.sync()
    }

    /// Records the committed log id; durable with the next flush.
    pub fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), WalError> {
        self.append_meta(RecordRef::Committed(&committed))?;
        self.index.write().meta.committed = committed;
        Ok(())
    }

    /// Drops every entry after `keep` (all entries for `None`). Durable with
    /// the next flush; entries appended later follow `keep` (or the last
    /// entry, when `keep` is past it: nothing is dropped then).
    pub fn truncate_after(&mut self, keep: Option<LogId>) -> Result<(), WalError> {
        self.append_meta(RecordRef::Truncate(&keep))?;
        self.index.write().truncate(keep);
        Ok(())
    }

    /// Forgets every entry up to `upto`, inclusive, and deletes segments
    /// that hold nothing newer. Durable when this returns.
    pub fn purge(&mut self, upto: LogId) -> Result<(), WalError> {
        if self.index.read().meta.purged.is_some_and(|purged| purged.index >= upto.index) {
            return Ok(());
        }
        self.append_meta(RecordRef::Purge(&upto))?;
        self.index.write().purge(upto);
        self.sync()?;
        let doomed: Vec<(u64, PathBuf)> = {
            let index = self.index.read();
            index
                .segments
                .iter()
                .take_while(|(seq, segment)| {
                    **seq != self.active_seq && segment.index_max.is_none_or(|max| max <= upto.index)
                })
                .map(|(seq, segment)| (*seq, segment.path.clone()))
                .collect()
        };
        if doomed.is_empty() {
            return Ok(());
        }
        if let Some(archiver) = &self.archiver {
            // The archiver deletes each one once it is safe in the archive.
            for (seq, path) in doomed {
                archiver.queue(seq, path);
            }
            return Ok(());
        }
        for (seq, path) in &doomed {
            std::fs::remove_file(path).map_err(io_error(path))?;
            self.index.write().segments.remove(seq);
        }
        sync_dir(&self.dir)
    }

    fn append_meta(&mut self, record: RecordRef<'_>) -> Result<(), WalError> {
        self.flusher.check_healthy()?;
        self.buffer.clear();
        self.encoder.encode(record, self.config.record_bytes_max as usize, &mut self.buffer).map_err(WalError::from)?;
        self.write_buffer()
    }

    /// Writes `buffer` at the end of the active segment with one `pwrite`.
    fn write_buffer(&mut self) -> Result<(), WalError> {
        let path = self.dir.join(segment_name(self.active_seq));
        if let Err(source) = self.active_file.write_all_at(&self.buffer, self.active_len) {
            // A partial frame may be on disk; recovery cuts it off. Until a
            // restart, nothing more is written.
            let what = format!("write to WAL segment {}", self.active_seq);
            self.flusher.poison(WalFailure::new(&what, &source, false));
            return Err(WalError::Io { path, source });
        }
        self.active_len += self.buffer.len() as u64;
        self.flusher.mark_dirty(self.active_seq, Arc::clone(&self.active_file));
        Ok(())
    }

    /// Starts the next segment, headed by the current metadata. The old
    /// segment is synced first, so only the last segment can ever end in a
    /// torn write and the new header never claims more than the old segment
    /// durably holds.
    fn roll(&mut self) -> Result<(), WalError> {
        let old_path = self.dir.join(segment_name(self.active_seq));
        if let Err(source) = self.active_file.sync_data() {
            let what = format!("fdatasync of WAL segment {}", self.active_seq);
            self.flusher.poison(WalFailure::new(&what, &source, true));
            return Err(WalError::Io { path: old_path, source });
        }
        let seq = self.active_seq + 1;
        let (meta, last) = {
            let index = self.index.read();
            (index.meta, index.last_seen)
        };
        let (file, len) = match create_segment(&self.dir, seq, &meta, last, &mut self.encoder, self.config) {
            Ok(created) => created,
            Err(error) => {
                let failure = match &error {
                    WalError::Io { source, .. } => {
                        WalFailure::new(&format!("creating WAL segment {seq}"), source, false)
                    }
                    other => WalFailure {
                        fault: crate::error::StorageFault::Io,
                        detail: format!("creating WAL segment {seq} failed: {other}"),
                    },
                };
                self.flusher.poison(failure);
                return Err(error);
            }
        };
        self.index
            .write()
            .segments
            .insert(seq, Segment { path: self.dir.join(segment_name(seq)), file: Arc::clone(&file), index_max: None });
        self.active_seq = seq;
        self.active_file = Arc::clone(&file);
        self.active_len = len;
        self.active_header_len = len;
        self.flusher.mark_dirty(seq, file);
        self.flusher.mark_dir_dirty();
        Ok(())
    }
}

/// Creates segment `seq` with its header record (not yet synced).
fn create_segment(
    dir: &Path,
    seq: u64,
    meta: &Meta,
    last: Option<LogId>,
    encoder: &mut Encoder,
    config: WalConfig,
) -> Result<(Arc<File>, u64), WalError> {
    let path = dir.join(segment_name(seq));
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io_error(&path))?;
    let header = SegmentHeader { magic: SEGMENT_MAGIC, format: SEGMENT_FORMAT, seq, meta: *meta, last };
    let mut frame = Vec::new();
    encoder
        .encode(RecordRef::Header(&header), config.record_bytes_max as usize, &mut frame)
        .map_err(|error| WalError::Encode(format!("{error:?}")))?;
    file.write_all_at(&frame, 0).map_err(io_error(&path))?;
    file.sync_data().map_err(io_error(&path))?;
    Ok((Arc::new(file), frame.len() as u64))
}

impl WalReader {
    /// Live entries with index in `[start, end)`, in order. Entries already
    /// purged are skipped (the answer may be shorter than asked).
    pub fn read_range(&self, start: u64, end: u64) -> Result<Vec<LogEntry>, WalError> {
        Ok(self.read_framed(start, end)?.into_iter().map(|framed| framed.entry).collect())
    }

    /// As `read_range`, each entry with its frame. Entries in the tail come
    /// from memory (no read, no decode); older ones from the segments.
    pub fn read_framed(&self, start: u64, end: u64) -> Result<Vec<FramedEntry>, WalError> {
        let (wanted, cached) = {
            let index = self.index.read();
            let disk_end = end.min(index.tail.first_index().unwrap_or(u64::MAX));
            let wanted: Vec<(u64, Loc, Arc<File>, PathBuf)> = if start < disk_end {
                index
                    .range(start, disk_end)
                    .into_iter()
                    .filter_map(|(entry_index, loc)| {
                        let segment = index.segments.get(&loc.seq)?;
                        Some((entry_index, loc, Arc::clone(&segment.file), segment.path.clone()))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let cached: Vec<FramedEntry> = index.tail.range(start, end).cloned().collect();
            (wanted, cached)
        };
        let mut entries = self.read_segments(&wanted)?;
        bump(&self.counters.read_from_disk, entries.len());
        bump(&self.counters.read_from_memory, cached.len());
        entries.extend(cached);
        Ok(entries)
    }

    /// Reads and decodes entries from the segment files.
    fn read_segments(&self, wanted: &[(u64, Loc, Arc<File>, PathBuf)]) -> Result<Vec<FramedEntry>, WalError> {
        let mut entries = Vec::with_capacity(wanted.len());
        let mut bytes = Vec::new();
        let mut scratch = AlignedVec::new();
        let mut position = 0;
        while position < wanted.len() {
            // One read for a run of frames that sit back to back in one file.
            let (_, first, file, path) = &wanted[position];
            let mut run_end = position + 1;
            let mut span = u64::from(first.len);
            while run_end < wanted.len()
                && wanted[run_end].1.seq == first.seq
                && wanted[run_end].1.offset == first.offset + span
                && span < 4 << 20
            {
                span += u64::from(wanted[run_end].1.len);
                run_end += 1;
            }
            bytes.resize(usize::try_from(span).unwrap_or(usize::MAX), 0);
            file.read_exact_at(&mut bytes, first.offset).map_err(io_error(path))?;
            let mut at = 0usize;
            for (entry_index, loc, _, path) in &wanted[position..run_end] {
                let corrupt = |reason: String| WalError::Corrupt { path: path.clone(), offset: loc.offset, reason };
                let frame = &bytes[at..at + loc.len as usize];
                let (record, len) = record::read_frame(frame, &mut scratch).map_err(|e| corrupt(e.reason()))?;
                debug_assert!(len <= self.record_bytes_max + record::FRAME_HEADER_LEN);
                match record {
                    Record::Entry(entry) if entry.log_id.index == *entry_index && entry.log_id.term == loc.term => {
                        entries.push(FramedEntry { entry, frame: EntryFrame::from_written(frame) });
                    }
                    other => {
                        return Err(corrupt(format!("expected entry {entry_index}, found {other:?}")));
                    }
                }
                at += loc.len as usize;
            }
            position = run_end;
        }
        Ok(entries)
    }

    pub fn vote(&self) -> Option<Vote> {
        self.index.read().meta.vote
    }

    pub fn log_state(&self) -> LogState {
        let index = self.index.read();
        LogState { purged: index.meta.purged, last: index.last_log_id() }
    }

    /// The WAL's segment files, oldest first; the last one is the active one.
    pub fn segment_files(&self) -> Vec<SegmentFile> {
        let index = self.index.read();
        let last = index.segments.keys().next_back().copied();
        index
            .segments
            .iter()
            .map(|(seq, segment)| SegmentFile {
                seq: *seq,
                path: segment.path.clone(),
                index_max: segment.index_max,
                active: Some(*seq) == last,
            })
            .collect()
    }

    /// The term of the entry at `index`, if it is live (or the purge point).
    pub fn term_of(&self, index: u64) -> Option<u64> {
        self.index.read().term_of(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StorageFault;

    fn entry(index: u64) -> LogEntry {
        LogEntry::batch(LogId::new(1, index), index * 10, vec![crate::Command::Tick])
    }

    fn flushed(wal: &Wal) -> io::Result<()> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        wal.flush(Box::new(move |result| {
            let _ = sender.send(result);
        }));
        receiver.recv().unwrap_or_else(|e| panic!("flush callback dropped: {e}"))
    }

    #[test]
    fn a_failed_fsync_fails_its_flush_with_the_cause_and_poisons_the_wal() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut wal = Wal::open(dir.path(), WalConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        wal.append([&entry(1)]).unwrap_or_else(|e| panic!("{e}"));
        assert!(flushed(&wal).is_ok());
        assert_eq!(wal.failure(), None);

        wal.append([&entry(2)]).unwrap_or_else(|e| panic!("{e}"));
        wal.fail_next_sync();
        let error = flushed(&wal).err().unwrap_or_else(|| panic!("the flush of a failed fsync succeeded"));
        let failure = WalFailure::inside(&error).unwrap_or_else(|| panic!("no failure inside {error:?}"));
        assert_eq!(failure.fault, StorageFault::Fsync);
        assert_eq!(wal.failure().map(|f| f.fault), Some(StorageFault::Fsync));

        // Nothing is acknowledged after the failure: every later flush,
        // append and vote fails with the same cause.
        let later = flushed(&wal).err().unwrap_or_else(|| panic!("a flush after the failure succeeded"));
        assert_eq!(WalFailure::inside(&later).map(|f| f.fault), Some(StorageFault::Fsync));
        assert!(matches!(wal.append([&entry(3)]), Err(WalError::Poisoned(f)) if f.fault == StorageFault::Fsync));
        let vote = Vote { term: 2, voted_for: Some(1), committed: false };
        assert!(matches!(wal.save_vote(vote), Err(WalError::Poisoned(_))));
        assert!(matches!(wal.sync(), Err(WalError::Poisoned(_))));
    }

    #[test]
    fn storage_faults_are_told_apart_by_the_os_error() {
        let os = |errno: rustix::io::Errno| io::Error::from_raw_os_error(errno.raw_os_error());
        assert_eq!(StorageFault::of(&os(rustix::io::Errno::NOSPC), false), StorageFault::NoSpace);
        assert_eq!(StorageFault::of(&os(rustix::io::Errno::NOSPC), true), StorageFault::NoSpace);
        assert_eq!(StorageFault::of(&os(rustix::io::Errno::DQUOT), false), StorageFault::NoSpace);
        assert_eq!(StorageFault::of(&os(rustix::io::Errno::MFILE), false), StorageFault::TooManyOpenFiles);
        assert_eq!(StorageFault::of(&os(rustix::io::Errno::NFILE), false), StorageFault::TooManyOpenFiles);
        assert_eq!(StorageFault::of(&os(rustix::io::Errno::IO), true), StorageFault::Fsync);
        assert_eq!(StorageFault::of(&os(rustix::io::Errno::IO), false), StorageFault::Io);
        let codes: Vec<&str> =
            [StorageFault::Fsync, StorageFault::NoSpace, StorageFault::TooManyOpenFiles, StorageFault::Io]
                .iter()
                .map(|fault| fault.code())
                .collect();
        assert_eq!(codes, ["fsync_error", "no_space", "too_many_open_files", "io_error"]);
    }
}
