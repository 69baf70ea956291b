//! The peer transport: how this node's Raft groups and services reach other
//! nodes. One long-lived TCP connection per peer carries many calls at once.
//!
//! A call picks the peer's connection (connecting lazily, then a handshake),
//! queues its request frame for that connection's writer task and waits, at
//! most its timeout, for the reader task to hand back the answer with the same
//! correlation id. Answers arrive in any order. The serving side runs each
//! request in a task of its own, so a slow one (an append waiting for fsync, a
//! snapshot install) never holds up the others on the connection. When a
//! connection dies every call waiting on it fails at once; the next call
//! reconnects.
//!
//! # Frames
//!
//! ```text
//! [len u32 LE][kind u8][0u8; 3][correlation u64 LE][payload: len bytes]
//! ```
//!
//! `len` counts the payload only and is at most `frame_size_max`, on both
//! sides (at most `HELLO_LEN` or `PROOF_LEN` during the handshake). Kinds:
//! * 1 hello: `[b"TALLYNET"][version u32 LE][0u32][node id u64 LE][nonce: 32 bytes]`,
//!   correlation 0. Each side sends one, with a fresh random nonce.
//! * 6 proof: `[HMAC-SHA256: 32 bytes]`, correlation 0 (see the handshake).
//! * 2 request: the rkyv archive of a `wire::Request`.
//! * 3 answer: the rkyv archive of a `wire::Response`, with its request's
//!   correlation id.
//! * 4 answer too large: `[len u64 LE][max u32 LE]`; the answer was not sent.
//! * 5 answer failed: a UTF-8 reason; the answer could not be encoded (the
//!   call fails with `Decode`).
//!
//! Payloads are validated (bytecheck) before use: a peer is never trusted. A
//! frame that breaks these rules closes its connection; an answer that does
//! not validate fails only its call, with `Decode`.
//!
//! # Handshake: mutual challenge-response
//!
//! The nodes of a cluster share `secret` (`ClusterConfig::secret`). Before a
//! connection carries any request, each side proves it knows the secret,
//! without sending it, over nonces the other side chose:
//!
//! ```text
//! connecting C                                   accepting A
//!   hello(C, nonce_c)                      ──►
//!                                          ◄──   hello(A, nonce_a)
//!   proof_c = MAC(connecting, C, A, nonce_c, nonce_a)   ──►   checked
//!                                          ◄──   proof_a = MAC(accepting, …)   checked
//! ```
//!
//! `MAC(label, …)` is HMAC-SHA256 keyed by the secret over `label`
//! (`PROOF_LABEL_CONNECTING` or `PROOF_LABEL_ACCEPTING`), the protocol
//! version, the connecting and accepting node ids (u64 LE) and the two
//! nonces, connecting side's first. The label differs per direction, so a
//! proof cannot be reflected back to the side that made it; the nonces are
//! fresh per connection (32 bytes from the OS's random source), so a proof
//! recorded from one connection is worthless on another. Proofs are compared
//! in constant time. With no secret the key is empty: nodes without a secret
//! talk only to each other, and only on loopback (protected mode,
//! `ClusterConfig::validate`).
//!
//! The accepting side answers a proof only after checking the other's: a
//! side that does not know the secret learns no MAC made with it. It reads
//! nothing after the hello until the proof checks out, so a connection
//! that fails the handshake is closed before any request is read. It then
//! asks `Handler::admits` whether the node id the hello named is one it
//! knows (the node's answer: a configured member, a voter or learner of
//! any of its groups, or a peer it was told about; docs/SECURITY.md) and
//! closes the connection if not. Every request on the connection is
//! attributed to that id, which the MAC covers. The connecting side checks
//! that the hello names the node it dialed before it proves anything, and
//! sends no request before the accepting side's proof checked out.
//!
//! Not covered: frames after the handshake are neither encrypted nor
//! individually authenticated. Someone on the path between two nodes can
//! read them and, by relaying a handshake, inject frames into the
//! connection; the handshake keeps out anyone who can only reach the port.
//!
//! # Bounds
//!
//! * A frame's payload buffer grows as its bytes arrive (doubling from
//!   `PAYLOAD_STEP_FIRST`), never sized from the header's claim: a header
//!   that claims `frame_size_max` and sends nothing costs 64 KiB.
//! * `connect_timeout_ms` bounds connecting and the whole handshake, on both
//!   sides; `connections_incoming_max` bounds incoming connections open at
//!   once, handshakes included (more are closed at once).
//! * `idle_timeout_ms`: an incoming connection that sends nothing for this
//!   long while none of its requests runs is closed; a frame that stops
//!   arriving midway for this long closes its connection (either side).
//! * `requests_in_flight_max` and `write_queue_max` bound each connection's
//!   running requests and queued frames.
//!
//! # Why raw TCP rather than HTTP/2 (gRPC)
//!
//! One multiplexed connection per peer with our own framing gives exact
//! control of write batching, frame bounds and timeouts, with no HTTP/2 flow
//! control windows or header overhead on the hot path of small, frequent
//! appends. rkyv payloads need no content negotiation. Snapshots are streamed
//! as a sequence of bounded chunk requests on the same connection.
//!
//! # Faults
//!
//! `Faults::block(peer)` simulates a partition: it closes this node's
//! connections to and from `peer` and refuses new ones, so calls on either side
//! fail at once with `Unreachable` rather than waiting out their timeouts. A
//! request that arrives from a blocked peer closes its connection unanswered.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use parking_lot::{Mutex, RwLock};
use rkyv::util::AlignedVec;
use sha2::Sha256;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{Instant, timeout_at};

