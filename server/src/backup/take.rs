//! Taking an online backup of a running node.
//!
//! Per shard, without stopping its writes:
//!
//! 1. Ask the actor for its last applied id `L` (a read message; the shard
//!    thread does nothing else for it). Every entry up to `L` is in the
//!    WAL, committed.
//! 2. Hard-link every sealed WAL segment into the backup (a copy when the
//!    backup is on another file system) and copy the segment being
//!    appended to, up to its current length: that covers `L`. A segment a
//!    purge deleted meanwhile holds only entries at or below a snapshot,
//!    so it and those before it are left out.
//! 3. Hard-link (or copy) the newest snapshot `S`, taken after step 2: a
//!    purge never deletes an entry after the newest snapshot, so the
//!    segments cover `(S, L]`. When `S` is past `L` the backup is at `S`.
//! 4. Replay `S` and the segments in memory up to `L` on this (blocking)
//!    thread, not the shard's: the state digest at `L` goes in the
//!    manifest, and the backup is known to replay before it is reported.
//!
//! `manifest.json` is written last (temp file, fsync, rename, fsync).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cluster::node::BackupView;
use engine::snapshot::SnapshotStore;

use super::{
    BackupError, BackupFile, MANIFEST_NAME, Manifest, ShardBackup, Until, checksum, hex_digest, replay_shard,
    shard_dir_name,
};

/// Times a snapshot that vanished between finding and linking it (a newer
/// one replaced it) is looked for again.
const SNAPSHOT_LINK_ATTEMPTS_MAX: u32 = 8;

/// Writes the backup of `views` (from `Node::backup_views`) into `to`, which
/// must not exist or be empty. Blocking: run it off the async runtime.
pub fn write_backup(
    node_id: u64,
    shard_count: u32,
    views: &[BackupView],
    to: &Path,
    files_max: usize,
) -> Result<Manifest, BackupError> {
    prepare_dir(to)?;
    let mut shards = Vec::with_capacity(views.len());
    let mut files = 0u64;
    for view in views {
        let shard = backup_shard(
            view,
            shard_count,
            to,
            files_max.saturating_sub(usize::try_from(files).unwrap_or(usize::MAX)),
        )?;
        files += shard.segments.len() as u64 + u64::from(shard.snapshot.is_some());
        shards.push(shard);
    }
    let manifest = Manifest::now(node_id, shard_count, shards, None);
    write_manifest(to, &manifest)?;
    Ok(manifest)
}

fn prepare_dir(to: &Path) -> Result<(), BackupError> {
    std::fs::create_dir_all(to).map_err(BackupError::io(to))?;
    let mut entries = std::fs::read_dir(to).map_err(BackupError::io(to))?;
    if entries.next().is_some() {
        return Err(BackupError::NotEmpty(to.to_path_buf()));
    }
    Ok(())
}

fn backup_shard(view: &BackupView, shard_count: u32, to: &Path, files_max: usize) -> Result<ShardBackup, BackupError> {
    let shard = view.shard;
    let relative_dir = shard_dir_name(shard);
    let wal_dir = to.join(&relative_dir).join("wal");
    std::fs::create_dir_all(&wal_dir).map_err(BackupError::io(&wal_dir))?;
    if view.segments.len() + 1 > files_max {
        return Err(BackupError::Invalid(format!(
            "shard {shard} has {} WAL segments: over backup.files_max",
            view.segments.len()
        )));
    }

    // Step 2: the segments, oldest first.
    let mut linked: Vec<(u64, PathBuf)> = Vec::with_capacity(view.segments.len());
    for segment in &view.segments {
        let Some(name) = segment.path.file_name() else { continue };
        let target = wal_dir.join(name);
        let copied =
            if segment.active { copy_file(&segment.path, &target) } else { link_or_copy(&segment.path, &target) };
        match copied {
            Ok(()) => linked.push((segment.seq, target)),
            Err(BackupError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                // Purged (or archived) since it was listed: it and every
                // older one hold only entries the snapshot has.
                for (_, path) in linked.drain(..) {
                    std::fs::remove_file(&path).map_err(BackupError::io(&path))?;
                }
            }
            Err(error) => return Err(error),
        }
    }
    sync_dir(&wal_dir)?;

    // Step 3: the newest snapshot, after the segments.
    let snapshot_target_dir = to.join(&relative_dir);
    let snapshot = link_newest_snapshot(&view.snapshot_dir, &snapshot_target_dir)?;
    sync_dir(&snapshot_target_dir)?;
    let snapshot_index = snapshot.as_ref().and_then(|(_, meta)| meta.last_applied.map(|id| id.index));
    let applied_index = view.applied.map(|id| id.index);
    let until = match (applied_index, snapshot_index) {
        (Some(applied), Some(snapshot)) if snapshot >= applied => Until::Index(snapshot),
        (Some(applied), _) => Until::Index(applied),
        (None, Some(snapshot)) => Until::Index(snapshot),
        (None, None) => Until::End,
    };

    // Step 4: replay to the backup's index.
    let segment_paths: Vec<PathBuf> = linked.iter().map(|(_, path)| path.clone()).collect();
    let snapshot_path = snapshot.as_ref().map(|(path, _)| path.clone());
    let replayed = replay_shard(shard, shard_count, snapshot_path.as_deref(), &segment_paths, until, None)?;
    let last = replayed.state.last_applied();

    let describe = |path: &Path| -> Result<BackupFile, BackupError> {
        let (bytes, crc) = checksum(path)?;
        let relative = path.strip_prefix(to).map_err(|_| BackupError::Invalid("a file outside the backup".into()))?;
        Ok(BackupFile { path: relative.to_string_lossy().into_owned(), bytes, crc32c: format!("{crc:08x}") })
    };
    let segments = segment_paths.iter().map(|path| describe(path)).collect::<Result<Vec<_>, _>>()?;
    let snapshot_file = snapshot_path.as_deref().map(describe).transpose()?;
    Ok(ShardBackup {
        shard,
        snapshot: snapshot_file,
        snapshot_index,
        last_index: last.map(|id| id.index),
        last_term: last.map(|id| id.term),
        log_time_ms: replayed.state.now_ms(),
        digest: hex_digest(replayed.state.digest()),
        segments,
    })
}

