//! Property tests: random command sequences at random log times, checked
//! against an independent model after every entry.
//!
//! Invariants (DESIGN.md §1, §3):
//! * `available` is never negative; `reserved` equals the sum of live holds;
//! * `on_hand` equals what upserts set plus adjustments and transfers minus
//!   confirmations — computed by the model, not read from the engine;
//! * a hold is never granted beyond what the model says is available, and
//!   lines without a warehouse are allocated exactly as the model's own
//!   allocation says (most available first, ties by name, or for
//!   `priority` the request's list else the SKU's first; split in that
//!   order, or with `split` false each line whole from the first warehouse
//!   that has it; fixed lines set aside first, earlier lines consuming for
//!   later ones): the same lines held in the same order, the same
//!   per-line allocations, or the same short lines;
//! * a SKU's warehouse priority is set only from warehouses that stock it,
//!   none twice; a replay's allocations cover each line exactly;
//! * write outcomes carry the reservation's lines as the model stored them,
//!   and confirm, release and extend outcomes the key it was held with;
//! * a hold with a taken id replays exactly when the model finds that the
//!   stored lines fulfil the request (same key, same total per SKU, fixed
//!   items covered), and is refused as `reservation_id_in_use` otherwise;
//! * terminal reservations never change;
//! * a hold expires at the first entry whose time reaches its deadline;
//! * replaying the log, or loading a snapshot and replaying the suffix, gives
//!   the same digest and the same outcomes;
//! * a command whose request id is still in the dedup window (retries of
//!   earlier commands, ids reused on purpose, duplicates within one batch)
//!   changes nothing and answers the first outcome; ids not one per command
//!   are ignored; the window forgets by count and by log time.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use engine::cmd::{
    AdjustReason, Allocation, AllocationOrder, AllocationRule, Command, Confirm, Deadline, Extend, Release,
    SetWarehousePriority, Transfer,
};
use engine::event::EventKind;
use engine::ids::{IdempotencyKey, RequestId, ReservationId};
use engine::item::Status;
use engine::outcome::{LineView, Outcome, Refusal, ShortLine};
use engine::reservation::ReservationState;
use engine::testing::{self, adjust, hold_any, qty, rid, sku, upsert, wh};
use engine::{Limits, LogEntry, LogId, ShardState};
use proptest::prelude::*;

const SKUS: [&str; 3] = ["A", "B", "C"];
/// Three, so that allocation orders, ties and splits have room.
const WAREHOUSES: [&str; 3] = ["w1", "w2", "w3"];
const KEYS: [&str; 3] = ["k1", "k2", "k3"];

type Key = (String, String);

fn key(sku: &str, warehouse: &str) -> Key {
    (sku.to_owned(), warehouse.to_owned())
}

#[derive(Clone, Debug)]
struct ModelHold {
    /// As stored: summed per item, in order of first mention.
    lines: Vec<(Key, u64)>,
    key: Option<String>,
    deadline_ms: u64,
    state: ReservationState,
    ended_at_ms: Option<u64>,
}

/// A hold's request line: SKU, warehouse (`None`: allocate), quantity.
type Asked = (String, Option<String>, u64);

#[derive(Debug, Default)]
struct Model {
    on_hand: HashMap<Key, u64>,
    holds: BTreeMap<ReservationId, ModelHold>,
    keys: HashMap<String, ReservationId>,
    now_ms: u64,
    /// Remembered commands, oldest first: (request id, log time, outcome).
    window: VecDeque<(RequestId, u64, Outcome)>,
    /// SKUs' warehouse priority lists.
    priority: HashMap<String, Vec<String>>,
}

/// A hold's allocation rule as generated: `priority` (else most available),
/// the request's list (indexes into `WAREHOUSES`), and `split`.
#[derive(Clone, Debug)]
struct Rule {
    priority: bool,
    list: Vec<usize>,
    split: bool,
}

/// What each request line took: (line, item, units), in request order.
type Takes = Vec<(usize, Key, u64)>;

/// A granted allocation: the lines to store, and what each line took.
type Allocated = (Vec<(Key, u64)>, Takes);

impl Model {
    fn reserved(&self, item: &Key) -> u64 {
        self.holds
            .values()
            .filter(|h| h.state == ReservationState::Held)
            .flat_map(|h| h.lines.iter())
            .filter(|(k, _)| k == item)
            .map(|(_, q)| q)
            .sum()
    }

    fn available(&self, item: &Key) -> Option<u64> {
        self.on_hand.get(item).map(|on_hand| on_hand - self.reserved(item))
    }

