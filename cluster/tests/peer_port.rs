//! The peer port under attack, as a specification (issue 15): whoever can
//! reach it without the cluster's secret gets no request served and changes
//! nothing; a lying frame header costs no memory; abandoned snapshot
//! transfers stay within their bounds and are dropped. docs/SECURITY.md
//! lists these tests and what they showed.
//!
//! No assertion here depends on timing: waits are bounded by `PATIENCE`
//! only to turn a hang into a failure.

// Node ids and sizes in a test; not input.
#![allow(clippy::cast_possible_truncation)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cluster::transport::{
    FRAME_KIND_HELLO, FRAME_KIND_PROOF, FRAME_KIND_REQUEST, PROOF_LABEL_CONNECTING, PROTOCOL_VERSION, Transport,
    TransportConfig, TransportError,
};
use cluster::wire::{AdminOp, Request, Response};
use cluster::{ClusterConfig, Member, Node, NodeId, Secret};
use engine::Limits;
use engine::cmd::{Command, SetLimits};
use engine::ids::RequestId;
use engine::raft_log::{LogId, Vote};
use engine::testing::upsert;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::raw_peer::{self, Handshake, PATIENCE};
use common::{TEST_SECRET, TestCluster};

/// A term no election in these tests comes near: a node that took a vote
/// or an append from the attacker would be at it.
const ATTACK_TERM: u64 = 1_000_000;
/// A node id the attacker asks to add as a learner.
const INTRUDER: NodeId = 666;

/// Every request an attacker would send to take a cluster: a command that
/// fills every shard, a vote and an append at a huge term, a new learner,
/// a snapshot chunk.
fn attack_requests(group: u32) -> Vec<Request> {
    let full = Limits { items_per_shard_max: 0, ..Limits::default() };
    let big_vote = Vote { term: ATTACK_TERM, voted_for: Some(INTRUDER), committed: true };
    vec![
        Request::Submit {
            group,
            commands: vec![Command::SetLimits(SetLimits { limits: full })],
            request_ids: vec![RequestId::from_bytes([0xAA; 16])],
        },
        Request::Vote {
            group,
            pre_vote: false,
            vote: Vote { term: ATTACK_TERM, voted_for: Some(INTRUDER), committed: false },
            last_log_id: Some(LogId::new(ATTACK_TERM, 1 << 40)),
            leadership_transfer: false,
        },
        Request::AppendEntries {
            group,
            vote: big_vote,
            prev_log_id: None,
            frames: Vec::new(),
            leader_commit: Some(LogId::new(ATTACK_TERM, 1 << 40)),
        },
        Request::Admin { group, op: AdminOp::AddLearner { node: INTRUDER, addr: "127.0.0.1:1".into() } },
        Request::Admin { group, op: AdminOp::ChangeVoters { voters: vec![INTRUDER], retain: false } },
        Request::SnapshotChunk { group, transfer: 1, offset: 0, data: vec![0; 1024], done: None },
    ]
}

/// What an attack would change, per node and shard: the term, voters,
/// learners, and the limits the shard applies.
async fn observed(cluster: &TestCluster) -> Vec<(u64, Vec<NodeId>, Vec<NodeId>, Limits)> {
    let mut seen = Vec::new();
    for node in cluster.live() {
        for status in node.status().shards {
            let limits = node
                .read_stale(status.shard, |state| *state.limits())
                .await
                .unwrap_or_else(|e| panic!("read limits: {e}"))
                .value;
            seen.push((status.term, status.voters, status.learners, limits));
        }
    }
    seen
}

