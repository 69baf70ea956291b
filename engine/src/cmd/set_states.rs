//! `SetStates`: an upsert that also sets an item's safety stock and its
//! incoming units (with their expected date) outright (`PUT` with those
//! members). Damaged and quality-control units are not set here: they only
//! change by moves (`move_quantity.rs`), which are movements.
//!
//! Applied as the upsert it wraps, with one more rule: reserved plus
//! unsellable (safety stock, damaged, quality control) never passes
//! `on_hand` (409 `below_unsellable`). A new command rather than new
//! fields of `UpsertItem`, so every upsert already in a log reads the same.

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{Corrupt, Field, InputError};
use crate::ids::check_level;
use crate::outcome::Outcome;
use crate::state::{Emitter, ShardState};
use crate::states::StateLevels;

use super::{AttrUpdate, UpsertItem};

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SetStates {
    pub upsert: UpsertItem,
    pub safety_stock: Option<u64>,
    pub incoming: Option<u64>,
    /// Unix ms the incoming units are expected.
    pub incoming_expected_at_ms: AttrUpdate<u64>,
    /// Units holds may take beyond stock (`backordered` never grows past
    /// it; lowering it below what is backordered only stops new ones).
    pub backorder_limit: Option<u64>,
}

impl SetStates {
    /// A command that keeps every state level: set the ones to change.
    pub fn keep(upsert: UpsertItem) -> Self {
        Self {
            upsert,
            safety_stock: None,
            incoming: None,
            incoming_expected_at_ms: AttrUpdate::Keep,
            backorder_limit: None,
        }
    }

    pub fn validate(&self) -> Result<(), InputError> {
        self.upsert.validate()?;
        if let Some(level) = self.safety_stock {
            check_level(Field::SafetyStock, level)?;
        }
        if let Some(level) = self.incoming {
            check_level(Field::Incoming, level)?;
        }
        if let Some(level) = self.backorder_limit {
            check_level(Field::BackorderLimit, level)?;
        }
        Ok(())
    }

    /// The levels after this command, from the item's current ones.
    pub(crate) fn resolve(&self, current: StateLevels) -> StateLevels {
        StateLevels {
            safety_stock: self.safety_stock.unwrap_or(current.safety_stock),
            incoming: self.incoming.unwrap_or(current.incoming),
            backorder_limit: self.backorder_limit.unwrap_or(current.backorder_limit),
            incoming_expected_at_ms: match self.incoming_expected_at_ms {
                AttrUpdate::Keep => current.incoming_expected_at_ms,
                AttrUpdate::Set(at_ms) => Some(at_ms),
                AttrUpdate::Clear => None,
            },
            ..current
        }
    }
}

