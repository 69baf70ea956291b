//! Fuzz targets of the engine (issue 15): what a corrupt disk, a buggy
//! writer or a hostile leader can feed it. Each runs a few seconds in the
//! suite from its committed corpus (`tests/fuzz_corpus/<target>/`); see the
//! `fuzz` crate for the harness and `TALLY_FUZZ_SECS` for longer runs.
//!
//! * `wal_frame`: one WAL frame as a follower receives it from its leader:
//!   `EntryFrame::decode` (the frame header, CRC, kind and the rkyv decode
//!   of every record kind) and `EntryFrame::log_id`. A decoded entry must
//!   re-encode to itself, and applying it to a shard must keep every
//!   invariant and leave a state whose snapshot loads.
//! * `wal_segment`: a whole segment file as recovery reads it (`Wal::open`:
//!   every frame, the log rules, the torn tail), then `WalReader::read_framed`
//!   from the file. A log that opens must read back whole; one that takes
//!   an append must reopen with it.
//! * `snapshot_image`: a snapshot image as a leader sends it
//!   (`SnapshotStore::install`) and as a restart finds it on disk
//!   (`SnapshotStore::latest`, `load_latest`). A state that loads must
//!   re-encode to itself and apply commands without breaking an invariant.
//!
//! Most inputs are mutated *inside* their checksums (the mutator reseals
//! the CRC): damage behind a valid CRC is what a buggy or hostile writer
//! makes, and the only kind that reaches the decoders behind the CRC.
//! The binary caps its heap (`fuzz::cap_allocations`), so a length read
//! from the input and trusted for an allocation aborts the run.

// Lengths of test inputs; not input to the code under test.
#![allow(clippy::cast_possible_truncation)]

use std::path::{Path, PathBuf};

use engine::cmd::{AdjustReason, AttrUpdate, Command, Confirm, Deadline, Extend, Release, SetLimits};
use engine::cmd::{DeleteItem, DeleteSku, SetProduct, Transfer, UpsertItem};
use engine::ids::{ItemName, Principal, RequestId};
use engine::snapshot::SnapshotStore;
use engine::testing::{adjust, hold, hold_any, key, qty, rid, sku, upsert, upsert_item, wh};
use engine::wal::{EntryFrame, Wal};
use engine::{Limits, LogEntry, LogId, ShardState, StoredMembership, Vote, WalConfig};
use fuzz::{Mutator, Rng, Seed, Target};

#[global_allocator]
static ALLOCATOR: fuzz::Allocator = fuzz::Allocator::new(std::alloc::System, usize::MAX);
/// Far more than any input here needs (they are at most 64 KiB), far less
/// than a length field can claim (4 GiB).
const HEAP_HEADROOM_BYTES: usize = 256 << 20;

const PACKAGE: &str = "tally-engine";
/// Frame header: payload length, CRC-32C, kind, three zero bytes.
const FRAME_HEADER_LEN: usize = 12;
/// Snapshot header: magic, format, meta length, state length, CRC, zeros.
const SNAPSHOT_HEADER_LEN: usize = 32;
const SEGMENT_NAME: &str = "00000000000000000001.wal";

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus").join(target)
}

fn wal_config() -> WalConfig {
    WalConfig { segment_bytes_max: 1 << 20, record_bytes_max: 1 << 20, tail_bytes_max: 1 << 20 }
}

fn record_bytes_max() -> usize {
    wal_config().record_bytes_max as usize
}

fn target(name: &'static str, iterations_default: u64) -> Target {
    fuzz::cap_allocations(&ALLOCATOR, HEAP_HEADROOM_BYTES);
    Target::new(name, PACKAGE, corpus_dir(name), iterations_default)
}

// ----- the corpus: valid encodings of every kind, and edge cases -----

fn request_id(n: u8) -> RequestId {
    RequestId::from_bytes([n; 16])
}

