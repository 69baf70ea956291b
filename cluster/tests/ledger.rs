//! The movement ledger against the state it records.
//!
//! A seeded random workload (upserts, adjustments with notes, transfers,
//! holds across warehouses, confirms, releases, extensions and expiries)
//! runs through a shard's `apply`; each entry's events, named as the state
//! machine names them, go to a real ledger thread writing real segments.
//! Then, for every item, the ledger's movements must sum to its on_hand and
//! reserved, each entry's levels must continue the previous one's, and a
//! restart must neither duplicate nor lose anything.

use std::collections::BTreeMap;
use std::sync::Arc;

use cluster::ledger::{AppliedBurst, Ledger, LedgerConfig, LedgerEntry, LedgerFilter, LedgerSender};
use engine::cmd::{
    Adjust, AdjustReason, Allocation, AttrUpdate, Command, Confirm, Deadline, Extend, Hold, HoldLine, Release,
    Transfer, UpsertItem,
};
use engine::ids::{Note, Principal, Reference};
use engine::testing::{qty, rid, sku, upsert_item, wh};
use engine::{EntryPayload, Limits, LogEntry, LogId, ShardState};
use testkit::SplitMix;

const SKUS: [&str; 4] = ["SKU-A", "SKU-B", "SKU-C", "SKU-D"];
const WAREHOUSES: [&str; 3] = ["berlin", "paris", "rome"];

/// The run's one generator (splitmix64).
type Rng = SplitMix;

fn pick<'a>(rng: &mut Rng, from: &[&'a str]) -> &'a str {
    from[rng.index(from.len())]
}

fn who() -> Option<Principal> {
    Principal::new("ops-key").ok()
}

/// One random command; reservation numbers run below `holds`.
fn command(rng: &mut Rng, holds: &mut u64) -> Command {
    match rng.below(13) {
        0 => {
            let item = upsert_item(pick(rng, &SKUS), pick(rng, &WAREHOUSES));
            Command::UpsertItem(UpsertItem { on_hand: Some(rng.below(40)), principal: who(), ..item })
        }
        1 | 2 => Command::Adjust(Adjust {
            sku: sku(pick(rng, &SKUS)),
            warehouse: wh(pick(rng, &WAREHOUSES)),
            delta: rng.below(21) as i64 - 8,
            reason: AdjustReason::ALL[rng.index(AdjustReason::ALL.len())],
            principal: who(),
            note: Note::new("cycle count, aisle 4").ok(),
            reference: Reference::new(format!("DN-{}", rng.below(1000))).ok(),
        })
        .nonzero(),
        3 => {
            let from = pick(rng, &WAREHOUSES);
            let to = WAREHOUSES.iter().copied().find(|w| *w != from).unwrap_or("rome");
            Command::Transfer(Transfer {
                sku: sku(pick(rng, &SKUS)),
                from: wh(from),
                to: wh(to),
                quantity: qty(1 + rng.below(5)),
                principal: who(),
                note: Note::new("rebalance").ok(),
                reference: Reference::new("TO-9").ok(),
            })
        }
        4..=6 => {
            *holds += 1;
            let lines = (0..1 + rng.below(2))
                .map(|_| HoldLine {
                    sku: sku(pick(rng, &SKUS)),
                    // Some lines are allocated across warehouses.
                    warehouse: if rng.below(3) == 0 { None } else { Some(wh(pick(rng, &WAREHOUSES))) },
                    quantity: qty(1 + rng.below(4)),
                })
                .collect();
            Command::Hold(Hold {
                id: rid(*holds),
                lines,
                deadline: Deadline::AfterMs(50 + rng.below(400)),
                idempotency_key: None,
                confirm: rng.below(8) == 0,
                allocation: Allocation::MostAvailable,
                customer: None,
                principal: who(),
            })
        }
        7 => Command::Confirm(Confirm { id: rid(1 + rng.below(*holds + 1)), principal: who() }),
        8 => Command::Release(Release { id: rid(1 + rng.below(*holds + 1)), principal: who() }),
        10 | 11 => {
            let states = engine::states::QuantityState::ALL;
            Command::MoveQuantity(engine::cmd::MoveQuantity {
                sku: sku(pick(rng, &SKUS)),
                warehouse: wh(pick(rng, &WAREHOUSES)),
                from: states[rng.index(states.len())],
                to: states[rng.index(states.len() - 1)],
                quantity: qty(1 + rng.below(5)),
                principal: who(),
                note: Note::new("inspection").ok(),
                reference: None,
            })
        }
        12 => Command::SetStates(Box::new(engine::cmd::SetStates {
            safety_stock: Some(rng.below(4)),
            incoming: Some(rng.below(20)),
            incoming_expected_at_ms: AttrUpdate::Keep,
            ..engine::cmd::SetStates::keep(UpsertItem {
                principal: who(),
                ..upsert_item(pick(rng, &SKUS), pick(rng, &WAREHOUSES))
            })
        })),
        _ => Command::Extend(Extend {
            id: rid(1 + rng.below(*holds + 1)),
            deadline: Deadline::AfterMs(100 + rng.below(400)),
            principal: who(),
        }),
    }
}

