//! Fuzz targets of the peer port (issue 15): what another node, or whoever
//! reaches the port, can send. Each runs a few seconds in the suite from
//! its committed corpus (`tests/fuzz_corpus/<target>/`); see the `fuzz`
//! crate for the harness and `TALLY_FUZZ_SECS` for longer runs.
//!
//! * `peer_request`: a request payload, as the serving side decodes it
//!   (`rkyv::from_bytes::<wire::Request>`, bytecheck-validated), then what
//!   the node decodes further from it: every AppendEntries frame
//!   (`types::entry_from_frame`, so the engine's frame decoder), the
//!   membership of a snapshot's last chunk (`MembershipImage::decode`), and
//!   forwarded commands (`Command::validate`). What decodes must re-encode to
//!   itself, and a received frame must be the one forwarded on.
//! * `peer_response`: an answer payload, as a calling node decodes it
//!   (`rkyv::from_bytes::<wire::Response>`).
//! * `peer_port`: a byte stream to a live node's peer port, either from
//!   the first byte (hello, proof: the handshake) or after an authenticated
//!   handshake as a member (request frames: the frame reader, the request
//!   decoder and the node's handling of every request kind, snapshot chunks
//!   and their install included). Before the handshake completes the node
//!   answers nothing but its hello; after it, every answer decodes; no
//!   panic on any of its threads; and the node still serves afterwards.
//!
//! Most `peer_request` and `peer_port` inputs are mutated as structures (a
//! request decoded, one field changed, encoded again; entry frames resealed
//! behind valid CRCs), since a byte flip in an rkyv archive mostly stops at
//! validation. The binary caps its heap (`fuzz::cap_allocations`).

// Lengths and ids in test inputs; not input to the code under test.
#![allow(clippy::cast_possible_truncation)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster::raft_types::{MembershipImage, entry_from_frame, entry_to_engine, frame_of};
use cluster::transport::{FRAME_HEADER_LEN, FRAME_KIND_ANSWER, FRAME_KIND_HELLO, FRAME_KIND_PROOF, PROTOCOL_VERSION};
use cluster::wire::{AdminOp, AppendResult, Request, Response, SnapshotDone};
use cluster::{Member, Node, NodeId};
use engine::cmd::{AdjustReason, Command, Confirm, Extend, Release, SetLimits};
use engine::ids::RequestId;
use engine::query::ItemFilter;
use engine::raft_log::{EntryPayload, LogEntry, LogId, Vote};
use engine::read::{Answer, Query};
use engine::snapshot::SnapshotStore;
use engine::testing::{adjust, hold, rid_for, upsert};
use engine::wal::EntryFrame;
use engine::{Limits, Outcome, ShardState};
use fuzz::{Mutator, Rng, Seed, Target};
use rkyv::util::AlignedVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::TEST_SECRET;
use common::raw_peer::{self, PATIENCE};

#[global_allocator]
static ALLOCATOR: fuzz::Allocator = fuzz::Allocator::new(std::alloc::System, usize::MAX);
/// A node under test needs tens of MB; a length field can claim 4 GiB.
const HEAP_HEADROOM_BYTES: usize = 1 << 30;

const PACKAGE: &str = "tally-cluster";
/// The record bound a node applies to received frames (the WAL's default).
const RECORD_SIZE_MAX: usize = 32 << 20;
/// Longest wait for the node's answers to one input (a leadership transfer
/// answers after ~250 ms; most requests within a few ms).
const ANSWER_WAIT: Duration = Duration::from_millis(100);
/// The node under attack, and the member the fuzzer claims to be.
const NODE: NodeId = 1;
const CLAIMED: NodeId = 2;
/// First byte of a `peer_port` input: where the stream starts.
const MODE_RAW: u8 = 0;
const MODE_AUTHENTICATED: u8 = 1;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus").join(target)
}

fn target(name: &'static str, iterations_default: u64) -> Target {
    fuzz::cap_allocations(&ALLOCATOR, HEAP_HEADROOM_BYTES);
    Target::new(name, PACKAGE, corpus_dir(name), iterations_default)
}

fn aligned(bytes: &[u8]) -> AlignedVec {
    let mut aligned = AlignedVec::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    aligned
}

fn encode_request(request: &Request) -> Vec<u8> {
    rkyv::to_bytes::<rkyv::rancor::Error>(request).unwrap_or_else(|e| panic!("encode request: {e}")).into_vec()
}

fn encode_response(response: &Response) -> Vec<u8> {
    rkyv::to_bytes::<rkyv::rancor::Error>(response).unwrap_or_else(|e| panic!("encode response: {e}")).into_vec()
}

