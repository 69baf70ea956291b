//! The WAL as a log: appends are readable at once and durable after flush,
//! it survives restarts, and recovery never yields garbage.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use engine::cmd::{AdjustReason, Command};
use engine::testing::adjust;
use engine::wal::{EntryFrame, LogState, Wal};
use engine::{LogEntry, LogId, Vote, WalConfig, WalError};

fn entry(term: u64, index: u64) -> LogEntry {
    LogEntry::batch(LogId::new(term, index), index * 10, vec![adjust("SKU-1", "berlin", 1, AdjustReason::Receive)])
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<LogEntry> {
    range.map(|index| entry(term, index)).collect()
}

fn open(dir: &Path) -> Wal {
    Wal::open(dir, WalConfig::default()).unwrap_or_else(|error| panic!("open failed: {error}"))
}

fn small_segments() -> WalConfig {
    WalConfig { segment_bytes_max: 1024, ..WalConfig::default() }
}

fn read_all(wal: &Wal) -> Vec<LogEntry> {
    wal.reader().read_range(0, u64::MAX).unwrap_or_else(|error| panic!("read failed: {error}"))
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn appended_entries_are_readable_at_once_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let written = entries(1, 1..=20);
    {
        let mut wal = open(dir.path());
        wal.append(&written).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_all(&wal), written, "readable before any flush");
        assert_eq!(wal.reader().read_range(5, 8).unwrap_or_default(), written[4..7].to_vec());
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
    }
    let wal = open(dir.path());
    assert_eq!(read_all(&wal), written);
    assert_eq!(wal.log_state(), LogState { purged: None, last: Some(LogId::new(1, 20)) });
}

#[test]
fn flush_callbacks_fire_once_the_appends_before_them_are_synced() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut wal = open(dir.path());
    let fired = Arc::new(AtomicUsize::new(0));
    for index in 1..=50 {
        wal.append(&[entry(1, index)]).unwrap_or_else(|e| panic!("{e}"));
        let fired = Arc::clone(&fired);
        wal.flush(Box::new(move |result| {
            assert!(result.is_ok());
            fired.fetch_add(1, Ordering::SeqCst);
        }));
    }
    wal.sync().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fired.load(Ordering::SeqCst), 50);
    let stats = wal.stats();
    assert_eq!(stats.flushes, 51);
    assert!(stats.syncs >= 1 && stats.syncs <= 51);
}

#[test]
fn a_vote_and_the_committed_id_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let vote = Vote { term: 7, voted_for: Some(3), committed: true };
    {
        let mut wal = open(dir.path());
        wal.append(&entries(1, 1..=3)).unwrap_or_else(|e| panic!("{e}"));
        wal.save_vote(vote).unwrap_or_else(|e| panic!("{e}"));
        wal.save_committed(Some(LogId::new(1, 2))).unwrap_or_else(|e| panic!("{e}"));
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
    }
    let wal = open(dir.path());
    assert_eq!(wal.vote(), Some(vote));
    assert_eq!(wal.reader().vote(), Some(vote));
    assert_eq!(wal.committed(), Some(LogId::new(1, 2)));
}

#[test]
fn the_vote_survives_when_its_segment_is_purged_away() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let vote = Vote { term: 2, voted_for: Some(1), committed: false };
    {
        let mut wal = Wal::open(dir.path(), small_segments()).unwrap_or_else(|e| panic!("{e}"));
        wal.save_vote(vote).unwrap_or_else(|e| panic!("{e}"));
        for index in 1..=60 {
            wal.append(&[entry(2, index)]).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(segments(dir.path()).len() > 3, "small segments roll");
        wal.purge(LogId::new(2, 55)).unwrap_or_else(|e| panic!("{e}"));
        assert!(segments(dir.path()).len() <= 2, "old segments deleted");
    }
    let wal = Wal::open(dir.path(), small_segments()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(wal.vote(), Some(vote));
    assert_eq!(wal.log_state(), LogState { purged: Some(LogId::new(2, 55)), last: Some(LogId::new(2, 60)) });
    assert_eq!(read_all(&wal), entries(2, 56..=60));
}

#[test]
fn truncation_drops_the_tail_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    {
        let mut wal = open(dir.path());
        wal.append(&entries(1, 1..=10)).unwrap_or_else(|e| panic!("{e}"));
        wal.truncate_after(Some(LogId::new(1, 6))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_all(&wal), entries(1, 1..=6));
        wal.append(&entries(2, 7..=8)).unwrap_or_else(|e| panic!("{e}"));
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
    }
    let wal = open(dir.path());
    let mut expected = entries(1, 1..=6);
    expected.extend(entries(2, 7..=8));
    assert_eq!(read_all(&wal), expected);
}

