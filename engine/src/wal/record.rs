//! WAL records and their frames.
//!
//! A frame is a 12-byte header — payload length (u32 LE), CRC-32C (u32 LE),
//! record kind (u8), three zero bytes — followed by the payload: the rkyv
//! archive of the record's value. The CRC covers the length, the kind, the
//! zero bytes and the payload, so a torn or flipped byte anywhere fails it.
//!
//! Every record is checked twice: right before it is written (the archive is
//! validated and decoded back to the log position the writer expects) and
//! right after it is read (CRC, archive validation, then the reader's own
//! position checks).

use std::fmt;
use std::sync::Arc;

use rkyv::rancor::Error as RkyvError;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::error::WalError;
use crate::raft_log::{LogEntry, LogId, Vote};

pub(crate) const FRAME_HEADER_LEN: usize = 12;
pub(crate) const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"TALLYWAL");
/// Bumped when an entry's archived shape changes (2: batches carry request
/// ids, limits the dedup window; 3: a hold line's warehouse is optional and
/// a hold names its allocation; 4: commands carry principal, note and
/// reference for the ledger; 5: a hold names its customer, and
/// `SetCustomerLimit`; 6: `ConfirmPart`, a confirm of fewer units; 7: issue
/// 17's commerce commands (`SetBundle`, `SetProduct`, `DeleteItem`,
/// `DeleteSku`, `SetStates`, `MoveQuantity`, allocation options) and their
/// bounds in `Limits`), so an old segment is refused, not misread.
pub(crate) const SEGMENT_FORMAT: u32 = 7;

/// The durable metadata of a log: repeated at the head of every segment so
/// that deleting old segments never loses the vote, the committed id or the
/// purge point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
}

/// First record of every segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) struct SegmentHeader {
    pub magic: u64,
    pub format: u32,
    pub seq: u64,
    pub meta: Meta,
    /// The last entry written before this segment (or the purge point past
    /// it): the first entry in this segment follows it. Recovery needs it
    /// once the segments before are deleted.
    pub last: Option<LogId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Header = 1,
    Entry = 2,
    Vote = 3,
    Committed = 4,
    /// Drops every entry after a log id (`None`: all entries).
    Truncate = 5,
    /// Forgets every entry up to a log id, inclusive.
    Purge = 6,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Header,
            2 => Kind::Entry,
            3 => Kind::Vote,
            4 => Kind::Committed,
            5 => Kind::Truncate,
            6 => Kind::Purge,
            _ => return None,
        })
    }
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Header(SegmentHeader),
    Entry(LogEntry),
    Vote(Vote),
    Committed(Option<LogId>),
    Truncate(Option<LogId>),
    Purge(LogId),
}