    /// The model's own allocation of a hold's lines against its current
    /// stock: the lines to store, or every short request line. Written
    /// from the rule, not from the engine's code: the order is recomputed
    /// per line from the stock before the hold (it does not move while the
    /// hold is decided), and fixed lines are added line by line.
    fn allocate(&self, asked: &[Asked], rule: Option<&Rule>) -> Result<Allocated, Vec<ShortLine>> {
        let split = rule.is_none_or(|r| r.split);
        let mut fixed: BTreeMap<Key, (u64, u32)> = BTreeMap::new();
        for (line, (s, w, q)) in asked.iter().enumerate() {
            if let Some(w) = w {
                fixed.entry(key(s, w)).or_insert((0, line_index(line))).0 += q;
            }
        }
        let mut short = Vec::new();
        for (item, &(total, first)) in &fixed {
            let available = self.available(item);
            if available.is_none_or(|a| a < total) {
                short.push(ShortLine {
                    line: first,
                    requested: total,
                    available: available.unwrap_or(0),
                    exists: available.is_some(),
                });
            }
        }
        let mut left: HashMap<Key, u64> = HashMap::new();
        let mut takes: Vec<Vec<(Key, u64)>> = vec![Vec::new(); asked.len()];
        for (line, (s, w, q)) in asked.iter().enumerate() {
            if w.is_some() {
                continue;
            }
            let mut items: Vec<(Key, u64)> = self
                .on_hand
                .keys()
                .filter(|item| item.0 == *s)
                .map(|item| (item.clone(), self.available(item).unwrap_or(0)))
                .collect();
            // The priority list in force: the request's, else the SKU's.
            let list: Vec<String> = match rule {
                Some(r) if r.priority && !r.list.is_empty() => {
                    r.list.iter().map(|&w| WAREHOUSES[w].to_owned()).collect()
                }
                Some(r) if r.priority => self.priority.get(s.as_str()).cloned().unwrap_or_default(),
                _ => Vec::new(),
            };
            let rank = |item: &Key| list.iter().position(|w| *w == item.1).unwrap_or(usize::MAX);
            items.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then(b.1.cmp(&a.1)).then(a.0.1.cmp(&b.0.1)));
            for (item, available) in &items {
                let fixed_here = fixed.get(item).map_or(0, |f| f.0);
                left.entry(item.clone()).or_insert(available.saturating_sub(fixed_here));
            }
            let mut need = *q;
            if split {
                for (item, _) in &items {
                    let Some(free) = left.get_mut(item) else { continue };
                    let take = need.min(*free);
                    if take > 0 {
                        *free -= take;
                        need -= take;
                        takes[line].push((item.clone(), take));
                    }
                }
            } else {
                match items.iter().find(|(item, _)| left[item] >= *q) {
                    Some((item, _)) => {
                        left.entry(item.clone()).and_modify(|free| *free -= q);
                        need = 0;
                        takes[line].push((item.clone(), *q));
                    }
                    // Short: reported with the most any one had left.
                    None => need = q - items.iter().map(|(item, _)| left[item]).max().unwrap_or(0),
                }
            }
            if need > 0 {
                short.push(ShortLine {
                    line: line_index(line),
                    requested: *q,
                    available: q - need,
                    exists: !items.is_empty(),
                });
            }
        }
        if !short.is_empty() {
            short.sort_by_key(|s| s.line);
            return Err(short);
        }
        let mut stored: Vec<(Key, u64)> = Vec::new();
        let mut add = |item: Key, quantity: u64| match stored.iter_mut().find(|(k, _)| *k == item) {
            Some((_, total)) => *total += quantity,
            None => stored.push((item, quantity)),
        };
        for (line, (s, w, q)) in asked.iter().enumerate() {
            match w {
                Some(w) => add(key(s, w), *q),
                None => takes[line].iter().for_each(|(item, take)| add(item.clone(), *take)),
            }
        }
        // Each line's takes in the order of the stored lines, as outcomes
        // list them.
        let position = |item: &Key| stored.iter().position(|(k, _)| k == item);
        let mut takes: Takes = takes
            .into_iter()
            .enumerate()
            .flat_map(|(line, took)| took.into_iter().map(move |(item, units)| (line, item, units)))
            .collect();
        takes.sort_by_key(|(line, item, _)| (*line, position(item)));
        Ok((stored, takes))
    }

    /// The first outcome of `request_id`, if the window still holds it.
    fn remembered(&self, request_id: &RequestId) -> Option<&Outcome> {
        self.window.iter().find(|(id, _, _)| id == request_id).map(|(_, _, outcome)| outcome)
    }

    /// Forgets what is past the window's bounds, as `apply` does before a batch.
    fn forget(&mut self) {
        let limits = limits();
        while let Some(&(_, at_ms, _)) = self.window.front() {
            if at_ms + limits.dedup_retention_ms >= self.now_ms && self.window.len() <= limits.dedup_window_max as usize
            {
                break;
            }
            self.window.pop_front();
        }
    }

    fn remember(&mut self, request_id: RequestId, outcome: Outcome) {
        self.window.push_back((request_id, self.now_ms, outcome));
        if self.window.len() > limits().dedup_window_max as usize {
            self.window.pop_front();
        }
    }

    fn end(&mut self, id: ReservationId, state: ReservationState) {
        let now_ms = self.now_ms;
        if let Some(hold) = self.holds.get_mut(&id) {
            assert_eq!(hold.state, ReservationState::Held, "model ends a terminal hold");
            if state == ReservationState::Confirmed {
                for (item, quantity) in hold.lines.clone() {
                    *self.on_hand.entry(item).or_default() -= quantity;
                }
            }
            hold.state = state;
            hold.ended_at_ms = Some(now_ms);
        }
    }
}

