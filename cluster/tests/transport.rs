//! The peer transport as a specification: calls are answered and matched,
//! partitions and dead peers fail fast, bounds are kept, and a misbehaving
//! peer never takes a node down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cluster::transport::{
    FRAME_HEADER_LEN, FRAME_KIND_HELLO, FRAME_KIND_REQUEST, HELLO_MAGIC, Handler, PROTOCOL_VERSION, Transport,
    TransportConfig, TransportError,
};
use cluster::types::NodeId;
use cluster::wire::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Long enough that only a hang, never a slow machine, runs out of it.
const LIVENESS: Duration = Duration::from_secs(10);

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}")).to_string();
    (listener, addr)
}

/// Answers `ReadIndex { group }` with `index: Some(group)` and `Probe` with
/// `initialized: true`, after `delay(group)`.
fn echo(delay: fn(u32) -> Duration) -> Arc<dyn Handler> {
    Arc::new(move |_from: NodeId, request: Request| async move {
        tokio::time::sleep(delay(request.group())).await;
        match request {
            Request::ReadIndex { group } => Response::ReadIndex { index: Some(u64::from(group)) },
            Request::Probe { .. } => Response::Probe { initialized: true },
            _ => Response::Refused("unexpected request".to_string()),
        }
    })
}

fn no_delay(_group: u32) -> Duration {
    Duration::ZERO
}

/// A node `id` serving `handler` on a fresh port.
async fn serving(
    id: NodeId,
    config: TransportConfig,
    handler: Arc<dyn Handler>,
) -> (Transport, String, JoinHandle<()>) {
    let (listener, addr) = listen().await;
    let transport = Transport::new(id, config);
    let accept = transport.serve(listener, handler);
    (transport, addr, accept)
}

async fn read_index(from: &Transport, to: NodeId, group: u32) -> Result<Response, TransportError> {
    from.call(to, &Request::ReadIndex { group }, LIVENESS).await
}

fn assert_index(answer: Result<Response, TransportError>, group: u32) {
    match answer {
        Ok(Response::ReadIndex { index }) => assert_eq!(index, Some(u64::from(group))),
        other => panic!("expected ReadIndex {{ index: Some({group}) }}, got {other:?}"),
    }
}

fn assert_unreachable(answer: Result<Response, TransportError>) {
    assert!(matches!(answer, Err(TransportError::Unreachable(_))), "expected Unreachable, got {answer:?}");
}

/// Header of a frame, laid out as the module docs say.
fn header(len: u32, kind: u8, correlation: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(FRAME_HEADER_LEN);
    header.extend_from_slice(&len.to_le_bytes());
    header.extend_from_slice(&[kind, 0, 0, 0]);
    header.extend_from_slice(&correlation.to_le_bytes());
    header
}

/// Connects like a peer `id` would and completes the handshake.
async fn raw_peer(addr: &str, id: NodeId) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    let mut hello = header(24, FRAME_KIND_HELLO, 0);
    hello.extend_from_slice(&HELLO_MAGIC);
    hello.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    hello.extend_from_slice(&[0; 4]);
    hello.extend_from_slice(&id.to_le_bytes());
    stream.write_all(&hello).await.unwrap_or_else(|e| panic!("write hello: {e}"));
    let mut answer = [0u8; FRAME_HEADER_LEN + 24];
    stream.read_exact(&mut answer).await.unwrap_or_else(|e| panic!("read hello: {e}"));
    assert_eq!(answer[4], FRAME_KIND_HELLO);
    stream
}