/// A record to encode, borrowed so that appending never clones an entry.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RecordRef<'a> {
    Header(&'a SegmentHeader),
    Entry(&'a LogEntry),
    Vote(&'a Vote),
    Committed(&'a Option<LogId>),
    Truncate(&'a Option<LogId>),
    Purge(&'a LogId),
}

/// Why a frame could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Fewer bytes remain than a frame header.
    ShortHeader,
    /// The header claims more payload than remains.
    ShortPayload {
        len: usize,
    },
    BadChecksum {
        len: usize,
    },
    /// The checksum holds but the content is not a valid record.
    BadContent {
        len: usize,
        reason: String,
    },
}

impl FrameError {
    /// Bytes the frame claims to span, if its header could be read.
    pub fn frame_len(&self) -> Option<usize> {
        match self {
            FrameError::ShortHeader => None,
            FrameError::ShortPayload { len } | FrameError::BadChecksum { len } | FrameError::BadContent { len, .. } => {
                Some(FRAME_HEADER_LEN + len)
            }
        }
    }

    pub fn reason(&self) -> String {
        match self {
            FrameError::ShortHeader => "truncated frame header".into(),
            FrameError::ShortPayload { len } => {
                format!("frame claims {len} payload bytes past the end of the file")
            }
            FrameError::BadChecksum { len } => format!("checksum mismatch on a {len}-byte record"),
            FrameError::BadContent { reason, .. } => format!("record content invalid: {reason}"),
        }
    }
}

/// Why a record could not be encoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EncodeError {
    TooLarge { len: usize, max: usize },
    Invalid(String),
}

impl From<EncodeError> for WalError {
    fn from(error: EncodeError) -> Self {
        match error {
            EncodeError::TooLarge { len, max } => WalError::RecordTooLarge { len, max },
            EncodeError::Invalid(reason) => WalError::Encode(reason),
        }
    }
}

/// Reusable buffers for encoding.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    payload: AlignedVec,
}

impl Encoder {
    /// Appends the frame of `record` to `out`, after checking the encoded
    /// payload decodes back to what was meant. Returns the frame length.
    pub fn encode(
        &mut self,
        record: RecordRef<'_>,
        record_bytes_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, EncodeError> {
        let payload = std::mem::take(&mut self.payload);
        let result = match record {
            RecordRef::Header(value) => serialize(value, payload),
            RecordRef::Entry(value) => serialize(value, payload),
            RecordRef::Vote(value) => serialize(value, payload),
            RecordRef::Committed(value) => serialize(value, payload),
            RecordRef::Truncate(value) => serialize(value, payload),
            RecordRef::Purge(value) => serialize(value, payload),
        };
        let payload = result.map_err(EncodeError::Invalid)?;
        let outcome = self.frame(record, &payload, record_bytes_max, out);
        self.payload = payload;
        outcome
    }

    fn frame(
        &self,
        record: RecordRef<'_>,
        payload: &AlignedVec,
        record_bytes_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, EncodeError> {
        let kind = kind_of(record);
        if kind == Kind::Entry && payload.len() > record_bytes_max {
            return Err(EncodeError::TooLarge { len: payload.len(), max: record_bytes_max });
        }
        check_before_write(record, kind, payload).map_err(EncodeError::Invalid)?;
        let len = u32::try_from(payload.len())
            .map_err(|_| EncodeError::TooLarge { len: payload.len(), max: u32::MAX as usize })?;
        let header = frame_header(len, kind, payload);
        out.extend_from_slice(&header);
        out.extend_from_slice(payload);
        Ok(FRAME_HEADER_LEN + payload.len())
    }
}

fn serialize<T>(value: &T, mut buffer: AlignedVec) -> Result<AlignedVec, String>
where
    T: for<'a> Serialize<rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, RkyvError>>,
{
    buffer.clear();
    rkyv::api::high::to_bytes_in::<_, RkyvError>(value, buffer).map_err(|error| error.to_string())
}

fn kind_of(record: RecordRef<'_>) -> Kind {
    match record {
        RecordRef::Header(_) => Kind::Header,
        RecordRef::Entry(_) => Kind::Entry,
        RecordRef::Vote(_) => Kind::Vote,
        RecordRef::Committed(_) => Kind::Committed,
        RecordRef::Truncate(_) => Kind::Truncate,
        RecordRef::Purge(_) => Kind::Purge,
    }
}

fn frame_header(len: u32, kind: Kind, payload: &[u8]) -> [u8; FRAME_HEADER_LEN] {
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[8] = kind as u8;
    let crc = checksum(&header, payload);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    header
}

/// CRC-32C over the header (with its CRC field as zeros) and the payload.
fn checksum(header: &[u8; FRAME_HEADER_LEN], payload: &[u8]) -> u32 {
    let mut covered = *header;
    covered[4..8].fill(0);
    crc32c::crc32c_append(crc32c::crc32c(&covered), payload)
}

/// Validates the archive and decodes the parts a reader will rely on, so a
/// serialiser bug can never reach the disk.
fn check_before_write(record: RecordRef<'_>, kind: Kind, payload: &AlignedVec) -> Result<(), String> {
    if let RecordRef::Entry(entry) = record {
        // Entries are large: validate the archive in place (every byte of it,
        // as a reader will) without building a second copy of the commands.
        let archived =
            rkyv::access::<crate::raft_log::ArchivedLogEntry, RkyvError>(payload).map_err(|e| e.to_string())?;
        return if LogId::from(&archived.log_id) == entry.log_id {
            Ok(())
        } else {
            Err("entry record does not decode to its log id".into())
        };
    }
    let decoded = decode(kind, payload).map_err(|error| error.reason())?;
    let matches = match (record, &decoded) {
        (RecordRef::Entry(entry), Record::Entry(read)) => read.log_id == entry.log_id,
        (RecordRef::Header(header), Record::Header(read)) => read == header,
        (RecordRef::Vote(vote), Record::Vote(read)) => read == vote,
        (RecordRef::Committed(committed), Record::Committed(read)) => read == committed,
        (RecordRef::Truncate(keep), Record::Truncate(read)) => read == keep,
        (RecordRef::Purge(upto), Record::Purge(read)) => read == upto,
        _ => false,
    };
    if matches { Ok(()) } else { Err(format!("{kind:?} record does not decode to what was written")) }
}

/// Reads the frame at the start of `bytes`: returns the record and the
/// frame's length.
pub(crate) fn read_frame(bytes: &[u8], scratch: &mut AlignedVec) -> Result<(Record, usize), FrameError> {
    let Some(header) = bytes.get(..FRAME_HEADER_LEN) else {
        return Err(FrameError::ShortHeader);
    };
    let mut header_bytes = [0u8; FRAME_HEADER_LEN];
    header_bytes.copy_from_slice(header);
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let Some(payload) = bytes.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Err(FrameError::ShortPayload { len });
    };
    if checksum(&header_bytes, payload) != crc {
        return Err(FrameError::BadChecksum { len });
    }
    if header[9..12] != [0, 0, 0] {
        return Err(FrameError::BadContent { len, reason: "reserved header bytes are not zero".into() });
    }
    let Some(kind) = Kind::from_byte(header[8]) else {
        return Err(FrameError::BadContent { len, reason: format!("unknown record kind {}", header[8]) });
    };
    scratch.clear();
    scratch.extend_from_slice(payload);
    let record = decode(kind, scratch).map_err(|error| match error {
        FrameError::BadContent { reason, .. } => FrameError::BadContent { len, reason },
        other => other,
    })?;
    Ok((record, FRAME_HEADER_LEN + len))
}

fn decode(kind: Kind, payload: &AlignedVec) -> Result<Record, FrameError> {
    let bad = |error: RkyvError| FrameError::BadContent { len: payload.len(), reason: error.to_string() };
    Ok(match kind {
        Kind::Header => Record::Header(rkyv::from_bytes::<SegmentHeader, RkyvError>(payload).map_err(bad)?),
        Kind::Entry => Record::Entry(rkyv::from_bytes::<LogEntry, RkyvError>(payload).map_err(bad)?),
        Kind::Vote => Record::Vote(rkyv::from_bytes::<Vote, RkyvError>(payload).map_err(bad)?),
        Kind::Committed => Record::Committed(rkyv::from_bytes::<Option<LogId>, RkyvError>(payload).map_err(bad)?),
        Kind::Truncate => Record::Truncate(rkyv::from_bytes::<Option<LogId>, RkyvError>(payload).map_err(bad)?),
        Kind::Purge => Record::Purge(rkyv::from_bytes::<LogId, RkyvError>(payload).map_err(bad)?),
    })
}

/// One entry's frame, exactly as the WAL holds it (header and payload):
/// the bytes the leader encodes once, replicates to every follower and each
/// follower appends verbatim. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct EntryFrame(Arc<[u8]>);

impl fmt::Debug for EntryFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryFrame({} bytes)", self.0.len())
    }
}

impl EntryFrame {
    /// Encodes `entry` on its own (entries that arrive without a frame, such
    /// as a new leader's blank entry on its way to a follower).
    pub fn encode(entry: &LogEntry, record_bytes_max: usize) -> Result<EntryFrame, WalError> {
        let mut out = Vec::new();
        Encoder::default().encode(RecordRef::Entry(entry), record_bytes_max, &mut out).map_err(WalError::from)?;
        Ok(EntryFrame(out.into()))
    }

    /// Wraps bytes received from a peer. Nothing is trusted until `decode`.
    pub fn from_received(bytes: Vec<u8>) -> EntryFrame {
        EntryFrame(bytes.into())
    }

    pub(crate) fn from_written(bytes: &[u8]) -> EntryFrame {
        EntryFrame(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks the frame whole (length, CRC, kind, archive) and decodes its
    /// entry. A frame that is more than one record, or not an entry, or
    /// larger than `record_bytes_max` is refused.
    pub fn decode(&self, record_bytes_max: usize) -> Result<LogEntry, String> {
        let mut scratch = AlignedVec::new();
        let (record, len) = read_frame(&self.0, &mut scratch).map_err(|error| error.reason())?;
        if len != self.0.len() {
            return Err(format!("frame of {len} bytes followed by {} more", self.0.len() - len));
        }
        if len > record_bytes_max + FRAME_HEADER_LEN {
            return Err(format!("entry record of {len} bytes is over the limit of {record_bytes_max}"));
        }
        match record {
            Record::Entry(entry) => Ok(entry),
            other => Err(format!("expected an entry record, found {other:?}")),
        }
    }

    /// The log id in the frame's archive, validated but not decoded (for
    /// checks that a frame belongs to the entry it travels with).
    pub fn log_id(&self) -> Option<LogId> {
        let payload = self.0.get(FRAME_HEADER_LEN..)?;
        if self.0.get(8) != Some(&(Kind::Entry as u8)) {
            return None;
        }
        let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
        aligned.extend_from_slice(payload);
        let archived = rkyv::access::<crate::raft_log::ArchivedLogEntry, RkyvError>(&aligned).ok()?;
        Some(LogId::from(&archived.log_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;

    fn entry(index: u64) -> LogEntry {
        LogEntry::batch(LogId::new(2, index), 77, vec![Command::Tick])
    }

    #[test]
    fn a_frame_round_trips() {
        let mut encoder = Encoder::default();
        let mut out = Vec::new();
        let entry = entry(5);
        let len = encoder.encode(RecordRef::Entry(&entry), 1 << 20, &mut out).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(len, out.len());
        let mut scratch = AlignedVec::new();
        let (record, read_len) = read_frame(&out, &mut scratch).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(read_len, len);
        assert_eq!(record, Record::Entry(entry));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let mut encoder = Encoder::default();
        let mut out = Vec::new();
        let vote = Vote { term: 3, voted_for: Some(2), committed: true };
        encoder.encode(RecordRef::Vote(&vote), 1 << 20, &mut out).unwrap_or_else(|e| panic!("{e:?}"));
        let mut scratch = AlignedVec::new();
        for position in 0..out.len() {
            let mut bad = out.clone();
            bad[position] ^= 0x40;
            assert!(read_frame(&bad, &mut scratch).is_err(), "flip at {position} went unnoticed");
        }
    }

    #[test]
    fn a_short_frame_says_so() {
        let mut encoder = Encoder::default();
        let mut out = Vec::new();
        encoder.encode(RecordRef::Purge(&LogId::new(1, 9)), 1 << 20, &mut out).unwrap_or_else(|e| panic!("{e:?}"));
        let mut scratch = AlignedVec::new();
        assert_eq!(read_frame(&out[..5], &mut scratch), Err(FrameError::ShortHeader));
        assert!(matches!(read_frame(&out[..out.len() - 1], &mut scratch), Err(FrameError::ShortPayload { .. })));
    }

    #[test]
    fn an_oversized_record_is_refused_before_writing() {
        let mut encoder = Encoder::default();
        let mut out = Vec::new();
        let entry = entry(1);
        assert!(matches!(
            encoder.encode(RecordRef::Entry(&entry), 8, &mut out),
            Err(EncodeError::TooLarge { max: 8, .. })
        ));
        assert!(out.is_empty());
    }
}