use crate::config::Secret;
use crate::types::NodeId;
use crate::wire::{Request, Response};

/// Bytes before every payload: length, kind, 3 reserved bytes, correlation id.
pub const FRAME_HEADER_LEN: usize = 16;
pub const FRAME_KIND_HELLO: u8 = 1;
pub const FRAME_KIND_REQUEST: u8 = 2;
pub const FRAME_KIND_ANSWER: u8 = 3;
pub const FRAME_KIND_ANSWER_TOO_LARGE: u8 = 4;
pub const FRAME_KIND_ANSWER_FAILED: u8 = 5;
pub const FRAME_KIND_PROOF: u8 = 6;
/// First bytes of a hello payload.
pub const HELLO_MAGIC: [u8; 8] = *b"TALLYNET";
/// Bumped on any change to the frame layout or to the `wire` types (2: the
/// engine's `Hold` allocates lines without a warehouse, and write outcomes
/// carry the reservation's lines; 3: entries travel as WAL frames, and
/// confirm, release and extend outcomes carry the idempotency key; 4: the
/// handshake is a mutual HMAC challenge-response, hellos carry a nonce; 5:
/// commands carry principal, note and reference for the ledger, and WAL
/// frames are segment format 4; 6: a hold names its customer,
/// `SetCustomerLimit` and its outcome, and WAL frames are segment format 5;
/// 7: `ConfirmPart`, a confirm of fewer units, segment format 6; 8:
/// `SetStates` and `MoveQuantity`, item views carry quantity states,
/// segment format 7).
pub const PROTOCOL_VERSION: u32 = 8;
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
/// First allocation for a frame's payload; the buffer doubles from here as
/// bytes arrive, up to the length the header claims.
pub const PAYLOAD_STEP_FIRST: usize = 64 * 1024;
/// Payload of an answer-too-large frame: the answer's length and the limit.
const TOO_LARGE_LEN: usize = 12;
/// Longest reason carried by an answer-failed frame, in bytes.
const REASON_LEN_MAX: usize = 256;
const READ_BUFFER_BYTES: usize = 64 * 1024;
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does
/// not spin.
const ACCEPT_BACKOFF_MS: u64 = 50;

/// Limits of one transport. Each applies per connection unless it says otherwise.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest frame payload, in bytes. Larger frames are refused on both send
    /// and receive.
    pub frame_size_max: u32,
    /// Bound on connecting to a peer, and on the handshake of either side.
    pub connect_timeout_ms: u64,
    /// The cluster's shared secret, proved in every handshake; `None` is the
    /// empty key (peers without a secret, on loopback only).
    pub secret: Option<Secret>,
    /// An incoming connection with no request running that sends nothing
    /// for this long is closed; a frame that stops arriving midway for this
    /// long closes its connection, on either side.
    pub idle_timeout_ms: u64,
    /// Calls waiting for answers on one connection; callers beyond it wait for
    /// a slot, within their timeout. The serving side runs at most this many
    /// requests of one connection at once and stops reading beyond it.
    pub requests_in_flight_max: u32,
    /// Frames queued for one connection's writer task.
    pub write_queue_max: usize,
    /// Connections accepted and open at once, over all `serve` listeners.
    pub connections_incoming_max: u32,
    /// Addresses to dial some peers at, whatever address `set_peer` (the
    /// membership) gives: a proxy or a NAT between the nodes.
    pub dial: std::collections::HashMap<NodeId, String>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            frame_size_max: 64 * 1024 * 1024,
            connect_timeout_ms: 500,
            secret: None,
            idle_timeout_ms: 60_000,
            requests_in_flight_max: 4096,
            write_queue_max: 1024,
            connections_incoming_max: 256,
            dial: std::collections::HashMap::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Could not connect, the connection dropped before the answer, the peer
    /// is unknown, or it is blocked by `Faults`.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    #[error("no answer within the timeout")]
    Timeout,
    #[error("frame of {len} bytes is over the limit of {max}")]
    FrameTooLarge { len: u64, max: u32 },
    /// The answer did not validate, or (never seen in practice) the request
    /// or the peer's answer could not be encoded.
    #[error("could not decode or encode: {0}")]
    Decode(String),
    /// This transport was shut down.
    #[error("transport is shut down")]
    Closed,
}

/// Answers peers' requests.
pub trait Handler: Send + Sync + 'static {
    /// Answer one request from `from`. Called concurrently (a task per
    /// request, at most `requests_in_flight_max` per connection), so a slow
    /// request never blocks others on the same connection.
    fn handle(&self, from: NodeId, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send + 'static>>;

    /// Whether a peer that proved it knows the secret may connect as
    /// `peer`. Asked once per incoming connection, after the peer's proof
    /// checked out and before this side proves anything or reads a request;
    /// false closes the connection. Any node by default.
    fn admits(&self, peer: NodeId) -> bool {
        let _ = peer;
        true
    }
}

/// Any `Fn(from, request) -> impl Future<Output = Response>` is a handler.
impl<F, Fut> Handler for F
where
    F: Fn(NodeId, Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    fn handle(&self, from: NodeId, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send + 'static>> {
        Box::pin(self(from, request))
    }
}

