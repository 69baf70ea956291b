//! Online backups, their verification, and point-in-time restore.
//!
//! A backup is a directory:
//!
//! ```text
//! DIR/manifest.json                       written last: a backup without it is incomplete
//! DIR/shard-NNNNN/snapshot-….snap         the shard's newest snapshot (hard link or copy)
//! DIR/shard-NNNNN/wal/NNNN….wal           the WAL segments after it (sealed: hard link;
//!                                         the one being appended to: a copy)
//! ```
//!
//! * `take.rs` writes one from a running node without stopping its writes.
//! * `verify.rs` checks one: every file's size and CRC-32C, the segments
//!   contiguous from the snapshot, and a replay in memory to the manifest's
//!   index whose state digest must equal the manifest's.
//! * `restore.rs` builds a new data directory from one (and the log
//!   archive after it) at a chosen point in log time.
//! * `reshard.rs` rebuilds one of S shards as a backup of N shards
//!   (`tally reshard`, offline; docs/RESHARDING.md).
//!
//! `replay_shard` is the one replay all three use.

pub mod client;
pub mod reshard;
pub mod restore;
pub mod take;
pub mod verify;

use std::io::Read;
use std::path::{Path, PathBuf};

use engine::raft_log::EntryPayload;
use engine::wal::scan::scan_segments;
use engine::{LogEntry, ShardState};
use serde::{Deserialize, Serialize};

/// The manifest's format; a reader refuses any other.
pub const MANIFEST_FORMAT: u32 = 1;
pub const MANIFEST_NAME: &str = "manifest.json";

/// What a backup holds. `manifest.json`, pretty JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    pub format: u32,
    /// The node the backup was taken on.
    pub node_id: u64,
    /// The cluster's shard count (a restore keeps it: placement depends on it).
    pub shard_count: u32,
    pub created_unix_ms: u64,
    pub shards: Vec<ShardBackup>,
    /// Files and bytes over all shards.
    pub files: u64,
    pub bytes: u64,
    /// Set by `tally reshard`: the shard count of the backup this one was
    /// rebuilt from. Its shards' logs are new, so a restore refuses to
    /// replay a log archive (of the old shards) after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resharded_from: Option<u32>,
}

impl Manifest {
    /// Whether the backup holds every shard (a node of a placed cluster
    /// backs up only the shards it hosts).
    pub fn is_whole(&self) -> bool {
        self.shards.len() == self.shard_count as usize
    }

    /// The manifest of `shards` made now on `node_id`: files and bytes
    /// summed over the shards' snapshots and segments.
    pub fn now(node_id: u64, shard_count: u32, shards: Vec<ShardBackup>, resharded_from: Option<u32>) -> Manifest {
        let files = shards.iter().map(|shard| shard.segments.len() as u64 + u64::from(shard.snapshot.is_some())).sum();
        let bytes = shards
            .iter()
            .map(|shard| {
                shard.segments.iter().map(|f| f.bytes).sum::<u64>() + shard.snapshot.as_ref().map_or(0, |f| f.bytes)
            })
            .sum();
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Manifest {
            format: MANIFEST_FORMAT,
            node_id,
            shard_count,
            created_unix_ms,
            shards,
            files,
            bytes,
            resharded_from,
        }
    }
}

/// One shard of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShardBackup {
    pub shard: u32,
    /// The snapshot the log continues from; `None`: the log from its start.
    pub snapshot: Option<BackupFile>,
    pub snapshot_index: Option<u64>,
    /// The last entry the backup covers (the node had applied it), and its term.
    pub last_index: Option<u64>,
    pub last_term: Option<u64>,
    /// The shard's log time at `last_index`.
    pub log_time_ms: u64,
    /// The shard's state digest at `last_index` (32 hex digits), as
    /// `GET /v1/cluster/digests` shows it.
    pub digest: String,
    /// WAL segments, oldest first, consecutive.
    pub segments: Vec<BackupFile>,
}

/// A file of a backup, relative to its directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupFile {
    pub path: String,
    pub bytes: u64,
    /// CRC-32C of the whole file, 8 hex digits.
    pub crc32c: String,
}

/// Why a backup, a verification or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("{} is not empty: a backup or a restore goes into a new directory", .0.display())]
    NotEmpty(PathBuf),
    #[error("the backup does not verify: {0}")]
    Damaged(String),
}

impl BackupError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
        move |source| BackupError::Io { path: path.to_path_buf(), source }
    }
}

pub(crate) fn shard_dir_name(shard: u32) -> String {
    format!("shard-{shard:05}")
}

pub(crate) fn hex_digest(digest: u128) -> String {
    format!("{digest:032x}")
}

/// Size and CRC-32C of a file, read in 1 MiB steps.
pub(crate) fn checksum(path: &Path) -> Result<(u64, u32), BackupError> {
    let mut file = std::fs::File::open(path).map_err(BackupError::io(path))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut crc = 0u32;
    let mut bytes = 0u64;
    loop {
        let read = file.read(&mut buffer).map_err(BackupError::io(path))?;
        if read == 0 {
            return Ok((bytes, crc));
        }
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
        bytes += read as u64;
    }
}

