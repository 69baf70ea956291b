//! A fault-injecting TCP proxy for one directed peer link.
//!
//! The chaos harness puts a `Proxy` on every directed pair of nodes: node A
//! dials B through the proxy A→B, so a rule set on that proxy affects exactly
//! the calls A makes to B and their answers, and nothing else. B dialing A goes
//! through the proxy B→A, which has a rule of its own; an asymmetric partition
//! is two different rules.
//!
//! The proxy speaks the peer transport's framing (`cluster/src/transport.rs`):
//!
//! ```text
//! [len u32 LE][kind u8][0u8; 3][correlation u64 LE][payload: len bytes]
//! ```
//!
//! It reads nothing but `len`, and it relays whole frames only: a dropped frame
//! leaves no half frame behind, so the receiver's framing is never broken and a
//! fault looks like a lost message, not like corruption.
//!
//! # How a connection is relayed
//!
//! Each accepted connection gets its own connection to the target and one pump
//! per direction. A pump's reader takes whole frames and applies the rule in
//! force *when the frame is whole*, so `set` acts at once on open connections;
//! a frame it keeps goes into a bounded queue with the time it may leave. The
//! pump's writer sends queued frames in order, each no earlier than its time,
//! so a delay never reorders a direction. Either side closing (or breaking the
//! framing) closes both. `cut` aborts every connection's task, which closes
//! both of its sockets.
//!
//! # Determinism
//!
//! Drops and jitter draw from a stream of `testkit::SplitMix` per direction
//! per connection, seeded from the proxy's seed and the connection's index in
//! accept order: the same seed and the same sequence of connections and frames
//! give the same fates.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use testkit::SplitMix;

/// Bytes before every payload: length, kind, 3 reserved bytes, correlation id.
pub const FRAME_HEADER_LEN: usize = 16;
/// Largest payload relayed, the transport's default `frame_bytes_max`. A header
/// announcing more closes the connection.
pub const FRAME_PAYLOAD_MAX: u32 = 64 * 1024 * 1024;
/// Longest a frame is held under `Flow::Delay`, delay and jitter together;
/// longer asks are capped, so a typo in a schedule cannot park a link for days.
pub const DELAY_MS_MAX: u64 = 60_000;
/// Connections open through one proxy at once; more are refused. The
/// transport keeps one connection per peer, so this only bounds reconnect
/// storms.
pub const CONNECTIONS_OPEN_MAX: usize = 256;
/// Frames held in one direction of one connection, waiting for their time
/// (under `Delay`) or for the receiver. A full queue stops the reader, so the
/// sender feels TCP backpressure as it would from a slow peer.
const QUEUE_FRAMES_MAX: usize = 1024;
/// Bytes held in one direction of one connection, counted like
/// `QUEUE_FRAMES_MAX`: one largest frame with its header.
const QUEUE_BYTES_MAX: u32 = FRAME_PAYLOAD_MAX + 16;
const _: () = assert!(QUEUE_BYTES_MAX as usize == FRAME_PAYLOAD_MAX as usize + FRAME_HEADER_LEN);
const READ_BUFFER_BYTES: usize = 64 * 1024;
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Bound on connecting to the target for an accepted connection.
const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does
/// not spin.
const ACCEPT_BACKOFF_MS: u64 = 50;

/// What happens to frames in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Flow {
    /// Forward everything.
    Pass,
    /// Read and discard every frame (the connection stays open: a silent
    /// partition).
    Blackhole,
    /// Discard each frame with this probability (0..=1), whole frames only, so
    /// framing is never broken. Outside 0..=1 acts as the nearer end; NaN
    /// drops nothing.
    Drop { fraction: f64 },
    /// Hold each frame `ms` (plus uniform 0..=jitter_ms) before forwarding,
    /// keeping order. The total is capped at `DELAY_MS_MAX`.
    Delay { ms: u64, jitter_ms: u64 },
}

/// The faults of one link, in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Client→server: the dialing node's requests (and its handshake frames:
    /// hello and proof).
    pub forward: Flow,
    /// Server→client: the answers.
    pub backward: Flow,
    /// Close new connections at once (a refused/unreachable peer). Existing
    /// ones are unaffected (use `cut`).
    pub refuse: bool,
}