/// Waits until the server closes `stream` (EOF or reset), bounded by LIVENESS.
async fn assert_closed_by_server(stream: &mut TcpStream) {
    let mut buffer = [0u8; 256];
    let closed = tokio::time::timeout(LIVENESS, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_answered_and_attributed_to_its_sender() {
    let seen_from = Arc::new(AtomicUsize::new(0));
    let handler: Arc<dyn Handler> = Arc::new({
        let seen_from = seen_from.clone();
        move |from: NodeId, _request: Request| {
            seen_from.store(usize::try_from(from).unwrap_or(usize::MAX), Ordering::SeqCst);
            async { Response::Probe { initialized: true } }
        }
    });
    let (_a, addr, _accept) = serving(1, TransportConfig::default(), handler).await;
    let b = Transport::new(2, TransportConfig::default());
    b.set_peer(1, addr);

    let answer = b.call(1, &Request::Probe { group: 3 }, LIVENESS).await;

    assert!(matches!(answer, Ok(Response::Probe { initialized: true })), "got {answer:?}");
    assert_eq!(seen_from.load(Ordering::SeqCst), 2);
    let stats = b.stats();
    assert_eq!((stats.connects, stats.frames_sent, stats.frames_received), (1, 2, 2), "hello and one call: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_address_wins_over_the_membership_address() {
    let handler: Arc<dyn Handler> =
        Arc::new(|_from: NodeId, _request: Request| async { Response::Probe { initialized: true } });
    let (_a, addr, _accept) = serving(1, TransportConfig::default(), handler).await;
    let dial = std::collections::HashMap::from([(1, addr)]);
    let b = Transport::new(2, TransportConfig { dial, ..TransportConfig::default() });
    // The membership names an address nothing listens on; the dial address is used.
    b.set_peer(1, "127.0.0.1:1".into());

    let answer = b.call(1, &Request::Probe { group: 3 }, LIVENESS).await;

    assert!(matches!(answer, Ok(Response::Probe { initialized: true })), "got {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_connection_and_are_matched_out_of_order() {
    // Later groups answer sooner, so answers come back out of order.
    let (a, addr, _accept) =
        serving(1, TransportConfig::default(), echo(|group| Duration::from_millis(u64::from(64 - group) * 3))).await;
    let b = Transport::new(2, TransportConfig::default());
    b.set_peer(1, addr);

    let calls: Vec<_> = (0..64u32)
        .map(|group| {
            let b = b.clone();
            tokio::spawn(async move { (group, read_index(&b, 1, group).await) })
        })
        .collect();
    for call in calls {
        let (group, answer) = call.await.unwrap_or_else(|e| panic!("join: {e}"));
        assert_index(answer, group);
    }

    assert_eq!(b.stats().connects, 1);
    assert_eq!(a.stats().accepts, 1);
    assert_eq!(b.calls_pending(1), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_beyond_requests_in_flight_max_wait_and_are_served() {
    let running = Arc::new(AtomicUsize::new(0));
    let running_max = Arc::new(AtomicUsize::new(0));
    let handler: Arc<dyn Handler> = Arc::new({
        let (running, running_max) = (running.clone(), running_max.clone());
        move |_from: NodeId, request: Request| {
            let (running, running_max) = (running.clone(), running_max.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                running_max.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Response::ReadIndex { index: Some(u64::from(request.group())) }
            }
        }
    });
    let config = TransportConfig { requests_in_flight_max: 2, ..TransportConfig::default() };
    let (_a, addr, _accept) = serving(1, config.clone(), handler).await;
    let b = Transport::new(2, config);
    b.set_peer(1, addr);

    let calls: Vec<_> = (0..16u32)
        .map(|group| {
            let b = b.clone();
            tokio::spawn(async move { (group, read_index(&b, 1, group).await) })
        })
        .collect();
    for call in calls {
        let (group, answer) = call.await.unwrap_or_else(|e| panic!("join: {e}"));
        assert_index(answer, group);
    }

    assert!(running_max.load(Ordering::SeqCst) <= 2, "ran {} at once", running_max.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_peer_fails_fast_both_ways_and_healing_restores_it() {
    let (a, a_addr, _a_accept) = serving(1, TransportConfig::default(), echo(no_delay)).await;
    let (b, b_addr, _b_accept) = serving(2, TransportConfig::default(), echo(no_delay)).await;
    a.set_peer(2, b_addr);
    b.set_peer(1, a_addr);
    assert_index(read_index(&b, 1, 1).await, 1);
    assert_index(read_index(&a, 2, 2).await, 2);

    // The sending side blocks: its own calls fail without waiting.
    b.faults().block(1);
    assert!(b.faults().is_blocked(1));
    assert_unreachable(read_index(&b, 1, 1).await);
    // The receiving side blocked too: the other side's calls are not answered
    // and fail at once, not at their timeout.
    assert_unreachable(read_index(&a, 2, 2).await);

    b.faults().heal(1);
    assert!(!b.faults().is_blocked(1));
    assert_index(read_index(&b, 1, 1).await, 1);
    assert_index(read_index(&a, 2, 2).await, 2);

    a.faults().block(2);
    a.faults().block(3);
    assert_unreachable(read_index(&b, 1, 1).await);
    a.faults().heal_all();
    assert_index(read_index(&b, 1, 1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_unknown_or_unlistening_peers_are_unreachable() {
    let b = Transport::new(2, TransportConfig::default());
    assert_unreachable(read_index(&b, 1, 1).await);

    let (listener, addr) = listen().await;
    drop(listener);
    b.set_peer(1, addr);
    assert_unreachable(read_index(&b, 1, 1).await);
    assert!(b.stats().connect_failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_is_unreachable_and_reconnected_once_back_on_its_address() {
    let (a, addr, accept) = serving(1, TransportConfig::default(), echo(no_delay)).await;
    let b = Transport::new(2, TransportConfig::default());
    b.set_peer(1, addr.clone());
    assert_index(read_index(&b, 1, 1).await, 1);

    a.shutdown();
    tokio::time::timeout(LIVENESS, accept)
        .await
        .unwrap_or_else(|e| panic!("accept loop still running: {e}"))
        .unwrap_or_else(|e| panic!("accept loop: {e}"));
    let answer = read_index(&a, 2, 1).await;
    assert!(matches!(answer, Err(TransportError::Closed)), "got {answer:?}");
    assert_unreachable(read_index(&b, 1, 1).await);

    let listener = TcpListener::bind(&addr).await.unwrap_or_else(|e| panic!("rebind {addr}: {e}"));
    let a_again = Transport::new(1, TransportConfig::default());
    let _accept = a_again.serve(listener, echo(no_delay));
    assert_index(read_index(&b, 1, 1).await, 1);
    assert_eq!(b.stats().connects, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_on_a_connection_fail_at_once_when_it_dies() {
    let handler: Arc<dyn Handler> = Arc::new(|_from: NodeId, _request: Request| std::future::pending::<Response>());
    let (a, addr, _accept) = serving(1, TransportConfig::default(), handler).await;
    let b = Transport::new(2, TransportConfig::default());
    b.set_peer(1, addr);

    let calls: Vec<_> = (0..8u32)
        .map(|group| {
            let b = b.clone();
            // A timeout far beyond the test's patience: only the connection's
            // death can end these calls in time.
            tokio::spawn(async move { b.call(1, &Request::Probe { group }, Duration::from_secs(3600)).await })
        })
        .collect();
    tokio::time::timeout(LIVENESS, async {
        while b.calls_pending(1) < 8 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|e| panic!("calls never reached the connection: {e}"));

    a.shutdown();

    for call in calls {
        let answer = tokio::time::timeout(LIVENESS, call)
            .await
            .unwrap_or_else(|e| panic!("a call hung after its connection died: {e}"))
            .unwrap_or_else(|e| panic!("join: {e}"));
        assert_unreachable(answer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_peers_address_moves_its_calls_to_the_new_one() {
    // Two processes for node 1, told apart by their answers.
    let first: Arc<dyn Handler> =
        Arc::new(|_from: NodeId, _request: Request| async { Response::ReadIndex { index: Some(100) } });
    let second: Arc<dyn Handler> =
        Arc::new(|_from: NodeId, _request: Request| async { Response::ReadIndex { index: Some(200) } });
    let (_a1, addr1, _accept1) = serving(1, TransportConfig::default(), first).await;
    let (_a2, addr2, _accept2) = serving(1, TransportConfig::default(), second).await;
    let b = Transport::new(2, TransportConfig::default());

    b.set_peer(1, addr1);
    assert!(matches!(read_index(&b, 1, 0).await, Ok(Response::ReadIndex { index: Some(100) })));
    b.set_peer(1, addr2);
    assert!(matches!(read_index(&b, 1, 0).await, Ok(Response::ReadIndex { index: Some(200) })));
    assert_eq!(b.stats().connects, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answering_under_another_id_is_unreachable() {
    let (_a, addr, _accept) = serving(1, TransportConfig::default(), echo(no_delay)).await;
    let b = Transport::new(2, TransportConfig::default());
    b.set_peer(3, addr);

    let answer = read_index(&b, 3, 0).await;

    assert!(
        matches!(&answer, Err(TransportError::Unreachable(why)) if why.contains("answered as node 1")),
        "got {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_before_anything_is_sent() {
    let (_a, addr, _accept) = serving(1, TransportConfig::default(), echo(no_delay)).await;
    let b = Transport::new(2, TransportConfig { frame_size_max: 4, ..TransportConfig::default() });
    b.set_peer(1, addr);

    let answer = b.call(1, &Request::Probe { group: 1 }, LIVENESS).await;

    assert!(matches!(answer, Err(TransportError::FrameTooLarge { len, max: 4 }) if len > 4), "got {answer:?}");
    assert_eq!(b.stats().frames_sent, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_is_refused_and_the_connection_keeps_serving() {
    const MAX: u32 = 16 * 1024;
    let handler: Arc<dyn Handler> = Arc::new(|_from: NodeId, request: Request| async move {
        match request {
            Request::Probe { .. } => Response::Refused("x".repeat(4 * MAX as usize)),
            _ => Response::ReadIndex { index: Some(u64::from(request.group())) },
        }
    });
    let config = TransportConfig { frame_size_max: MAX, ..TransportConfig::default() };
    let (_a, addr, _accept) = serving(1, config.clone(), handler).await;
    let b = Transport::new(2, config);
    b.set_peer(1, addr);

    let answer = b.call(1, &Request::Probe { group: 1 }, LIVENESS).await;

    assert!(matches!(answer, Err(TransportError::FrameTooLarge { len, max: MAX }) if len > 4 * u64::from(MAX)));
    assert_index(read_index(&b, 1, 5).await, 5);
    assert_eq!(b.stats().connects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_peer_closes_only_its_connection() {
    let (a, addr, _accept) = serving(1, TransportConfig::default(), echo(no_delay)).await;
    let b = Transport::new(2, TransportConfig::default());
    b.set_peer(1, addr.clone());
    assert_index(read_index(&b, 1, 1).await, 1);

    // Garbage instead of a hello.
    let mut garbage = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    garbage.write_all(&[0xAB; 64]).await.unwrap_or_else(|e| panic!("write: {e}"));
    assert_closed_by_server(&mut garbage).await;

    // A request whose payload does not validate.
    let mut malformed = raw_peer(&addr, 9).await;
    let mut frame = header(32, FRAME_KIND_REQUEST, 1);
    frame.extend_from_slice(&[0xFF; 32]);
    malformed.write_all(&frame).await.unwrap_or_else(|e| panic!("write: {e}"));
    assert_closed_by_server(&mut malformed).await;

    // A frame over the limit.
    let mut oversized = raw_peer(&addr, 9).await;
    oversized.write_all(&header(u32::MAX, FRAME_KIND_REQUEST, 1)).await.unwrap_or_else(|e| panic!("write: {e}"));
    assert_closed_by_server(&mut oversized).await;

    // Nonzero reserved bytes.
    let mut reserved = raw_peer(&addr, 9).await;
    let mut frame = header(0, FRAME_KIND_REQUEST, 1);
    frame[5] = 1;
    reserved.write_all(&frame).await.unwrap_or_else(|e| panic!("write: {e}"));
    assert_closed_by_server(&mut reserved).await;

    // The well-behaved peer is still served, on its same connection.
    assert_index(read_index(&b, 1, 2).await, 2);
    assert_eq!(b.stats().connects, 1);
    assert!(a.stats().errors >= 4, "{:?}", a.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_an_answer_times_out_and_leaves_nothing_pending() {
    let handler: Arc<dyn Handler> = Arc::new(|_from: NodeId, request: Request| async move {
        match request {
            Request::Probe { .. } => std::future::pending().await,
            _ => Response::ReadIndex { index: Some(u64::from(request.group())) },
        }
    });
    let (_a, addr, _accept) = serving(1, TransportConfig::default(), handler).await;
    let b = Transport::new(2, TransportConfig::default());
    b.set_peer(1, addr);
    assert_index(read_index(&b, 1, 1).await, 1);

    let answer = b.call(1, &Request::Probe { group: 1 }, Duration::from_millis(200)).await;

    assert!(matches!(answer, Err(TransportError::Timeout)), "got {answer:?}");
    assert_eq!(b.calls_pending(1), 0);
    assert_eq!(b.stats().timeouts, 1);
    assert_index(read_index(&b, 1, 2).await, 2);
}