trait NonZero {
    fn nonzero(self) -> Self;
}

impl NonZero for Command {
    /// An adjustment of 0 is refused at input; make it 1.
    fn nonzero(mut self) -> Self {
        if let Command::Adjust(adjust) = &mut self
            && adjust.delta == 0
        {
            adjust.delta = 1;
        }
        self
    }
}

/// Where a workload is: log time and reservations made.
#[derive(Clone, Copy)]
struct Run {
    ts_ms: u64,
    holds: u64,
}

impl Default for Run {
    /// Log time starts at a fixed recent time (2026-12-01), inside the
    /// ledger's retention.
    fn default() -> Self {
        Run { ts_ms: 1_796_083_200_000, holds: 0 }
    }
}

/// Applies `entries` random entries from index `first` to `state` and sends
/// each burst to the ledger as the state machine does.
fn run_workload(
    state: &mut ShardState,
    ledger: &LedgerSender,
    rng: &mut Rng,
    first: u64,
    entries: u64,
    run: &mut Run,
) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
    for index in first..first + entries {
        run.ts_ms += rng.below(40);
        let commands: Vec<Command> = (0..1 + rng.below(4)).map(|_| command(rng, &mut run.holds)).collect();
        let entry = LogEntry::batch(LogId::new(1, index), run.ts_ms, commands);
        let applied = state.apply(&entry).unwrap_or_else(|e| panic!("apply: {e}"));
        let batch = match &entry.payload {
            EntryPayload::Batch(batch) => Some(&**batch),
            _ => None,
        };
        let records = applied
            .events
            .iter()
            .map(|event| state.describe_in(event, batch, &applied.outcomes).unwrap_or_else(|e| panic!("{e}")))
            .map(Arc::new)
            .collect();
        let burst = AppliedBurst { shard: 0, first_index: index, last_index: index, records };
        assert!(runtime.block_on(ledger.send(burst)), "the ledger thread is running");
    }
    first + entries
}

fn all_entries(ledger: &Ledger, filter: &LedgerFilter) -> Vec<LedgerEntry> {
    let mut entries = Vec::new();
    let mut after = None;
    loop {
        let page = ledger.page(filter, after, 97).unwrap_or_else(|e| panic!("page: {e}"));
        entries.extend(page.entries);
        match page.next {
            Some(next) => after = Some(next),
            None => return entries,
        }
    }
}

/// For every item: the ledger's deltas sum to on_hand and reserved, and
/// every entry starts where the item's previous entry ended.
fn reconcile(state: &ShardState, entries: &[LedgerEntry]) -> usize {
    let mut sums: BTreeMap<(String, String), (i128, i128, u64, u64)> = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.kind != "gap") {
        let sum = sums.entry((entry.sku.clone(), entry.warehouse.clone())).or_insert((0, 0, 0, 0));
        assert_eq!(
            (entry.on_hand_before, entry.reserved_before),
            (sum.2, sum.3),
            "{} {}: entry {}-{} does not start where the last ended",
            entry.sku,
            entry.warehouse,
            entry.index,
            entry.position
        );
        sum.0 += entry.on_hand_delta();
        sum.1 += entry.reserved_delta();
        sum.2 = entry.on_hand_after;
        sum.3 = entry.reserved_after;
        assert_eq!(entry.principal.as_deref(), if entry.kind == "expire" { None } else { Some("ops-key") });
    }
    let mut checked = 0;
    for s in SKUS {
        for w in WAREHOUSES {
            let item = state.get_item(s, w).unwrap_or_else(|e| panic!("{e}"));
            let (on_hand, reserved) = item.map_or((0, 0), |item| (item.on_hand, item.reserved));
            let (sum_on_hand, sum_reserved, ..) = sums.get(&(s.to_owned(), w.to_owned())).copied().unwrap_or_default();
            assert_eq!(
                (sum_on_hand, sum_reserved),
                (i128::from(on_hand), i128::from(reserved)),
                "{s} {w}: the ledger's movements do not sum to the item's levels"
            );
            checked += 1;
        }
    }
    checked
}

