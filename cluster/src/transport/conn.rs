//! Connections: connecting to a peer and accepting peers, each
//! connection's reader and writer tasks, answering requests each in a task
//! of its own, and why a connection ended.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use rkyv::util::AlignedVec;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout_at};

use super::frame::{
    FRAME_KIND_ANSWER, FRAME_KIND_ANSWER_FAILED, FRAME_KIND_ANSWER_TOO_LARGE, FRAME_KIND_REQUEST, Frame, OutFrame,
    TOO_LARGE_LEN, parse_too_large, read_frame, write_frame,
};
use super::handshake::{handshake_accepting, handshake_connecting};
use super::registry::Registry;
use super::stats::bump;
use super::{Common, Handler, TransportError, deadline_after, len_u64};
use crate::raft_types::NodeId;
use crate::wire::Request;

/// Longest reason carried by an answer-failed frame, in bytes.
const REASON_LEN_MAX: usize = 256;
const READ_BUFFER_BYTES: usize = 64 * 1024;
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does
/// not spin.
const ACCEPT_BACKOFF_MS: u64 = 50;

/// Ends a connection's reader and writer tasks, once. Dropping a task's
/// future drops its half of the socket, so the peer sees the close.
#[derive(Default)]
pub(super) struct Closer {
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
    pub(super) fn close(&self) -> bool {
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

    pub(super) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }
}

/// Runs a closure when dropped: cleanup that must happen however a task ends,
/// including when it is aborted.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    pub(super) fn new(f: F) -> Self {
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

pub(super) type Answer = Result<AlignedVec, TransportError>;

/// An outgoing connection's state, shared by its calls, reader and writer.
pub(super) struct Outgoing {
    peer: NodeId,
    closer: Closer,
    pub(super) pending: Mutex<Pending>,
    /// One permit per pending call, so `pending` stays within
    /// `requests_in_flight_max`.
    permits: Semaphore,
    pub(super) requests_in_flight_max: usize,
    correlation_next: AtomicU64,
}

pub(super) struct Pending {
    open: bool,
    pub(super) waiting: HashMap<u64, oneshot::Sender<Answer>>,
}

impl Outgoing {
    pub(super) fn is_open(&self) -> bool {
        !self.closer.is_closed()
    }

    /// Fails every waiting call at once: dropping its sender wakes it.
    pub(super) fn close(&self) {
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
pub(super) struct Connection {
    pub(super) shared: Arc<Outgoing>,
    frames: mpsc::Sender<OutFrame>,
}

impl Connection {
    pub(super) async fn call(&self, payload: AlignedVec, deadline: Instant) -> Result<AlignedVec, TransportError> {
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
pub(super) async fn connect(
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
        read_frame(&mut reader, common.frame_bytes_max(), &common.counters, common.idle_timeout()).await?
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

pub(super) async fn accept_loop(
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
            read_frame(&mut reader, common.frame_bytes_max(), &common.counters, common.idle_timeout()).await?
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
pub(super) async fn answer(
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
    let max = common.frame_bytes_max();
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
        debug_assert!(frame.payload.len() <= common.frame_bytes_max() as usize);
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
pub(super) enum LinkError {
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