#[test]
fn truncating_everything_leaves_an_empty_log() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut wal = open(dir.path());
    wal.append(&entries(1, 1..=3)).unwrap_or_else(|e| panic!("{e}"));
    wal.truncate_after(None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(wal.log_state().last, None);
    wal.append(&entries(3, 1..=1)).unwrap_or_else(|e| panic!("{e}"));
    wal.sync().unwrap_or_else(|e| panic!("{e}"));
    drop(wal);
    assert_eq!(read_all(&open(dir.path())), entries(3, 1..=1));
}

#[test]
fn purge_past_the_end_of_the_log_moves_the_next_index() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut wal = open(dir.path());
    wal.append(&entries(1, 1..=3)).unwrap_or_else(|e| panic!("{e}"));
    wal.purge(LogId::new(4, 100)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(wal.log_state(), LogState { purged: Some(LogId::new(4, 100)), last: Some(LogId::new(4, 100)) });
    assert!(matches!(wal.append(&[entry(4, 5)]), Err(WalError::NotContiguous { .. })));
    wal.append(&[entry(4, 101)]).unwrap_or_else(|e| panic!("{e}"));
    wal.sync().unwrap_or_else(|e| panic!("{e}"));
    drop(wal);
    let wal = open(dir.path());
    assert_eq!(read_all(&wal), vec![entry(4, 101)]);
}

#[test]
fn appends_that_break_the_log_rules_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut wal = open(dir.path());
    wal.append(&entries(2, 1..=2)).unwrap_or_else(|e| panic!("{e}"));
    let gap = wal.append(&[entry(2, 3), entry(2, 5)]);
    assert!(matches!(gap, Err(WalError::NotContiguous { last: Some(3), got: 5 })), "{gap:?}");
    let back = wal.append(&[entry(1, 3)]);
    assert!(matches!(back, Err(WalError::TermRegressed { index: 3, term: 1, last_term: 2 })), "{back:?}");
    assert_eq!(read_all(&wal), entries(2, 1..=2), "nothing of a refused append was written");
}

#[test]
fn an_entry_over_the_record_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = WalConfig { record_bytes_max: 64, ..WalConfig::default() };
    let mut wal = Wal::open(dir.path(), config).unwrap_or_else(|e| panic!("{e}"));
    let big = LogEntry::batch(LogId::new(1, 1), 0, vec![Command::Tick; 100]);
    assert!(matches!(wal.append(&[big]), Err(WalError::RecordTooLarge { .. })));
    wal.append(&[LogEntry::blank(LogId::new(1, 1))]).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn segments_roll_by_size_and_reads_span_them() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let written = entries(1, 1..=100);
    {
        let mut wal = Wal::open(dir.path(), small_segments()).unwrap_or_else(|e| panic!("{e}"));
        for chunk in written.chunks(7) {
            wal.append(chunk).unwrap_or_else(|e| panic!("{e}"));
        }
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_all(&wal), written);
    }
    assert!(segments(dir.path()).len() > 5);
    let wal = Wal::open(dir.path(), small_segments()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read_all(&wal), written);
}

