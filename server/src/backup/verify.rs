//! `tally backup verify DIR`: is this backup whole and does it replay?
//!
//! Checks, in order, and stops at the first failure with a message naming
//! the file: the manifest reads; every file it names is inside the backup,
//! exists, and has the size and CRC-32C it lists; each shard's segments
//! have consecutive sequence numbers; a replay of the snapshot and the
//! segments in memory reaches the manifest's last index; and the state
//! digest there equals the manifest's.

use std::path::{Path, PathBuf};

use super::{BackupError, Manifest, Until, checksum, hex_digest, inside, read_manifest, replay_shard};

/// What a successful verification found, per shard.
#[derive(Debug)]
pub struct Verified {
    pub manifest: Manifest,
    /// Entries replayed after each shard's snapshot.
    pub entries_replayed: Vec<u64>,
}

pub fn verify_backup(dir: &Path) -> Result<Verified, BackupError> {
    let manifest = read_manifest(dir)?;
    let mut entries_replayed = Vec::with_capacity(manifest.shards.len());
    for shard in &manifest.shards {
        let mut files = shard.segments.iter().chain(shard.snapshot.iter());
        files.try_for_each(|file| {
            let path = inside(dir, &file.path)?;
            let (bytes, crc) = checksum(&path).map_err(|error| match error {
                BackupError::Io { path, source } => {
                    BackupError::Damaged(format!("{}: {source} (the manifest lists it)", path.display()))
                }
                other => other,
            })?;
            if bytes != file.bytes || format!("{crc:08x}") != file.crc32c {
                return Err(BackupError::Damaged(format!(
                    "{}: {bytes} bytes with CRC-32C {crc:08x}, the manifest says {} bytes with {}",
                    path.display(),
                    file.bytes,
                    file.crc32c
                )));
            }
            Ok(())
        })?;
        let segments: Vec<PathBuf> =
            shard.segments.iter().map(|file| inside(dir, &file.path)).collect::<Result<_, _>>()?;
        let snapshot = shard.snapshot.as_ref().map(|file| inside(dir, &file.path)).transpose()?;
        let until = shard.last_index.map_or(Until::End, Until::Index);
        let replayed = replay_shard(shard.shard, manifest.shard_count, snapshot.as_deref(), &segments, until, None)?;
        if shard.snapshot_index != replayed_snapshot_index(snapshot.as_deref())? {
            return Err(BackupError::Damaged(format!(
                "shard {}: the snapshot's index is not the manifest's {:?}",
                shard.shard, shard.snapshot_index
            )));
        }
        let digest = hex_digest(replayed.state.digest());
        if digest != shard.digest {
            return Err(BackupError::Damaged(format!(
                "shard {}: state digest at index {:?} is {digest}, the manifest says {}",
                shard.shard, shard.last_index, shard.digest
            )));
        }
        entries_replayed.push(replayed.entries_applied);
    }
    Ok(Verified { manifest, entries_replayed })
}

fn replayed_snapshot_index(snapshot: Option<&Path>) -> Result<Option<u64>, BackupError> {
    let Some(path) = snapshot else {
        return Ok(None);
    };
    let store = engine::snapshot::SnapshotStore::beside(path.parent().unwrap_or(Path::new(".")));
    let latest = store.latest().map_err(|error| BackupError::Damaged(format!("{}: {error}", path.display())))?;
    Ok(latest.and_then(|file| file.meta.last_applied.map(|id| id.index)))
}
