//! Bundles (kits): a SKU sold as a set of other SKUs, each so many per
//! bundle. A bundle has no stock of its own; holding one holds its
//! components.
//!
//! The definition lives on the bundle SKU's shard (`SetBundle`), where a
//! hold naming the bundle arrives. The components may live on any shard, so
//! the shard does not expand the line itself: a hold with a bundle line is
//! refused `Refusal::BundleLines`, carrying every bundle line's components,
//! and changes nothing. The caller (the server) then sends the hold again
//! with each bundle line replaced by its components, times the line's
//! quantity: one `Hold` when they live on one shard, else the saga, so the
//! components are held atomically either way, all or none. A hold that
//! names no bundle pays one emptiness check for this.
//!
//! Rules, checked in `apply`:
//! * A bundle has 1 to `Limits::bundle_components_max` components, each a
//!   distinct SKU other than the bundle, each at least 1 and at most
//!   `QUANTITY_MAX` per bundle (`validate`).
//! * A bundle SKU has no items: defining a bundle on a SKU with stock on
//!   the shard is refused `sku_has_items`, and creating an item of a bundle
//!   SKU is refused `sku_is_bundle`.
//! * A shard keeps at most `Limits::bundles_per_shard_max` definitions.
//! * Components are not bundles themselves. Only the server can check this
//!   (components live on other shards), at definition; a component made a
//!   bundle later is refused when the expanded hold reaches it.

use std::collections::BTreeMap;

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{Field, InputError};
use crate::ids::{Quantity, Sku};

/// Units of one SKU in one bundle.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct Component {
    pub sku: Sku,
    pub quantity: Quantity,
}

/// Checks a definition's input rules: `components_max` is the limit in
/// force (`Limits::bundle_components_max`).
pub fn validate(bundle: &Sku, components: &[Component], components_max: u32) -> Result<(), InputError> {
    bundle.check()?;
    if components.is_empty() {
        return Err(InputError::BadBundle { reason: "a bundle needs at least one component".into() });
    }
    if components.len() > components_max as usize {
        return Err(InputError::BadBundle {
            reason: format!("a bundle has {} components; the maximum is {components_max}", components.len()),
        });
    }
    for (index, component) in components.iter().enumerate() {
        component.sku.check()?;
        component.quantity.check(Field::Quantity)?;
        if component.sku == *bundle {
            return Err(InputError::BadBundle { reason: format!("{bundle} cannot be a component of itself") });
        }
        if components[..index].iter().any(|earlier| earlier.sku == component.sku) {
            return Err(InputError::BadBundle { reason: format!("component {} is listed twice", component.sku) });
        }
    }
    Ok(())
}

/// A shard's bundle definitions, by bundle SKU. A `BTreeMap` so the
/// snapshot bytes and any listing are in one order on every replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) struct Bundles {
    pub by_sku: BTreeMap<String, Vec<Component>>,
}

impl Bundles {
    pub fn get(&self, sku: &str) -> Option<&[Component]> {
        if self.by_sku.is_empty() {
            return None;
        }
        self.by_sku.get(sku).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.by_sku.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{qty, sku};

    fn component(sku: &str, quantity: u64) -> Component {
        Component { sku: crate::testing::sku(sku), quantity: qty(quantity) }
    }

    fn kit() -> Sku {
        sku("KIT")
    }

    #[test]
    fn a_definition_needs_distinct_components_other_than_itself_within_the_limit() {
        assert_eq!(validate(&kit(), &[component("A", 1), component("B", 2)], 4), Ok(()));
        let code = |components: &[Component], max| validate(&kit(), components, max).map_err(|e| e.code());
        assert_eq!(code(&[], 4), Err("invalid_bundle"));
        assert_eq!(code(&[component("KIT", 1)], 4), Err("invalid_bundle"));
        assert_eq!(code(&[component("A", 1), component("A", 2)], 4), Err("invalid_bundle"));
        assert_eq!(code(&[component("A", 1), component("B", 1)], 1), Err("invalid_bundle"));
    }
}
