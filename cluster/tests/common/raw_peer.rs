//! A peer written from the transport's module docs, byte by byte, with no
//! code of the transport: it shakes hands (or fails to, on purpose) and
//! sends whatever frames a test wants, so tests can speak the protocol as
//! an attacker would.

use std::time::Duration;

use cluster::raft_types::NodeId;
use cluster::transport::{
    FRAME_HEADER_LEN, FRAME_KIND_ANSWER, FRAME_KIND_HELLO, FRAME_KIND_PROOF, FRAME_KIND_REQUEST, HELLO_LEN,
    HELLO_MAGIC, NONCE_LEN, PROOF_LABEL_ACCEPTING, PROOF_LABEL_CONNECTING, PROTOCOL_VERSION,
};
use cluster::wire::{Request, Response};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough that only a hang, never a slow machine, runs out of it.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Header of a frame, laid out as the module docs say.
pub fn header(len: u32, kind: u8, correlation: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(FRAME_HEADER_LEN);
    header.extend_from_slice(&len.to_le_bytes());
    header.extend_from_slice(&[kind, 0, 0, 0]);
    header.extend_from_slice(&correlation.to_le_bytes());
    header
}

pub fn frame(kind: u8, correlation: u64, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or_else(|e| panic!("payload: {e}"));
    let mut frame = header(len, kind, correlation);
    frame.extend_from_slice(payload);
    frame
}

/// A hello frame: magic, version, 4 zero bytes, node id, nonce.
pub fn hello(version: u32, node_id: NodeId, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(HELLO_LEN as usize);
    payload.extend_from_slice(&HELLO_MAGIC);
    payload.extend_from_slice(&version.to_le_bytes());
    payload.extend_from_slice(&[0; 4]);
    payload.extend_from_slice(&node_id.to_le_bytes());
    payload.extend_from_slice(nonce);
    frame(FRAME_KIND_HELLO, 0, &payload)
}

/// The HMAC-SHA256 proof, as the module docs define it.
pub fn proof(
    secret: &[u8],
    label: &[u8],
    connecting: NodeId,
    accepting: NodeId,
    connecting_nonce: &[u8; NONCE_LEN],
    accepting_nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|e| panic!("key: {e}"));
    mac.update(label);
    mac.update(&PROTOCOL_VERSION.to_le_bytes());
    mac.update(&connecting.to_le_bytes());
    mac.update(&accepting.to_le_bytes());
    mac.update(connecting_nonce);
    mac.update(accepting_nonce);
    mac.finalize().into_bytes().to_vec()
}

pub fn request_frame(correlation: u64, request: &Request) -> Vec<u8> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(request).unwrap_or_else(|e| panic!("encode: {e}"));
    frame(FRAME_KIND_REQUEST, correlation, &payload)
}

/// One frame: kind, correlation, payload. `None` when the other side
/// closed (or reset) the connection, or sent nothing within `PATIENCE`.
pub async fn read_frame(stream: &mut TcpStream) -> Option<(u8, u64, Vec<u8>)> {
    let read = async {
        let mut header = [0u8; FRAME_HEADER_LEN];
        stream.read_exact(&mut header).await.ok()?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await.ok()?;
        let mut correlation = [0u8; 8];
        correlation.copy_from_slice(&header[8..16]);
        Some((header[4], u64::from_le_bytes(correlation), payload))
    };
    tokio::time::timeout(PATIENCE, read).await.ok().flatten()
}

/// The accepting side's hello, split: node id and nonce.
pub fn parse_hello(payload: &[u8]) -> (NodeId, [u8; NONCE_LEN]) {
    assert_eq!(payload.len(), HELLO_LEN as usize, "hello length");
    assert_eq!(payload[..8], HELLO_MAGIC);
    let mut id = [0u8; 8];
    id.copy_from_slice(&payload[16..24]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&payload[24..]);
    (u64::from_le_bytes(id), nonce)
}

/// What became of a handshake.
#[derive(Debug)]
pub enum Handshake {
    /// The accepting side proved itself: the connection is open for requests.
    Accepted(TcpStream),
    /// Closed after our proof without proving itself.
    Refused(TcpStream),
}

/// Connects to `addr` as node `id` and shakes hands, proving with `secret`
/// (empty: no secret). Expects the accepting side to be `expected`.
pub async fn shake_hands(addr: &str, id: NodeId, expected: NodeId, secret: &[u8]) -> Handshake {
    let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    let ours = [7u8; NONCE_LEN];
    stream.write_all(&hello(PROTOCOL_VERSION, id, &ours)).await.unwrap_or_else(|e| panic!("write hello: {e}"));
    let (kind, _, payload) = read_frame(&mut stream).await.unwrap_or_else(|| panic!("no hello from {addr}"));
    assert_eq!(kind, FRAME_KIND_HELLO);
    let (their_id, theirs) = parse_hello(&payload);
    assert_eq!(their_id, expected);
    let mine = proof(secret, PROOF_LABEL_CONNECTING, id, expected, &ours, &theirs);
    stream.write_all(&frame(FRAME_KIND_PROOF, 0, &mine)).await.unwrap_or_else(|e| panic!("write proof: {e}"));
    match read_frame(&mut stream).await {
        Some((kind, _, payload)) => {
            assert_eq!(kind, FRAME_KIND_PROOF);
            let expected_proof = proof(secret, PROOF_LABEL_ACCEPTING, id, expected, &ours, &theirs);
            assert_eq!(payload, expected_proof, "the accepting side's proof");
            Handshake::Accepted(stream)
        }
        None => Handshake::Refused(stream),
    }
}

/// `shake_hands`, which must succeed.
pub async fn authenticated(addr: &str, id: NodeId, expected: NodeId, secret: &[u8]) -> TcpStream {
    match shake_hands(addr, id, expected, secret).await {
        Handshake::Accepted(stream) => stream,
        Handshake::Refused(_) => panic!("the handshake with {addr} as node {id} was refused"),
    }
}

/// Sends `request` and reads its answer; `None` if the connection closed.
pub async fn call(stream: &mut TcpStream, correlation: u64, request: &Request) -> Option<Response> {
    stream.write_all(&request_frame(correlation, request)).await.ok()?;
    let (kind, answered, payload) = read_frame(stream).await?;
    assert_eq!((kind, answered), (FRAME_KIND_ANSWER, correlation));
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&payload);
    Some(rkyv::from_bytes::<Response, rkyv::rancor::Error>(&aligned).unwrap_or_else(|e| panic!("decode: {e}")))
}

/// Waits until the other side closes `stream` (EOF or reset), bounded by
/// `PATIENCE`; fails if it answers anything meanwhile.
pub async fn assert_closed_unanswered(stream: &mut TcpStream) {
    let mut buffer = [0u8; 256];
    let closed = tokio::time::timeout(PATIENCE, async {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => Ok(()),
            Ok(n) => Err(n),
        }
    })
    .await;
    match closed {
        Ok(Ok(())) => {}
        Ok(Err(n)) => panic!("the node answered {n} bytes instead of closing"),
        Err(_) => panic!("the node kept the connection open"),
    }
}
