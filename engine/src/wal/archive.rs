//! The continuous log archive: sealed segments a purge no longer needs are
//! copied to the archive directory, durably, before they are deleted.
//!
//! A purge on a WAL with an archive deletes nothing itself: it queues each
//! segment it would have deleted to this WAL's archiver thread, so the
//! shard's thread never waits on the copy. The thread copies a segment to
//! `<archive>/.<name>.tmp`, fsyncs it, renames it to `<archive>/<name>`,
//! fsyncs the directory, and only then deletes the WAL's segment (and
//! forgets it in the index). A failed copy deletes nothing: the thread
//! counts the failure, keeps the error for health and metrics, waits
//! `retry_ms` and tries the same segment again, so segments reach the
//! archive in log order and never with a gap.
//!
//! A crash between the purge record and the copy leaves the segment in the
//! WAL directory; the next purge after the restart queues it again.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::wal::index::LogIndex;

/// Where a WAL's sealed segments go before they are deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// This WAL's own directory in the archive (one per shard).
    pub dir: PathBuf,
    /// Pause after a failed copy before the same segment is tried again.
    pub retry_ms: u64,
}

/// What the archiver did; read by metrics and health.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    pub segments_archived: AtomicU64,
    pub bytes_archived: AtomicU64,
    pub copy_failures: AtomicU64,
    /// Segments queued and not yet in the archive.
    pub segments_pending: AtomicU64,
    /// The last copy's error, cleared by the next success.
    pub last_error: Mutex<Option<String>>,
}

impl ArchiveStats {
    pub fn pending(&self) -> u64 {
        self.segments_pending.load(Ordering::Relaxed)
    }

    pub fn archived(&self) -> u64 {
        self.segments_archived.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.copy_failures.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }
}

struct Job {
    seq: u64,
    path: PathBuf,
}

/// One WAL's archiver thread and its queue.
#[derive(Debug)]
pub(crate) struct Archiver {
    sender: Option<mpsc::Sender<Job>>,
    /// Segments queued or being copied: a later purge must not queue them twice.
    queued: Arc<Mutex<BTreeSet<u64>>>,
    stats: Arc<ArchiveStats>,
    stopping: Arc<AtomicBool>,
}

impl Archiver {
    pub(crate) fn start(
        config: ArchiveConfig,
        wal_dir: PathBuf,
        index: Weak<RwLock<LogIndex>>,
    ) -> std::io::Result<Archiver> {
        std::fs::create_dir_all(&config.dir)?;
        let (sender, receiver) = mpsc::channel::<Job>();
        let queued: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
        let stats: Arc<ArchiveStats> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread_queued = Arc::clone(&queued);
        let thread_stats = Arc::clone(&stats);
        let thread_stopping = Arc::clone(&stopping);
        std::thread::Builder::new().name("tally-wal-archive".into()).spawn(move || {
            while let Ok(job) = receiver.recv() {
                loop {
                    if thread_stopping.load(Ordering::Acquire) {
                        return;
                    }
                    match archive_one(&job.path, &config.dir) {
                        Ok(bytes) => {
                            // In the archive: now the WAL's copy may go.
                            if let Err(error) = std::fs::remove_file(&job.path)
                                && error.kind() != std::io::ErrorKind::NotFound
                            {
                                tracing::warn!(path = %job.path.display(), %error, "archived segment not deleted");
                            }
                            if let Some(index) = index.upgrade() {
                                index.write().segments.remove(&job.seq);
                            }
                            if let Err(error) = sync_dir(&wal_dir) {
                                tracing::warn!(dir = %wal_dir.display(), %error, "fsync of the WAL directory");
                            }
                            thread_stats.segments_archived.fetch_add(1, Ordering::Relaxed);
                            thread_stats.bytes_archived.fetch_add(bytes, Ordering::Relaxed);
                            thread_stats.segments_pending.fetch_sub(1, Ordering::Relaxed);
                            *thread_stats.last_error.lock() = None;
                            thread_queued.lock().remove(&job.seq);
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(
                                path = %job.path.display(),
                                archive = %config.dir.display(),
                                %error,
                                retry_ms = config.retry_ms,
                                "archiving a WAL segment failed; it is kept and tried again"
                            );
                            thread_stats.copy_failures.fetch_add(1, Ordering::Relaxed);
                            *thread_stats.last_error.lock() = Some(format!("{}: {error}", job.path.display()));
                            std::thread::sleep(Duration::from_millis(config.retry_ms.max(1)));
                        }
                    }
                }
            }
        })?;
        Ok(Archiver { sender: Some(sender), queued, stats, stopping })
    }

