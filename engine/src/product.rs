//! The catalog of a shard: SKU-level product records (name, description,
//! category, price, currency, image URL, created and updated times) and the
//! tombstones of deleted items.
//!
//! A product belongs to a SKU, not to an item: it is kept on the SKU's shard
//! (where every warehouse of the SKU lives), set by `SetProduct`, removed by
//! `DeleteSku`. Its times are log time (the shard clock), never the wall
//! clock, so every replica keeps the same record. A shard keeps at most
//! `Limits::products_per_shard_max` products; each costs at most
//! about 6.7 KB (`PRODUCT_BYTES_MAX`).
//!
//! Deleted items are tombstoned, not freed: an `ItemId` is an index that
//! retained terminal reservations and events refer to, so a slot never
//! changes names. A tombstone keeps the item's SKU and warehouse (so those
//! references still resolve to names), drops its history and attributes,
//! and leaves the name index. Re-creating the same SKU × warehouse takes the
//! tombstone's slot back as a fresh item (version 1, no history): the names
//! are the same, so nothing that refers to the slot reads wrong, and churn
//! of one item costs nothing. Tombstones count against `items_per_shard_max`
//! like any item: that bound is what limits their memory (about 64 bytes
//! each plus the SKU's bytes).

use std::collections::{BTreeMap, BTreeSet};

use rkyv::{Archive, Deserialize, Serialize};

use crate::cmd::AttrUpdate;
use crate::error::{Field, InputError};
use crate::event::{Cause, EventKind, LevelChange};
use crate::ids::ItemName;
use crate::item::ItemId;
use crate::reservation::ReservationState;
use crate::state::{Emitter, ShardState};

/// Longest product description, in bytes of UTF-8 (line breaks and tabs
/// allowed, no other control characters).
pub const DESCRIPTION_LEN_MAX: usize = 4096;
/// Longest product category, in bytes of UTF-8 (no control characters).
pub const CATEGORY_LEN_MAX: usize = 200;
/// Longest image URL, in bytes (printable ASCII, `http://` or `https://`).
pub const IMAGE_URL_LEN_MAX: usize = 2048;
/// Length of an ISO 4217 currency code.
pub const CURRENCY_LEN: usize = 3;
/// Most bytes of text one product holds.
pub const PRODUCT_BYTES_MAX: usize =
    crate::ids::NAME_LEN_MAX + DESCRIPTION_LEN_MAX + CATEGORY_LEN_MAX + IMAGE_URL_LEN_MAX + CURRENCY_LEN;

/// A SKU's product record.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Product {
    pub name: Option<ItemName>,
    pub description: Option<String>,
    pub category: Option<String>,
    /// Price in minor units (cents), at most `PRICE_MINOR_MAX`.
    pub price_minor: Option<u64>,
    pub currency: Option<String>,
    pub image_url: Option<String>,
    /// Starts at 1 and grows by one on every change.
    pub version: u64,
    /// Log time of the change that created the record.
    pub created_at_ms: u64,
    /// Log time of its latest change.
    pub updated_at_ms: u64,
}

/// A product as a caller sees it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ProductView {
    pub sku: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub price_minor: Option<u64>,
    pub currency: Option<String>,
    pub image_url: Option<String>,
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl ProductView {
    pub(crate) fn of(sku: &str, product: &Product) -> ProductView {
        ProductView {
            sku: sku.to_owned(),
            name: product.name.as_ref().map(|name| name.as_str().to_owned()),
            description: product.description.clone(),
            category: product.category.clone(),
            price_minor: product.price_minor,
            currency: product.currency.clone(),
            image_url: product.image_url.clone(),
            version: product.version,
            created_at_ms: product.created_at_ms,
            updated_at_ms: product.updated_at_ms,
        }
    }
}

/// Products by SKU and tombstoned item ids (part of `Persisted`). Ordered
/// collections: a snapshot's bytes depend on content only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) struct Catalog {
    pub products: BTreeMap<String, Product>,
    /// Ids of deleted items (see the module docs).
    pub tombstones: BTreeSet<u32>,
}

/// Free text of 1 to `max` bytes; `multiline` also allows line breaks and
/// tabs.
pub(crate) fn check_free_text(field: Field, value: &str, max: usize, multiline: bool) -> Result<(), InputError> {
    if value.is_empty() {
        return Err(InputError::Empty { field });
    }
    if value.len() > max {
        return Err(InputError::TooLong { field, len: value.len(), max });
    }
    let allowed = |c: char| !c.is_control() || (multiline && matches!(c, '\n' | '\r' | '\t'));
    match value.char_indices().find(|(_, c)| !allowed(*c)) {
        Some((position, _)) => Err(InputError::BadCharacter { field, position }),
        None => Ok(()),
    }
}

