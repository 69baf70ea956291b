//! `Hold`: reserve units of one or more items of this shard until a deadline.
//!
//! All lines or none: every line is checked, and if any is short the answer
//! lists every short request line and nothing changes. A retry is safe: the
//! same reservation id with the same request, or the same idempotency key,
//! answers the existing reservation (`replayed`) and never holds twice. With
//! `confirm` set the hold is confirmed in the same step (a direct sale).
//!
//! # Allocation
//!
//! A line names a warehouse, or none (`HoldLine::warehouse` is `None`): then
//! the hold chooses among the SKU's items on this shard (a SKU lives on
//! exactly one shard, so these are all of them). The choice is made inside
//! `apply`, on the one replica order, so choosing and holding are one atomic
//! step: no other command can move the stock in between, and every replica
//! chooses the same. `Hold::allocation` names the rule: an order
//! (`MostAvailable`, the default, or `Priority`, a warehouse list's order)
//! and whether a line may be split (`split`, the default, or each line
//! whole from one warehouse); `allocation.rs` says how they follow
//! Saleor's strategies. The steps:
//!
//! 1. Lines that name a warehouse are fixed. They are summed per item and set
//!    aside first, wherever they stand in the request; such an item is short
//!    when its available stock is below the sum (reported once, on the first
//!    line that named it, with the sum as `requested`).
//! 2. The items of each SKU to allocate are ordered once per hold: for
//!    `Priority`, the warehouses the list names first, in its order; then
//!    (for `MostAvailable`, all of them) most available first (available
//!    as it was before this hold), ties by warehouse name ascending. Names
//!    are unique on a shard, so the order is total.
//! 3. Lines without a warehouse are filled in request order, each greedily
//!    along that order: from the first item if what is left of it is enough,
//!    else all that is left there and the rest from the next items. With
//!    `split` false, only from the first item whose left is enough, or
//!    none. What is left of an item is its available stock minus the fixed
//!    lines' sum on it and what earlier lines took.
//! 4. A line that cannot be filled is short, with `requested` its own
//!    quantity, `available` what it could find, and `exists` whether the SKU
//!    has any item on this shard. What it found still counts as taken for the
//!    lines after it (the hold is refused anyway; this keeps the figures
//!    those of the allocation the server used to make by reading first).
//!    With `split` false a short line found none whole: `available` is the
//!    most any one item had left for it, and it takes nothing.
//! 5. The refusal lists every short request line, by line index ascending.
//!
//! This is the read-then-hold allocation the server made before: whenever
//! that one was granted (and nothing moved between its read and its hold),
//! this one holds the same units in the same warehouses; ordering by
//! availability *before* the hold is what makes it so. It differs only in
//! holds the old one refused: it grants those it refused for nothing,
//! because it could not see the fixed lines of the same hold when it chose
//! (a fixed line and an allocated line competing for one item were summed
//! only after the choice), and its refusal lists fixed and allocated short
//! lines together.
//!
//! The reservation stores its lines summed per item, in order of first
//! mention when the request is read in order, an allocated line mentioning
//! the items it took from in allocation order. Write outcomes carry these
//! lines, so a caller learns where its units are held without reading after
//! the write, and a granted hold's outcome lists what each line without a
//! warehouse took from which of those lines (`allocations`); a replay's are
//! recomputed from the stored lines (`allocation::attribute`). Allocating
//! costs one hash probe per warehouse of the shard for each distinct SKU
//! allocated (with `Priority`, also a scan of the list, which the server
//! bounds by `api.warehouse_priority_max`), and scratch space bounded by
//! `lines_per_hold_max × warehouses_per_shard_max`; the buffers are the
//! shard's and are reused.
//!
//! # Replays
//!
//! A hold whose reservation id is taken is a retry of the stored reservation
//! (answered `replayed`, nothing changes) when both
//! * its idempotency key equals the stored one (both absent counts), and
//! * the stored lines fulfil the request as sent: for every SKU the request
//!   names, the stored quantities of that SKU's items sum to the request's
//!   quantities of that SKU; every item a fixed line names is stored with at
//!   least the fixed lines' sum on it; and the stored reservation holds
//!   nothing else (an item of a SKU the request allocates nothing of is
//!   stored with exactly its fixed sum; no other SKU is stored).
//!
//! Otherwise the answer is `reservation_id_in_use`. The rule looks at the
//! request and the stored lines only, never at the stock: a retry of the
//! very request that made the reservation always replays, even when
//! allocating now would choose other warehouses, and `apply` asserts this
//! (debug builds) for every reservation it makes. Line order does not
//! matter, and neither does the allocation rule: a request that the stored
//! lines fulfil is answered with them, whichever rule chose them (for fixed
//! lines only, this is the old rule of equal summed lines, except that the
//! order of first mention may now differ). A hold whose idempotency key is
//! known replays that reservation before any of this, whatever its lines,
//! unless a line names a bundle: that is refused first (`bundle.rs`).

use rkyv::{Archive, Deserialize, Serialize};

use crate::customer::{CustomerHold, Denied};
use crate::error::{Corrupt, Field, InputError};
use crate::event::{Cause, EventKind};
use crate::ids::{CustomerId, IdempotencyKey, Principal, QUANTITY_MAX, Quantity, ReservationId, Sku, Warehouse};
use crate::item::ItemId;
use crate::outcome::{Allocated, Bound, BundleLine, Outcome, Refusal, ShortLine};
use crate::reservation::{HeldLine, Lines, Reservation, ReservationState};
use crate::state::{Change, Emitter, ShardState};

use super::allocation::{AllocationOrder, AllocationRule, attribute, check_priority_list, rank};

/// When a hold ends, if nobody confirms or releases it first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Deadline {
    /// At this log time. The server no longer writes it (each shard keeps
    /// its own log time, so a deadline taken off one shard's clock could be
    /// early on another's); a log that has it still applies as written.
    AtMs(u64),
    /// This long after the log time the command is applied at.
    AfterMs(u64),
}

impl Deadline {
    pub(crate) fn validate(self) -> Result<(), InputError> {
        match self {
            Deadline::AfterMs(0) => Err(InputError::Zero { field: Field::TtlMs }),
            Deadline::AtMs(0) => Err(InputError::Zero { field: Field::DeadlineMs }),
            Deadline::AfterMs(_) | Deadline::AtMs(_) => Ok(()),
        }
    }

    /// The absolute deadline, if it lies after now and within the longest
    /// hold allowed.
    pub(crate) fn resolve(self, now_ms: u64, ttl_max_ms: u64) -> Result<u64, Refusal> {
        let latest_ms = now_ms.saturating_add(ttl_max_ms);
        let deadline_ms = match self {
            Deadline::AtMs(at) => at,
            Deadline::AfterMs(ttl) => now_ms.saturating_add(ttl),
        };
        if deadline_ms <= now_ms {
            return Err(Refusal::DeadlineInPast { now_ms, deadline_ms });
        }
        if deadline_ms > latest_ms {
            return Err(Refusal::DeadlineTooFar { deadline_ms, latest_ms });
        }
        Ok(deadline_ms)
    }
}

/// How a hold chooses items for the lines that name no warehouse (see the
/// module docs). An enum, so that rules (priorities, split options) can be
/// added without changing the shape of lines that name their warehouse.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum Allocation {
    /// The SKU's items by available stock, most first, ties by warehouse
    /// name; a line that the first cannot fill alone is split across the
    /// next ones in that order. The same as `Rule` with order
    /// `MostAvailable`, `split` and no list; kept as the short form.
    MostAvailable,
    /// An order, a priority list and whether a line may be split
    /// (`allocation.rs`).
    Rule(AllocationRule),
}

