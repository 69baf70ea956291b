//! Reads of a shard's state. They change nothing, so they may run on any
//! replica; whether the answer is linearizable is the cluster's business
//! (read index), not the engine's.
//!
//! Every read is bounded: pages have a limit and a scan budget, histories a
//! length, so no request walks a million items.

use rkyv::{Archive, Deserialize, Serialize};

use crate::event::{Event, EventKind, EventRecord};
use crate::ids::{IdempotencyKey, ReservationId};
use crate::item::{ItemId, Status, Who};
use crate::outcome::{ItemView, LineView, MovementView, ReservationView};
use crate::reservation::HeldLine;
use crate::state::ShardState;

/// Which items a listing wants, and where to resume.
#[derive(Clone, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ItemFilter {
    pub status: Option<Status>,
    pub warehouse: Option<String>,
    /// Resume from this item position (from the previous page's cursor).
    pub cursor: u32,
    /// Most items to return (at least 1).
    pub limit: u32,
    /// Most items to look at before returning a (possibly short) page.
    pub scan_max: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ItemPage {
    pub items: Vec<ItemView>,
    /// Where the next page starts; `None` when the listing is complete.
    pub next_cursor: Option<u32>,
}

/// Every warehouse of one SKU, with totals.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SkuView {
    /// By warehouse name.
    pub items: Vec<ItemView>,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
}

