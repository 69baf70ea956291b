//! `tally reshard`: a backup of S shards rebuilt as a backup of N shards,
//! offline, which `tally restore` then restores as usual
//! (docs/RESHARDING.md has the whole procedure).
//!
//! 1. Refuse what cannot work before reading anything big: N outside
//!    1..=`engine::reshard::SHARDS_MAX`, or a target that is not empty.
//! 2. Verify the source backup whole (`verify::verify_backup`: checksums,
//!    a replay to every shard's index, the digests); a backup that does not
//!    verify is not resharded.
//! 3. Replay each old shard to its backup index and hand the states to
//!    `engine::reshard::reshard`, which moves every per-SKU record to
//!    `shard_of(sku, N)` and refuses live holds.
//! 4. Write the new backup into a temp directory beside the target: per new
//!    shard one snapshot at the new last id and no segments, then the
//!    manifest (with `resharded_from`); verify it as in step 2; rename it
//!    into place. A failure at any step leaves no target behind.

use std::path::{Path, PathBuf};

use engine::ids::ReservationId;
use engine::reshard::{ReservationLookup, ReshardReport, SHARDS_MAX};
use engine::snapshot::SnapshotStore;

use super::take::{sync_dir, write_manifest};
use super::verify::verify_backup;
use super::{
    BackupError, BackupFile, Manifest, ShardBackup, Until, checksum, hex_digest, inside, replay_shard, shard_dir_name,
};

/// What `tally reshard` was asked.
#[derive(Clone, Debug)]
pub struct ReshardRequest {
    pub from: PathBuf,
    pub to: PathBuf,
    pub shards: u32,
}

/// What it wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReshardSummary {
    pub manifest: Manifest,
    pub report: ReshardReport,
}

/// The API's rule (`routes::reservations`): a reservation is looked for on
/// its home shard, or on every shard when its id says it spans shards.
struct ApiLookup;

impl ReservationLookup for ApiLookup {
    fn looks_on(&self, id: &ReservationId, shard: u32, _shards: u32) -> bool {
        crate::routes::reservations::spans_shards(id) || u32::from(id.home_shard()) == shard
    }
}

pub fn reshard(request: &ReshardRequest) -> Result<ReshardSummary, BackupError> {
    if request.shards == 0 || request.shards > SHARDS_MAX {
        return Err(BackupError::Invalid(format!("--shards must be in 1..={SHARDS_MAX}, not {}", request.shards)));
    }
    check_target(&request.to)?;
    let verified = verify_backup(&request.from)?;
    let old_manifest = verified.manifest;
    if !old_manifest.is_whole() {
        return Err(BackupError::Invalid(format!(
            "this backup holds {} of {} shards (a node of a placed cluster): restore the backups of nodes that \
             hold every shard into one data directory (tally restore --from each), start it, back it up, and \
             reshard that",
            old_manifest.shards.len(),
            old_manifest.shard_count
        )));
    }
    let mut states = Vec::with_capacity(old_manifest.shards.len());
    for shard in &old_manifest.shards {
        let snapshot = shard.snapshot.as_ref().map(|file| inside(&request.from, &file.path)).transpose()?;
        let segments: Vec<PathBuf> =
            shard.segments.iter().map(|file| inside(&request.from, &file.path)).collect::<Result<_, _>>()?;
        let until = shard.last_index.map_or(Until::End, Until::Index);
        let replayed =
            replay_shard(shard.shard, old_manifest.shard_count, snapshot.as_deref(), &segments, until, None)?;
        states.push(replayed.state);
    }
    let resharded = engine::reshard::reshard(&states, request.shards, &ApiLookup)
        .map_err(|error| BackupError::Invalid(format!("cannot reshard: {error}")))?;
    drop(states);

    let temp = temp_dir_for(&request.to)?;
    let written = write_new_backup(&temp, old_manifest.node_id, old_manifest.shard_count, &resharded.states)
        .and_then(|manifest| {
            verify_backup(&temp).map_err(|error| {
                BackupError::Invalid(format!("the resharded backup does not verify (a bug; nothing written): {error}"))
            })?;
            Ok(manifest)
        })
        .and_then(|manifest| {
            if request.to.exists() {
                // Empty (checked above): the rename takes its place.
                std::fs::remove_dir(&request.to).map_err(BackupError::io(&request.to))?;
            }
            std::fs::rename(&temp, &request.to).map_err(BackupError::io(&request.to))?;
            if let Some(parent) = request.to.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
            Ok(manifest)
        });
    match written {
        Ok(manifest) => Ok(ReshardSummary { manifest, report: resharded.report }),
        Err(error) => {
            let _ = std::fs::remove_dir_all(&temp);
            Err(error)
        }
    }
}

/// The target must not exist, or be an empty directory.
fn check_target(to: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(to) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty(to.to_path_buf()));
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BackupError::Io { path: to.to_path_buf(), source }),
    }
}

/// A new, empty directory beside `to` (same file system, so the rename at
/// the end is atomic). One left by a run that crashed is removed first.
fn temp_dir_for(to: &Path) -> Result<PathBuf, BackupError> {
    let name = to
        .file_name()
        .ok_or_else(|| BackupError::Invalid(format!("{}: the target needs a directory name", to.display())))?;
    let parent = to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(BackupError::io(parent))?;
    let temp = parent.join(format!(".{}.reshard-tmp", name.to_string_lossy()));
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(BackupError::io(&temp))?;
    }
    std::fs::create_dir(&temp).map_err(BackupError::io(&temp))?;
    Ok(temp)
}

fn write_new_backup(
    dir: &Path,
    node_id: u64,
    old_shards: u32,
    states: &[engine::ShardState],
) -> Result<Manifest, BackupError> {
    let shard_count = u32::try_from(states.len()).unwrap_or(u32::MAX);
    let mut shards = Vec::with_capacity(states.len());
    for state in states {
        let shard_dir = dir.join(shard_dir_name(state.shard()));
        std::fs::create_dir_all(shard_dir.join("wal")).map_err(BackupError::io(&shard_dir))?;
        let last = state.last_applied();
        // A shard with nothing applied (the old cluster never wrote) has no
        // snapshot, as a backup of a new cluster has none.
        let snapshot = match last {
            Some(_) => {
                let store = SnapshotStore::open(&shard_dir, 1)
                    .map_err(|error| BackupError::Invalid(format!("shard {}: {error}", state.shard())))?;
                let file = store.save(state).map_err(|error| {
                    BackupError::Invalid(format!("shard {}: writing the snapshot: {error}", state.shard()))
                })?;
                let (size, crc) = checksum(&file.path)?;
                let relative = file
                    .path
                    .strip_prefix(dir)
                    .map_err(|_| BackupError::Invalid("a snapshot outside the backup".into()))?;
                Some(BackupFile {
                    path: relative.to_string_lossy().into_owned(),
                    bytes: size,
                    crc32c: format!("{crc:08x}"),
                })
            }
            None => None,
        };
        sync_dir(&shard_dir)?;
        shards.push(ShardBackup {
            shard: state.shard(),
            snapshot,
            snapshot_index: last.map(|id| id.index),
            last_index: last.map(|id| id.index),
            last_term: last.map(|id| id.term),
            log_time_ms: state.now_ms(),
            digest: hex_digest(state.digest()),
            segments: Vec::new(),
        });
    }
    let manifest = Manifest::now(node_id, shard_count, shards, Some(old_shards));
    write_manifest(dir, &manifest)?;
    Ok(manifest)
}