fn decode_request(bytes: &[u8]) -> Option<Request> {
    rkyv::from_bytes::<Request, rkyv::rancor::Error>(&aligned(bytes)).ok()
}

// ----- the corpus -----

fn membership_image(voters: &[NodeId]) -> Vec<u8> {
    let image = MembershipImage {
        configs: vec![voters.to_vec()],
        nodes: voters.iter().map(|id| (*id, format!("127.0.0.1:{}", 7000 + id))).collect(),
    };
    rkyv::to_bytes::<rkyv::rancor::Error>(&image).unwrap_or_else(|e| panic!("encode membership: {e}")).into_vec()
}

fn commands() -> Vec<Command> {
    vec![
        upsert("fuzz-sku", "berlin", 10, 0),
        hold(rid_for(1, "fuzz-sku", 2), &[("fuzz-sku", "berlin", 2)], 60_000, None),
        adjust("fuzz-sku", "berlin", -1, AdjustReason::Sale),
        Command::Confirm(Confirm { principal: None, id: rid_for(1, "fuzz-sku", 2) }),
        Command::Release(Release { principal: None, id: rid_for(2, "fuzz-sku", 2) }),
        Command::Extend(Extend {
            principal: None,
            id: rid_for(1, "fuzz-sku", 2),
            deadline: engine::cmd::Deadline::AfterMs(1_000),
        }),
        Command::SetLimits(SetLimits { limits: Limits::default() }),
        Command::Tick,
    ]
}

fn entry_frames(term: u64) -> Vec<Vec<u8>> {
    let entries = [
        LogEntry::blank(LogId::new(term, 1)),
        LogEntry::batch_with_ids(
            LogId::new(term, 2),
            1_000,
            commands(),
            (0..commands().len() as u8).map(|n| RequestId::from_bytes([n; 16])).collect(),
        ),
        LogEntry { log_id: LogId::new(term, 3), payload: EntryPayload::Membership(membership_image(&[1, 2])) },
    ];
    entries
        .iter()
        .map(|entry| {
            EntryFrame::encode(entry, RECORD_SIZE_MAX).unwrap_or_else(|e| panic!("frame: {e}")).as_bytes().to_vec()
        })
        .collect()
}

fn snapshot_image() -> Vec<u8> {
    let dir = fuzz::scratch_dir();
    let store = SnapshotStore::open(dir.path(), 1).unwrap_or_else(|e| panic!("store: {e}"));
    let mut state = ShardState::new(0, 2, Limits::default());
    state
        .apply(&LogEntry::batch(LogId::new(1, 1), 1_000, vec![upsert("fuzz-sku", "berlin", 10, 0)]))
        .unwrap_or_else(|e| panic!("apply: {e}"));
    let file = store.save(&state).unwrap_or_else(|e| panic!("save: {e}"));
    std::fs::read(&file.path).unwrap_or_else(|e| panic!("read: {e}"))
}

/// Every request kind, for group 0 of a two-member cluster, from node 2.
fn sample_requests() -> Vec<Request> {
    let vote = Vote { term: 5, voted_for: Some(CLAIMED), committed: true };
    let image = snapshot_image();
    let half = image.len() / 2;
    vec![
        Request::AppendEntries {
            group: 0,
            vote,
            prev_log_id: None,
            frames: entry_frames(5),
            leader_commit: Some(LogId::new(5, 3)),
        },
        Request::AppendEntries {
            group: 1,
            vote,
            prev_log_id: Some(LogId::new(5, 3)),
            frames: Vec::new(),
            leader_commit: None,
        },
        Request::Vote {
            group: 0,
            pre_vote: true,
            vote: Vote { term: 6, voted_for: Some(CLAIMED), committed: false },
            last_log_id: Some(LogId::new(5, 3)),
            leadership_transfer: false,
        },
        Request::SnapshotChunk { group: 0, transfer: 7, offset: 0, data: image[..half].to_vec(), done: None },
        Request::SnapshotChunk {
            group: 0,
            transfer: 7,
            offset: half as u64,
            data: image[half..].to_vec(),
            done: Some(SnapshotDone {
                vote,
                last_log_id: Some(LogId::new(1, 1)),
                membership_log_id: Some(LogId::new(1, 1)),
                membership: membership_image(&[1, 2]),
                total_len: image.len() as u64,
            }),
        },
        Request::TransferLeader { group: 0, from_leader: vote, to: NODE, last_log_id: Some(LogId::new(5, 3)) },
        Request::Submit {
            group: 0,
            commands: commands(),
            request_ids: (0..commands().len() as u8).map(|n| RequestId::from_bytes([n; 16])).collect(),
        },
        Request::ReadIndex { group: 1 },
        Request::Admin { group: 0, op: AdminOp::AddLearner { node: 3, addr: "127.0.0.1:7003".into() } },
        Request::Admin { group: 1, op: AdminOp::ChangeVoters { voters: vec![1, 2], retain: true } },
        Request::Probe { group: 0 },
        Request::Query {
            group: 0,
            linearizable: true,
            query: Query::Item { sku: "fuzz-sku".into(), warehouse: "berlin".into() },
        },
        Request::Query { group: 1, linearizable: false, query: Query::Skus(vec!["fuzz-sku".into(), "other".into()]) },
        Request::Query {
            group: 0,
            linearizable: true,
            query: Query::Items(ItemFilter { limit: 10, scan_max: 100, ..ItemFilter::default() }),
        },
    ]
}