/// Every command kind, on the SKUs and warehouses of `busy_state`.
fn sample_commands() -> Vec<Command> {
    let named = UpsertItem {
        on_hand: Some(7),
        name: AttrUpdate::Set(ItemName::new("Runner 42").unwrap_or_else(|e| panic!("{e}"))),
        unit_price_minor: AttrUpdate::Set(1999),
        principal: Some(Principal::new("fuzz-admin").unwrap_or_else(|e| panic!("{e}"))),
        ..upsert_item("SKU-3", "madrid")
    };
    vec![
        Command::UpsertItem(named.clone()),
        adjust("SKU-1", "berlin", -1, AdjustReason::Sale),
        Command::Transfer(Transfer {
            note: None,
            reference: None,
            sku: sku("SKU-1"),
            from: wh("berlin"),
            to: wh("paris"),
            quantity: qty(2),
            principal: None,
        }),
        hold(rid(20), &[("SKU-1", "berlin", 1), ("SKU-2", "berlin", 1)], 5_000, Some(key("key-20"))),
        hold_any(rid(21), &[("SKU-1", None, 3)], 5_000, None),
        Command::Confirm(Confirm { principal: None, id: rid(1) }),
        Command::Release(Release { principal: None, id: rid(2) }),
        Command::Extend(Extend { principal: None, id: rid(3), deadline: Deadline::AfterMs(60_000) }),
        Command::SetLimits(SetLimits { limits: Limits::default() }),
        Command::Tick,
        Command::SetProduct(SetProduct {
            description: AttrUpdate::Set("Light.\nMesh upper.".into()),
            price_minor: AttrUpdate::Set(1999),
            image_url: AttrUpdate::Clear,
            ..SetProduct::keep_all(sku("SKU-3"))
        }),
        Command::DeleteItem(DeleteItem {
            sku: sku("SKU-2"),
            warehouse: wh("berlin"),
            expect_version: Some(1),
            principal: None,
        }),
        Command::DeleteSku(DeleteSku { sku: sku("SKU-3"), principal: None }),
        Command::SetWarehousePriority(engine::cmd::SetWarehousePriority {
            sku: sku("SKU-1"),
            warehouses: Some(vec![wh("paris"), wh("berlin")]),
        }),
        priority_hold(22, &[("SKU-1", None, 4)]),
        Command::SetStates(Box::new(engine::cmd::SetStates {
            safety_stock: Some(1),
            incoming: Some(4),
            incoming_expected_at_ms: AttrUpdate::Set(1_800_000_000_000),
            ..engine::cmd::SetStates::keep(named)
        })),
        Command::MoveQuantity(engine::cmd::MoveQuantity {
            sku: sku("SKU-3"),
            warehouse: wh("madrid"),
            from: engine::states::QuantityState::Incoming,
            to: engine::states::QuantityState::QualityControl,
            quantity: qty(2),
            principal: None,
            note: None,
            reference: None,
        }),
    ]
}

/// A hold by `priority` that fills each line from one warehouse.
fn priority_hold(n: u64, lines: &[(&str, Option<&str>, u64)]) -> Command {
    let mut command = hold_any(rid(n), lines, 5_000, None);
    if let Command::Hold(hold) = &mut command {
        hold.allocation = engine::cmd::Allocation::Rule(engine::cmd::AllocationRule {
            order: engine::cmd::AllocationOrder::Priority,
            warehouse_priority: vec![wh("berlin")],
            split: false,
        });
    }
    command
}

/// The entries `busy_state` applies: blank, batches with and without
/// request ids, live, confirmed and released holds, a membership.
fn sample_entries() -> Vec<LogEntry> {
    let stock =
        vec![upsert("SKU-1", "berlin", 50, 5), upsert("SKU-1", "paris", 20, 0), upsert("SKU-2", "berlin", 9, 2)];
    let ids = (1..=stock.len() as u8).map(request_id).collect();
    let holds = vec![
        hold(rid(1), &[("SKU-1", "berlin", 2)], 60_000, Some(key("order-1"))),
        hold(rid(2), &[("SKU-1", "berlin", 3), ("SKU-2", "berlin", 1)], 60_000, None),
        hold(rid(3), &[("SKU-1", "berlin", 4), ("SKU-1", "paris", 1)], 60_000, None),
        hold_any(rid(4), &[("SKU-1", None, 25)], 60_000, Some(key("order-4"))),
    ];
    vec![
        LogEntry::blank(LogId::new(1, 1)),
        LogEntry::batch_with_ids(LogId::new(1, 2), 1_000, stock, ids),
        LogEntry::batch(LogId::new(1, 3), 2_000, holds),
        LogEntry::batch_with_ids(
            LogId::new(2, 4),
            3_000,
            vec![
                Command::Confirm(Confirm { principal: None, id: rid(1) }),
                Command::Release(Release { principal: None, id: rid(2) }),
            ],
            vec![request_id(9), request_id(10)],
        ),
        LogEntry { log_id: LogId::new(2, 5), payload: engine::EntryPayload::Membership(vec![1, 2, 3, 4]) },
    ]
}