/// Whether stored lines answer a request: per SKU the same total, every
/// fixed item held at least its fixed sum, and a SKU nothing of which is
/// allocated held on its fixed items exactly.
fn fulfils(stored: &[(Key, u64)], asked: &[Asked]) -> bool {
    let mut per_sku_asked: BTreeMap<&str, u64> = BTreeMap::new();
    let mut per_sku_stored: BTreeMap<&str, u64> = BTreeMap::new();
    let mut allocating: BTreeSet<&str> = BTreeSet::new();
    let mut fixed: BTreeMap<Key, u64> = BTreeMap::new();
    for (s, w, q) in asked {
        *per_sku_asked.entry(s).or_default() += q;
        match w {
            Some(w) => *fixed.entry(key(s, w)).or_default() += q,
            None => {
                allocating.insert(s);
            }
        }
    }
    for ((s, _), q) in stored {
        *per_sku_stored.entry(s).or_default() += q;
    }
    let stored_of = |item: &Key| stored.iter().find(|(k, _)| k == item).map_or(0, |(_, q)| *q);
    per_sku_asked == per_sku_stored
        && fixed.iter().all(|(item, q)| stored_of(item) >= *q)
        && stored.iter().all(|(item, q)| allocating.contains(item.0.as_str()) || fixed.get(item) == Some(q))
}

/// A request line's index as a `ShortLine` names it (lines are few).
fn line_index(line: usize) -> u32 {
    u32::try_from(line).unwrap_or(u32::MAX)
}

fn views(lines: &[(Key, u64)]) -> Vec<LineView> {
    lines
        .iter()
        .map(|((s, w), q)| LineView { sku: s.clone(), warehouse: w.clone(), quantity: *q, backordered: 0 })
        .collect()
}

/// A command as the test generates it, so the model can read it back.
#[derive(Clone, Debug)]
enum Op {
    Upsert {
        sku: usize,
        wh: usize,
        on_hand: u64,
        threshold: u64,
    },
    Adjust {
        sku: usize,
        wh: usize,
        delta: i64,
    },
    Transfer {
        sku: usize,
        from: usize,
        quantity: u64,
    },
    /// Lines of (SKU, warehouse or `None` to allocate, quantity); `rule`
    /// `None`: `Allocation::MostAvailable`.
    Hold {
        n: u64,
        lines: Vec<(usize, Option<usize>, u64)>,
        ttl_ms: u64,
        key: Option<usize>,
        rule: Option<Rule>,
    },
    /// A SKU's warehouse priority (`None`: remove it).
    SetPriority {
        sku: usize,
        list: Option<Vec<usize>>,
    },
    Confirm {
        n: u64,
    },
    Release {
        n: u64,
    },
    Extend {
        n: u64,
        ttl_ms: u64,
    },
    Tick,
}