/// One line of an availability question.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct AvailabilityLine {
    pub sku: String,
    pub warehouse: String,
    pub quantity: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct LineAvailability {
    pub available: u64,
    pub exists: bool,
    /// Whether the item has enough for every line that names it, summed.
    pub enough: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct AvailabilityView {
    pub lines: Vec<LineAvailability>,
    pub all_available: bool,
}

impl ShardState {
    pub(crate) fn item_view(&self, id: ItemId) -> ItemView {
        let item = self.item(id);
        let attrs = item.attrs.as_deref();
        ItemView {
            sku: self.item_sku(id).to_owned(),
            warehouse: self.item_warehouse(id).to_owned(),
            on_hand: item.on_hand,
            reserved: item.reserved,
            available: item.available(),
            low_stock_threshold: item.low_stock_threshold,
            status: item.status(),
            version: item.version,
            updated_at_ms: item.updated_at_ms,
            name: attrs.and_then(|a| a.name.as_ref()).map(|name| name.as_str().to_owned()),
            unit_price_minor: attrs.and_then(|a| a.unit_price_minor),
        }
    }

    pub fn get_item(&self, sku: &str, warehouse: &str) -> Option<ItemView> {
        self.find_item(sku, warehouse).map(|id| self.item_view(id))
    }

    /// All warehouses of a SKU. Empty if the SKU is unknown.
    pub fn sku_items(&self, sku: &str) -> SkuView {
        let mut items: Vec<ItemView> = self.items_of_sku(sku).map(|id| self.item_view(id)).collect();
        items.sort_by(|a, b| a.warehouse.cmp(&b.warehouse));
        SkuView {
            on_hand: items.iter().map(|i| i.on_hand).sum(),
            reserved: items.iter().map(|i| i.reserved).sum(),
            available: items.iter().map(|i| i.available).sum(),
            items,
        }
    }

    /// A page of items in creation order, filtered by status and warehouse.
    pub fn list_items(&self, filter: &ItemFilter) -> ItemPage {
        let warehouse = match &filter.warehouse {
            Some(name) => match self.p.warehouses.iter().position(|w| w == name) {
                Some(id) => Some(id),
                None => {
                    return ItemPage { items: Vec::new(), next_cursor: None };
                }
            },
            None => None,
        };
        let total = self.p.items.len();
        let start = (filter.cursor as usize).min(total);
        let end = start.saturating_add(filter.scan_max.max(1) as usize).min(total);
        // At least one item per page, so paging always moves forward.
        let limit = filter.limit.max(1) as usize;
        let mut items = Vec::with_capacity(limit.min(end - start));
        let mut position = start;
        while position < end && items.len() < limit {
            let item = &self.p.items[position];
            let wanted = warehouse.is_none_or(|w| usize::from(item.warehouse) == w)
                && filter.status.is_none_or(|status| item.status() == status);
            if wanted {
                items.push(self.item_view(ItemId(u32::try_from(position).unwrap_or(u32::MAX))));
            }
            position += 1;
        }
        let next_cursor = (position < total).then(|| u32::try_from(position).unwrap_or(u32::MAX));
        ItemPage { items, next_cursor }
    }

    /// The item's most recent movements, newest first; `None` if no such item.
    pub fn history(&self, sku: &str, warehouse: &str, limit: usize) -> Option<Vec<MovementView>> {
        let id = self.find_item(sku, warehouse)?;
        let movements = self.item(id).movements().take(limit);
        Some(
            movements
                .map(|m| MovementView {
                    at_ms: m.at_ms,
                    reason: m.reason,
                    delta: m.delta,
                    on_hand_before: m.on_hand_before(),
                    on_hand_after: m.on_hand_after,
                    who: match m.who {
                        Who::System => "system".to_owned(),
                        Who::Principal(principal) => self.principal_name(principal).to_owned(),
                        Who::Reservation(reservation) => reservation.to_string(),
                    },
                })
                .collect(),
        )
    }

    pub fn reservation(&self, id: &ReservationId) -> Option<ReservationView> {
        self.find_reservation(id).and_then(|slot| self.reservation_view(slot))
    }

    pub fn reservation_by_key(&self, key: &IdempotencyKey) -> Option<ReservationView> {
        self.find_by_key(key).and_then(|slot| self.reservation_view(slot))
    }

    fn reservation_view(&self, slot: u32) -> Option<ReservationView> {
        let reservation = self.reservation_at(slot)?;
        Some(ReservationView {
            summary: self.summary(slot)?,
            lines: self.line_views(reservation.lines.as_slice()),
            idempotency_key: reservation.idempotency_key.as_ref().map(|key| key.as_str().to_owned()),
        })
    }

    /// The lines of the reservation in `slot`, as stored.
    pub(crate) fn reservation_lines(&self, slot: u32) -> Option<Vec<LineView>> {
        self.reservation_at(slot).map(|reservation| self.line_views(reservation.lines.as_slice()))
    }

    /// The idempotency key of the reservation in `slot`, if it has one.
    pub(crate) fn reservation_key(&self, slot: u32) -> Option<IdempotencyKey> {
        self.reservation_at(slot).and_then(|reservation| reservation.idempotency_key.clone())
    }

    /// Held lines as callers see them, in the order given.
    pub(crate) fn line_views(&self, lines: &[HeldLine]) -> Vec<LineView> {
        lines
            .iter()
            .map(|line| LineView {
                sku: self.item_sku(line.item).to_owned(),
                warehouse: self.item_warehouse(line.item).to_owned(),
                quantity: line.quantity,
            })
            .collect()
    }

    /// Whether each line could be held now, summing lines that name the same
    /// item, as a hold would.
    pub fn availability(&self, lines: &[AvailabilityLine]) -> AvailabilityView {
        let found: Vec<Option<ItemId>> = lines.iter().map(|l| self.find_item(&l.sku, &l.warehouse)).collect();
        let lines: Vec<LineAvailability> = lines
            .iter()
            .zip(&found)
            .map(|(line, &id)| {
                let available = id.map_or(0, |id| self.item(id).available());
                let asked: u64 = lines
                    .iter()
                    .filter(|other| other.sku == line.sku && other.warehouse == line.warehouse)
                    .fold(0u64, |sum, other| sum.saturating_add(other.quantity));
                LineAvailability { available, exists: id.is_some(), enough: id.is_some() && asked <= available }
            })
            .collect();
        let all_available = lines.iter().all(|line| line.enough);
        AvailabilityView { lines, all_available }
    }

    /// An event with its item named, for publishing.
    pub fn describe(&self, event: &Event) -> EventRecord {
        let item = match event.kind {
            EventKind::StockChanged { item, .. } | EventKind::ThresholdCrossed { item, .. } => Some(item),
            EventKind::ReservationExpired { .. } => None,
        };
        let (sku, warehouse) = match item {
            Some(id) if (id.0 as usize) < self.p.items.len() => {
                (self.item_sku(id).to_owned(), self.item_warehouse(id).to_owned())
            }
            _ => (String::new(), String::new()),
        };
        EventRecord { id: event.id, at_ms: event.at_ms, sku, warehouse, kind: event.kind }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests_support::{Fixture, rid};

    #[test]
    fn a_sku_lists_every_warehouse_with_totals() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "paris", 4, 0);
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-2", "berlin", 7, 0);
        f.hold(1, &[("SKU-1", "berlin", 3)]);
        let view = f.state.sku_items("SKU-1");
        let names: Vec<&str> = view.items.iter().map(|i| i.warehouse.as_str()).collect();
        assert_eq!(names, vec!["berlin", "paris"]);
        assert_eq!((view.on_hand, view.reserved, view.available), (14, 3, 11));
        assert!(f.state.sku_items("SKU-404").items.is_empty());
    }

    #[test]
    fn listing_filters_by_status_and_warehouse_and_pages() {
        let mut f = Fixture::new();
        for n in 0..10 {
            f.stock(&format!("SKU-{n}"), if n % 2 == 0 { "berlin" } else { "paris" }, n, 3);
        }
        let filter =
            ItemFilter { status: Some(Status::LowStock), limit: 100, scan_max: 1_000, ..ItemFilter::default() };
        let low: Vec<u64> = f.state.list_items(&filter).items.iter().map(|i| i.on_hand).collect();
        assert_eq!(low, vec![1, 2, 3]);
        let berlin =
            ItemFilter { warehouse: Some("berlin".into()), limit: 2, scan_max: 1_000, ..ItemFilter::default() };
        let page = f.state.list_items(&berlin);
        assert_eq!(page.items.len(), 2);
        let next = ItemFilter { cursor: page.next_cursor.unwrap_or(0), ..berlin.clone() };
        let rest = f.state.list_items(&ItemFilter { limit: 100, ..next });
        assert_eq!(rest.items.len(), 3);
        assert_eq!(rest.next_cursor, None);
        let unknown = ItemFilter { warehouse: Some("oslo".into()), limit: 10, scan_max: 10, ..ItemFilter::default() };
        assert!(f.state.list_items(&unknown).items.is_empty());
    }

    #[test]
    fn listing_stops_at_its_scan_budget() {
        let mut f = Fixture::new();
        for n in 0..10 {
            f.stock(&format!("SKU-{n}"), "berlin", 100, 0);
        }
        let filter = ItemFilter { status: Some(Status::OutOfStock), limit: 5, scan_max: 4, ..ItemFilter::default() };
        let page = f.state.list_items(&filter);
        assert!(page.items.is_empty());
        assert_eq!(page.next_cursor, Some(4));
    }

    #[test]
    fn availability_sums_duplicate_lines() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        let line = |sku: &str, quantity| AvailabilityLine { sku: sku.into(), warehouse: "berlin".into(), quantity };
        let view = f.state.availability(&[line("SKU-1", 3), line("SKU-1", 3), line("SKU-9", 1)]);
        assert!(!view.all_available);
        assert_eq!(view.lines[0], LineAvailability { available: 5, exists: true, enough: false });
        assert_eq!(view.lines[2], LineAvailability { available: 0, exists: false, enough: false });
        assert!(f.state.availability(&[line("SKU-1", 5)]).all_available);
    }

    #[test]
    fn a_reservation_reads_back_with_its_lines_and_key() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        let key = IdempotencyKey::new("cart-1").ok();
        f.one(crate::state::tests_support::hold_command(1, &[("SKU-1", "berlin", 2)], key.clone()));
        let view = f.state.reservation(&rid(1)).unwrap_or_else(|| panic!("missing"));
        assert_eq!(view.lines, vec![LineView { sku: "SKU-1".into(), warehouse: "berlin".into(), quantity: 2 }]);
        assert_eq!(view.idempotency_key.as_deref(), Some("cart-1"));
        let by_key = key.and_then(|key| f.state.reservation_by_key(&key));
        assert_eq!(by_key, Some(view));
        assert!(f.state.reservation(&rid(2)).is_none());
    }

    #[test]
    fn events_are_described_with_their_item() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        let applied = f.run(vec![crate::state::tests_support::hold_command(1, &[("SKU-1", "berlin", 2)], None)]);
        let record = f.state.describe(&applied.events[0]);
        assert_eq!((record.sku.as_str(), record.warehouse.as_str()), ("SKU-1", "berlin"));
        assert_eq!(record.id.index, f.index);
    }
}