fn sample_responses() -> Vec<Response> {
    let mut state = ShardState::new(0, 1, Limits::default());
    let outcomes: Vec<Outcome> = state
        .apply(&LogEntry::batch(LogId::new(1, 1), 1_000, commands()))
        .unwrap_or_else(|e| panic!("apply: {e}"))
        .outcomes;
    let vote = Vote { term: 5, voted_for: Some(NODE), committed: true };
    vec![
        Response::AppendEntries(AppendResult::Success),
        Response::AppendEntries(AppendResult::PartialSuccess(Some(LogId::new(5, 2)))),
        Response::AppendEntries(AppendResult::Conflict),
        Response::AppendEntries(AppendResult::HigherVote(vote)),
        Response::Vote { vote, vote_granted: true, last_log_id: Some(LogId::new(5, 3)) },
        Response::SnapshotChunkStored,
        Response::SnapshotInstalled { vote },
        Response::TransferLeader(Err("not now".into())),
        Response::Submitted(outcomes),
        Response::ReadIndex { index: Some(9) },
        Response::AdminDone,
        Response::Probe { initialized: true },
        Response::Overloaded,
        Response::Unknown("leader changed".into()),
        Response::NotLeader { leader: Some(NODE) },
        Response::Unavailable("shutting down".into()),
        Response::Refused("too big".into()),
        Response::Answered(Box::new(Answer::Applied(Some(LogId::new(5, 3))))),
        Response::NotHosted { leader: Some(NODE) },
    ]
}

fn seed(name: String, bytes: Vec<u8>) -> Seed {
    Seed { name, bytes }
}

fn request_seeds() -> Vec<Seed> {
    let mut seeds: Vec<Seed> = sample_requests()
        .iter()
        .enumerate()
        .map(|(n, request)| seed(format!("valid-request-{n:02}"), encode_request(request)))
        .collect();
    seeds.push(seed("edge-empty".into(), Vec::new()));
    seeds.push(seed("edge-zeros".into(), vec![0; 64]));
    seeds
}

fn response_seeds() -> Vec<Seed> {
    let mut seeds: Vec<Seed> = sample_responses()
        .iter()
        .enumerate()
        .map(|(n, response)| seed(format!("valid-response-{n:02}"), encode_response(response)))
        .collect();
    seeds.push(seed("edge-empty".into(), Vec::new()));
    seeds
}

/// `peer_port` streams: the handshake's first frames, and requests after a
/// handshake, one kind per stream and all kinds in one.
fn port_seeds() -> Vec<Seed> {
    let requests = sample_requests();
    let mut hello_then_proof = vec![MODE_RAW];
    hello_then_proof.extend(raw_peer::hello(PROTOCOL_VERSION, CLAIMED, &[7; 32]));
    hello_then_proof.extend(raw_peer::frame(FRAME_KIND_PROOF, 0, &[0; 32]));
    let mut requests_first = vec![MODE_RAW];
    requests_first.extend(raw_peer::request_frame(1, &requests[0]));
    let mut seeds = vec![
        seed("raw-hello-then-proof".into(), hello_then_proof),
        seed("raw-request-before-hello".into(), requests_first),
    ];
    for (n, request) in requests.iter().enumerate() {
        let mut stream = vec![MODE_AUTHENTICATED];
        stream.extend(raw_peer::request_frame(n as u64 + 1, request));
        seeds.push(seed(format!("authenticated-{n:02}"), stream));
    }
    let mut all = vec![MODE_AUTHENTICATED];
    for (n, request) in requests.iter().enumerate() {
        all.extend(raw_peer::request_frame(100 + n as u64, request));
    }
    seeds.push(seed("authenticated-all".into(), all));
    seeds
}

