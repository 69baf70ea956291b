//! Commands: one file per command, each with the same shape — the command's
//! fields, `validate` (input rules, no state), and `apply` (state rules, then
//! the change, then the outcome).
//!
//! `apply` functions check everything before they write anything, so a refused
//! command changes nothing. They run inside `ShardState::apply`, after the
//! shard's clock has moved to the entry's time and due holds have expired.

mod adjust;
mod allocation;
mod confirm;
mod delete;
mod extend;
mod hold;
mod move_quantity;
mod release;
mod set_bundle;
mod set_customer_limit;
mod set_limits;
mod set_product;
mod set_states;
mod set_warehouse_priority;
mod transfer;
mod upsert;

pub use adjust::{Adjust, AdjustReason};
pub(crate) use allocation::check_priority_list;
pub use allocation::{AllocationOrder, AllocationRule, attribute};
pub use confirm::{Confirm, ConfirmLine, ConfirmPart, units_sold};
pub use delete::{DeleteItem, DeleteSku};
pub use extend::Extend;
pub(crate) use hold::HoldScratch;
pub use hold::{Allocation, Deadline, Hold, HoldLine};
pub use move_quantity::MoveQuantity;
pub use release::Release;
pub use set_bundle::SetBundle;
pub use set_customer_limit::SetCustomerLimit;
pub use set_limits::SetLimits;
pub use set_product::SetProduct;
pub use set_states::SetStates;
pub use set_warehouse_priority::SetWarehousePriority;
pub use transfer::Transfer;
pub use upsert::{AttrUpdate, Expect, UpsertItem};

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{Corrupt, InputError};
use crate::ids::{Note, Principal, Reference, ReservationId};
use crate::outcome::{Outcome, Refusal};
use crate::reservation::ReservationState;
use crate::state::{Emitter, ShardState};

/// A change to one shard, applied atomically by its actor.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Command {
    UpsertItem(UpsertItem),
    Adjust(Adjust),
    Transfer(Transfer),
    Hold(Hold),
    Confirm(Confirm),
    Release(Release),
    Extend(Extend),
    SetLimits(SetLimits),
    SetCustomerLimit(SetCustomerLimit),
    /// A confirm that sells fewer units than held (`confirm.rs`).
    ConfirmPart(ConfirmPart),
    /// Moves log time only; the leader proposes it when a deadline is due and
    /// nothing else flows, so holds expire on time without traffic.
    Tick,
    /// Defines or removes a bundle (`bundle.rs`).
    SetBundle(SetBundle),
    /// Sets a SKU's product record (`set_product.rs`).
    SetProduct(SetProduct),
    /// Deletes one item with no live holds (`delete.rs`).
    DeleteItem(DeleteItem),
    /// Deletes a SKU's product and every item of it (`delete.rs`).
    DeleteSku(DeleteSku),
    /// A SKU's warehouse priority for `Priority` allocation
    /// (`set_warehouse_priority.rs`).
    SetWarehousePriority(SetWarehousePriority),
    /// An upsert that also sets safety stock and incoming (`set_states.rs`).
    /// Boxed: inline it would widen every archived command (and so every
    /// batch already in a log), being the largest.
    SetStates(Box<SetStates>),
    /// Units moved between quantity states (`move_quantity.rs`).
    MoveQuantity(MoveQuantity),
}

impl Command {
    /// The SKU whose shard must apply this command, if it names one.
    pub fn routing_sku(&self) -> Option<&str> {
        match self {
            Command::UpsertItem(c) => Some(c.sku.as_str()),
            Command::Adjust(c) => Some(c.sku.as_str()),
            Command::Transfer(c) => Some(c.sku.as_str()),
            Command::Hold(c) => c.lines.first().map(|line| line.sku.as_str()),
            Command::SetCustomerLimit(c) => Some(c.sku.as_str()),
            Command::SetBundle(c) => Some(c.sku.as_str()),
            Command::SetProduct(c) => Some(c.sku.as_str()),
            Command::DeleteItem(c) => Some(c.sku.as_str()),
            Command::DeleteSku(c) => Some(c.sku.as_str()),
            Command::SetWarehousePriority(c) => Some(c.sku.as_str()),
            Command::SetStates(c) => Some(c.upsert.sku.as_str()),
            Command::MoveQuantity(c) => Some(c.sku.as_str()),
            Command::Confirm(_)
            | Command::ConfirmPart(_)
            | Command::Release(_)
            | Command::Extend(_)
            | Command::SetLimits(_)
            | Command::Tick => None,
        }
    }

