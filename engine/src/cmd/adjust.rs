//! `Adjust`: add to or take from `on_hand` by a signed delta, with a reason.
//!
//! Receipts, returns, write-offs, count corrections and offline sales all
//! come through here. An adjustment never takes `on_hand` below `reserved`
//! (held units stay sellable) plus the units kept back (safety stock,
//! damaged, quality control), nor above `QUANTITY_MAX`. A write-off for
//! damage (reason `damage`, negative delta) takes its units out of
//! `damaged` first, then out of `available`.

use rkyv::{Archive, Deserialize, Serialize};

use super::check_provenance;
use crate::error::{Corrupt, Field, InputError};
use crate::event::Cause;
use crate::ids::{Note, Principal, QUANTITY_MAX, Reference, Sku, Warehouse};
use crate::item::MovementReason;
use crate::outcome::{Outcome, Refusal};
use crate::state::{Change, Emitter, ShardState};

/// Why stock was adjusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum AdjustReason {
    Receive,
    Return,
    Damage,
    Loss,
    Count,
    Sale,
    Correction,
}

impl AdjustReason {
    pub const ALL: [AdjustReason; 7] = [
        AdjustReason::Receive,
        AdjustReason::Return,
        AdjustReason::Damage,
        AdjustReason::Loss,
        AdjustReason::Count,
        AdjustReason::Sale,
        AdjustReason::Correction,
    ];

    pub fn as_str(self) -> &'static str {
        self.movement().as_str()
    }

    pub fn movement(self) -> MovementReason {
        match self {
            AdjustReason::Receive => MovementReason::Receive,
            AdjustReason::Return => MovementReason::Return,
            AdjustReason::Damage => MovementReason::Damage,
            AdjustReason::Loss => MovementReason::Loss,
            AdjustReason::Count => MovementReason::Count,
            AdjustReason::Sale => MovementReason::Sale,
            AdjustReason::Correction => MovementReason::Correction,
        }
    }
}