pub(crate) fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST_NAME);
    let text = std::fs::read_to_string(&path).map_err(BackupError::io(&path))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|error| BackupError::Damaged(format!("{}: not a backup manifest: {error}", path.display())))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(BackupError::Damaged(format!(
            "{}: manifest format {}, this tally reads {MANIFEST_FORMAT}",
            path.display(),
            manifest.format
        )));
    }
    // A node that hosts some of the shards backs up those (a placed
    // cluster): one or more, each once, in order.
    let in_order = manifest.shards.windows(2).all(|pair| pair[0].shard < pair[1].shard);
    let in_range = manifest.shards.iter().all(|shard| shard.shard < manifest.shard_count);
    if manifest.shards.is_empty() || !in_order || !in_range {
        let listed: Vec<u32> = manifest.shards.iter().map(|shard| shard.shard).collect();
        return Err(BackupError::Damaged(format!(
            "the manifest lists shards {listed:?} of {}: one or more, each once, in order",
            manifest.shard_count
        )));
    }
    Ok(manifest)
}

/// A path from the manifest, which must stay inside the backup.
pub(crate) fn inside(dir: &Path, relative: &str) -> Result<PathBuf, BackupError> {
    let path = Path::new(relative);
    if path.is_absolute() || path.components().any(|part| !matches!(part, std::path::Component::Normal(_))) {
        return Err(BackupError::Damaged(format!("the manifest names {relative:?}, outside the backup")));
    }
    Ok(dir.join(path))
}

/// Where a replay stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// At this index, which the log must reach.
    Index(u64),
    /// At this index or the log's end, whichever comes first.
    IndexOrEnd(u64),
    /// Before the first batch stamped later than this log time (ms).
    LogTime(u64),
    /// At the log's end.
    End,
}

/// A shard's state after a replay.
pub struct Replayed {
    pub state: ShardState,
    /// Entries applied after the snapshot.
    pub entries_applied: u64,
    /// The last index the log held (whether or not it was applied).
    pub log_end: Option<u64>,
}

/// Loads a shard's snapshot (or an empty state) and applies the entries of
/// `segments` after it, stopping as `until` says and never past `cap`. Every rule the node
/// keeps holds here too: the snapshot's checks, the log's contiguity, and
/// `apply`'s own.
pub(crate) fn replay_shard(
    shard: u32,
    shard_count: u32,
    snapshot: Option<&Path>,
    segments: &[PathBuf],
    until: Until,
    cap: Option<u64>,
) -> Result<Replayed, BackupError> {
    let mut state = match snapshot {
        Some(path) => {
            let (meta, state) = engine::snapshot::load(path)
                .map_err(|error| BackupError::Damaged(format!("snapshot of shard {shard}: {error}")))?;
            if meta.shard != shard {
                return Err(BackupError::Damaged(format!("{} is shard {}'s snapshot", path.display(), meta.shard)));
            }
            state
        }
        None => ShardState::new(shard, shard_count, cluster::node::initial_limits()),
    };
    let after = state.last_applied().map(|id| id.index);
    if let Until::Index(index) | Until::IndexOrEnd(index) = until
        && after.is_some_and(|after| after > index)
    {
        return Err(BackupError::Invalid(format!(
            "shard {shard}'s backup starts at index {}, after index {index}: restore from an older backup",
            after.unwrap_or_default()
        )));
    }
    if let Until::LogTime(ms) = until
        && after.is_some()
        && state.now_ms() > ms
    {
        return Err(BackupError::Invalid(format!(
            "shard {shard}'s backup starts at log time {} ms, after {ms} ms: restore from an older backup",
            state.now_ms()
        )));
    }
    let log = scan_segments(segments, after)
        .map_err(|error| BackupError::Damaged(format!("log of shard {shard}: {error}")))?;
    let log_end = log.entries.last().map(|entry| entry.log_id.index).or(state.last_applied().map(|id| id.index));
    let mut entries_applied = 0u64;
    for entry in &log.entries {
        if !should_apply(entry, until) || cap.is_some_and(|cap| entry.log_id.index > cap) {
            break;
        }
        state.apply(entry).map_err(|error| {
            BackupError::Damaged(format!("shard {shard}: entry {} does not apply: {error}", entry.log_id.index))
        })?;
        entries_applied += 1;
    }
    if let Until::Index(index) = until {
        let reached = state.last_applied().map(|id| id.index);
        if reached != Some(index) {
            return Err(BackupError::Damaged(format!(
                "shard {shard}'s log ends at index {reached:?}, the backup says it reaches {index}"
            )));
        }
    }
    Ok(Replayed { state, entries_applied, log_end })
}

fn should_apply(entry: &LogEntry, until: Until) -> bool {
    match until {
        Until::End => true,
        Until::Index(index) | Until::IndexOrEnd(index) => entry.log_id.index <= index,
        Until::LogTime(ms) => match &entry.payload {
            EntryPayload::Batch(batch) => batch.ts_ms <= ms,
            // Blank and membership entries carry no time: they go with
            // what came before them.
            EntryPayload::Blank | EntryPayload::Membership(_) => true,
        },
    }
}