impl Rule {
    /// No faults.
    pub const PASS: Rule = Rule { forward: Flow::Pass, backward: Flow::Pass, refuse: false };

    /// Both directions discard everything on connections that stay open.
    pub fn blackhole() -> Rule {
        Rule { forward: Flow::Blackhole, backward: Flow::Blackhole, refuse: false }
    }
}

/// What a proxy has done since it started. Index 0 of each pair is forward
/// (client→server), index 1 backward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStats {
    /// Connections relayed (or tried: a target that cannot be reached closes
    /// them at once).
    pub accepted: u64,
    /// Connections closed at once, under `Rule::refuse` or beyond
    /// `CONNECTIONS_OPEN_MAX`; not in `accepted`.
    pub refused: u64,
    /// Frames written to the other side.
    pub forwarded: [u64; 2],
    /// Frames discarded by `Blackhole` or `Drop`.
    pub dropped: [u64; 2],
    /// Bytes of the forwarded frames, headers included.
    pub bytes: [u64; 2],
}

/// A fault-injecting proxy in front of one peer, listening on a port of its
/// own. Dropping it stops it too, without waiting.
pub struct Proxy {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 (a free port) and forwards each accepted
    /// connection to `target`. `seed` drives the drop/jitter randomness,
    /// deterministic per connection order.
    pub async fn start(name: String, target: SocketAddr, seed: u64) -> io::Result<Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            seed,
            rule: watch::Sender::new(Rule::PASS),
            counters: Counters::default(),
            connections: Mutex::new(JoinSet::new()),
        });
        let accept_task = tokio::spawn(accept_connections(listener, Arc::clone(&shared)));
        Ok(Proxy { name, addr, shared, accept_task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Applies to every open and future connection at once (frames already in
    /// flight under `Delay` still arrive).
    pub fn set(&self, rule: Rule) {
        self.shared.rule.send_replace(rule);
    }

    pub fn rule(&self) -> Rule {
        self.shared.rule()
    }

    /// Closes every open connection now (both sides see a reset/EOF), as a
    /// crash or a cable pull would. New connections are accepted as the rule
    /// says.
    pub fn cut(&self) {
        self.shared.connections().abort_all();
    }

    pub fn stats(&self) -> ProxyStats {
        let counters = &self.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProxyStats {
            accepted: load(&counters.accepted),
            refused: load(&counters.refused),
            forwarded: counters.forwarded.each_ref().map(load),
            dropped: counters.dropped.each_ref().map(load),
            bytes: counters.bytes.each_ref().map(load),
        }
    }

    /// Stops listening and closes everything. When it returns the port is
    /// closed and every relayed socket is closed.
    pub async fn stop(mut self) {
        self.accept_task.abort();
        // Aborting only asks; the listener is closed once the task is gone.
        let _ = (&mut self.accept_task).await;
        let mut connections = std::mem::take(&mut *self.shared.connections());
        connections.shutdown().await;
    }
}

impl Drop for Proxy {
    /// A proxy dropped without `stop` (a test that failed) must not leave a
    /// listener or relayed connections behind.
    fn drop(&mut self) {
        self.accept_task.abort();
        self.shared.connections().abort_all();
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("rule", &self.shared.rule())
            .finish_non_exhaustive()
    }
}

/// What the proxy handle, its accept loop and its connections share.
struct Shared {
    target: SocketAddr,
    seed: u64,
    /// A watch channel rather than a mutex: readers on every frame never
    /// contend with each other, and there is no poisoning to handle.
    rule: watch::Sender<Rule>,
    counters: Counters,
    /// One task per open connection; finished ones are reaped at each accept.
    connections: Mutex<JoinSet<()>>,
}

impl Shared {
    fn rule(&self) -> Rule {
        *self.rule.borrow()
    }

    fn connections(&self) -> MutexGuard<'_, JoinSet<()>> {
        // Nothing panics while holding the lock; if something ever did, the
        // set of tasks is still sound to use.
        self.connections.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    forwarded: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Client→server.
    Forward = 0,
    /// Server→client.
    Backward = 1,
}

impl Direction {
    fn index(self) -> usize {
        self as usize
    }

    fn flow(self, rule: &Rule) -> Flow {
        match self {
            Direction::Forward => rule.forward,
            Direction::Backward => rule.backward,
        }
    }
}

async fn accept_connections(listener: TcpListener, shared: Arc<Shared>) {
    let mut connection_index: u64 = 0;
    loop {
        let inbound = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
                continue;
            }
        };
        let refuse = shared.rule().refuse;
        let mut connections = shared.connections();
        while connections.try_join_next().is_some() {}
        if refuse || connections.len() >= CONNECTIONS_OPEN_MAX {
            // A reset rather than a FIN: what a dialer gets from a port nobody
            // listens on, so its handshake fails at once.
            let _ = inbound.set_zero_linger();
            drop(inbound);
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        connections.spawn(relay(inbound, Arc::clone(&shared), connection_index));
        connection_index += 1;
    }
}

/// Relays one accepted connection until either side closes it.
async fn relay(inbound: TcpStream, shared: Arc<Shared>, connection_index: u64) {
    let connect = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), TcpStream::connect(shared.target));
    let Ok(Ok(outbound)) = connect.await else {
        // Dropping `inbound` closes it: the dialer sees an unreachable peer.
        return;
    };
    // Frames leave as soon as they are whole and due; Nagle would add a delay
    // of its own to every rule.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (client_read, client_write) = inbound.into_split();
    let (server_read, server_write) = outbound.into_split();
    let forward = pump(client_read, server_write, &shared, Direction::Forward, connection_index);
    let backward = pump(server_read, client_write, &shared, Direction::Backward, connection_index);
    // The first direction to end (a close, an error, a broken frame) ends the
    // connection: returning drops all four halves, closing both sockets.
    tokio::select! {
        _ = forward => {}
        _ = backward => {}
    }
}