fn busy_state() -> ShardState {
    let mut state = ShardState::new(0, 1, Limits::default());
    for entry in sample_entries() {
        state.apply(&entry).unwrap_or_else(|e| panic!("sample entry {:?}: {e}", entry.log_id));
    }
    state
}

/// The frames of a segment file, in order, as far as their lengths go.
fn split_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER_LEN) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let Some(frame) = bytes.get(at..at + FRAME_HEADER_LEN + len) else { break };
        frames.push(frame.to_vec());
        at += frame.len();
    }
    frames
}

/// A segment holding every record kind: entries, a vote, commits, a
/// truncation with entries after it, a purge.
fn busy_segment() -> Vec<u8> {
    let dir = fuzz::scratch_dir();
    {
        let mut wal = Wal::open(dir.path(), wal_config()).unwrap_or_else(|e| panic!("open: {e}"));
        let entries = sample_entries();
        wal.append(&entries).unwrap_or_else(|e| panic!("append: {e}"));
        wal.save_vote(Vote { term: 2, voted_for: Some(1), committed: true }).unwrap_or_else(|e| panic!("vote: {e}"));
        wal.save_committed(Some(LogId::new(1, 3))).unwrap_or_else(|e| panic!("commit: {e}"));
        wal.truncate_after(Some(LogId::new(2, 4))).unwrap_or_else(|e| panic!("truncate: {e}"));
        let replacement = LogEntry::batch(LogId::new(3, 5), 4_000, vec![Command::Tick]);
        wal.append([&replacement]).unwrap_or_else(|e| panic!("append: {e}"));
        wal.purge(LogId::new(1, 1)).unwrap_or_else(|e| panic!("purge: {e}"));
        wal.save_committed(None).unwrap_or_else(|e| panic!("commit: {e}"));
        wal.sync().unwrap_or_else(|e| panic!("sync: {e}"));
    }
    std::fs::read(dir.path().join(SEGMENT_NAME)).unwrap_or_else(|e| panic!("read segment: {e}"))
}

fn empty_segment() -> Vec<u8> {
    let dir = fuzz::scratch_dir();
    drop(Wal::open(dir.path(), wal_config()).unwrap_or_else(|e| panic!("open: {e}")));
    std::fs::read(dir.path().join(SEGMENT_NAME)).unwrap_or_else(|e| panic!("read segment: {e}"))
}

fn image_of(state: &ShardState) -> Vec<u8> {
    let dir = fuzz::scratch_dir();
    let store = SnapshotStore::open(dir.path(), 1).unwrap_or_else(|e| panic!("store: {e}"));
    let file = store.save(state).unwrap_or_else(|e| panic!("save: {e}"));
    std::fs::read(&file.path).unwrap_or_else(|e| panic!("read snapshot: {e}"))
}

fn seed(name: &str, bytes: Vec<u8>) -> Seed {
    Seed { name: name.to_string(), bytes }
}

fn frame_header(len: u32, kind: u8) -> Vec<u8> {
    let mut header = len.to_le_bytes().to_vec();
    header.extend_from_slice(&[0, 0, 0, 0, kind, 0, 0, 0]);
    header
}

fn wal_frame_seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for (n, entry) in
        sample_entries().iter().chain([&LogEntry::batch(LogId::new(3, 6), 5_000, sample_commands())]).enumerate()
    {
        let frame = EntryFrame::encode(entry, record_bytes_max()).unwrap_or_else(|e| panic!("encode: {e}"));
        seeds.push(seed(&format!("valid-entry-{n}"), frame.as_bytes().to_vec()));
    }
    // Every other record kind, as the writer framed it.
    for frame in split_frames(&busy_segment()) {
        let kind = match frame[8] {
            1 => "header",
            3 => "vote",
            4 => "committed",
            5 => "truncate",
            6 => "purge",
            _ => continue,
        };
        let name = format!("record-{kind}-{}", seeds.iter().filter(|s| s.name.contains(kind)).count());
        seeds.push(seed(&name, frame));
    }
    seeds.push(seed("edge-empty", Vec::new()));
    seeds.push(seed("edge-zero-header", vec![0; FRAME_HEADER_LEN]));
    seeds.push(seed("edge-length-max", frame_header(u32::MAX, 2)));
    seeds
}