    /// Who made the command and the caller's note and document reference,
    /// as the ledger records them.
    pub fn provenance(&self) -> (Option<&Principal>, Option<&Note>, Option<&Reference>) {
        match self {
            Command::UpsertItem(c) => (c.principal.as_ref(), None, None),
            Command::Adjust(c) => (c.principal.as_ref(), c.note.as_ref(), c.reference.as_ref()),
            Command::Transfer(c) => (c.principal.as_ref(), c.note.as_ref(), c.reference.as_ref()),
            Command::Hold(c) => (c.principal.as_ref(), None, None),
            Command::Confirm(c) => (c.principal.as_ref(), None, None),
            Command::ConfirmPart(c) => (c.principal.as_ref(), None, None),
            Command::Release(c) => (c.principal.as_ref(), None, None),
            Command::Extend(c) => (c.principal.as_ref(), None, None),
            Command::SetProduct(c) => (c.principal.as_ref(), None, None),
            Command::DeleteItem(c) => (c.principal.as_ref(), None, None),
            Command::DeleteSku(c) => (c.principal.as_ref(), None, None),
            Command::SetStates(c) => (c.upsert.principal.as_ref(), None, None),
            Command::MoveQuantity(c) => (c.principal.as_ref(), c.note.as_ref(), c.reference.as_ref()),
            Command::SetLimits(_)
            | Command::SetCustomerLimit(_)
            | Command::SetBundle(_)
            | Command::SetWarehousePriority(_)
            | Command::Tick => (None, None, None),
        }
    }

    /// Input rules that need no state. Run by `apply` too, because a command
    /// read from the log or a peer was built without the constructors.
    pub fn validate(&self, lines_per_hold_max: u32) -> Result<(), InputError> {
        match self {
            Command::UpsertItem(c) => c.validate(),
            Command::Adjust(c) => c.validate(),
            Command::Transfer(c) => c.validate(),
            Command::Hold(c) => c.validate(lines_per_hold_max),
            Command::Extend(c) => c.validate(),
            Command::SetLimits(c) => c.validate(),
            Command::SetCustomerLimit(c) => c.validate(),
            Command::ConfirmPart(c) => c.validate(),
            Command::SetBundle(c) => c.validate(),
            Command::SetProduct(c) => c.validate(),
            Command::DeleteItem(c) => c.validate(),
            Command::DeleteSku(c) => c.validate(),
            Command::SetWarehousePriority(c) => c.validate(),
            Command::SetStates(c) => c.validate(),
            Command::MoveQuantity(c) => c.validate(),
            Command::Confirm(Confirm { principal, .. }) | Command::Release(Release { principal, .. }) => {
                principal.as_ref().map_or(Ok(()), Principal::check)
            }
            Command::Tick => Ok(()),
        }
    }
}

/// The input rules of what the ledger records with a movement: the
/// principal, the caller's note and document reference, each if present.
fn check_provenance(
    principal: Option<&Principal>,
    note: Option<&Note>,
    reference: Option<&Reference>,
) -> Result<(), InputError> {
    principal.map_or(Ok(()), Principal::check)?;
    note.map_or(Ok(()), Note::check)?;
    reference.map_or(Ok(()), Reference::check)
}