/// A frame on its way out, with the queue budget it holds until written.
struct Held {
    frame: Vec<u8>,
    release_at: Instant,
    _budget: OwnedSemaphorePermit,
}

/// Moves frames one way until the reading side ends or either side fails.
async fn pump(
    reader: impl AsyncRead + Unpin,
    writer: impl AsyncWrite + Unpin,
    shared: &Shared,
    direction: Direction,
    connection_index: u64,
) -> io::Result<()> {
    let (queue_sender, queue) = mpsc::channel(QUEUE_FRAMES_MAX);
    let budget = Arc::new(Semaphore::new(QUEUE_BYTES_MAX as usize));
    let rng = Rng::new(shared.seed, connection_index, direction);
    let reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    let read = read_frames(reader, queue_sender, budget, shared, direction, rng);
    let write = write_frames(writer, queue, shared, direction);
    tokio::pin!(read, write);
    tokio::select! {
        read_result = &mut read => {
            read_result?;
            // A clean close: frames sent before it (held by a delay) still go
            // out first. The writer ends once the queue is empty, since the
            // reader has dropped its sender.
            write.await
        }
        // The writer ends early only on an error (the reader still holds the
        // sender): the receiving side is gone.
        write_result = &mut write => write_result,
    }
}

/// Reads whole frames and queues the ones the current rule keeps.
async fn read_frames(
    mut reader: impl AsyncRead + Unpin,
    queue: mpsc::Sender<Held>,
    budget: Arc<Semaphore>,
    shared: &Shared,
    direction: Direction,
    mut rng: Rng,
) -> io::Result<()> {
    while let Some(frame) = read_frame(&mut reader).await? {
        let Some(hold) = hold_for(direction.flow(&shared.rule()), &mut rng) else {
            shared.counters.dropped[direction.index()].fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let release_at = Instant::now() + hold;
        let permits = u32::try_from(frame.len()).map_or(QUEUE_BYTES_MAX, |len| len.min(QUEUE_BYTES_MAX));
        let held_budget = Arc::clone(&budget)
            .acquire_many_owned(permits)
            .await
            .map_err(|_closed| io::Error::from(io::ErrorKind::BrokenPipe))?;
        queue
            .send(Held { frame, release_at, _budget: held_budget })
            .await
            .map_err(|_closed| io::Error::from(io::ErrorKind::BrokenPipe))?;
    }
    Ok(())
}

/// How long `flow` holds the next frame, or `None` to discard it.
fn hold_for(flow: Flow, rng: &mut Rng) -> Option<Duration> {
    match flow {
        Flow::Pass => Some(Duration::ZERO),
        Flow::Blackhole => None,
        Flow::Drop { fraction } => (!rng.chance(fraction)).then_some(Duration::ZERO),
        Flow::Delay { ms, jitter_ms } => {
            let total_ms = ms.saturating_add(rng.up_to(jitter_ms)).min(DELAY_MS_MAX);
            Some(Duration::from_millis(total_ms))
        }
    }
}

/// Writes queued frames in queue order, each no earlier than its release time.
async fn write_frames(
    mut writer: impl AsyncWrite + Unpin,
    mut queue: mpsc::Receiver<Held>,
    shared: &Shared,
    direction: Direction,
) -> io::Result<()> {
    while let Some(held) = queue.recv().await {
        // A frame whose jitter made it due before the one ahead of it waits
        // behind that one: order within a direction is never changed.
        if held.release_at > Instant::now() {
            // What is already written must not wait for this frame's time.
            writer.flush().await?;
            tokio::time::sleep_until(held.release_at).await;
        }
        writer.write_all(&held.frame).await?;
        shared.counters.forwarded[direction.index()].fetch_add(1, Ordering::Relaxed);
        shared.counters.bytes[direction.index()].fetch_add(held.frame.len() as u64, Ordering::Relaxed);
        // A burst goes out in few writes, a lone frame at once.
        if queue.is_empty() {
            writer.flush().await?;
        }
    }
    writer.flush().await
}

/// Reads one whole frame, header included. `None` when the stream ends, also
/// in the middle of a frame: a partial frame is never relayed.
async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let payload_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if payload_len > FRAME_PAYLOAD_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame payload of {payload_len} bytes is over the limit of {FRAME_PAYLOAD_MAX}"),
        ));
    }
    let frame_len = FRAME_HEADER_LEN + payload_len as usize;
    // Grow with what arrives, so a header that lies costs no 64 MiB up front.
    let mut frame = Vec::with_capacity(frame_len.min(READ_BUFFER_BYTES));
    frame.extend_from_slice(&header);
    (&mut *reader).take(u64::from(payload_len)).read_to_end(&mut frame).await?;
    if frame.len() < frame_len {
        return Ok(None);
    }
    debug_assert_eq!(frame.len(), frame_len);
    Ok(Some(frame))
}