fn config() -> LedgerConfig {
    // Small segments, so the run rolls many and pages cross them.
    LedgerConfig { segment_bytes_max: 8192, ..LedgerConfig::default() }
}

#[test]
fn for_every_item_the_ledger_sums_to_its_on_hand_and_reserved() {
    for seed in [1_u64, 7, 42, 0x5eed] {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut state = ShardState::new(0, 1, Limits::default());
        let mut rng = Rng::new(seed);
        let mut run = Run::default();
        let (ledger, sender) = Ledger::start(dir.path(), 1, config()).unwrap_or_else(|e| panic!("{e}"));
        let next = run_workload(&mut state, &sender, &mut rng, 1, 400, &mut run);
        drop(sender);
        ledger.join();
        let entries = all_entries(&ledger, &LedgerFilter::default());
        let kinds: std::collections::BTreeMap<&str, usize> = entries.iter().fold(BTreeMap::new(), |mut m, e| {
            *m.entry(e.kind.as_str()).or_default() += 1;
            m
        });
        assert!(entries.iter().any(|e| e.kind == "expire"), "seed {seed}: the run expires holds: {kinds:?}");
        assert!(entries.iter().any(|e| e.kind == "transfer_in"), "seed {seed}: the run transfers");
        assert!(entries.iter().any(|e| e.kind == "extend"), "seed {seed}: the run extends holds");
        assert!(
            entries.iter().any(|e| e.kind == "move" && e.moved.is_some() && e.from_state.is_some()),
            "seed {seed}: the run moves units between quantity states: {kinds:?}"
        );
        assert!(
            entries.iter().any(|e| e.note.as_deref() == Some("rebalance") && e.document.as_deref() == Some("TO-9"))
        );
        assert!(entries.windows(2).all(|w| w[0].key() < w[1].key()), "seed {seed}: pages in the merged order");
        assert_eq!(reconcile(&state, &entries), SKUS.len() * WAREHOUSES.len());

        // A restart: openraft applies again from the last snapshot (here,
        // at entry 300); the ledger skips what it has. The same seed makes
        // the same log; entries up to the snapshot go to a throwaway ledger.
        let mut replayed = ShardState::new(0, 1, Limits::default());
        let mut replay_rng = Rng::new(seed);
        let mut replay_run = Run::default();
        let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (throwaway, throwaway_sender) =
            Ledger::start(scratch.path(), 1, config()).unwrap_or_else(|e| panic!("{e}"));
        let at = run_workload(&mut replayed, &throwaway_sender, &mut replay_rng, 1, 300, &mut replay_run);
        drop(throwaway_sender);
        throwaway.join();
        let (ledger, sender) = Ledger::start(dir.path(), 1, config()).unwrap_or_else(|e| panic!("{e}"));
        let after_restart = run_workload(&mut replayed, &sender, &mut replay_rng, at, next - at, &mut replay_run);
        assert_eq!(replayed.digest(), state.digest(), "seed {seed}: the replay reaches the same state");
        // And new entries after the restart.
        let end = run_workload(&mut replayed, &sender, &mut replay_rng, after_restart, 50, &mut replay_run);
        assert_eq!(end, next + 50);
        drop(sender);
        ledger.join();
        let entries = all_entries(&ledger, &LedgerFilter::default());
        assert!(entries.iter().all(|e| e.kind != "gap"), "seed {seed}: nothing was lost");
        assert_eq!(reconcile(&replayed, &entries), SKUS.len() * WAREHOUSES.len(), "seed {seed}: no entry twice");
    }
}