/// Counters since the transport was made. Bytes include frame headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Outgoing connections established (handshake done).
    pub connects: u64,
    pub connect_failures: u64,
    /// Incoming connections accepted (handshake done).
    pub accepts: u64,
    /// Incoming connections closed at once: `connections_incoming_max` were
    /// open.
    pub connections_refused: u64,
    /// Incoming handshakes that failed: no or a malformed hello, a wrong
    /// proof (another secret), a node id this node does not admit, or no
    /// handshake within `connect_timeout_ms`.
    pub handshakes_refused: u64,
    /// Incoming connections closed for sending nothing for
    /// `idle_timeout_ms` with no request running.
    pub idle_closed: u64,
    /// Calls that ran out of time.
    pub timeouts: u64,
    /// Connections closed for breaking the protocol or failing I/O, and
    /// answers that did not decode.
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    accepts: AtomicU64,
    connections_refused: AtomicU64,
    handshakes_refused: AtomicU64,
    idle_closed: AtomicU64,
    timeouts: AtomicU64,
    errors: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// `timeout` from now; a timeout too large to add is as good as a year.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).or_else(|| now.checked_add(Duration::from_secs(86_400 * 365))).unwrap_or(now)
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// What every task of the transport shares. Holds no connection, so tasks
/// holding it keep no connection alive.
struct Common {
    node_id: NodeId,
    config: TransportConfig,
    counters: Counters,
    blocked: RwLock<HashSet<NodeId>>,
}

impl Common {
    fn is_blocked(&self, peer: NodeId) -> bool {
        self.blocked.read().contains(&peer)
    }

    fn frame_size_max(&self) -> u32 {
        self.config.frame_size_max
    }

    fn requests_in_flight_max(&self) -> usize {
        self.config.requests_in_flight_max.max(1) as usize
    }

    fn write_queue_max(&self) -> usize {
        self.config.write_queue_max.max(1)
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.config.connect_timeout_ms)
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.config.idle_timeout_ms.max(1))
    }

    /// The HMAC key: the secret's bytes, or empty without one.
    fn key(&self) -> &[u8] {
        self.config.secret.as_ref().map_or(&[], Secret::expose)
    }
}

/// One node's peer transport. Cheap to clone; make one per node process.
/// Dropping the last clone shuts it down.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    common: Arc<Common>,
    registry: Arc<Registry>,
    faults: Faults,
    closed: AtomicBool,
    /// Tells accept loops to stop.
    shutdown: watch::Sender<bool>,
    connections_incoming: Arc<Semaphore>,
    /// The runtime connections run on: the one the transport was made on,
    /// never a shard's thread that happens to call first (DESIGN §10 keeps
    /// shard threads for their shards' write paths).
    runtime: Option<tokio::runtime::Handle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shut();
    }
}

