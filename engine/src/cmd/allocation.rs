//! Allocation rules for hold lines without a warehouse (issue 17 item 5):
//! the order a SKU's warehouses are tried in, and whether one line may be
//! split across several of them. `hold.rs` runs the allocation; this file
//! holds the rule's types, the order's ranks, and the attribution a replay
//! answers.
//!
//! The two orders follow Saleor's allocation strategies:
//! * `MostAvailable` is Saleor's `prioritize_high_stock`: most available
//!   first (available as it was before the hold), ties by warehouse name.
//! * `Priority` is Saleor's `prioritize_sorting_order`: the warehouses in
//!   the order of a list, the request's if it names one, else the SKU's
//!   (`SetWarehousePriority`). Warehouses the list does not name come after
//!   those it names, most available first, ties by name, so a list needs
//!   not name every warehouse and a new warehouse is still used. A SKU with
//!   no list and a request with none: the same as `MostAvailable`. Names in
//!   a request's list that do not stock the SKU are skipped for it (one
//!   request list serves every SKU of the request).
//!
//! `split` (default true, as before): a line may take units from several
//! warehouses, along the order. With `split` false each line comes whole
//! from one warehouse, the first along the order that has enough left for
//! it; if none has, the line is short, with `available` the most that any
//! one warehouse had left for it, and it takes nothing (Saleor always
//! splits; not splitting is for shops that ship each line from one place).

use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::Warehouse;
use crate::outcome::{Allocated, LineView, Refusal};

use super::HoldLine;

/// The order a SKU's warehouses are tried in (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum AllocationOrder {
    MostAvailable,
    Priority,
}

/// A rule with its options (module docs).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct AllocationRule {
    pub order: AllocationOrder,
    /// The request's warehouse order, most preferred first; overrides the
    /// SKU's when not empty. Used by `Priority` only.
    pub warehouse_priority: Vec<Warehouse>,
    /// Whether one line may take units from several warehouses.
    pub split: bool,
}

/// Checks a warehouse priority list: at most `max` names, none twice.
/// Lists are short (`max` is `warehouses_per_shard_max`, and the API's own
/// bound is far below), so the quadratic scan allocates nothing.
pub(crate) fn check_priority_list<'a>(
    names: impl ExactSizeIterator<Item = &'a str> + Clone,
    max: u16,
) -> Result<(), Refusal> {
    if names.len() > usize::from(max) {
        return Err(Refusal::InvalidWarehousePriority {
            reason: format!("the list names {} warehouses; the maximum is {max}", names.len()),
        });
    }
    for (index, name) in names.clone().enumerate() {
        if names.clone().take(index).any(|earlier| earlier == name) {
            return Err(Refusal::InvalidWarehousePriority { reason: format!("warehouse {name} is listed twice") });
        }
    }
    Ok(())
}

/// The rank of `warehouse` in a priority list: its position, or past
/// every listed one when the list does not name it.
pub(crate) fn rank<'a>(list: impl Iterator<Item = &'a str>, warehouse: &str) -> u32 {
    let mut position = 0u32;
    for name in list {
        if name == warehouse {
            return position;
        }
        position = position.saturating_add(1);
    }
    u32::MAX
}

/// The allocations a replay answers (and the server shows for a hold
/// confirmed at once, whose outcome is the confirm's): the reservation's
/// `lines` attributed to the request's lines without a warehouse. Lines
/// with a warehouse take their own quantities from their items first. Then
/// each line without one, in request order, takes from its SKU's lines in
/// the reservation's order: the first with enough left when `split` is
/// false, else greedily along them. This is what the hold answered
/// whenever it had at most one line without a warehouse per SKU; with
/// several, the units per warehouse are the same but how they divide among
/// those lines may differ. A line the lines cannot fill (a replay by
/// idempotency key of other lines) lists what was found.
pub fn attribute(request: &[HoldLine], lines: &[LineView], split: bool) -> Vec<Allocated> {
    let mut left: Vec<u64> = lines.iter().map(|line| line.quantity).collect();
    for line in request {
        let Some(warehouse) = &line.warehouse else { continue };
        let same = |view: &LineView| view.sku == line.sku.as_str() && view.warehouse == warehouse.as_str();
        if let Some(h) = lines.iter().position(same) {
            left[h] = left[h].saturating_sub(line.quantity.get());
        }
    }
    let mut allocated = Vec::new();
    for (index, line) in request.iter().enumerate() {
        if line.warehouse.is_some() {
            continue;
        }
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let mut wanted = line.quantity.get();
        let of_sku = |h: &usize| lines[*h].sku == line.sku.as_str();
        if !split && let Some(h) = (0..lines.len()).filter(of_sku).find(|&h| left[h] >= wanted) {
            left[h] -= wanted;
            allocated.push(Allocated { line: index, held: u32::try_from(h).unwrap_or(u32::MAX), quantity: wanted });
            continue;
        }
        for h in (0..lines.len()).filter(of_sku) {
            let quantity = wanted.min(left[h]);
            if quantity == 0 {
                continue;
            }
            left[h] -= quantity;
            wanted -= quantity;
            allocated.push(Allocated { line: index, held: u32::try_from(h).unwrap_or(u32::MAX), quantity });
        }
    }
    allocated
}