fn wal_segment_seeds() -> Vec<Seed> {
    let busy = busy_segment();
    let torn = busy[..busy.len() - 5].to_vec();
    vec![
        seed("valid-busy", busy),
        seed("valid-empty", empty_segment()),
        seed("valid-torn-tail", torn),
        seed("edge-empty-file", Vec::new()),
        seed("edge-zeros", vec![0; 64]),
    ]
}

fn snapshot_seeds() -> Vec<Seed> {
    let busy = image_of(&busy_state());
    let mut huge_meta = busy[..SNAPSHOT_HEADER_LEN].to_vec();
    huge_meta[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    vec![
        seed("valid-busy", busy.clone()),
        seed("valid-empty", image_of(&ShardState::new(2, 4, Limits::default()))),
        seed("edge-header-only", busy[..SNAPSHOT_HEADER_LEN].to_vec()),
        seed("edge-meta-length-max", huge_meta),
    ]
}

/// Checks the committed corpus against what the generators make now, or
/// rewrites it with `TALLY_FUZZ_WRITE_CORPUS=1` (after a format change).
fn check_corpus(target: &str, seeds: &[Seed]) {
    let dir = corpus_dir(target);
    if fuzz::writing_corpus() {
        fuzz::write_corpus(&dir, seeds);
        return;
    }
    let committed = fuzz::corpus(&dir);
    let names = |seeds: &[Seed]| seeds.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let mut expected = seeds.to_vec();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
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
    check_corpus("wal_frame", &wal_frame_seeds());
    check_corpus("wal_segment", &wal_segment_seeds());
    check_corpus("snapshot_image", &snapshot_seeds());
}

// ----- mutations that keep checksums valid -----

/// Rewrites a frame's length to what follows its header and its CRC to
/// match, as the writer would have.
fn seal_frame(frame: &mut [u8]) {
    if frame.len() < FRAME_HEADER_LEN {
        return;
    }
    let len = u32::try_from(frame.len() - FRAME_HEADER_LEN).unwrap_or(u32::MAX);
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].fill(0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[..FRAME_HEADER_LEN]), &frame[FRAME_HEADER_LEN..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn mutate_frame(seeds: &[Seed], rng: &mut Rng) -> Vec<u8> {
    let mutator = Mutator { seeds, header_len: FRAME_HEADER_LEN };
    if rng.chance(1, 4) {
        return mutator.mutate(rng);
    }
    let mut frame = rng.pick(seeds).map(|seed| seed.bytes.clone()).unwrap_or_default();
    if rng.chance(2, 3) {
        // Values changed in place: the archive's structure holds, so the
        // decoders behind validation see them.
        mutator.overwrite_bytes(&mut frame, rng);
    } else {
        mutator.mutate_bytes(&mut frame, rng);
    }
    seal_frame(&mut frame);
    frame
}

fn mutate_segment(seeds: &[Seed], rng: &mut Rng) -> Vec<u8> {
    let mutator = Mutator { seeds, header_len: FRAME_HEADER_LEN };
    if rng.chance(1, 4) {
        return mutator.mutate(rng);
    }
    let source = rng.pick(seeds).map(|seed| seed.bytes.clone()).unwrap_or_default();
    let mut frames = split_frames(&source);
    if frames.is_empty() {
        return mutator.mutate(rng);
    }
    if rng.chance(1, 2) {
        // Damage inside one frame, resealed.
        let at = rng.below(frames.len());
        if rng.chance(2, 3) {
            mutator.overwrite_bytes(&mut frames[at], rng);
        } else {
            mutator.mutate_bytes(&mut frames[at], rng);
        }
        seal_frame(&mut frames[at]);
    } else {
        // Valid frames out of place: dropped, repeated, swapped, foreign.
        let at = rng.below(frames.len());
        match rng.below(4) {
            0 => _ = frames.remove(at),
            1 => frames.insert(rng.below(frames.len() + 1), frames[at].clone()),
            2 => {
                let other = rng.below(frames.len());
                frames.swap(at, other);
            }
            _ => {
                let foreign = seeds.iter().flat_map(|seed| split_frames(&seed.bytes)).collect::<Vec<_>>();
                if let Some(frame) = rng.pick(&foreign) {
                    frames.insert(at, frame.clone());
                }
            }
        }
    }
    let mut bytes = frames.concat();
    if rng.chance(1, 8) {
        let keep = rng.below(bytes.len() + 1);
        bytes.truncate(keep);
    }
    bytes
}

/// Makes a snapshot image's header agree with its body again: the state
/// length (from the meta length it claims) and the CRC.
fn seal_snapshot(image: &mut [u8]) {
    if image.len() < SNAPSHOT_HEADER_LEN {
        return;
    }
    let meta_len = u32::from_le_bytes([image[12], image[13], image[14], image[15]]) as usize;
    let state_start = SNAPSHOT_HEADER_LEN + meta_len.div_ceil(16) * 16;
    if let Some(state_len) = image.len().checked_sub(state_start) {
        image[16..24].copy_from_slice(&(state_len as u64).to_le_bytes());
    }
    let crc = crc32c::crc32c(&image[SNAPSHOT_HEADER_LEN..]);
    image[24..28].copy_from_slice(&crc.to_le_bytes());
}

fn mutate_snapshot(seeds: &[Seed], rng: &mut Rng) -> Vec<u8> {
    let mutator = Mutator { seeds, header_len: SNAPSHOT_HEADER_LEN };
    let mut image = rng.pick(seeds).map(|seed| seed.bytes.clone()).unwrap_or_default();
    match rng.below(5) {
        0 => mutator.mutate_bytes(&mut image, rng),
        1 => {
            // Header fields (lengths, format, reserved bytes), CRC resealed.
            mutator.mutate_bytes(&mut image, rng);
            if image.len() >= SNAPSHOT_HEADER_LEN {
                let crc = crc32c::crc32c(&image[SNAPSHOT_HEADER_LEN..]);
                image[24..28].copy_from_slice(&crc.to_le_bytes());
            }
        }
        _ => {
            // The meta and state behind a valid header and CRC.
            if image.len() > SNAPSHOT_HEADER_LEN {
                let mut body = image.split_off(SNAPSHOT_HEADER_LEN);
                if rng.chance(2, 3) {
                    Mutator { seeds, header_len: 0 }.overwrite_bytes(&mut body, rng);
                } else {
                    Mutator { seeds, header_len: 0 }.mutate_bytes(&mut body, rng);
                }
                image.extend_from_slice(&body);
            }
            seal_snapshot(&mut image);
        }
    }
    image
}

// ----- the properties -----

/// The id after `last`, if there is one.
fn next_after(last: Option<LogId>) -> Option<LogId> {
    match last {
        None => Some(LogId::new(1, 1)),
        Some(last) => Some(LogId::new(last.term, last.index.checked_add(1)?)),
    }
}

/// A state must survive its own snapshot: every state `apply` can reach
/// loads back, identical, or a node could not restart from it.
fn assert_state_round_trips(state: &ShardState, after: &str) {
    if let Err(reason) = state.check_invariants() {
        panic!("after {after}: an invariant broke: {reason}");
    }
    let bytes = state.to_snapshot_bytes().unwrap_or_else(|e| panic!("after {after}: snapshot encode: {e}"));
    let loaded = ShardState::from_snapshot_bytes(&bytes)
        .unwrap_or_else(|reason| panic!("after {after}: the state's own snapshot does not load: {reason}"));
    assert_eq!(loaded.digest(), state.digest(), "after {after}: the snapshot loads a different state");
}

/// Applies `entry`'s payload to `state` as the next entry (whatever log id
/// it carries), then a tick far ahead that expires every hold.
fn apply_as_next(state: &mut ShardState, entry: &LogEntry) {
    let Some(next) = next_after(state.last_applied()) else { return };
    let relabelled = LogEntry { log_id: next, payload: entry.payload.clone() };
    // Refusals are fine; a panic or a broken invariant is not.
    _ = state.apply(&relabelled);
    assert_state_round_trips(state, "applying a decoded entry");
    let Some(later) = next_after(state.last_applied()) else { return };
    let far = state.now_ms().saturating_add(1 << 40);
    _ = state.apply(&LogEntry::batch(later, far, vec![Command::Tick]));
    assert_state_round_trips(state, "expiring every hold");
}

/// Accepted: the frame decoded to an entry.
fn check_wal_frame(input: &[u8], base_state: &[u8]) -> bool {
    let frame = EntryFrame::from_received(input.to_vec());
    let claimed = frame.log_id();
    let Ok(entry) = frame.decode(record_bytes_max()) else { return false };
    assert_eq!(claimed, Some(entry.log_id), "log_id() disagrees with the decoded entry");
    let again = EntryFrame::encode(&entry, record_bytes_max())
        .unwrap_or_else(|e| panic!("a decoded entry does not re-encode: {e}"));
    assert_eq!(again.decode(record_bytes_max()).as_ref(), Ok(&entry), "a decoded entry does not round-trip");
    let mut state = ShardState::from_snapshot_bytes(base_state).unwrap_or_else(|reason| panic!("base state: {reason}"));
    apply_as_next(&mut state, &entry);
    true
}

#[test]
fn wal_frame() {
    let target = target("wal_frame", 50_000);
    let base_state = busy_state().to_snapshot_bytes().unwrap_or_else(|e| panic!("{e}")).to_vec();
    target.run(mutate_frame, |input| check_wal_frame(input, &base_state));
}

/// Accepted: the WAL opened.
fn check_wal_segment(input: &[u8]) -> bool {
    let dir = fuzz::scratch_dir();
    std::fs::write(dir.path().join(SEGMENT_NAME), input).unwrap_or_else(|e| panic!("write segment: {e}"));
    let Ok(mut wal) = Wal::open(dir.path(), wal_config()) else { return false };
    let log = wal.log_state();
    let framed = wal.reader().read_framed(0, u64::MAX).unwrap_or_else(|e| panic!("a WAL that opened: read: {e}"));
    for pair in framed.windows(2) {
        assert_eq!(pair[0].entry.log_id.index + 1, pair[1].entry.log_id.index, "entries read back out of order");
    }
    if let Some(last) = framed.last() {
        assert_eq!(Some(last.entry.log_id), log.last, "the last entry read is not the log's last");
        assert!(log.purged.is_none_or(|purged| purged.index < framed[0].entry.log_id.index), "purged entry read");
    }
    for read in &framed {
        assert_eq!(read.frame.decode(record_bytes_max()).as_ref(), Ok(&read.entry), "a frame read back differs");
    }
    // A recovered log that takes the next entry keeps it across a restart.
    let Some(next) = next_after(log.last) else { return true };
    let entry = LogEntry::batch(next, 1, vec![Command::Tick]);
    if wal.append([&entry]).is_err() || wal.sync().is_err() {
        return true;
    }
    drop(wal);
    let reopened = Wal::open(dir.path(), wal_config()).unwrap_or_else(|e| panic!("reopen after an append: {e}"));
    assert_eq!(reopened.log_state().last, Some(next), "the appended entry did not survive a restart");
    true
}

#[test]
fn wal_segment() {
    target("wal_segment", 10_000).run(mutate_segment, check_wal_segment);
}

/// Accepted: a store installed the image, or loaded it from disk.
fn check_snapshot_image(input: &[u8]) -> bool {
    let dir = fuzz::scratch_dir();
    // As a leader sends it.
    let received = SnapshotStore::open(dir.path().join("received"), 2).unwrap_or_else(|e| panic!("store: {e}"));
    let installed = received.install(input);
    let accepted = installed.is_ok();
    if let Ok((file, mut state)) = installed {
        assert_state_round_trips(&state, "installing");
        let loaded = received.load_latest().unwrap_or_else(|e| panic!("reload an installed snapshot: {e}"));
        let (meta, loaded) = loaded.unwrap_or_else(|| panic!("an installed snapshot is gone"));
        assert_eq!(meta, file.meta);
        assert_eq!(loaded.digest(), state.digest(), "an installed snapshot reloads a different state");
        let commands = LogEntry::batch(LogId::new(0, 0), state.now_ms().saturating_add(10), sample_commands());
        apply_as_next(&mut state, &commands);
    }
    // As a restart finds it.
    let disk = dir.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap_or_else(|e| panic!("{e}"));
    let name = "snapshot-00000000000000000005-00000000000000000002.snap";
    std::fs::write(disk.join(name), input).unwrap_or_else(|e| panic!("write snapshot: {e}"));
    let store = SnapshotStore::open(&disk, 2).unwrap_or_else(|e| panic!("store: {e}"));
    _ = store.latest();
    if let Ok(Some((_, state))) = store.load_latest() {
        assert_state_round_trips(&state, "loading from disk");
        return true;
    }
    accepted
}

#[test]
fn snapshot_image() {
    target("snapshot_image", 10_000).run(mutate_snapshot, check_snapshot_image);
}

#[test]
fn a_membership_survives_the_busy_state() {
    // The corpus's state carries a stored membership, so snapshots exercise it.
    let state = busy_state();
    assert_eq!(state.membership(), Some(&StoredMembership { log_id: LogId::new(2, 5), config: vec![1, 2, 3, 4] }));
}

// ----- regressions: what the fuzz targets found, each with its input -----

fn regression_input(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if name.ends_with(".wal") { reheaded(bytes) } else { bytes }
}

/// The segment format of the header frame `frame` (the `u32` after the
/// magic), and where it is.
fn segment_format(frame: &[u8]) -> Option<(usize, u32)> {
    let at = frame.windows(8).position(|window| window == b"TALLYWAL")? + 8;
    let bytes = frame.get(at..at + 4)?;
    Some((at, u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])))
}