impl Op {
    fn command(&self) -> Command {
        match self {
            Op::Upsert { sku, wh, on_hand, threshold } => upsert(SKUS[*sku], WAREHOUSES[*wh], *on_hand, *threshold),
            Op::Adjust { sku, wh, delta } => adjust(SKUS[*sku], WAREHOUSES[*wh], *delta, AdjustReason::Count),
            Op::Transfer { sku: s, from, quantity } => Command::Transfer(Transfer {
                note: None,
                reference: None,
                sku: sku(SKUS[*s]),
                from: wh(WAREHOUSES[*from]),
                to: wh(WAREHOUSES[(*from + 1) % WAREHOUSES.len()]),
                quantity: qty(*quantity),
                principal: None,
            }),
            Op::Hold { n, lines, ttl_ms, key, rule } => {
                let lines: Vec<(&str, Option<&str>, u64)> =
                    lines.iter().map(|&(s, w, q)| (SKUS[s], w.map(|w| WAREHOUSES[w]), q)).collect();
                let mut command = hold_any(rid(*n), &lines, *ttl_ms, key.map(|k| testing::key(KEYS[k])));
                if let (Command::Hold(hold), Some(rule)) = (&mut command, rule) {
                    hold.allocation = Allocation::Rule(AllocationRule {
                        order: if rule.priority { AllocationOrder::Priority } else { AllocationOrder::MostAvailable },
                        warehouse_priority: rule.list.iter().map(|&w| wh(WAREHOUSES[w])).collect(),
                        split: rule.split,
                    });
                }
                command
            }
            Op::SetPriority { sku: s, list } => Command::SetWarehousePriority(SetWarehousePriority {
                sku: sku(SKUS[*s]),
                warehouses: list.as_ref().map(|list| list.iter().map(|&w| wh(WAREHOUSES[w])).collect()),
            }),
            Op::Confirm { n } => Command::Confirm(Confirm { principal: None, id: rid(*n) }),
            Op::Release { n } => Command::Release(Release { principal: None, id: rid(*n) }),
            Op::Extend { n, ttl_ms } => {
                Command::Extend(Extend { principal: None, id: rid(*n), deadline: Deadline::AfterMs(*ttl_ms) })
            }
            Op::Tick => Command::Tick,
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let line = (0..SKUS.len(), proptest::option::weighted(0.6, 0..WAREHOUSES.len()), 1u64..8);
    let rule = proptest::option::weighted(
        0.5,
        (any::<bool>(), proptest::collection::vec(0..WAREHOUSES.len(), 0..4), any::<bool>())
            .prop_map(|(priority, list, split)| Rule { priority, list, split }),
    );
    prop_oneof![
        2 => (0..SKUS.len(), 0..WAREHOUSES.len(), 0u64..30, 0u64..6)
            .prop_map(|(sku, wh, on_hand, threshold)| Op::Upsert { sku, wh, on_hand, threshold }),
        2 => (0..SKUS.len(), 0..WAREHOUSES.len(), prop_oneof![-15i64..0, 1i64..15])
            .prop_map(|(sku, wh, delta)| Op::Adjust { sku, wh, delta }),
        1 => (0..SKUS.len(), 0..WAREHOUSES.len(), 1u64..10)
            .prop_map(|(sku, from, quantity)| Op::Transfer { sku, from, quantity }),
        6 => (0u64..16, proptest::collection::vec(line, 1..4), 1u64..4_000, proptest::option::weighted(0.3, 0..KEYS.len()), rule)
            .prop_map(|(n, lines, ttl_ms, key, rule)| Op::Hold { n, lines, ttl_ms, key, rule }),
        1 => (0..SKUS.len(), proptest::option::weighted(0.8, proptest::collection::vec(0..WAREHOUSES.len(), 0..4)))
            .prop_map(|(sku, list)| Op::SetPriority { sku, list }),
        2 => (0u64..16).prop_map(|n| Op::Confirm { n }),
        2 => (0u64..16).prop_map(|n| Op::Release { n }),
        1 => (0u64..16, 1u64..4_000).prop_map(|(n, ttl_ms)| Op::Extend { n, ttl_ms }),
        1 => Just(Op::Tick),
    ]
}

/// The request id a generated command carries (used when its batch has ids).
#[derive(Clone, Debug)]
enum Tag {
    /// Practically unique.
    Fresh(u64),
    /// One of a few ids, reused on purpose by unrelated commands.
    Pool(u8),
    /// Resend one of the last commands sent, with its id: a proposer's retry.
    Retry(prop::sample::Index),
}

/// Whether an entry's commands carry request ids.
#[derive(Clone, Copy, Debug)]
enum Ids {
    None,
    OnePerCommand,
    /// One too few or one too many: ignored by `apply`.
    Mismatched,
}

/// How far back a retry may reach, in commands sent.
const RETRY_REACH: usize = 16;

fn tag() -> impl Strategy<Value = Tag> {
    prop_oneof![
        3 => any::<u64>().prop_map(Tag::Fresh),
        1 => (0u8..6).prop_map(Tag::Pool),
        2 => any::<prop::sample::Index>().prop_map(Tag::Retry),
    ]
}

fn ids() -> impl Strategy<Value = Ids> {
    prop_oneof![1 => Just(Ids::None), 4 => Just(Ids::OnePerCommand), 1 => Just(Ids::Mismatched)]
}

/// One entry as generated: a time step, its commands with their tags, and
/// whether the tags are sent.
type Step = (u64, Vec<(Op, Tag)>, Ids);

fn batch() -> impl Strategy<Value = Step> {
    (prop_oneof![Just(0u64), 0u64..300, 0u64..3_000], proptest::collection::vec((op(), tag()), 1..6), ids())
}

fn limits() -> Limits {
    // Never forget terminal reservations during a test, so the model can
    // compare every one of them. A small dedup window, so that both of its
    // bounds are reached (entries step up to 3 s apart).
    Limits {
        terminal_retention_ms: u64::MAX / 4,
        terminal_retained_max: u32::MAX,
        dedup_window_max: 12,
        dedup_retention_ms: 2_500,
        ..Limits::default()
    }
}

/// Resolves the tags of one entry against the commands sent before it.
/// Returns the commands and their request ids (one per command).
fn resolve(tagged: &[(Op, Tag)], sent: &mut Vec<(Op, RequestId)>) -> Vec<(Op, RequestId)> {
    tagged
        .iter()
        .map(|(op, tag)| {
            let resolved = match tag {
                Tag::Fresh(n) => {
                    let mut bytes = [0xFF; 16];
                    bytes[8..].copy_from_slice(&n.to_be_bytes());
                    (op.clone(), RequestId(bytes))
                }
                Tag::Pool(n) => (op.clone(), RequestId([*n; 16])),
                Tag::Retry(back) if !sent.is_empty() => {
                    let reach = sent.len().min(RETRY_REACH);
                    sent[sent.len() - 1 - back.index(reach)].clone()
                }
                Tag::Retry(_) => (op.clone(), RequestId([0xEE; 16])),
            };
            sent.push(resolved.clone());
            resolved
        })
        .collect()
}

/// Checks one command's outcome against the model and updates the model.
fn check_outcome(model: &mut Model, op: &Op, outcome: &Outcome) -> Result<(), TestCaseError> {
    match (op, outcome) {
        (Op::Upsert { sku, wh, on_hand, .. }, Outcome::Upserted { item, .. }) => {
            prop_assert_eq!(item.on_hand, *on_hand);
            model.on_hand.insert(key(SKUS[*sku], WAREHOUSES[*wh]), *on_hand);
        }
        (Op::Upsert { sku, wh, on_hand, .. }, Outcome::Refused(Refusal::BelowReserved { .. })) => {
            prop_assert!(*on_hand < model.reserved(&key(SKUS[*sku], WAREHOUSES[*wh])));
        }
        (Op::Adjust { sku, wh, delta }, Outcome::Adjusted { item }) => {
            let k = key(SKUS[*sku], WAREHOUSES[*wh]);
            let before = model.on_hand.get(&k).copied();
            prop_assert!(before.is_some(), "adjusted a missing item");
            let after = before.unwrap_or(0).checked_add_signed(*delta);
            prop_assert_eq!(Some(item.on_hand), after);
            prop_assert!(item.on_hand >= model.reserved(&k));
            model.on_hand.insert(k, item.on_hand);
        }
        (Op::Adjust { sku, wh, .. }, Outcome::Refused(Refusal::ItemNotFound)) => {
            prop_assert!(!model.on_hand.contains_key(&key(SKUS[*sku], WAREHOUSES[*wh])));
        }
        (Op::Adjust { sku, wh, delta }, Outcome::Refused(Refusal::BelowReserved { .. })) => {
            let k = key(SKUS[*sku], WAREHOUSES[*wh]);
            let on_hand = model.on_hand.get(&k).copied().unwrap_or(0);
            prop_assert!(on_hand.checked_add_signed(*delta).is_none_or(|after| after < model.reserved(&k)));
        }
        (Op::Transfer { sku, from, quantity }, Outcome::Transferred { .. }) => {
            let (source, target) =
                (key(SKUS[*sku], WAREHOUSES[*from]), key(SKUS[*sku], WAREHOUSES[(*from + 1) % WAREHOUSES.len()]));
            prop_assert!(model.available(&source).is_some_and(|available| available >= *quantity), "transfer oversold");
            *model.on_hand.entry(source).or_default() -= quantity;
            *model.on_hand.entry(target).or_default() += quantity;
        }
        (Op::Transfer { sku, from, quantity }, Outcome::Refused(refusal)) => {
            let source = key(SKUS[*sku], WAREHOUSES[*from]);
            match refusal {
                Refusal::ItemNotFound => prop_assert!(!model.on_hand.contains_key(&source)),
                Refusal::InsufficientStock { .. } => {
                    prop_assert!(model.available(&source).is_some_and(|available| available < *quantity));
                }
                other => prop_assert!(false, "unexpected transfer refusal {:?}", other),
            }
        }
        (Op::Hold { n, lines, ttl_ms, key: hold_key, rule }, outcome) => {
            check_hold(model, *n, lines, *ttl_ms, hold_key.map(|k| KEYS[k]), rule.as_ref(), outcome)?;
        }
        (Op::SetPriority { sku, list }, outcome) => check_set_priority(model, SKUS[*sku], list.as_deref(), outcome)?,
        (Op::Confirm { n }, outcome) => check_end(model, *n, outcome, ReservationState::Confirmed)?,
        (Op::Release { n }, outcome) => check_end(model, *n, outcome, ReservationState::Released)?,
        (Op::Extend { n, .. }, Outcome::Extended { reservation, lines, idempotency_key }) => {
            let hold = model.holds.get_mut(&rid(*n));
            prop_assert!(hold.as_ref().is_some_and(|h| h.state == ReservationState::Held));
            if let Some(hold) = hold {
                prop_assert_eq!(lines, &views(&hold.lines), "lines of an extended hold");
                prop_assert_eq!(key_of(idempotency_key), hold.key.as_deref(), "key of an extended hold");
                prop_assert!(reservation.deadline_ms >= hold.deadline_ms);
                hold.deadline_ms = reservation.deadline_ms;
            }
        }
        (Op::Extend { n, .. }, Outcome::Refused(refusal)) => {
            let state = model.holds.get(&rid(*n)).map(|h| h.state);
            match refusal {
                Refusal::ReservationNotFound => prop_assert_eq!(state, None),
                Refusal::AlreadyConfirmed => prop_assert_eq!(state, Some(ReservationState::Confirmed)),
                Refusal::AlreadyReleased => prop_assert_eq!(state, Some(ReservationState::Released)),
                Refusal::AlreadyExpired => prop_assert_eq!(state, Some(ReservationState::Expired)),
                Refusal::DeadlineEarlier { .. } => prop_assert_eq!(state, Some(ReservationState::Held)),
                other => prop_assert!(false, "unexpected extend refusal {:?}", other),
            }
        }
        (Op::Tick, Outcome::Ticked) => {}
        (op, outcome) => prop_assert!(false, "unexpected outcome {:?} for {:?}", outcome, op),
    }
    Ok(())
}

/// Checks a hold's outcome against what the model expects: a replay of the
/// reservation its key or id names (if the stored lines fulfil the request),
/// `reservation_id_in_use`, or the model's own allocation (granted or short).
fn check_hold(
    model: &mut Model,
    n: u64,
    lines: &[(usize, Option<usize>, u64)],
    ttl_ms: u64,
    hold_key: Option<&str>,
    rule: Option<&Rule>,
    outcome: &Outcome,
) -> Result<(), TestCaseError> {
    let asked: Vec<Asked> =
        lines.iter().map(|&(s, w, q)| (SKUS[s].to_owned(), w.map(|w| WAREHOUSES[w].to_owned()), q)).collect();
    // A request's list naming a warehouse twice is refused before anything.
    if let Some(rule) = rule
        && rule.list.iter().enumerate().any(|(i, w)| rule.list[..i].contains(w))
    {
        prop_assert_eq!(outcome.refusal().map(Refusal::code), Some("invalid_warehouse_priority"));
        return Ok(());
    }
    let key_name = hold_key.map(str::to_owned);
    let by_key = key_name.as_ref().and_then(|k| model.keys.get(k)).copied();
    let replay_of = by_key.or_else(|| {
        model.holds.get(&rid(n)).filter(|h| h.key == key_name && fulfils(&h.lines, &asked)).map(|_| rid(n))
    });
    if let Some(id) = replay_of {
        let Outcome::Held { reservation, replayed: true, lines, allocations } = outcome else {
            prop_assert!(false, "expected a replay of {:?}, got {:?}", id, outcome);
            return Ok(());
        };
        let hold = &model.holds[&id];
        prop_assert_eq!(reservation.id, id);
        prop_assert_eq!(reservation.state, hold.state);
        prop_assert_eq!(reservation.deadline_ms, hold.deadline_ms);
        prop_assert_eq!(lines, &views(&hold.lines), "a replay answers the lines as stored");
        if by_key.is_none() {
            // The stored lines fulfil the request: the recomputed
            // allocations cover each allocated line exactly, from its SKU,
            // and with the fixed lines add up to every stored line.
            let mut per_held = vec![0u64; lines.len()];
            for (line, (s, w, q)) in asked.iter().enumerate() {
                let of_line = allocations.iter().filter(|a| a.line as usize == line);
                match w {
                    None => {
                        let sum: u64 = of_line.clone().map(|a| a.quantity).sum();
                        prop_assert_eq!(sum, *q, "replayed allocations of line {}", line);
                        for a in of_line {
                            prop_assert_eq!(&lines[a.held as usize].sku, s);
                            per_held[a.held as usize] += a.quantity;
                        }
                    }
                    Some(w) => {
                        prop_assert_eq!(of_line.count(), 0, "a fixed line is not allocated");
                        let held = lines.iter().position(|l| l.sku == *s && l.warehouse == *w);
                        prop_assert!(held.is_some());
                        if let Some(held) = held {
                            per_held[held] += q;
                        }
                    }
                }
            }
            let stored: Vec<u64> = lines.iter().map(|l| l.quantity).collect();
            prop_assert_eq!(per_held, stored, "replayed allocations and fixed lines add up to the stored lines");
        }
        return Ok(());
    }
    if model.holds.contains_key(&rid(n)) {
        prop_assert_eq!(outcome, &Outcome::Refused(Refusal::ReservationIdInUse));
        return Ok(());
    }
    match model.allocate(&asked, rule) {
        Ok((stored, takes)) => {
            let Outcome::Held { reservation, replayed: false, lines, allocations } = outcome else {
                prop_assert!(false, "model holds {:?}, engine answered {:?}", stored, outcome);
                return Ok(());
            };
            prop_assert_eq!(lines, &views(&stored), "engine and model allocate differently");
            let answered: Takes = allocations
                .iter()
                .map(|a| {
                    let line = &lines[a.held as usize];
                    (a.line as usize, key(&line.sku, &line.warehouse), a.quantity)
                })
                .collect();
            prop_assert_eq!(answered, takes, "engine and model allocate lines differently");
            prop_assert_eq!(reservation.id, rid(n));
            prop_assert_eq!(reservation.state, ReservationState::Held);
            prop_assert_eq!(reservation.deadline_ms, model.now_ms + ttl_ms);
            model.holds.insert(
                rid(n),
                ModelHold {
                    lines: stored,
                    key: key_name.clone(),
                    deadline_ms: reservation.deadline_ms,
                    state: ReservationState::Held,
                    ended_at_ms: None,
                },
            );
            if let Some(k) = key_name {
                model.keys.insert(k, rid(n));
            }
        }
        Err(short) => {
            prop_assert_eq!(outcome, &Outcome::Refused(Refusal::InsufficientStock { lines: short }));
        }
    }
    Ok(())
}

/// Checks a `SetWarehousePriority` against the model: refused for a SKU
/// with no item, or a list naming a warehouse twice or one that does not
/// stock the SKU; else the list (an empty one removes it).
fn check_set_priority(
    model: &mut Model,
    sku: &str,
    list: Option<&[usize]>,
    outcome: &Outcome,
) -> Result<(), TestCaseError> {
    let names: Vec<String> = list.unwrap_or_default().iter().map(|&w| WAREHOUSES[w].to_owned()).collect();
    let stocked = |w: &String| model.on_hand.contains_key(&key(sku, w));
    if !model.on_hand.keys().any(|item| item.0 == sku) {
        prop_assert_eq!(outcome, &Outcome::Refused(Refusal::ItemNotFound));
    } else if names.iter().enumerate().any(|(i, w)| names[..i].contains(w)) || !names.iter().all(stocked) {
        prop_assert_eq!(outcome.refusal().map(Refusal::code), Some("invalid_warehouse_priority"));
    } else {
        prop_assert_eq!(outcome, &Outcome::WarehousePrioritySet { sku: sku.to_owned(), warehouses: names.clone() });
        if names.is_empty() {
            model.priority.remove(sku);
        } else {
            model.priority.insert(sku.to_owned(), names);
        }
    }
    Ok(())
}

fn check_end(model: &mut Model, n: u64, outcome: &Outcome, target: ReservationState) -> Result<(), TestCaseError> {
    let id = rid(n);
    let state = model.holds.get(&id).map(|h| h.state);
    let (ended, replayed, lines, ended_key) = match outcome {
        Outcome::Confirmed { reservation, replayed, lines, idempotency_key }
            if target == ReservationState::Confirmed =>
        {
            (reservation, *replayed, lines, idempotency_key)
        }
        Outcome::Released { reservation, replayed, lines, idempotency_key } if target == ReservationState::Released => {
            (reservation, *replayed, lines, idempotency_key)
        }
        Outcome::Refused(Refusal::ReservationNotFound) => {
            prop_assert_eq!(state, None);
            return Ok(());
        }
        Outcome::Refused(Refusal::AlreadyConfirmed) => {
            prop_assert_eq!(state, Some(ReservationState::Confirmed));
            return Ok(());
        }
        Outcome::Refused(Refusal::AlreadyReleased) => {
            prop_assert_eq!(state, Some(ReservationState::Released));
            return Ok(());
        }
        Outcome::Refused(Refusal::AlreadyExpired) => {
            prop_assert_eq!(state, Some(ReservationState::Expired));
            return Ok(());
        }
        other => {
            prop_assert!(false, "unexpected outcome {:?} ending {:?} as {:?}", other, id, target);
            return Ok(());
        }
    };
    prop_assert_eq!(ended.state, target);
    let stored = model.holds.get(&id).map(|h| views(&h.lines));
    prop_assert_eq!(Some(lines), stored.as_ref(), "lines of an ended hold");
    let stored_key = model.holds.get(&id).and_then(|h| h.key.as_deref());
    prop_assert_eq!(key_of(ended_key), stored_key, "key of an ended hold");
    if replayed {
        prop_assert_eq!(state, Some(target));
    } else {
        prop_assert_eq!(state, Some(ReservationState::Held));
        model.end(id, target);
    }
    Ok(())
}

/// An outcome's idempotency key as the model names keys.
fn key_of(key: &Option<IdempotencyKey>) -> Option<&str> {
    key.as_ref().map(IdempotencyKey::as_str)
}

/// Compares the engine with the model after an entry.
fn check_state(state: &ShardState, model: &Model) -> Result<(), TestCaseError> {
    if let Err(broken) = state.check_invariants() {
        prop_assert!(false, "invariant broken: {}", broken);
    }
    prop_assert_eq!(state.stats().request_ids_remembered, model.window.len() as u64, "dedup window size");
    for (item, on_hand) in &model.on_hand {
        let view = state.get_item(&item.0, &item.1).ok().flatten();
        prop_assert!(view.is_some(), "missing item {:?}", item);
        if let Some(view) = view {
            prop_assert_eq!(view.on_hand, *on_hand, "on_hand of {:?}", item);
            prop_assert_eq!(view.reserved, model.reserved(item), "reserved of {:?}", item);
            prop_assert_eq!(view.available, on_hand - model.reserved(item));
        }
    }
    for (id, hold) in &model.holds {
        let view = state.reservation(id).ok().flatten();
        prop_assert!(view.is_some(), "reservation {:?} forgotten", id);
        if let Some(view) = view {
            prop_assert_eq!(view.summary.state, hold.state, "state of {:?}", id);
            prop_assert_eq!(view.summary.ended_at_ms, hold.ended_at_ms, "terminal {:?} changed", id);
            prop_assert_eq!(view.summary.deadline_ms, hold.deadline_ms);
        }
    }
    Ok(())
}

/// What a run produced: the final state, the log, each entry's outcomes.
type Run = (ShardState, Vec<LogEntry>, Vec<Vec<Outcome>>);

/// Threshold crossings: exactly one event per change of status, chained from
/// the status before the entry to the status after it.
fn check_crossings(
    state: &ShardState,
    events: &[engine::Event],
    before: &HashMap<Key, Status>,
) -> Result<(), TestCaseError> {
    let mut chains: HashMap<Key, Vec<(Status, Status)>> = HashMap::new();
    for event in events {
        if let EventKind::ThresholdCrossed { from, to, .. } = event.kind {
            let record = state.describe(event).unwrap_or_else(|e| panic!("{e}"));
            prop_assert_ne!(from, to, "a crossing that changes nothing");
            chains.entry((record.sku, record.warehouse)).or_default().push((from, to));
        }
    }
    for (item, status) in before {
        let now = state.get_item(&item.0, &item.1).ok().flatten().map(|v| v.status);
        let chain = chains.remove(item).unwrap_or_default();
        let mut at = *status;
        for (from, to) in &chain {
            prop_assert_eq!(*from, at, "crossing of {:?} does not start where the last ended", item);
            at = *to;
        }
        prop_assert_eq!(Some(at), now, "crossings of {:?} do not add up to its status", item);
    }
    // Items created in this entry: their first status is not a crossing, but
    // later changes within the entry are; they must still chain.
    for (item, chain) in chains {
        for pair in chain.windows(2) {
            prop_assert_eq!(pair[0].1, pair[1].0, "crossings of new item {:?} do not chain", item);
        }
    }
    Ok(())
}

fn run(batches: &[Step]) -> Result<Run, TestCaseError> {
    let mut state = ShardState::new(0, 1, limits());
    let mut model = Model::default();
    let mut entries = Vec::new();
    let mut outcomes = Vec::new();
    let mut ts_ms = 1_000;
    let mut sent = Vec::new();
    for (index, (step_ms, tagged, ids)) in batches.iter().enumerate() {
        let previous_ms = ts_ms;
        ts_ms += step_ms;
        let resolved = resolve(tagged, &mut sent);
        let ops: Vec<Op> = resolved.iter().map(|(op, _)| op.clone()).collect();
        let mut request_ids: Vec<RequestId> = resolved.iter().map(|(_, id)| *id).collect();
        match ids {
            Ids::None => request_ids.clear(),
            Ids::OnePerCommand => {}
            Ids::Mismatched if request_ids.len() > 1 => {
                request_ids.pop();
            }
            Ids::Mismatched => request_ids.push(RequestId([0xDD; 16])),
        }
        let effective: Vec<Option<RequestId>> = match ids {
            Ids::OnePerCommand => request_ids.iter().copied().map(Some).collect(),
            Ids::None | Ids::Mismatched => vec![None; ops.len()],
        };
        let entry = LogEntry::batch_with_ids(
            LogId::new(1, index as u64 + 1),
            ts_ms,
            ops.iter().map(Op::command).collect(),
            request_ids,
        );
        let status_before: HashMap<Key, Status> = model
            .on_hand
            .keys()
            .filter_map(|k| state.get_item(&k.0, &k.1).ok().flatten().map(|v| (k.clone(), v.status)))
            .collect();
        let applied = state.apply(&entry).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_crossings(&state, &applied.events, &status_before)?;

        // Expiry first: exactly the holds whose deadline this entry reached.
        model.now_ms = ts_ms;
        let mut due: Vec<(u64, ReservationId)> = model
            .holds
            .iter()
            .filter(|(_, h)| h.state == ReservationState::Held && h.deadline_ms <= ts_ms)
            .map(|(id, h)| (h.deadline_ms, *id))
            .collect();
        due.sort();
        let expired: Vec<ReservationId> = applied
            .events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::ReservationExpired { reservation, deadline_ms } => {
                    assert!(
                        previous_ms < deadline_ms || index == 0,
                        "hold outlived its deadline by more than one entry"
                    );
                    assert!(deadline_ms <= ts_ms);
                    Some(reservation)
                }
                _ => None,
            })
            .collect();
        let mut due_ids: Vec<ReservationId> = due.iter().map(|(_, id)| *id).collect();
        let mut seen = expired.clone();
        due_ids.sort();
        seen.sort();
        prop_assert_eq!(seen, due_ids, "expired set at {}", ts_ms);
        for id in expired {
            model.end(id, ReservationState::Expired);
        }
        // Then the dedup window forgets, and each command either repeats a
        // remembered one (no-op, first outcome) or applies.
        model.forget();
        for ((op, request_id), outcome) in ops.iter().zip(&effective).zip(&applied.outcomes) {
            match request_id {
                Some(request_id) => match model.remembered(request_id) {
                    Some(first) => {
                        prop_assert_eq!(outcome, first, "a repeated request id must answer the first outcome")
                    }
                    None => {
                        check_outcome(&mut model, op, outcome)?;
                        model.remember(*request_id, outcome.clone());
                    }
                },
                None => check_outcome(&mut model, op, outcome)?,
            }
        }
        check_state(&state, &model)?;
        for (position, event) in applied.events.iter().enumerate() {
            prop_assert_eq!(event.id.index, index as u64 + 1);
            prop_assert_eq!(event.id.position as usize, position);
        }
        entries.push(entry);
        outcomes.push(applied.outcomes);
    }
    Ok((state, entries, outcomes))
}

