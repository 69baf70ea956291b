//! The frame codec: `[len u32 LE][kind u8][0u8; 3][correlation u64 LE]`
//! then the payload (the layout is in the module docs of `transport`).
//! Reading is bounded in size (`len_max`) and in time (a stalled frame),
//! and the payload buffer grows only as bytes arrive.

use std::io;
use std::time::Duration;

use rkyv::util::AlignedVec;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use super::conn::LinkError;
use super::stats::{Counters, bump};
use super::{TransportError, len_u64};

/// Bytes before every payload: length, kind, 3 reserved bytes, correlation id.
pub const FRAME_HEADER_LEN: usize = 16;
pub const FRAME_KIND_HELLO: u8 = 1;
pub const FRAME_KIND_REQUEST: u8 = 2;
pub const FRAME_KIND_ANSWER: u8 = 3;
pub const FRAME_KIND_ANSWER_TOO_LARGE: u8 = 4;
pub const FRAME_KIND_ANSWER_FAILED: u8 = 5;
pub const FRAME_KIND_PROOF: u8 = 6;
/// First allocation for a frame's payload; the buffer doubles from here as
/// bytes arrive, up to the length the header claims.
pub const PAYLOAD_STEP_FIRST: usize = 64 * 1024;
/// Payload of an answer-too-large frame: the answer's length and the limit.
pub(super) const TOO_LARGE_LEN: usize = 12;

pub(super) struct Frame {
    pub(super) kind: u8,
    pub(super) correlation: u64,
    pub(super) payload: AlignedVec,
}

pub(super) struct OutFrame {
    pub(super) kind: u8,
    pub(super) correlation: u64,
    pub(super) payload: AlignedVec,
}

/// Reads one frame; `None` when the peer closed the connection between frames.
/// The payload buffer grows with the bytes that arrive (doubling from
/// `PAYLOAD_STEP_FIRST`), so a header that claims more than is sent costs
/// only what was sent. Each wait for more bytes of a started frame is
/// bounded by `stall`.
pub(super) async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    len_max: u32,
    counters: &Counters,
    stall: Duration,
) -> Result<Option<Frame>, LinkError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut filled = 0;
    while filled < FRAME_HEADER_LEN {
        let wait = if filled == 0 { None } else { Some(stall) };
        let available = fill(reader, wait).await?;
        if available.is_empty() {
            if filled == 0 {
                return Ok(None);
            }
            return Err(LinkError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let take = available.len().min(FRAME_HEADER_LEN - filled);
        header[filled..filled + take].copy_from_slice(&available[..take]);
        reader.consume(take);
        filled += take;
    }
    let [l0, l1, l2, l3, kind, r0, r1, r2, c0, c1, c2, c3, c4, c5, c6, c7] = header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    if [r0, r1, r2] != [0; 3] {
        return Err(LinkError::Protocol("reserved header bytes are not zero".to_string()));
    }
    if len > len_max {
        return Err(LinkError::TooLarge { len, max: len_max });
    }
    let correlation = u64::from_le_bytes([c0, c1, c2, c3, c4, c5, c6, c7]);
    let len_usize = len as usize;
    // Aligned memory, as rkyv's validation wants.
    let mut payload = AlignedVec::with_capacity(len_usize.min(PAYLOAD_STEP_FIRST));
    while payload.len() < len_usize {
        let available = fill(reader, Some(stall)).await?;
        if available.is_empty() {
            return Err(LinkError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let take = available.len().min(len_usize - payload.len());
        let needed = payload.len() + take;
        if needed > payload.capacity() {
            // Double, but never past the claimed length.
            let grown = needed.max(payload.capacity().saturating_mul(2)).min(len_usize);
            payload.reserve_exact(grown - payload.len());
        }
        payload.extend_from_slice(&available[..take]);
        reader.consume(take);
    }
    debug_assert!(payload.capacity() <= len_usize.max(PAYLOAD_STEP_FIRST).max(1) * 2);
    bump(&counters.frames_received, 1);
    bump(&counters.bytes_received, len_u64(FRAME_HEADER_LEN) + u64::from(len));
    Ok(Some(Frame { kind, correlation, payload }))
}

/// The reader's buffered bytes, reading more if there are none; empty at
/// the end of the stream. `wait` bounds the wait for bytes.
pub(super) async fn fill<R: AsyncBufRead + Unpin>(reader: &mut R, wait: Option<Duration>) -> Result<&[u8], LinkError> {
    match wait {
        None => Ok(reader.fill_buf().await?),
        Some(wait) => match tokio::time::timeout(wait, reader.fill_buf()).await {
            Ok(available) => Ok(available?),
            Err(_) => Err(LinkError::Stalled),
        },
    }
}

/// Buffers one frame; the caller flushes.
pub(super) async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    kind: u8,
    correlation: u64,
    payload: &[u8],
    counters: &Counters,
) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame payload over 4 GiB"))?;
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4] = kind;
    header[8..16].copy_from_slice(&correlation.to_le_bytes());
    writer.write_all(&header).await?;
    writer.write_all(payload).await?;
    bump(&counters.frames_sent, 1);
    bump(&counters.bytes_sent, len_u64(FRAME_HEADER_LEN) + u64::from(len));
    Ok(())
}

pub(super) fn parse_too_large(payload: &[u8]) -> Result<TransportError, LinkError> {
    let Ok::<[u8; TOO_LARGE_LEN], _>(bytes) = payload.try_into() else {
        return Err(LinkError::Protocol(format!("answer-too-large frame of {} bytes", payload.len())));
    };
    let [l0, l1, l2, l3, l4, l5, l6, l7, m0, m1, m2, m3] = bytes;
    Ok(TransportError::FrameTooLarge {
        len: u64::from_le_bytes([l0, l1, l2, l3, l4, l5, l6, l7]),
        max: u32::from_le_bytes([m0, m1, m2, m3]),
    })
}
