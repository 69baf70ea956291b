//! `SetProduct`: create or change a SKU's product record (`product.rs`).
//!
//! Each field is kept, set or cleared (`AttrUpdate`). A SKU needs no item
//! to have a product (a catalog entry may come before stock); the shard
//! keeps at most `Limits::products_per_shard_max` products. The record's
//! `created_at_ms` is the log time of the change that created it,
//! `updated_at_ms` that of its latest change; a change that changes
//! nothing answers `changed: false` and moves neither time nor version.

use rkyv::{Archive, Deserialize, Serialize};

use crate::cmd::AttrUpdate;
use crate::error::{Field, InputError};
use crate::ids::{ItemName, PRICE_MINOR_MAX, Principal, Sku};
use crate::outcome::{Bound, Outcome, Refusal};
use crate::product::{
    CATEGORY_LEN_MAX, DESCRIPTION_LEN_MAX, Product, ProductView, check_currency, check_free_text, check_image_url,
};
use crate::state::ShardState;

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SetProduct {
    pub sku: Sku,
    pub name: AttrUpdate<ItemName>,
    pub description: AttrUpdate<String>,
    pub category: AttrUpdate<String>,
    pub price_minor: AttrUpdate<u64>,
    pub currency: AttrUpdate<String>,
    pub image_url: AttrUpdate<String>,
    pub principal: Option<Principal>,
}

impl SetProduct {
    /// Keeps every field of `sku`'s product.
    pub fn keep_all(sku: Sku) -> SetProduct {
        SetProduct {
            sku,
            name: AttrUpdate::Keep,
            description: AttrUpdate::Keep,
            category: AttrUpdate::Keep,
            price_minor: AttrUpdate::Keep,
            currency: AttrUpdate::Keep,
            image_url: AttrUpdate::Keep,
            principal: None,
        }
    }

    pub fn validate(&self) -> Result<(), InputError> {
        self.sku.check()?;
        if let AttrUpdate::Set(name) = &self.name {
            name.check()?;
        }
        if let AttrUpdate::Set(text) = &self.description {
            check_free_text(Field::Description, text, DESCRIPTION_LEN_MAX, true)?;
        }
        if let AttrUpdate::Set(text) = &self.category {
            check_free_text(Field::Category, text, CATEGORY_LEN_MAX, false)?;
        }
        if let AttrUpdate::Set(price) = self.price_minor
            && price > PRICE_MINOR_MAX
        {
            return Err(InputError::TooLarge { field: Field::Price, value: price, max: PRICE_MINOR_MAX });
        }
        if let AttrUpdate::Set(code) = &self.currency {
            check_currency(code)?;
        }
        if let AttrUpdate::Set(url) = &self.image_url {
            check_image_url(url)?;
        }
        if let Some(principal) = &self.principal {
            principal.check()?;
        }
        Ok(())
    }
}

