//! `SetWarehousePriority`: set, change or (with `None`) remove a SKU's
//! warehouse priority list, the order the `Priority` allocation tries the
//! SKU's warehouses in when a hold names no list of its own
//! (`allocation.rs`). The SKU must be stocked on the shard, and every
//! warehouse listed must stock it: a name that cannot be allocated from is
//! a mistake to report, not to keep. At most `warehouses_per_shard_max`
//! names (so at most one per warehouse), none twice. Holds made before keep
//! what they hold; holds after use the new list.

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::InputError;
use crate::ids::{Sku, Warehouse};
use crate::outcome::{Outcome, Refusal};
use crate::state::ShardState;

use super::allocation::check_priority_list;

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SetWarehousePriority {
    pub sku: Sku,
    /// Most preferred first; `None` or an empty list removes the SKU's list.
    pub warehouses: Option<Vec<Warehouse>>,
}

impl SetWarehousePriority {
    pub fn validate(&self) -> Result<(), InputError> {
        self.sku.check()?;
        for warehouse in self.warehouses.iter().flatten() {
            warehouse.check()?;
        }
        Ok(())
    }
}

pub(super) fn apply(state: &mut ShardState, command: &SetWarehousePriority) -> Outcome {
    let sku = command.sku.as_str();
    if state.items_of_sku(sku).next().is_none() {
        return Refusal::ItemNotFound.into();
    }
    let list = command.warehouses.as_deref().unwrap_or_default();
    let max = state.limits().warehouses_per_shard_max;
    if let Err(refusal) = check_priority_list(list.iter().map(Warehouse::as_str), max) {
        return refusal.into();
    }
    if let Some(name) = list.iter().find(|name| state.find_item(sku, name.as_str()).is_none()) {
        return Refusal::InvalidWarehousePriority { reason: format!("warehouse {name} does not stock {sku}") }.into();
    }
    // Checked: from here on nothing refuses.
    if list.is_empty() {
        state.persisted.warehouse_priority.remove(sku);
    } else {
        let names = list.iter().map(|name| name.as_str().to_owned()).collect();
        state.persisted.warehouse_priority.insert(sku.to_owned(), names);
    }
    debug_assert!(
        state.warehouse_priority(sku).iter().all(|name| state.find_item(sku, name).is_some()),
        "a priority list names a warehouse without the SKU"
    );
    Outcome::WarehousePrioritySet { sku: sku.to_owned(), warehouses: state.warehouse_priority(sku).to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::testing::{Fixture, wh};

    fn set(sku: &str, warehouses: Option<&[&str]>) -> Command {
        Command::SetWarehousePriority(SetWarehousePriority {
            sku: crate::testing::sku(sku),
            warehouses: warehouses.map(|list| list.iter().map(|name| wh(name)).collect()),
        })
    }

    #[test]
    fn a_priority_needs_a_stocked_sku() {
        let mut f = Fixture::new();
        assert_eq!(f.one(set("SKU-1", Some(&["berlin"]))), Outcome::Refused(Refusal::ItemNotFound));
    }

    #[test]
    fn a_priority_is_set_changed_and_removed() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 1, 0);
        f.stock("SKU-1", "paris", 1, 0);
        let set_two = f.one(set("SKU-1", Some(&["paris", "berlin"])));
        let expected = vec!["paris".to_owned(), "berlin".to_owned()];
        assert_eq!(set_two, Outcome::WarehousePrioritySet { sku: "SKU-1".into(), warehouses: expected.clone() });
        assert_eq!(f.state.warehouse_priority("SKU-1"), expected.as_slice());
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
        let cleared = f.one(set("SKU-1", None));
        assert_eq!(cleared, Outcome::WarehousePrioritySet { sku: "SKU-1".into(), warehouses: vec![] });
        assert!(f.state.warehouse_priority("SKU-1").is_empty());
        f.one(set("SKU-1", Some(&["berlin"])));
        f.one(set("SKU-1", Some(&[])));
        assert!(f.state.warehouse_priority("SKU-1").is_empty(), "an empty list removes it");
    }

    #[test]
    fn a_priority_naming_a_warehouse_twice_or_one_without_the_sku_is_refused() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 1, 0);
        f.stock("SKU-2", "paris", 1, 0);
        f.one(set("SKU-1", Some(&["berlin"])));
        for list in [&["berlin", "berlin"][..], &["berlin", "paris"][..], &["rome"][..]] {
            let outcome = f.one(set("SKU-1", Some(list)));
            assert_eq!(outcome.refusal().map(Refusal::code), Some("invalid_warehouse_priority"), "{list:?}");
        }
        assert_eq!(f.state.warehouse_priority("SKU-1"), ["berlin".to_owned()].as_slice(), "unchanged");
    }

    #[test]
    fn a_priority_longer_than_the_warehouse_bound_is_refused() {
        let limits = crate::Limits { warehouses_per_shard_max: 2, ..crate::Limits::default() };
        let mut f = Fixture::with_limits(limits);
        f.stock("SKU-1", "berlin", 1, 0);
        let outcome = f.one(set("SKU-1", Some(&["berlin", "paris", "rome"])));
        assert_eq!(outcome.refusal().map(Refusal::code), Some("invalid_warehouse_priority"));
    }
}