impl Inner {
    fn shut(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shutdown.send_replace(true);
        self.registry.close_all();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Transport {
    pub fn new(node_id: NodeId, config: TransportConfig) -> Transport {
        debug_assert!(node_id != 0, "node ids start at 1");
        let connections_incoming = Arc::new(Semaphore::new(config.connections_incoming_max as usize));
        let common = Arc::new(Common { node_id, config, counters: Counters::default(), blocked: RwLock::default() });
        let registry = Arc::new(Registry::default());
        let faults = Faults { common: common.clone(), registry: registry.clone() };
        let (shutdown, _) = watch::channel(false);
        let runtime = tokio::runtime::Handle::try_current().ok();
        let inner =
            Inner { common, registry, faults, closed: AtomicBool::new(false), shutdown, connections_incoming, runtime };
        Transport { inner: Arc::new(inner) }
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.common.node_id
    }

    /// Learn or change where a peer listens (e.g. "127.0.0.1:7001"). Changing
    /// an address drops the old connection; the same address changes nothing.
    pub fn set_peer(&self, peer: NodeId, addr: String) {
        // A configured dial address wins over what the membership says.
        let addr = self.inner.common.config.dial.get(&peer).cloned().unwrap_or(addr);
        let old = {
            let mut peers = self.inner.registry.peers.lock();
            if peers.closed {
                return;
            }
            if peers.slots.get(&peer).is_some_and(|slot| slot.addr == addr) {
                return;
            }
            peers.slots.insert(peer, Arc::new(PeerSlot::new(addr)))
        };
        if let Some(old) = old {
            old.retire();
        }
    }

    /// Whether `set_peer` told this transport where `peer` listens.
    pub fn knows_peer(&self, peer: NodeId) -> bool {
        self.inner.registry.peers.lock().slots.contains_key(&peer)
    }

    /// Forget a peer (it left the cluster) and drop the connection to it.
    pub fn remove_peer(&self, peer: NodeId) {
        let old = self.inner.registry.peers.lock().slots.remove(&peer);
        if let Some(old) = old {
            old.retire();
        }
    }

    /// Send one request to `peer` and wait for its answer, at most `timeout`.
    pub async fn call(&self, peer: NodeId, request: &Request, timeout: Duration) -> Result<Response, TransportError> {
        match self.call_until(peer, request, deadline_after(timeout)).await {
            Err(_) if self.inner.is_closed() => Err(TransportError::Closed),
            Err(TransportError::Timeout) => {
                bump(&self.inner.common.counters.timeouts, 1);
                Err(TransportError::Timeout)
            }
            other => other,
        }
    }

    async fn call_until(&self, peer: NodeId, request: &Request, deadline: Instant) -> Result<Response, TransportError> {
        let common = &self.inner.common;
        if self.inner.is_closed() {
            return Err(TransportError::Closed);
        }
        if common.is_blocked(peer) {
            return Err(TransportError::Unreachable(format!("node {peer} is blocked by fault injection")));
        }
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(request)
            .map_err(|e| TransportError::Decode(format!("encode: {e}")))?;
        if payload.len() > common.frame_size_max() as usize {
            return Err(TransportError::FrameTooLarge { len: len_u64(payload.len()), max: common.frame_size_max() });
        }
        let slot = self.inner.registry.slot(peer)?;
        let connection = self.connection(peer, &slot, deadline).await?;
        let answer = connection.call(payload, deadline).await?;
        rkyv::from_bytes::<Response, rkyv::rancor::Error>(&answer).map_err(|e| {
            bump(&common.counters.errors, 1);
            TransportError::Decode(e.to_string())
        })
    }

    /// The open connection to `peer`, connecting if there is none.
    async fn connection(
        &self,
        peer: NodeId,
        slot: &PeerSlot,
        deadline: Instant,
    ) -> Result<Arc<Connection>, TransportError> {
        if let Some(connection) = slot.open_connection() {
            return Ok(connection);
        }
        // One caller connects; the others wait for it rather than each
        // opening a connection of their own.
        let _connecting = timeout_at(deadline, slot.connecting.lock()).await.map_err(|_| TransportError::Timeout)?;
        if let Some(connection) = slot.open_connection() {
            return Ok(connection);
        }
        let common = &self.inner.common;
        let connect_deadline = deadline.min(deadline_after(common.connect_timeout()));
        let connecting = connect(Arc::clone(common), peer, slot.addr.clone(), connect_deadline);
        let connected = match &self.inner.runtime {
            Some(runtime) => runtime.spawn(connecting).await.unwrap_or_else(|error| {
                Err(TransportError::Unreachable(format!("node {peer}: connect task: {error}")))
            }),
            None => connecting.await,
        };
        let connection = match connected {
            Ok(connection) => connection,
            Err(error) => {
                bump(&common.counters.connect_failures, 1);
                return Err(if Instant::now() >= deadline { TransportError::Timeout } else { error });
            }
        };
        if !slot.install(connection.clone()) {
            connection.shared.close();
            return Err(TransportError::Unreachable(format!("address of node {peer} changed while connecting")));
        }
        // `block` may have run while we connected.
        if common.is_blocked(peer) {
            slot.drop_connection();
            return Err(TransportError::Unreachable(format!("node {peer} is blocked by fault injection")));
        }
        Ok(connection)
    }

    /// Accept peers' connections on `listener` and answer their requests with
    /// `handler` until `shutdown` is called (or the last clone is dropped);
    /// returns the accept loop's JoinHandle, which ends then, closing the
    /// listener. Must be called within a tokio runtime.
    pub fn serve(&self, listener: TcpListener, handler: Arc<dyn Handler>) -> JoinHandle<()> {
        let inner = &self.inner;
        tokio::spawn(accept_loop(
            listener,
            handler,
            inner.common.clone(),
            Arc::downgrade(&inner.registry),
            inner.shutdown.subscribe(),
            inner.connections_incoming.clone(),
        ))
    }

    /// Fault injection for tests (simulated partitions; no root needed).
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Closes every connection and stops accepting (for "kill a node" in
    /// tests): after this, calls fail with Closed and connected peers see
    /// their connections drop. Requests already being handled run to their
    /// end, but their answers are dropped. Cannot be undone.
    pub fn shutdown(&self) {
        self.inner.shut();
    }

    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.common.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportStats {
            frames_sent: get(&c.frames_sent),
            bytes_sent: get(&c.bytes_sent),
            frames_received: get(&c.frames_received),
            bytes_received: get(&c.bytes_received),
            connects: get(&c.connects),
            connect_failures: get(&c.connect_failures),
            accepts: get(&c.accepts),
            connections_refused: get(&c.connections_refused),
            handshakes_refused: get(&c.handshakes_refused),
            idle_closed: get(&c.idle_closed),
            timeouts: get(&c.timeouts),
            errors: get(&c.errors),
        }
    }

    /// Calls waiting for an answer from `peer` on its current connection.
    pub fn calls_pending(&self, peer: NodeId) -> usize {
        let slot = self.inner.registry.peers.lock().slots.get(&peer).cloned();
        slot.and_then(|slot| slot.open_connection())
            .map_or(0, |connection| connection.shared.pending.lock().waiting.len())
    }
}

/// Simulated partitions, shared inside a `Transport`.
pub struct Faults {
    common: Arc<Common>,
    registry: Arc<Registry>,
}

impl Faults {
    /// Drop everything to and from `peer` until healed: closes the
    /// connections to and from it, fails calls to it at once with
    /// `Unreachable`, and closes, unanswered, any connection on which it
    /// connects or sends a request (so its calls fail at once too).
    pub fn block(&self, peer: NodeId) {
        self.common.blocked.write().insert(peer);
        self.registry.close_peer(peer);
    }

    pub fn heal(&self, peer: NodeId) {
        self.common.blocked.write().remove(&peer);
    }

    pub fn heal_all(&self) {
        self.common.blocked.write().clear();
    }

    pub fn is_blocked(&self, peer: NodeId) -> bool {
        self.common.is_blocked(peer)
    }
}

/// Every connection of a transport, so that `block` and `shutdown` can close
/// them.
#[derive(Default)]
struct Registry {
    peers: Mutex<Peers>,
    incoming: Mutex<Incoming>,
}

#[derive(Default)]
struct Peers {
    closed: bool,
    slots: HashMap<NodeId, Arc<PeerSlot>>,
}

#[derive(Default)]
struct Incoming {
    closed: bool,
    id_next: u64,
    /// Bounded by `connections_incoming_max`.
    links: HashMap<u64, (NodeId, Arc<Closer>)>,
}

impl Registry {
    fn slot(&self, peer: NodeId) -> Result<Arc<PeerSlot>, TransportError> {
        let peers = self.peers.lock();
        if peers.closed {
            return Err(TransportError::Closed);
        }
        peers
            .slots
            .get(&peer)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable(format!("no address known for node {peer}")))
    }

    fn close_peer(&self, peer: NodeId) {
        let slot = self.peers.lock().slots.get(&peer).cloned();
        if let Some(slot) = slot {
            slot.drop_connection();
        }
        let closers: Vec<Arc<Closer>> = {
            let incoming = self.incoming.lock();
            incoming.links.values().filter(|(from, _)| *from == peer).map(|(_, closer)| closer.clone()).collect()
        };
        // Closed outside the lock: a closed link deregisters itself.
        for closer in closers {
            closer.close();
        }
    }

    fn close_all(&self) {
        let slots: Vec<Arc<PeerSlot>> = {
            let mut peers = self.peers.lock();
            peers.closed = true;
            peers.slots.drain().map(|(_, slot)| slot).collect()
        };
        for slot in slots {
            slot.retire();
        }
        let closers: Vec<Arc<Closer>> = {
            let mut incoming = self.incoming.lock();
            incoming.closed = true;
            incoming.links.drain().map(|(_, (_, closer))| closer).collect()
        };
        for closer in closers {
            closer.close();
        }
    }

    /// `None` once the transport is shut down.
    fn register_incoming(&self, peer: NodeId, closer: Arc<Closer>) -> Option<u64> {
        let mut incoming = self.incoming.lock();
        if incoming.closed {
            return None;
        }
        let id = incoming.id_next;
        incoming.id_next += 1;
        incoming.links.insert(id, (peer, closer));
        Some(id)
    }

    fn deregister_incoming(&self, id: u64) {
        self.incoming.lock().links.remove(&id);
    }
}

/// Where a peer listens and the connection to it, if any.
struct PeerSlot {
    addr: String,
    live: Mutex<Live>,
    /// Held while connecting, so that one caller connects at a time.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Live {
    /// Replaced by another address or shut down: installs nothing more.
    retired: bool,
    connection: Option<Arc<Connection>>,
}

impl PeerSlot {
    fn new(addr: String) -> PeerSlot {
        PeerSlot { addr, live: Mutex::default(), connecting: tokio::sync::Mutex::new(()) }
    }