fn check_corpus(target: &str, seeds: &[Seed]) {
    let dir = corpus_dir(target);
    if fuzz::writing_corpus() {
        fuzz::write_corpus(&dir, seeds);
        return;
    }
    let committed = fuzz::corpus(&dir);
    let mut expected = seeds.to_vec();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    let names = |seeds: &[Seed]| seeds.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&committed), names(&expected), "corpus {target}: regenerate with TALLY_FUZZ_WRITE_CORPUS=1");
    for (committed, expected) in committed.iter().zip(&expected) {
        assert!(
            committed.bytes == expected.bytes,
            "corpus {target}/{} is stale (a format changed?): regenerate with \
             TALLY_FUZZ_WRITE_CORPUS=1 cargo test -p {PACKAGE} --test fuzz corpus",
            committed.name
        );
    }
}

#[test]
fn corpus_is_current() {
    check_corpus("peer_request", &request_seeds());
    check_corpus("peer_response", &response_seeds());
    check_corpus("peer_port", &port_seeds());
}

// ----- structure-aware mutations -----

/// An engine WAL frame's length and CRC made to match its bytes again.
fn seal_entry_frame(frame: &mut [u8]) {
    const HEADER: usize = 12;
    if frame.len() < HEADER {
        return;
    }
    let len = u32::try_from(frame.len() - HEADER).unwrap_or(u32::MAX);
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].fill(0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[..HEADER]), &frame[HEADER..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

const INTERESTING_U64: [u64; 8] = [0, 1, 2, 3, u32::MAX as u64, u64::MAX / 2, u64::MAX - 1, u64::MAX];

fn interesting_u64(rng: &mut Rng) -> u64 {
    INTERESTING_U64[rng.below(INTERESTING_U64.len())]
}

fn tweak_log_id(log_id: &mut Option<LogId>, rng: &mut Rng) {
    *log_id = match rng.below(3) {
        0 => None,
        1 => Some(LogId::new(interesting_u64(rng), interesting_u64(rng))),
        _ => log_id.map(|id| LogId::new(id.term, id.index.wrapping_add(1))),
    };
}

fn tweak_vote(vote: &mut Vote, rng: &mut Rng) {
    match rng.below(3) {
        0 => vote.term = interesting_u64(rng),
        1 => vote.voted_for = if rng.chance(1, 2) { None } else { Some(interesting_u64(rng)) },
        _ => vote.committed = !vote.committed,
    }
}

/// What a mutation may change of a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Liberty {
    /// Anything: the decoders take any request.
    Any,
    /// Not the Raft state a request claims (votes, log ids, terms, also of
    /// the entries carried): the request of an honest leader with damaged
    /// contents. A member that lies about Raft state trips openraft's debug
    /// assertions, which Raft does not defend against (docs/SECURITY.md:
    /// a holder of the secret can do anything a node can).
    HonestRaft,
}

/// A damaged entry frame, its log id put back if it still decodes.
fn keep_log_id(frame: &mut Vec<u8>, original: Option<LogId>) {
    let Some(original) = original else { return };
    let Ok(mut entry) = EntryFrame::from_received(frame.clone()).decode(RECORD_SIZE_MAX) else { return };
    if entry.log_id != original {
        entry.log_id = original;
        if let Ok(resealed) = EntryFrame::encode(&entry, RECORD_SIZE_MAX) {
            *frame = resealed.as_bytes().to_vec();
        }
    }
}

