//! The handshake: each side's hello (node id, protocol version, a fresh
//! nonce), then a mutual HMAC-SHA256 challenge-response on the cluster's
//! secret (the protocol is in the module docs of `transport`).

use std::io;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};

use super::conn::LinkError;
use super::frame::{FRAME_KIND_HELLO, FRAME_KIND_PROOF, Frame, read_frame, write_frame};
use super::stats::Counters;
use super::{Common, Handler, PROTOCOL_VERSION};
use crate::raft_types::NodeId;

/// First bytes of a hello payload.
pub const HELLO_MAGIC: [u8; 8] = *b"TALLYNET";
/// Random bytes each side of a handshake contributes.
pub const NONCE_LEN: usize = 32;
/// Magic, version, 4 reserved bytes, node id, nonce.
pub const HELLO_LEN: u32 = 56;
/// An HMAC-SHA256 tag.
pub const PROOF_LEN: u32 = 32;
/// What the connecting side's proof MACs first; the accepting side's label
/// differs, so neither proof is valid in the other direction.
pub const PROOF_LABEL_CONNECTING: &[u8] = b"tally peer proof: connecting side";
pub const PROOF_LABEL_ACCEPTING: &[u8] = b"tally peer proof: accepting side";

/// What a hello says: who sent it and its nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hello {
    pub(super) node_id: NodeId,
    pub(super) nonce: [u8; NONCE_LEN],
}

/// A fresh nonce from the OS's random source.
fn fresh_nonce() -> Result<[u8; NONCE_LEN], LinkError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| LinkError::Io(io::Error::other(format!("no random source: {e}"))))?;
    Ok(nonce)
}

fn hello_payload(hello: &Hello) -> [u8; HELLO_LEN as usize] {
    let mut payload = [0u8; HELLO_LEN as usize];
    payload[0..8].copy_from_slice(&HELLO_MAGIC);
    payload[8..12].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    payload[16..24].copy_from_slice(&hello.node_id.to_le_bytes());
    payload[24..].copy_from_slice(&hello.nonce);
    payload
}

/// The hello in `frame`, which is `None` when the peer closed first.
fn parse_hello(frame: Option<&Frame>) -> Result<Hello, LinkError> {
    let frame = frame.ok_or_else(|| LinkError::Protocol("closed before the hello".to_string()))?;
    if frame.kind != FRAME_KIND_HELLO {
        return Err(LinkError::Protocol(format!("frame kind {} before the hello", frame.kind)));
    }
    let payload = frame.payload.as_slice();
    if payload.get(0..8) != Some(HELLO_MAGIC.as_slice()) {
        return Err(LinkError::Protocol("bad hello magic".to_string()));
    }
    // The version first: an older node's hello has another length, and
    // "version 3" says more than "hello of 24 bytes".
    if let Some(&[v0, v1, v2, v3]) = payload.get(8..12) {
        let version = u32::from_le_bytes([v0, v1, v2, v3]);
        if version != PROTOCOL_VERSION {
            return Err(LinkError::Protocol(format!(
                "protocol version {version}, this node speaks {PROTOCOL_VERSION}"
            )));
        }
    }
    let Ok::<[u8; HELLO_LEN as usize], _>(hello) = payload.try_into() else {
        return Err(LinkError::Protocol(format!("hello of {} bytes", payload.len())));
    };
    if hello[12..16] != [0; 4] {
        return Err(LinkError::Protocol("reserved hello bytes are not zero".to_string()));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&hello[16..24]);
    let node_id = u64::from_le_bytes(id);
    if node_id == 0 {
        return Err(LinkError::Protocol("hello from node 0".to_string()));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&hello[24..]);
    Ok(Hello { node_id, nonce })
}

/// The MAC both sides compute: the label of the side proving, then the
/// protocol version, both node ids and both nonces, connecting side first.
fn proof_mac(key: &[u8], label: &[u8], connecting: &Hello, accepting: &Hello) -> Result<Hmac<Sha256>, LinkError> {
    // HMAC takes a key of any length; the error is unreachable, but handled.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|e| LinkError::Protocol(format!("HMAC key: {e}")))?;
    mac.update(label);
    mac.update(&PROTOCOL_VERSION.to_le_bytes());
    mac.update(&connecting.node_id.to_le_bytes());
    mac.update(&accepting.node_id.to_le_bytes());
    mac.update(&connecting.nonce);
    mac.update(&accepting.nonce);
    Ok(mac)
}