impl Allocation {
    /// The order the SKU's items are tried in.
    pub fn order(&self) -> AllocationOrder {
        match self {
            Allocation::MostAvailable => AllocationOrder::MostAvailable,
            Allocation::Rule(rule) => rule.order,
        }
    }

    /// Whether one line may take units from several warehouses.
    pub fn split(&self) -> bool {
        match self {
            Allocation::MostAvailable => true,
            Allocation::Rule(rule) => rule.split,
        }
    }

    /// The request's warehouse order (empty: the SKU's own, if any).
    pub fn warehouse_priority(&self) -> &[Warehouse] {
        match self {
            Allocation::MostAvailable => &[],
            Allocation::Rule(rule) => &rule.warehouse_priority,
        }
    }
}

/// Units of one SKU, from one warehouse or (`None`) from the SKU's
/// warehouses on this shard as `Hold::allocation` chooses.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct HoldLine {
    pub sku: Sku,
    pub warehouse: Option<Warehouse>,
    pub quantity: Quantity,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Hold {
    pub id: ReservationId,
    pub lines: Vec<HoldLine>,
    pub deadline: Deadline,
    pub idempotency_key: Option<IdempotencyKey>,
    /// Confirm at once: hold and sell in one step.
    pub confirm: bool,
    /// How lines without a warehouse are allocated; unused when every line
    /// names one.
    pub allocation: Allocation,
    /// The shopper, for SKUs with a per-customer limit (`customer.rs`);
    /// required when a line's SKU has one.
    pub customer: Option<CustomerId>,
    /// Who held (the API key's name): recorded in the ledger and on the
    /// reservation events. Not part of what makes a retry the same request.
    pub principal: Option<Principal>,
}

impl Hold {
    pub fn validate(&self, lines_per_hold_max: u32) -> Result<(), InputError> {
        if self.lines.is_empty() {
            return Err(InputError::NoLines);
        }
        if self.lines.len() > lines_per_hold_max as usize {
            return Err(InputError::TooManyLines { count: self.lines.len(), max: lines_per_hold_max as usize });
        }
        for line in &self.lines {
            line.sku.check()?;
            if let Some(warehouse) = &line.warehouse {
                warehouse.check()?;
            }
            line.quantity.check(Field::Quantity)?;
        }
        for warehouse in self.allocation.warehouse_priority() {
            warehouse.check()?;
        }
        self.deadline.validate()?;
        if let Some(key) = &self.idempotency_key {
            key.check()?;
        }
        if let Some(customer) = &self.customer {
            customer.check()?;
        }
        if let Some(principal) = &self.principal {
            principal.check()?;
        }
        Ok(())
    }
}

/// The buffers a hold works in. They belong to the shard and are reused, so
/// a hold allocates nothing it does not keep. Each is bounded by
/// `lines_per_hold_max`, the candidates by that times
/// `warehouses_per_shard_max`.
#[derive(Debug, Default)]
pub(crate) struct HoldScratch {
    /// Lines that name a warehouse, summed per item, by first line.
    fixed: Vec<Summed>,
    /// The items of the SKUs being allocated: one run per SKU, each in the
    /// order the allocation fills it.
    candidates: Vec<Candidate>,
    /// Where each allocated SKU's run of candidates is.
    runs: Vec<SkuRun>,
    /// What each allocated line took, in request order.
    takes: Vec<Take>,
    /// The reservation's lines: summed per item, in order of first mention.
    held: Vec<HeldLine>,
    /// Warehouse names of a priority list, as the hold ranks by it.
    priority: Vec<String>,
}

impl HoldScratch {
    fn clear(&mut self) {
        self.fixed.clear();
        self.candidates.clear();
        self.runs.clear();
        self.takes.clear();
        self.held.clear();
        self.priority.clear();
    }
}

/// Fixed request lines after summing: the first line that named the item,
/// the total asked, and the item if it exists.
#[derive(Clone, Copy, Debug)]
struct Summed {
    first_line: u32,
    quantity: u64,
    item: Option<ItemId>,
}

/// An item an allocated line may take from.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    item: ItemId,
    /// Available before the hold: what the order is decided on.
    available: u64,
    /// Still free for allocated lines: available, minus the fixed lines on
    /// the item, minus what earlier allocated lines took.
    left: u64,
    /// Position of the item's warehouse in the priority list in force
    /// (`u32::MAX` when not listed, and for `MostAvailable`).
    rank: u32,
}

/// The candidates of one SKU: `candidates[start..end]`. `first_line` is the
/// first allocated request line of the SKU.
#[derive(Clone, Copy, Debug)]
struct SkuRun {
    first_line: u32,
    start: usize,
    end: usize,
}

/// Units an allocated line took from one item.
#[derive(Clone, Copy, Debug)]
struct Take {
    line: u32,
    item: ItemId,
    quantity: u64,
}

pub(super) fn apply(state: &mut ShardState, command: &Hold, emitter: &mut Emitter) -> Result<Outcome, Corrupt> {
    let mut scratch = std::mem::take(&mut state.hold_scratch);
    scratch.clear();
    let outcome = apply_with(state, command, emitter, &mut scratch);
    state.hold_scratch = scratch;
    outcome
}

