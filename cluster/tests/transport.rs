//! The peer transport as a specification: calls are answered and matched,
//! partitions and dead peers fail fast, bounds are kept, a misbehaving peer
//! never takes a node down, and only peers that prove they know the
//! cluster's secret are served.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cluster::Secret;
use cluster::raft_types::NodeId;
use cluster::transport::{FRAME_HEADER_LEN, FRAME_KIND_REQUEST, Handler, Transport, TransportConfig, TransportError};
use cluster::wire::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mod common;

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

/// Connects like a peer `id` would (no secret) and completes the handshake
/// with node 1.
async fn raw_peer(addr: &str, id: NodeId) -> TcpStream {
    common::raw_peer::authenticated(addr, id, 1, b"").await
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
    let frames = (stats.connects, stats.frames_sent, stats.frames_received);
    assert_eq!(frames, (1, 3, 3), "hello, proof and one call each way: {stats:?}");
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
    let b = Transport::new(2, TransportConfig { frame_bytes_max: 4, ..TransportConfig::default() });
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
    let config = TransportConfig { frame_bytes_max: MAX, ..TransportConfig::default() };
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
    let stats = a.stats();
    assert!(stats.handshakes_refused >= 1 && stats.errors >= 3, "{stats:?}");
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

fn with_secret(secret: &str) -> TransportConfig {
    TransportConfig { secret: Some(Secret::new(secret)), ..TransportConfig::default() }
}

const SECRET: &str = "the-cluster-secret-0123456789abcdef";

/// A handler that counts the requests it is asked to answer.
fn counting(calls: &Arc<AtomicUsize>) -> Arc<dyn Handler> {
    let calls = calls.clone();
    Arc::new(move |_from: NodeId, _request: Request| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Response::Probe { initialized: true } }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_the_same_secret_are_served() {
    let (a, addr, _accept) = serving(1, with_secret(SECRET), echo(no_delay)).await;
    let b = Transport::new(2, with_secret(SECRET));
    b.set_peer(1, addr);

    assert_index(read_index(&b, 1, 4).await, 4);

    assert_eq!((b.stats().connects, a.stats().accepts, a.stats().handshakes_refused), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_different_secrets_never_connect_either_way() {
    let (a_calls, b_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, a_addr, _a_accept) = serving(1, with_secret(SECRET), counting(&a_calls)).await;
    let (b, b_addr, _b_accept) = serving(2, with_secret("another-secret-0123456789abcdef"), counting(&b_calls)).await;
    let c = Transport::new(3, TransportConfig::default()); // no secret at all
    a.set_peer(2, b_addr.clone());
    b.set_peer(1, a_addr.clone());
    c.set_peer(1, a_addr);
    c.set_peer(2, b_addr);

    for _ in 0..3 {
        assert_unreachable(b.call(1, &Request::Probe { group: 0 }, LIVENESS).await);
        assert_unreachable(a.call(2, &Request::Probe { group: 0 }, LIVENESS).await);
        assert_unreachable(c.call(1, &Request::Probe { group: 0 }, LIVENESS).await);
        assert_unreachable(c.call(2, &Request::Probe { group: 0 }, LIVENESS).await);
    }

    assert_eq!((a_calls.load(Ordering::SeqCst), b_calls.load(Ordering::SeqCst)), (0, 0), "a request was served");
    assert_eq!((a.stats().accepts, b.stats().accepts), (0, 0));
    assert!(a.stats().handshakes_refused >= 6 && b.stats().handshakes_refused >= 6);
    assert_eq!((a.stats().connects, b.stats().connects, c.stats().connects), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_and_proofs_are_as_documented_and_a_wrong_proof_is_closed_unanswered() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (a, addr, _accept) = serving(1, with_secret(SECRET), counting(&calls)).await;

    // With the secret, computed from the module docs alone: served.
    let mut good = common::raw_peer::authenticated(&addr, 2, 1, SECRET.as_bytes()).await;
    let answer = common::raw_peer::call(&mut good, 1, &Request::Probe { group: 0 }).await;
    assert!(matches!(answer, Some(Response::Probe { initialized: true })), "got {answer:?}");

    // Without it, a wrong one, or none: closed, and the request sent right
    // behind the proof is never read.
    for secret in [b"".as_slice(), b"not-the-secret-0123456789abcdef", &SECRET.as_bytes()[1..]] {
        match common::raw_peer::shake_hands(&addr, 2, 1, secret).await {
            common::raw_peer::Handshake::Accepted(_) => panic!("accepted a wrong secret"),
            common::raw_peer::Handshake::Refused(mut stream) => {
                _ = stream.write_all(&common::raw_peer::request_frame(1, &Request::Probe { group: 0 })).await;
                common::raw_peer::assert_closed_unanswered(&mut stream).await;
            }
        }
    }

    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the authenticated request was served");
    assert_eq!(a.stats().accepts, 1);
    assert!(a.stats().handshakes_refused >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_the_proof_are_never_read() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (a, addr, _accept) = serving(1, with_secret(SECRET), counting(&calls)).await;
    let probe = common::raw_peer::request_frame(1, &Request::Probe { group: 0 });

    // A request instead of a hello.
    let mut no_hello = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    no_hello.write_all(&probe).await.unwrap_or_else(|e| panic!("write: {e}"));
    common::raw_peer::assert_closed_unanswered(&mut no_hello).await;

    // The previous protocol's hello (version 3, 24 bytes), then a request.
    let mut old = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    let mut hello = header(24, cluster::transport::FRAME_KIND_HELLO, 0);
    hello.extend_from_slice(&cluster::transport::HELLO_MAGIC);
    hello.extend_from_slice(&3u32.to_le_bytes());
    hello.extend_from_slice(&[0; 4]);
    hello.extend_from_slice(&2u64.to_le_bytes());
    old.write_all(&hello).await.unwrap_or_else(|e| panic!("write: {e}"));
    old.write_all(&probe).await.unwrap_or_else(|e| panic!("write: {e}"));
    common::raw_peer::assert_closed_unanswered(&mut old).await;

    // A good hello, then a request where the proof belongs.
    let mut skipped = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    let hello = common::raw_peer::hello(cluster::transport::PROTOCOL_VERSION, 2, &[1; 32]);
    skipped.write_all(&hello).await.unwrap_or_else(|e| panic!("write: {e}"));
    let theirs = common::raw_peer::read_frame(&mut skipped).await;
    assert!(theirs.is_some_and(|(kind, _, _)| kind == cluster::transport::FRAME_KIND_HELLO));
    skipped.write_all(&probe).await.unwrap_or_else(|e| panic!("write: {e}"));
    common::raw_peer::assert_closed_unanswered(&mut skipped).await;

    // A hello that names the node itself.
    let mut itself = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    itself.write_all(&common::raw_peer::hello(cluster::transport::PROTOCOL_VERSION, 1, &[1; 32])).await.ok();
    common::raw_peer::assert_closed_unanswered(&mut itself).await;

    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(a.stats().accepts, 0);
    assert_eq!(a.stats().handshakes_refused, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_reflected_back_to_its_maker_is_refused() {
    // A fake node 1 that knows no secret: it answers the dialing node's
    // hello with the same nonce and its proof with that same proof.
    let (listener, addr) = listen().await;
    let fake = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap_or_else(|e| panic!("accept: {e}"));
        let (_, _, hello) = common::raw_peer::read_frame(&mut stream).await.unwrap_or_else(|| panic!("no hello"));
        let (_, nonce) = common::raw_peer::parse_hello(&hello);
        let ours = common::raw_peer::hello(cluster::transport::PROTOCOL_VERSION, 1, &nonce);
        stream.write_all(&ours).await.unwrap_or_else(|e| panic!("write: {e}"));
        // The dialer refuses an echoed nonce before proving anything.
        common::raw_peer::read_frame(&mut stream).await
    });
    let b = Transport::new(2, with_secret(SECRET));
    b.set_peer(1, addr.clone());
    assert_unreachable(b.call(1, &Request::Probe { group: 0 }, LIVENESS).await);
    let proof = fake.await.unwrap_or_else(|e| panic!("fake: {e}"));
    assert!(proof.is_none(), "the dialer proved itself to a node that echoed its nonce");

    // With a nonce of its own, the fake gets the dialer's proof, and sends
    // it back as its own: the labels differ, so the dialer refuses it.
    let (listener, addr) = listen().await;
    let fake = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap_or_else(|e| panic!("accept: {e}"));
        let _hello = common::raw_peer::read_frame(&mut stream).await;
        let ours = common::raw_peer::hello(cluster::transport::PROTOCOL_VERSION, 1, &[9; 32]);
        stream.write_all(&ours).await.unwrap_or_else(|e| panic!("write: {e}"));
        let (kind, _, proof) = common::raw_peer::read_frame(&mut stream).await.unwrap_or_else(|| panic!("no proof"));
        let reflected = common::raw_peer::frame(kind, 0, &proof);
        stream.write_all(&reflected).await.unwrap_or_else(|e| panic!("write: {e}"));
        // Then a request, as if the connection were open: never sent by a
        // dialer that refused the proof, so nothing but the close arrives.
        common::raw_peer::read_frame(&mut stream).await
    });
    b.set_peer(1, addr);
    assert_unreachable(b.call(1, &Request::Probe { group: 0 }, LIVENESS).await);
    let after = fake.await.unwrap_or_else(|e| panic!("fake: {e}"));
    assert!(after.is_none(), "the dialer sent {after:?} after a reflected proof");
    assert_eq!(b.stats().connects, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_handler_does_not_admit_is_closed_before_any_request() {
    struct OnlyTwo(Arc<AtomicUsize>);
    impl Handler for OnlyTwo {
        fn handle(
            &self,
            _from: NodeId,
            _request: Request,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + 'static>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Response::Probe { initialized: true } })
        }

        fn admits(&self, peer: NodeId) -> bool {
            peer == 2
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let (a, addr, _accept) = serving(1, with_secret(SECRET), Arc::new(OnlyTwo(calls.clone()))).await;
    let two = Transport::new(2, with_secret(SECRET));
    let nine = Transport::new(9, with_secret(SECRET));
    two.set_peer(1, addr.clone());
    nine.set_peer(1, addr);

    assert_unreachable(nine.call(1, &Request::Probe { group: 0 }, LIVENESS).await);
    let answer = two.call(1, &Request::Probe { group: 0 }, LIVENESS).await;

    assert!(matches!(answer, Ok(Response::Probe { initialized: true })), "got {answer:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!((a.stats().accepts, a.stats().handshakes_refused), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_shakes_hands_is_closed_after_the_connect_timeout() {
    let config = TransportConfig { connect_timeout_ms: 200, ..with_secret(SECRET) };
    let (a, addr, _accept) = serving(1, config, echo(no_delay)).await;

    let mut silent = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    common::raw_peer::assert_closed_unanswered(&mut silent).await;

    assert_eq!(a.stats().handshakes_refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_incoming_connection_is_closed_and_the_peer_reconnects() {
    let config = TransportConfig { idle_timeout_ms: 100, ..with_secret(SECRET) };
    let (a, addr, _accept) = serving(1, config.clone(), echo(no_delay)).await;
    let b = Transport::new(2, config);
    b.set_peer(1, addr);
    assert_index(read_index(&b, 1, 1).await, 1);

    tokio::time::timeout(LIVENESS, async {
        while a.stats().idle_closed == 0 || b.calls_pending(1) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|e| panic!("the idle connection was never closed: {e}"));
    // A call finds the connection gone (or, racing the close, fails and is
    // retried, as Raft's and the forwarder's calls are) and reconnects.
    let mut answer = read_index(&b, 1, 2).await;
    if matches!(answer, Err(TransportError::Unreachable(_))) {
        answer = read_index(&b, 1, 2).await;
    }
    assert_index(answer, 2);
    assert!(b.stats().connects >= 2, "{:?}", b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_keeps_its_connection_open_past_the_idle_timeout() {
    let handler: Arc<dyn Handler> = Arc::new(|_from: NodeId, request: Request| async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        Response::ReadIndex { index: Some(u64::from(request.group())) }
    });
    let config = TransportConfig { idle_timeout_ms: 100, ..with_secret(SECRET) };
    let (a, addr, _accept) = serving(1, config.clone(), handler).await;
    let b = Transport::new(2, config);
    b.set_peer(1, addr);

    // Answered on the connection it was sent on: not closed while it ran.
    assert_index(read_index(&b, 1, 3).await, 3);

    assert_eq!(b.stats().connects, 1);
    assert_eq!(a.stats().accepts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_stops_midway_closes_its_connection() {
    // Long enough that the frame starts before the connection could idle.
    let config = TransportConfig { idle_timeout_ms: 1_000, ..with_secret(SECRET) };
    let (a, addr, _accept) = serving(1, config, echo(no_delay)).await;
    let mut peer = common::raw_peer::authenticated(&addr, 2, 1, SECRET.as_bytes()).await;

    let mut partial = header(1000, FRAME_KIND_REQUEST, 1);
    partial.extend_from_slice(&[0; 10]);
    peer.write_all(&partial).await.unwrap_or_else(|e| panic!("write: {e}"));
    common::raw_peer::assert_closed_unanswered(&mut peer).await;

    assert!(a.stats().errors >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_incoming_bound_are_closed_at_once() {
    // The two silent connections keep their slots for the whole test.
    let config = TransportConfig { connections_incoming_max: 2, connect_timeout_ms: 600_000, ..with_secret(SECRET) };
    let (a, addr, _accept) = serving(1, config, echo(no_delay)).await;
    let _first = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    let _second = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));

    let mut third = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    common::raw_peer::assert_closed_unanswered(&mut third).await;

    assert_eq!(a.stats().connections_refused, 1);
}