/// Offsets at which each record of the last segment ends, from a clean copy.
fn record_ends(dir: &Path) -> (PathBuf, u64) {
    let last = segments(dir).pop().unwrap_or_else(|| panic!("no segment"));
    let len = std::fs::metadata(&last).map(|m| m.len()).unwrap_or(0);
    (last, len)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    for path in segments(from) {
        let name = path.file_name().unwrap_or_default();
        std::fs::copy(&path, to.join(name)).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn a_cut_at_any_byte_of_the_last_records_recovers_an_exact_prefix() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let written = entries(1, 1..=12);
    let mut ends = Vec::new();
    {
        let mut wal = open(dir.path());
        wal.append(&written[..8]).unwrap_or_else(|e| panic!("{e}"));
        for entry in &written[8..] {
            ends.push(record_ends(dir.path()).1);
            wal.append(std::slice::from_ref(entry)).unwrap_or_else(|e| panic!("{e}"));
        }
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
    }
    let (segment, full_len) = record_ends(dir.path());
    ends.push(full_len);
    let start = ends[0];
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for cut in start..=full_len {
        let copy = scratch.path().join(format!("cut-{cut}"));
        copy_dir(dir.path(), &copy);
        let file = copy.join(segment.file_name().unwrap_or_default());
        OpenOptions::new().write(true).open(&file).and_then(|f| f.set_len(cut)).unwrap_or_else(|e| panic!("{e}"));

        let mut wal = open(&copy);
        let recovered = read_all(&wal);
        let complete = 8 + ends[1..].iter().filter(|&&end| end <= cut).count();
        assert_eq!(recovered, written[..complete].to_vec(), "cut at byte {cut}");
        // The log goes on from the prefix, and that survives a restart too.
        let next = entry(1, complete as u64 + 1);
        wal.append(std::slice::from_ref(&next)).unwrap_or_else(|e| panic!("append after cut {cut}: {e}"));
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
        drop(wal);
        let mut expected = written[..complete].to_vec();
        expected.push(next);
        assert_eq!(read_all(&open(&copy)), expected, "reopen after cut at byte {cut}");
        std::fs::remove_dir_all(&copy).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn zeros_after_the_last_record_are_cut_as_a_torn_write() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let written = entries(1, 1..=5);
    {
        let mut wal = open(dir.path());
        wal.append(&written).unwrap_or_else(|e| panic!("{e}"));
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
    }
    let (segment, len) = record_ends(dir.path());
    OpenOptions::new().write(true).open(&segment).and_then(|f| f.set_len(len + 4096)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read_all(&open(dir.path())), written);
}

#[test]
fn a_flipped_byte_mid_log_is_a_clear_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    {
        let mut wal = open(dir.path());
        wal.append(&entries(1, 1..=10)).unwrap_or_else(|e| panic!("{e}"));
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
    }
    let (segment, len) = record_ends(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap_or_else(|e| panic!("{e}"));
    let middle = (len / 2) as usize;
    bytes[middle] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap_or_else(|e| panic!("{e}"));
    match Wal::open(dir.path(), WalConfig::default()) {
        Err(WalError::Corrupt { path, offset, reason }) => {
            assert_eq!(path, segment);
            assert!(offset <= middle as u64 && offset > 0, "offset {offset} should point at the damaged record");
            let message = WalError::Corrupt { path, offset, reason }.to_string();
            assert!(message.contains(".wal") && message.contains(&offset.to_string()), "{message}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// Appends entries 1..=count one by one into small segments, synced.
fn write_small_segments(dir: &Path, count: u64) {
    let mut wal = Wal::open(dir, small_segments()).unwrap_or_else(|e| panic!("{e}"));
    for index in 1..=count {
        wal.append(&[entry(1, index)]).unwrap_or_else(|e| panic!("{e}"));
    }
    wal.sync().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn damage_in_an_older_segment_is_corruption_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write_small_segments(dir.path(), 40);
    let first = segments(dir.path()).remove(0);
    let len = std::fs::metadata(&first).map(|m| m.len()).unwrap_or(0);
    OpenOptions::new().write(true).open(&first).and_then(|f| f.set_len(len - 3)).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(Wal::open(dir.path(), small_segments()), Err(WalError::Corrupt { .. })));
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write_small_segments(dir.path(), 40);
    let middle = segments(dir.path()).remove(2);
    std::fs::remove_file(middle).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(Wal::open(dir.path(), small_segments()), Err(WalError::Corrupt { .. })));
}

#[test]
fn readers_see_appends_while_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut wal = Wal::open(dir.path(), small_segments()).unwrap_or_else(|e| panic!("{e}"));
    let reader = wal.reader();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = std::thread::spawn({
        let done = Arc::clone(&done);
        move || {
            let mut seen = 0;
            while !done.load(Ordering::SeqCst) {
                let read = reader.read_range(1, u64::MAX).unwrap_or_else(|e| panic!("{e}"));
                for (offset, got) in read.iter().enumerate() {
                    assert_eq!(got.log_id.index, offset as u64 + 1, "reads are an exact prefix");
                }
                seen = seen.max(read.len());
            }
            seen
        }
    });
    for index in 1..=300 {
        wal.append(&[entry(1, index)]).unwrap_or_else(|e| panic!("{e}"));
    }
    done.store(true, Ordering::SeqCst);
    let seen = checker.join().unwrap_or_else(|_| panic!("reader panicked"));
    assert!(seen <= 300);
}

/// A frame whose checksum holds but whose content is not a record: written
/// whole, so it is damage (or a bug), not a torn write, even at the tail.
#[test]
fn a_well_checksummed_frame_of_garbage_at_the_tail_is_corruption() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    {
        let mut wal = open(dir.path());
        wal.append(&entries(1, 1..=3)).unwrap_or_else(|e| panic!("{e}"));
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
    }
    let (segment, len) = record_ends(dir.path());
    let payload = [0xEEu8; 24];
    let mut header = [0u8; 12];
    header[..4].copy_from_slice(&24u32.to_le_bytes());
    header[8] = 2; // an entry record
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header), &payload);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    let mut bytes = std::fs::read(&segment).unwrap_or_else(|e| panic!("{e}"));
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&payload);
    std::fs::write(&segment, &bytes).unwrap_or_else(|e| panic!("{e}"));
    match Wal::open(dir.path(), WalConfig::default()) {
        Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, len),
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// Purges that delete segments whose header predates them: the first
/// surviving segment must still know which entry its first one follows.
#[test]
fn repeated_purges_and_rolls_recover_the_live_entries() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut last_purge = 0;
    {
        let mut wal = Wal::open(dir.path(), small_segments()).unwrap_or_else(|e| panic!("{e}"));
        for index in 1..=200 {
            wal.append(&[entry(1, index)]).unwrap_or_else(|e| panic!("{e}"));
            if index % 23 == 0 {
                last_purge = index - 5;
                wal.purge(LogId::new(1, last_purge)).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
    }
    let wal = Wal::open(dir.path(), small_segments()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(wal.log_state(), LogState { purged: Some(LogId::new(1, last_purge)), last: Some(LogId::new(1, 200)) });
    assert_eq!(read_all(&wal), entries(1, last_purge + 1..=200));
}

fn framed_all(wal: &Wal) -> Vec<engine::wal::FramedEntry> {
    wal.reader().read_framed(0, u64::MAX).unwrap_or_else(|error| panic!("read failed: {error}"))
}

#[test]
fn a_follower_appends_the_leaders_frames_verbatim() {
    let leader_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let follower_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut leader = open(leader_dir.path());
    leader.append(&entries(1, 1..=12)).unwrap_or_else(|e| panic!("{e}"));
    leader.sync().unwrap_or_else(|e| panic!("{e}"));
    // What replication sends: each entry's frame, decoded once on arrival.
    let received: Vec<(LogEntry, EntryFrame)> = framed_all(&leader)
        .into_iter()
        .map(|framed| {
            let frame = EntryFrame::from_received(framed.frame.as_bytes().to_vec());
            let entry = frame.decode(1 << 20).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(entry, framed.entry);
            (entry, frame)
        })
        .collect();
    {
        let mut follower = open(follower_dir.path());
        follower
            .append_framed(received.iter().map(|(entry, frame)| (entry, Some(frame))))
            .unwrap_or_else(|e| panic!("{e}"));
        follower.sync().unwrap_or_else(|e| panic!("{e}"));
        let frames: Vec<EntryFrame> = framed_all(&follower).into_iter().map(|framed| framed.frame).collect();
        let sent: Vec<EntryFrame> = received.iter().map(|(_, frame)| frame.clone()).collect();
        assert_eq!(frames, sent);
    }
    // Byte for byte the same segment, and it reads back after a restart.
    let leader_bytes = std::fs::read(&segments(leader_dir.path())[0]).unwrap_or_else(|e| panic!("{e}"));
    let follower_bytes = std::fs::read(&segments(follower_dir.path())[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(leader_bytes, follower_bytes);
    let reopened = open(follower_dir.path());
    assert_eq!(read_all(&reopened), entries(1, 1..=12));
    let from_disk: Vec<EntryFrame> = framed_all(&reopened).into_iter().map(|framed| framed.frame).collect();
    assert_eq!(from_disk, received.into_iter().map(|(_, frame)| frame).collect::<Vec<_>>());
}

#[test]
fn the_newest_entries_are_read_from_memory_and_older_ones_from_disk() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let one_frame = EntryFrame::encode(&entry(1, 1), 1 << 20).unwrap_or_else(|e| panic!("{e}")).len() as u64;
    let config = WalConfig { tail_bytes_max: one_frame * 3, ..WalConfig::default() };
    let mut wal = Wal::open(dir.path(), config).unwrap_or_else(|e| panic!("{e}"));
    wal.append(&entries(1, 1..=8)).unwrap_or_else(|e| panic!("{e}"));
    wal.sync().unwrap_or_else(|e| panic!("{e}"));
    // Damage every entry on disk: only the three in the tail still read.
    let (path, end) = record_ends(dir.path());
    let header_end = end - one_frame * 8;
    let file = OpenOptions::new().write(true).open(&path).unwrap_or_else(|e| panic!("{e}"));
    use std::os::unix::fs::FileExt;
    for index in 0..8 {
        file.write_all_at(&[0xff], header_end + index * one_frame + 20).unwrap_or_else(|e| panic!("{e}"));
    }
    let tail = wal.reader().read_range(6, 9).unwrap_or_else(|e| panic!("the tail reads from memory: {e}"));
    assert_eq!(tail, entries(1, 6..=8));
    assert!(matches!(wal.reader().read_range(5, 9), Err(WalError::Corrupt { .. })), "entry 5 is read from disk");
}

#[test]
fn a_received_frame_that_is_not_one_whole_entry_is_refused() {
    let frame = EntryFrame::encode(&entry(2, 7), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
    let bytes = frame.as_bytes().to_vec();
    assert_eq!(frame.log_id(), Some(LogId::new(2, 7)));
    for position in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[position] ^= 0x10;
        assert!(EntryFrame::from_received(bad).decode(1 << 20).is_err(), "flip at {position} went unnoticed");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(EntryFrame::from_received(longer).decode(1 << 20).is_err());
    assert!(EntryFrame::from_received(bytes[..bytes.len() - 1].to_vec()).decode(1 << 20).is_err());
    assert!(EntryFrame::from_received(Vec::new()).decode(1 << 20).is_err());
    assert!(EntryFrame::from_received(bytes.clone()).decode(8).is_err(), "over the record limit");
    assert!(EntryFrame::from_received(bytes).decode(1 << 20).is_ok());
}
