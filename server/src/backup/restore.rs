//! `tally restore`: a new data directory from a backup (and the log
//! archive after it), at a chosen point in log time. Offline: no node runs.
//!
//! A node of a placed cluster backs up the shards it hosts; a restore takes
//! several such backups (`--from` each) and needs every shard among them.
//! A shard in more than one takes the copy with the highest last index.
//!
//! Per shard: load the backup's snapshot, replay its segments followed by
//! the archive's (an archived copy of a segment wins over the backup's
//! copy, which may be a prefix of it), and stop at the point asked for:
//!
//! * `--until-index N`: after the entry at log index N. Indexes are per
//!   shard (each shard has its own log), so with several shards every
//!   shard stops at its own index N, or at the end of its log if that
//!   comes first; the summary says where each one stopped. Most useful
//!   with one shard, or to cut one shard's log.
//! * `--until T` (RFC 3339): before the first batch stamped with a log
//!   time after T, on every shard: the same moment of log time everywhere.
//! * neither: as far as the backup and the archive reach.
//!
//! Entries after the backup's last index come only from archived segments:
//! a segment is archived once a purge dropped it, so everything in it was
//! committed; the tail of the backup's copy of the open segment may not be.
//!
//! The restored shard is written as one snapshot at the point reached with
//! an empty log (a WAL whose purge point is that entry, and a vote in its
//! term), and every group's membership is rewritten to the restored node
//! alone: it starts as a one-node cluster and grows with
//! `POST /v1/admin/learners` and `PUT /v1/admin/voters`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use engine::raft_log::{LogId, Vote};
use engine::snapshot::SnapshotStore;
use engine::wal::Wal;
use engine::wal::scan::segment_seq;

use super::{
    BackupError, Manifest, ShardBackup, Until, hex_digest, inside, read_manifest, replay_shard, shard_dir_name,
};

/// What `tally restore` was asked.
#[derive(Clone, Debug)]
pub struct RestoreRequest {
    /// The backups: together they hold every shard.
    pub from: Vec<PathBuf>,
    pub archive: Option<PathBuf>,
    pub until: Until,
    pub data_dir: PathBuf,
    /// The restored node's id and peer address (its membership).
    pub node_id: u64,
    pub peer_addr: String,
}

/// Where one shard was restored to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RestoredShard {
    pub shard: u32,
    pub index: Option<u64>,
    pub term: Option<u64>,
    pub log_time_ms: u64,
    /// The state digest at `index` before the membership was rewritten:
    /// equal to the source node's digest at the same index.
    pub digest: String,
    pub entries_replayed: u64,
    /// The last index the backup and archive hold for the shard.
    pub log_end: Option<u64>,
}

/// Per shard, the backup directory and entry it is restored from.
fn sources(from: &[PathBuf]) -> Result<(Manifest, Vec<(PathBuf, ShardBackup)>), BackupError> {
    let mut manifests = Vec::with_capacity(from.len());
    for dir in from {
        manifests.push((dir.clone(), read_manifest(dir)?));
    }
    let Some((_, first)) = manifests.first() else {
        return Err(BackupError::Invalid("name at least one backup (--from)".into()));
    };
    let first = first.clone();
    let mut chosen: Vec<Option<(PathBuf, ShardBackup)>> = vec![None; first.shard_count as usize];
    for (dir, manifest) in &manifests {
        if (manifest.shard_count, manifest.resharded_from) != (first.shard_count, first.resharded_from) {
            return Err(BackupError::Invalid(format!(
                "{} has {} shards (resharded from {:?}), the first backup {} (from {:?}): not one cluster's backups",
                dir.display(),
                manifest.shard_count,
                manifest.resharded_from,
                first.shard_count,
                first.resharded_from
            )));
        }
        for shard in &manifest.shards {
            let slot = &mut chosen[shard.shard as usize];
            if slot.as_ref().is_none_or(|(_, kept)| kept.last_index < shard.last_index) {
                *slot = Some((dir.clone(), shard.clone()));
            }
        }
    }
    let missing: Vec<usize> = chosen.iter().enumerate().filter(|(_, slot)| slot.is_none()).map(|(at, _)| at).collect();
    if !missing.is_empty() {
        return Err(BackupError::Invalid(format!(
            "shards {missing:?} are in none of the backups: add a backup of a node that hosts them (--from)"
        )));
    }
    Ok((first, chosen.into_iter().flatten().collect()))
}

pub fn restore(request: &RestoreRequest) -> Result<Vec<RestoredShard>, BackupError> {
    let (manifest, sources) = sources(&request.from)?;
    if request.node_id == 0 {
        return Err(BackupError::Invalid("node ids start at 1".into()));
    }
    if let (Some(old), Some(_)) = (manifest.resharded_from, &request.archive) {
        return Err(BackupError::Invalid(format!(
            "this backup was resharded from {old} shards to {}: its logs are new, and the log archive holds the \
             old shards' logs; restore it without --archive",
            manifest.shard_count
        )));
    }
    prepare_data_dir(&request.data_dir)?;
    let cluster_config = cluster::ClusterConfig {
        node_id: request.node_id,
        shards: manifest.shard_count,
        data_dir: request.data_dir.clone(),
        ..cluster::ClusterConfig::default()
    };
    cluster::node::check_identity(&cluster_config)
        .map_err(|error| BackupError::Invalid(format!("writing the data directory's identity: {error}")))?;
    let membership = cluster::raft_types::MembershipImage::single(request.node_id, &request.peer_addr);

    let mut restored = Vec::with_capacity(sources.len());
    for (from, shard) in &sources {
        let snapshot = shard.snapshot.as_ref().map(|file| inside(from, &file.path)).transpose()?;
        let backup_segments: Vec<PathBuf> =
            shard.segments.iter().map(|file| inside(from, &file.path)).collect::<Result<_, _>>()?;
        let archive_dir = request.archive.as_ref().map(|dir| dir.join(shard_dir_name(shard.shard)));
        let (segments, ends_in_archive) = merge_segments(&backup_segments, archive_dir.as_deref())?;
        // Past the backup's last index only archived (committed) entries.
        let cap = if ends_in_archive { None } else { shard.last_index };
        let replayed =
            replay_shard(shard.shard, manifest.shard_count, snapshot.as_deref(), &segments, request.until, cap)?;
        let mut state = replayed.state;
        let last = state.last_applied();
        let digest = hex_digest(state.digest());
        if let Some(last) = last {
            state.replace_membership_config(membership.clone());
            write_shard(&request.data_dir, shard.shard, &state, last, request.node_id)?;
        }
        restored.push(RestoredShard {
            shard: shard.shard,
            index: last.map(|id| id.index),
            term: last.map(|id| id.term),
            log_time_ms: state.now_ms(),
            digest,
            entries_replayed: replayed.entries_applied,
            log_end: replayed.log_end,
        });
    }
    Ok(restored)
}