fn apply_with(
    state: &mut ShardState,
    command: &Hold,
    emitter: &mut Emitter,
    scratch: &mut HoldScratch,
) -> Result<Outcome, Corrupt> {
    // Before the key: a hold naming a bundle holds nothing and touches no
    // key, so the caller's expanded hold (`bundle.rs`) may use the key.
    if let Some(refusal) = bundle_lines(state, command) {
        return Ok(refusal.into());
    }
    let priority = command.allocation.warehouse_priority();
    let names = priority.iter().map(Warehouse::as_str);
    if let Err(refusal) = check_priority_list(names, state.limits().warehouses_per_shard_max) {
        return Ok(refusal.into());
    }
    if let Some(slot) = command.idempotency_key.as_ref().and_then(|key| state.find_by_key(key)) {
        return replay(state, slot, command);
    }
    if let Err(error) = sum_fixed(state, &command.lines, &mut scratch.fixed) {
        return Ok(error.into());
    }
    if let Some(slot) = state.find_reservation(&command.id) {
        return if same_request(state, slot, &scratch.fixed, command)? {
            replay(state, slot, command)
        } else {
            Ok(Refusal::ReservationIdInUse.into())
        };
    }
    let now_ms = state.now_ms();
    let deadline_ms = match command.deadline.resolve(now_ms, state.limits().hold_ttl_max_ms) {
        Ok(deadline_ms) => deadline_ms,
        Err(refusal) => return Ok(refusal.into()),
    };
    let live_max = state.limits().live_holds_per_shard_max;
    if state.live_holds() >= live_max {
        return Ok(Refusal::ShardFull { bound: Bound::LiveHoldsPerShard, max: u64::from(live_max) }.into());
    }
    let counted = match check_customer_limits(state, command) {
        Ok(counted) => counted,
        Err(refusal) => return Ok(refusal.into()),
    };
    let short = allocate(state, command, scratch)?;
    if !short.is_empty() {
        // The one refusal that emits an event: an order service waits for it
        // (InventoryReservationFailed). It changes nothing.
        emitter.emit(EventKind::ReservationRefused { reservation: command.id });
        return Ok(Refusal::InsufficientStock { lines: short }.into());
    }

    // Every check passed: from here on nothing refuses. What a line takes
    // beyond the item's stock is backordered (lines are one per item, and
    // allocated lines never take more than stock).
    for line in &mut scratch.held {
        let item = state.item(line.item);
        line.backordered = line.quantity.saturating_sub(item.available());
        debug_assert!(line.backordered <= item.levels().backorder_room(), "backordered past the limit");
        debug_assert!(line.backordered == 0 || !command.confirm, "a direct sale backordered");
    }
    let lines = match scratch.held.as_slice() {
        [one] => Lines::One(*one),
        many => Lines::Many(many.to_vec()),
    };
    debug_assert!(!lines.as_slice().is_empty(), "a granted hold holds nothing");
    // Named before anything changes: a corrupt name stops the shard with
    // this hold unapplied.
    let views = state.line_views(lines.as_slice())?;
    let allocations = allocations(scratch);
    debug_assert_allocations(state, command, lines.as_slice(), &allocations);
    for line in lines.as_slice() {
        let before = state.before(line.item);
        debug_assert!(line.from_stock() <= state.item(line.item).available(), "allocated over available");
        let item = state.item_mut(line.item);
        item.reserved += line.from_stock();
        if line.backordered > 0 {
            let mut levels = item.levels();
            levels.backordered += line.backordered;
            item.set_levels(levels);
        }
        let change = Change { cause: Cause::Hold(command.id), movement: None, created: false };
        state.finish_change(line.item, before, change, emitter);
    }
    let seq = state.next_hold_seq();
    let (slot, summary) = state.insert_reservation(Reservation {
        id: command.id,
        state: ReservationState::Held,
        seq,
        created_at_ms: now_ms,
        deadline_ms,
        ended_at_ms: 0,
        lines,
        idempotency_key: command.idempotency_key.clone(),
        customer: counted.clone(),
    });
    if let Some(hold) = &counted {
        let pairs_max = state.limits().customer_usage_per_shard_max;
        state.persisted.customers.hold(&hold.customer, &hold.skus, now_ms, pairs_max);
    }
    emitter.emit(EventKind::ReservationHeld { reservation: command.id, deadline_ms });
    debug_assert!(
        matches!(same_request(state, slot, &scratch.fixed, command), Ok(true)),
        "a retry of hold {} would not replay",
        command.id
    );
    if command.confirm {
        return Ok(match state.end_reservation(slot, ReservationState::Confirmed, None, emitter) {
            Some(reservation) => Outcome::Confirmed {
                reservation,
                replayed: false,
                lines: views,
                idempotency_key: command.idempotency_key.clone(),
            },
            None => Refusal::ReservationNotFound.into(),
        });
    }
    Ok(Outcome::Held { reservation: summary, replayed: false, lines: views, allocations })
}

/// What each line without a warehouse took, as the outcome lists it: the
/// takes, naming the reservation's line of their item, by request line and
/// then in the order of the reservation's lines (the order a replay's
/// recomputed ones have). Empty (no heap) for a hold whose every line
/// names its warehouse.
fn allocations(scratch: &HoldScratch) -> Vec<Allocated> {
    let mut allocations: Vec<Allocated> = scratch
        .takes
        .iter()
        .map(|take| {
            let held = scratch.held.iter().position(|line| line.item == take.item);
            debug_assert!(held.is_some(), "a take is not in the reservation");
            let held = held.map_or(u32::MAX, |held| u32::try_from(held).unwrap_or(u32::MAX));
            Allocated { line: take.line, held, quantity: take.quantity }
        })
        .collect();
    // A line takes from an item once, so the key is unique and the
    // unstable sort deterministic.
    allocations.sort_unstable_by_key(|allocated| (allocated.line, allocated.held));
    allocations
}

/// Asserts (debug builds) what a granted hold's allocations promise: each
/// line without a warehouse took exactly its quantity, from items of its
/// SKU, from one item when it may not be split; lines with one took nothing.
fn debug_assert_allocations(state: &ShardState, command: &Hold, held: &[HeldLine], allocations: &[Allocated]) {
    if !cfg!(debug_assertions) {
        return;
    }
    for (index, line) in command.lines.iter().enumerate() {
        let of_line: Vec<&Allocated> = allocations.iter().filter(|a| a.line as usize == index).collect();
        if line.warehouse.is_some() {
            debug_assert!(of_line.is_empty(), "a line with a warehouse was allocated");
            continue;
        }
        let units: u64 = of_line.iter().map(|a| a.quantity).sum();
        debug_assert_eq!(units, line.quantity.get(), "line {index} allocated other units than asked");
        debug_assert!(command.allocation.split() || of_line.len() == 1, "line {index} was split");
        for allocated in of_line {
            let item = held.get(allocated.held as usize).map(|h| h.item);
            let sku = item.and_then(|item| state.item_sku(item).ok());
            debug_assert_eq!(sku, Some(line.sku.as_str()), "line {index} allocated from another SKU");
        }
    }
}

/// The hold's lines that name a bundle, with its components, for the
/// caller to hold instead (`bundle.rs`). `None` when it names none: one
/// emptiness check while the shard has no bundles.
fn bundle_lines(state: &ShardState, command: &Hold) -> Option<Refusal> {
    let bundles = &state.persisted.bundles;
    if bundles.is_empty() {
        return None;
    }
    let lines: Vec<BundleLine> = command
        .lines
        .iter()
        .enumerate()
        .filter_map(|(index, line)| {
            let components = bundles.get(line.sku.as_str())?;
            Some(BundleLine { line: u32::try_from(index).unwrap_or(u32::MAX), components: components.to_vec() })
        })
        .collect();
    (!lines.is_empty()).then_some(Refusal::BundleLines { lines })
}

/// The per-customer limits of the hold's SKUs (`customer.rs`): what the
/// hold will count, or why it may not go ahead. Changes nothing; costs
/// nothing while the shard has no limits.
fn check_customer_limits(state: &ShardState, command: &Hold) -> Result<Option<Box<CustomerHold>>, Refusal> {
    let customers = &state.persisted.customers;
    if customers.limits.is_empty() {
        return Ok(None);
    }
    // Units per SKU, each SKU once, in order of first mention. Lines are
    // few (`lines_per_hold_max`).
    let mut units: Vec<(&Sku, u64)> = Vec::new();
    for line in &command.lines {
        match units.iter_mut().find(|(sku, _)| **sku == line.sku) {
            Some((_, sum)) => *sum = sum.saturating_add(line.quantity.get()),
            None => units.push((&line.sku, line.quantity.get())),
        }
    }
    let pairs_max = state.limits().customer_usage_per_shard_max;
    match customers.check(command.customer.as_ref(), &units, state.now_ms(), pairs_max) {
        Ok(skus) if skus.is_empty() => Ok(None),
        Ok(skus) => Ok(command.customer.clone().map(|customer| Box::new(CustomerHold { customer, skus }))),
        Err(Denied::CustomerRequired { sku }) => Err(Refusal::CustomerRequired { sku }),
        Err(Denied::Over(skus)) => Err(Refusal::CustomerLimit { skus }),
        Err(Denied::TableFull) => {
            Err(Refusal::ShardFull { bound: Bound::CustomerUsagePerShard, max: u64::from(pairs_max) })
        }
    }
}