/// A committed segment input with its header rewritten to the segment
/// format this build writes (and the header frame's checksum resealed), so
/// a format bump does not turn the WAL regressions into tests of the format
/// check. Their records are log bookkeeping (blank entries, truncations,
/// purges), whose shape the bumps so far left alone.
fn reheaded(bytes: Vec<u8>) -> Vec<u8> {
    let dir = fuzz::scratch_dir();
    drop(Wal::open(dir.path(), wal_config()).unwrap_or_else(|e| panic!("open: {e}")));
    let fresh = std::fs::read(dir.path().join(SEGMENT_NAME)).unwrap_or_else(|e| panic!("{e}"));
    let current = split_frames(&fresh).first().and_then(|frame| segment_format(frame)).map(|(_, format)| format);
    let current = current.unwrap_or_else(|| panic!("a fresh segment has no header"));
    let mut frames = split_frames(&bytes);
    if let Some(header) = frames.first_mut()
        && let Some((at, _)) = segment_format(header)
    {
        header[at..at + 4].copy_from_slice(&current.to_le_bytes());
        seal_frame(header);
    }
    frames.concat()
}

/// A segment of an older format is refused at open, with the format named,
/// never misread (format 4 changed the commands' archived shape).
#[test]
fn a_segment_of_the_previous_format_is_refused_by_name() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions/purge-at-the-last-index.wal");
    let old = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dir = fuzz::scratch_dir();
    std::fs::write(dir.path().join(SEGMENT_NAME), old).unwrap_or_else(|e| panic!("{e}"));
    let error = Wal::open(dir.path(), wal_config()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("format 3") && error.contains("refusing to start"), "{error}");
}