/// Links the newest snapshot in `from` into `to`; `None` when there is none.
fn link_newest_snapshot(
    from: &Path,
    to: &Path,
) -> Result<Option<(PathBuf, engine::snapshot::SnapshotMeta)>, BackupError> {
    let store = SnapshotStore::beside(from);
    for _ in 0..SNAPSHOT_LINK_ATTEMPTS_MAX {
        let latest = store.latest().map_err(|error| BackupError::Invalid(format!("reading snapshots: {error}")))?;
        let Some(file) = latest else {
            return Ok(None);
        };
        let Some(name) = file.path.file_name() else {
            return Err(BackupError::Invalid(format!("snapshot path {} has no name", file.path.display())));
        };
        let target = to.join(name);
        match link_or_copy(&file.path, &target) {
            Ok(()) => return Ok(Some((target, file.meta))),
            // Replaced by a newer one since it was found: look again.
            Err(BackupError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Err(BackupError::Invalid("snapshots kept changing while the backup linked one; try again".into()))
}

/// A hard link (free, and a sealed segment or a snapshot never changes);
/// a durable copy when linking is not possible (another file system).
fn link_or_copy(from: &Path, to: &Path) -> Result<(), BackupError> {
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(BackupError::Io { path: from.into(), source: error })
        }
        Err(_) => copy_file(from, to),
    }
}

/// Copies `from` as it is now (it may be growing), durable in steps of
/// `SYNC_STEP_BYTES` as snapshots are written: one fsync of tens of MB
/// would hold up the WAL's own fsyncs on the same file system.
fn copy_file(from: &Path, to: &Path) -> Result<(), BackupError> {
    let mut input = File::open(from).map_err(BackupError::io(from))?;
    let mut output = File::create(to).map_err(BackupError::io(to))?;
    let mut buffer = vec![0u8; engine::snapshot::SYNC_STEP_BYTES];
    loop {
        let read = input.read(&mut buffer).map_err(BackupError::io(from))?;
        if read == 0 {
            break;
        }
        output.write_all(&buffer[..read]).map_err(BackupError::io(to))?;
        output.sync_data().map_err(BackupError::io(to))?;
    }
    output.sync_all().map_err(BackupError::io(to))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(BackupError::io(dir))
}

pub(crate) fn write_manifest(to: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|error| BackupError::Invalid(format!("encoding the manifest: {error}")))?;
    let temp = to.join(format!(".{MANIFEST_NAME}.tmp"));
    let path = to.join(MANIFEST_NAME);
    {
        let mut file = File::create(&temp).map_err(BackupError::io(&temp))?;
        file.write_all(text.as_bytes()).map_err(BackupError::io(&temp))?;
        file.write_all(b"\n").map_err(BackupError::io(&temp))?;
        file.sync_all().map_err(BackupError::io(&temp))?;
    }
    std::fs::rename(&temp, &path).map_err(BackupError::io(&path))?;
    sync_dir(to)
}