fn replay(mut state: ShardState, entries: &[LogEntry]) -> (ShardState, Vec<Vec<Outcome>>) {
    let outcomes = entries
        .iter()
        .map(|entry| state.apply(entry).unwrap_or_else(|e| panic!("replay failed: {e}")).outcomes)
        .collect();
    (state, outcomes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_invariant(
        batches in proptest::collection::vec(batch(), 1..60),
        split in any::<prop::sample::Index>(),
    ) {
        let (state, entries, outcomes) = run(&batches)?;
        let digest = state.digest();

        // The same log from the same start gives the same bytes (a fresh
        // state has fresh hash seeds, so no iteration order can leak in).
        let (replayed, replayed_outcomes) = replay(ShardState::new(0, 1, limits()), &entries);
        prop_assert_eq!(replayed.digest(), digest);
        prop_assert_eq!(&replayed_outcomes, &outcomes);

        // Snapshot at a random point, load it, replay the suffix.
        let at = split.index(entries.len() + 1);
        let (prefix, _) = replay(ShardState::new(0, 1, limits()), &entries[..at]);
        let bytes = prefix.to_snapshot_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let loaded = ShardState::from_snapshot_bytes(&bytes).map_err(TestCaseError::fail)?;
        prop_assert_eq!(loaded.digest(), prefix.digest());
        let (restored, suffix_outcomes) = replay(loaded, &entries[at..]);
        prop_assert_eq!(restored.digest(), digest, "snapshot at {} + suffix diverged", at);
        prop_assert_eq!(&suffix_outcomes[..], &outcomes[at..]);
    }
}