pub(super) fn apply(state: &mut ShardState, command: &SetStates, emitter: &mut Emitter) -> Result<Outcome, Corrupt> {
    super::upsert::apply_with(state, &command.upsert, Some(command), emitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{AdjustReason, Command};
    use crate::ids::QUANTITY_MAX;
    use crate::item::Status;
    use crate::outcome::Refusal;
    use crate::testing::{Fixture, adjust, sku, upsert_item};

    fn set(safety_stock: Option<u64>, incoming: Option<u64>, on_hand: Option<u64>) -> Command {
        Command::SetStates(Box::new(SetStates {
            safety_stock,
            incoming,
            incoming_expected_at_ms: AttrUpdate::Set(1_800_000_000_000),
            ..SetStates::keep(UpsertItem { on_hand, ..upsert_item("SKU-1", "berlin") })
        }))
    }

    #[test]
    fn safety_stock_is_on_hand_but_never_available() {
        let mut f = Fixture::new();
        let Outcome::Upserted { item, created: true, .. } = f.one(set(Some(4), Some(20), Some(10))) else {
            panic!("not created");
        };
        assert_eq!((item.on_hand, item.available, item.states.safety_stock, item.states.incoming), (10, 6, 4, 20));
        assert_eq!(item.states.incoming_expected_at_ms, Some(1_800_000_000_000));
        // The hold sees 6, not 10.
        let refused = f.hold(1, &[("SKU-1", "berlin", 7)]);
        assert_eq!(refused.refusal().map(Refusal::code), Some("insufficient_stock"));
        assert!(!f.hold(2, &[("SKU-1", "berlin", 6)]).is_refused());
        assert_eq!(f.state.get_item("SKU-1", "berlin").ok().flatten().map(|i| i.status), Some(Status::OutOfStock));
    }

    #[test]
    fn safety_stock_cannot_take_what_is_reserved() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 8)]);
        assert_eq!(
            f.one(set(Some(3), None, None)),
            Outcome::Refused(Refusal::BelowUnsellable { on_hand: 10, reserved: 8, unsellable: 3 })
        );
        assert!(!f.one(set(Some(2), None, None)).is_refused());
        // Nor can an adjustment or a set of on_hand take the kept-back units.
        let adjust = adjust("SKU-1", "berlin", -1, AdjustReason::Loss);
        assert_eq!(f.one(adjust).refusal().map(Refusal::code), Some("below_unsellable"));
        let lower = Command::UpsertItem(UpsertItem { on_hand: Some(9), ..upsert_item("SKU-1", "berlin") });
        assert_eq!(f.one(lower).refusal().map(Refusal::code), Some("below_unsellable"));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 8));
    }

    #[test]
    fn setting_the_same_levels_changes_nothing() {
        let mut f = Fixture::new();
        f.one(set(Some(1), Some(2), Some(5)));
        let again = f.one(set(Some(1), Some(2), Some(5)));
        assert!(matches!(again, Outcome::Upserted { changed: false, ref item, .. } if item.version == 1));
        let cleared = f.one(Command::SetStates(Box::new(SetStates {
            safety_stock: Some(0),
            incoming: Some(0),
            incoming_expected_at_ms: AttrUpdate::Clear,
            ..SetStates::keep(upsert_item("SKU-1", "berlin"))
        })));
        assert!(matches!(cleared, Outcome::Upserted { changed: true, ref item, .. } if item.states.is_empty()));
    }

    /// Found by the `wal_frame` fuzz target (seed 0x88e44800b3e68929,
    /// input 2834): a refused `SetStates` for an item that did not exist
    /// (or had been deleted) left it created at version 0, breaking
    /// `check_invariants`. The level rules now run before the item exists.
    #[test]
    fn a_refused_set_creates_nothing_and_revives_no_deleted_item() {
        let mut f = Fixture::new();
        let refused = f.one(set(Some(11), None, Some(10)));
        assert_eq!(refused, Outcome::Refused(Refusal::BelowUnsellable { on_hand: 0, reserved: 0, unsellable: 11 }));
        assert_eq!(f.state.stats().items, 0);
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
        // Deleted, then a refused set: it stays deleted.
        f.stock("SKU-1", "berlin", 10, 0);
        let delete = Command::DeleteSku(crate::cmd::DeleteSku { sku: sku("SKU-1"), principal: None });
        assert!(matches!(f.one(delete), Outcome::Deleted { items: 1, .. }));
        assert!(f.one(set(Some(11), None, Some(10))).is_refused());
        assert_eq!(f.state.stats().items, 0);
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
        // And a valid one brings it back at version 1.
        let Outcome::Upserted { item, created: true, .. } = f.one(set(Some(4), None, Some(10))) else {
            panic!("not created");
        };
        assert_eq!((item.version, item.available), (1, 6));
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn levels_over_the_maximum_are_bad_input() {
        let mut f = Fixture::new();
        let outcome = f.one(set(None, Some(QUANTITY_MAX + 1), Some(1)));
        assert_eq!(outcome.refusal().map(Refusal::code), Some("quantity_too_large"));
        assert_eq!(f.state.stats().items, 0);
    }
}