/// The stored reservation, as a retry answers it; its allocations are
/// recomputed from the stored lines (`allocation::attribute`).
fn replay(state: &ShardState, slot: u32, command: &Hold) -> Result<Outcome, Corrupt> {
    Ok(match (state.summary(slot), state.reservation_lines(slot)?) {
        (Some(reservation), Some(lines)) => {
            let allocations = attribute(&command.lines, &lines, command.allocation.split());
            Outcome::Held { reservation, replayed: true, lines, allocations }
        }
        _ => Refusal::ReservationNotFound.into(),
    })
}

/// Sums the fixed lines (those that name a warehouse) that name the same
/// item, keeping the order of first mention. Lines are few (bounded by
/// `lines_per_hold_max`), so a quadratic scan beats a hash map and allocates
/// nothing for the one-line flash-sale hold.
fn sum_fixed(state: &ShardState, lines: &[HoldLine], summed: &mut Vec<Summed>) -> Result<(), InputError> {
    for (index, line) in lines.iter().enumerate() {
        let Some(warehouse) = &line.warehouse else {
            continue;
        };
        let first =
            lines[..index].iter().position(|earlier| earlier.sku == line.sku && earlier.warehouse == line.warehouse);
        match first {
            Some(first) => {
                let first = u32::try_from(first).unwrap_or(u32::MAX);
                if let Some(total) = summed.iter_mut().find(|s| s.first_line == first) {
                    total.quantity = total.quantity.saturating_add(line.quantity.get());
                    if total.quantity > QUANTITY_MAX {
                        return Err(InputError::TooLarge {
                            field: Field::Quantity,
                            value: total.quantity,
                            max: QUANTITY_MAX,
                        });
                    }
                }
            }
            None => summed.push(Summed {
                first_line: u32::try_from(index).unwrap_or(u32::MAX),
                quantity: line.quantity.get(),
                item: state.find_item(line.sku.as_str(), warehouse.as_str()),
            }),
        }
    }
    Ok(())
}

/// Checks every line and chooses items for the lines without a warehouse
/// (module docs, "Allocation"). Returns the short request lines, by line
/// index; when there are none, `scratch.held` has the reservation's lines.
/// Changes nothing in the shard.
fn allocate(state: &ShardState, command: &Hold, scratch: &mut HoldScratch) -> Result<Vec<ShortLine>, Corrupt> {
    let mut short: Vec<ShortLine> = scratch
        .fixed
        .iter()
        .filter_map(|line| {
            // A fixed line may take the item's backorder room too (never
            // a hold that confirms at once: it would sell what is not there).
            let available = line.item.map_or(0, |id| {
                let item = state.item(id);
                let room = if command.confirm { 0 } else { item.levels().backorder_room() };
                item.available().saturating_add(room)
            });
            (available < line.quantity).then_some(ShortLine {
                line: line.first_line,
                requested: line.quantity,
                available,
                exists: line.item.is_some(),
            })
        })
        .collect();
    for (index, line) in command.lines.iter().enumerate() {
        if line.warehouse.is_some() {
            continue;
        }
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let run = sku_run(state, command, index, scratch)?;
        let requested = line.quantity.get();
        let candidates = &mut scratch.candidates[run.start..run.end];
        let found = if command.allocation.split() {
            fill(index, requested, candidates, &mut scratch.takes)
        } else {
            fill_whole(index, requested, candidates, &mut scratch.takes)
        };
        debug_assert!(found <= requested);
        if found < requested {
            short.push(ShortLine { line: index, requested, available: found, exists: run.start < run.end });
        }
    }
    if !short.is_empty() {
        // Line indexes are unique, so the unstable sort is deterministic.
        short.sort_unstable_by_key(|line| line.line);
        return Ok(short);
    }
    hold_in_request_order(command, scratch);
    debug_assert_eq!(
        scratch.held.iter().map(|line| u128::from(line.quantity)).sum::<u128>(),
        command.lines.iter().map(|line| u128::from(line.quantity.get())).sum::<u128>(),
        "held units differ from the units asked"
    );
    Ok(short)
}

/// The run of candidates of the SKU of allocated line `index`: the one an
/// earlier line of the SKU made, or a new one, ordered by the hold's rule.
fn sku_run(state: &ShardState, command: &Hold, index: u32, scratch: &mut HoldScratch) -> Result<SkuRun, Corrupt> {
    let lines = &command.lines;
    let sku = &lines[index as usize].sku;
    if let Some(run) = scratch.runs.iter().find(|run| lines[run.first_line as usize].sku == *sku) {
        return Ok(*run);
    }
    let start = scratch.candidates.len();
    // The priority list in force: the request's, else the SKU's (none for
    // `MostAvailable`, and then every rank is the same).
    scratch.priority.clear();
    if command.allocation.order() == AllocationOrder::Priority {
        let asked = command.allocation.warehouse_priority();
        if asked.is_empty() {
            scratch.priority.extend(state.warehouse_priority(sku.as_str()).iter().cloned());
        } else {
            scratch.priority.extend(asked.iter().map(|name| name.as_str().to_owned()));
        }
    }
    for item in state.items_of_sku(sku.as_str()) {
        let available = state.item(item).available();
        let fixed = scratch.fixed.iter().find(|line| line.item == Some(item)).map_or(0, |line| line.quantity);
        // Every name is looked up (and a corrupt one reported) here, so
        // inside the sort below each lookup succeeds.
        let warehouse = state.item_warehouse(item)?;
        let rank = rank(scratch.priority.iter().map(String::as_str), warehouse);
        scratch.candidates.push(Candidate { item, available, left: available.saturating_sub(fixed), rank });
    }
    let candidates = &mut scratch.candidates[start..];
    // Listed warehouses by their place in the list, then the rest most
    // available first; ties by name. Warehouse names are unique on a
    // shard, so the order is total and the unstable sort cannot leak its
    // internal order.
    candidates.sort_unstable_by(|a, b| {
        let name = |candidate: &Candidate| state.item_warehouse(candidate.item).ok();
        a.rank.cmp(&b.rank).then_with(|| b.available.cmp(&a.available)).then_with(|| name(a).cmp(&name(b)))
    });
    let run = SkuRun { first_line: index, start, end: scratch.candidates.len() };
    scratch.runs.push(run);
    Ok(run)
}

/// Takes up to `requested` units for line `index` from `candidates`, in
/// their order: all from the first if it has enough left, else what it has
/// and the rest from the next. Returns the units found.
fn fill(index: u32, requested: u64, candidates: &mut [Candidate], takes: &mut Vec<Take>) -> u64 {
    let mut wanted = requested;
    for candidate in candidates {
        if wanted == 0 {
            break;
        }
        let quantity = wanted.min(candidate.left);
        if quantity == 0 {
            continue;
        }
        candidate.left -= quantity;
        wanted -= quantity;
        takes.push(Take { line: index, item: candidate.item, quantity });
    }
    requested - wanted
}

/// Takes all `requested` units for line `index` from the first of
/// `candidates` that has them left, or nothing (`split` false). Returns the
/// units found: `requested`, or when no one candidate has them, the most
/// any one has left (what the refusal reports).
fn fill_whole(index: u32, requested: u64, candidates: &mut [Candidate], takes: &mut Vec<Take>) -> u64 {
    match candidates.iter_mut().find(|candidate| candidate.left >= requested) {
        Some(candidate) => {
            candidate.left -= requested;
            takes.push(Take { line: index, item: candidate.item, quantity: requested });
            requested
        }
        None => {
            let best = candidates.iter().map(|candidate| candidate.left).max().unwrap_or(0);
            debug_assert!(best < requested);
            best
        }
    }
}