/// The fates of one direction of one connection: a stream of the one
/// seeded generator (`testkit::SplitMix`), so fates repeat with the seed.
struct Rng(SplitMix);

impl Rng {
    /// The generator of one direction of one connection. Each gets a stream
    /// of its own, so traffic on one connection does not shift the fates of
    /// another.
    fn new(seed: u64, connection_index: u64, direction: Direction) -> Rng {
        let stream = connection_index.wrapping_mul(2).wrapping_add(direction as u64);
        Rng(SplitMix::new(SplitMix::new(seed).next_u64() ^ stream))
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(bound) => self.next_u64() % bound,
            None => self.next_u64(),
        }
    }

    /// True with probability `probability` (clamped to 0..=1; NaN is never).
    fn chance(&mut self, probability: f64) -> bool {
        // The top 53 bits make a uniform f64 in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < probability
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::time::timeout;

    use super::*;

    const KIND_HELLO: u8 = 1;
    const KIND_REQUEST: u8 = 2;
    const KIND_ANSWER: u8 = 3;
    /// Longest any single wait in these tests may take before it is a failure.
    const PATIENCE: Duration = Duration::from_secs(2);

    fn frame(kind: u8, correlation: u64, payload: &[u8]) -> Vec<u8> {
        let payload_len = u32::try_from(payload.len()).unwrap_or_else(|e| panic!("payload too long: {e}"));
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
        frame.extend_from_slice(&payload_len.to_le_bytes());
        frame.push(kind);
        frame.extend_from_slice(&[0; 3]);
        frame.extend_from_slice(&correlation.to_le_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn correlation_of(frame: &[u8]) -> u64 {
        u64::from_le_bytes(frame[8..16].try_into().unwrap_or_else(|e| panic!("short header: {e}")))
    }

    /// A payload that says which request it belongs to, of varied length
    /// (0 to 299 bytes), so a frame cut or spliced anywhere is caught.
    fn payload(correlation: u64) -> Vec<u8> {
        let len = usize::try_from(correlation.wrapping_mul(37) % 300).unwrap_or_else(|e| panic!("{e}"));
        correlation.to_le_bytes().iter().copied().cycle().take(len).collect()
    }

    fn request(correlation: u64) -> Vec<u8> {
        frame(KIND_REQUEST, correlation, &payload(correlation))
    }

    async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
        timeout(PATIENCE, future).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        within(what, async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// What the server behind the proxy saw, in order.
    #[derive(Debug)]
    enum Seen {
        Connected,
        Frame { frame: Vec<u8>, at: Instant },
        Closed,
    }

    /// A peer that answers every frame with an answer frame carrying the same
    /// correlation and payload, and reports all it sees.
    struct EchoServer {
        addr: SocketAddr,
        seen: mpsc::UnboundedReceiver<Seen>,
    }

    impl EchoServer {
        async fn start() -> EchoServer {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap_or_else(|e| panic!("bind: {e}"));
            let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
            let (report, seen) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = report.send(Seen::Connected);
                    tokio::spawn(EchoServer::answer(stream, report.clone()));
                }
            });
            EchoServer { addr, seen }
        }

        async fn answer(stream: TcpStream, report: mpsc::UnboundedSender<Seen>) {
            let (reader, mut writer) = stream.into_split();
            let mut reader = BufReader::new(reader);
            while let Ok(Some(request)) = read_frame(&mut reader).await {
                let answer = frame(KIND_ANSWER, correlation_of(&request), &request[FRAME_HEADER_LEN..]);
                let _ = report.send(Seen::Frame { frame: request, at: Instant::now() });
                if writer.write_all(&answer).await.is_err() {
                    break;
                }
            }
            let _ = report.send(Seen::Closed);
        }

        async fn next(&mut self) -> Seen {
            within("the server to see something", self.seen.recv()).await.unwrap_or_else(|| panic!("server gone"))
        }

        /// The next `count` frames, skipping connection events.
        async fn frames(&mut self, count: usize) -> Vec<(Vec<u8>, Instant)> {
            let mut frames = Vec::with_capacity(count);
            while frames.len() < count {
                if let Seen::Frame { frame, at } = self.next().await {
                    frames.push((frame, at));
                }
            }
            frames
        }

        async fn sees_nothing_for(&mut self, duration: Duration) {
            if let Ok(seen) = timeout(duration, self.seen.recv()).await {
                panic!("the server saw {seen:?}");
            }
        }
    }

    struct Client {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl Client {
        async fn connect(addr: SocketAddr) -> Client {
            let stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
            let (reader, writer) = stream.into_split();
            Client { reader: BufReader::new(reader), writer }
        }

        async fn send(&mut self, frame: &[u8]) {
            self.writer.write_all(frame).await.unwrap_or_else(|e| panic!("send: {e}"));
        }

        async fn answer(&mut self) -> Vec<u8> {
            within("an answer", read_frame(&mut self.reader))
                .await
                .unwrap_or_else(|e| panic!("read: {e}"))
                .unwrap_or_else(|| panic!("the connection closed"))
        }

        /// Sends a request and checks its answer comes back whole.
        async fn round_trip(&mut self, correlation: u64) {
            self.send(&request(correlation)).await;
            let answer = self.answer().await;
            assert_eq!(answer, frame(KIND_ANSWER, correlation, &payload(correlation)));
        }

        /// True once the connection is closed by the other end (EOF or reset).
        async fn is_closed(&mut self) -> bool {
            let mut byte = [0u8; 1];
            matches!(within("the connection to close", self.reader.read(&mut byte)).await, Ok(0) | Err(_))
        }
    }

    async fn proxy_to(target: SocketAddr, seed: u64) -> Proxy {
        Proxy::start("a->b".to_string(), target, seed).await.unwrap_or_else(|e| panic!("start: {e}"))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pass_forwards_every_frame_in_order_and_intact() {
        let mut server = EchoServer::start().await;
        let proxy = proxy_to(server.addr, 1).await;
        let mut client = Client::connect(proxy.addr()).await;
        let hello = frame(KIND_HELLO, 0, b"TALLYNET\x01\0\0\0\0\0\0\0\x07\0\0\0\0\0\0\0");
        let large = frame(KIND_REQUEST, 1_000, &vec![0xAB; 300_000]);
        let mut sent = vec![hello, large];
        sent.extend((1..=100).map(request));

        for frame in &sent {
            client.send(frame).await;
        }

        let received: Vec<Vec<u8>> = server.frames(sent.len()).await.into_iter().map(|(frame, _)| frame).collect();
        assert_eq!(received, sent);
        for request in &sent {
            let answer = client.answer().await;
            assert_eq!(correlation_of(&answer), correlation_of(request));
            assert_eq!(answer[FRAME_HEADER_LEN..], request[FRAME_HEADER_LEN..]);
        }
        let bytes: u64 = sent.iter().map(|frame| frame.len() as u64).sum();
        let stats = proxy.stats();
        assert_eq!((stats.accepted, stats.refused), (1, 0));
        assert_eq!(stats.forwarded, [102, 102]);
        assert_eq!(stats.dropped, [0, 0]);
        assert_eq!(stats.bytes, [bytes, bytes]);
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn blackhole_forward_discards_frames_but_keeps_the_connection_open() {
        let mut server = EchoServer::start().await;
        let proxy = proxy_to(server.addr, 1).await;
        let mut client = Client::connect(proxy.addr()).await;
        client.round_trip(1).await;
        server.frames(1).await;

        proxy.set(Rule { forward: Flow::Blackhole, ..Rule::PASS });
        for correlation in 2..=11 {
            client.send(&request(correlation)).await;
        }
        eventually("10 frames dropped", || proxy.stats().dropped == [10, 0]).await;
        server.sees_nothing_for(Duration::from_millis(50)).await;

        proxy.set(Rule::PASS);
        // The first answer is the new request's: nothing from the blackhole
        // was held back to arrive late.
        client.round_trip(12).await;
        assert_eq!(correlation_of(&server.frames(1).await[0].0), 12);
        assert_eq!(proxy.stats().forwarded, [2, 2]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn blackhole_backward_discards_answers_only() {
        let mut server = EchoServer::start().await;
        let proxy = proxy_to(server.addr, 1).await;
        let mut client = Client::connect(proxy.addr()).await;
        proxy.set(Rule { backward: Flow::Blackhole, ..Rule::PASS });

        client.send(&request(1)).await;

        server.frames(1).await;
        eventually("the answer dropped", || proxy.stats().dropped == [0, 1]).await;
        proxy.set(Rule::PASS);
        client.round_trip(2).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn drop_discards_whole_frames_only_and_counts_them() {
        const FRAMES: u64 = 400;
        let mut server = EchoServer::start().await;
        let proxy = proxy_to(server.addr, 42).await;
        proxy.set(Rule { forward: Flow::Drop { fraction: 0.5 }, ..Rule::PASS });
        let mut client = Client::connect(proxy.addr()).await;

        for correlation in 1..=FRAMES {
            client.send(&request(correlation)).await;
        }

        eventually("every frame decided", || {
            let stats = proxy.stats();
            stats.forwarded[0] + stats.dropped[0] == FRAMES
        })
        .await;
        let stats = proxy.stats();
        assert!((150..=250).contains(&stats.dropped[0]), "dropped {} of {FRAMES}", stats.dropped[0]);
        let forwarded = usize::try_from(stats.forwarded[0]).unwrap_or_else(|e| panic!("{e}"));
        let received = server.frames(forwarded).await;
        server.sees_nothing_for(Duration::from_millis(50)).await;
        let mut previous = 0;
        for (frame, _) in &received {
            let correlation = correlation_of(frame);
            assert!(correlation > previous, "frame {correlation} after {previous}");
            assert_eq!(*frame, request(correlation));
            previous = correlation;
        }
        let bytes: u64 = received.iter().map(|(frame, _)| frame.len() as u64).sum();
        assert_eq!(stats.bytes[0], bytes);
        eventually("every answer forwarded", || proxy.stats().forwarded[1] == stats.forwarded[0]).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_same_seed_drops_the_same_frames() {
        async fn survivors(seed: u64) -> Vec<u64> {
            let mut server = EchoServer::start().await;
            let proxy = proxy_to(server.addr, seed).await;
            proxy.set(Rule { forward: Flow::Drop { fraction: 0.3 }, ..Rule::PASS });
            let mut client = Client::connect(proxy.addr()).await;
            for correlation in 1..=100 {
                client.send(&request(correlation)).await;
            }
            eventually("every frame decided", || {
                let stats = proxy.stats();
                stats.forwarded[0] + stats.dropped[0] == 100
            })
            .await;
            let forwarded = usize::try_from(proxy.stats().forwarded[0]).unwrap_or_else(|e| panic!("{e}"));
            server.frames(forwarded).await.iter().map(|(frame, _)| correlation_of(frame)).collect()
        }

        let first = survivors(7).await;
        assert_eq!(first, survivors(7).await);
        assert_ne!(first, survivors(8).await);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn delay_holds_each_frame_at_least_its_delay_and_keeps_order() {
        let mut server = EchoServer::start().await;
        let proxy = proxy_to(server.addr, 1).await;
        proxy.set(Rule { forward: Flow::Delay { ms: 50, jitter_ms: 0 }, ..Rule::PASS });
        let mut client = Client::connect(proxy.addr()).await;

        let mut sent_at = Vec::new();
        for correlation in 1..=10 {
            sent_at.push(Instant::now());
            client.send(&request(correlation)).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }

        let received = server.frames(10).await;
        for ((frame, arrived_at), (correlation, sent_at)) in received.iter().zip((1..).zip(sent_at)) {
            assert_eq!(*frame, request(correlation));
            let held = *arrived_at - sent_at;
            assert!(held >= Duration::from_millis(50), "frame {correlation} held only {held:?}");
        }
        client.answer().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn delay_with_jitter_keeps_order() {
        let mut server = EchoServer::start().await;
        let proxy = proxy_to(server.addr, 3).await;
        proxy.set(Rule { forward: Flow::Delay { ms: 5, jitter_ms: 30 }, ..Rule::PASS });
        let mut client = Client::connect(proxy.addr()).await;

        for correlation in 1..=30 {
            client.send(&request(correlation)).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        let correlations: Vec<u64> = server.frames(30).await.iter().map(|(frame, _)| correlation_of(frame)).collect();
        assert_eq!(correlations, (1..=30).collect::<Vec<u64>>());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn frames_held_by_a_delay_still_arrive_after_the_rule_changes() {
        let mut server = EchoServer::start().await;
        let proxy = proxy_to(server.addr, 1).await;
        let mut client = Client::connect(proxy.addr()).await;
        client.round_trip(1).await;
        proxy.set(Rule { forward: Flow::Delay { ms: 150, jitter_ms: 0 }, ..Rule::PASS });

        client.send(&request(2)).await;
        // Long enough for the proxy to have read frame 2, well short of its delay.
        tokio::time::sleep(Duration::from_millis(30)).await;
        proxy.set(Rule::blackhole());
        client.send(&request(3)).await;

        let correlations: Vec<u64> = server.frames(2).await.iter().map(|(frame, _)| correlation_of(frame)).collect();
        assert_eq!(correlations, [1, 2]);
        assert_eq!(proxy.stats().dropped[0], 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn refuse_closes_new_connections_but_not_open_ones() {
        let mut server = EchoServer::start().await;
        let proxy = proxy_to(server.addr, 1).await;
        let mut open = Client::connect(proxy.addr()).await;
        open.round_trip(1).await;
        proxy.set(Rule { refuse: true, ..Rule::PASS });

        // On loopback the reset can beat the dialer's connect to the finish.
        let refused = match TcpStream::connect(proxy.addr()).await {
            Ok(stream) => {
                let (reader, writer) = stream.into_split();
                Client { reader: BufReader::new(reader), writer }.is_closed().await
            }
            Err(_) => true,
        };

        assert!(refused);
        assert_eq!((proxy.stats().accepted, proxy.stats().refused), (1, 1));
        open.round_trip(2).await;
        proxy.set(Rule::PASS);
        Client::connect(proxy.addr()).await.round_trip(3).await;
        let connections =
            std::iter::from_fn(|| server.seen.try_recv().ok()).filter(|seen| matches!(seen, Seen::Connected)).count();
        assert_eq!(connections, 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cut_closes_open_connections_on_both_sides() {
        let mut server = EchoServer::start().await;
        let proxy = proxy_to(server.addr, 1).await;
        let mut client = Client::connect(proxy.addr()).await;
        client.round_trip(1).await;
        assert!(matches!(server.next().await, Seen::Connected));
        assert!(matches!(server.next().await, Seen::Frame { .. }));

        proxy.cut();

        assert!(client.is_closed().await);
        assert!(matches!(server.next().await, Seen::Closed));
        // A cut is not a refusal: the next dial gets through.
        Client::connect(proxy.addr()).await.round_trip(2).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stop_closes_the_port_and_open_connections() {
        let server = EchoServer::start().await;
        let proxy = proxy_to(server.addr, 1).await;
        let addr = proxy.addr();
        let mut client = Client::connect(addr).await;
        client.round_trip(1).await;

        proxy.stop().await;

        assert!(client.is_closed().await);
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_frame_over_the_limit_closes_the_connection() {
        let mut server = EchoServer::start().await;
        let proxy = proxy_to(server.addr, 1).await;
        let mut client = Client::connect(proxy.addr()).await;
        client.round_trip(1).await;
        server.frames(1).await;
        let mut header = frame(KIND_REQUEST, 2, &[]);
        header[..4].copy_from_slice(&(FRAME_PAYLOAD_MAX + 1).to_le_bytes());

        client.send(&header).await;

        assert!(client.is_closed().await);
        assert!(matches!(server.next().await, Seen::Closed));
        assert_eq!(proxy.stats().forwarded[0], 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unreachable_target_closes_the_accepted_connection() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap_or_else(|e| panic!("bind: {e}"));
        let target = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
        drop(listener);
        let proxy = proxy_to(target, 1).await;

        let mut client = Client::connect(proxy.addr()).await;

        assert!(client.is_closed().await);
        assert_eq!(proxy.stats().accepted, 1);
    }

    #[test]
    fn drop_fractions_outside_the_range_act_as_the_nearer_end() {
        let mut rng = Rng::new(5, 0, Direction::Forward);
        for _ in 0..1_000 {
            assert_eq!(hold_for(Flow::Drop { fraction: 1.5 }, &mut rng), None);
            assert_eq!(hold_for(Flow::Drop { fraction: 1.0 }, &mut rng), None);
            assert_eq!(hold_for(Flow::Drop { fraction: -0.5 }, &mut rng), Some(Duration::ZERO));
            assert_eq!(hold_for(Flow::Drop { fraction: 0.0 }, &mut rng), Some(Duration::ZERO));
            assert_eq!(hold_for(Flow::Drop { fraction: f64::NAN }, &mut rng), Some(Duration::ZERO));
        }
    }

    #[test]
    fn delays_stay_within_their_jitter_and_the_cap() {
        let mut rng = Rng::new(5, 0, Direction::Backward);
        for _ in 0..1_000 {
            let hold = hold_for(Flow::Delay { ms: 10, jitter_ms: 5 }, &mut rng).unwrap_or_default();
            assert!((Duration::from_millis(10)..=Duration::from_millis(15)).contains(&hold), "{hold:?}");
        }
        let huge = Flow::Delay { ms: u64::MAX, jitter_ms: u64::MAX };
        assert_eq!(hold_for(huge, &mut rng), Some(Duration::from_millis(DELAY_MS_MAX)));
    }
}