#[test]
fn a_start_past_what_the_ledger_covers_records_a_gap() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut state = ShardState::new(0, 1, Limits::default());
    let mut rng = Rng::new(3);
    let mut run = Run::default();
    let (ledger, sender) = Ledger::start(dir.path(), 1, config()).unwrap_or_else(|e| panic!("{e}"));
    run_workload(&mut state, &sender, &mut rng, 1, 20, &mut run);
    drop(sender);
    ledger.join();

    // The node comes back from a snapshot at 60: entries 21..=60 are gone
    // from its log (compacted), so the ledger cannot record them.
    let (ledger, sender) = Ledger::start(dir.path(), 1, config()).unwrap_or_else(|e| panic!("{e}"));
    run_workload(&mut state, &sender, &mut rng, 61, 5, &mut run);
    drop(sender);
    ledger.join();
    let entries = all_entries(&ledger, &LedgerFilter::default());
    let gaps: Vec<&LedgerEntry> = entries.iter().filter(|e| e.kind == "gap").collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!((gaps[0].index, gaps[0].gap_to_index), (21, Some(60)));
    // A filtered read shows the gap to every item's reader.
    let one_item = LedgerFilter { sku: Some("SKU-A".into()), ..LedgerFilter::default() };
    assert!(all_entries(&ledger, &one_item).iter().any(|e| e.kind == "gap"));
}

#[test]
fn filters_keep_only_what_they_name_and_pages_never_repeat() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut state = ShardState::new(0, 1, Limits::default());
    let mut rng = Rng::new(11);
    let mut run = Run::default();
    let (ledger, sender) = Ledger::start(dir.path(), 1, config()).unwrap_or_else(|e| panic!("{e}"));
    run_workload(&mut state, &sender, &mut rng, 1, 200, &mut run);
    drop(sender);
    ledger.join();
    let all = all_entries(&ledger, &LedgerFilter::default());
    let middle_ms = all[all.len() / 2].at_ms;
    let filter = LedgerFilter {
        sku: Some("SKU-B".into()),
        warehouse: Some("paris".into()),
        kind: Some("hold".into()),
        since_ms: Some(middle_ms),
        until_ms: None,
    };
    let kept = all_entries(&ledger, &filter);
    let expected: Vec<LedgerEntry> = all
        .iter()
        .filter(|e| e.sku == "SKU-B" && e.warehouse == "paris" && e.kind == "hold" && e.at_ms >= middle_ms)
        .cloned()
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(kept, expected);
    let until = LedgerFilter { until_ms: Some(middle_ms), ..LedgerFilter::default() };
    assert!(all_entries(&ledger, &until).iter().all(|e| e.at_ms < middle_ms));
    let _ = Arc::clone(&ledger);
}

#[test]
fn segments_past_the_retention_are_deleted_but_never_the_open_one() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut state = ShardState::new(0, 1, Limits::default());
    let mut rng = Rng::new(5);
    // Log time in 1970: every closed segment is past 30 days.
    let mut run = Run { ts_ms: 1_000, holds: 0 };
    let (ledger, sender) = Ledger::start(dir.path(), 1, config()).unwrap_or_else(|e| panic!("{e}"));
    run_workload(&mut state, &sender, &mut rng, 1, 200, &mut run);
    drop(sender);
    ledger.join();
    let segments = std::fs::read_dir(dir.path().join("shard-0"))
        .unwrap_or_else(|e| panic!("{e}"))
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "jsonl")))
        .count();
    assert_eq!(segments, 1, "only the open segment is kept");
    let kept = all_entries(&ledger, &LedgerFilter::default());
    assert!(!kept.is_empty() && kept.iter().all(|e| e.index > 100), "the newest entries stay");
}

/// The thread writes on its interval, not per burst; a page read has it
/// write what is queued first. With an interval far longer than the test,
/// only that can put the movements on disk, and the thread keeps running.
#[test]
fn a_page_sees_every_burst_sent_before_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut state = ShardState::new(0, 1, Limits::default());
    let mut rng = Rng::new(5);
    let mut run = Run::default();
    let slow = LedgerConfig { flush_interval_ms: 3_600_000, ..config() };
    let (ledger, sender) = Ledger::start(dir.path(), 1, slow).unwrap_or_else(|e| panic!("{e}"));
    let mut next = 1;
    let mut seen = 0;
    for round in 0..3 {
        next = run_workload(&mut state, &sender, &mut rng, next, 50, &mut run);
        let entries = all_entries(&ledger, &LedgerFilter::default());
        assert!(entries.len() > seen, "round {round}: the page shows no new movement");
        // Everything applied so far is there: the levels reconcile.
        assert!(reconcile(&state, &entries) > 0, "round {round}");
        seen = entries.len();
    }
    drop(sender);
    ledger.join();
    assert_eq!(all_entries(&ledger, &LedgerFilter::default()).len(), seen, "nothing was left unwritten");
}
