//! `MoveQuantity`: move units of an item from one quantity state to another
//! (Shopify's `inventoryMoveQuantities`).
//!
//! Between on-hand states (`available`, `safety_stock`, `damaged`,
//! `quality_control`) a move changes neither `on_hand` nor `reserved`, only
//! which part of `on_hand` the units count in: found broken is
//! `available → damaged`, passed inspection `quality_control → available`.
//! Out of `incoming` a move receives the units: `on_hand` grows by them (a
//! `receive` movement in the item's history). Nothing moves into
//! `incoming`, and nothing moves to the state it comes from (400
//! `invalid_state`). Writing damaged units off is an adjustment, as before.
//!
//! The source must hold the units: for `available`, what is on hand and
//! neither reserved nor kept back. Every move is a `StockChanged` event
//! with `Cause::Move`, so the ledger records it as a `move`.

use rkyv::{Archive, Deserialize, Serialize};

use super::check_provenance;
use crate::error::{Corrupt, Field, InputError};
use crate::event::Cause;
use crate::ids::{Note, Principal, QUANTITY_MAX, Quantity, Reference, Sku, Warehouse};
use crate::item::MovementReason;
use crate::outcome::{Outcome, Refusal};
use crate::state::{Change, Emitter, ShardState};
use crate::states::QuantityState;

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct MoveQuantity {
    pub sku: Sku,
    pub warehouse: Warehouse,
    pub from: QuantityState,
    pub to: QuantityState,
    pub quantity: Quantity,
    pub principal: Option<Principal>,
    /// Why, in the caller's words: recorded in the ledger.
    pub note: Option<Note>,
    /// The caller's document (inspection report, delivery note).
    pub reference: Option<Reference>,
}

impl MoveQuantity {
    pub fn validate(&self) -> Result<(), InputError> {
        self.sku.check()?;
        self.warehouse.check()?;
        self.quantity.check(Field::Quantity)?;
        if self.from == self.to || self.to == QuantityState::Incoming {
            return Err(InputError::BadMove { from: self.from, to: self.to });
        }
        check_provenance(self.principal.as_ref(), self.note.as_ref(), self.reference.as_ref())
    }
}