fn prepare_data_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::create_dir_all(dir).map_err(BackupError::io(dir))?;
    if std::fs::read_dir(dir).map_err(BackupError::io(dir))?.next().is_some() {
        return Err(BackupError::NotEmpty(dir.to_path_buf()));
    }
    Ok(())
}

/// The backup's segments and the archive's, by sequence number (the
/// archive's copy wins), cut to the newest consecutive run. Returns
/// whether the last segment came from the archive.
fn merge_segments(backup: &[PathBuf], archive: Option<&Path>) -> Result<(Vec<PathBuf>, bool), BackupError> {
    let mut by_seq: BTreeMap<u64, (PathBuf, bool)> = BTreeMap::new();
    for path in backup {
        if let Some(seq) = segment_seq(path) {
            by_seq.insert(seq, (path.clone(), false));
        }
    }
    if let Some(dir) = archive
        && dir.exists()
    {
        for entry in std::fs::read_dir(dir).map_err(BackupError::io(dir))? {
            let path = entry.map_err(BackupError::io(dir))?.path();
            if let Some(seq) = segment_seq(&path) {
                by_seq.insert(seq, (path, true));
            }
        }
    }
    // Older archived segments may have gaps (an archive started later, or
    // pruned): only the run that reaches the newest segment matters, and
    // the replay checks it covers the snapshot.
    let mut run: Vec<(u64, (PathBuf, bool))> = Vec::new();
    for (seq, file) in by_seq.into_iter().rev() {
        if let Some((previous, _)) = run.last()
            && previous.checked_sub(1) != Some(seq)
        {
            break;
        }
        run.push((seq, file));
    }
    run.reverse();
    let ends_in_archive = run.last().is_some_and(|(_, (_, archived))| *archived);
    Ok((run.into_iter().map(|(_, (path, _))| path).collect(), ends_in_archive))
}

/// Writes shard `shard` of a data directory as a restore leaves it: one
/// snapshot of `state` at `last` and an empty WAL purged up to it, voted
/// in its term. (`tally-bench backup` builds its node this way too.)
pub fn write_shard(
    data_dir: &Path,
    shard: u32,
    state: &engine::ShardState,
    last: LogId,
    node_id: u64,
) -> Result<(), BackupError> {
    let dir = cluster::node::shard_dir(data_dir, shard);
    let store = SnapshotStore::open(dir.join("snapshots"), 2)
        .map_err(|error| BackupError::Invalid(format!("shard {shard}: {error}")))?;
    store.save(state).map_err(|error| BackupError::Invalid(format!("shard {shard}: writing the snapshot: {error}")))?;
    let wal_error = |error: engine::WalError| BackupError::Invalid(format!("shard {shard}: writing the WAL: {error}"));
    let mut wal = Wal::open(dir.join("wal"), engine::WalConfig::default()).map_err(wal_error)?;
    // The node's first election then runs in a term after the log's last:
    // its blank entry must not go back in term (the WAL refuses that).
    wal.save_vote(Vote { term: last.term, voted_for: Some(node_id), committed: false }).map_err(wal_error)?;
    wal.purge(last).map_err(wal_error)?;
    Ok(())
}

/// Milliseconds since the Unix epoch of an RFC 3339 time
/// (`2026-12-06T18:30:00Z`, `2026-12-06T18:30:00.250+01:00`).
pub fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 time such as 2026-12-06T18:30:00Z");
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    if bytes[13] != b':' || bytes[16] != b':' {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = text.get(range).ok_or_else(bad)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let mut scaled = fraction[..digits.min(3)].to_owned();
        while scaled.len() < 3 {
            scaled.push('0');
        }
        millis = scaled.parse::<i64>().map_err(|_| bad())?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && &rest[3..4] == ":" => {
            let hours: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let minutes: i64 = rest[4..6].parse().map_err(|_| bad())?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (hours * 60 + minutes)
        }
        _ => return Err(bad()),
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    let ms = seconds * 1_000 + millis;
    u64::try_from(ms).map_err(|_| format!("{text:?} is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_to_unix_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339_ms("2000-03-01T00:00:00Z"), Ok(951_868_800_000));
        assert_eq!(parse_rfc3339_ms("2026-12-06T18:30:00.25Z"), Ok(1_796_581_800_250));
        assert_eq!(parse_rfc3339_ms("2026-12-06T19:30:00.250+01:00"), Ok(1_796_581_800_250));
        for bad in ["2026-12-06", "2026-13-06T18:30:00Z", "2026-12-06T18:30:00", "yesterday"] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad} parsed");
        }
    }
}