    fn open_connection(&self) -> Option<Arc<Connection>> {
        self.live.lock().connection.as_ref().filter(|connection| connection.shared.is_open()).cloned()
    }

    /// False when the slot is retired; the caller then closes `connection`.
    fn install(&self, connection: Arc<Connection>) -> bool {
        let mut live = self.live.lock();
        if live.retired {
            return false;
        }
        live.connection = Some(connection);
        true
    }

    fn drop_connection(&self) {
        let connection = self.live.lock().connection.take();
        if let Some(connection) = connection {
            connection.shared.close();
        }
    }

    fn retire(&self) {
        let connection = {
            let mut live = self.live.lock();
            live.retired = true;
            live.connection.take()
        };
        if let Some(connection) = connection {
            connection.shared.close();
        }
    }
}

/// Ends a connection's reader and writer tasks, once. Dropping a task's
/// future drops its half of the socket, so the peer sees the close.
#[derive(Default)]
struct Closer {
    state: Mutex<CloserState>,
}

#[derive(Default)]
struct CloserState {
    closed: bool,
    /// A reader and a writer.
    tasks: Vec<AbortHandle>,
}

impl Closer {
    fn adopt(&self, task: AbortHandle) {
        let mut state = self.state.lock();
        if state.closed {
            drop(state);
            task.abort();
            return;
        }
        debug_assert!(state.tasks.len() < 2);
        state.tasks.push(task);
    }

    /// True for the call that closed it.
    fn close(&self) -> bool {
        let tasks = {
            let mut state = self.state.lock();
            if state.closed {
                return false;
            }
            state.closed = true;
            std::mem::take(&mut state.tasks)
        };
        for task in tasks {
            task.abort();
        }
        true
    }

    fn is_closed(&self) -> bool {
        self.state.lock().closed
    }
}

/// Runs a closure when dropped: cleanup that must happen however a task ends,
/// including when it is aborted.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    fn new(f: F) -> Self {
        OnDrop(Some(f))
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

type Answer = Result<AlignedVec, TransportError>;

/// An outgoing connection's state, shared by its calls, reader and writer.
struct Outgoing {
    peer: NodeId,
    closer: Closer,
    pending: Mutex<Pending>,
    /// One permit per pending call, so `pending` stays within
    /// `requests_in_flight_max`.
    permits: Semaphore,
    requests_in_flight_max: usize,
    correlation_next: AtomicU64,
}

struct Pending {
    open: bool,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
}

impl Outgoing {
    fn is_open(&self) -> bool {
        !self.closer.is_closed()
    }