/// One field of a decoded request changed; byte fields (entry frames,
/// snapshot data, membership images) mutated as bytes, frames resealed.
fn mutate_request_fields(request: &mut Request, seeds: &[Seed], rng: &mut Rng, liberty: Liberty) {
    let bytes = Mutator { seeds, header_len: 12 };
    let raft = liberty == Liberty::Any;
    match request {
        Request::AppendEntries { group, vote, prev_log_id, frames, leader_commit } => match rng.below(6) {
            0 => *group = interesting_u64(rng) as u32,
            1 if raft => tweak_vote(vote, rng),
            2 if raft => tweak_log_id(prev_log_id, rng),
            3 if raft => tweak_log_id(leader_commit, rng),
            4 if raft && !frames.is_empty() => {
                let at = rng.below(frames.len());
                match rng.below(3) {
                    0 => _ = frames.remove(at),
                    1 => frames.insert(rng.below(frames.len() + 1), frames[at].clone()),
                    _ => {
                        let other = rng.below(frames.len());
                        frames.swap(at, other);
                    }
                }
            }
            _ => {
                let at = rng.below(frames.len().max(1));
                if let Some(frame) = frames.get_mut(at) {
                    let original = EntryFrame::from_received(frame.clone()).log_id();
                    if rng.chance(2, 3) {
                        bytes.overwrite_bytes(frame, rng);
                    } else {
                        bytes.mutate_bytes(frame, rng);
                    }
                    if rng.chance(3, 4) {
                        seal_entry_frame(frame);
                    }
                    if !raft {
                        keep_log_id(frame, original);
                    }
                }
            }
        },
        Request::Vote { group, pre_vote, vote, last_log_id, leadership_transfer } => match rng.below(4) {
            _ if !raft => *group = interesting_u64(rng) as u32,
            0 => *group = interesting_u64(rng) as u32,
            1 => tweak_vote(vote, rng),
            2 => tweak_log_id(last_log_id, rng),
            _ => {
                *pre_vote = !*pre_vote;
                *leadership_transfer = rng.chance(1, 2);
            }
        },
        Request::SnapshotChunk { group, transfer, offset, data, done } => match rng.below(6) {
            0 => *group = interesting_u64(rng) as u32,
            1 => *transfer = interesting_u64(rng),
            2 => *offset = interesting_u64(rng),
            3 => bytes.mutate_bytes(data, rng),
            _ => match done {
                None => {}
                Some(done) => match rng.below(5) {
                    0 if raft => tweak_vote(&mut done.vote, rng),
                    1 if raft => tweak_log_id(&mut done.last_log_id, rng),
                    2 if raft => tweak_log_id(&mut done.membership_log_id, rng),
                    3 => bytes.mutate_bytes(&mut done.membership, rng),
                    _ => done.total_len = interesting_u64(rng),
                },
            },
        },
        Request::TransferLeader { group, from_leader, to, last_log_id } => match rng.below(4) {
            _ if !raft => *group = interesting_u64(rng) as u32,
            0 => *group = interesting_u64(rng) as u32,
            1 => tweak_vote(from_leader, rng),
            2 => *to = interesting_u64(rng),
            _ => tweak_log_id(last_log_id, rng),
        },
        Request::Submit { group, commands, request_ids } => mutate_submit(group, commands, request_ids, seeds, rng),
        Request::ReadIndex { group }
        | Request::Probe { group }
        | Request::Host { group }
        | Request::Membership { group }
        | Request::Placement { group, .. }
        | Request::Events { group, .. }
        | Request::LedgerScan { group, .. } => *group = interesting_u64(rng) as u32,
        // Not among the seeds: these move replicas, which a member may ask
        // of any node (docs/SECURITY.md).
        Request::Release { group, voters } | Request::MoveShard { group, voters, .. } => {
            *group = interesting_u64(rng) as u32;
            voters.push(interesting_u64(rng));
        }
        Request::Query { group, linearizable, query } => match rng.below(3) {
            0 => *group = interesting_u64(rng) as u32,
            1 => *linearizable = !*linearizable,
            _ => widen_query(query, rng),
        },
        Request::Admin { group, op } => match (rng.below(2), op) {
            (0, _) => *group = interesting_u64(rng) as u32,
            (_, AdminOp::AddLearner { node, addr }) => {
                *node = interesting_u64(rng);
                addr.push_str([":", "x", "\u{0}", ":99999"][rng.below(4)]);
            }
            (_, AdminOp::ChangeVoters { voters, retain }) => {
                voters.push(interesting_u64(rng));
                *retain = !*retain;
            }
        },
    }
}

/// One field of a forwarded submit changed: its group, a command or a
/// request id dropped, or one command's archive damaged.
fn mutate_submit(
    group: &mut u32,
    commands: &mut Vec<Command>,
    request_ids: &mut Vec<RequestId>,
    seeds: &[Seed],
    rng: &mut Rng,
) {
    match rng.below(4) {
        0 => *group = interesting_u64(rng) as u32,
        1 if !commands.is_empty() => _ = commands.remove(rng.below(commands.len())),
        2 if !request_ids.is_empty() => _ = request_ids.remove(rng.below(request_ids.len())),
        _ => {
            // A command's archive damaged alone, kept if it still decodes.
            let at = rng.below(commands.len().max(1));
            if let Some(command) = commands.get_mut(at) {
                let mut archive = rkyv::to_bytes::<rkyv::rancor::Error>(&*command)
                    .unwrap_or_else(|e| panic!("encode command: {e}"))
                    .into_vec();
                Mutator { seeds, header_len: 0 }.overwrite_bytes(&mut archive, rng);
                if let Ok(damaged) = rkyv::from_bytes::<Command, rkyv::rancor::Error>(&aligned(&archive)) {
                    *command = damaged;
                }
            }
        }
    }
}

/// A query pushed towards and past its bounds: a huge limit or scan, or a
/// list repeated.
fn widen_query(query: &mut Query, rng: &mut Rng) {
    match query {
        Query::Items(filter) => {
            filter.limit = interesting_u64(rng) as u32;
            filter.scan_max = interesting_u64(rng) as u32;
        }
        Query::Skus(skus) => {
            let copies = rng.below(2_000);
            let first = skus.first().cloned().unwrap_or_default();
            skus.extend(std::iter::repeat_n(first, copies));
        }
        other => *other = Query::History { sku: "fuzz-sku".into(), warehouse: "berlin".into(), limit: u32::MAX },
    }
}