/// An ISO 4217 code: three uppercase ASCII letters.
pub(crate) fn check_currency(value: &str) -> Result<(), InputError> {
    if value.len() != CURRENCY_LEN {
        return Err(InputError::BadLength { field: Field::Currency, len: value.len(), expected: CURRENCY_LEN });
    }
    match value.bytes().position(|b| !b.is_ascii_uppercase()) {
        Some(position) => Err(InputError::BadCharacter { field: Field::Currency, position }),
        None => Ok(()),
    }
}

/// An absolute `http://` or `https://` URL with a host: printable ASCII
/// without spaces, at most `IMAGE_URL_LEN_MAX` bytes. A bad scheme or an
/// empty host is a bad character at the first byte that breaks the rule.
pub(crate) fn check_image_url(value: &str) -> Result<(), InputError> {
    let field = Field::ImageUrl;
    if value.is_empty() {
        return Err(InputError::Empty { field });
    }
    if value.len() > IMAGE_URL_LEN_MAX {
        return Err(InputError::TooLong { field, len: value.len(), max: IMAGE_URL_LEN_MAX });
    }
    if let Some(position) = value.bytes().position(|b| !b.is_ascii_graphic()) {
        return Err(InputError::BadCharacter { field, position });
    }
    let lower = value.get(..8).unwrap_or(value).to_ascii_lowercase();
    let host_at = if lower.starts_with("https://") {
        8
    } else if lower.starts_with("http://") {
        7
    } else {
        return Err(InputError::BadCharacter { field, position: 0 });
    };
    match value.as_bytes().get(host_at) {
        Some(b) if !matches!(b, b'/' | b'?' | b'#') => Ok(()),
        _ => Err(InputError::BadCharacter { field, position: host_at }),
    }
}

impl ShardState {
    /// A SKU's product record, if it has one.
    pub fn product(&self, sku: &str) -> Option<ProductView> {
        self.persisted.catalog.products.get(sku).map(|product| ProductView::of(sku, product))
    }

    /// Products on this shard.
    pub fn products(&self) -> usize {
        self.persisted.catalog.products.len()
    }

    pub(crate) fn is_tombstone(&self, id: ItemId) -> bool {
        self.persisted.catalog.tombstones.contains(&id.0)
    }

    /// Live holds with a line on any of `items`.
    pub(crate) fn live_holds_naming(&self, items: &[ItemId]) -> u64 {
        let held = self.persisted.reservations.iter().flatten().filter(|r| r.state == ReservationState::Held);
        held.filter(|r| r.lines.as_slice().iter().any(|line| items.contains(&line.item))).count() as u64
    }

    /// Deletes an item nothing holds: `on_hand` goes to 0 as one stock
    /// change with cause `delete` (emitted even from 0, so every delete is
    /// an event), the version moves once more, and the item becomes a
    /// tombstone that keeps only its names.
    pub(crate) fn delete_item(&mut self, id: ItemId, emitter: &mut Emitter) {
        debug_assert!(!self.is_tombstone(id), "item {} deleted twice", id.0);
        let at_ms = emitter.at_ms;
        let item = self.item_mut(id);
        debug_assert_eq!(item.reserved, 0, "deleting an item with units held");
        debug_assert_eq!(item.levels().backordered, 0, "deleting an item with units backordered");
        let on_hand_before = item.on_hand;
        // Units kept back (safety stock, damaged, quality control) are on
        // hand and go with it; incoming and the backorder limit are reset.
        let unsellable_before = item.levels().unsellable();
        item.set_levels(crate::states::StateLevels::default());
        item.on_hand = 0;
        item.version = item.version.saturating_add(1);
        item.updated_at_ms = at_ms;
        item.attrs = None;
        item.history = Vec::new();
        item.history_head = 0;
        emitter.emit(EventKind::StockChanged {
            item: id,
            cause: Cause::Delete,
            levels: LevelChange {
                on_hand_before,
                on_hand_after: 0,
                reserved_before: 0,
                reserved_after: 0,
                unsellable_before,
                unsellable_after: 0,
            },
        });
        self.unindex_item(id);
        self.persisted.catalog.tombstones.insert(id.0);
        // A warehouse priority list names only warehouses that stock its
        // SKU (`check_warehouse_priority`): the deleted one leaves it.
        if let (Ok(sku), Ok(warehouse)) = (self.item_sku(id), self.item_warehouse(id)) {
            let (sku, warehouse) = (sku.to_owned(), warehouse.to_owned());
            if let Some(list) = self.persisted.warehouse_priority.get_mut(&sku) {
                list.retain(|name| *name != warehouse);
                if list.is_empty() {
                    self.persisted.warehouse_priority.remove(&sku);
                }
            }
        }
    }