    /// Fails every waiting call at once: dropping its sender wakes it.
    fn close(&self) {
        if !self.closer.close() {
            return;
        }
        self.permits.close();
        let waiting = {
            let mut pending = self.pending.lock();
            pending.open = false;
            std::mem::take(&mut pending.waiting)
        };
        drop(waiting);
    }
}

/// What a call holds: the connection's state and the queue to its writer.
/// When the last holder lets go, the writer ends and closes the connection.
struct Connection {
    shared: Arc<Outgoing>,
    frames: mpsc::Sender<OutFrame>,
}

impl Connection {
    async fn call(&self, payload: AlignedVec, deadline: Instant) -> Result<AlignedVec, TransportError> {
        let shared = &self.shared;
        let lost = || TransportError::Unreachable(format!("connection to node {} lost before the answer", shared.peer));
        let _permit = match timeout_at(deadline, shared.permits.acquire()).await {
            Err(_) => return Err(TransportError::Timeout),
            Ok(Err(_)) => return Err(lost()),
            Ok(Ok(permit)) => permit,
        };
        let correlation = shared.correlation_next.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        {
            let mut pending = shared.pending.lock();
            if !pending.open {
                return Err(lost());
            }
            let previous = pending.waiting.insert(correlation, answer_tx);
            debug_assert!(previous.is_none());
            debug_assert!(pending.waiting.len() <= shared.requests_in_flight_max);
        }
        // However the call ends (answer, timeout, caller dropped), its entry goes.
        let _forget = OnDrop::new(|| {
            shared.pending.lock().waiting.remove(&correlation);
        });
        let frame = OutFrame { kind: FRAME_KIND_REQUEST, correlation, payload };
        match timeout_at(deadline, self.frames.send(frame)).await {
            Err(_) => return Err(TransportError::Timeout),
            Ok(Err(_)) => return Err(lost()),
            Ok(Ok(())) => {}
        }
        match timeout_at(deadline, answer_rx).await {
            Err(_) => Err(TransportError::Timeout),
            Ok(Err(_)) => Err(lost()),
            Ok(Ok(answer)) => answer,
        }
    }
}

/// Connects to `peer` at `addr`, shakes hands and starts the connection's
/// reader and writer, all before `deadline`.
async fn connect(
    common: Arc<Common>,
    peer: NodeId,
    addr: String,
    deadline: Instant,
) -> Result<Arc<Connection>, TransportError> {
    let common = &common;
    let unreachable = |what: String| TransportError::Unreachable(format!("node {peer} at {addr}: {what}"));
    let stream = match timeout_at(deadline, TcpStream::connect(&addr)).await {
        Err(_) => return Err(unreachable("connect timed out".to_string())),
        Ok(Err(e)) => return Err(unreachable(format!("connect: {e}"))),
        Ok(Ok(stream)) => stream,
    };
    stream.set_nodelay(true).map_err(|e| unreachable(format!("set TCP_NODELAY: {e}")))?;
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write_half);
    let handshake = handshake_connecting(&mut reader, &mut writer, common, peer);
    match timeout_at(deadline, handshake).await {
        Err(_) => return Err(unreachable("handshake timed out".to_string())),
        Ok(Err(e)) => return Err(unreachable(format!("handshake: {e}"))),
        Ok(Ok(())) => {}
    }

    let shared = Arc::new(Outgoing {
        peer,
        closer: Closer::default(),
        pending: Mutex::new(Pending { open: true, waiting: HashMap::new() }),
        permits: Semaphore::new(common.requests_in_flight_max()),
        requests_in_flight_max: common.requests_in_flight_max(),
        correlation_next: AtomicU64::new(1),
    });
    let (frames_tx, frames_rx) = mpsc::channel(common.write_queue_max());
    let writer_task = tokio::spawn({
        let (shared, common) = (shared.clone(), common.clone());
        async move {
            let _close = OnDrop::new({
                let shared = shared.clone();
                move || shared.close()
            });
            if let Err(e) = write_frames(writer, frames_rx, &common).await {
                log_link_end(&common, "outgoing writer", peer, &e);
            }
        }
    });
    shared.closer.adopt(writer_task.abort_handle());
    let reader_task = tokio::spawn({
        let (shared, common) = (shared.clone(), common.clone());
        async move {
            let _close = OnDrop::new({
                let shared = shared.clone();
                move || shared.close()
            });
            match read_answers(reader, &shared, &common).await {
                Ok(()) => tracing::debug!(peer, "peer closed the connection"),
                Err(e) => log_link_end(&common, "outgoing reader", peer, &e),
            }
        }
    });
    shared.closer.adopt(reader_task.abort_handle());
    bump(&common.counters.connects, 1);
    Ok(Arc::new(Connection { shared, frames: frames_tx }))
}

/// Hands each answer to the call waiting for it, until the connection ends.
async fn read_answers(
    mut reader: BufReader<OwnedReadHalf>,
    shared: &Outgoing,
    common: &Common,
) -> Result<(), LinkError> {
    let peer = shared.peer;
    // Calls bound how long they wait for answers; only a frame that stops
    // midway is bounded here.
    while let Some(frame) =
        read_frame(&mut reader, common.frame_size_max(), &common.counters, common.idle_timeout()).await?
    {
        if common.is_blocked(peer) {
            return Err(LinkError::Blocked);
        }
        let answer = match frame.kind {
            FRAME_KIND_ANSWER => Ok(frame.payload),
            FRAME_KIND_ANSWER_TOO_LARGE => Err(parse_too_large(&frame.payload)?),
            FRAME_KIND_ANSWER_FAILED => Err(TransportError::Decode(format!(
                "node {peer} could not encode its answer: {}",
                String::from_utf8_lossy(&frame.payload)
            ))),
            kind => return Err(LinkError::Protocol(format!("frame kind {kind} on an outgoing connection"))),
        };
        let waiter = shared.pending.lock().waiting.remove(&frame.correlation);
        match waiter {
            // Fails only if the call gave up this instant.
            Some(waiter) => _ = waiter.send(answer),
            None => tracing::trace!(peer, correlation = frame.correlation, "answer for a call that gave up"),
        }
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    common: Arc<Common>,
    registry: Weak<Registry>,
    mut shutdown: watch::Receiver<bool>,
    connections_incoming: Arc<Semaphore>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            // Also ends when the transport is dropped (the sender goes).
            _ = shutdown.wait_for(|closed| *closed) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => {
                let Ok(permit) = connections_incoming.clone().try_acquire_owned() else {
                    bump(&common.counters.connections_refused, 1);
                    tracing::warn!(%addr, max = common.config.connections_incoming_max, "refusing connection: too many open");
                    continue;
                };
                tokio::spawn(run_incoming(stream, addr, handler.clone(), common.clone(), registry.clone(), permit));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
            }
        }
    }
}