    /// Queues a sealed segment the purge no longer needs, unless it is queued.
    pub(crate) fn queue(&self, seq: u64, path: PathBuf) {
        if !self.queued.lock().insert(seq) {
            return;
        }
        self.stats.segments_pending.fetch_add(1, Ordering::Relaxed);
        if let Some(sender) = &self.sender
            && sender.send(Job { seq, path }).is_err()
        {
            self.queued.lock().remove(&seq);
            self.stats.segments_pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn stats(&self) -> Arc<ArchiveStats> {
        Arc::clone(&self.stats)
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        // The thread finishes the copy in hand, or stops retrying one that
        // fails; what it did not archive stays in the WAL directory.
        self.stopping.store(true, Ordering::Release);
        self.sender.take();
    }
}

/// Copies `source` into `archive` durably; returns the bytes copied.
fn archive_one(source: &Path, archive: &Path) -> std::io::Result<u64> {
    let name = source
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "segment path has no file name"))?;
    let target = archive.join(name);
    let temp = archive.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut input = File::open(source)?;
    let mut output = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
    let mut buffer = vec![0u8; crate::snapshot::SYNC_STEP_BYTES];
    let mut copied = 0u64;
    loop {
        let read = input.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        output.write_all(&buffer[..read])?;
        // Durable in steps, as snapshots are: one fsync of a whole 64 MiB
        // segment would hold up the WAL's own fsyncs behind it.
        output.sync_data()?;
        copied += read as u64;
    }
    output.sync_all()?;
    drop(output);
    std::fs::rename(&temp, &target)?;
    sync_dir(archive)?;
    Ok(copied)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use crate::config::WalConfig;
    use crate::raft_log::{LogEntry, LogId};
    use crate::wal::Wal;
    use crate::wal::scan::{scan_segments, segment_seq};

    use super::ArchiveConfig;

    fn entry(index: u64) -> LogEntry {
        LogEntry::batch(LogId::new(1, index), index * 10, vec![crate::Command::Tick])
    }

    fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map(|entries| {
                entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| segment_seq(p).is_some()).collect()
            })
            .unwrap_or_default();
        paths.sort();
        paths
    }

    /// A WAL of small segments that archives into `<dir>/archive`, holding
    /// 60 synced entries: several sealed segments to purge.
    fn archiving_wal(
        dir: &std::path::Path,
    ) -> (Wal, std::sync::Arc<super::ArchiveStats>, std::path::PathBuf, std::path::PathBuf) {
        let (wal_dir, archive_dir) = (dir.join("wal"), dir.join("archive"));
        let config = WalConfig { segment_bytes_max: 512, ..WalConfig::default() };
        let mut wal = Wal::open(&wal_dir, config).unwrap_or_else(|e| panic!("{e}"));
        let stats =
            wal.set_archive(ArchiveConfig { dir: archive_dir.clone(), retry_ms: 10 }).unwrap_or_else(|e| panic!("{e}"));
        for index in 1..=60 {
            wal.append([&entry(index)]).unwrap_or_else(|e| panic!("{e}"));
        }
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
        (wal, stats, wal_dir, archive_dir)
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{what} did not happen within 5 s");
    }

    #[test]
    fn a_purged_segment_is_in_the_archive_before_it_leaves_the_wal() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (mut wal, stats, wal_dir, archive_dir) = archiving_wal(dir.path());
        let before = segments(&wal_dir);
        let originals: Vec<Vec<u8>> = before.iter().map(|p| std::fs::read(p).unwrap_or_default()).collect();
        wal.purge(LogId::new(1, 40)).unwrap_or_else(|e| panic!("{e}"));
        wait_for("archiving", || stats.pending() == 0 && stats.archived() > 0);

        let archived = segments(&archive_dir);
        let left = segments(&wal_dir);
        assert_eq!(archived.len() as u64, stats.archived());
        assert_eq!(archived.len() + left.len(), before.len(), "every segment is in exactly one place");
        for (path, original) in archived.iter().zip(&originals) {
            assert_eq!(&std::fs::read(path).unwrap_or_default(), original, "{} differs", path.display());
        }
        // The archive and what is left of the WAL are one log again.
        let log = scan_segments(&[archived, left].concat(), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(log.entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (1..=60).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_archive_copy_keeps_the_segment_and_counts_the_failure() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (mut wal, stats, wal_dir, archive_dir) = archiving_wal(dir.path());
        let before = segments(&wal_dir);
        // The archive is gone and a file stands in its place: no copy can land.
        std::fs::remove_dir_all(&archive_dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&archive_dir, b"not a directory").unwrap_or_else(|e| panic!("{e}"));
        wal.purge(LogId::new(1, 40)).unwrap_or_else(|e| panic!("{e}"));
        wait_for("a failed copy", || stats.failures() >= 2);
        assert_eq!(segments(&wal_dir), before, "nothing left the WAL");
        assert!(stats.last_error().is_some());
        assert_eq!(stats.archived(), 0);

        // The archive comes back: the kept segments go there, in order.
        std::fs::remove_file(&archive_dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(&archive_dir).unwrap_or_else(|e| panic!("{e}"));
        wait_for("archiving after the fault", || stats.pending() == 0);
        assert!(stats.archived() > 0);
        assert_eq!(stats.last_error(), None);
    }
}
