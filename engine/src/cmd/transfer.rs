//! `Transfer`: move units of one SKU between two of its warehouses, atomically.
//!
//! Both items live on the SKU's shard by construction, so one command moves
//! the stock with no saga. Only available units move (held units stay where
//! the shopper's hold is). A destination that does not exist yet is created,
//! with the source's name and price and a threshold of 0.

use rkyv::{Archive, Deserialize, Serialize};

use super::check_provenance;
use crate::error::{Corrupt, Field, InputError};
use crate::event::Cause;
use crate::ids::{Note, Principal, QUANTITY_MAX, Quantity, Reference, Sku, Warehouse};
use crate::item::MovementReason;
use crate::outcome::{Outcome, Refusal, ShortLine};
use crate::state::{Change, Emitter, ShardState};

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Transfer {
    pub sku: Sku,
    pub from: Warehouse,
    pub to: Warehouse,
    pub quantity: Quantity,
    pub principal: Option<Principal>,
    /// Why the units moved, in the caller's words: recorded in the ledger
    /// on both sides.
    pub note: Option<Note>,
    /// The caller's document (a transfer order): recorded on both sides.
    pub reference: Option<Reference>,
}

impl Transfer {
    pub fn validate(&self) -> Result<(), InputError> {
        self.sku.check()?;
        self.from.check().map_err(|e| relabel(e, Field::FromWarehouse))?;
        self.to.check().map_err(|e| relabel(e, Field::ToWarehouse))?;
        if self.from == self.to {
            return Err(InputError::SameWarehouse);
        }
        self.quantity.check(Field::Quantity)?;
        check_provenance(self.principal.as_ref(), self.note.as_ref(), self.reference.as_ref())
    }
}

fn relabel(error: InputError, field: Field) -> InputError {
    match error {
        InputError::Empty { .. } => InputError::Empty { field },
        InputError::TooLong { len, max, .. } => InputError::TooLong { field, len, max },
        InputError::BadCharacter { position, .. } => InputError::BadCharacter { field, position },
        other => other,
    }
}

pub(super) fn apply(state: &mut ShardState, command: &Transfer, emitter: &mut Emitter) -> Result<Outcome, Corrupt> {
    let quantity = command.quantity.get();
    let Some(from) = state.find_item(command.sku.as_str(), command.from.as_str()) else {
        return Ok(Refusal::ItemNotFound.into());
    };
    let available = state.item(from).available();
    if available < quantity {
        let short = ShortLine { line: 0, requested: quantity, available, exists: true };
        return Ok(Refusal::InsufficientStock { lines: vec![short] }.into());
    }
    let existing = state.find_item(command.sku.as_str(), command.to.as_str());
    if let Some(to) = existing
        && state.item(to).on_hand + quantity > QUANTITY_MAX
    {
        return Ok(Refusal::QuantityOverflow { max: QUANTITY_MAX }.into());
    }
    let (to, created) = match existing {
        Some(to) => (to, false),
        None => match state.create_item(command.sku.as_str(), command.to.as_str()) {
            Ok(to) => {
                let attrs = state.item(from).attrs.clone();
                state.item_mut(to).attrs = attrs;
                (to, true)
            }
            Err(refusal) => return Ok(refusal.into()),
        },
    };

    let who = state.who(command.principal.as_ref());
    let before = state.before(from);
    state.item_mut(from).on_hand -= quantity;
    let out = Change { cause: Cause::TransferOut, movement: Some((MovementReason::TransferOut, who)), created: false };
    state.finish_change(from, before, out, emitter);

    let before = state.before(to);
    state.item_mut(to).on_hand += quantity;
    let into = Change { cause: Cause::TransferIn, movement: Some((MovementReason::TransferIn, who)), created };
    state.finish_change(to, before, into, emitter);
    // New stock goes to backorders first (`ShardState::fill_backorders`).
    state.fill_backorders(emitter);

    Ok(Outcome::Transferred { from: Box::new(state.item_view(from)?), to: Box::new(state.item_view(to)?) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::ids::ItemName;
    use crate::testing::{Fixture, qty, sku, wh};

    fn transfer(from: &str, to: &str, quantity: u64) -> Command {
        Command::Transfer(Transfer {
            note: None,
            reference: None,
            sku: sku("SKU-1"),
            from: wh(from),
            to: wh(to),
            quantity: qty(quantity),
            principal: None,
        })
    }

    #[test]
    fn transfer_moves_units_between_warehouses_atomically() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-1", "paris", 1, 0);
        let Outcome::Transferred { from, to } = f.one(transfer("berlin", "paris", 4)) else {
            panic!("not transferred");
        };
        assert_eq!((from.on_hand, to.on_hand), (6, 5));
        let history = f.state.history("SKU-1", "paris", 1).ok().flatten().unwrap_or_default();
        assert_eq!(history[0].reason, MovementReason::TransferIn);
    }

    #[test]
    fn transfer_creates_the_destination_with_the_source_attributes() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.state.item_mut(crate::item::ItemId(0)).attrs =
            Some(Box::new(crate::item::Attrs { name: ItemName::new("Mug").ok(), unit_price_minor: Some(500) }));
        let Outcome::Transferred { to, .. } = f.one(transfer("berlin", "madrid", 3)) else {
            panic!("not transferred");
        };
        assert_eq!((to.on_hand, to.version, to.name.as_deref(), to.unit_price_minor), (3, 1, Some("Mug"), Some(500)));
    }

    #[test]
    fn transfer_moves_only_available_units() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 7)]);
        let outcome = f.one(transfer("berlin", "paris", 4));
        let short = ShortLine { line: 0, requested: 4, available: 3, exists: true };
        assert_eq!(outcome, Outcome::Refused(Refusal::InsufficientStock { lines: vec![short] }));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 7));
        assert!(f.state.find_item("SKU-1", "paris").is_none(), "a refused transfer creates nothing");
    }

    #[test]
    fn transfer_from_a_missing_item_or_to_itself_is_refused() {
        let mut f = Fixture::new();
        assert_eq!(f.one(transfer("berlin", "paris", 1)), Outcome::Refused(Refusal::ItemNotFound));
        f.stock("SKU-1", "berlin", 10, 0);
        assert_eq!(f.one(transfer("berlin", "berlin", 1)).refusal().map(Refusal::code), Some("same_warehouse"));
    }

    #[test]
    fn transfer_refuses_to_overflow_the_destination() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-1", "paris", QUANTITY_MAX, 0);
        assert_eq!(
            f.one(transfer("berlin", "paris", 1)),
            Outcome::Refused(Refusal::QuantityOverflow { max: QUANTITY_MAX })
        );
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0));
    }
}