/// Shakes hands with a connecting peer, then starts the connection's reader
/// and writer. `permit` counts it against `connections_incoming_max` until the
/// reader ends.
async fn run_incoming(
    stream: TcpStream,
    addr: SocketAddr,
    handler: Arc<dyn Handler>,
    common: Arc<Common>,
    registry: Weak<Registry>,
    permit: OwnedSemaphorePermit,
) {
    let deadline = deadline_after(common.connect_timeout());
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%addr, "set TCP_NODELAY: {e}");
    }
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write_half);
    // The socket outlives the handshake's future, so a refused peer sees
    // the close only once the refusal is counted.
    let handshake = handshake_accepting(&mut reader, &mut writer, &common, handler.as_ref());
    let peer = match timeout_at(deadline, handshake).await {
        Err(_) => {
            bump(&common.counters.handshakes_refused, 1);
            tracing::warn!(%addr, "no handshake within the connect timeout; closing");
            return;
        }
        Ok(Err(LinkError::Blocked)) => {
            tracing::debug!(%addr, "closing a connection from a blocked peer");
            return;
        }
        Ok(Err(e)) => {
            bump(&common.counters.handshakes_refused, 1);
            tracing::warn!(%addr, "incoming handshake failed; closing: {e}");
            return;
        }
        Ok(Ok(peer)) => peer,
    };

    let closer = Arc::new(Closer::default());
    let Some(id) = registry.upgrade().and_then(|registry| registry.register_incoming(peer, closer.clone())) else {
        return; // shut down meanwhile
    };
    bump(&common.counters.accepts, 1);
    let (frames_tx, frames_rx) = mpsc::channel(common.write_queue_max());
    let writer_task = tokio::spawn({
        let (closer, common) = (closer.clone(), common.clone());
        async move {
            let _close = OnDrop::new({
                let closer = closer.clone();
                move || _ = closer.close()
            });
            if let Err(e) = write_frames(writer, frames_rx, &common).await {
                log_link_end(&common, "incoming writer", peer, &e);
            }
        }
    });
    closer.adopt(writer_task.abort_handle());
    let reader_task = tokio::spawn({
        let closer = closer.clone();
        async move {
            let _close = OnDrop::new({
                let closer = closer.clone();
                move || {
                    closer.close();
                    if let Some(registry) = registry.upgrade() {
                        registry.deregister_incoming(id);
                    }
                    drop(permit);
                }
            });
            match read_requests(reader, peer, frames_tx, handler, &common, &closer).await {
                Ok(()) => tracing::debug!(peer, "peer closed its connection"),
                Err(e) => log_link_end(&common, "incoming reader", peer, &e),
            }
        }
    });
    closer.adopt(reader_task.abort_handle());
}

/// Reads requests and answers each in a task of its own, at most
/// `requests_in_flight_max` at once, until the connection ends.
async fn read_requests(
    mut reader: BufReader<OwnedReadHalf>,
    peer: NodeId,
    frames: mpsc::Sender<OutFrame>,
    handler: Arc<dyn Handler>,
    common: &Arc<Common>,
    closer: &Arc<Closer>,
) -> Result<(), LinkError> {
    let in_flight_max = common.requests_in_flight_max();
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    loop {
        // Wait for the next frame to start. A peer with requests running
        // here is waiting for their answers, not idle.
        match tokio::time::timeout(common.idle_timeout(), reader.fill_buf()).await {
            Ok(ready) => _ = ready?,
            Err(_) if in_flight.available_permits() == in_flight_max => return Err(LinkError::Idle),
            Err(_) => continue,
        }
        let Some(frame) =
            read_frame(&mut reader, common.frame_size_max(), &common.counters, common.idle_timeout()).await?
        else {
            break;
        };
        if frame.kind != FRAME_KIND_REQUEST {
            return Err(LinkError::Protocol(format!("frame kind {} on an incoming connection", frame.kind)));
        }
        if common.is_blocked(peer) {
            return Err(LinkError::Blocked);
        }
        // Stop reading while the peer has this many requests running here.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return Ok(()); // never closed
        };
        tokio::spawn(answer(frame, peer, handler.clone(), frames.clone(), common.clone(), closer.clone(), permit));
    }
    Ok(())
}

