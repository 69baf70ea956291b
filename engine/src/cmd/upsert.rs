//! `UpsertItem`: create an item, or set its `on_hand`, low-stock threshold
//! and descriptive attributes.
//!
//! With `Expect::Version(v)` the change applies only if the item is at
//! version `v` (HTTP `If-Match`); with `Expect::Absent` only if the item does
//! not exist (`If-None-Match: *`). `on_hand` is never set below `reserved`:
//! units promised to shoppers cannot vanish. An upsert that changes nothing
//! answers `changed: false` and leaves the version alone.

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{Corrupt, Field, InputError};
use crate::event::Cause;
use crate::ids::{ItemName, PRICE_MINOR_MAX, Principal, Sku, Warehouse, check_level};
use crate::item::{Attrs, MovementReason};
use crate::outcome::{Outcome, Refusal};
use crate::state::{Change, Emitter, ShardState};

/// A precondition on the item's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Expect {
    /// Create or update, whatever the version.
    Any,
    /// Update only if the item exists at this version.
    Version(u64),
    /// Create only; refuse if the item exists.
    Absent,
}

/// How to change an optional attribute.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum AttrUpdate<T> {
    Keep,
    Set(T),
    Clear,
}

impl<T: Clone> AttrUpdate<T> {
    pub(crate) fn resolve(&self, current: Option<&T>) -> Option<T> {
        match self {
            AttrUpdate::Keep => current.cloned(),
            AttrUpdate::Set(value) => Some(value.clone()),
            AttrUpdate::Clear => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct UpsertItem {
    pub sku: Sku,
    pub warehouse: Warehouse,
    pub on_hand: Option<u64>,
    pub low_stock_threshold: Option<u64>,
    pub name: AttrUpdate<ItemName>,
    pub unit_price_minor: AttrUpdate<u64>,
    pub expect: Expect,
    pub principal: Option<Principal>,
}

impl UpsertItem {
    pub fn validate(&self) -> Result<(), InputError> {
        self.sku.check()?;
        self.warehouse.check()?;
        if let Some(on_hand) = self.on_hand {
            check_level(Field::OnHand, on_hand)?;
        }
        if let Some(threshold) = self.low_stock_threshold {
            check_level(Field::LowStockThreshold, threshold)?;
        }
        if let AttrUpdate::Set(name) = &self.name {
            name.check()?;
        }
        if let AttrUpdate::Set(price) = self.unit_price_minor
            && price > PRICE_MINOR_MAX
        {
            return Err(InputError::TooLarge { field: Field::UnitPriceMinor, value: price, max: PRICE_MINOR_MAX });
        }
        if let Some(principal) = &self.principal {
            principal.check()?;
        }
        Ok(())
    }
}

pub(super) fn apply(state: &mut ShardState, command: &UpsertItem, emitter: &mut Emitter) -> Result<Outcome, Corrupt> {
    apply_with(state, command, None, emitter)
}

/// An upsert that may also set quantity states (`SetStates`): one check of
/// every level, then one change.
pub(super) fn apply_with(
    state: &mut ShardState,
    command: &UpsertItem,
    states: Option<&super::SetStates>,
    emitter: &mut Emitter,
) -> Result<Outcome, Corrupt> {
    let found = state.find_item(command.sku.as_str(), command.warehouse.as_str());
    match (found, command.expect) {
        (Some(id), Expect::Absent) => {
            return Ok(Refusal::ItemExists { version: state.item(id).version }.into());
        }
        (Some(id), Expect::Version(expected)) if state.item(id).version != expected => {
            return Ok(Refusal::VersionMismatch { expected, actual: Some(state.item(id).version) }.into());
        }
        (None, Expect::Version(expected)) => {
            return Ok(Refusal::VersionMismatch { expected, actual: None }.into());
        }
        _ => {}
    }

    // Every level rule is checked before an item is created (or a deleted
    // one's slot revived): a refused upsert leaves nothing behind.
    let (current_on_hand, reserved, current_levels) = match found {
        Some(id) => {
            let item = state.item(id);
            (item.on_hand, item.reserved, item.levels())
        }
        None => (0, 0, crate::states::StateLevels::default()),
    };
    let on_hand = command.on_hand.unwrap_or(current_on_hand);
    if on_hand < reserved {
        return Ok(Refusal::BelowReserved { on_hand: current_on_hand, reserved }.into());
    }
    let levels = states.map_or(current_levels, |states| states.resolve(current_levels));
    if on_hand - reserved < levels.unsellable() {
        return Ok(
            Refusal::BelowUnsellable { on_hand: current_on_hand, reserved, unsellable: levels.unsellable() }.into()
        );
    }
    let (id, created) = match found {
        Some(id) => (id, false),
        None => match state.create_item(command.sku.as_str(), command.warehouse.as_str()) {
            Ok(id) => (id, true),
            Err(refusal) => return Ok(refusal.into()),
        },
    };
    let item = state.item(id);
    let threshold = command.low_stock_threshold.unwrap_or(item.low_stock_threshold);
    let current = item.attrs.as_deref();
    let attrs = Attrs {
        name: command.name.resolve(current.and_then(|a| a.name.as_ref())),
        unit_price_minor: command.unit_price_minor.resolve(current.and_then(|a| a.unit_price_minor.as_ref())),
    };
    let unchanged = on_hand == item.on_hand
        && levels == item.levels()
        && threshold == item.low_stock_threshold
        && current.cloned().unwrap_or_default() == attrs;
    if unchanged && !created {
        return Ok(Outcome::Upserted { item: Box::new(state.item_view(id)?), created: false, changed: false });
    }

    let before = state.before(id);
    let who = state.who(command.principal.as_ref());
    let item = state.item_mut(id);
    item.on_hand = on_hand;
    item.low_stock_threshold = threshold;
    item.attrs = (!attrs.is_empty()).then(|| Box::new(attrs));
    item.set_levels(levels);
    let change = Change { cause: Cause::Upsert, movement: Some((MovementReason::Set, who)), created };
    state.finish_change(id, before, change, emitter);
    // New stock goes to backorders first (`ShardState::fill_backorders`).
    state.fill_backorders(emitter);
    Ok(Outcome::Upserted { item: Box::new(state.item_view(id)?), created, changed: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::config::Limits;
    use crate::event::EventKind;
    use crate::ids::QUANTITY_MAX;
    use crate::item::Status;
    use crate::outcome::Bound;
    use crate::testing::{Fixture, upsert_item};

    fn run(fixture: &mut Fixture, command: UpsertItem) -> Outcome {
        fixture.one(Command::UpsertItem(command))
    }

    #[test]
    fn upsert_creates_an_item_at_version_one() {
        let mut f = Fixture::new();
        let command = UpsertItem {
            on_hand: Some(10),
            low_stock_threshold: Some(3),
            name: AttrUpdate::Set(ItemName::new("Blue trainers").unwrap_or_else(|e| panic!("{e}"))),
            unit_price_minor: AttrUpdate::Set(4_999),
            ..upsert_item("SKU-1", "berlin")
        };
        let Outcome::Upserted { item, created: true, changed: true } = run(&mut f, command) else {
            panic!("not created");
        };
        assert_eq!((item.on_hand, item.reserved, item.available, item.version), (10, 0, 10, 1));
        assert_eq!(item.status, Status::InStock);
        assert_eq!(item.name.as_deref(), Some("Blue trainers"));
        assert_eq!(item.unit_price_minor, Some(4_999));
        assert_eq!(item.updated_at_ms, 1_000);
    }

    #[test]
    fn upsert_changes_the_version_on_every_change_and_only_then() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let same = run(&mut f, UpsertItem { on_hand: Some(10), ..upsert_item("SKU-1", "berlin") });
        assert!(matches!(same, Outcome::Upserted { changed: false, ref item, .. } if item.version == 1));
        let changed = run(&mut f, UpsertItem { on_hand: Some(11), ..upsert_item("SKU-1", "berlin") });
        assert!(matches!(changed, Outcome::Upserted { changed: true, ref item, .. } if item.version == 2));
        let threshold = run(&mut f, UpsertItem { low_stock_threshold: Some(4), ..upsert_item("SKU-1", "berlin") });
        assert!(matches!(threshold, Outcome::Upserted { ref item, .. } if item.version == 3));
    }

    #[test]
    fn upsert_with_a_stale_version_is_refused() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let outcome =
            run(&mut f, UpsertItem { on_hand: Some(5), expect: Expect::Version(7), ..upsert_item("SKU-1", "berlin") });
        assert_eq!(outcome, Outcome::Refused(Refusal::VersionMismatch { expected: 7, actual: Some(1) }));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0));
        let matching =
            run(&mut f, UpsertItem { on_hand: Some(5), expect: Expect::Version(1), ..upsert_item("SKU-1", "berlin") });
        assert!(matches!(matching, Outcome::Upserted { changed: true, .. }));
    }

    #[test]
    fn upsert_expecting_a_version_of_a_missing_item_is_refused() {
        let mut f = Fixture::new();
        let outcome = run(&mut f, UpsertItem { expect: Expect::Version(1), ..upsert_item("SKU-9", "berlin") });
        assert_eq!(outcome, Outcome::Refused(Refusal::VersionMismatch { expected: 1, actual: None }));
        assert_eq!(f.state.stats().items, 0);
    }

    #[test]
    fn create_only_upsert_of_an_existing_item_is_refused() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let outcome =
            run(&mut f, UpsertItem { on_hand: Some(1), expect: Expect::Absent, ..upsert_item("SKU-1", "berlin") });
        assert_eq!(outcome, Outcome::Refused(Refusal::ItemExists { version: 1 }));
    }