fn peer_addr(node: &Node) -> String {
    let id = node.id();
    node.config().members.iter().find(|m| m.id == id).map(|m| m.addr.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_secret_no_request_is_served_and_nothing_changes() {
    // No rebalancing, so terms move only by elections (which never reach
    // ATTACK_TERM).
    let cluster = TestCluster::start(3, 2, |config| config.rebalance_interval_ms = 0).await;
    cluster.wait_for_leaders(PATIENCE).await;
    let written = cluster.node(1).submit(upsert("attack-sku", "berlin", 5, 0)).await;
    common::expect_ok(&written.unwrap_or_else(|e| panic!("write: {e}")));
    let before = observed(&cluster).await;
    let refused_before: Vec<u64> = cluster.live().map(|node| node.stats().peer.handshakes_refused).collect();
    let mut attempts = 0u64;

    for node in cluster.live() {
        let addr = peer_addr(node);
        let target = node.id();
        // A member other than the target: the id an attacker would claim.
        let claimed = if target == 1 { 2 } else { 1 };
        for group in 0..2 {
            let requests = attack_requests(group);
            let pipelined: Vec<u8> =
                requests.iter().enumerate().flat_map(|(n, r)| raw_peer::request_frame(n as u64 + 1, r)).collect();

            // 1. Requests with no handshake at all.
            let mut bare = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
            bare.write_all(&pipelined).await.unwrap_or_else(|e| panic!("write: {e}"));
            raw_peer::assert_closed_unanswered(&mut bare).await;
            attempts += 1;

            // 2. A hello claiming to be a member, then requests where the
            // proof belongs.
            let mut unproven = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
            let hello = raw_peer::hello(PROTOCOL_VERSION, claimed, &[3; 32]);
            unproven.write_all(&hello).await.unwrap_or_else(|e| panic!("write: {e}"));
            let answer = raw_peer::read_frame(&mut unproven).await;
            assert!(answer.is_some_and(|(kind, _, _)| kind == FRAME_KIND_HELLO));
            _ = unproven.write_all(&pipelined).await;
            raw_peer::assert_closed_unanswered(&mut unproven).await;
            attempts += 1;

            // 3. A proof made with no secret, with a wrong one, and a forged
            // one, each followed by every request.
            for secret in [b"".as_slice(), b"guessed-secret-0123456789abcdef0", &TEST_SECRET.as_bytes()[..20]] {
                match raw_peer::shake_hands(&addr, claimed, target, secret).await {
                    Handshake::Accepted(_) => panic!("node {target} accepted a proof without the secret"),
                    Handshake::Refused(mut stream) => {
                        _ = stream.write_all(&pipelined).await;
                        raw_peer::assert_closed_unanswered(&mut stream).await;
                    }
                }
                attempts += 1;
            }
            let mut forged = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
            forged.write_all(&raw_peer::hello(PROTOCOL_VERSION, claimed, &[5; 32])).await.ok();
            let (_, _, hello) = raw_peer::read_frame(&mut forged).await.unwrap_or_else(|| panic!("no hello"));
            let (_, theirs) = raw_peer::parse_hello(&hello);
            // A proof over the wrong nonces (as if replayed from another
            // connection), made with the real secret.
            let replayed =
                raw_peer::proof(TEST_SECRET.as_bytes(), PROOF_LABEL_CONNECTING, claimed, target, &[6; 32], &theirs);
            forged.write_all(&raw_peer::frame(FRAME_KIND_PROOF, 0, &replayed)).await.ok();
            _ = forged.write_all(&pipelined).await;
            raw_peer::assert_closed_unanswered(&mut forged).await;
            attempts += 1;

            // 4. The node's own transport code, with no secret and a wrong one.
            for secret in [None, Some(Secret::new("guessed-secret-0123456789abcdef0"))] {
                let attacker = Transport::new(claimed, TransportConfig { secret, ..TransportConfig::default() });
                attacker.set_peer(target, addr.clone());
                for request in &requests {
                    let answer = attacker.call(target, request, PATIENCE).await;
                    assert!(matches!(answer, Err(TransportError::Unreachable(_))), "served: {answer:?}");
                    attempts += 1;
                }
            }
        }
    }

    // Nothing applied, no vote moved, no member added, on any node.
    let after = observed(&cluster).await;
    assert_eq!(before.len(), after.len());
    for ((term_before, voters_before, learners_before, limits_before), (term, voters, learners, limits)) in
        before.iter().zip(&after)
    {
        assert!(*term < ATTACK_TERM && term >= term_before, "term {term_before} → {term}");
        assert_eq!((voters_before, learners_before), (voters, learners));
        assert_eq!(voters, &vec![1, 2, 3]);
        assert_eq!(limits_before, limits, "limits changed");
    }
    let refused: u64 = cluster.live().map(|node| node.stats().peer.handshakes_refused).sum();
    assert!(refused >= refused_before.iter().sum::<u64>() + attempts, "{refused} refused of {attempts} attempts");
    // The cluster still serves: a write commits and the attack left no trace.
    let written = cluster.node(2).submit(upsert("attack-sku-2", "berlin", 1, 0)).await;
    common::expect_ok(&written.unwrap_or_else(|e| panic!("write after the attack: {e}")));
    let digests = cluster.converged_digests(PATIENCE).await;
    assert_eq!(digests.len(), 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_secret_but_an_unknown_node_id_nothing_is_served() {
    let cluster = TestCluster::start(3, 1, |config| config.rebalance_interval_ms = 0).await;
    cluster.wait_for_leaders(PATIENCE).await;
    let before = observed(&cluster).await;
    let leader = cluster.leader_of(1, 0).unwrap_or_else(|| panic!("no leader"));
    let addr = peer_addr(cluster.node(leader));

    let stranger = Transport::new(
        INTRUDER,
        TransportConfig { secret: Some(Secret::new(TEST_SECRET)), ..TransportConfig::default() },
    );
    stranger.set_peer(leader, addr.clone());
    for request in attack_requests(0) {
        let answer = stranger.call(leader, &request, PATIENCE).await;
        assert!(matches!(answer, Err(TransportError::Unreachable(_))), "served: {answer:?}");
    }
    match raw_peer::shake_hands(&addr, INTRUDER, leader, TEST_SECRET.as_bytes()).await {
        Handshake::Accepted(_) => panic!("node {leader} admitted node {INTRUDER}"),
        Handshake::Refused(mut stream) => raw_peer::assert_closed_unanswered(&mut stream).await,
    }

    let after = observed(&cluster).await;
    for ((_, voters_before, learners_before, limits_before), (term, voters, learners, limits)) in
        before.iter().zip(&after)
    {
        assert!(*term < ATTACK_TERM);
        assert_eq!((voters_before, learners_before, limits_before), (voters, learners, limits));
    }
    cluster.shutdown().await;
}

/// Node 1 of members [1, 2], alone: node 2 is whoever the test says it is
/// (it has the secret). With one voter of two up, no group elects a leader,
/// which these tests do not need.
async fn lone_node(tune: impl Fn(&mut ClusterConfig)) -> (Node, String, tempfile::TempDir) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}")).to_string();
    let nowhere = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let nowhere_addr = nowhere.local_addr().unwrap_or_else(|e| panic!("addr: {e}")).to_string();
    drop(nowhere);
    let members = vec![Member { id: 1, addr: addr.clone() }, Member { id: 2, addr: nowhere_addr }];
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut config = common::fast_config(1, 8, members, dir.path());
    tune(&mut config);
    let node = Node::start_on(config, listener).await.unwrap_or_else(|e| panic!("start: {e}"));
    (node, addr, dir)
}

/// Resident set size of this process, from /proc; `None` where there is
/// no /proc.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_header_closes_the_connection_without_allocating_it() {
    const CONNECTIONS: usize = 32;
    let (node, addr, _dir) = lone_node(|config| config.peer_connections_incoming_max = 64).await;
    let frame_bytes_max = node.config().frame_bytes_max;

    // Before the handshake, anything over a hello's length closes the
    // connection: 4 GiB claimed, nothing allocated.
    let mut unauthenticated = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    unauthenticated.write_all(&raw_peer::header(u32::MAX, FRAME_KIND_HELLO, 0)).await.ok();
    raw_peer::assert_closed_unanswered(&mut unauthenticated).await;

    // After it, anything over frame_bytes_max does.
    let mut authenticated = raw_peer::authenticated(&addr, 2, 1, TEST_SECRET.as_bytes()).await;
    authenticated.write_all(&raw_peer::header(u32::MAX, FRAME_KIND_REQUEST, 1)).await.ok();
    raw_peer::assert_closed_unanswered(&mut authenticated).await;

    // A header that claims the most a frame may be, followed by 16 bytes:
    // the buffer holds what arrived, not what was claimed. 32 such
    // connections would take 2 GiB if buffers were sized from headers; the
    // bound leaves room for the other tests running in this process.
    let rss_before = rss_bytes();
    let mut liars = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut liar = raw_peer::authenticated(&addr, 2, 1, TEST_SECRET.as_bytes()).await;
        let mut partial = raw_peer::header(frame_bytes_max, FRAME_KIND_REQUEST, 1);
        partial.extend_from_slice(&[0; 16]);
        liar.write_all(&partial).await.unwrap_or_else(|e| panic!("write: {e}"));
        liars.push(liar);
    }
    // Give the node's readers a moment to take the bytes in; a bound, not
    // a measurement.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let (Some(before), Some(after)) = (rss_before, rss_bytes()) {
        let grown = after.saturating_sub(before);
        let claimed = CONNECTIONS as u64 * u64::from(frame_bytes_max);
        assert!(grown < claimed / 8, "RSS grew {grown} bytes for {CONNECTIONS} headers claiming {claimed}");
    }
    let stats = node.stats().peer;
    assert!(stats.errors >= 1 && stats.handshakes_refused >= 1, "{stats:?}");
    drop(liars);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_abandoned_snapshot_chunks_stay_within_bounds_and_are_dropped() {
    const PER_PEER_MAX: usize = 3;
    const BYTES_MAX: u64 = 256 * 1024;
    const CHUNK: usize = 48 * 1024;
    let (node, addr, _dir) = lone_node(|config| {
        config.snapshot_transfers_per_peer_max = PER_PEER_MAX;
        config.snapshot_bytes_max = BYTES_MAX;
        config.snapshot_chunk_bytes = CHUNK;
        config.snapshot_transfer_idle_timeout_ms = 300;
    })
    .await;
    // A member with the secret: node 2, as a leader sending snapshots would.
    let peer =
        Transport::new(2, TransportConfig { secret: Some(Secret::new(TEST_SECRET)), ..TransportConfig::default() });
    peer.set_peer(1, addr);

    // Per group: the transfer in progress and its next offset. A third of
    // the chunks start new transfers, the rest continue one, none finishes.
    let mut open: HashMap<u32, (u64, u64)> = HashMap::new();
    let (mut stored, mut refused) = (0u64, 0u64);
    for n in 0..1000u64 {
        let group = (n % 8) as u32;
        let (transfer, offset) = match open.get(&group) {
            Some(&(transfer, offset)) if n % 3 != 0 => (transfer, offset),
            _ => (n + 1, 0),
        };
        let request = Request::SnapshotChunk { group, transfer, offset, data: vec![n as u8; CHUNK], done: None };
        match peer.call(1, &request, PATIENCE).await {
            Ok(Response::SnapshotChunkStored) => {
                stored += 1;
                open.insert(group, (transfer, offset + CHUNK as u64));
            }
            Ok(Response::Refused(_)) => {
                refused += 1;
                open.remove(&group);
            }
            other => panic!("chunk {n}: {other:?}"),
        }
        let stats = node.stats();
        assert!(stats.snapshot_transfers_inbound <= PER_PEER_MAX as u64, "{stats:?}");
        assert!(stats.snapshot_inbound_bytes <= BYTES_MAX, "{stats:?}");
    }
    assert!(stored > 0 && refused > 0, "stored {stored}, refused {refused}");

    // Abandoned: dropped by the node's sweeper, with no chunk arriving.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = node.stats();
        if stats.snapshot_transfers_inbound == 0 && stats.snapshot_inbound_bytes == 0 {
            assert!(stats.snapshot_transfers_dropped >= refused, "{stats:?}");
            break;
        }
        assert!(Instant::now() < deadline, "abandoned transfers still held: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_different_secrets_never_connect() {
    let mut listeners = Vec::new();
    let mut members = Vec::new();
    for id in 1..=2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}")).to_string();
        members.push(Member { id, addr });
        listeners.push(listener);
    }
    let dirs = [tempfile::tempdir(), tempfile::tempdir()].map(|dir| dir.unwrap_or_else(|e| panic!("tempdir: {e}")));
    let mut nodes = Vec::new();
    for ((listener, dir), secret) in
        listeners.into_iter().zip(&dirs).zip(["first-cluster-secret-0123456789", "second-cluster-secret-012345678"])
    {
        let id = nodes.len() as u64 + 1;
        let mut config = common::fast_config(id, 2, members.clone(), dir.path());
        config.secret = Some(Secret::new(secret));
        nodes.push(Node::start_on(config, listener).await.unwrap_or_else(|e| panic!("start: {e}")));
    }

    // Each tries the other (bootstrap probes, elections) and is refused.
    let deadline = Instant::now() + PATIENCE;
    while !nodes.iter().all(|node| node.stats().peer.handshakes_refused >= 2) {
        assert!(Instant::now() < deadline, "no handshake attempted: {:?}", nodes[0].stats().peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for node in &nodes {
        let stats = node.stats().peer;
        assert_eq!((stats.connects, stats.accepts), (0, 0), "{stats:?}");
        assert!(node.status().shards.iter().all(|shard| shard.leader.is_none()), "a leader without a quorum");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_same_secret_form_a_cluster() {
    let cluster = TestCluster::start(3, 2, |_| {}).await;
    cluster.wait_for_leaders(PATIENCE).await;
    // A write through every node: followers forward it to the leader.
    for (n, node) in cluster.live().enumerate() {
        let written = node.submit(upsert(&format!("same-secret-{n}"), "berlin", 1, 0)).await;
        common::expect_ok(&written.unwrap_or_else(|e| panic!("write through node {}: {e}", node.id())));
    }

    for node in cluster.live() {
        let stats = node.stats().peer;
        assert!(stats.connects >= 1 || stats.accepts >= 1, "{stats:?}");
        assert_eq!(stats.handshakes_refused, 0, "{stats:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_beyond_loopback_without_a_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let members = vec![Member { id: 1, addr: "0.0.0.0:0".into() }];
    let mut config = common::fast_config(1, 1, members, dir.path());
    config.secret = None;

    // The configured address.
    let error = Node::start(config.clone()).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("cluster.secret"), "{error}");

    // The address actually bound, whatever the configuration says.
    config.listen = "127.0.0.1:0".into();
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let error = Node::start_on(config.clone(), listener).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("cluster.secret"), "{error}");

    // A short secret is no secret.
    config.secret = Some(Secret::new("short"));
    let error = config.validate().err().unwrap_or_default();
    assert!(error.contains("at least 16 bytes"), "{error}");

    // On loopback, no secret is needed (the README's single node).
    config.secret = None;
    assert!(config.validate().is_ok());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let node = Node::start_on(config, listener).await.unwrap_or_else(|e| panic!("start on loopback: {e}"));
    node.shutdown().await;
}