pub(super) fn apply(state: &mut ShardState, command: &SetProduct) -> Outcome {
    let sku = command.sku.as_str();
    let now_ms = state.now_ms();
    let products_max = state.limits().products_per_shard_max;
    let products = &mut state.persisted.catalog.products;
    let current = products.get(sku);
    if current.is_none() && products.len() >= products_max as usize {
        return Refusal::ShardFull { bound: Bound::ProductsPerShard, max: u64::from(products_max) }.into();
    }
    let next = Product {
        name: command.name.resolve(current.and_then(|p| p.name.as_ref())),
        description: command.description.resolve(current.and_then(|p| p.description.as_ref())),
        category: command.category.resolve(current.and_then(|p| p.category.as_ref())),
        price_minor: command.price_minor.resolve(current.and_then(|p| p.price_minor.as_ref())),
        currency: command.currency.resolve(current.and_then(|p| p.currency.as_ref())),
        image_url: command.image_url.resolve(current.and_then(|p| p.image_url.as_ref())),
        version: current.map_or(1, |p| p.version.saturating_add(1)),
        created_at_ms: current.map_or(now_ms, |p| p.created_at_ms),
        updated_at_ms: now_ms,
    };
    if let Some(current) = current {
        let same = Product { version: current.version, updated_at_ms: current.updated_at_ms, ..next.clone() };
        if same == *current {
            return Outcome::ProductSet {
                product: Box::new(ProductView::of(sku, current)),
                created: false,
                changed: false,
            };
        }
    }
    let created = current.is_none();
    let view = ProductView::of(sku, &next);
    products.insert(sku.to_owned(), next);
    debug_assert!(products.len() <= products_max as usize);
    Outcome::ProductSet { product: Box::new(view), created, changed: true }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::config::Limits;
    use crate::testing::{Fixture, sku};

    fn set_name(sku: &str, name: &str) -> Command {
        Command::SetProduct(SetProduct {
            name: AttrUpdate::Set(ItemName::new(name).unwrap_or_else(|e| panic!("{e}"))),
            ..SetProduct::keep_all(crate::testing::sku(sku))
        })
    }

    #[test]
    fn a_product_is_created_at_version_one_with_log_times_and_keeps_absent_fields() {
        let mut f = Fixture::new();
        let Outcome::ProductSet { product, created: true, changed: true } = f.one(set_name("SKU-1", "Mug")) else {
            panic!("not created")
        };
        assert_eq!((product.version, product.created_at_ms, product.updated_at_ms), (1, 1_000, 1_000));
        f.now_ms = 5_000;
        let price = Command::SetProduct(SetProduct {
            price_minor: AttrUpdate::Set(1_999),
            currency: AttrUpdate::Set("EUR".into()),
            ..SetProduct::keep_all(sku("SKU-1"))
        });
        let Outcome::ProductSet { product, created: false, changed: true } = f.one(price) else { panic!("not set") };
        assert_eq!(product.name.as_deref(), Some("Mug"), "absent keeps");
        assert_eq!((product.price_minor, product.currency.as_deref()), (Some(1_999), Some("EUR")));
        assert_eq!((product.version, product.created_at_ms, product.updated_at_ms), (2, 1_000, 5_000));
    }

    #[test]
    fn setting_what_is_already_there_changes_nothing() {
        let mut f = Fixture::new();
        f.one(set_name("SKU-1", "Mug"));
        f.now_ms = 9_000;
        let Outcome::ProductSet { product, changed: false, .. } = f.one(set_name("SKU-1", "Mug")) else {
            panic!("changed")
        };
        assert_eq!((product.version, product.updated_at_ms), (1, 1_000));
    }

    #[test]
    fn null_clears_a_field() {
        let mut f = Fixture::new();
        f.one(set_name("SKU-1", "Mug"));
        let clear = Command::SetProduct(SetProduct { name: AttrUpdate::Clear, ..SetProduct::keep_all(sku("SKU-1")) });
        let Outcome::ProductSet { product, .. } = f.one(clear) else { panic!("not set") };
        assert_eq!(product.name, None);
    }

    #[test]
    fn a_full_catalog_refuses_new_products_but_changes_old_ones() {
        let mut f = Fixture::with_limits(Limits { products_per_shard_max: 1, ..Limits::default() });
        f.one(set_name("SKU-1", "Mug"));
        assert_eq!(
            f.one(set_name("SKU-2", "Cup")),
            Outcome::Refused(Refusal::ShardFull { bound: Bound::ProductsPerShard, max: 1 })
        );
        assert!(matches!(f.one(set_name("SKU-1", "Big mug")), Outcome::ProductSet { changed: true, .. }));
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn bad_fields_are_refused_as_input() {
        let mut f = Fixture::new();
        let bad = Command::SetProduct(SetProduct {
            image_url: AttrUpdate::Set("javascript:alert(1)".into()),
            ..SetProduct::keep_all(sku("SKU-1"))
        });
        assert_eq!(f.one(bad).refusal().map(Refusal::code), Some("field_bad_character"));
        let price = Command::SetProduct(SetProduct {
            price_minor: AttrUpdate::Set(PRICE_MINOR_MAX + 1),
            ..SetProduct::keep_all(sku("SKU-1"))
        });
        assert_eq!(f.one(price).refusal().map(Refusal::code), Some("quantity_too_large"));
        assert_eq!(f.state.product("SKU-1"), None, "nothing written");
    }
}