/// Builds `scratch.held`: the fixed sums and the takes, summed per item, in
/// order of first mention reading the request in order. Both inputs are
/// already in request-line order, and a line is either fixed or allocated.
fn hold_in_request_order(command: &Hold, scratch: &mut HoldScratch) {
    fn add(held: &mut Vec<HeldLine>, item: ItemId, quantity: u64) {
        match held.iter_mut().find(|line| line.item == item) {
            // Both sums are within the item's available stock (checked), so
            // this cannot pass QUANTITY_MAX.
            Some(line) => line.quantity += quantity,
            None => held.push(HeldLine { item, quantity, backordered: 0 }),
        }
    }
    let (mut fixed, mut takes) = (scratch.fixed.iter().peekable(), scratch.takes.iter().peekable());
    for index in 0..command.lines.len() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        if let Some(line) = fixed.next_if(|line| line.first_line == index)
            && let Some(item) = line.item
        {
            add(&mut scratch.held, item, line.quantity);
        }
        while let Some(take) = takes.next_if(|take| take.line == index) {
            add(&mut scratch.held, take.item, take.quantity);
        }
    }
    debug_assert!(fixed.next().is_none() && takes.next().is_none(), "a line was left out of the reservation");
}

/// Whether a hold whose id is taken is a retry of the reservation stored
/// under it: the same idempotency key, and stored lines that fulfil the
/// request as sent (module docs, "Replays"). Reads no stock, so a retry
/// replays whatever allocating would choose now.
fn same_request(state: &ShardState, slot: u32, fixed: &[Summed], command: &Hold) -> Result<bool, Corrupt> {
    let Some(stored) = state.reservation_at(slot) else {
        return Ok(false);
    };
    if stored.idempotency_key != command.idempotency_key {
        return Ok(false);
    }
    let held = stored.lines.as_slice();
    // The SKU of every held line, looked up once (an error if corrupt).
    let held_skus: Vec<&str> = held.iter().map(|h| state.item_sku(h.item)).collect::<Result<_, _>>()?;
    // Every fixed item is held, at least as much as the fixed lines name.
    let fixed_held = fixed
        .iter()
        .all(|line| line.item.is_some_and(|item| held.iter().any(|h| h.item == item && h.quantity >= line.quantity)));
    // Every SKU asked for is held, so its total is compared below.
    let skus_held = command.lines.iter().all(|line| held_skus.contains(&line.sku.as_str()));
    // Every held item: its SKU's held total is the total asked, and it holds
    // just the fixed sum when nothing of its SKU was to be allocated.
    let held_asked = held.iter().zip(&held_skus).all(|(h, &sku)| {
        let (mut asked, mut allocates) = (0u64, false);
        for line in command.lines.iter().filter(|line| line.sku.as_str() == sku) {
            asked = asked.saturating_add(line.quantity.get());
            allocates |= line.warehouse.is_none();
        }
        let sku_held = held
            .iter()
            .zip(&held_skus)
            .filter(|(_, other)| **other == sku)
            .fold(0u64, |sum, (other, _)| sum.saturating_add(other.quantity));
        let fixed_here = fixed.iter().find(|line| line.item == Some(h.item)).map_or(0, |line| line.quantity);
        sku_held == asked && (allocates || h.quantity == fixed_here)
    });
    Ok(fixed_held && skus_held && held_asked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::AllocationOrder;
    use crate::cmd::{Command, Confirm, Extend, Release};
    use crate::config::Limits;
    use crate::event::EventKind;
    use crate::item::Status;
    use crate::outcome::LineView;
    use crate::testing::{Fixture, hold, hold_any, rid, wh};

    fn line(sku: &str, warehouse: &str, quantity: u64) -> LineView {
        LineView { sku: sku.into(), warehouse: warehouse.into(), quantity, backordered: 0 }
    }

    /// The lines of a granted hold, or a panic naming the outcome.
    fn held_lines(outcome: Outcome) -> Vec<LineView> {
        match outcome {
            Outcome::Held { replayed: false, lines, .. } => lines,
            other => panic!("not held: {other:?}"),
        }
    }

    #[test]
    fn hold_reserves_every_line_and_reports_the_deadline() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-2", "berlin", 5, 0);
        let outcome = f.hold(1, &[("SKU-1", "berlin", 3), ("SKU-2", "berlin", 5)]);
        let Outcome::Held { reservation, replayed: false, lines, .. } = outcome else {
            panic!("not held: {outcome:?}");
        };
        assert_eq!(reservation.state, ReservationState::Held);
        assert_eq!(reservation.deadline_ms, 1_000 + 60_000);
        assert_eq!(lines, vec![line("SKU-1", "berlin", 3), line("SKU-2", "berlin", 5)]);
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 3));
        assert_eq!(f.levels("SKU-2", "berlin"), (5, 5));
    }

    #[test]
    fn hold_is_all_or_nothing_and_lists_every_short_line() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-2", "berlin", 1, 0);
        let outcome = f.hold(1, &[("SKU-1", "berlin", 3), ("SKU-2", "berlin", 2), ("SKU-3", "berlin", 1)]);
        assert_eq!(
            outcome,
            Outcome::Refused(Refusal::InsufficientStock {
                lines: vec![
                    ShortLine { line: 1, requested: 2, available: 1, exists: true },
                    ShortLine { line: 2, requested: 1, available: 0, exists: false },
                ]
            })
        );
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0), "no line was held");
        assert_eq!(f.state.live_holds(), 0);
    }

    #[test]
    fn the_same_item_twice_in_one_hold_is_summed_before_checking() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        let outcome = f.hold(1, &[("SKU-1", "berlin", 3), ("SKU-1", "berlin", 3)]);
        assert_eq!(
            outcome,
            Outcome::Refused(Refusal::InsufficientStock {
                lines: vec![ShortLine { line: 0, requested: 6, available: 5, exists: true }]
            })
        );
        assert!(matches!(f.hold(2, &[("SKU-1", "berlin", 2), ("SKU-1", "berlin", 3)]), Outcome::Held { .. }));
        assert_eq!(f.levels("SKU-1", "berlin"), (5, 5));
        let view = f.state.reservation(&rid(2)).ok().flatten().unwrap_or_else(|| panic!("missing"));
        assert_eq!(view.lines.len(), 1);
        assert_eq!(view.lines[0].quantity, 5);
    }

    #[test]
    fn the_last_unit_goes_to_exactly_one_of_two_racing_holds() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 1, 0);
        let applied = f.run(vec![
            hold(rid(1), &[("SKU-1", "berlin", 1)], 60_000, None),
            hold(rid(2), &[("SKU-1", "berlin", 1)], 60_000, None),
        ]);
        assert!(matches!(applied.outcomes[0], Outcome::Held { .. }));
        assert_eq!(applied.outcomes[1].refusal().map(Refusal::code), Some("insufficient_stock"));
        assert_eq!(f.levels("SKU-1", "berlin"), (1, 1));
    }

    #[test]
    fn a_retried_hold_answers_the_first_and_never_holds_twice() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let first = f.hold(1, &[("SKU-1", "berlin", 3)]);
        let again = f.hold(1, &[("SKU-1", "berlin", 3)]);
        let (
            Outcome::Held { reservation: a, replayed: false, lines: first_lines, .. },
            Outcome::Held { reservation: b, replayed: true, lines: again_lines, .. },
        ) = (first, again)
        else {
            panic!("retry did not replay");
        };
        assert_eq!(a, b);
        assert_eq!(first_lines, again_lines);
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 3));
    }

    #[test]
    fn a_hold_with_a_known_idempotency_key_replays_the_first_reservation() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let key = IdempotencyKey::new("order-77").ok();
        f.one(hold(rid(1), &[("SKU-1", "berlin", 3)], 60_000, key.clone()));
        let retry = f.one(hold(rid(2), &[("SKU-1", "berlin", 3)], 60_000, key));
        assert!(matches!(retry, Outcome::Held { ref reservation, replayed: true, .. } if reservation.id == rid(1)));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 3));
        assert!(f.state.find_reservation(&rid(2)).is_none());
    }

    #[test]
    fn a_reused_id_with_other_lines_is_refused() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 3)]);
        assert_eq!(f.hold(1, &[("SKU-1", "berlin", 4)]), Outcome::Refused(Refusal::ReservationIdInUse));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 3));
    }

    #[test]
    fn a_retry_with_its_lines_in_another_order_replays() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-2", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 3), ("SKU-2", "berlin", 1)]);
        let retry = f.hold(1, &[("SKU-2", "berlin", 1), ("SKU-1", "berlin", 1), ("SKU-1", "berlin", 2)]);
        assert!(matches!(retry, Outcome::Held { replayed: true, .. }), "{retry:?}");
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 3));
    }

    #[test]
    fn hold_refuses_deadlines_in_the_past_or_too_far() {
        let mut f = Fixture::with_limits(Limits { hold_ttl_max_ms: 10_000, ..Limits::default() });
        f.stock("SKU-1", "berlin", 10, 0);
        let mut past = hold(rid(1), &[("SKU-1", "berlin", 1)], 60_000, None);
        let mut far = past.clone();
        if let Command::Hold(hold) = &mut past {
            hold.deadline = Deadline::AtMs(1_000);
        }
        if let (Command::Hold(hold), Command::Hold(far)) = (&past, &mut far) {
            far.id = rid(2);
            far.deadline = Deadline::AfterMs(10_001);
            assert_eq!(hold.deadline, Deadline::AtMs(1_000));
        }
        assert_eq!(f.one(past), Outcome::Refused(Refusal::DeadlineInPast { now_ms: 1_000, deadline_ms: 1_000 }));
        assert_eq!(f.one(far), Outcome::Refused(Refusal::DeadlineTooFar { deadline_ms: 11_001, latest_ms: 11_000 }));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0));
    }

    #[test]
    fn hold_refuses_bad_input_without_touching_stock() {
        let mut f = Fixture::with_limits(Limits { lines_per_hold_max: 2, ..Limits::default() });
        f.stock("SKU-1", "berlin", 10, 0);
        let none = hold(rid(1), &[], 1, None);
        assert_eq!(f.one(none).refusal().map(Refusal::code), Some("no_lines"));
        let many = hold(rid(1), &[("SKU-1", "berlin", 1); 3], 60_000, None);
        assert_eq!(f.one(many).refusal().map(Refusal::code), Some("too_many_lines"));
        let mut zero_ttl = hold(rid(1), &[("SKU-1", "berlin", 1)], 60_000, None);
        if let Command::Hold(hold) = &mut zero_ttl {
            hold.deadline = Deadline::AfterMs(0);
        }
        assert_eq!(f.one(zero_ttl).refusal().map(Refusal::code), Some("quantity_zero"));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0));
    }

    #[test]
    fn a_full_shard_refuses_new_holds() {
        let mut f = Fixture::with_limits(Limits { live_holds_per_shard_max: 1, ..Limits::default() });
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 1)]);
        assert_eq!(
            f.hold(2, &[("SKU-1", "berlin", 1)]),
            Outcome::Refused(Refusal::ShardFull { bound: Bound::LiveHoldsPerShard, max: 1 })
        );
    }

    #[test]
    fn hold_with_confirm_sells_at_once() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let mut command = hold(rid(1), &[("SKU-1", "berlin", 4)], 60_000, None);
        if let Command::Hold(hold) = &mut command {
            hold.confirm = true;
        }
        let outcome = f.one(command);
        assert!(
            matches!(outcome, Outcome::Confirmed { ref reservation, replayed: false, ref lines, idempotency_key: None } if reservation.state == ReservationState::Confirmed && *lines == vec![line("SKU-1", "berlin", 4)])
        );
        assert_eq!(f.levels("SKU-1", "berlin"), (6, 0));
    }

    #[test]
    fn hold_with_confirm_answers_its_idempotency_key() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let key = IdempotencyKey::new("order:77").ok();
        let mut command = hold(rid(1), &[("SKU-1", "berlin", 4)], 60_000, key.clone());
        if let Command::Hold(hold) = &mut command {
            hold.confirm = true;
        }
        let outcome = f.one(command);
        assert!(matches!(outcome, Outcome::Confirmed { ref idempotency_key, .. } if *idempotency_key == key));
    }

    #[test]
    fn holding_the_last_units_crosses_to_out_of_stock() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 3, 1);
        let applied = f.run(vec![hold(rid(1), &[("SKU-1", "berlin", 3)], 60_000, None)]);
        let kinds: Vec<_> = applied.events.iter().map(|e| e.kind).collect();
        assert!(matches!(kinds[0], EventKind::StockChanged { cause: Cause::Hold(_), .. }));
        assert!(matches!(
            kinds[1],
            EventKind::ThresholdCrossed { from: Status::InStock, to: Status::OutOfStock, available: 0, .. }
        ));
        // Then the reservation's own event, for consumers.
        assert!(matches!(kinds[2], EventKind::ReservationHeld { .. }));
        assert_eq!(kinds.len(), 3);
    }

    // ----- allocation -----

    #[test]
    fn an_allocated_line_comes_from_the_most_available_warehouse() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 4, 0);
        f.stock("SKU-1", "paris", 10, 0);
        f.stock("SKU-1", "rome", 7, 0);
        assert_eq!(held_lines(f.hold_any(1, &[("SKU-1", None, 5)])), vec![line("SKU-1", "paris", 5)]);
        assert_eq!(f.levels("SKU-1", "paris"), (10, 5));
        assert_eq!((f.levels("SKU-1", "berlin"), f.levels("SKU-1", "rome")), ((4, 0), (7, 0)));
    }

    #[test]
    fn an_allocated_line_no_warehouse_can_fill_alone_is_split_in_order() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 4, 0);
        f.stock("SKU-1", "paris", 10, 0);
        f.stock("SKU-1", "rome", 6, 0);
        let lines = held_lines(f.hold_any(1, &[("SKU-1", None, 18)]));
        assert_eq!(lines, vec![line("SKU-1", "paris", 10), line("SKU-1", "rome", 6), line("SKU-1", "berlin", 2)]);
        assert_eq!(
            f.state.reservation(&rid(1)).ok().flatten().map(|view| view.lines),
            Some(lines),
            "stored as answered"
        );
        assert_eq!(f.levels("SKU-1", "berlin"), (4, 2));
    }

    #[test]
    fn equally_available_warehouses_are_taken_by_name() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "paris", 5, 0);
        f.stock("SKU-1", "oslo", 5, 0);
        f.stock("SKU-1", "berlin", 5, 0);
        assert_eq!(held_lines(f.hold_any(1, &[("SKU-1", None, 3)])), vec![line("SKU-1", "berlin", 3)]);
        // Now oslo and paris tie at 5, ahead of berlin's 2.
        let lines = held_lines(f.hold_any(2, &[("SKU-1", None, 11)]));
        assert_eq!(lines, vec![line("SKU-1", "oslo", 5), line("SKU-1", "paris", 5), line("SKU-1", "berlin", 1)]);
    }

    #[test]
    fn later_allocated_lines_see_what_earlier_lines_took_in_the_same_order() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-1", "paris", 8, 0);
        // The order is fixed before the first line: berlin (10), paris (8).
        // The second line finds 5 left in berlin and takes them first, then
        // 1 from paris, although paris has more left by then.
        let lines = held_lines(f.hold_any(1, &[("SKU-1", None, 5), ("SKU-1", None, 6)]));
        assert_eq!(lines, vec![line("SKU-1", "berlin", 10), line("SKU-1", "paris", 1)]);
    }

    #[test]
    fn a_short_allocated_line_reports_what_it_found_across_warehouses() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 2, 0);
        f.stock("SKU-1", "paris", 3, 0);
        f.stock("SKU-2", "berlin", 0, 0);
        f.stock("SKU-3", "berlin", 9, 0);
        let outcome = f.hold_any(
            1,
            &[("SKU-3", None, 1), ("SKU-1", None, 10), ("SKU-1", None, 1), ("SKU-2", None, 1), ("SKU-9", None, 1)],
        );
        assert_eq!(
            outcome,
            Outcome::Refused(Refusal::InsufficientStock {
                lines: vec![
                    // Found all 5 of paris and berlin, which line 2 then lacks.
                    ShortLine { line: 1, requested: 10, available: 5, exists: true },
                    ShortLine { line: 2, requested: 1, available: 0, exists: true },
                    ShortLine { line: 3, requested: 1, available: 0, exists: true },
                    ShortLine { line: 4, requested: 1, available: 0, exists: false },
                ]
            })
        );
        assert_eq!((f.levels("SKU-1", "berlin"), f.levels("SKU-1", "paris")), ((2, 0), (3, 0)));
        assert_eq!(f.levels("SKU-3", "berlin"), (9, 0), "nothing held");
        assert_eq!(f.state.live_holds(), 0);
    }

    #[test]
    fn fixed_and_allocated_lines_of_one_hold_share_the_stock() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-1", "paris", 8, 0);
        // berlin comes first (10 before the hold) but 5 of it are fixed by
        // line 1, so line 0 takes the other 5 and 2 from paris. (Choosing
        // first and summing after would have asked 12 of berlin's 10.)
        let lines = held_lines(f.hold_any(1, &[("SKU-1", None, 7), ("SKU-1", Some("berlin"), 5)]));
        assert_eq!(lines, vec![line("SKU-1", "berlin", 10), line("SKU-1", "paris", 2)]);
        assert_eq!((f.levels("SKU-1", "berlin"), f.levels("SKU-1", "paris")), ((10, 10), (8, 2)));
    }

    #[test]
    fn a_short_fixed_line_is_reported_beside_allocated_lines_that_fit() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 3, 0);
        f.stock("SKU-1", "paris", 1, 0);
        let outcome = f.hold_any(1, &[("SKU-1", None, 1), ("SKU-1", Some("berlin"), 5), ("SKU-1", Some("rome"), 1)]);
        assert_eq!(
            outcome,
            Outcome::Refused(Refusal::InsufficientStock {
                lines: vec![
                    ShortLine { line: 1, requested: 5, available: 3, exists: true },
                    ShortLine { line: 2, requested: 1, available: 0, exists: false },
                ]
            })
        );
        assert_eq!(f.state.live_holds(), 0);
    }

    #[test]
    fn an_allocated_hold_retried_after_the_stock_moved_replays_what_it_held() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-1", "paris", 4, 0);
        f.stock("SKU-2", "berlin", 10, 0);
        let request = [("SKU-1", None, 6), ("SKU-2", Some("berlin"), 1)];
        let first = held_lines(f.hold_any(1, &request));
        assert_eq!(first, vec![line("SKU-1", "berlin", 6), line("SKU-2", "berlin", 1)]);
        // Allocating now would choose paris.
        f.stock("SKU-1", "paris", 100, 0);
        let retry = f.hold_any(1, &request);
        assert!(matches!(retry, Outcome::Held { replayed: true, ref lines, .. } if *lines == first), "{retry:?}");
        // The stored lines fulfil a request that names their warehouses too.
        let named = f.hold_any(1, &[("SKU-1", Some("berlin"), 6), ("SKU-2", None, 1)]);
        assert!(matches!(named, Outcome::Held { replayed: true, .. }), "{named:?}");
        // Other quantities, other warehouses or a missing SKU are another request.
        for other in [
            vec![("SKU-1", None, 5), ("SKU-2", Some("berlin"), 1)],
            vec![("SKU-1", Some("paris"), 6), ("SKU-2", Some("berlin"), 1)],
            vec![("SKU-1", Some("berlin"), 5), ("SKU-1", None, 1), ("SKU-2", Some("berlin"), 2)],
            vec![("SKU-1", None, 6)],
            vec![("SKU-1", None, 6), ("SKU-2", Some("berlin"), 1), ("SKU-3", None, 1)],
        ] {
            assert_eq!(f.hold_any(1, &other), Outcome::Refused(Refusal::ReservationIdInUse), "{other:?}");
        }
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 6));
        assert_eq!(f.levels("SKU-1", "paris"), (100, 0));
    }

    #[test]
    fn an_allocated_hold_with_a_known_key_replays_whatever_it_asks() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let key = IdempotencyKey::new("cart-9").ok();
        f.one(hold_any(rid(1), &[("SKU-1", None, 2)], 60_000, key.clone()));
        let retry = f.one(hold_any(rid(2), &[("SKU-1", None, 3)], 60_000, key));
        assert!(
            matches!(retry, Outcome::Held { ref reservation, replayed: true, ref lines, .. } if reservation.id == rid(1) && *lines == vec![line("SKU-1", "berlin", 2)])
        );
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 2));
    }

    #[test]
    fn later_commands_answer_with_the_lines_as_held() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 2, 0);
        f.stock("SKU-1", "paris", 3, 0);
        let lines = held_lines(f.hold_any(1, &[("SKU-1", None, 4)]));
        assert_eq!(lines, vec![line("SKU-1", "paris", 3), line("SKU-1", "berlin", 1)]);
        let extended =
            f.one(Command::Extend(Extend { principal: None, id: rid(1), deadline: Deadline::AfterMs(90_000) }));
        assert!(matches!(extended, Outcome::Extended { lines: ref got, .. } if *got == lines), "{extended:?}");
        let confirmed = f.one(Command::Confirm(Confirm { principal: None, id: rid(1) }));
        assert!(matches!(confirmed, Outcome::Confirmed { replayed: false, lines: ref got, .. } if *got == lines));
        let again = f.one(Command::Confirm(Confirm { principal: None, id: rid(1) }));
        assert!(matches!(again, Outcome::Confirmed { replayed: true, lines: ref got, .. } if *got == lines));
        f.hold_any(2, &[("SKU-1", None, 1)]);
        let released = f.one(Command::Release(Release { principal: None, id: rid(2) }));
        assert!(
            matches!(released, Outcome::Released { lines: ref got, .. } if *got == vec![line("SKU-1", "berlin", 1)])
        );
    }

    #[test]
    fn a_confirmed_hold_forgotten_at_once_still_answers_its_lines() {
        let limits = Limits { terminal_retention_ms: 0, terminal_retained_max: 0, ..Limits::default() };
        let mut f = Fixture::with_limits(limits);
        f.stock("SKU-1", "berlin", 5, 0);
        let mut command = hold_any(rid(1), &[("SKU-1", None, 2)], 60_000, None);
        if let Command::Hold(hold) = &mut command {
            hold.confirm = true;
        }
        let outcome = f.one(command);
        assert!(matches!(outcome, Outcome::Confirmed { ref lines, .. } if *lines == vec![line("SKU-1", "berlin", 2)]));
        f.hold_any(2, &[("SKU-1", None, 1)]);
        let released = f.one(Command::Release(Release { principal: None, id: rid(2) }));
        assert!(matches!(released, Outcome::Released { ref lines, .. } if lines.len() == 1), "{released:?}");
        assert!(f.state.reservation(&rid(2)).ok().flatten().is_none(), "forgotten at once");
    }

    // ----- allocation rules: priority and split -----

    fn ruled(
        n: u64,
        lines: &[(&str, Option<&str>, u64)],
        order: AllocationOrder,
        list: &[&str],
        split: bool,
    ) -> Command {
        let Command::Hold(mut hold) = hold_any(rid(n), lines, 60_000, None) else { panic!("not a hold") };
        hold.allocation = Allocation::Rule(crate::cmd::AllocationRule {
            order,
            warehouse_priority: list.iter().map(|name| wh(name)).collect(),
            split,
        });
        Command::Hold(hold)
    }

    fn set_priority(f: &mut Fixture, sku: &str, list: &[&str]) {
        let command = Command::SetWarehousePriority(crate::cmd::SetWarehousePriority {
            sku: crate::testing::sku(sku),
            warehouses: Some(list.iter().map(|name| wh(name)).collect()),
        });
        assert!(matches!(f.one(command), Outcome::WarehousePrioritySet { .. }));
    }

    fn allocations_of(outcome: &Outcome) -> Vec<(u32, u32, u64)> {
        match outcome {
            Outcome::Held { allocations, .. } => allocations.iter().map(|a| (a.line, a.held, a.quantity)).collect(),
            other => panic!("not held: {other:?}"),
        }
    }

    #[test]
    fn priority_takes_the_skus_list_order_before_availability() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 4, 0);
        f.stock("SKU-1", "paris", 10, 0);
        f.stock("SKU-1", "rome", 7, 0);
        set_priority(&mut f, "SKU-1", &["rome", "berlin"]);
        let outcome = f.one(ruled(1, &[("SKU-1", None, 12)], AllocationOrder::Priority, &[], true));
        // rome (7), berlin (4), then the unlisted paris for the last unit.
        assert_eq!(
            held_lines(outcome.clone()),
            vec![line("SKU-1", "rome", 7), line("SKU-1", "berlin", 4), line("SKU-1", "paris", 1)]
        );
        assert_eq!(allocations_of(&outcome), vec![(0, 0, 7), (0, 1, 4), (0, 2, 1)]);
    }

    #[test]
    fn a_requests_priority_list_overrides_the_skus() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 4, 0);
        f.stock("SKU-1", "paris", 10, 0);
        set_priority(&mut f, "SKU-1", &["paris"]);
        // "oslo" stocks nothing of SKU-1: skipped.
        let outcome = f.one(ruled(1, &[("SKU-1", None, 3)], AllocationOrder::Priority, &["oslo", "berlin"], true));
        assert_eq!(held_lines(outcome), vec![line("SKU-1", "berlin", 3)]);
    }

    #[test]
    fn priority_without_any_list_is_most_available() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 4, 0);
        f.stock("SKU-1", "paris", 10, 0);
        let outcome = f.one(ruled(1, &[("SKU-1", None, 3)], AllocationOrder::Priority, &[], true));
        assert_eq!(held_lines(outcome), vec![line("SKU-1", "paris", 3)]);
    }

    #[test]
    fn without_split_a_line_comes_whole_from_the_first_warehouse_that_has_it() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        f.stock("SKU-1", "paris", 10, 0);
        let outcome = f.one(ruled(
            1,
            &[("SKU-1", None, 8), ("SKU-1", None, 3)],
            AllocationOrder::Priority,
            &["berlin", "paris"],
            false,
        ));
        // berlin cannot give 8: paris does; berlin then gives the 3.
        assert_eq!(held_lines(outcome.clone()), vec![line("SKU-1", "paris", 8), line("SKU-1", "berlin", 3)]);
        assert_eq!(allocations_of(&outcome), vec![(0, 0, 8), (1, 1, 3)]);
        assert_eq!((f.levels("SKU-1", "berlin"), f.levels("SKU-1", "paris")), ((5, 3), (10, 8)));
    }

    #[test]
    fn without_split_a_line_no_warehouse_can_fill_alone_is_short_with_the_best_single_warehouse() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        f.stock("SKU-1", "paris", 6, 0);
        let outcome =
            f.one(ruled(1, &[("SKU-1", None, 9), ("SKU-1", None, 6)], AllocationOrder::MostAvailable, &[], false));
        // 11 units in all, but no warehouse has 9; the short line takes
        // nothing, so the next line still finds paris's 6.
        assert_eq!(
            outcome,
            Outcome::Refused(Refusal::InsufficientStock {
                lines: vec![ShortLine { line: 0, requested: 9, available: 6, exists: true }]
            })
        );
        assert_eq!((f.levels("SKU-1", "berlin"), f.levels("SKU-1", "paris")), ((5, 0), (6, 0)));
        // With split, the same 9 are granted across both.
        let split = f.one(ruled(2, &[("SKU-1", None, 9)], AllocationOrder::MostAvailable, &[], true));
        assert_eq!(held_lines(split), vec![line("SKU-1", "paris", 6), line("SKU-1", "berlin", 3)]);
    }

    #[test]
    fn a_priority_list_naming_a_warehouse_twice_is_refused() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        let outcome =
            f.one(ruled(1, &[("SKU-1", None, 1)], AllocationOrder::Priority, &["berlin", "paris", "berlin"], true));
        assert_eq!(outcome.refusal().map(Refusal::code), Some("invalid_warehouse_priority"));
        assert_eq!(f.levels("SKU-1", "berlin"), (5, 0));
    }

    #[test]
    fn allocations_list_only_lines_without_a_warehouse_and_a_replay_answers_them_again() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        f.stock("SKU-1", "paris", 10, 0);
        let lines = [("SKU-1", Some("berlin"), 2), ("SKU-1", None, 12)];
        let first = f.one(ruled(1, &lines, AllocationOrder::Priority, &["berlin"], true));
        assert_eq!(held_lines(first.clone()), vec![line("SKU-1", "berlin", 5), line("SKU-1", "paris", 9)]);
        assert_eq!(allocations_of(&first), vec![(1, 0, 3), (1, 1, 9)]);
        let again = f.one(ruled(1, &lines, AllocationOrder::Priority, &["berlin"], true));
        let Outcome::Held { replayed: true, allocations, .. } = &again else { panic!("{again:?}") };
        assert_eq!(
            allocations_of(&first),
            allocations.iter().map(|a| (a.line, a.held, a.quantity)).collect::<Vec<_>>()
        );
    }
}