fn mutate_request(seeds: &[Seed], rng: &mut Rng, liberty: Liberty) -> Vec<u8> {
    let source = rng.pick(seeds).map(|seed| seed.bytes.clone()).unwrap_or_default();
    match decode_request(&source) {
        Some(mut request) if rng.chance(3, 4) => {
            for _ in 0..=rng.below(2) {
                mutate_request_fields(&mut request, seeds, rng, liberty);
            }
            encode_request(&request)
        }
        _ => Mutator { seeds, header_len: 16 }.mutate(rng),
    }
}

// ----- decoder targets -----

/// Accepted: the request decoded.
fn check_peer_request(input: &[u8]) -> bool {
    let Some(request) = decode_request(input) else { return false };
    let encoded = encode_request(&request);
    let again = decode_request(&encoded).unwrap_or_else(|| panic!("a decoded request does not decode re-encoded"));
    assert_eq!(encode_request(&again), encoded, "a decoded request does not round-trip");
    match request {
        Request::AppendEntries { frames, .. } => {
            for bytes in frames {
                let Ok(entry) = entry_from_frame(EntryFrame::from_received(bytes.clone()), RECORD_SIZE_MAX) else {
                    continue;
                };
                // A follower appends, and forwards, the frame it received.
                let forwarded = frame_of(entry.clone(), RECORD_SIZE_MAX)
                    .unwrap_or_else(|e| panic!("a received entry has no frame to forward: {e}"));
                if forwarded.as_bytes() != bytes.as_slice() {
                    // Blank and membership entries travel re-encoded; the
                    // re-encoding must say the same.
                    let (decoded, _) = entry_to_engine(entry);
                    assert_eq!(forwarded.decode(RECORD_SIZE_MAX).as_ref(), Ok(&decoded), "re-encoded entry differs");
                }
            }
        }
        Request::SnapshotChunk { done: Some(done), .. } if !done.membership.is_empty() => {
            if let Ok(membership) = MembershipImage::decode(&done.membership) {
                let again = MembershipImage::decode(&MembershipImage::encode(&membership))
                    .unwrap_or_else(|e| panic!("a decoded membership does not re-encode: {e}"));
                assert_eq!(again, membership, "a decoded membership does not round-trip");
            }
        }
        Request::Submit { commands, .. } => {
            for command in &commands {
                _ = command.validate(Limits::default().lines_per_hold_max);
            }
        }
        _ => {}
    }
    true
}

#[test]
fn peer_request() {
    target("peer_request", 50_000).run(|seeds, rng| mutate_request(seeds, rng, Liberty::Any), check_peer_request);
}

/// Accepted: the response decoded.
fn check_peer_response(input: &[u8]) -> bool {
    let Ok(response) = rkyv::from_bytes::<Response, rkyv::rancor::Error>(&aligned(input)) else { return false };
    let encoded = encode_response(&response);
    let again = rkyv::from_bytes::<Response, rkyv::rancor::Error>(&aligned(&encoded))
        .unwrap_or_else(|e| panic!("a decoded response does not decode re-encoded: {e}"));
    assert_eq!(encode_response(&again), encoded, "a decoded response does not round-trip");
    true
}

#[test]
fn peer_response() {
    target("peer_response", 100_000)
        .run(|seeds, rng| Mutator { seeds, header_len: 16 }.mutate(rng), check_peer_response);
}

// ----- the live peer port -----

/// Splits a stream into transport frames, as far as their lengths go.
fn split_frames(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(header) = stream.get(at..at + FRAME_HEADER_LEN) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let Some(frame) = stream.get(at..at + FRAME_HEADER_LEN + len) else { break };
        frames.push(frame.to_vec());
        at += frame.len();
    }
    frames
}