    /// The catalog's rules: tombstones are empty and out of the name
    /// index, every other item is in it, products are valid and within
    /// their bound, their times are log times in order.
    pub(crate) fn check_catalog(&self) -> Result<(), String> {
        let catalog = &self.persisted.catalog;
        for &id in &catalog.tombstones {
            let item = self.item(ItemId(id));
            let kept = item.on_hand != 0 || item.reserved != 0 || item.states.is_some();
            if kept || !item.history.is_empty() || item.attrs.is_some() {
                return Err(format!("tombstone {id} still holds stock, states, history or attributes"));
            }
        }
        if self.indexed_tombstones() != catalog.tombstones.len() {
            return Err(format!("{} tombstones, {} indexed", catalog.tombstones.len(), self.indexed_tombstones()));
        }
        if self.indexed_items() + catalog.tombstones.len() != self.persisted.items.len() {
            return Err(format!(
                "{} items indexed and {} tombstones, but {} slots",
                self.indexed_items(),
                catalog.tombstones.len(),
                self.persisted.items.len()
            ));
        }
        for id in 0..self.persisted.items.len() {
            let id = ItemId(u32::try_from(id).map_err(|_| "item slots over u32".to_string())?);
            let (sku, warehouse) = (self.item_sku(id).map_err(|e| e.0)?, self.item_warehouse(id).map_err(|e| e.0)?);
            let found = self.find_item(sku, warehouse);
            if self.is_tombstone(id) {
                if found.is_some() {
                    return Err(format!("tombstone {} shares its name with a live item", id.0));
                }
                if self.find_tombstone(sku, warehouse) != Some(id) {
                    return Err(format!("tombstone {} is not indexed as one", id.0));
                }
            } else if found != Some(id) {
                return Err(format!("item {} is not indexed by its name", id.0));
            }
        }
        if catalog.products.len() > self.persisted.limits.products_per_shard_max as usize {
            return Err(format!("{} products, over the bound", catalog.products.len()));
        }
        for (sku, product) in &catalog.products {
            let name = crate::ids::Sku::new(sku.as_str()).map_err(|e| format!("product {sku:?}: {e}"))?;
            let mut check = crate::cmd::SetProduct::keep_all(name);
            check.name = product.name.clone().map_or(AttrUpdate::Keep, AttrUpdate::Set);
            check.description = product.description.clone().map_or(AttrUpdate::Keep, AttrUpdate::Set);
            check.category = product.category.clone().map_or(AttrUpdate::Keep, AttrUpdate::Set);
            check.price_minor = product.price_minor.map_or(AttrUpdate::Keep, AttrUpdate::Set);
            check.currency = product.currency.clone().map_or(AttrUpdate::Keep, AttrUpdate::Set);
            check.image_url = product.image_url.clone().map_or(AttrUpdate::Keep, AttrUpdate::Set);
            check.validate().map_err(|e| format!("product {sku}: {e}"))?;
            if product.version == 0 || product.version == u64::MAX {
                return Err(format!("product {sku}: version {}", product.version));
            }
            if product.created_at_ms > product.updated_at_ms || product.updated_at_ms > self.persisted.now_ms {
                return Err(format!("product {sku}: created, updated and log time out of order"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_urls_must_be_absolute_http_or_https_with_a_host() {
        assert!(check_image_url("https://cdn.example.com/a.png").is_ok());
        assert!(check_image_url("HTTP://example.com").is_ok());
        assert_eq!(check_image_url("ftp://x/y"), Err(InputError::BadCharacter { field: Field::ImageUrl, position: 0 }));
        assert_eq!(
            check_image_url("https:///a"),
            Err(InputError::BadCharacter { field: Field::ImageUrl, position: 8 })
        );
        assert_eq!(check_image_url("http://"), Err(InputError::BadCharacter { field: Field::ImageUrl, position: 7 }));
        assert_eq!(
            check_image_url("https://a b"),
            Err(InputError::BadCharacter { field: Field::ImageUrl, position: 9 })
        );
        let long = format!("https://{}", "a".repeat(IMAGE_URL_LEN_MAX));
        assert!(matches!(check_image_url(&long), Err(InputError::TooLong { .. })));
    }

    #[test]
    fn currencies_are_three_uppercase_letters() {
        assert!(check_currency("EUR").is_ok());
        assert_eq!(check_currency("eur"), Err(InputError::BadCharacter { field: Field::Currency, position: 0 }));
        assert!(matches!(check_currency("EURO"), Err(InputError::BadLength { .. })));
    }

    #[test]
    fn descriptions_may_span_lines_but_names_of_categories_may_not() {
        assert!(check_free_text(Field::Description, "a\nb\tc", DESCRIPTION_LEN_MAX, true).is_ok());
        assert_eq!(
            check_free_text(Field::Category, "a\nb", CATEGORY_LEN_MAX, false),
            Err(InputError::BadCharacter { field: Field::Category, position: 1 })
        );
        assert_eq!(
            check_free_text(Field::Description, "a\u{7}", DESCRIPTION_LEN_MAX, true),
            Err(InputError::BadCharacter { field: Field::Description, position: 1 })
        );
    }
}
