//! `DeleteItem` and `DeleteSku`: delete one item, or a SKU's product record
//! and every item of it, when nothing of it is held.
//!
//! A delete is refused (`item_has_holds`, with the live holds and the units
//! they reserve) while any live hold names an item it would delete, and then
//! changes nothing. Deleting takes `on_hand` to 0 as one stock change with
//! cause `delete` (an event and a ledger movement, so the ledger still
//! reconciles), bumps the item's version once more, and tombstones the item
//! (`product.rs`): it leaves every read, listing and availability answer, and
//! a later upsert of the same SKU × warehouse creates a fresh item at
//! version 1. A `DeleteSku` does all of its items and the product in one
//! step of one shard. Deleting what does not exist is `item_not_found`.

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{Corrupt, InputError};
use crate::ids::{Principal, Sku, Warehouse};
use crate::item::ItemId;
use crate::outcome::{Outcome, Refusal};
use crate::state::{Emitter, ShardState};

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct DeleteItem {
    pub sku: Sku,
    pub warehouse: Warehouse,
    /// Delete only if the item is at this version (HTTP `If-Match`).
    pub expect_version: Option<u64>,
    pub principal: Option<Principal>,
}

impl DeleteItem {
    pub fn validate(&self) -> Result<(), InputError> {
        self.sku.check()?;
        self.warehouse.check()?;
        if let Some(principal) = &self.principal {
            principal.check()?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct DeleteSku {
    pub sku: Sku,
    pub principal: Option<Principal>,
}

impl DeleteSku {
    pub fn validate(&self) -> Result<(), InputError> {
        self.sku.check()?;
        if let Some(principal) = &self.principal {
            principal.check()?;
        }
        Ok(())
    }
}

pub(super) fn apply_item(
    state: &mut ShardState,
    command: &DeleteItem,
    emitter: &mut Emitter,
) -> Result<Outcome, Corrupt> {
    let Some(id) = state.find_item(command.sku.as_str(), command.warehouse.as_str()) else {
        return Ok(match command.expect_version {
            Some(expected) => Refusal::VersionMismatch { expected, actual: None },
            None => Refusal::ItemNotFound,
        }
        .into());
    };
    let version = state.item(id).version;
    if let Some(expected) = command.expect_version
        && expected != version
    {
        return Ok(Refusal::VersionMismatch { expected, actual: Some(version) }.into());
    }
    if let Some(refusal) = held(state, &[id]) {
        return Ok(refusal.into());
    }
    state.delete_item(id, emitter);
    Ok(Outcome::Deleted { items: 1, product: false })
}

pub(super) fn apply_sku(
    state: &mut ShardState,
    command: &DeleteSku,
    emitter: &mut Emitter,
) -> Result<Outcome, Corrupt> {
    let sku = command.sku.as_str();
    let items: Vec<ItemId> = state.items_of_sku(sku).collect();
    let has_product = state.persisted.catalog.products.contains_key(sku);
    if items.is_empty() && !has_product {
        return Ok(Refusal::ItemNotFound.into());
    }
    if let Some(refusal) = held(state, &items) {
        return Ok(refusal.into());
    }
    for &id in &items {
        state.delete_item(id, emitter);
    }
    state.persisted.catalog.products.remove(sku);
    Ok(Outcome::Deleted { items: u32::try_from(items.len()).unwrap_or(u32::MAX), product: has_product })
}

/// `item_has_holds` if any live hold names one of `items`: how many holds,
/// and the units they reserve. Scans the reservation slab (bounded by the
/// live and retained limits) only when some item has units reserved.
fn held(state: &ShardState, items: &[ItemId]) -> Option<Refusal> {
    let reserved = items.iter().map(|&id| state.item(id).reserved).fold(0u64, u64::saturating_add);
    if reserved == 0 {
        return None;
    }
    let holds = state.live_holds_naming(items);
    debug_assert!(holds > 0, "units reserved without a live hold");
    Some(Refusal::ItemHasHolds { holds, reserved })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{Command, Release, UpsertItem};
    use crate::event::{Cause, EventKind};
    use crate::testing::{Fixture, rid, sku, upsert_item, wh};

    fn delete(sku: &str, warehouse: &str) -> Command {
        Command::DeleteItem(DeleteItem {
            sku: crate::testing::sku(sku),
            warehouse: wh(warehouse),
            expect_version: None,
            principal: None,
        })
    }

    fn delete_sku(sku: &str) -> Command {
        Command::DeleteSku(DeleteSku { sku: crate::testing::sku(sku), principal: None })
    }

    #[test]
    fn deleting_an_item_takes_its_stock_to_zero_as_an_event_and_hides_it() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 7, 0);
        let applied = f.run(vec![delete("SKU-1", "berlin")]);
        assert_eq!(applied.outcomes, vec![Outcome::Deleted { items: 1, product: false }]);
        let changes: Vec<_> = applied
            .events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::StockChanged { cause: Cause::Delete, levels, .. } => {
                    Some((levels.on_hand_before, levels.on_hand_after))
                }
                _ => None,
            })
            .collect();
        assert_eq!(changes, vec![(7, 0)]);
        assert_eq!(applied.events.len(), 1, "a delete is no threshold crossing");
        assert_eq!(f.state.get_item("SKU-1", "berlin"), Ok(None));
        assert!(f.state.sku_items("SKU-1").map(|v| v.items.is_empty()).unwrap_or(false));
        assert_eq!(f.state.stats().items, 0);
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn deleting_again_is_item_not_found_and_a_later_upsert_creates_a_fresh_item() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 7, 0);
        f.stock("SKU-1", "berlin", 8, 0);
        f.one(delete("SKU-1", "berlin"));
        assert_eq!(f.one(delete("SKU-1", "berlin")), Outcome::Refused(Refusal::ItemNotFound));
        let outcome = f.one(Command::UpsertItem(UpsertItem { on_hand: Some(3), ..upsert_item("SKU-1", "berlin") }));
        let Outcome::Upserted { item, created: true, .. } = outcome else { panic!("{outcome:?}") };
        assert_eq!((item.version, item.on_hand), (1, 3));
        let history = f.state.history("SKU-1", "berlin", 10).ok().flatten().unwrap_or_default();
        assert_eq!(history.len(), 1, "the fresh item has its own history");
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_delete_with_live_holds_is_refused_and_changes_nothing() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-1", "paris", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 2)]);
        f.hold(2, &[("SKU-1", "berlin", 1)]);
        assert_eq!(f.one(delete("SKU-1", "berlin")), Outcome::Refused(Refusal::ItemHasHolds { holds: 2, reserved: 3 }));
        assert_eq!(f.one(delete_sku("SKU-1")), Outcome::Refused(Refusal::ItemHasHolds { holds: 2, reserved: 3 }));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 3));
        assert_eq!(f.levels("SKU-1", "paris"), (10, 0));
        // The other warehouse has no holds: it may go.
        assert_eq!(f.one(delete("SKU-1", "paris")), Outcome::Deleted { items: 1, product: false });
        f.one(Command::Release(Release { id: rid(1), principal: None }));
        f.one(Command::Release(Release { id: rid(2), principal: None }));
        assert_eq!(f.one(delete("SKU-1", "berlin")), Outcome::Deleted { items: 1, product: false });
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_delete_honours_the_expected_version() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let stale = Command::DeleteItem(DeleteItem {
            sku: sku("SKU-1"),
            warehouse: wh("berlin"),
            expect_version: Some(7),
            principal: None,
        });
        assert_eq!(f.one(stale), Outcome::Refused(Refusal::VersionMismatch { expected: 7, actual: Some(1) }));
        let current = Command::DeleteItem(DeleteItem {
            sku: sku("SKU-1"),
            warehouse: wh("berlin"),
            expect_version: Some(1),
            principal: None,
        });
        assert_eq!(f.one(current), Outcome::Deleted { items: 1, product: false });
    }

    #[test]
    fn deleting_a_sku_removes_every_item_and_its_product() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-1", "paris", 5, 0);
        f.stock("SKU-2", "paris", 5, 0);
        f.one(Command::SetProduct(crate::cmd::SetProduct {
            category: crate::cmd::AttrUpdate::Set("mugs".into()),
            ..crate::cmd::SetProduct::keep_all(sku("SKU-1"))
        }));
        assert_eq!(f.one(delete_sku("SKU-1")), Outcome::Deleted { items: 2, product: true });
        assert_eq!(f.state.product("SKU-1"), None);
        assert_eq!(f.state.stats().items, 1);
        assert_eq!(f.levels("SKU-2", "paris"), (5, 0));
        assert_eq!(f.one(delete_sku("SKU-1")), Outcome::Refused(Refusal::ItemNotFound));
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_deleted_warehouse_leaves_the_skus_priority_list() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-1", "paris", 5, 0);
        f.stock("SKU-2", "rome", 5, 0);
        for (sku, warehouses) in [("SKU-1", vec!["paris", "berlin"]), ("SKU-2", vec!["rome"])] {
            let outcome = f.one(Command::SetWarehousePriority(crate::cmd::SetWarehousePriority {
                sku: crate::testing::sku(sku),
                warehouses: Some(warehouses.into_iter().map(wh).collect()),
            }));
            assert!(!outcome.is_refused(), "{outcome:?}");
        }
        // `Fixture::run` checks every invariant after each entry.
        f.one(delete("SKU-1", "paris"));
        assert_eq!(f.state.warehouse_priority("SKU-1"), ["berlin".to_owned()]);
        f.one(delete("SKU-2", "rome"));
        assert!(f.state.warehouse_priority("SKU-2").is_empty());
        f.one(delete_sku("SKU-1"));
        assert!(f.state.warehouse_priority("SKU-1").is_empty());
    }

    #[test]
    fn a_retained_reservation_of_a_deleted_item_still_reads_with_its_names() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 2)]);
        f.one(Command::Release(Release { id: rid(1), principal: None }));
        f.one(delete("SKU-1", "berlin"));
        let view = f.state.reservation(&rid(1)).ok().flatten().unwrap_or_else(|| panic!("forgotten"));
        assert_eq!((view.lines[0].sku.as_str(), view.lines[0].warehouse.as_str()), ("SKU-1", "berlin"));
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn re_creating_a_deleted_item_takes_its_slot_back_so_churn_does_not_grow_the_shard() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 2)]);
        f.one(Command::Release(Release { id: rid(1), principal: None }));
        let (slots, arena) = (f.state.persisted.items.len(), f.state.persisted.sku_arena.len());
        for round in 0..5u64 {
            assert_eq!(f.one(delete("SKU-1", "berlin")), Outcome::Deleted { items: 1, product: false });
            let outcome =
                f.one(Command::UpsertItem(UpsertItem { on_hand: Some(round), ..upsert_item("SKU-1", "berlin") }));
            assert!(matches!(outcome, Outcome::Upserted { created: true, ref item, .. } if item.version == 1));
        }
        assert_eq!((f.state.persisted.items.len(), f.state.persisted.sku_arena.len()), (slots, arena));
        // The released reservation still names its item rightly.
        let view = f.state.reservation(&rid(1)).ok().flatten().unwrap_or_else(|| panic!("forgotten"));
        assert_eq!((view.lines[0].sku.as_str(), view.lines[0].warehouse.as_str()), ("SKU-1", "berlin"));
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn tombstones_survive_a_snapshot_round_trip() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-2", "berlin", 10, 0);
        f.one(delete("SKU-1", "berlin"));
        let bytes = f.state.to_snapshot_bytes().unwrap_or_else(|e| panic!("{e}"));
        let loaded = ShardState::from_snapshot_bytes(&bytes).unwrap_or_else(|e| panic!("{e}"));
        loaded.check_invariants().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.get_item("SKU-1", "berlin"), Ok(None));
        assert_eq!(loaded.stats().items, 1);
        assert_eq!(loaded.digest(), f.state.digest());
        // The loaded state revives the tombstone as the original would.
        assert_eq!(loaded.find_tombstone("SKU-1", "berlin"), f.state.find_tombstone("SKU-1", "berlin"));
        assert!(loaded.find_tombstone("SKU-1", "berlin").is_some());
    }
}