    #[test]
    fn upsert_refuses_to_set_on_hand_below_reserved() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 6)]);
        let outcome = run(&mut f, UpsertItem { on_hand: Some(5), ..upsert_item("SKU-1", "berlin") });
        assert_eq!(outcome, Outcome::Refused(Refusal::BelowReserved { on_hand: 10, reserved: 6 }));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 6));
    }

    #[test]
    fn upsert_refuses_levels_over_the_maximum() {
        let mut f = Fixture::new();
        let outcome = run(&mut f, UpsertItem { on_hand: Some(QUANTITY_MAX + 1), ..upsert_item("SKU-1", "berlin") });
        assert_eq!(
            outcome.refusal().map(Refusal::code),
            Some("quantity_too_large"),
            "refused as bad input: {outcome:?}"
        );
        assert_eq!(f.state.stats().items, 0);
    }

    #[test]
    fn upsert_can_clear_attributes() {
        let mut f = Fixture::new();
        let name = ItemName::new("Mug").unwrap_or_else(|e| panic!("{e}"));
        run(&mut f, UpsertItem { name: AttrUpdate::Set(name), ..upsert_item("SKU-1", "berlin") });
        let outcome = run(&mut f, UpsertItem { name: AttrUpdate::Clear, ..upsert_item("SKU-1", "berlin") });
        assert!(matches!(outcome, Outcome::Upserted { ref item, changed: true, .. } if item.name.is_none()));
    }

    #[test]
    fn upsert_emits_a_crossing_when_the_threshold_moves_status() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let applied = f.run(vec![Command::UpsertItem(UpsertItem {
            low_stock_threshold: Some(10),
            ..upsert_item("SKU-1", "berlin")
        })]);
        let crossings: Vec<_> = applied
            .events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::ThresholdCrossed { from, to, .. } => Some((from, to)),
                _ => None,
            })
            .collect();
        assert_eq!(crossings, vec![(Status::InStock, Status::LowStock)]);
    }

    #[test]
    fn upsert_records_the_set_as_a_movement() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-1", "berlin", 4, 0);
        let history = f.state.history("SKU-1", "berlin", 10).ok().flatten().unwrap_or_default();
        let seen: Vec<(i64, u64, u64)> = history.iter().map(|m| (m.delta, m.on_hand_before, m.on_hand_after)).collect();
        assert_eq!(seen, vec![(-6, 10, 4), (10, 0, 10)]);
        assert!(history.iter().all(|m| m.reason == MovementReason::Set && m.who == "system"));
    }

    #[test]
    fn a_full_shard_refuses_new_items() {
        let mut f = Fixture::with_limits(Limits { items_per_shard_max: 1, ..Limits::default() });
        f.stock("SKU-1", "berlin", 1, 0);
        let outcome = run(&mut f, UpsertItem { on_hand: Some(1), ..upsert_item("SKU-2", "berlin") });
        assert_eq!(outcome, Outcome::Refused(Refusal::ShardFull { bound: Bound::ItemsPerShard, max: 1 }));
        // Updating the existing item still works.
        f.stock("SKU-1", "berlin", 2, 0);
    }
}