/// Ends a held reservation as `target` (confirm or release). Asking again
/// for the state it is already in answers the same (`replayed`); any other
/// terminal state is refused with its own code.
fn end_held(
    state: &mut ShardState,
    id: &ReservationId,
    target: ReservationState,
    sold: Option<&[u64]>,
    emitter: &mut Emitter,
) -> Result<Outcome, Corrupt> {
    let Some((slot, current)) = state.find_reservation(id).and_then(|slot| Some((slot, state.summary(slot)?))) else {
        return Ok(Refusal::ReservationNotFound.into());
    };
    if current.state != ReservationState::Held && current.state != target {
        return Ok(not_held(current.state).into());
    }
    // A confirm sells units: never those still waiting for stock.
    if target == ReservationState::Confirmed && current.state == ReservationState::Held {
        let backordered: u64 = state
            .reservation_at(slot)
            .map_or(0, |reservation| reservation.lines.as_slice().iter().map(|line| line.backordered).sum());
        if backordered > 0 {
            return Ok(Refusal::BackorderUnfilled { backordered }.into());
        }
    }
    // Read before ending: a reservation may be forgotten as it ends, when
    // the limits retain no terminal reservations (its lines are then the
    // held ones, or those sold). A corrupt name stops the shard first.
    let before = match (state.reservation_lines(slot)?, sold) {
        (Some(mut lines), Some(sold)) => {
            for (line, units) in lines.iter_mut().zip(sold) {
                line.quantity = *units;
            }
            lines.retain(|line| line.quantity > 0);
            Some(lines)
        }
        (lines, _) => lines,
    };
    let idempotency_key = state.reservation_key(slot);
    let (reservation, replayed) = if current.state == ReservationState::Held {
        match state.end_reservation(slot, target, sold, emitter) {
            Some(ended) => (ended, false),
            None => return Ok(Refusal::ReservationNotFound.into()),
        }
    } else {
        (current, true)
    };
    // The lines as they now stand: a partial confirm keeps what it sold.
    // (A reservation forgotten as it ended answers the lines it had.)
    let lines = match state.find_reservation(id) {
        Some(slot) => state.reservation_lines(slot)?,
        None => None,
    };
    let Some(lines) = lines.or(before) else {
        return Ok(Refusal::ReservationNotFound.into());
    };
    Ok(match target {
        ReservationState::Confirmed => Outcome::Confirmed { reservation, replayed, lines, idempotency_key },
        _ => Outcome::Released { reservation, replayed, lines, idempotency_key },
    })
}

/// Why a reservation that is no longer held cannot be changed.
fn not_held(state: ReservationState) -> Refusal {
    match state {
        ReservationState::Confirmed => Refusal::AlreadyConfirmed,
        ReservationState::Released => Refusal::AlreadyReleased,
        ReservationState::Expired | ReservationState::Held => Refusal::AlreadyExpired,
    }
}

/// Applies one command. The caller has advanced time and expired holds.
/// `Err` only when a lookup found the state corrupt: the shard must stop.
pub(crate) fn apply(state: &mut ShardState, command: &Command, emitter: &mut Emitter) -> Result<Outcome, Corrupt> {
    if let Err(error) = command.validate(state.limits().lines_per_hold_max) {
        return Ok(error.into());
    }
    if let Some(error) = state.wrong_shard(command) {
        return Ok(error.into());
    }
    let outcome = match command {
        Command::UpsertItem(c) => upsert::apply(state, c, emitter),
        Command::Adjust(c) => adjust::apply(state, c, emitter),
        Command::Transfer(c) => transfer::apply(state, c, emitter),
        Command::Hold(c) => hold::apply(state, c, emitter),
        Command::Confirm(c) => confirm::apply(state, c, emitter),
        Command::ConfirmPart(c) => confirm::apply_part(state, c, emitter),
        Command::Release(c) => release::apply(state, c, emitter),
        Command::Extend(c) => extend::apply(state, c, emitter),
        Command::SetLimits(c) => Ok(set_limits::apply(state, c)),
        Command::SetCustomerLimit(c) => Ok(set_customer_limit::apply(state, c)),
        Command::Tick => Ok(Outcome::Ticked),
        Command::SetBundle(c) => Ok(set_bundle::apply(state, c)),
        Command::SetProduct(c) => Ok(set_product::apply(state, c)),
        Command::DeleteItem(c) => delete::apply_item(state, c, emitter),
        Command::DeleteSku(c) => delete::apply_sku(state, c, emitter),
        Command::SetWarehousePriority(c) => Ok(set_warehouse_priority::apply(state, c)),
        Command::SetStates(c) => set_states::apply(state, c, emitter),
        Command::MoveQuantity(c) => move_quantity::apply(state, c, emitter),
    };
    // The commands that make stock available fill backorders before they
    // answer; this keeps the rule for any other path (a no-op otherwise).
    state.fill_backorders(emitter);
    outcome
}