/// `snapshot_image`, corpus input `edge-meta-length-max`: `latest()` read
/// the header alone and sized the meta buffer from it, 4 GiB here (the
/// binary's allocation cap aborted the run).
#[test]
fn a_snapshot_header_claiming_4_gib_of_meta_is_refused_without_reading_it() {
    fuzz::cap_allocations(&ALLOCATOR, HEAP_HEADROOM_BYTES);
    let mut header = regression_input("../fuzz_corpus/snapshot_image/edge-meta-length-max");
    assert_eq!(&header[12..16], &u32::MAX.to_le_bytes());
    let dir = fuzz::scratch_dir();
    std::fs::write(dir.path().join("snapshot-00000000000000000001-00000000000000000001.snap"), &header)
        .unwrap_or_else(|e| panic!("{e}"));
    let store = SnapshotStore::open(dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
    let error = store.latest().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("runs past the end"), "{error}");
    // Past the end by one byte is refused too; a meta that fits is read.
    header.truncate(SNAPSHOT_HEADER_LEN);
    header[12..16].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(dir.path().join("snapshot-00000000000000000001-00000000000000000001.snap"), &header)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(store.latest().is_err());
}

/// `wal_segment`, seed 0x95e186ec2ebb395 input 2516: a truncation record
/// keeping an entry past the log's last one. Replayed, it made the kept id
/// the last one seen, a gap the next entry's position skipped over (a debug
/// assertion in `LogIndex::push`; in release, positions off by the gap).
/// Such a truncation drops nothing, for the writer and recovery alike.
#[test]
fn a_truncation_past_the_end_of_the_log_drops_nothing() {
    // The input: the entry after the truncation follows the kept id, not
    // the log, so the segment is refused as corrupt (no longer a panic).
    let dir = fuzz::scratch_dir();
    std::fs::write(dir.path().join(SEGMENT_NAME), regression_input("truncation-past-the-end.wal"))
        .unwrap_or_else(|e| panic!("{e}"));
    let error = Wal::open(dir.path(), wal_config()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("follows entry"), "{error}");

    // The writer: such a truncation keeps the log, which goes on after its
    // last entry, and recovery agrees.
    let dir = fuzz::scratch_dir();
    let mut wal = Wal::open(dir.path(), wal_config()).unwrap_or_else(|e| panic!("open: {e}"));
    let entries: Vec<LogEntry> = (1..=3).map(|index| LogEntry::blank(LogId::new(1, index))).collect();
    wal.append(&entries).unwrap_or_else(|e| panic!("append: {e}"));
    wal.truncate_after(Some(LogId::new(1, 9))).unwrap_or_else(|e| panic!("truncate: {e}"));
    assert_eq!(wal.log_state().last, Some(LogId::new(1, 3)));
    wal.append([&LogEntry::blank(LogId::new(1, 4))]).unwrap_or_else(|e| panic!("append after the last entry: {e}"));
    wal.sync().unwrap_or_else(|e| panic!("{e}"));
    drop(wal);
    let reopened = Wal::open(dir.path(), wal_config()).unwrap_or_else(|e| panic!("reopen: {e}"));
    assert_eq!(reopened.log_state().last, Some(LogId::new(1, 4)));
    let read = reopened.reader().read_range(0, u64::MAX).unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(read.len(), 4);
}