pub(super) fn apply(state: &mut ShardState, command: &MoveQuantity, emitter: &mut Emitter) -> Result<Outcome, Corrupt> {
    let Some(id) = state.find_item(command.sku.as_str(), command.warehouse.as_str()) else {
        return Ok(Refusal::ItemNotFound.into());
    };
    let quantity = command.quantity.get();
    let item = state.item(id);
    let mut levels = item.levels();
    let has = levels.get(command.from).unwrap_or_else(|| item.available());
    if has < quantity {
        return Ok(Refusal::StateShort { state: command.from, requested: quantity, has }.into());
    }
    let receiving = !command.from.is_on_hand();
    let on_hand = if receiving { item.on_hand + quantity } else { item.on_hand };
    // Every level but `incoming` is at most `on_hand`, so checking it
    // bounds them all.
    if on_hand > QUANTITY_MAX {
        return Ok(Refusal::QuantityOverflow { max: QUANTITY_MAX }.into());
    }
    if let Some(level) = levels.get_mut(command.from) {
        *level -= quantity;
    }
    if let Some(level) = levels.get_mut(command.to) {
        *level += quantity;
    }
    let before = state.before(id);
    let who = state.who(command.principal.as_ref());
    let item = state.item_mut(id);
    item.on_hand = on_hand;
    item.set_levels(levels);
    let change = Change {
        cause: Cause::Move { from: command.from, to: command.to, quantity },
        movement: receiving.then_some((MovementReason::Receive, who)),
        created: false,
    };
    state.finish_change(id, before, change, emitter);
    // New stock goes to backorders first (`ShardState::fill_backorders`).
    state.fill_backorders(emitter);
    Ok(Outcome::Moved { item: Box::new(state.item_view(id)?) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::event::EventKind;
    use crate::item::Status;
    use crate::testing::{Fixture, move_quantity, upsert_item};

    fn moving(from: QuantityState, to: QuantityState, quantity: u64) -> Command {
        move_quantity("SKU-1", "berlin", from, to, quantity)
    }

    fn item_of(outcome: &Outcome) -> crate::outcome::ItemView {
        match outcome {
            Outcome::Moved { item } => (**item).clone(),
            other => panic!("not moved: {other:?}"),
        }
    }

    use QuantityState::{Available, Damaged, Incoming, QualityControl, SafetyStock};

    #[test]
    fn moving_available_units_to_damaged_keeps_on_hand_and_lowers_available() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let item = item_of(&f.one(moving(Available, Damaged, 3)));
        assert_eq!((item.on_hand, item.available, item.states.damaged), (10, 7, 3));
        let item = item_of(&f.one(moving(Damaged, QualityControl, 2)));
        assert_eq!((item.available, item.states.damaged, item.states.quality_control), (7, 1, 2));
        let item = item_of(&f.one(moving(QualityControl, Available, 2)));
        assert_eq!((item.on_hand, item.available, item.states.quality_control), (10, 9, 0));
        assert_eq!(item.version, 4);
    }

    #[test]
    fn a_move_from_a_state_with_too_few_units_is_refused_and_changes_nothing() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 8)]);
        assert_eq!(
            f.one(moving(Available, Damaged, 3)),
            Outcome::Refused(Refusal::StateShort { state: Available, requested: 3, has: 2 })
        );
        assert_eq!(
            f.one(moving(Damaged, Available, 1)),
            Outcome::Refused(Refusal::StateShort { state: Damaged, requested: 1, has: 0 })
        );
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 8));
        assert_eq!(f.state.get_item("SKU-1", "berlin").ok().flatten().map(|i| i.version), Some(2));
    }

    #[test]
    fn moving_incoming_units_in_receives_them() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 2, 0);
        f.one(Command::SetStates(Box::new(crate::cmd::SetStates {
            incoming: Some(5),
            ..crate::cmd::SetStates::keep(upsert_item("SKU-1", "berlin"))
        })));
        let item = item_of(&f.one(moving(Incoming, QualityControl, 4)));
        assert_eq!((item.on_hand, item.available, item.states.incoming, item.states.quality_control), (6, 2, 1, 4));
        let history = f.state.history("SKU-1", "berlin", 1).ok().flatten().unwrap_or_default();
        assert_eq!((history[0].reason, history[0].delta), (MovementReason::Receive, 4));
    }

    #[test]
    fn moves_to_the_same_state_or_into_incoming_are_bad_input() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        for (from, to) in [(Damaged, Damaged), (Available, Incoming), (Incoming, Incoming)] {
            let outcome = f.one(moving(from, to, 1));
            assert_eq!(outcome.refusal().map(Refusal::code), Some("invalid_state"), "{from} -> {to}");
        }
    }

    #[test]
    fn a_move_of_a_missing_item_is_refused() {
        let mut f = Fixture::new();
        assert_eq!(f.one(moving(Available, Damaged, 1)), Outcome::Refused(Refusal::ItemNotFound));
    }

    #[test]
    fn every_move_is_a_stock_event_and_status_follows_available() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 2);
        let applied = f.run(vec![moving(Available, SafetyStock, 3), moving(Available, Damaged, 2)]);
        let moves: Vec<Cause> = applied
            .events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::StockChanged { cause, levels, .. } => {
                    assert_eq!((levels.on_hand_before, levels.on_hand_after), (5, 5));
                    Some(cause)
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            moves,
            vec![
                Cause::Move { from: Available, to: SafetyStock, quantity: 3 },
                Cause::Move { from: Available, to: Damaged, quantity: 2 }
            ]
        );
        let crossings: Vec<(Status, Status)> = applied
            .events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::ThresholdCrossed { from, to, .. } => Some((from, to)),
                _ => None,
            })
            .collect();
        assert_eq!(crossings, vec![(Status::InStock, Status::LowStock), (Status::LowStock, Status::OutOfStock)]);
    }
}