fn mutate_stream(seeds: &[Seed], request_seeds: &[Seed], rng: &mut Rng) -> Vec<u8> {
    let source = rng.pick(seeds).map(|seed| seed.bytes.clone()).unwrap_or_default();
    let (mode, stream) = source.split_first().map_or((MODE_AUTHENTICATED, &[][..]), |(mode, rest)| (*mode, rest));
    let mut frames = split_frames(stream);
    let mut mode = mode;
    match rng.below(8) {
        0 => {
            // Raw damage anywhere: headers, lengths, payloads.
            let mut bytes = stream.to_vec();
            Mutator { seeds, header_len: FRAME_HEADER_LEN }.mutate_bytes(&mut bytes, rng);
            frames = vec![bytes];
        }
        1 => {
            let at = rng.below(frames.len().max(1));
            if let Some(frame) = frames.get_mut(at) {
                // A header field: length, kind, reserved bytes, correlation.
                let header = Mutator { seeds, header_len: FRAME_HEADER_LEN };
                let mut head = frame[..FRAME_HEADER_LEN].to_vec();
                header.mutate_bytes(&mut head, rng);
                head.resize(FRAME_HEADER_LEN, 0);
                frame[..FRAME_HEADER_LEN].copy_from_slice(&head);
            }
        }
        2 => {
            if !frames.is_empty() {
                let at = rng.below(frames.len());
                frames.insert(rng.below(frames.len() + 1), frames[at].clone());
            }
        }
        3 if rng.chance(1, 4) => mode ^= 1,
        _ => {
            // A request, mutated as a structure, added or in place of one.
            let payload = mutate_request(request_seeds, rng, Liberty::HonestRaft);
            let correlation = rng.next_u64() % 1_000;
            let frame = raw_peer::frame(cluster::transport::FRAME_KIND_REQUEST, correlation, &payload);
            if frames.is_empty() || rng.chance(1, 3) {
                frames.push(frame);
            } else {
                let at = rng.below(frames.len());
                frames[at] = frame;
            }
        }
    }
    let mut input = vec![mode];
    input.extend(frames.concat());
    input.truncate(fuzz::INPUT_LEN_MAX);
    input
}

/// Reads frames until the node closes the connection, `expected` answers
/// came, or `ANSWER_WAIT` passed; returns (kind, payload) of each.
async fn read_until_quiet(stream: &mut TcpStream, expected: usize) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    while frames.len() < expected.max(1) {
        let read = async {
            let mut header = [0u8; FRAME_HEADER_LEN];
            stream.read_exact(&mut header).await.ok()?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            // The node's own frames are bounded by its frame_bytes_max; a
            // huge claim here would be its bug, and is read as far as it goes.
            let mut payload = vec![0u8; len.min(64 << 20)];
            stream.read_exact(&mut payload).await.ok()?;
            Some((header[4], payload))
        };
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) | Err(_) => break,
        }
    }
    frames
}

/// Accepted: the node answered at least one request (authenticated
/// streams) or its hello (raw streams).
async fn send_stream(addr: &str, input: &[u8]) -> bool {
    let Some((&mode, stream)) = input.split_first() else { return false };
    let requests = split_frames(stream).len();
    if mode & 1 == MODE_RAW {
        let Ok(mut socket) = TcpStream::connect(addr).await else {
            panic!("the node's peer port refused a connection")
        };
        _ = socket.write_all(stream).await;
        // Nothing more is coming: a node waiting for a proof closes at once.
        _ = socket.shutdown().await;
        let frames = read_until_quiet(&mut socket, 2).await;
        for (kind, _) in &frames {
            assert_eq!(*kind, FRAME_KIND_HELLO, "the node sent a frame of kind {kind} before any proof of the secret");
        }
        !frames.is_empty()
    } else {
        let mut socket = raw_peer::authenticated(addr, CLAIMED, NODE, TEST_SECRET.as_bytes()).await;
        _ = socket.write_all(stream).await;
        let whole: usize = split_frames(stream).iter().map(Vec::len).sum();
        if requests == 0 || whole < stream.len() {
            // A frame cut short: end the stream rather than wait out the
            // node's stall timeout.
            _ = socket.shutdown().await;
        }
        let frames = read_until_quiet(&mut socket, requests).await;
        for (kind, payload) in &frames {
            if *kind == FRAME_KIND_ANSWER {
                let answer = rkyv::from_bytes::<Response, rkyv::rancor::Error>(&aligned(payload));
                assert!(answer.is_ok(), "the node sent an answer that does not decode");
            }
        }
        !frames.is_empty()
    }
}

/// The node still serves a member: a pre-vote on every group is answered by
/// its Raft core (not `Unavailable`, which a dead group answers).
async fn assert_still_serving(addr: &str, shards: u32) {
    let mut socket = raw_peer::authenticated(addr, CLAIMED, NODE, TEST_SECRET.as_bytes()).await;
    for group in 0..shards {
        let request = Request::Vote {
            group,
            pre_vote: true,
            vote: Vote { term: 0, voted_for: Some(CLAIMED), committed: false },
            last_log_id: None,
            leadership_transfer: false,
        };
        let answer = tokio::time::timeout(PATIENCE, raw_peer::call(&mut socket, u64::from(group) + 1, &request)).await;
        match answer {
            Ok(Some(Response::Vote { .. })) => {}
            other => panic!("group {group} no longer serves after the fuzz run: {other:?}"),
        }
    }
}

