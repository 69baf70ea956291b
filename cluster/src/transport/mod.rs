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
//! `len` counts the payload only and is at most `frame_bytes_max`, on both
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
//!   that claims `frame_bytes_max` and sends nothing costs 64 KiB.
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
//!
//! # Faults
//!
//! `Faults` (`faults.rs`) simulates partitions for tests. It is compiled
//! only into test builds and builds with the `fault-injection` feature
//! (the test suites turn it on through their dev-dependencies); a
//! production build has no way to block a peer.
//!
//! # Files
//!
//! * `mod.rs` — `Transport` (calls, serving, peers), its config, errors and
//!   the `Handler` trait; `PROTOCOL_VERSION`.
//! * `registry` — every connection of a transport, by peer, so they can be
//!   found, replaced and closed.
//! * `frame` — the frame codec: reading and writing frames within their
//!   bounds.
//! * `conn` — connections: connecting, accepting, and each connection's
//!   reader and writer tasks.
//! * `handshake` — hellos and the HMAC proofs of both sides.
//! * `stats` — the transport's counters.
//! * `faults` — simulated partitions (test builds only).

mod conn;
#[cfg(any(test, feature = "fault-injection"))]
mod faults;
mod frame;
mod handshake;
mod registry;
mod stats;

#[cfg(any(test, feature = "fault-injection"))]
pub use faults::Faults;
pub use frame::{
    FRAME_HEADER_LEN, FRAME_KIND_ANSWER, FRAME_KIND_ANSWER_FAILED, FRAME_KIND_ANSWER_TOO_LARGE, FRAME_KIND_HELLO,
    FRAME_KIND_PROOF, FRAME_KIND_REQUEST, PAYLOAD_STEP_FIRST,
};
pub use handshake::{HELLO_LEN, HELLO_MAGIC, NONCE_LEN, PROOF_LABEL_ACCEPTING, PROOF_LABEL_CONNECTING, PROOF_LEN};
pub use stats::TransportStats;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use self::conn::{Connection, accept_loop, connect};
use self::registry::{PeerSlot, Registry};
use self::stats::{Counters, bump};
use crate::config::Secret;
use crate::raft_types::NodeId;
use crate::wire::{Request, Response};

/// Bumped on any change to the frame layout or to the `wire` types (2: the
/// engine's `Hold` allocates lines without a warehouse, and write outcomes
/// carry the reservation's lines; 3: entries travel as WAL frames, and
/// confirm, release and extend outcomes carry the idempotency key; 4: the
/// handshake is a mutual HMAC challenge-response, hellos carry a nonce; 5:
/// commands carry principal, note and reference for the ledger, and WAL
/// frames are segment format 4; 6: a hold names its customer,
/// `SetCustomerLimit` and its outcome, and WAL frames are segment format 5;
/// 7: `ConfirmPart`, a confirm of fewer units, segment format 6; 8: issue
/// 17's commerce commands and outcomes (`SetBundle`, `SetProduct`,
/// `DeleteItem`, `DeleteSku`, allocation options), segment format 7; 9:
/// queries travel between nodes (`Request::Query`, `Response::Answered`)
/// and a node says when it does not serve a shard (`NotHosted`); 10: a
/// shard's replicas move between nodes (`Host`, `Release`, `Membership`,
/// `MoveShard`, `Placement`); 11: nodes relay the events of shards they do
/// not host (`Events`) and page their ledgers (`LedgerScan`)).
pub const PROTOCOL_VERSION: u32 = 11;

/// Limits of one transport. Each applies per connection unless it says otherwise.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest frame payload, in bytes. Larger frames are refused on both send
    /// and receive.
    pub frame_bytes_max: u32,
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
            frame_bytes_max: 64 * 1024 * 1024,
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
    #[cfg(any(test, feature = "fault-injection"))]
    blocked: faults::Blocked,
}

impl Common {
    /// Whether fault injection blocks `peer`.
    #[cfg(any(test, feature = "fault-injection"))]
    fn is_blocked(&self, peer: NodeId) -> bool {
        self.blocked.read().contains(&peer)
    }

    /// No peer is ever blocked in a build without fault injection.
    #[cfg(not(any(test, feature = "fault-injection")))]
    fn is_blocked(&self, _peer: NodeId) -> bool {
        false
    }

    fn frame_bytes_max(&self) -> u32 {
        self.config.frame_bytes_max
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
    #[cfg(any(test, feature = "fault-injection"))]
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
        let common = Arc::new(Common {
            node_id,
            config,
            counters: Counters::default(),
            #[cfg(any(test, feature = "fault-injection"))]
            blocked: faults::Blocked::default(),
        });
        let registry = Arc::new(Registry::default());
        #[cfg(any(test, feature = "fault-injection"))]
        let faults = Faults::new(common.clone(), registry.clone());
        let (shutdown, _) = watch::channel(false);
        let runtime = tokio::runtime::Handle::try_current().ok();
        let inner = Inner {
            common,
            registry,
            #[cfg(any(test, feature = "fault-injection"))]
            faults,
            closed: AtomicBool::new(false),
            shutdown,
            connections_incoming,
            runtime,
        };
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

    /// Where `peer` listens, if this transport knows.
    pub fn peer_addr(&self, peer: NodeId) -> Option<String> {
        self.inner.registry.peers.lock().slots.get(&peer).map(|slot| slot.addr.clone())
    }

    /// Every peer this transport knows where to reach, by id.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self.inner.registry.peers.lock().slots.keys().copied().collect();
        peers.sort_unstable();
        peers
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
        if payload.len() > common.frame_bytes_max() as usize {
            return Err(TransportError::FrameTooLarge { len: len_u64(payload.len()), max: common.frame_bytes_max() });
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

    /// Closes every connection and stops accepting (for "kill a node" in
    /// tests): after this, calls fail with Closed and connected peers see
    /// their connections drop. Requests already being handled run to their
    /// end, but their answers are dropped. Cannot be undone.
    pub fn shutdown(&self) {
        self.inner.shut();
    }

    /// Calls waiting for an answer from `peer` on its current connection.
    pub fn calls_pending(&self, peer: NodeId) -> usize {
        let slot = self.inner.registry.peers.lock().slots.get(&peer).cloned();
        slot.and_then(|slot| slot.open_connection())
            .map_or(0, |connection| connection.shared.pending.lock().waiting.len())
    }
}