impl std::str::FromStr for AdjustReason {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        AdjustReason::ALL.into_iter().find(|reason| reason.as_str() == text).ok_or(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Adjust {
    pub sku: Sku,
    pub warehouse: Warehouse,
    /// Units to add (positive) or take away (negative); never 0.
    pub delta: i64,
    pub reason: AdjustReason,
    pub principal: Option<Principal>,
    /// Why, in the caller's words: recorded in the ledger.
    pub note: Option<Note>,
    /// The caller's document (delivery note, count sheet): recorded in the ledger.
    pub reference: Option<Reference>,
}

impl Adjust {
    pub fn validate(&self) -> Result<(), InputError> {
        self.sku.check()?;
        self.warehouse.check()?;
        if self.delta == 0 {
            return Err(InputError::Zero { field: Field::Delta });
        }
        if self.delta.unsigned_abs() > QUANTITY_MAX {
            return Err(InputError::TooLarge {
                field: Field::Delta,
                value: self.delta.unsigned_abs(),
                max: QUANTITY_MAX,
            });
        }
        check_provenance(self.principal.as_ref(), self.note.as_ref(), self.reference.as_ref())
    }
}

pub(super) fn apply(state: &mut ShardState, command: &Adjust, emitter: &mut Emitter) -> Result<Outcome, Corrupt> {
    let Some(id) = state.find_item(command.sku.as_str(), command.warehouse.as_str()) else {
        return Ok(Refusal::ItemNotFound.into());
    };
    let item = state.item(id);
    let on_hand = match item.on_hand.checked_add_signed(command.delta) {
        Some(on_hand) if on_hand >= item.reserved => on_hand,
        _ => {
            return Ok(Refusal::BelowReserved { on_hand: item.on_hand, reserved: item.reserved }.into());
        }
    };
    if on_hand > QUANTITY_MAX {
        return Ok(Refusal::QuantityOverflow { max: QUANTITY_MAX }.into());
    }
    // A write-off for damage takes the units out of `damaged` first: that
    // is where broken units wait to be written off (`states.rs`).
    let mut levels = item.levels();
    if command.reason == AdjustReason::Damage && command.delta < 0 {
        levels.damaged -= levels.damaged.min(command.delta.unsigned_abs());
    }
    // Units kept back (safety stock, damaged, quality control) are on hand
    // too: an adjustment may not take them either.
    let unsellable = levels.unsellable();
    if on_hand - item.reserved < unsellable {
        return Ok(Refusal::BelowUnsellable { on_hand: item.on_hand, reserved: item.reserved, unsellable }.into());
    }
    let before = state.before(id);
    let who = state.who(command.principal.as_ref());
    let item = state.item_mut(id);
    item.on_hand = on_hand;
    item.set_levels(levels);
    let change = Change {
        cause: Cause::Adjust(command.reason),
        movement: Some((command.reason.movement(), who)),
        created: false,
    };
    state.finish_change(id, before, change, emitter);
    // New stock goes to backorders first (`ShardState::fill_backorders`).
    state.fill_backorders(emitter);
    Ok(Outcome::Adjusted { item: Box::new(state.item_view(id)?) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::event::EventKind;
    use crate::item::Status;
    use crate::testing::{Fixture, qty, sku, wh};

    fn adjust(delta: i64, reason: AdjustReason) -> Command {
        Command::Adjust(Adjust {
            note: None,
            reference: None,
            sku: sku("SKU-1"),
            warehouse: wh("berlin"),
            delta,
            reason,
            principal: Some(Principal::new("erp-sync").unwrap_or_else(|e| panic!("{e}"))),
        })
    }

    #[test]
    fn adjust_adds_and_takes_stock_with_a_reason() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let received = f.one(adjust(5, AdjustReason::Receive));
        assert!(matches!(received, Outcome::Adjusted { ref item } if item.on_hand == 15 && item.version == 2));
        let damaged = f.one(adjust(-3, AdjustReason::Damage));
        assert!(matches!(damaged, Outcome::Adjusted { ref item } if item.on_hand == 12));
        let history = f.state.history("SKU-1", "berlin", 2).ok().flatten().unwrap_or_default();
        assert_eq!(history[0].reason, MovementReason::Damage);
        assert_eq!((history[0].on_hand_before, history[0].on_hand_after, history[0].delta), (15, 12, -3));
        assert_eq!(history[0].who, "erp-sync");
        assert_eq!(history[1].reason, MovementReason::Receive);
    }

    #[test]
    fn a_damage_write_off_takes_the_damaged_units_first() {
        use crate::states::QuantityState;
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let moved = f.one(Command::MoveQuantity(crate::cmd::MoveQuantity {
            sku: sku("SKU-1"),
            warehouse: wh("berlin"),
            from: QuantityState::Available,
            to: QuantityState::Damaged,
            quantity: qty(3),
            principal: None,
            note: None,
            reference: None,
        }));
        assert!(!moved.is_refused(), "{moved:?}");
        let Outcome::Adjusted { item } = f.one(adjust(-2, AdjustReason::Damage)) else { panic!("not adjusted") };
        assert_eq!((item.on_hand, item.available, item.states.damaged), (8, 7, 1));
        // Past the damaged units, the rest comes out of available.
        let Outcome::Adjusted { item } = f.one(adjust(-3, AdjustReason::Damage)) else { panic!("not adjusted") };
        assert_eq!((item.on_hand, item.available, item.states.damaged), (5, 5, 0));
        // Other reasons leave damaged alone, and may not take it.
        f.one(Command::MoveQuantity(crate::cmd::MoveQuantity {
            sku: sku("SKU-1"),
            warehouse: wh("berlin"),
            from: QuantityState::Available,
            to: QuantityState::Damaged,
            quantity: qty(5),
            principal: None,
            note: None,
            reference: None,
        }));
        assert_eq!(f.one(adjust(-1, AdjustReason::Loss)).refusal().map(Refusal::code), Some("below_unsellable"));
    }

    #[test]
    fn adjust_of_a_missing_item_is_refused() {
        let mut f = Fixture::new();
        assert_eq!(f.one(adjust(5, AdjustReason::Receive)), Outcome::Refused(Refusal::ItemNotFound));
    }

    #[test]
    fn adjust_refuses_to_go_below_reserved() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 8)]);
        assert_eq!(
            f.one(adjust(-3, AdjustReason::Damage)),
            Outcome::Refused(Refusal::BelowReserved { on_hand: 10, reserved: 8 })
        );
        assert_eq!(
            f.one(adjust(-11, AdjustReason::Loss)),
            Outcome::Refused(Refusal::BelowReserved { on_hand: 10, reserved: 8 })
        );
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 8));
        assert!(matches!(f.one(adjust(-2, AdjustReason::Damage)), Outcome::Adjusted { .. }));
    }

    #[test]
    fn adjust_refuses_to_pass_the_maximum() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", QUANTITY_MAX - 1, 0);
        assert_eq!(
            f.one(adjust(2, AdjustReason::Receive)),
            Outcome::Refused(Refusal::QuantityOverflow { max: QUANTITY_MAX })
        );
    }

    #[test]
    fn adjust_refuses_a_zero_or_huge_delta_as_bad_input() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 1, 0);
        assert_eq!(f.one(adjust(0, AdjustReason::Count)).refusal().map(Refusal::code), Some("quantity_zero"));
        assert_eq!(
            f.one(adjust(i64::MIN, AdjustReason::Count)).refusal().map(Refusal::code),
            Some("quantity_too_large")
        );
    }

    #[test]
    fn adjust_to_zero_crosses_to_out_of_stock_once() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 2);
        let first = f.run(vec![adjust(-3, AdjustReason::Sale), adjust(-2, AdjustReason::Sale)]);
        let crossings: Vec<(Status, Status)> = first
            .events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::ThresholdCrossed { from, to, .. } => Some((from, to)),
                _ => None,
            })
            .collect();
        assert_eq!(crossings, vec![(Status::InStock, Status::LowStock), (Status::LowStock, Status::OutOfStock)]);
        let positions: Vec<u32> = first.events.iter().map(|e| e.id.position).collect();
        assert_eq!(positions, (0..positions.len()).map(|p| u32::try_from(p).unwrap_or(0)).collect::<Vec<_>>());
    }

    #[test]
    fn adjust_reasons_round_trip_through_their_names() {
        for reason in AdjustReason::ALL {
            assert_eq!(reason.as_str().parse::<AdjustReason>(), Ok(reason));
        }
        assert_eq!("teleport".parse::<AdjustReason>(), Err(()));
    }
}