async fn send_proof<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mac: Hmac<Sha256>,
    counters: &Counters,
) -> Result<(), LinkError> {
    let tag = mac.finalize().into_bytes();
    write_frame(writer, FRAME_KIND_PROOF, 0, tag.as_slice(), counters).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads the other side's proof and checks it against `mac`, in constant
/// time. `closed` says what a connection closed instead means.
async fn check_proof<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    mac: Hmac<Sha256>,
    common: &Common,
    closed: &str,
) -> Result<(), LinkError> {
    let frame = read_frame(reader, PROOF_LEN, &common.counters, common.connect_timeout()).await?;
    let frame = frame.ok_or_else(|| LinkError::Refused(closed.to_string()))?;
    if frame.kind != FRAME_KIND_PROOF {
        return Err(LinkError::Protocol(format!("frame kind {} instead of the proof", frame.kind)));
    }
    mac.verify_slice(&frame.payload).map_err(|_| LinkError::Refused("wrong proof: another cluster.secret".to_string()))
}

/// The connecting side's handshake with `peer`: hello, check who answered,
/// prove, check the other's proof.
pub(super) async fn handshake_connecting<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut R,
    writer: &mut W,
    common: &Common,
    peer: NodeId,
) -> Result<(), LinkError> {
    let ours = Hello { node_id: common.node_id, nonce: fresh_nonce()? };
    write_frame(writer, FRAME_KIND_HELLO, 0, &hello_payload(&ours), &common.counters).await?;
    writer.flush().await?;
    let frame = read_frame(reader, HELLO_LEN, &common.counters, common.connect_timeout()).await?;
    let theirs = parse_hello(frame.as_ref())?;
    // Nothing is proved to a node other than the one dialed.
    if theirs.node_id != peer {
        return Err(LinkError::Refused(format!("answered as node {}", theirs.node_id)));
    }
    if theirs.nonce == ours.nonce {
        return Err(LinkError::Protocol("the peer's nonce is ours".to_string()));
    }
    send_proof(writer, proof_mac(common.key(), PROOF_LABEL_CONNECTING, &ours, &theirs)?, &common.counters).await?;
    let expected = proof_mac(common.key(), PROOF_LABEL_ACCEPTING, &ours, &theirs)?;
    let closed = "the peer closed before proving itself: another cluster.secret, or it does not know this node";
    check_proof(reader, expected, common, closed).await
}

/// The accepting side's handshake: hello, hello, check the other's proof,
/// ask `handler` whether it admits the node, prove. Answers the node id
/// every request on the connection is attributed to.
pub(super) async fn handshake_accepting<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut R,
    writer: &mut W,
    common: &Common,
    handler: &dyn Handler,
) -> Result<NodeId, LinkError> {
    let frame = read_frame(reader, HELLO_LEN, &common.counters, common.connect_timeout()).await?;
    let theirs = parse_hello(frame.as_ref())?;
    let peer = theirs.node_id;
    if peer == common.node_id {
        return Err(LinkError::Refused(format!("hello names this node ({peer})")));
    }
    if common.is_blocked(peer) {
        return Err(LinkError::Blocked);
    }
    let ours = Hello { node_id: common.node_id, nonce: fresh_nonce()? };
    write_frame(writer, FRAME_KIND_HELLO, 0, &hello_payload(&ours), &common.counters).await?;
    writer.flush().await?;
    let expected = proof_mac(common.key(), PROOF_LABEL_CONNECTING, &theirs, &ours)?;
    check_proof(reader, expected, common, "closed before its proof").await?;
    if !handler.admits(peer) {
        return Err(LinkError::Refused(format!("node {peer} is not a member or learner this node knows")));
    }
    send_proof(writer, proof_mac(common.key(), PROOF_LABEL_ACCEPTING, &theirs, &ours)?, &common.counters).await?;
    Ok(peer)
}