/// Decodes one request, runs the handler and queues the answer.
async fn answer(
    frame: Frame,
    peer: NodeId,
    handler: Arc<dyn Handler>,
    frames: mpsc::Sender<OutFrame>,
    common: Arc<Common>,
    closer: Arc<Closer>,
    _permit: OwnedSemaphorePermit,
) {
    let request = match rkyv::from_bytes::<Request, rkyv::rancor::Error>(&frame.payload) {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(peer, error = %e, "request did not validate; closing the connection");
            bump(&common.counters.errors, 1);
            closer.close();
            return;
        }
    };
    let response = handler.handle(peer, request).await;
    let max = common.frame_size_max();
    let answer = match rkyv::to_bytes::<rkyv::rancor::Error>(&response) {
        Ok(payload) if payload.len() <= max as usize => {
            OutFrame { kind: FRAME_KIND_ANSWER, correlation: frame.correlation, payload }
        }
        Ok(payload) => {
            tracing::warn!(peer, len = payload.len(), max, "answer over the frame limit; not sent");
            let mut too_large = AlignedVec::with_capacity(TOO_LARGE_LEN);
            too_large.extend_from_slice(&len_u64(payload.len()).to_le_bytes());
            too_large.extend_from_slice(&max.to_le_bytes());
            OutFrame { kind: FRAME_KIND_ANSWER_TOO_LARGE, correlation: frame.correlation, payload: too_large }
        }
        Err(e) => {
            tracing::warn!(peer, error = %e, "answer could not be encoded");
            let reason = e.to_string();
            let mut failed = AlignedVec::with_capacity(REASON_LEN_MAX);
            failed.extend_from_slice(&reason.as_bytes()[..reason.len().min(REASON_LEN_MAX)]);
            OutFrame { kind: FRAME_KIND_ANSWER_FAILED, correlation: frame.correlation, payload: failed }
        }
    };
    // Fails only when the connection closed meanwhile; the answer then has
    // nowhere to go.
    _ = frames.send(answer).await;
}

/// Writes queued frames until every sender is gone, flushing once per batch of
/// frames that were ready together.
async fn write_frames(
    mut writer: BufWriter<OwnedWriteHalf>,
    mut frames: mpsc::Receiver<OutFrame>,
    common: &Common,
) -> Result<(), LinkError> {
    let batch_max = common.write_queue_max();
    while let Some(frame) = frames.recv().await {
        debug_assert!(frame.payload.len() <= common.frame_size_max() as usize);
        write_frame(&mut writer, frame.kind, frame.correlation, &frame.payload, &common.counters).await?;
        let mut batched = 1;
        while batched < batch_max {
            let Ok(frame) = frames.try_recv() else { break };
            write_frame(&mut writer, frame.kind, frame.correlation, &frame.payload, &common.counters).await?;
            batched += 1;
        }
        writer.flush().await?;
    }
    Ok(())
}

/// Why a connection ended, other than the peer closing it cleanly.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes over the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("peer is blocked by fault injection")]
    Blocked,
    /// The handshake failed: a wrong proof, or a node id not admitted.
    #[error("refused: {0}")]
    Refused(String),
    #[error("nothing received for the idle timeout with no request running")]
    Idle,
    #[error("a frame stopped arriving midway for the idle timeout")]
    Stalled,
}

fn log_link_end(common: &Common, side: &'static str, peer: NodeId, error: &LinkError) {
    match error {
        LinkError::Blocked => tracing::debug!(peer, side, "closing connection: {error}"),
        LinkError::Idle => {
            bump(&common.counters.idle_closed, 1);
            tracing::debug!(peer, side, "closing connection: {error}");
        }
        LinkError::Io(_) => {
            bump(&common.counters.errors, 1);
            tracing::debug!(peer, side, "connection failed: {error}");
        }
        LinkError::TooLarge { .. } | LinkError::Protocol(_) | LinkError::Refused(_) | LinkError::Stalled => {
            bump(&common.counters.errors, 1);
            tracing::warn!(peer, side, "closing connection: {error}");
        }
    }
}

struct Frame {
    kind: u8,
    correlation: u64,
    payload: AlignedVec,
}

struct OutFrame {
    kind: u8,
    correlation: u64,
    payload: AlignedVec,
}

/// Reads one frame; `None` when the peer closed the connection between frames.
/// The payload buffer grows with the bytes that arrive (doubling from
/// `PAYLOAD_STEP_FIRST`), so a header that claims more than is sent costs
/// only what was sent. Each wait for more bytes of a started frame is
/// bounded by `stall`.
async fn read_frame<R: AsyncBufRead + Unpin>(
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
async fn fill<R: AsyncBufRead + Unpin>(reader: &mut R, wait: Option<Duration>) -> Result<&[u8], LinkError> {
    match wait {
        None => Ok(reader.fill_buf().await?),
        Some(wait) => match tokio::time::timeout(wait, reader.fill_buf()).await {
            Ok(available) => Ok(available?),
            Err(_) => Err(LinkError::Stalled),
        },
    }
}

/// Buffers one frame; the caller flushes.
async fn write_frame<W: AsyncWrite + Unpin>(
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

/// What a hello says: who sent it and its nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hello {
    node_id: NodeId,
    nonce: [u8; NONCE_LEN],
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
async fn handshake_connecting<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
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
async fn handshake_accepting<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
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

fn parse_too_large(payload: &[u8]) -> Result<TransportError, LinkError> {
    let Ok::<[u8; TOO_LARGE_LEN], _>(bytes) = payload.try_into() else {
        return Err(LinkError::Protocol(format!("answer-too-large frame of {} bytes", payload.len())));
    };
    let [l0, l1, l2, l3, l4, l5, l6, l7, m0, m1, m2, m3] = bytes;
    Ok(TransportError::FrameTooLarge {
        len: u64::from_le_bytes([l0, l1, l2, l3, l4, l5, l6, l7]),
        max: u32::from_le_bytes([m0, m1, m2, m3]),
    })
}