/// `snapshot_image`, seed 0x6d49a920c4a2ff1e input 9449: a state whose item
/// had a low-stock threshold over 10^15 loaded, and the next change to the
/// item failed `finish_change`'s assertion.
#[test]
fn a_snapshot_with_a_threshold_over_the_maximum_does_not_load() {
    let dir = fuzz::scratch_dir();
    let store = SnapshotStore::open(dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
    let error = store.install(&regression_input("threshold-over-the-maximum.snap")).err();
    let error = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("threshold"), "{error}");
}

/// `snapshot_image`, seed 0xb9bd11e16572aa3 input 207663: two live holds
/// on one item whose quantities sum past u64; `check_invariants`, run on
/// every load, overflowed adding them up.
#[test]
fn a_snapshot_whose_holds_sum_past_u64_does_not_load() {
    let dir = fuzz::scratch_dir();
    let store = SnapshotStore::open(dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
    let error = store.install(&regression_input("reserved-sum-overflows.snap")).err();
    let error = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("past u64"), "{error}");
}

/// `wal_segment`, seed 0xdde1d7f86edc725b input 190350: a purge record at
/// index u64::MAX; the first live index after it (`upto + 1`) overflowed.
/// The log opens, and no entry can follow it.
#[test]
fn a_purge_at_the_last_index_opens_and_takes_no_entry_after_it() {
    let dir = fuzz::scratch_dir();
    std::fs::write(dir.path().join(SEGMENT_NAME), regression_input("purge-at-the-last-index.wal"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut wal = Wal::open(dir.path(), wal_config()).unwrap_or_else(|e| panic!("open: {e}"));
    let last = wal.log_state().last.unwrap_or_else(|| panic!("a purged log has a last id"));
    assert_eq!(last.index, u64::MAX);
    assert!(wal.reader().read_range(0, u64::MAX).is_ok_and(|entries| entries.is_empty()));
    assert!(wal.append([&LogEntry::blank(LogId::new(last.term, 0))]).is_err());
}

/// `wal_segment`, seed 0xe3c6fbecd8598c74 input 295372 (after the fix
/// above made recovery refuse log ids at u64::MAX): a log whose last entry
/// is at u64::MAX - 1 took an append at u64::MAX, which recovery then
/// refused. Writer and recovery share one rule now: no entry at u64::MAX.
#[test]
fn no_entry_takes_the_last_index_a_u64_holds() {
    let dir = fuzz::scratch_dir();
    std::fs::write(dir.path().join(SEGMENT_NAME), regression_input("entry-before-the-last-index.wal"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut wal = Wal::open(dir.path(), wal_config()).unwrap_or_else(|e| panic!("open: {e}"));
    let last = wal.log_state().last.unwrap_or_else(|| panic!("a last entry"));
    assert_eq!(last.index, u64::MAX - 1);
    let error = wal.append([&LogEntry::blank(LogId::new(last.term, u64::MAX))]).err();
    assert!(matches!(error, Some(engine::WalError::NotContiguous { .. })), "{error:?}");
    drop(wal);
    assert!(Wal::open(dir.path(), wal_config()).is_ok());
}

/// `snapshot_image`, seed 0x58ebd830d366d489 input 7833: an item at version
/// u64::MAX loaded, and its next change overflowed the version.
#[test]
fn a_snapshot_with_an_item_at_the_last_version_does_not_load() {
    let dir = fuzz::scratch_dir();
    let store = SnapshotStore::open(dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
    let error = store.install(&regression_input("version-at-the-maximum.snap")).err();
    let error = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("has no next"), "{error}");
}
