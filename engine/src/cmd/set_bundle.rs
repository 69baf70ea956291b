//! `SetBundle`: define, change or (with `None`) remove a bundle on a SKU
//! (`bundle.rs`). Live holds are not touched: a reservation holds the
//! components it was expanded to, whatever the definition says later.

use rkyv::{Archive, Deserialize, Serialize};

use crate::bundle::{self, Component};
use crate::error::InputError;
use crate::ids::Sku;
use crate::outcome::{Bound, Outcome, Refusal};
use crate::state::ShardState;

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SetBundle {
    pub sku: Sku,
    pub components: Option<Vec<Component>>,
}

impl SetBundle {
    /// The input rules that need no limit; `apply` checks the component
    /// count against the limit in force.
    pub fn validate(&self) -> Result<(), InputError> {
        match &self.components {
            Some(components) => bundle::validate(&self.sku, components, u32::MAX),
            None => self.sku.check(),
        }
    }
}

pub(super) fn apply(state: &mut ShardState, command: &SetBundle) -> Outcome {
    let sku = command.sku.as_str();
    let Some(components) = &command.components else {
        return match state.persisted.bundles.by_sku.remove(sku) {
            Some(_) => Outcome::BundleSet { sku: sku.to_owned(), components: None },
            None => Refusal::BundleNotFound.into(),
        };
    };
    let limits = *state.limits();
    if let Err(error) = bundle::validate(&command.sku, components, limits.bundle_components_max) {
        return error.into();
    }
    let items = state.items_of_sku(sku).count();
    if items > 0 {
        return Refusal::SkuHasItems { items: u32::try_from(items).unwrap_or(u32::MAX) }.into();
    }
    let bundles = &mut state.persisted.bundles.by_sku;
    if !bundles.contains_key(sku) && bundles.len() >= limits.bundles_per_shard_max as usize {
        let max = u64::from(limits.bundles_per_shard_max);
        return Refusal::ShardFull { bound: Bound::BundlesPerShard, max }.into();
    }
    bundles.insert(sku.to_owned(), components.clone());
    Outcome::BundleSet { sku: sku.to_owned(), components: Some(components.clone()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::outcome::BundleLine;
    use crate::testing::{Fixture, hold_any, qty, rid, sku, upsert_item};

    fn component(sku: &str, quantity: u64) -> Component {
        Component { sku: crate::testing::sku(sku), quantity: qty(quantity) }
    }

    fn define(sku: &str, components: &[(&str, u64)]) -> Command {
        Command::SetBundle(SetBundle {
            sku: crate::testing::sku(sku),
            components: Some(components.iter().map(|(sku, quantity)| component(sku, *quantity)).collect()),
        })
    }

    #[test]
    fn a_hold_naming_a_bundle_is_answered_with_its_components_and_holds_nothing() {
        let mut f = Fixture::new();
        f.stock("A", "berlin", 10, 0);
        assert!(matches!(f.one(define("KIT", &[("A", 2), ("B", 1)])), Outcome::BundleSet { .. }));
        let outcome = f.one(hold_any(rid(1), &[("A", Some("berlin"), 1), ("KIT", None, 3)], 60_000, None));
        let expected = vec![BundleLine { line: 1, components: vec![component("A", 2), component("B", 1)] }];
        assert_eq!(outcome, Outcome::Refused(Refusal::BundleLines { lines: expected }));
        assert_eq!(f.levels("A", "berlin"), (10, 0), "a hold naming a bundle holds nothing");
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_bundle_sku_has_no_items_and_a_sku_with_items_is_no_bundle() {
        let mut f = Fixture::new();
        f.stock("A", "berlin", 10, 0);
        assert_eq!(f.one(define("A", &[("B", 1)])), Outcome::Refused(Refusal::SkuHasItems { items: 1 }));
        f.one(define("KIT", &[("A", 1)]));
        let upsert = Command::UpsertItem(upsert_item("KIT", "berlin"));
        assert_eq!(f.one(upsert), Outcome::Refused(Refusal::SkuIsBundle));
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn definitions_are_bounded_by_the_limits_in_force_and_removal_frees_room() {
        let mut f = Fixture::new();
        let limits = crate::Limits { bundles_per_shard_max: 1, bundle_components_max: 2, ..crate::Limits::default() };
        f.one(Command::SetLimits(crate::cmd::SetLimits { limits }));
        assert!(matches!(f.one(define("KIT-1", &[("A", 1), ("B", 1)])), Outcome::BundleSet { .. }));
        assert!(matches!(
            f.one(define("KIT-1", &[("A", 1), ("B", 1), ("C", 1)])),
            Outcome::Refused(Refusal::Invalid(InputError::BadBundle { .. }))
        ));
        assert_eq!(
            f.one(define("KIT-2", &[("A", 1)])),
            Outcome::Refused(Refusal::ShardFull { bound: Bound::BundlesPerShard, max: 1 })
        );
        // Redefining the one there is fits; removing it makes room.
        assert!(matches!(f.one(define("KIT-1", &[("C", 3)])), Outcome::BundleSet { .. }));
        let remove = Command::SetBundle(SetBundle { sku: sku("KIT-1"), components: None });
        assert!(matches!(f.one(remove.clone()), Outcome::BundleSet { components: None, .. }));
        assert_eq!(f.one(remove), Outcome::Refused(Refusal::BundleNotFound));
        assert!(matches!(f.one(define("KIT-2", &[("A", 1)])), Outcome::BundleSet { .. }));
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }
}