/// A node of a two-member cluster whose other member (the one the fuzzer
/// claims to be) never starts, on a runtime of its own.
struct NodeUnderTest {
    runtime: tokio::runtime::Runtime,
    node: Node,
    addr: String,
    _dir: tempfile::TempDir,
}

const SHARDS: u32 = 2;

fn start_node() -> NodeUnderTest {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let dir = fuzz::scratch_dir();
    let (node, addr) = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}")).to_string();
        // The member the fuzzer claims to be: an address nothing listens on.
        let absent = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let absent_addr = absent.local_addr().unwrap_or_else(|e| panic!("addr: {e}")).to_string();
        drop(absent);
        let members = vec![Member { id: NODE, addr: addr.clone() }, Member { id: CLAIMED, addr: absent_addr }];
        let mut config = common::fast_config(NODE, SHARDS, members, dir.path());
        config.rebalance_interval_ms = 0;
        let node = Node::start_on(config, listener).await.unwrap_or_else(|e| panic!("start node: {e}"));
        (node, addr)
    });
    NodeUnderTest { runtime, node, addr, _dir: dir }
}

impl NodeUnderTest {
    fn stop(self) {
        self.runtime.block_on(assert_still_serving(&self.addr, SHARDS));
        self.runtime.block_on(self.node.shutdown());
    }
}

#[test]
fn peer_port() {
    let target = target("peer_port", 1_000).watching_threads();
    let request_seeds = fuzz::corpus(corpus_dir("peer_request"));
    let under_test = start_node();
    target.run(
        |seeds, rng| mutate_stream(seeds, &request_seeds, rng),
        |input| under_test.runtime.block_on(send_stream(&under_test.addr, input)),
    );
    under_test.stop();
}

// ----- regressions: what the fuzz targets found, each with its input -----

/// `peer_port`, corpus input `authenticated-00` (the first input of every
/// run): an append from a member whose first entry is not the one after
/// `prev_log_id` (index 1 after none, where openraft counts from 0) reached
/// an assertion in openraft's core, on the shard's thread. Refused now.
#[test]
fn an_append_whose_entries_do_not_follow_prev_log_id_is_refused() {
    let under_test = start_node();
    let input = fuzz::corpus(corpus_dir("peer_port"))
        .into_iter()
        .find(|seed| seed.name == "authenticated-00")
        .unwrap_or_else(|| panic!("corpus input authenticated-00"));
    let request = decode_request(&input.bytes[1 + FRAME_HEADER_LEN..]).unwrap_or_else(|| panic!("decode"));
    assert!(matches!(&request, Request::AppendEntries { prev_log_id: None, frames, .. } if frames.len() == 3));
    let answer = under_test.runtime.block_on(async {
        let mut socket = raw_peer::authenticated(&under_test.addr, CLAIMED, NODE, TEST_SECRET.as_bytes()).await;
        raw_peer::call(&mut socket, 1, &request).await
    });
    assert!(matches!(&answer, Some(Response::Refused(reason)) if reason.contains("does not follow")), "{answer:?}");
    under_test.stop();
}

/// A directed check next to `peer_port`, which rarely reaches an install
/// (its appends move the log past the corpus's snapshot first): a member's
/// snapshot whose bytes are damaged, its length intact, went to openraft,
/// whose state machine failed to install it, a storage error that stopped
/// the group (`Unavailable` from then on). Refused before openraft now.
#[test]
fn a_damaged_snapshot_from_a_member_fails_its_request_and_the_group_serves_on() {
    let under_test = start_node();
    let mut chunks: Vec<Request> =
        sample_requests().into_iter().filter(|request| matches!(request, Request::SnapshotChunk { .. })).collect();
    if let Some(Request::SnapshotChunk { data, .. }) = chunks.last_mut() {
        let middle = data.len() / 2;
        data[middle] ^= 0x55;
    }
    let answers: Vec<Option<Response>> = under_test.runtime.block_on(async {
        let mut socket = raw_peer::authenticated(&under_test.addr, CLAIMED, NODE, TEST_SECRET.as_bytes()).await;
        let mut answers = Vec::new();
        for (n, chunk) in chunks.iter().enumerate() {
            answers.push(raw_peer::call(&mut socket, n as u64 + 1, chunk).await);
        }
        answers
    });
    assert!(matches!(answers[0], Some(Response::SnapshotChunkStored)), "{answers:?}");
    assert!(
        !matches!(answers[1], Some(Response::SnapshotInstalled { .. })),
        "a damaged snapshot installed: {answers:?}"
    );
    under_test.stop();
}
